import XCTest
@testable import Meld
import CMeld

/// linear, task arithmetic, TIES and its building blocks against f64 references, on every ISA
/// and on 1 and 2 threads; bit-identity across those; edge cases.
final class MergeTests: XCTestCase {
    /// Tolerance for f32 evaluation of a few products and sums: 8 ulps of the magnitudes involved.
    let rtol = 8.0 * 0x1p-24

    func testLinear() throws {
        var rng = Rng(11)
        for n in testSizes {
            for K in [1, 3, 5] {
                let xs = (0..<K).map { _ in rng.floats(n) }
                let w: [Float] = (0..<K).map { _ in rng.uniform() * 2 - 0.5 }
                for normalize in [true, false] {
                    let wsum = w.reduce(0, +)
                    var ref = [Double](repeating: 0, count: n), scale = ref
                    for i in 0..<n {
                        for k in 0..<K { ref[i] += Double(w[k]) * Double(xs[k][i]); scale[i] += abs(Double(w[k]) * Double(xs[k][i])) }
                        if normalize { ref[i] /= Double(wsum); scale[i] /= abs(Double(wsum)) }
                    }
                    var first: [UInt32]?
                    for ctx in try allContexts() {
                        let out: [Float] = try ctx.linear(xs, weights: w, normalize: normalize)
                        for i in 0..<n { XCTAssertLessThanOrEqual(abs(Double(out[i]) - ref[i]), rtol * scale[i] + 1e-30) }
                        if let f = first { XCTAssertEqual(bits(out), f, "\(ctx.isa.name)/\(ctx.threads) n=\(n)") } else { first = bits(out) }
                    }
                }
            }
        }
    }

    func testTaskArithmetic() throws {
        var rng = Rng(12)
        for n in testSizes {
            let base = rng.floats(n)
            let xs = (0..<3).map { _ in base.map { $0 + rng.normal() * 0.01 } }
            let w: [Float] = [0.7, 0.4, -0.2], lambda: Float = 0.9
            for normalize in [false, true] {
                var ref = [Double](repeating: 0, count: n)
                for i in 0..<n {
                    var d = 0.0
                    for k in 0..<3 { d += Double(w[k]) * (Double(xs[k][i]) - Double(base[i])) }
                    if normalize { d /= 0.9 }
                    ref[i] = Double(base[i]) + Double(lambda) * d
                }
                var first: [UInt32]?
                for ctx in try allContexts() {
                    let out: [Float] = try ctx.taskArithmetic(base: base, xs, weights: w, lambda: lambda, normalize: normalize)
                    assertClose(out, ref, atol: 1e-7, rtol: 1e-6, "task arithmetic n=\(n)")
                    if let f = first { XCTAssertEqual(bits(out), f) } else { first = bits(out) }
                }
            }
        }
    }

    func testTiesAgainstReference() throws {
        var rng = Rng(13)
        let variants: [TiesOptions] = [.mergekit, .paper, TiesOptions(consensus: .count, divisor: .none, lambda: 1.5),
                                       TiesOptions(consensus: .sum, divisor: .weightSum, lambda: 0.5)]
        for n in testSizes {
            let base = rng.floats(n)
            // dense small noise plus a sparse larger perturbation, as real fine-tunes
            let xs = (0..<3).map { _ in base.map { $0 + rng.normal() * 0.01 + (rng.uniform() < 0.1 ? rng.normal() * 0.1 : 0) } }
            let w: [Float] = [1.0, 0.6, -0.8], dens: [Double] = [0.2, 0.5, 0.35]
            for opt in variants {
                let (ref, clear) = tiesReference(base: base, models: xs, weights: w, densities: dens, options: opt)
                var first: [UInt32]?
                for ctx in try allContexts() {
                    let out: [Float] = try ctx.ties(base: base, xs, weights: w, densities: dens, options: opt)
                    assertClose(out, ref, atol: 1e-6, rtol: 1e-5, mask: clear, "ties n=\(n) \(opt) \(ctx.isa.name)")
                    if let f = first { XCTAssertEqual(bits(out), f, "ties \(ctx.isa.name)/\(ctx.threads) n=\(n)") } else { first = bits(out) }
                }
            }
        }
    }

    /// The fused pass equals the chain of building blocks: select -> apply -> elect -> disjoint merge.
    func testFusedEqualsBuildingBlocks() throws {
        var rng = Rng(14)
        // quantized deltas: many magnitudes tie at each threshold, so the tie cutoff falls inside
        // a tile (and the fused pass's one-compare tiles sit on both sides of it); NaN and Inf too
        for (n, quantized) in [(1, false), (17, false), (4096 + 33, false), (70_001, false), (50_001, true)] {
            let base = rng.floats(n)
            var xs = (0..<3).map { _ in base.map { $0 + (quantized ? Float(Int(rng.uniform() * 9) - 4) * 0.25 : rng.normal() * 0.05) } }
            if quantized { xs[1][777] = .nan; xs[2][40_000] = .infinity }
            let w: [Float] = [0.5, 1.0, 0.75], dens: [Double] = [0.3, 0.6, 0.1]
            for ctx in try allContexts() {
                for opt in [TiesOptions.mergekit, .paper] {
                    let fused: [Float] = try ctx.ties(base: base, xs, weights: w, densities: dens, options: opt)
                    let sels = try ctx.taskSelect(base: base, xs, densities: dens)
                    let trimmed = try (0..<3).map { k in try ctx.applySelection(zip(xs[k], base).map { $0 - $1 }, sels[k]) }
                    let sign = try ctx.signElect(trimmed, weights: opt.voteUnweighted ? nil : w, method: opt.consensus)
                    let chained: [Float] = try ctx.disjointMerge(base: base, trimmed, weights: w, sign: sign,
                                                                 voteUnweighted: opt.voteUnweighted, divisor: opt.divisor, lambda: opt.lambda)
                    XCTAssertEqual(bits(fused), bits(chained), "n=\(n) \(ctx.isa.name)")
                }
            }
        }
    }

    /// K = 1, 2 and 4 (the other tests use 3): the fused pass's specialized bodies exist per K,
    /// and K = 4 has 16 agreement patterns (the divisor table's two halves on AVX2). Weights
    /// whose agreeing sums cancel (1 + -1) make zero divisors, which count as 1. The fused pass
    /// must equal the chain of building blocks bit for bit, in f32 and bf16, on every ISA path.
    func testFusedAcrossExpertCounts() throws {
        var rng = Rng(18)
        let n = 4096 + 33
        let base = rng.floats(n)
        let all = (0..<4).map { _ in base.map { $0 + rng.normal() * 0.05 } }
        let wAll: [Float] = [1.0, -1.0, 0.5, 0.75], dAll: [Double] = [0.6, 0.7, 0.5, 0.8]
        for K in [1, 2, 4] {
            let xs = Array(all.prefix(K)), w = Array(wAll.prefix(K)), dens = Array(dAll.prefix(K))
            let b16 = base.map { BFloat16($0) }, x16 = xs.map { $0.map { BFloat16($0) } }
            for ctx in try allContexts() {
                let sels = try ctx.taskSelect(base: base, xs, densities: dens)
                let trimmed = try (0..<K).map { k in try ctx.applySelection(zip(xs[k], base).map { $0 - $1 }, sels[k]) }
                for opt in [TiesOptions.mergekit, .paper, TiesOptions(consensus: .sum, divisor: .none, lambda: 1.5)] {
                    let fused: [Float] = try ctx.ties(base: base, xs, weights: w, densities: dens, options: opt)
                    let sign = try ctx.signElect(trimmed, weights: opt.voteUnweighted ? nil : w, method: opt.consensus)
                    let chained: [Float] = try ctx.disjointMerge(base: base, trimmed, weights: w, sign: sign,
                                                                 voteUnweighted: opt.voteUnweighted, divisor: opt.divisor, lambda: opt.lambda)
                    assertSameBits(bits(fused), bits(chained), "K=\(K) \(opt) \(ctx.isa.name)/\(ctx.threads)")
                    let o16: [BFloat16] = try ctx.ties(base: b16, x16, weights: w, densities: dens, options: opt)
                    let o32: [Float] = try ctx.ties(base: b16, x16, weights: w, densities: dens, options: opt)
                    assertSameBits(o16.map(\.bitPattern), o32.map(bf16Reference), "bf16 K=\(K) \(opt) \(ctx.isa.name)/\(ctx.threads)")
                }
            }
        }
    }

    /// Deltas on a coarse grid, exact in f32 and bf16: thousands of magnitudes tie at each
    /// threshold, so each expert's tie cutoff falls inside a tile, where the fused pass splits
    /// the call (one-compare bodies on both sides, the generic body on the vector pair holding
    /// the cutoff). Every ISA and thread count must keep exactly the lower-index ties.
    func testTiesTieCutoffInsideTiles() throws {
        var rng = Rng(16)
        for n in [3 * 16384 + 77, 70_001] {
            let base = (0..<n).map { _ in Float(Int(rng.uniform() * 8) - 4) * 0.5 }
            let xs = (0..<3).map { _ in base.map { $0 + Float(Int(rng.uniform() * 9) - 4) * 0.25 } }
            let w: [Float] = [0.5, 1.0, 0.75], dens: [Double] = [0.3, 0.55, 0.1]
            let (ref, clear) = tiesReference(base: base, models: xs, weights: w, densities: dens, options: .mergekit)
            let b16 = base.map { BFloat16($0) }, x16 = xs.map { $0.map { BFloat16($0) } }
            var first: [UInt32]?
            for ctx in try allContexts() {
                let out: [Float] = try ctx.ties(base: base, xs, weights: w, densities: dens)
                assertClose(out, ref, atol: 0, rtol: 1e-6, mask: clear, "ties grid n=\(n) \(ctx.isa.name)")
                if let f = first { XCTAssertEqual(bits(out), f, "\(ctx.isa.name)/\(ctx.threads) n=\(n)") } else { first = bits(out) }
                let o16: [BFloat16] = try ctx.ties(base: b16, x16, weights: w, densities: dens)
                XCTAssertEqual(o16.map(\.bitPattern), out.map(bf16Reference), "bf16 grid n=\(n) \(ctx.isa.name)")
            }
        }
    }

    func testSignElectRules() throws {
        let ctx = try Context(threads: 1)
        // sum: zero elects +1; count: sign count; zeros never vote
        let d: [[Float]] = [[1, -1, 0, 2, -3], [-1, -1, 0, -1, 1], [0, 3, 0, -0.5, 1]]
        XCTAssertEqual(try ctx.signElect(d, weights: nil, method: .sum), [1, 1, 1, 1, -1])
        XCTAssertEqual(try ctx.signElect(d, weights: nil, method: .count), [1, -1, 1, -1, 1])
        XCTAssertEqual(try ctx.signElect(d, weights: [1, 1, -1], method: .sum), [1, -1, 1, 1, -1])
        // disjoint merge: zero deltas never agree; a zero divisor counts as one
        let out: [Float] = try ctx.disjointMerge(base: [10, 10, 10, 10, 10], d, weights: [1, 1, 1],
                                                 sign: [1, 1, 1, 1, -1], divisor: .weightSum)
        XCTAssertEqual(out, [11, 13, 10, 12, 7])
        let cnt: [Float] = try ctx.disjointMerge(base: nil, d, weights: [2, 2, 2], sign: [1, 1, 1, 1, -1], divisor: .count)
        XCTAssertEqual(cnt, [2, 6, 0, 4, -6])
    }

    func testEdgeCases() throws {
        for ctx in try allContexts() {
            // K = 1, density 1: task arithmetic with weight w
            let base: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
            let x = base.map { $0 * 2 }
            let t: [Float] = try ctx.ties(base: base, [x], weights: [0.5], densities: [1])
            XCTAssertEqual(t, x) // normalized by the agreeing weight: base + delta
            let u: [Float] = try ctx.ties(base: base, [x], weights: [0.5], densities: [1], options: TiesOptions(divisor: .none))
            XCTAssertEqual(u, base.map { $0 * 1.5 })
            // density 0 keeps nothing
            let z: [Float] = try ctx.ties(base: base, [x, x], weights: [1, 1], densities: [0, 0])
            XCTAssertEqual(z, base)
            // zero weights: no contribution, divisor 0 counts as 1
            let zw: [Float] = try ctx.ties(base: base, [x], weights: [0], densities: [1])
            XCTAssertEqual(zw, base)
            // NaN and Inf propagate (torch semantics: NaN * 0 is NaN)
            var xn = x; xn[3] = .nan; xn[5] = .infinity
            let nn: [Float] = try ctx.ties(base: base, [xn, x], weights: [1, 1], densities: [1, 1])
            XCTAssertTrue(nn[3].isNaN)
            XCTAssertEqual(nn[5], .infinity)
            XCTAssertEqual(nn[4], x[4])
            let ta: [Float] = try ctx.taskArithmetic(base: base, [xn], weights: [1])
            XCTAssertTrue(ta[3].isNaN); XCTAssertEqual(ta[5], .infinity)
            // +Inf against -Inf: the sum vote is NaN and the disagreeing Inf times 0 is NaN;
            // under a count vote a disagreeing Inf alone (vote -1 against +Inf) gives NaN too
            var xp = x, xm = x, xl = x; xp[6] = .infinity; xm[6] = -.infinity; xl[2] = -1; xp[2] = .infinity
            for divisor in [Divisor.weightSum, .count, .none] {
                let pm: [Float] = try ctx.ties(base: base, [xp, xm, x], weights: [1, 1, 1], densities: [1, 1, 1],
                                               options: TiesOptions(divisor: divisor))
                XCTAssertTrue(pm[6].isNaN, "\(ctx.isa) \(divisor)")
                XCTAssertEqual(pm[2], .infinity) // xl unused here: Inf wins the sum vote and agrees
                XCTAssertEqual(pm[4], divisor == .none ? base[4] + 3 * base[4] : x[4])
                let cv: [Float] = try ctx.ties(base: base, [xp, xl, xl], weights: [1, 1, 1], densities: [1, 1, 1],
                                               options: TiesOptions(consensus: .count, divisor: divisor))
                XCTAssertTrue(cv[2].isNaN, "count vote \(ctx.isa) \(divisor)")
            }
            // more Inf/NaN deltas than kept ones: the threshold is not finite; a dropped Inf or NaN
            // times 0 is NaN (torch), kept Infs stay Inf, the rest of the tensor is unaffected
            var xi = x
            for j in [1, 4, 9, 12] { xi[j] = .infinity }
            xi[7] = .nan
            let ti: [Float] = try ctx.ties(base: base, [xi, x], weights: [1, 1], densities: [2.0 / 17, 1])
            XCTAssertTrue(ti[7].isNaN) // NaN magnitudes rank first: kept
            XCTAssertEqual(ti[1], .infinity) // the lower index wins the tie among the Infs
            for j in [4, 9, 12] { XCTAssertTrue(ti[j].isNaN, "dropped Inf at \(j) \(ctx.isa)") }
            XCTAssertEqual(ti[2], x[2])
            // n = 0
            let e: [Float] = try ctx.ties(base: [Float](), [[Float]()], weights: [1], densities: [0.5])
            XCTAssertEqual(e, [])
        }
    }

    /// bf16 and f16 outputs are the RNE rounding of the f32 result; mixed input dtypes work.
    func testLowPrecisionOutputsAreRoundedF32() throws {
        var rng = Rng(15)
        let n = 4096 + 45
        let base = rng.floats(n).map { BFloat16($0) }
        let xs = (0..<3).map { _ in base.map { BFloat16($0.floatValue + rng.normal() * 0.02) } }
        let w: [Float] = [1, 1, 1], d: [Double] = [0.25, 0.25, 0.25]
        var first: [UInt16]?
        for ctx in try allContexts() {
            let f32: [Float] = try ctx.ties(base: base, xs, weights: w, densities: d)
            let b16: [BFloat16] = try ctx.ties(base: base, xs, weights: w, densities: d)
            let h16: [Float16] = try ctx.ties(base: base, xs, weights: w, densities: d)
            for i in 0..<n {
                XCTAssertEqual(b16[i].bitPattern, bf16Reference(f32[i]))
                XCTAssertEqual(h16[i].bitPattern, Float16(f32[i]).bitPattern)
            }
            if let f = first { XCTAssertEqual(b16.map(\.bitPattern), f) } else { first = b16.map(\.bitPattern) }
            let lin: [BFloat16] = try ctx.linear(xs, weights: [1, 2, 3])
            let linf: [Float] = try ctx.linear(xs, weights: [1, 2, 3])
            XCTAssertEqual(lin.map(\.bitPattern), linf.map(bf16Reference))
        }
    }

    /// All-bf16 merges run two vectors per step in even/odd lane order (plain loads and stores).
    /// Every output must be the RNE rounding of the same merge with an f32 output, bit for bit
    /// (NaN payloads, ±Inf and subnormals included), on every ISA path and thread count, for the
    /// rules ALL (task arithmetic, linear), TOP (TIES) and BITS (DARE), at sizes around the pair
    /// width and with ragged tails.
    func testBF16PairPathRoundsTheF32Result() throws {
        var rng = Rng(77)
        let specials: [UInt16] = [0x7fc1, 0xffc0, 0x7f80, 0xff80, 0x0001, 0x8003, 0x007f, 0x0080, 0x7f7f, 0xff7f, 0x0000, 0x8000]
        for n in [1, 31, 32, 33, 63, 64, 65, 4096 + 45, 70_001] {
            var base = rng.floats(n, scale: 0.02).map { BFloat16($0) }
            var xs = (0..<3).map { _ in base.map { BFloat16($0.floatValue + rng.normal() * 0.002) } }
            for (j, s) in specials.enumerated() {
                if j * 7 + 3 < n { xs[j % 3][j * 7 + 3] = BFloat16(bitPattern: s) }
                if j * 11 + 5 < n { base[j * 11 + 5] = BFloat16(bitPattern: s) }
            }
            // results that are bf16 subnormals, and exact ties between two bf16 neighbours
            if n > 40 { base[40] = BFloat16(bitPattern: 0x0005); for k in 0..<3 { xs[k][40] = BFloat16(bitPattern: 0x0002) } }
            let w: [Float] = [0.7, -0.4, 1.3]
            let sp = (0..<3).map { Sparsifier.dare(0.4, seed: 9, stream: UInt64($0), rescale: .density) }
            let mo = MergeOptions(consensus: .sum, divisor: .weightSum)
            for ctx in try allContexts() {
                func same(_ a: [BFloat16], _ f: [Float], _ what: String) {
                    XCTAssertEqual(a.map(\.bitPattern), f.map { BFloat16($0).bitPattern }, "\(what) n=\(n) \(ctx.isa) \(ctx.threads)")
                }
                same(try ctx.taskArithmetic(base: base, xs, weights: w, lambda: 0.9),
                     try ctx.taskArithmetic(base: base, xs, weights: w, lambda: 0.9), "task arithmetic")
                same(try ctx.linear(xs, weights: [1, 2, 3]), try ctx.linear(xs, weights: [1, 2, 3]), "linear")
                same(try ctx.ties(base: base, xs, weights: w, densities: [0.3, 0.5, 0.7]),
                     try ctx.ties(base: base, xs, weights: w, densities: [0.3, 0.5, 0.7]), "ties")
                same(try ctx.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: sp, options: mo),
                     try ctx.mergeTaskVectors(base: base, xs, weights: w, sparsifiers: sp, options: mo), "dare_ties")
            }
        }
    }
}
