import XCTest
@testable import Meld
import CMeld

/// SLERP, NuSLERP and Model Stock against f64 implementations of mergekit's formulas.
final class GeometricTests: XCTestCase {
    func slerpRef(_ t: Double, _ a: [Double], _ b: [Double]) -> [Double] {
        func norm(_ v: [Double]) -> Double { v.map { $0 * $0 }.reduce(0, +).squareRoot() }
        let na = norm(a), nb = norm(b)
        let dot = zip(a, b).map { $0 * $1 }.reduce(0, +) / ((na > 1e-8 ? na : 1) * (nb > 1e-8 ? nb : 1))
        if abs(dot) > 0.9995 { return zip(a, b).map { (1 - t) * $0 + t * $1 } }
        let th = acos(dot), s = sin(th)
        let s0 = sin(th - th * t) / s, s1 = sin(th * t) / s
        return zip(a, b).map { s0 * $0 + s1 * $1 }
    }

    func testSlerp() throws {
        var rng = Rng(41)
        for n in [1, 17, 4096 + 9, 70_001] {
            let a = rng.floats(n), b = rng.floats(n)
            let near = a.map { $0 * 1.0001 } // nearly parallel: the lerp fallback
            for t: Float in [0, 0.3, 0.5, 1] {
                var first: [UInt32]?
                for ctx in try allContexts() {
                    let out: [Float] = try ctx.slerp(t: t, a, b)
                    assertClose(out, slerpRef(Double(t), a.map(Double.init), b.map(Double.init)), atol: 1e-6, rtol: 1e-5, "slerp n=\(n) t=\(t)")
                    let lerp: [Float] = try ctx.slerp(t: t, a, near)
                    assertClose(lerp, slerpRef(Double(t), a.map(Double.init), near.map(Double.init)), atol: 1e-6, rtol: 1e-5, "lerp")
                    if let f = first { XCTAssertEqual(bits(out), f) } else { first = bits(out) }
                }
            }
        }
        XCTAssertThrowsError(try Context(threads: 1).slerp(t: 1.5, [1, 2] as [Float], [3, 4]) as [Float])
        XCTAssertThrowsError(try Context(threads: 1).slerp(t: .nan, [1, 2] as [Float], [3, 4]) as [Float])
    }

    func testNuslerp() throws {
        var rng = Rng(42)
        let n = 5000
        let base = rng.floats(n), a = base.map { $0 + rng.normal() * 0.1 }, b = base.map { $0 + rng.normal() * 0.1 }
        for ctx in try allContexts() {
            let out: [Float] = try ctx.nuslerp(base: base, a, b, weights: (1, 3))
            let ta = zip(a, base).map { Double($0) - Double($1) }, tb = zip(b, base).map { Double($0) - Double($1) }
            let ref = zip(slerpRef(0.75, ta, tb), base).map { $0 + Double($1) }
            assertClose(out, ref, atol: 1e-6, rtol: 1e-5, "nuslerp")
            let plain: [Float] = try ctx.nuslerp(base: nil, a, b, weights: (1, 1))
            assertClose(plain, slerpRef(0.5, a.map(Double.init), b.map(Double.init)), atol: 1e-6, rtol: 1e-5, "nuslerp no base")
        }
    }

    func testModelStock() throws {
        var rng = Rng(43)
        for n in [17, 4096 + 1, 60_000] {
            let base = rng.floats(n)
            let shared = rng.floats(n, scale: 0.05)
            let xs = (0..<3).map { _ in zip(base, shared).map { $0 + $1 + rng.normal() * 0.05 } }
            let tv = xs.map { x in zip(x, base).map { Double($0) - Double($1) } }
            var cs = 0.0
            for i in 0..<3 { for j in (i + 1)..<3 {
                let d = zip(tv[i], tv[j]).map { $0 * $1 }.reduce(0, +)
                let ni = tv[i].map { $0 * $0 }.reduce(0, +).squareRoot(), nj = tv[j].map { $0 * $0 }.reduce(0, +).squareRoot()
                cs += d / (ni * nj)
            } }
            let c = cs / 3, t = 3 * c / (1 + 2 * c)
            var ref = [Double](repeating: 0, count: n)
            for i in 0..<n {
                let mean: Double = (Double(xs[0][i]) + Double(xs[1][i]) + Double(xs[2][i])) / 3
                ref[i] = t * mean + (1 - t) * Double(base[i])
            }
            var first: [UInt32]?
            for ctx in try allContexts() {
                // the weights alone, as the tool applies them chunk by chunk
                let w = try base.withUnsafeBufferPointer { b in try xs[0].withUnsafeBufferPointer { x0 in
                    try xs[1].withUnsafeBufferPointer { x1 in try xs[2].withUnsafeBufferPointer { x2 in
                        try ctx.modelStockWeights(base: TensorView(b), [TensorView(x0), TensorView(x1), TensorView(x2)])
                    } } } }
                XCTAssertEqual(Double(w.t), t, accuracy: 1e-6)
                for (i, wi) in w.weights.enumerated() { XCTAssertEqual(Double(wi), i < 3 ? t / 3 : 1 - t, accuracy: 1e-6) }
                let (out, tt): ([Float], Float) = try ctx.modelStock(base: base, xs)
                XCTAssertEqual(Double(tt), t, accuracy: 1e-6)
                assertClose(out, ref, atol: 1e-6, rtol: 1e-5, "model stock n=\(n)")
                if let f = first { XCTAssertEqual(bits(out), f, "\(ctx.isa.name)/\(ctx.threads)") } else { first = bits(out) }
            }
        }
        // two task vectors in opposite directions: cos = -1 leaves t = 2 cos / (1 + cos) without a value
        let ctx = try Context(threads: 1)
        XCTAssertThrowsError(try ctx.modelStock(base: [0, 0] as [Float], [[1, 0], [-1, 0]]) as ([Float], Float)) {
            XCTAssertTrue("\($0)".contains("no finite value"), "\($0)")
        }
        // NaN or Inf in an input leaves norms and angles without meaning: refused, saying so (the
        // message blamed "weight 0", a weight the caller never gave, for slerp and nuslerp)
        for bad: Float in [.nan, .infinity] {
            let what = "\(bad)"
            XCTAssertThrowsError(try ctx.slerp(t: 0.5, [1, bad, 3] as [Float], [3, 4, 5]) as [Float]) {
                XCTAssertTrue("\($0)".contains("slerp: the inputs hold NaN or Inf"), "\(what): \($0)")
            }
            XCTAssertThrowsError(try ctx.nuslerp(base: [0, 0, 0] as [Float], [1, 2, 3], [bad, 4, 5], weights: (1, 1)) as [Float]) {
                XCTAssertTrue("\($0)".contains("nuslerp: the inputs hold NaN or Inf"), "\(what): \($0)")
            }
            XCTAssertThrowsError(try ctx.modelStock(base: [0, 0, 0] as [Float], [[1, 2, 3], [2, 1, bad]]) as ([Float], Float)) {
                XCTAssertTrue("\($0)".contains("model stock: the inputs hold NaN or Inf"), "\(what): \($0)")
            }
        }
    }

    /// bf16 and f16 inputs (the reductions' kernels specialize on an input dtype all share, and
    /// take a general path for mixed ones): against the f64 formulas on the rounded values, the
    /// same bits on every ISA and thread count, and mixed dtypes holding the same values give
    /// the same weights to the bit. Tolerances as the f32 tests (f32 outputs).
    func testHalfPrecisionInputs() throws {
        var rng = Rng(44)
        for n in [4096 + 9, 70_001] {
            let a = rng.floats(n), b = a.map { $0 * 0.8 + rng.normal() * 0.3 }
            let base = rng.floats(n), shared = rng.floats(n, scale: 0.05)
            let xs = (0..<3).map { _ in zip(base, shared).map { $0 + $1 + rng.normal() * 0.05 } }
            func check<T: MeldScalar>(_ conv: (Float) -> T, _ back: (T) -> Float, _ name: String) throws {
                let a16 = a.map(conv), b16 = b.map(conv), base16 = base.map(conv), xs16 = xs.map { $0.map(conv) }
                let ar = a16.map { Double(back($0)) }, br = b16.map { Double(back($0)) }
                let baseR = base16.map { Double(back($0)) }, xsR = xs16.map { $0.map { Double(back($0)) } }
                // Model Stock's t from the rounded task vectors, in f64
                let tv = xsR.map { x in zip(x, baseR).map { $0 - $1 } }
                var cs = 0.0
                for i in 0..<3 { for j in (i + 1)..<3 {
                    let d = zip(tv[i], tv[j]).map { $0 * $1 }.reduce(0, +)
                    cs += d / (tv[i].map { $0 * $0 }.reduce(0, +).squareRoot() * tv[j].map { $0 * $0 }.reduce(0, +).squareRoot())
                } }
                let c = cs / 3, t = 3 * c / (1 + 2 * c)
                var slerpBits: [UInt32]?, stockBits: [UInt32]?, tBits: UInt32?
                for ctx in try allContexts() {
                    let out: [Float] = try ctx.slerp(t: 0.3, a16, b16)
                    assertClose(out, slerpRef(0.3, ar, br), atol: 1e-6, rtol: 1e-5, "\(name) slerp n=\(n)")
                    if let f = slerpBits { XCTAssertEqual(bits(out), f, "\(name) slerp \(ctx.isa.name)/\(ctx.threads)") } else { slerpBits = bits(out) }
                    let (merged, tt): ([Float], Float) = try ctx.modelStock(base: base16, xs16)
                    XCTAssertEqual(Double(tt), t, accuracy: 1e-6, "\(name) model stock t")
                    let ref = (0..<n).map { i in t * (xsR[0][i] + xsR[1][i] + xsR[2][i]) / 3 + (1 - t) * baseR[i] }
                    assertClose(merged, ref, atol: 1e-6, rtol: 1e-5, "\(name) model stock n=\(n)")
                    if let f = stockBits { XCTAssertEqual(bits(merged), f, "\(name) model stock \(ctx.isa.name)/\(ctx.threads)") } else { stockBits = bits(merged) }
                    if let f = tBits { XCTAssertEqual(tt.bitPattern, f) } else { tBits = tt.bitPattern }
                    // the same values with an f32 base: the general path, the same weights
                    let base32 = base16.map(back)
                    let w = try base32.withUnsafeBufferPointer { bp in try xs16[0].withUnsafeBufferPointer { x0 in
                        try xs16[1].withUnsafeBufferPointer { x1 in try xs16[2].withUnsafeBufferPointer { x2 in
                            try ctx.modelStockWeights(base: TensorView(bp), [TensorView(x0), TensorView(x1), TensorView(x2)])
                        } } } }
                    XCTAssertEqual(w.t.bitPattern, tt.bitPattern, "\(name) mixed dtypes \(ctx.isa.name)/\(ctx.threads)")
                }
            }
            try check({ BFloat16($0) }, { $0.floatValue }, "bf16")
            try check({ Float16($0) }, { Float($0) }, "f16")
        }
    }
}
