import XCTest
@testable import Meld
import CMeld

/// Deterministic test data (SplitMix64).
struct Rng {
    var s: UInt64
    init(_ seed: UInt64) { s = seed }
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform() -> Float { Float(next() >> 40) * 0x1p-24 }
    mutating func normal() -> Float {
        let u = max(Double(next() >> 11) * 0x1p-53, 1e-300), v = Double(next() >> 11) * 0x1p-53
        return Float((-2 * log(u)).squareRoot() * cos(2 * .pi * v))
    }
    mutating func floats(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in normal() * scale } }
}

/// Every (ISA, threads) the machine can run: the scalar reference path first.
func allContexts() throws -> [Context] {
    var out: [Context] = []
    for isa in [ISA.scalar, .avx2, .avx512, .avx512bf16] where isa.isSupported {
        for t in [1, 2] { out.append(try Context(threads: t, isa: isa)) }
    }
    return out
}

/// Sizes that exercise empty, single, ragged tails, whole tiles, and the sampled selection path.
let testSizes = [0, 1, 7, 15, 16, 17, 33, 255, 4096, 4096 + 17, 70_001]

func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }

/// Bit patterns equal, reported by the first differing index (not two whole arrays).
func assertSameBits<T: BinaryInteger>(_ a: [T], _ b: [T], _ what: @autoclosure () -> String,
                                      file: StaticString = #filePath, line: UInt = #line) {
    guard a.count == b.count else { return XCTFail("\(what()): \(a.count) != \(b.count) entries", file: file, line: line) }
    if let i = a.indices.first(where: { a[$0] != b[$0] }) {
        let count = a.indices.filter { a[$0] != b[$0] }.count
        XCTFail("\(what()): \(count) entries differ, the first at \(i): \(a[i]) != \(b[i])", file: file, line: line)
    }
}

/// Independent bf16 reference: nearest of the two neighbours by exact f64 distance, ties to even.
func bf16Reference(_ f: Float) -> UInt16 {
    if f.isNaN { return 0x7fc0 }
    let b = f.bitPattern
    let lo = UInt16(b >> 16), hi = lo &+ 1
    let dl = abs(Double(f) - Double(Float(bitPattern: UInt32(lo) << 16)))
    // the neighbour above the largest finite value is 2^128 (IEEE rounds as if unbounded)
    let hv = hi & 0x7fff == 0x7f80 ? (f < 0 ? -0x1p128 : 0x1p128) : Double(Float(bitPattern: UInt32(hi) << 16))
    let dh = abs(hv - Double(f))
    if b & 0xffff == 0 { return lo }
    if dl < dh { return lo }
    if dh < dl { return hi }
    return lo & 1 == 0 ? lo : hi
}

/// Reference selection: indices sorted by |v| descending (NaN largest), ties by lower index.
func referenceKeep(_ v: [Float], k: Int) -> [Bool] {
    func key(_ x: Float) -> UInt32 { x.bitPattern & 0x7fff_ffff }
    let order = v.indices.sorted { key(v[$0]) != key(v[$1]) ? key(v[$0]) > key(v[$1]) : $0 < $1 }
    var keep = [Bool](repeating: false, count: v.count)
    for i in order.prefix(k) { keep[i] = true }
    return keep
}

func keepSet(_ v: [Float], _ s: Selection) -> [Bool] {
    v.indices.map { i in
        let b = v[i].bitPattern & 0x7fff_ffff
        return b > s.threshold || (b == s.threshold && UInt64(i) < s.tieCutoff)
    }
}

func densityCount(_ d: Double, _ n: Int) -> Int { d >= 1 ? n : d <= 0 || n == 0 ? 0 : max(1, Int((d * Double(n)).rounded(.down))) }

/// mergekit TIES semantics in f64 (selection on the f32 deltas, as the kernels define it).
/// Returns the reference and, per element, whether the vote was clear (|sum| well above rounding).
func tiesReference(base: [Float], models: [[Float]], weights: [Float], densities: [Double], options: TiesOptions) -> ([Double], [Bool]) {
    let n = base.count, K = models.count
    var kept: [[Bool]] = []
    for k in 0..<K {
        let d = (0..<n).map { models[k][$0] - base[$0] }
        kept.append(referenceKeep(d, k: densityCount(densities[k], n)))
    }
    var out = [Double](repeating: 0, count: n), clear = [Bool](repeating: true, count: n)
    for i in 0..<n {
        var t = [Double](repeating: 0, count: K), v = t, u = t
        var s = 0.0, mag = 0.0
        for k in 0..<K {
            t[k] = kept[k][i] ? Double(models[k][i]) - Double(base[i]) : 0
            v[k] = t[k] * Double(weights[k])
            u[k] = options.voteUnweighted ? t[k] : v[k]
            s += options.consensus == .count ? (u[k] > 0 ? 1 : u[k] < 0 ? -1 : 0) : u[k]
            mag += abs(u[k])
        }
        if options.consensus == .sum && abs(s) <= 1e-5 * mag { clear[i] = false }
        let pos = s >= 0
        var mixed = 0.0, div = 0.0
        for k in 0..<K {
            let agree = options.consensus == .none || (pos ? u[k] > 0 : u[k] < 0)
            if agree {
                mixed += v[k]
                div += options.divisor == .count ? 1 : Double(weights[k])
            }
        }
        if options.divisor != .none { mixed /= (div == 0 ? 1 : div) }
        out[i] = Double(base[i]) + mixed * Double(options.lambda)
    }
    return (out, clear)
}

/// Asserts |a - e| <= atol + rtol * |e| element-wise (NaN must match NaN).
func assertClose(_ a: [Float], _ e: [Double], atol: Double, rtol: Double, mask: [Bool]? = nil, _ msg: String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, e.count, msg, file: file, line: line)
    var bad = 0
    for i in 0..<min(a.count, e.count) where mask?[i] ?? true {
        if e[i].isNaN { if !a[i].isNaN { bad += 1 }; continue }
        if abs(Double(a[i]) - e[i]) > atol + rtol * abs(e[i]) {
            if bad == 0 { XCTFail("\(msg): [\(i)] got \(a[i]) expected \(e[i])", file: file, line: line) }
            bad += 1
        }
    }
    XCTAssertEqual(bad, 0, "\(msg): \(bad) elements out of tolerance", file: file, line: line)
}
