import XCTest
@testable import Meld
import CMeld

/// dtype conversion: exact widening, round-to-nearest-even narrowing, NaN kept, every ISA equal.
final class ConversionTests: XCTestCase {
    func testF16Exhaustive() throws {
        let all = (0...0xffff).map { Float16(bitPattern: UInt16($0)) }
        for ctx in try allContexts() {
            let wide: [Float] = try ctx.convert(all)
            for (h, f) in zip(all, wide) {
                if h.isNaN { XCTAssertTrue(f.isNaN); XCTAssertEqual(f.sign, h.sign) } else { XCTAssertEqual(f, Float(h)) }
            }
            let back: [Float16] = try ctx.convert(wide)
            for (h, r) in zip(all, back) {
                if h.isNaN { XCTAssertTrue(r.isNaN) } else { XCTAssertEqual(r.bitPattern, h.bitPattern) }
            }
        }
    }

    func testBF16Exhaustive() throws {
        let all = (0...0xffff).map { BFloat16(bitPattern: UInt16($0)) }
        for ctx in try allContexts() {
            let wide: [Float] = try ctx.convert(all)
            for (h, f) in zip(all, wide) { XCTAssertEqual(f.bitPattern, UInt32(h.bitPattern) << 16) }
        }
    }

    /// Random f32 bit patterns (all exponents: subnormals, overflow, NaN) narrowed to f16 and bf16
    /// must equal IEEE RNE (Swift's Float16 init; an independent f64 bf16 reference).
    func testNarrowingIsRoundToNearestEven() throws {
        var rng = Rng(7)
        var xs = (0..<200_003).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
        // halfway cases for both formats, near the f16 subnormal and overflow thresholds
        for b: UInt32 in [0x3f80_8000, 0x3f81_8000, 0x3380_0000, 0x3300_0000, 0x3300_0001, 0x477f_f000, 0x477f_efff, 0x387f_e000, 0x0000_0001, 0x7f7f_ffff] {
            xs.append(Float(bitPattern: b)); xs.append(-Float(bitPattern: b))
        }
        var reference: [[UInt16]] = []
        for ctx in try allContexts() {
            let h: [Float16] = try ctx.convert(xs)
            let b: [BFloat16] = try ctx.convert(xs)
            for i in xs.indices {
                if xs[i].isNaN {
                    XCTAssertTrue(h[i].isNaN); XCTAssertTrue(b[i].floatValue.isNaN)
                    continue
                }
                XCTAssertEqual(h[i].bitPattern, Float16(xs[i]).bitPattern, "f16 of \(xs[i].bitPattern)")
                XCTAssertEqual(b[i].bitPattern, bf16Reference(xs[i]), "bf16 of \(xs[i].bitPattern)")
            }
            let got = h.map(\.bitPattern) + b.map(\.bitPattern)
            if reference.isEmpty { reference.append(got) } else { XCTAssertEqual(got, reference[0], "\(ctx.isa.name) differs (NaN payloads included)") }
        }
    }

    func testMixedDtypesAllSizes() throws {
        var rng = Rng(3)
        for n in testSizes {
            let x = rng.floats(n)
            var first: [UInt16]?
            for ctx in try allContexts() {
                let h: [Float16] = try ctx.convert(x)
                let b: [BFloat16] = try ctx.convert(h)
                let got = b.map(\.bitPattern)
                for i in 0..<n { XCTAssertEqual(got[i], bf16Reference(Float(h[i]))) }
                if let f = first { XCTAssertEqual(got, f) } else { first = got }
            }
        }
    }
}
