import XCTest
import Foundation
@testable import Meld
@testable import MeldTool
import CMeld

/// The OpenCL path against the CPU path: bit-identical merge and sparse results, matmuls within
/// tolerance, and the device errors. Skipped, with a message, where no OpenCL platform exists.
final class OpenCLTests: XCTestCase {
    func pair() throws -> (cpu: Context, gpu: Context) {
        guard !OpenCL.devices.isEmpty else { throw XCTSkip("no OpenCL platform or device on this machine (install pocl-opencl-icd)") }
        let g = try Context(threads: 2)
        try g.useOpenCL()
        return (try Context(threads: 2), g)
    }

    func testMergeKernelsAreBitIdentical() throws {
        let (cpu, gpu) = try pair()
        XCTAssertNotEqual(gpu.deviceName, "cpu")
        var rng = Rng(61)
        for n in [1, 17, 4096 + 5, 70_001] {
            let base = rng.floats(n)
            let xs = (0..<3).map { _ in base.map { $0 + rng.normal() * 0.01 + (rng.uniform() < 0.1 ? rng.normal() * 0.1 : 0) } }
            var special = xs[0]; if n > 10 { special[3] = .nan; special[5] = -.infinity; special[7] = Float(bitPattern: 0x0001_16C2) /* 1e-40, a subnormal */ }
            // conversions, including NaN / Inf / subnormals
            for (a, b) in [(try cpu.convert(special) as [BFloat16], try gpu.convert(special) as [BFloat16])] { XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern)) }
            XCTAssertEqual((try cpu.convert(special) as [Float16]).map(\.bitPattern), (try gpu.convert(special) as [Float16]).map(\.bitPattern))
            let w: [Float] = [1, 0.6, -0.8], d: [Double] = [0.2, 0.5, 0.35]
            XCTAssertEqual(bits(try cpu.linear(xs, weights: w) as [Float]), bits(try gpu.linear(xs, weights: w) as [Float]))
            XCTAssertEqual(bits(try cpu.taskArithmetic(base: base, xs, weights: w, lambda: 0.9) as [Float]),
                           bits(try gpu.taskArithmetic(base: base, xs, weights: w, lambda: 0.9) as [Float]))
            for opt in [TiesOptions.mergekit, .paper, TiesOptions(consensus: .count, divisor: .none, lambda: 1.5)] {
                XCTAssertEqual(bits(try cpu.ties(base: base, xs, weights: w, densities: d, options: opt) as [Float]),
                               bits(try gpu.ties(base: base, xs, weights: w, densities: d, options: opt) as [Float]), "ties n=\(n)")
                let a: [BFloat16] = try cpu.ties(base: base, xs, weights: w, densities: d, options: opt)
                let b: [BFloat16] = try gpu.ties(base: base, xs, weights: w, densities: d, options: opt)
                XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern))
            }
            // half-precision inputs and outputs through the vector loads/stores (NaN, Inf, subnormals included)
            let sx = [special, xs[1], xs[2]]
            let hb = base.map { BFloat16($0) }, hx = sx.map { $0.map { BFloat16($0) } }
            let fb = base.map { Float16($0) }, fx = sx.map { $0.map { Float16($0) } }
            for opt in [TiesOptions.mergekit, .paper] {
                let a: [Float16] = try cpu.ties(base: hb, hx, weights: w, densities: d, options: opt)
                let b: [Float16] = try gpu.ties(base: hb, hx, weights: w, densities: d, options: opt)
                XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "bf16 -> f16 ties n=\(n)")
                let c: [BFloat16] = try cpu.ties(base: fb, fx, weights: w, densities: d, options: opt)
                let e: [BFloat16] = try gpu.ties(base: fb, fx, weights: w, densities: d, options: opt)
                XCTAssertEqual(c.map(\.bitPattern), e.map(\.bitPattern), "f16 -> bf16 ties n=\(n)")
            }
            let ta: [Float16] = try cpu.taskArithmetic(base: fb, fx, weights: w, lambda: 0.9)
            let tb: [Float16] = try gpu.taskArithmetic(base: fb, fx, weights: w, lambda: 0.9)
            XCTAssertEqual(ta.map(\.bitPattern), tb.map(\.bitPattern), "f16 task arithmetic n=\(n)")
            XCTAssertEqual(try cpu.taskSelect(base: base, xs, densities: d), try gpu.taskSelect(base: base, xs, densities: d))
            let deltas = xs.map { zip($0, base).map { $0 - $1 } }
            let sc = try cpu.signElect(deltas, weights: w), sg = try gpu.signElect(deltas, weights: w)
            XCTAssertEqual(sc, sg)
            XCTAssertEqual(bits(try cpu.disjointMerge(base: base, deltas, weights: w, sign: sc) as [Float]),
                           bits(try gpu.disjointMerge(base: base, deltas, weights: w, sign: sg) as [Float]))
            // DARE (same Philox streams), breadcrumbs, masks and DELLA through the generalized merge
            // densities whose threshold's high half is element 5's first draw in stream 0, just
            // above and at its uniform: its second draw decides (the rare tie path)
            let u5 = Double(uniform32(5, key: philoxKey(seed: 9, stream: 0)))
            let sps: [[Sparsifier]] = [
                (0..<3).map { .dare(0.3, seed: 9, stream: UInt64($0), rescale: .density) },
                (0..<3).map { .dare((u5 + 0.5) / 4_294_967_296, seed: 9, stream: UInt64($0), rescale: .density) },
                (0..<3).map { .dare((u5 - 0.5) / 4_294_967_296, seed: 9, stream: UInt64($0), rescale: .density) },
                (0..<3).map { _ in .breadcrumbs(0.6, gamma: 0.05) },
                (0..<3).map { .della(0.5, epsilon: 0.2, seed: 3, stream: UInt64($0), rowLength: 0, rescale: .l1) },
            ]
            for sp in sps {
                for cons in [Consensus.none, .sum] {
                    let a: [Float] = try cpu.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: sp, options: MergeOptions(consensus: cons))
                    let b: [Float] = try gpu.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: sp, options: MergeOptions(consensus: cons))
                    XCTAssertEqual(bits(a), bits(b), "\(sp[0].method) n=\(n)")
                }
            }
            // packed deltas
            let masks = try xs.enumerated().map { try cpu.sparsifyMask(base: base, $0.element, .dare(0.1, seed: 2, stream: UInt64($0.offset))).mask }
            let packed: [PackedDelta<BFloat16>] = try (0..<3).map { try cpu.pack(base: base, xs[$0], mask: masks[$0]) }
            XCTAssertEqual(bits(try cpu.sparseApply(base: base, packed, scales: w) as [Float]), bits(try gpu.sparseApply(base: base, packed, scales: w) as [Float]))
        }
    }

    /// Device selection on every path: sampled bracket with candidates collected, heavy ties (the
    /// candidates overflow and histograms refine the bracket), and the forced histogram path.
    func testSelectionPathsMatchCPU() throws {
        let (cpu, gpu) = try pair()
        var rng = Rng(83)
        let n = 300_001
        let base = rng.floats(n)
        let spread = base.map { $0 + rng.normal() * 0.01 }
        let tied = base.map { $0 + (rng.uniform() < 0.5 ? 0.25 : -0.25) } // |delta| takes few values
        let halfTied: [Float] = (0..<n).map { i in base[i] + (i % 3 == 0 ? 0.125 : rng.normal() * 0.05) }
        let d: [Double] = [0.001, 0.1, 0.5, 0.9]
        for radix in [false, true] {
            if radix { setenv("MELD_SELECT", "radix", 1) }
            defer { unsetenv("MELD_SELECT") }
            for xs in [[spread], [tied], [halfTied]] {
                for density in d {
                    XCTAssertEqual(try cpu.taskSelect(base: base, xs, densities: [density]),
                                   try gpu.taskSelect(base: base, xs, densities: [density]), "density \(density) radix \(radix)")
                }
            }
        }
    }

    /// A chain that stays on the device: inputs uploaded once, TIES into a device buffer, then a
    /// conversion from that buffer; only the final result comes back.
    func testDeviceBuffersChain() throws {
        let (cpu, gpu) = try pair()
        var rng = Rng(62)
        let n = 10_000
        let base = rng.floats(n), xs = (0..<2).map { _ in base.map { $0 + rng.normal() * 0.01 } }
        let db = try DeviceBuffer(gpu, base), dx = try xs.map { try DeviceBuffer(gpu, $0) }
        let out = try DeviceBuffer(gpu, bytes: n * 4), half = try DeviceBuffer(gpu, bytes: n * 2)
        try gpu.ties(base: db.view(.f32, count: n), dx.map { $0.view(.f32, count: n) }, weights: [1, 0.5], densities: [0.3, 0.6],
                     into: out.mutableView(.f32, count: n))
        try gpu.convert(out.view(.f32, count: n), into: half.mutableView(.bf16, count: n))
        let got: [BFloat16] = try half.download(n)
        let want: [BFloat16] = try cpu.ties(base: base, xs, weights: [1, 0.5], densities: [0.3, 0.6])
        XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern))
        // operations without a device kernel refuse device buffers with a clear error
        XCTAssertThrowsError(try gpu.slerp(t: 0.5, db.view(.f32, count: n), dx[0].view(.f32, count: n), into: out.mutableView(.f32, count: n))) {
            XCTAssertEqual(($0 as? MeldError)?.status, MeldError.unsupported)
        }
    }

    func testGroupedMatmulAndFFN() throws {
        let (cpu, gpu) = try pair()
        var rng = Rng(63)
        let E = 5, N = 70, K = 45, M = 37
        let w = (0..<(E * N * K)).map { _ in rng.normal() * 0.1 }, x = (0..<(M * K)).map { _ in rng.normal() }
        let ids = (0..<M).map { _ in Int32(rng.next() % UInt64(E)) }
        for wb in [false, true] {
            let pc = wb ? try PackedExperts(cpu, weights: w.map { BFloat16($0) }, experts: E, n: N, k: K) : try PackedExperts(cpu, weights: w, experts: E, n: N, k: K)
            let pg = wb ? try PackedExperts(gpu, weights: w.map { BFloat16($0) }, experts: E, n: N, k: K) : try PackedExperts(gpu, weights: w, experts: E, n: N, k: K)
            let a = try cpu.groupedMatmulGather(x: x, rows: M, ldx: K, ids: ids, weights: pc)
            let b = try gpu.groupedMatmulGather(x: x, rows: M, ldx: K, ids: ids, weights: pg)
            assertClose(b, a.map(Double.init), atol: 1e-5, rtol: 1e-5, "gather on device")
            XCTAssertThrowsError(try gpu.groupedMatmulGather(x: x, rows: M, ldx: K, ids: ids, weights: pc)) // packed for the CPU
        }
        let H = 24, I = 20
        let gu = (0..<(E * 2 * I * H)).map { _ in rng.normal() * 0.2 }, dn = (0..<(E * H * I)).map { _ in rng.normal() * 0.2 }
        let T = 9, k = 2
        let xt = (0..<(T * H)).map { _ in rng.normal() }, tid = (0..<(T * k)).map { _ in Int32(rng.next() % UInt64(E)) }, tw = (0..<(T * k)).map { _ in rng.uniform() }
        for o in [MoEFFNOptions(), MoEFFNOptions(activation: .swigluOAI, interleavedGateUp: true)] {
            let yc = try cpu.moeFFN(x: xt, tokens: T, ids: tid, routeWeights: tw, k: k, gateUp: try PackedExperts(cpu, weights: gu, experts: E, n: 2 * I, k: H),
                                    down: try PackedExperts(cpu, weights: dn, experts: E, n: H, k: I), options: o)
            let yg = try gpu.moeFFN(x: xt, tokens: T, ids: tid, routeWeights: tw, k: k, gateUp: try PackedExperts(gpu, weights: gu, experts: E, n: 2 * I, k: H),
                                    down: try PackedExperts(gpu, weights: dn, experts: E, n: H, k: I), options: o)
            assertClose(yg, yc.map(Double.init), atol: 1e-4, rtol: 1e-4, "ffn on device")
        }
    }

    /// `meld merge --device opencl` writes the same bytes as the CPU (conformance configs).
    func testMergeOnDeviceMatchesCPU() throws {
        _ = try pair()
        let cases = conformanceRoot + "/cases"
        guard FileManager.default.fileExists(atPath: cases) else { throw XCTSkip("no conformance fixtures at \(cases)") }
        for name in ["ties", "dare_ties", "task_arithmetic", "breadcrumbs_ties", "ties_bf16", "slerp"] {
            let dir = cases + "/" + name, out = tempDir("cl-\(name)")
            let cwd = FileManager.default.currentDirectoryPath
            XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(dir))
            defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
            var r = MergeRequest(configPath: "config.yml", outDir: out + "/cpu")
            r.quiet = true; r.seed = 7
            _ = try Merger.run(r)
            r.outDir = out + "/cl"; r.openCLDevice = -1
            _ = try Merger.run(r)
            let a = try Data(contentsOf: URL(fileURLWithPath: out + "/cpu/model.safetensors"))
            let b = try Data(contentsOf: URL(fileURLWithPath: out + "/cl/model.safetensors"))
            XCTAssertEqual(a, b, "\(name): OpenCL and CPU outputs differ")
        }
    }

    func testDeviceErrors() throws {
        let (_, gpu) = try pair()
        let c = try Context(threads: 1)
        XCTAssertThrowsError(try c.useOpenCL(device: OpenCL.devices.count + 3)) {
            XCTAssertEqual(($0 as? MeldError)?.status, MeldError.indexOutOfRange)
            XCTAssertTrue("\($0)".contains("does not exist"))
        }
        XCTAssertThrowsError(try DeviceBuffer(gpu, bytes: 1 << 60)) { XCTAssertEqual(($0 as? MeldError)?.status, MeldError.outOfMemory) }
        XCTAssertThrowsError(try DeviceBuffer(c, bytes: 16)) { XCTAssertEqual(($0 as? MeldError)?.status, MeldError.noDevice) }
        // a program that does not compile: the build log comes back in the message
        let dir = tempDir("cl-broken")
        try "__kernel void meld_convert(__global float *x) { this is not OpenCL C; }".write(toFile: dir + "/meld.cl", atomically: true, encoding: .utf8)
        let previous = getenv("MELD_CL_SOURCE_DIR").map { String(cString: $0) }
        setenv("MELD_CL_SOURCE_DIR", dir, 1)
        defer { if let previous { setenv("MELD_CL_SOURCE_DIR", previous, 1) } else { unsetenv("MELD_CL_SOURCE_DIR") } }
        XCTAssertThrowsError(try c.useOpenCL()) {
            XCTAssertEqual(($0 as? MeldError)?.status, MeldError.buildFailed)
            XCTAssertTrue("\($0)".contains("build failed"), "\($0)")
        }
        XCTAssertEqual(c.deviceName, "cpu") // a failed attach leaves the CPU path
    }
}
