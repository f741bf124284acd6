import Foundation
import XCTest
@testable import MeldTool

/// The tool's own JSON (safetensors headers, indexes, config.json): strict parsing, exact
/// round trips, and the text Python's json (transformers) and serde_json (safetensors) write.
final class JSONTests: XCTestCase {
    func parse(_ s: String) throws -> JSON { try JSON.parse(Array(s.utf8)) }

    func testParsesEveryKindOfValue() throws {
        let v = try parse(#" { "a" : [1, -0, 2.5E+3, 1e-05, 0.1, true, false, null, {}, []], "s": "q\"b\\s/\b\f\n\r\t\u00e9\ud83d\ude00\/", "a": 7 } "#)
        XCTAssertEqual(v, .object([
            .init("a", .array([.number("1"), .number("-0"), .number("2.5E+3"), .number("1e-05"), .number("0.1"), .bool(true), .bool(false), .null,
                               .object([]), .array([])])),
            .init("s", .string("q\"b\\s/\u{08}\u{0C}\n\r\té😀/")),
            .init("a", .number("7")),
        ]))
        XCTAssertEqual(v["a"], .number("7"), "the last of duplicate keys, as Python reads them")
        XCTAssertEqual(v["s"]?.string, "q\"b\\s/\u{08}\u{0C}\n\r\té😀/")
        XCTAssertNil(v["missing"])
        XCTAssertEqual(try parse("123").int, 123)
        XCTAssertEqual(try parse("-9223372036854775808").int, Int.min)
        XCTAssertNil(try parse("9223372036854775808").int, "past Int.max")
        XCTAssertNil(try parse("2.0").int, "an integer is written as one")
        XCTAssertNil(try parse("1e3").int)
        XCTAssertEqual(try parse("\"é\"").string, "é", "UTF-8 as is")
    }

    func testRejectsMalformedJSON() {
        let bad: [(String, [UInt8])] = [
            ("empty", []), ("open object", Array("{".utf8)), ("trailing comma", Array("[1,]".utf8)),
            ("trailing comma in object", Array(#"{"a":1,}"#.utf8)), ("leading zero", Array("01".utf8)),
            ("no fraction digits", Array("1.".utf8)), ("lone minus", Array("-".utf8)), ("no integer part", Array(".5".utf8)),
            ("no exponent digits", Array("1e".utf8)), ("bad escape", Array(#""\x""#.utf8)), ("raw control character", [0x22, 0x01, 0x22]),
            ("raw newline", [0x22, 0x0A, 0x22]), ("lone high surrogate", Array(#""\ud800""#.utf8)), ("lone low surrogate", Array(#""\udc00""#.utf8)),
            ("high surrogate then a letter", Array(#""\ud800\u0041""#.utf8)), ("short \\u", Array(#""\u12""#.utf8)),
            ("content after the value", Array("[1] x".utf8)), ("bad literal", Array("tru".utf8)), ("NaN", Array("NaN".utf8)),
            ("Infinity", Array("Infinity".utf8)), ("number key", Array("{1:2}".utf8)), ("unterminated string", Array(#""abc"#.utf8)),
            ("invalid UTF-8", [0x22, 0xFF, 0x22]), ("overlong UTF-8", [0x22, 0xC0, 0xAF, 0x22]), ("missing colon", Array(#"{"a" 1}"#.utf8)),
            ("too deep", Array((String(repeating: "[", count: 300) + String(repeating: "]", count: 300)).utf8)),
        ]
        for (what, bytes) in bad {
            XCTAssertThrowsError(try JSON.parse(bytes), what)
        }
        XCTAssertNoThrow(try JSON.parse(Array((String(repeating: "[", count: 200) + String(repeating: "]", count: 200)).utf8)))
    }

    /// Indented text as Python's json.dumps(v, indent=2, sort_keys=True, ensure_ascii=False) writes
    /// it (transformers' config.json); compact text as serde_json and JSONSerialization write it.
    func testWritesPythonAndCompactText() throws {
        let v = try parse(#"{"b":[1,{"c":null}],"a":"x\u00e9\n\"/","e":{},"d":[],"n":[-0.0,1e-05]}"#)
        XCTAssertEqual(v.serialized(indent: 2, sortKeys: true), """
        {
          "a": "xé\\n\\"/",
          "b": [
            1,
            {
              "c": null
            }
          ],
          "d": [],
          "e": {},
          "n": [
            -0.0,
            1e-05
          ]
        }
        """)
        XCTAssertEqual(v.serialized(), #"{"b":[1,{"c":null}],"a":"xé\n\"/","e":{},"d":[],"n":[-0.0,1e-05]}"#)
        XCTAssertEqual(JSON.string("\u{01}\u{1F}\t").serialized(), #""\u0001\u001f\t""#)
        // keys in UTF-8 byte order: "Z" < "_" < "a" < "é"
        XCTAssertEqual(try parse(#"{"é":1,"a":2,"_":3,"Z":4}"#).serialized(sortKeys: true), #"{"Z":4,"_":3,"a":2,"é":1}"#)
        let set = try parse(#"{"x":1,"t":"a","t":"b","y":2}"#).setting("t", .string("c")).setting("z", .null)
        XCTAssertEqual(set.serialized(), #"{"x":1,"t":"c","y":2,"z":null}"#)
    }

    /// Random documents: what we write, JSONSerialization reads back as the same values, and we
    /// read back exactly; random mutations of them are errors or documents that round-trip,
    /// never crashes.
    func testRandomDocumentsRoundTrip() throws {
        var rng = Rng(2026)
        func randomString() -> String {
            let pool: [Unicode.Scalar] = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\u{01}", "\u{1F}", "\u{7F}", "é", "€", "😀", "\u{FFFF}", "\u{10FFFF}"]
            return String(String.UnicodeScalarView((0 ..< Int(rng.next() % 8)).map { _ in pool[Int(rng.next() % UInt64(pool.count))] }))
        }
        func randomValue(_ depth: Int) -> JSON {
            switch rng.next() % (depth > 3 ? 4 : 6) {
            case 0: return .null
            case 1: return .bool(rng.next() % 2 == 0)
            case 2: return .int(Int(truncatingIfNeeded: rng.next()) >> Int(11 + rng.next() % 53))   // exact in a Double
            case 3: return .string(randomString())
            case 4: return .array((0 ..< Int(rng.next() % 4)).map { _ in randomValue(depth + 1) })
            default: return .object((0 ..< Int(rng.next() % 4)).map { _ in JSON.Member(randomString(), randomValue(depth + 1)) })
            }
        }
        func foundation(_ v: JSON) -> NSObject {
            switch v {
            case .null: return NSNull()
            case .bool(let b): return NSNumber(value: b)
            case .number(let s): return NSNumber(value: Int(s)!)
            case .string(let s): return s as NSString
            case .array(let a): return a.map(foundation) as NSArray
            case .object(let m):
                var d: [String: NSObject] = [:]
                for e in m { d[e.key] = foundation(e.value) }
                return d as NSDictionary
            }
        }
        for _ in 0 ..< 300 {
            let v = JSON.object((0 ..< Int(rng.next() % 5)).map { _ in JSON.Member(randomString(), randomValue(1)) })
            for text in [v.serialized(), v.serialized(indent: 2), v.serialized(indent: 1, sortKeys: true)] {
                let back = try JSON.parse(Array(text.utf8))
                if text == v.serialized() { XCTAssertEqual(back, v, text) }
                let f = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) as! NSObject
                XCTAssertEqual(f, foundation(v), text)
            }
            var bytes = Array(v.serialized().utf8)
            guard !bytes.isEmpty else { continue }
            for _ in 0 ..< 1 + Int(rng.next() % 3) { bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            if let m = try? JSON.parse(bytes) {
                XCTAssertEqual(try JSON.parse(Array(m.serialized().utf8)), m)
            }
        }
    }
}
