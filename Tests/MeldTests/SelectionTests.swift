import XCTest
@testable import Meld
import CMeld

/// The library's internal k-th largest (meld_select_kth, select.h): the bracket and the
/// candidate bins go through it.
@_silgen_name("meld_select_kth")
func meldSelectKth(_ a: UnsafeMutablePointer<UInt32>, _ len: Int, _ rank: UInt64, _ value: UnsafeMutablePointer<UInt32>,
                   _ tieRank: UnsafeMutablePointer<UInt64>) -> Int32

/// Exact magnitude selection: the kept set equals a sort-based reference, exactly k entries,
/// ties to the lower index, on every ISA and thread count, on both the sampled fast path
/// and the radix fallback.
final class SelectionTests: XCTestCase {
    func check(_ v: [Float], densities: [Double], _ label: String) throws {
        for d in densities {
            let k = densityCount(d, v.count)
            let ref = referenceKeep(v, k: k)
            for ctx in try allContexts() {
                let s = try ctx.select(v, density: d)
                XCTAssertEqual(s.kept, UInt64(k))
                let got = keepSet(v, s)
                XCTAssertEqual(got.filter { $0 }.count, k, "\(label) d=\(d) \(ctx.isa.name)/\(ctx.threads)")
                XCTAssertTrue(got == ref, "\(label) d=\(d) \(ctx.isa.name)/\(ctx.threads): kept set differs")
                // the applied selection keeps exactly those entries
                let applied = try ctx.applySelection(v, s)
                for i in v.indices where !v[i].isNaN && !v[i].isInfinite {
                    XCTAssertEqual(applied[i], got[i] ? v[i] : 0 * v[i])
                }
            }
        }
    }

    /// The k-th largest and its rank among equal entries, against a sort: short arrays (sorted
    /// in place) and long ones (range histograms), with few or many distinct values.
    func testKthLargestWithTies() {
        var rng = Rng(31)
        for len in [1, 2, 5, 47, 48, 49, 100, 1000, 5000] {
            for distinct: UInt64 in [1, 3, 50, 1 << 20] {
                let a = (0..<len).map { _ in UInt32(rng.next() % distinct) &* 977 }
                let sorted = a.sorted(by: >)
                for rank in Set([1, len, (len + 1) / 2, max(1, len / 3)]) {
                    var work = a, v: UInt32 = 0, tie: UInt64 = 0
                    XCTAssertEqual(meldSelectKth(&work, len, UInt64(rank), &v, &tie), 0)
                    let want = sorted[rank - 1], first = sorted.firstIndex(of: want)!
                    XCTAssertEqual(v, want, "len \(len), \(distinct) values, rank \(rank)")
                    XCTAssertEqual(tie, UInt64(rank - first), "len \(len), \(distinct) values, rank \(rank)")
                }
            }
        }
    }

    func testRandomAllSizes() throws {
        var rng = Rng(21)
        for n in testSizes + [300_007] {
            try check(rng.floats(n), densities: [0, 0.001, 0.2, 0.5, 0.99, 1], "random n=\(n)")
        }
    }

    func testAllMagnitudesEqualKeepsLowerIndices() throws {
        for n in [5, 17, 4100, 70_001] {
            let v = (0..<n).map { $0 % 2 == 0 ? Float(0.5) : Float(-0.5) }
            try check(v, densities: [0.3, 0.75], "equal n=\(n)")
            let ctx = try Context(threads: 2)
            let s = try ctx.select(v, density: 0.3)
            let kept = keepSet(v, s)
            let k = densityCount(0.3, n)
            XCTAssertTrue(kept.prefix(k).allSatisfy { $0 } && kept.dropFirst(k).allSatisfy { !$0 })
        }
    }

    /// Few distinct magnitudes (as bf16 deltas have): the bracket overflows, the fallback runs.
    func testHeavyTiesFallback() throws {
        var rng = Rng(22)
        let v = (0..<200_003).map { _ in Float(Int(rng.next() % 7) - 3) * 0.25 }
        try check(v, densities: [0.1, 0.4, 0.9], "ties")
    }

    /// Quantized magnitudes (bf16 weights): the bracket holds a few distinct values with
    /// thousands of entries each; the stored candidates are selected by the per-thread
    /// histograms and the cutoff tie is placed from the candidate lists.
    func testQuantizedCandidates() throws {
        var rng = Rng(27)
        let v = (0..<400_003).map { _ in (rng.normal() * 64).rounded() / 64 }
        try check(v, densities: [0.05, 0.2, 0.6], "quantized")
    }

    /// Both forms of the collect pass (MELD_SELECT=inclusive stores the bracket's ends, as it
    /// does when the sample shows no ties there; =exclusive counts them) on data where the k-th
    /// largest sits on a bracket end (forty equally common magnitudes: the inclusive lists
    /// also overflow there and the fallback takes over), random data and a quantized set.
    func testCollectForms() throws {
        var rng = Rng(29)
        let levels = (0..<100_003).map { _ in Float(Int(rng.next() % 40) + 1) * (rng.uniform() < 0.5 ? -0.01 : 0.01) }
        let random = rng.floats(100_003)
        let quantized = (0..<100_003).map { _ in (rng.normal() * 64).rounded() / 64 }
        defer { unsetenv("MELD_SELECT") }
        for form in ["inclusive", "exclusive"] {
            setenv("MELD_SELECT", form, 1)
            try check(levels, densities: [0.04, 0.2, 0.45, 0.77], "40 levels, \(form)")
            try check(random, densities: [0.3], "random, \(form)")
            try check(quantized, densities: [0.1], "quantized, \(form)")
        }
    }

    /// bf16 values without a base (the collect pass counts on 16-bit words there): random
    /// with NaN and ±Inf, quantized (thousands of entries on each value at the bracket ends) and
    /// a massive tie at the threshold; every ISA and thread count against the sort of the
    /// widened values.
    func testBf16WithoutBase() throws {
        var rng = Rng(28)
        var random = rng.floats(300_007)
        for i in stride(from: 17, to: random.count, by: 9973) { random[i] = [Float.nan, .infinity, -.infinity][i % 3] }
        let cases: [(String, [Float])] = [
            ("random", random),
            ("quantized", (0..<400_003).map { _ in (rng.normal() * 16).rounded() / 16 }),
            ("tie", (0..<300_001).map { _ in rng.uniform() < 0.3 ? Float(-1) : rng.normal() * 0.1 }),
        ]
        for (label, v) in cases {
            let h = v.map { BFloat16($0) }, w = h.map(\.floatValue)
            for d in [0.001, 0.1, 0.25, 0.5, 0.99] {
                let k = densityCount(d, w.count), ref = referenceKeep(w, k: k)
                for ctx in try allContexts() {
                    let s = try ctx.select(h, density: d)
                    XCTAssertEqual(s.kept, UInt64(k))
                    XCTAssertTrue(keepSet(w, s) == ref, "bf16 \(label) d=\(d) \(ctx.isa.name)/\(ctx.threads): kept set differs")
                }
            }
        }
    }

    /// A third of the entries share the threshold value: the bracket collapses to one value,
    /// candidates overflow, and the cutoff comes from the per-tile counts alone.
    func testMassiveTieAtThreshold() throws {
        var rng = Rng(25)
        let v = (0..<300_001).map { _ in rng.uniform() < 0.3 ? Float(1) : rng.normal() * 0.1 }
        try check(v, densities: [0.1, 0.25], "tie at threshold")
    }

    /// The full radix path (MELD_SELECT=radix) gives the same selections as the fast path.
    func testRadixFallbackAgrees() throws {
        var rng = Rng(26)
        let inputs: [[Float]] = [rng.floats(70_001), rng.floats(4100), (0..<90_000).map { _ in Float(Int(rng.next() % 5)) }]
        for v in inputs {
            for ctx in try allContexts() {
                for d in [0.05, 0.5, 0.97] {
                    let fast = try ctx.select(v, density: d)
                    setenv("MELD_SELECT", "radix", 1)
                    let radix = try ctx.select(v, density: d)
                    unsetenv("MELD_SELECT")
                    XCTAssertEqual(fast, radix)
                    XCTAssertTrue(keepSet(v, radix) == referenceKeep(v, k: densityCount(d, v.count)))
                }
            }
        }
    }

    func testNaNAndInfinityRankHighest() throws {
        var rng = Rng(23)
        var v = rng.floats(1000)
        v[10] = .nan; v[20] = -.infinity; v[30] = .infinity; v[40] = -0.0; v[50] = 0
        try check(v, densities: [0.001, 0.002, 0.003, 0.5, 0.999], "nan/inf")
        let ctx = try Context(threads: 1)
        let s = try ctx.select(v, topK: 1)
        XCTAssertEqual(keepSet(v, s).firstIndex(of: true), 10)
    }

    func testTaskSelectMatchesPerTensorSelect() throws {
        var rng = Rng(24)
        for n in [33, 70_001] {
            let base = rng.floats(n)
            let xs = (0..<4).map { _ in base.map { $0 + rng.normal() * 0.01 } }
            let dens: [Double] = [0.1, 0.5, 0, 1]
            for ctx in try allContexts() {
                let many = try ctx.taskSelect(base: base, xs, densities: dens)
                for k in 0..<4 {
                    let one = try ctx.select(zip(xs[k], base).map { $0 - $1 }, density: dens[k])
                    XCTAssertEqual(many[k], one)
                }
            }
        }
    }
}
