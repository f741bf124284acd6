import XCTest
import Foundation
@testable import Meld
import CMeld

func maskBit(_ m: [UInt8], _ i: Int) -> Bool { (m[i >> 3] >> UInt8(i & 7)) & 1 == 1 }

/// Philox, DARE, DELLA, breadcrumbs, packed sparse task vectors: references, statistics,
/// bit-identity across ISA paths and thread counts.
final class SparseTests: XCTestCase {
    func testPhiloxKnownAnswers() {
        // Random123 kat_vectors, philox4x32 10
        XCTAssertEqual(Context.philox(counter: (0, 0, 0, 0), key: (0, 0)), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8])
        XCTAssertEqual(Context.philox(counter: (.max, .max, .max, .max), key: (.max, .max)), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd])
        XCTAssertEqual(Context.philox(counter: (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), key: (0xa4093822, 0x299f31d0)),
                       [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1])
    }

    func testStreamsAreStable() {
        XCTAssertEqual(Sparsifier.stream(tensor: "model.layers.0.mlp.up_proj.weight", expert: 1),
                       Sparsifier.stream(tensor: "model.layers.0.mlp.up_proj.weight", expert: 1))
        XCTAssertNotEqual(Sparsifier.stream(tensor: "a", expert: 0), Sparsifier.stream(tensor: "a", expert: 1))
        XCTAssertNotEqual(Sparsifier.stream(tensor: "a", expert: 0), Sparsifier.stream(tensor: "b", expert: 0))
    }

    /// DARE masks: keep rate within 4 sigma, the same bits on every ISA and thread count (and
    /// equal to the documented scalar Philox layout), different bits for different streams.
    func testDareMasks() throws {
        var rng = Rng(31)
        for n in [1, 17, 4096 + 5, 100_003] {
            let x = rng.floats(n)
            for d: Double in [0.1, 0.5, 0.9] {
                let s = Sparsifier.dare(d, seed: 42, stream: 7, rescale: .density)
                var first: [UInt8]?
                for ctx in try allContexts() {
                    let (m, scale) = try ctx.sparsifyMask(base: nil, x, s)
                    XCTAssertEqual(scale, Float(1 / d))
                    if let f = first { XCTAssertEqual(m, f, "\(ctx.isa.name)/\(ctx.threads)") } else { first = m }
                }
                let m = first!
                let kept = (0..<n).filter { maskBit(m, $0) }.count
                let sigma = (Double(n) * Double(d) * Double(1 - d)).squareRoot()
                XCTAssertLessThanOrEqual(abs(Double(kept) - Double(n) * Double(d)), 4 * sigma + 1, "n=\(n) d=\(d)")
                // the documented layout (uniform32 below)
                if n == 4101 {
                    let key = philoxKey(seed: 42, stream: 7)
                    let p32 = UInt64((d * 4_294_967_296).rounded(.up))
                    for i in 0..<n { XCTAssertEqual(maskBit(m, i), UInt64(uniform32(i, key: key)) < p32, "element \(i), d=\(d)") }
                    let other = try Context(threads: 1).sparsifyMask(base: nil, x, Sparsifier.dare(d, seed: 42, stream: 8)).mask
                    XCTAssertNotEqual(m, other, "different streams give different masks")
                }
                // the L1 rescale keeps the bits it drew as a bitmap: the same mask
                XCTAssertEqual(try Context(threads: 2).sparsifyMask(base: nil, x, Sparsifier.dare(d, seed: 42, stream: 7, rescale: .l1)).mask, m)
                // a caller's bitmap comes back as given, bits past n cleared
                var given = m
                if n % 8 != 0 { given[given.count - 1] |= UInt8(0xff) << UInt8(n % 8) }
                XCTAssertEqual(try Context(threads: 2).sparsifyMask(base: nil, x, Sparsifier(.mask, mask: given)).mask, m)
            }
        }
    }

    /// dare_ties / dare_linear: the merged tensor equals an f64 reference built from the mask
    /// the library reports, with the L1 rescale recomputed in f64.
    /// Keep bits that the second draw v decides: densities whose threshold's high half equals
    /// element i's first draw u (2^-16 of elements meet one by chance), just above and just below
    /// i's uniform u 2^16 + v. Every element still follows the documented layout, on every path.
    func testDareTieBreaks() throws {
        var rng = Rng(5)
        let n = 4101, x = rng.floats(n), key = philoxKey(seed: 11, stream: 4)
        let uniforms = (0..<n).map { uniform32($0, key: key) }
        for i in [0, 1, 6, 9, 4100] {
            for (d, kept) in [((Double(uniforms[i]) + 0.5) / 4_294_967_296, true), ((Double(uniforms[i]) - 0.5) / 4_294_967_296, false)] where d > 0 {
                let p32 = UInt64((d * 4_294_967_296).rounded(.up))
                let expected = uniforms.map { UInt64($0) < p32 }
                for ctx in try allContexts() {
                    let m = try ctx.sparsifyMask(base: nil, x, .dare(d, seed: 11, stream: 4)).mask
                    XCTAssertEqual(maskBit(m, i), kept, "element \(i) \(ctx.isa.name)")
                    XCTAssertEqual((0..<n).filter { maskBit(m, $0) != expected[$0] }, [], "wrong bits, element \(i) \(ctx.isa.name)/\(ctx.threads)")
                }
            }
        }
    }

    func testDareMergeMatchesReference() throws {
        var rng = Rng(32)
        let n = 20_011
        let base = rng.floats(n)
        // K = 2 runs the kernels' constant-K bodies, K = 6 their general one
        for K in [2, 6] {
        let xs = (0..<K).map { _ in base.map { $0 + rng.normal() * 0.02 } }
        let w: [Float] = (0..<K).map { [0.6, 0.4, 0.9, 0.3, 0.5, 0.7][$0] }
        for rescale in [Sparsifier.Rescale.none, .density, .l1] {
            let sp = (0..<K).map { Sparsifier.dare(0.3, seed: 1, stream: UInt64($0), rescale: rescale) }
            let masks = try (0..<K).map { try Context(threads: 1).sparsifyMask(base: base, xs[$0], sp[$0]) }
            for cons in [Consensus.none, .sum] {
                var ref = [Double](repeating: 0, count: n)
                var scale = [Double](repeating: 1, count: K)
                for k in 0..<K {
                    if rescale == .density { scale[k] = Double(Float(1.0 / 0.3)) }
                    if rescale == .l1 {
                        var all = 0.0, kept = 0.0
                        for i in 0..<n { let a = abs(Double(xs[k][i] - base[i])); all += a; if maskBit(masks[k].mask, i) { kept += a } }
                        scale[k] = all / kept
                        XCTAssertEqual(Double(masks[k].scale), scale[k], accuracy: 1e-6 * scale[k])
                    }
                }
                for i in 0..<n {
                    var v = [Double](repeating: 0, count: K)
                    for k in 0..<K where maskBit(masks[k].mask, i) { v[k] = Double(xs[k][i] - base[i]) * scale[k] * Double(w[k]) }
                    if cons == .sum {
                        let pos = v.reduce(0, +) >= 0
                        ref[i] = Double(base[i]) + v.filter { pos ? $0 > 0 : $0 < 0 }.reduce(0, +)
                    } else { ref[i] = Double(base[i]) + v.reduce(0, +) }
                }
                var first: [UInt32]?
                for ctx in try allContexts() {
                    let out: [Float] = try ctx.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: sp, options: MergeOptions(consensus: cons))
                    assertClose(out, ref, atol: 1e-6, rtol: 1e-5, "dare K=\(K) \(rescale) \(cons)")
                    if let f = first { XCTAssertEqual(bits(out), f, "K=\(K) \(rescale) \(cons) isa \(ctx.isa)") } else { first = bits(out) }
                }
            }
            // bf16 inputs (the rescale's L1 kernel specializes on a dtype all inputs share): the
            // same bits as the same values in f32
            if rescale == .l1 {
                let b16 = base.map { BFloat16($0) }, x16 = xs.map { $0.map { BFloat16($0) } }
                for ctx in try allContexts() {
                    let o16: [Float] = try ctx.mergeTaskVectors(base: b16, x16, weights: w, sparsifiers: sp, options: MergeOptions(consensus: .sum))
                    let o32: [Float] = try ctx.mergeTaskVectors(base: b16.map(\.floatValue), x16.map { $0.map(\.floatValue) }, weights: w,
                                                                sparsifiers: sp, options: MergeOptions(consensus: .sum))
                    assertSameBits(bits(o16), bits(o32), "dare l1 bf16 K=\(K) \(ctx.isa.name)/\(ctx.threads)")
                }
            }
        }
        }
    }

    /// Breadcrumbs keeps the ascending-rank window [n_bot, n_bot + target) exactly.
    func testBreadcrumbsWindow() throws {
        var rng = Rng(33)
        for n in [64, 4099, 70_001] {
            let base = rng.floats(n)
            let x = base.map { $0 + rng.normal() * 0.1 }
            let delta = zip(x, base).map { $0 - $1 }
            for (d, g): (Double, Double) in [(0.6, 0.02), (0.8, 0.05), (0.9, 0.2), (0.3, 0)] {
                let target = Int((d * Double(n)).rounded(.down)), top0 = Int((g * Double(n)).rounded(.down))
                var top = top0, bot = n - target - top0
                if bot < 0 { top += bot; bot = 0 }
                let inTop = referenceKeep(delta, k: top + target), inExcl = referenceKeep(delta, k: top)
                for ctx in try allContexts() {
                    let (m, _) = try ctx.sparsifyMask(base: base, x, .breadcrumbs(d, gamma: g))
                    for i in 0..<n where maskBit(m, i) != (inTop[i] && !inExcl[i]) {
                        XCTFail("n=\(n) d=\(d) g=\(g) index \(i)"); break
                    }
                    XCTAssertEqual((0..<n).filter { maskBit(m, $0) }.count, target)
                }
            }
        }
    }

    /// DELLA: rank-dependent keep probability (high ranks kept more), exact keep rate bounds,
    /// identical bits everywhere, epsilon validated.
    func testDellaMasks() throws {
        var rng = Rng(34)
        let rows = 64, cols = 1001, n = rows * cols
        let x = rng.floats(n)
        let s = Sparsifier.della(0.5, epsilon: 0.3, seed: 9, stream: 3, rowLength: cols)
        var first: [UInt8]?
        for ctx in try allContexts() {
            let (m, _) = try ctx.sparsifyMask(base: nil, x, s)
            if let f = first { XCTAssertEqual(m, f) } else { first = m }
        }
        let m = first!
        // ranks within each row: compare the keep rate of the lower and upper magnitude halves
        var lowKept = 0, highKept = 0
        for r in 0..<rows {
            let row = Array(x[(r * cols)..<((r + 1) * cols)])
            let order = row.indices.sorted { abs(row[$0]) != abs(row[$1]) ? abs(row[$0]) < abs(row[$1]) : $0 < $1 }
            for (rank, j) in order.enumerated() where maskBit(m, r * cols + j) { if rank < cols / 2 { lowKept += 1 } else { highKept += 1 } }
        }
        // the documented bits: element i of rank q (0-based, ascending |x|, ties by index) in its
        // row is kept iff (word i % 4 of Philox(key, (i / 4, 0, 0, 0))) >> 8 < ceil(p(q) 2^24),
        // p(q) = (d - eps) + 2 eps q / (cols - 1); rows of 1001 mostly start inside a 4-element block
        let key = philoxKey(seed: 9, stream: 3)
        for r in [0, 1, 37, rows - 1] {
            let row = Array(x[(r * cols)..<((r + 1) * cols)])
            let order = row.indices.sorted { abs(row[$0]) != abs(row[$1]) ? abs(row[$0]) < abs(row[$1]) : $0 < $1 }
            for (q, j) in order.enumerated() {
                let i = r * cols + j
                let p = (0.5 - 0.3) + 2 * 0.3 * Double(q) / Double(cols - 1)
                XCTAssertEqual(maskBit(m, i), uniform24(i, key: key) < UInt32((p * 16_777_216).rounded(.up)), "row \(r) element \(j)")
            }
        }
        // expected p: low half ~ 0.35, high half ~ 0.65 (d -/+ eps/2); 4 sigma ~ 0.0075 n/2
        let half = Double(n / 2)
        XCTAssertEqual(Double(lowKept) / half, 0.35, accuracy: 0.02)
        XCTAssertEqual(Double(highKept) / half, 0.65, accuracy: 0.02)
        let ctx = try Context(threads: 1)
        XCTAssertThrowsError(try ctx.sparsifyMask(base: nil, x, .della(0.5, epsilon: 0.5, seed: 1, stream: 1)))
        XCTAssertThrowsError(try ctx.sparsifyMask(base: nil, x, .della(0.9, epsilon: 0.15, seed: 1, stream: 1)))
        XCTAssertThrowsError(try ctx.sparsifyMask(base: nil, x, Sparsifier(.della, density: 0.5, epsilon: 0.1, rescale: .density)))
    }

    /// The generalized merge with magnitude sparsifiers equals the TIES kernel bit for bit.
    func testGeneralizedMergeEqualsTies() throws {
        var rng = Rng(35)
        let base = rng.floats(9000)
        let xs = (0..<3).map { _ in base.map { $0 + rng.normal() * 0.01 } }
        let w: [Float] = [1, 0.5, 0.7], d: [Double] = [0.2, 0.4, 0.6]
        for ctx in try allContexts() {
            let a: [Float] = try ctx.ties(base: base, xs, weights: w, densities: d)
            let b: [Float] = try ctx.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: d.map { .magnitude($0) },
                                                      options: MergeOptions(consensus: .sum, divisor: .weightSum))
            XCTAssertEqual(bits(a), bits(b))
        }
    }

    /// A merge plan run in ranges gives the one-call merge's bits, for every sparsifier kind (the
    /// rules index by global element: TIES tie cut-offs, Philox counters, DELLA and caller masks),
    /// in f32 and bf16, on every ISA and thread count; bad ranges and contexts are errors.
    func testMergePlanRangesEqualWholeMerge() throws {
        var rng = Rng(41)
        let a = MergePlan.rangeAlignment
        let n = 3 * a + 1234
        let base = rng.floats(n)
        // repeated magnitudes put TIES ties across range boundaries
        let xs = (0..<4).map { k in base.indices.map { i in base[i] + (i % 7 == 0 ? 0.01 : rng.normal() * 0.01) * Float(k + 1) } }
        let mask = (0..<(n + 7) / 8).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let sp: [Sparsifier] = [.magnitude(0.3), .dare(0.4, seed: 9, stream: 3),
                                Sparsifier(.della, density: 0.5, epsilon: 0.2, rescale: .l1, seed: 9, stream: 4, rowLength: 1000),
                                Sparsifier(.mask, mask: mask)]
        let w: [Float] = [1, 0.6, 0.8, 0.5]
        let opts = MergeOptions(consensus: .sum, divisor: .weightSum, lambda: 0.9)
        // ranges of one alignment unit, in reverse order, plus one two units long; the last ragged
        let ranges = [(3 * a, n - 3 * a), (2 * a, a), (0, 2 * a)]
        func check<T: MeldScalar>(_ ctx: Context, _ base: [T], _ xs: [[T]]) throws {
            let whole: [T] = try ctx.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: sp, options: opts)
            var parts = [T](repeating: base[0], count: n)
            try base.withUnsafeBytes { bp in try withViews(xs) { views in
                let plan = try MergePlan(ctx, base: TensorView(data: bp.baseAddress, count: n, dtype: T.dtype),
                                         views.map { TensorView(data: $0.data, count: n, dtype: T.dtype) }, weights: w, sparsifiers: sp, options: opts)
                try parts.withUnsafeMutableBytes { p in
                    for (first, c) in ranges {
                        try plan.run(first: first, into: MutableTensorView(data: p.baseAddress! + first * T.dtype.size, count: c, dtype: T.dtype))
                    }
                    let v = MutableTensorView(data: p.baseAddress, count: 16, dtype: T.dtype)
                    XCTAssertThrowsError(try plan.run(first: 16, into: v)) { XCTAssertEqual(($0 as? MeldError)?.status, MeldError.invalidArgument) }
                    XCTAssertThrowsError(try plan.run(first: n - 8, into: v)) { XCTAssertEqual(($0 as? MeldError)?.status, MeldError.sizeMismatch) }
                    let other = try Context(threads: 1)
                    XCTAssertEqual(meld_merge_plan_run(other.raw, plan.raw, 0, v.c), MELD_ERR_INVALID_ARGUMENT)
                }
            } }
            let wb = whole.withUnsafeBytes { Array($0) }, pb = parts.withUnsafeBytes { Array($0) }
            let diff = wb.indices.first { wb[$0] != pb[$0] }
            XCTAssertNil(diff, "isa \(ctx.isa) threads \(ctx.threads) \(T.dtype): first difference at element \((diff ?? 0) / T.dtype.size)")
        }
        for ctx in try allContexts() {
            try check(ctx, base, xs)
            try check(ctx, base.map { BFloat16($0) }, xs.map { $0.map { BFloat16($0) } })
        }
        let ctx = try Context(threads: 1)
        XCTAssertThrowsError(try MergePlan(ctx, base: TensorView(data: nil, count: 0, dtype: .f32), [], weights: [1], sparsifiers: [], options: MergeOptions())) {
            XCTAssertEqual(($0 as? MeldError)?.status, MeldError.sizeMismatch)
        }
    }

    /// Streaming in windows (meld_context_set_window): every merge method gives the same bits
    /// with windows on, and reports its passes window by window in index order, each window at
    /// most as long as asked (whole tiles; DELLA: whole rows), each pass covering [0, n) exactly.
    func testWindowsKeepBitsAndReportEveryRange() throws {
        var rng = Rng(43)
        let n = 200_003, window = 40_000, tile = 16384, row = 10_007
        let base = rng.floats(n)
        let xs = (0..<3).map { k in base.indices.map { i in base[i] + (i % 5 == 0 ? 0.02 : rng.normal() * 0.01) * Float(k + 1) } }
        let w: [Float] = [1, 0.6, 0.8]
        let ties = MergeOptions(consensus: .sum, divisor: .weightSum)
        func tv(_ sp: [Sparsifier]) -> (Context) throws -> [Float] {
            { try $0.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: sp, options: ties) }
        }
        // (name, merge, the window length a pass of it must show: tiles, or DELLA's rows)
        let methods: [(String, (Context) throws -> [Float], Int)] = [
            ("ties", tv([.magnitude(0.2), .magnitude(0.5), .magnitude(0.35)]), window / tile * tile),
            ("dare l1", tv((0..<3).map { .dare(0.4, seed: 5, stream: UInt64($0)) }), window / tile * tile),
            ("della", tv((0..<3).map { .della(0.5, epsilon: 0.2, seed: 5, stream: UInt64($0), rowLength: row) }), window / row * row),
            ("breadcrumbs", tv((0..<3).map { _ in .breadcrumbs(0.5, gamma: 0.05) }), window / tile * tile),
            ("task arithmetic", { try $0.taskArithmetic(base: base, xs, weights: w) }, window / tile * tile),
            ("slerp", { try $0.slerp(t: 0.3, base, xs[0]) }, window / tile * tile),
            ("model stock", { try $0.modelStock(base: base, xs).merged }, window / tile * tile),
        ]
        for threads in [1, 2] {
            let ctx = try Context(threads: threads)
            for (name, merge, shown) in methods {
                let what = "\(name), \(threads) threads"
                let plain = try merge(ctx)
                var calls: [(Int, Int)] = []
                ctx.setWindow(elements: window) { calls.append(($0, $1)) }
                let windowed = try merge(ctx)
                ctx.setWindow(elements: window, done: nil)
                XCTAssertEqual(bits(plain), bits(windowed), "\(what): windows changed the result")
                // split into passes: a pass goes on where its last window ended
                var passes: [[(Int, Int)]] = []
                for c in calls {
                    if let last = passes.last?.last, last.0 + last.1 == c.0 { passes[passes.count - 1].append(c) } else { passes.append([c]) }
                }
                XCTAssertFalse(passes.isEmpty, "\(what): no pass reported")
                for p in passes {
                    XCTAssertEqual(p.first!.0, 0, "\(what): a pass must start at element 0: \(p)")
                    XCTAssertEqual(p.last!.0 + p.last!.1, n, "\(what): a pass must end at element n: \(p)")
                    XCTAssertTrue(p.allSatisfy { $0.1 <= max(window, row) }, "\(what): a window longer than asked: \(p)")
                }
                XCTAssertTrue(passes.contains { p in p.count > 1 && p.dropLast().allSatisfy { $0.1 == shown } },
                              "\(what): no pass in windows of \(shown): \(passes)")
                calls = []
                _ = try merge(ctx)
                XCTAssertTrue(calls.isEmpty, "\(what): windows off, yet \(calls.count) reports")
            }
        }
    }

    /// Side work (meld_context_set_side_work): the same bits with it on; on 2 and 3 threads it
    /// is called during the passes, never by two threads at once; on 1 thread, and once turned
    /// off, never.
    func testSideWorkKeepsBitsAndRunsOneAtATime() throws {
        var rng = Rng(47)
        let n = 1_500_007
        let base = rng.floats(n)
        let xs = (0..<3).map { k in base.map { $0 + rng.normal() * 0.01 * Float(k + 1) } }
        let w: [Float] = [1, 0.6, 0.8]
        let methods: [(String, (Context) throws -> [Float])] = [
            ("ties", { try $0.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: [.magnitude(0.2), .magnitude(0.5), .magnitude(0.35)],
                                               options: MergeOptions(consensus: .sum, divisor: .weightSum)) }),
            ("dare", { try $0.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: (0..<3).map { .dare(0.4, seed: 5, stream: UInt64($0)) },
                                               options: MergeOptions(consensus: .sum, divisor: .weightSum)) }),
            ("task arithmetic", { try $0.taskArithmetic(base: base, xs, weights: w) }),
        ]
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var calls = 0, inside = 0, most = 0
        }
        for threads in [1, 2, 3] {
            let ctx = try Context(threads: threads)
            for (name, merge) in methods {
                let what = "\(name), \(threads) threads"
                let plain = try merge(ctx)
                let t = Tally()
                ctx.setSideWork {
                    t.lock.lock(); t.calls += 1; t.inside += 1; t.most = max(t.most, t.inside); let k = t.calls; t.lock.unlock()
                    usleep(20)   // a piece of work, long enough for another thread to come by
                    t.lock.lock(); t.inside -= 1; t.lock.unlock()
                    return k % 4 != 0   // now and then nothing left to do
                }
                let withSide = try merge(ctx)
                ctx.setSideWork(nil)
                XCTAssertEqual(bits(plain), bits(withSide), "\(what): side work changed the result")
                XCTAssertEqual(t.most, threads > 1 ? 1 : 0, "\(what): at most one thread at a time in the side work")
                if threads > 1 { XCTAssertGreaterThan(t.calls, 0, "\(what): no side work called") } else { XCTAssertEqual(t.calls, 0, what) }
                let calls = t.calls
                _ = try merge(ctx)
                XCTAssertEqual(t.calls, calls, "\(what): side work off, yet called")
            }
        }
    }

    /// Packed deltas: pack then apply equals base + sum s_k * masked delta; all dtypes; K = 4.
    func testPackAndApply() throws {
        var rng = Rng(36)
        for n in [1, 15, 4096 + 3, 50_001] {
            let base = rng.floats(n)
            let xs = (0..<4).map { _ in base.map { $0 + rng.normal() * 0.05 } }
            let scales: [Float] = [1, 0.5, -0.25, 2]
            var first: [UInt32]?
            for ctx in try allContexts() {
                let masks = try xs.enumerated().map { try ctx.sparsifyMask(base: base, $0.element, .dare(0.1, seed: 5, stream: UInt64($0.offset))).mask }
                let packed: [PackedDelta<Float>] = try (0..<4).map { try ctx.pack(base: base, xs[$0], mask: masks[$0]) }
                for k in 0..<4 { XCTAssertEqual(packed[k].values.count, (0..<n).filter { maskBit(masks[k], $0) }.count) }
                let out: [Float] = try ctx.sparseApply(base: base, packed, scales: scales)
                var ref = base.map(Double.init)
                for k in 0..<4 { for i in 0..<n where maskBit(masks[k], i) { ref[i] += Double(scales[k]) * Double(xs[k][i] - base[i]) } }
                assertClose(out, ref, atol: 1e-6, rtol: 1e-6, "apply n=\(n)")
                // the documented rounding, exactly: k ascending, one fused multiply-add per kept entry
                // (scales that are not powers of two, whose products round)
                let odd: [Float] = [0.7, -1.3, 0.35, 1.9]
                let outOdd: [Float] = try ctx.sparseApply(base: base, packed, scales: odd)
                var fused = base
                for k in 0..<4 { for (j, i) in (0..<n).filter({ maskBit(masks[k], $0) }).enumerated() { fused[i].addProduct(odd[k], packed[k].values[j]) } }
                XCTAssertEqual(bits(outOdd), bits(fused), "fused rounding \(ctx.isa.name)/\(ctx.threads) n=\(n)")
                if let f = first { XCTAssertEqual(bits(out), f, "\(ctx.isa.name)/\(ctx.threads)") } else { first = bits(out) }
                // bf16 values and bf16 output
                let p16: [PackedDelta<BFloat16>] = try (0..<4).map { try ctx.pack(base: base, xs[$0], mask: masks[$0]) }
                let o16: [BFloat16] = try ctx.sparseApply(base: base, p16, scales: scales)
                var ref16 = base.map(Double.init)
                for k in 0..<4 { for (j, i) in (0..<n).filter({ maskBit(masks[k], $0) }).enumerated() { ref16[i] += Double(scales[k]) * Double(p16[k].values[j].floatValue) } }
                assertClose(o16.map(\.floatValue), ref16, atol: 1e-5, rtol: 1.0 / 128, "apply bf16")
                // a bf16 output is exactly the RNE rounding of the same apply with an f32 output
                let o32: [Float] = try ctx.sparseApply(base: base, p16, scales: scales)
                XCTAssertEqual(o16.map(\.bitPattern), o32.map { BFloat16($0).bitPattern }, "bf16 out \(ctx.isa.name)/\(ctx.threads) n=\(n)")
                // bf16 values (AVX2 expands and widens them in one shuffle): the documented rounding, exactly
                let o16odd: [Float] = try ctx.sparseApply(base: base, p16, scales: odd)
                var fused16 = base
                for k in 0..<4 { for (j, i) in (0..<n).filter({ maskBit(masks[k], $0) }).enumerated() { fused16[i].addProduct(odd[k], p16[k].values[j].floatValue) } }
                assertSameBits(bits(o16odd), bits(fused16), "bf16 values, fused rounding \(ctx.isa.name)/\(ctx.threads) n=\(n)")
                // a bf16 base with bf16 values (a kernel specialized on both dtypes): the same bits
                // as the same values with an f32 base (the general path)
                let b16 = base.map { BFloat16($0) }
                let s16: [BFloat16] = try ctx.sparseApply(base: b16, p16, scales: odd)
                let s32: [BFloat16] = try ctx.sparseApply(base: b16.map(\.floatValue), p16, scales: odd)
                assertSameBits(s16.map(\.bitPattern), s32.map(\.bitPattern), "bf16 base \(ctx.isa.name)/\(ctx.threads) n=\(n)")
            }
        }
        let ctx = try Context(threads: 1)
        let bad = PackedDelta<Float>(mask: [0xff], values: [1, 2, 3], count: 8) // nnz mismatch
        XCTAssertThrowsError(try ctx.sparseApply(base: [Float](repeating: 0, count: 8), [bad], scales: [1]) as [Float])
    }
}

/// The documented Philox key (meld_sparse.h): splitmix64(seed ^ splitmix64(stream)), low word first.
func philoxKey(seed: UInt64, stream: UInt64) -> (UInt32, UInt32) {
    func splitmix64(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    let k = splitmix64(seed ^ splitmix64(stream))
    return (UInt32(truncatingIfNeeded: k), UInt32(k >> 32))
}

/// DARE's documented 32-bit uniform of element i: u 2^16 + v, u the 16-bit half i % 2 (0 = low)
/// of word (i / 2) % 4 of Philox(key, (i / 8, 0, 0, 0)), v the same of Philox(key, (i / 8, 0, 1, 0)).
func uniform32(_ i: Int, key: (UInt32, UInt32)) -> UInt32 {
    func half(_ c2: UInt32) -> UInt32 {
        Context.philox(counter: (UInt32(i / 8), 0, c2, 0), key: key)[(i / 2) % 4] >> (16 * UInt32(i % 2)) & 0xffff
    }
    return half(0) << 16 | half(1)
}

/// DELLA's documented 24-bit uniform of element i: word i % 4 of Philox(key, (i / 4, 0, 0, 0)), >> 8.
func uniform24(_ i: Int, key: (UInt32, UInt32)) -> UInt32 {
    Context.philox(counter: (UInt32(i / 4), 0, 0, 0), key: key)[i % 4] >> 8
}
