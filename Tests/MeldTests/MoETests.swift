import XCTest
import Foundation
@testable import Meld
import CMeld

/// f64 references of the published routers.
func routeReference(_ l: [Float], E: Int, o: RouteOptions) -> (ids: [Int32], w: [Double]) {
    let x = l.map(Double.init)
    var score: [Double]
    switch o.score {
    case .softmax: let m = x.max()!; let e = x.map { Foundation.exp($0 - m) }; let s = e.reduce(0, +); score = e.map { $0 / s }
    case .sigmoid: score = x.map { 1 / (1 + Foundation.exp(-$0)) }
    case .logits: score = x
    }
    var choice = zip(score, o.selectionBias ?? [Float](repeating: 0, count: E)).map { $0 + Double($1) }
    if o.nGroup > 0 {
        let per = E / o.nGroup
        let gs = (0..<o.nGroup).map { g -> Double in let s = choice[(g * per)..<((g + 1) * per)].sorted(by: >); return s[0] + s[1] }
        let keep = Set(gs.indices.sorted { gs[$0] != gs[$1] ? gs[$0] > gs[$1] : $0 < $1 }.prefix(o.topkGroup))
        for g in 0..<o.nGroup where !keep.contains(g) { for i in 0..<per { choice[g * per + i] = -.infinity } }
    }
    let ids = choice.indices.sorted { choice[$0] != choice[$1] ? choice[$0] > choice[$1] : $0 < $1 }.prefix(o.topK).map { Int32($0) }
    var w = ids.map { score[Int($0)] }
    if o.softmaxAfterTopK { let m = w.max()!; let e = w.map { Foundation.exp($0 - m) }; let s = e.reduce(0, +); w = e.map { $0 / s } }
    if o.normalize { let s = w.reduce(0, +); w = w.map { $0 / s } }
    return (ids, w.map { $0 * Double(o.routedScaling) })
}

/// y = x W^T in f64, with the magnitude sum for the tolerance.
func matmulRef(_ x: ArraySlice<Float>, _ w: [Float], e: Int, n: Int, k: Int) -> (Double, Double) {
    var s = 0.0, a = 0.0
    for i in 0..<k {
        let p = Double(x[x.startIndex + i]) * Double(w[(e * n) * k + i])
        s += p; a += abs(p)
    }
    return (s, a)
}

final class MoETests: XCTestCase {
    func testRoutingVariants() throws {
        var rng = Rng(51)
        let cases: [(String, Int, RouteOptions)] = [
            ("mixtral", 8, .mixtral()),
            ("qwen-norm", 64, .qwen(topK: 8, normTopkProb: true)),
            ("qwen-raw", 64, .qwen(topK: 8, normTopkProb: false)),
            ("olmoe", 64, .qwen(topK: 8, normTopkProb: false)),
            ("gpt-oss", 32, .gptOss(topK: 4)),
            ("deepseek", 64, .deepseekV3(topK: 8, bias: (0..<64).map { _ in rng.normal() * 0.1 }, nGroup: 8, topkGroup: 4, scaling: 2.5)),
            ("k=1", 16, RouteOptions(topK: 1)),
            ("k=E", 6, RouteOptions(topK: 6, normalize: true)),
        ]
        for (name, E, o) in cases {
            for T in [0, 1, 37] {
                let logits = (0..<(T * E)).map { _ in rng.normal() * 2 }
                var first: ([Int32], [UInt32])?
                for ctx in try allContexts() {
                    let (ids, w) = try ctx.route(logits: logits, tokens: T, experts: E, options: o)
                    for t in 0..<T {
                        let r = routeReference(Array(logits[(t * E)..<((t + 1) * E)]), E: E, o: o)
                        XCTAssertEqual(Array(ids[(t * o.topK)..<((t + 1) * o.topK)]), r.ids, "\(name) token \(t)")
                        for j in 0..<o.topK { XCTAssertEqual(Double(w[t * o.topK + j]), r.w[j], accuracy: 2e-6 * max(1, abs(r.w[j])), name) }
                    }
                    // every ISA path and thread count: the same ids and the same weight bits
                    if let f = first {
                        XCTAssertEqual(ids, f.0, "\(name) \(ctx.isa.name) \(ctx.threads) threads")
                        XCTAssertEqual(bits(w), f.1, "\(name) \(ctx.isa.name) \(ctx.threads) threads")
                    } else { first = (ids, bits(w)) }
                }
            }
        }
        // ties: equal logits choose the lowest ids
        let ctx = try Context(threads: 1)
        XCTAssertEqual(try ctx.route(logits: [Float](repeating: 1, count: 8), tokens: 1, experts: 8, options: .mixtral()).ids, [0, 1])
        XCTAssertThrowsError(try ctx.route(logits: [1, 2, 3], tokens: 1, experts: 3, options: RouteOptions(topK: 4)))
        XCTAssertThrowsError(try ctx.route(logits: [Float](repeating: 0, count: 12), tokens: 1, experts: 12,
                                           options: RouteOptions(topK: 2, nGroup: 5, topkGroup: 1)))
    }

    func testDispatchPlan() throws {
        let ctx = try Context(threads: 1)
        let ids: [Int32] = [2, 0, 2, 2, 1, 2] // tokens 0..2, k = 2; token 1 picks expert 2 twice
        let p = try ctx.dispatchPlan(ids: ids, tokens: 3, k: 2, experts: 4)
        XCTAssertEqual(p.counts, [1, 1, 4, 0])
        XCTAssertEqual(p.offsets, [0, 1, 2, 6, 6])
        XCTAssertEqual(p.order, [1, 4, 0, 2, 3, 5])
        for (s, pair) in p.order.enumerated() { XCTAssertEqual(p.inverse[Int(pair)], Int32(s)) }
        XCTAssertThrowsError(try ctx.dispatchPlan(ids: [0, 4], tokens: 1, k: 2, experts: 4)) {
            XCTAssertEqual(($0 as? MeldError)?.status, MeldError.indexOutOfRange)
            XCTAssertTrue("\($0)".contains("expert id 4"))
        }
        XCTAssertThrowsError(try ctx.dispatchPlan(ids: [-1], tokens: 1, k: 1, experts: 4))
    }

    /// Both forms against f64, all weight dtypes, ragged sizes, leading dimensions, empty
    /// experts, everything on one expert; every ISA path and thread count gives the same bits.
    func testGroupedMatmul() throws {
        var rng = Rng(52)
        // ldx 1024: rows on the 4 KiB grid (the bf16 dot kernel's prefill copies those to a padded stride)
        // (6, 33, 64, 400): with "skew", busy experts beside ones of a few rows, in several copy phases
        // (the few-row ones, like (3, 33, 300, 70)'s ~23 rows an expert in f32, are read in place in
        // decode order: rows_streamed)
        // (8, 600, 40, 8): decode tasks of several panels, the last one partial (their width
        // depends on the thread count)
        // (4, 40, 300, 8), (3, 40, 520, 7): "one" puts 8 or 7 rows on an expert, decode in more
        // than one row tile where MR is 6 (AVX2), over 2 or 3 k blocks and a partial panel
        // (2, 300, 24, 250, 25): "one" and "skew" give an expert 2-3 row blocks of many rows over
        // 2-3 column tiles, which 2 threads take side by side (group_units)
        for (E, N, K, M, ldx) in [(4, 37, 23, 29, 26), (8, 64, 64, 1, 67), (3, 33, 300, 70, 303), (3, 33, 300, 70, 1024), (5, 16, 8, 0, 11),
                                  (6, 33, 64, 400, 64), (8, 600, 40, 8, 41), (4, 40, 300, 8, 300), (3, 40, 520, 7, 523), (2, 300, 24, 250, 25)] {
            let wf = (0..<(E * N * K)).map { _ in rng.normal() * 0.1 }
            let ldy = N + 5
            let x = (0..<(max(M, 1) * ldx)).map { _ in rng.normal() }
            for routing in ["spread", "one", "skip", "skew"] {
                // skew: 3 in 4 rows on expert 0, the rest spread (prefill mixes row blocks bound by
                // FMAs with ones bound by reading their weights)
                let ids: [Int32] = (0..<M).map { r in
                    switch routing {
                    case "one": Int32(E - 1)
                    case "skip": Int32((r % 2) * 2 % E)
                    case "skew": r % 4 != 0 ? 0 : Int32(rng.next() % UInt64(E))
                    default: Int32(rng.next() % UInt64(E))
                    }
                }
                let sortedRows = (0..<M).sorted { ids[$0] != ids[$1] ? ids[$0] < ids[$1] : $0 < $1 }
                var offsets = [Int32](repeating: 0, count: E + 1)
                for id in ids { offsets[Int(id) + 1] += 1 }
                for e in 0..<E { offsets[e + 1] += offsets[e] }
                let xs = sortedRows.flatMap { Array(x[($0 * ldx)..<($0 * ldx + ldx)]) }
                for (dtName, tol) in [("f32", 1e-5), ("bf16", 1e-5), ("f16", 1e-5)] {
                    var first: [Float]?
                    // the weights as the kernels see them, and packed for a context
                    let wq = dtName == "bf16" ? wf.map { BFloat16($0).floatValue } : dtName == "f16" ? wf.map { Float(Float16($0)) } : wf
                    func pack(_ c: Context) throws -> PackedExperts {
                        switch dtName {
                        case "bf16": try PackedExperts(c, weights: wf.map { BFloat16($0) }, experts: E, n: N, k: K)
                        case "f16": try PackedExperts(c, weights: wf.map { Float16($0) }, experts: E, n: N, k: K)
                        default: try PackedExperts(c, weights: wf, experts: E, n: N, k: K)
                        }
                    }
                    for ctx in try allContexts() {
                        let packed = try pack(ctx)
                        let yg = try ctx.groupedMatmulGather(x: x, rows: M, ldx: ldx, ids: ids, weights: packed, ldy: ldy)
                        let yo = try ctx.groupedMatmul(x: xs, ldx: ldx, offsets: offsets, weights: packed, ldy: ldy)
                        // the prefill copy one (expert, row block) at a time, or a few: the same bits
                        for copyBytes in ["1", "60000"] {
                            setenv("MELD_MOE_COPY_BYTES", copyBytes, 1)
                            let yp = try ctx.groupedMatmulGather(x: x, rows: M, ldx: ldx, ids: ids, weights: packed, ldy: ldy)
                            unsetenv("MELD_MOE_COPY_BYTES")
                            XCTAssertEqual(bits(yp), bits(yg), "copy in phases of \(copyBytes) bytes \(routing) \(ctx.isa)")
                        }
                        // each row alone (decode: row pointers, no copy) gives the bits it got among
                        // many (prefill: packed A tiles)
                        if routing == "one" {
                            for r in 0..<M {
                                let y1 = try ctx.groupedMatmulGather(x: Array(x[(r * ldx)..<(r * ldx + K)]), rows: 1, ldx: K, ids: [ids[r]], weights: packed, ldy: N)
                                XCTAssertEqual(bits(y1), bits(Array(yg[(r * ldy)..<(r * ldy + N)])), "row \(r) alone \(dtName) \(ctx.isa)")
                            }
                        }
                        for r in 0..<M {
                            let e = Int(ids[r]), s = sortedRows.firstIndex(of: r)!
                            for n in 0..<N {
                                let (ref, mag) = matmulRef(x[(r * ldx)..<(r * ldx + K)], Array(wq[((e * N + n) * K)..<((e * N + n) * K + K)]), e: 0, n: 1, k: K)
                                XCTAssertEqual(Double(yg[r * ldy + n]), ref, accuracy: tol * mag + 1e-30, "gather \(dtName) E\(E) N\(N) K\(K)")
                                XCTAssertEqual(yo[s * ldy + n], yg[r * ldy + n], "offsets == gather")
                            }
                        }
                        // every ISA path and thread count gives the bits of the first (scalar, 1 thread)
                        if let f = first {
                            assertSameBits(bits(yg), bits(f), "\(ctx.isa.name) \(ctx.threads) threads vs scalar, \(dtName) \(routing) E\(E) N\(N) K\(K) M\(M)")
                        } else { first = yg }
                        // more threads than the light list's one (the split between the lists)
                        if routing == "skew" && ctx.threads == 1 {
                            for t in [3, 5] {
                                let c = try Context(threads: t, isa: ctx.isa)
                                let y = try c.groupedMatmulGather(x: x, rows: M, ldx: ldx, ids: ids, weights: try pack(c), ldy: ldy)
                                XCTAssertEqual(bits(y), bits(yg), "\(t) threads \(dtName) \(ctx.isa.name)")
                            }
                        }
                    }
                }
            }
        }
        // weights packed for another ISA are refused
        if ISA.avx2.isSupported {
            let a = try Context(threads: 1, isa: .scalar), b = try Context(threads: 1, isa: .avx2)
            let p = try PackedExperts(a, weights: [Float](repeating: 1, count: 8), experts: 1, n: 2, k: 4)
            XCTAssertThrowsError(try b.groupedMatmulGather(x: [1, 2, 3, 4], rows: 1, ldx: 4, ids: [0], weights: p))
        }
    }

    /// The AVX512-BF16 dot-product kernel (opt-in): bf16 weights, activations rounded to bf16, so
    /// the bound is 2^-8 of the magnitude sum.
    func testBF16DotKernel() throws {
        guard ISA.avx512.isSupported else { throw XCTSkip("no AVX-512") }
        var rng = Rng(54)
        let E = 3, N = 70, K = 301, M = 41
        let w = (0..<(E * N * K)).map { _ in BFloat16(rng.normal() * 0.1) }, x = (0..<(M * K)).map { _ in rng.normal() }
        let ids = (0..<M).map { _ in Int32(rng.next() % UInt64(E)) }
        setenv("MELD_BF16_DOT", "1", 1)
        defer { unsetenv("MELD_BF16_DOT") }
        for threads in [1, 2] {
            let ctx = try Context(threads: threads, isa: .avx512)
            let p = try PackedExperts(ctx, weights: w, experts: E, n: N, k: K)
            guard p.kernel == "avx512bf16-dot" else { throw XCTSkip("this CPU has no AVX512-BF16 (kernel \(p.kernel))") }
            let y = try ctx.groupedMatmulGather(x: x, rows: M, ldx: K, ids: ids, weights: p)
            for r in 0..<M {
                for n in 0..<N {
                    let (ref, mag) = matmulRef(x[(r * K)..<(r * K + K)], w[((Int(ids[r]) * N + n) * K)..<((Int(ids[r]) * N + n) * K + K)].map(\.floatValue), e: 0, n: 1, k: K)
                    XCTAssertEqual(Double(y[r * N + n]), ref, accuracy: 0x1p-8 * mag + 1e-30)
                }
            }
        }
    }

    func ffnReference(x: [Float], T: Int, H: Int, I: Int, ids: [Int32], w: [Float], k: Int, gu: [Float], dn: [Float],
                      shared: ([Float], [Float], Int)?, o: MoEFFNOptions) -> [Double] {
        func act(_ g: Double, _ u: Double) -> Double {
            switch o.activation {
            case .silu: return g / (1 + Foundation.exp(-g)) * u
            case .geluTanh: return 0.5 * g * (1 + Foundation.tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * u
            case .swigluOAI:
                let gg = min(g, Double(o.limit)), uu = min(max(u, -Double(o.limit)), Double(o.limit))
                return (uu + 1) * gg / (1 + Foundation.exp(-Double(o.alpha) * gg))
            }
        }
        func expert(_ t: Int, _ gu: [Float], _ dn: [Float], _ e: Int, _ I: Int) -> [Double] {
            var a = [Double](repeating: 0, count: I)
            for i in 0..<I {
                let gr = o.interleavedGateUp ? 2 * i : i, ur = o.interleavedGateUp ? 2 * i + 1 : I + i
                var g = 0.0, u = 0.0
                for h in 0..<H {
                    g += Double(x[t * H + h]) * Double(gu[(e * 2 * I + gr) * H + h])
                    u += Double(x[t * H + h]) * Double(gu[(e * 2 * I + ur) * H + h])
                }
                a[i] = act(g, u)
            }
            return (0..<H).map { h in (0..<I).reduce(0.0) { $0 + a[$1] * Double(dn[(e * H + h) * I + $1]) } }
        }
        var out = [Double](repeating: 0, count: T * H)
        for t in 0..<T {
            for j in 0..<k {
                let y = expert(t, gu, dn, Int(ids[t * k + j]), I)
                for h in 0..<H { out[t * H + h] += Double(w[t * k + j]) * y[h] }
            }
            if let (sg, sd, si) = shared { let y = expert(t, sg, sd, 0, si); for h in 0..<H { out[t * H + h] += y[h] } }
        }
        return out
    }

    func testFusedFFN() throws {
        var rng = Rng(53)
        let H = 24, I = 20, E = 6, Is = 12
        let gu = (0..<(E * 2 * I * H)).map { _ in rng.normal() * 0.2 }, dn = (0..<(E * H * I)).map { _ in rng.normal() * 0.2 }
        let sg = (0..<(2 * Is * H)).map { _ in rng.normal() * 0.2 }, sd = (0..<(H * Is)).map { _ in rng.normal() * 0.2 }
        let variants: [(String, Int, MoEFFNOptions, Bool)] = [
            ("silu k2", 2, MoEFFNOptions(), false), ("gelu k1", 1, MoEFFNOptions(activation: .geluTanh), false),
            ("oai interleaved k=E", E, MoEFFNOptions(activation: .swigluOAI, limit: 1.5, interleavedGateUp: true), false),
            ("silu shared", 3, MoEFFNOptions(), true),
        ]
        for (name, k, o, withShared) in variants {
            for T in [0, 1, 13] {
                let x = (0..<(T * H)).map { _ in rng.normal() }
                var ids = (0..<(T * k)).map { _ in Int32(rng.next() % UInt64(E)) }
                if T > 0 && k > 1 { ids[1] = ids[0] } // a duplicate id
                let w = (0..<(T * k)).map { _ in rng.uniform() }
                let ref = ffnReference(x: x, T: T, H: H, I: I, ids: ids, w: w, k: k, gu: gu, dn: dn, shared: withShared ? (sg, sd, Is) : nil, o: o)
                var first: [UInt32]?
                for ctx in try allContexts() {
                    let pgu = try PackedExperts(ctx, weights: gu, experts: E, n: 2 * I, k: H), pdn = try PackedExperts(ctx, weights: dn, experts: E, n: H, k: I)
                    let shared = withShared ? (try PackedExperts(ctx, weights: sg, experts: 1, n: 2 * Is, k: H), try PackedExperts(ctx, weights: sd, experts: 1, n: H, k: Is)) : nil
                    let y = try ctx.moeFFN(x: x, tokens: T, ids: ids, routeWeights: w, k: k, gateUp: pgu, down: pdn, shared: shared, options: o)
                    assertClose(y, ref, atol: 1e-4, rtol: 1e-4, "\(name) T=\(T) \(ctx.isa.name)")
                    var acc = o; acc.accumulate = true
                    let twice = try ctx.moeFFN(x: x, tokens: T, ids: ids, routeWeights: w, k: k, gateUp: pgu, down: pdn, shared: shared, options: acc, into: y)
                    assertClose(twice, ref.map { 2 * $0 }, atol: 2e-4, rtol: 1e-4, "accumulate")
                    // every ISA path and thread count gives the bits of the first (scalar, 1 thread)
                    if let f = first {
                        assertSameBits(bits(y), f, "\(name) T=\(T) \(ctx.isa.name) \(ctx.threads) threads vs scalar")
                    } else { first = bits(y) }
                }
            }
        }
        let ctx = try Context(threads: 1)
        let pgu = try PackedExperts(ctx, weights: gu, experts: E, n: 2 * I, k: H), pdn = try PackedExperts(ctx, weights: dn, experts: E, n: H, k: I)
        XCTAssertThrowsError(try ctx.moeFFN(x: [Float](repeating: 0, count: H), tokens: 1, ids: [9], routeWeights: [1], k: 1, gateUp: pgu, down: pdn))
        XCTAssertThrowsError(try ctx.moeFFN(x: [Float](repeating: 0, count: H), tokens: 1, ids: [0], routeWeights: [.nan], k: 1, gateUp: pgu, down: pdn))
    }
}
