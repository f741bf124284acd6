import Foundation

/// JSON without Foundation, for safetensors headers, sharded indexes and config.json: a strict
/// RFC 8259 parser and a serializer. JSONSerialization cost a merge ~5 ms here (its first use in
/// a process, and a dynamic cast per value read out of `Any`). Numbers keep their literal text, so
/// a config.json written back holds the numbers exactly as it was read (1e-05 stays 1e-05).
public indirect enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    /// the literal as written: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    case number(String)
    case string(String)
    case array([JSON])
    /// members in document order (duplicate keys kept; `self[key]` reads the last, as Python does)
    case object([Member])

    public struct Member: Equatable, Sendable {
        public var key: String
        public var value: JSON
        public init(_ key: String, _ value: JSON) { (self.key, self.value) = (key, value) }
    }

    public static func int(_ v: Int) -> JSON { .number(String(v)) }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var elements: [JSON]? { if case .array(let a) = self { a } else { nil } }
    public var members: [Member]? { if case .object(let m) = self { m } else { nil } }
    /// An integer literal (no fraction or exponent) that fits in Int.
    public var int: Int? {
        guard case .number(let s) = self, !s.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) else { return nil }
        return Int(s)
    }
    public subscript(key: String) -> JSON? { members?.last(where: { $0.key == key })?.value }

    /// The object with `key` set to `value` (in place of every member of that key, or appended).
    public func setting(_ key: String, _ value: JSON) -> JSON {
        guard let m = members else { return self }
        guard let i = m.firstIndex(where: { $0.key == key }) else { return .object(m + [Member(key, value)]) }
        return .object(m[..<i] + [Member(key, value)] + m[(i + 1)...].filter { $0.key != key })
    }

    // MARK: parsing

    public struct ParseError: Error, CustomStringConvertible {
        public var message: String
        public var offset: Int
        public var description: String { "\(message) at byte \(offset)" }
    }

    public static func parse(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 256) throws(ParseError) -> JSON {
        var p = Parser(b: bytes, maxDepth: maxDepth)
        p.skipSpace()
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == bytes.count else { throw p.error("unexpected content after the JSON value") }
        return v
    }

    public static func parse<C: ContiguousBytes>(_ data: C) throws -> JSON { try data.withUnsafeBytes { try parse($0) } }

    struct Parser {
        let b: UnsafeRawBufferPointer
        let maxDepth: Int
        var i = 0
        init(b: UnsafeRawBufferPointer, maxDepth: Int) { (self.b, self.maxDepth) = (b, maxDepth) }

        func error(_ m: String) -> ParseError { ParseError(message: m, offset: i) }
        var peek: UInt8? { i < b.count ? b[i] : nil }
        mutating func skipSpace() {
            while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
        }
        mutating func expect(_ c: UInt8, _ what: String) throws(ParseError) {
            guard peek == c else { throw error("expected \(what)") }
            i += 1
        }

        mutating func value(depth: Int) throws(ParseError) -> JSON {
            guard depth < maxDepth else { throw error("nesting deeper than \(maxDepth)") }
            guard let c = peek else { throw error("unexpected end of input") }
            switch c {
            case UInt8(ascii: "{"):
                i += 1
                var m: [Member] = []
                skipSpace()
                if peek == UInt8(ascii: "}") { i += 1; return .object(m) }
                while true {
                    skipSpace()
                    guard peek == UInt8(ascii: "\"") else { throw error("expected a string key") }
                    let k = try string()
                    skipSpace()
                    try expect(UInt8(ascii: ":"), "':' after a key")
                    skipSpace()
                    m.append(Member(k, try value(depth: depth + 1)))
                    skipSpace()
                    if peek == UInt8(ascii: ",") { i += 1; continue }
                    try expect(UInt8(ascii: "}"), "',' or '}' in an object")
                    return .object(m)
                }
            case UInt8(ascii: "["):
                i += 1
                var a: [JSON] = []
                skipSpace()
                if peek == UInt8(ascii: "]") { i += 1; return .array(a) }
                while true {
                    skipSpace()
                    a.append(try value(depth: depth + 1))
                    skipSpace()
                    if peek == UInt8(ascii: ",") { i += 1; continue }
                    try expect(UInt8(ascii: "]"), "',' or ']' in an array")
                    return .array(a)
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0") ... UInt8(ascii: "9"): return try number()
            default: throw error("unexpected character")
            }
        }

        mutating func literal(_ s: StaticString) throws(ParseError) {
            let n = s.utf8CodeUnitCount
            guard b.count - i >= n, memcmp(b.baseAddress! + i, s.utf8Start, n) == 0 else { throw error("invalid literal") }
            i += n
        }

        mutating func digits() -> Int {
            let s = i
            while let c = peek, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") { i += 1 }
            return i - s
        }

        mutating func number() throws(ParseError) -> JSON {
            let s = i
            if peek == UInt8(ascii: "-") { i += 1 }
            if peek == UInt8(ascii: "0") { i += 1 } else if digits() == 0 { throw error("invalid number") }
            if peek == UInt8(ascii: ".") {
                i += 1
                guard digits() > 0 else { throw error("invalid number: no digits after '.'") }
            }
            if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
                i += 1
                if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { i += 1 }
                guard digits() > 0 else { throw error("invalid number: no exponent digits") }
            }
            return .number(String(decoding: UnsafeRawBufferPointer(rebasing: b[s ..< i]), as: UTF8.self))
        }

        mutating func hex4() throws(ParseError) -> UInt32 {
            guard b.count - i >= 4 else { throw error("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0 ..< 4 {
                let c = b[i]
                let d: UInt8
                switch c {
                case UInt8(ascii: "0") ... UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a") ... UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A") ... UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: throw error("invalid \\u escape")
                }
                v = v << 4 | UInt32(d)
                i += 1
            }
            return v
        }

        /// A string at b[i] == '"'; UTF-8 must be valid, control characters escaped, and \u
        /// escapes whole characters (a high surrogate followed by a low one).
        mutating func string() throws(ParseError) -> String {
            i += 1
            let s = i
            while let c = peek, c != UInt8(ascii: "\""), c != UInt8(ascii: "\\"), c >= 0x20 { i += 1 }
            guard let c = peek else { throw error("unterminated string") }
            var bytes: [UInt8]
            if c == UInt8(ascii: "\"") {   // no escapes: the common case
                let r = UnsafeRawBufferPointer(rebasing: b[s ..< i])
                i += 1
                guard let str = String(validating: r, as: UTF8.self) else { throw error("invalid UTF-8 in a string") }
                return str
            }
            bytes = Array(b[s ..< i])
            while true {
                guard let c = peek else { throw error("unterminated string") }
                i += 1
                switch c {
                case UInt8(ascii: "\""):
                    guard let str = String(validating: bytes, as: UTF8.self) else { throw error("invalid UTF-8 in a string") }
                    return str
                case 0 ..< 0x20: i -= 1; throw error("unescaped control character in a string")
                case UInt8(ascii: "\\"):
                    guard let e = peek else { throw error("unterminated string") }
                    i += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): bytes.append(e)
                    case UInt8(ascii: "b"): bytes.append(0x08)
                    case UInt8(ascii: "f"): bytes.append(0x0C)
                    case UInt8(ascii: "n"): bytes.append(0x0A)
                    case UInt8(ascii: "r"): bytes.append(0x0D)
                    case UInt8(ascii: "t"): bytes.append(0x09)
                    case UInt8(ascii: "u"):
                        var u = try hex4()
                        if u >= 0xD800 && u < 0xDC00 {
                            guard b.count - i >= 2, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                                throw error("unpaired surrogate in a \\u escape")
                            }
                            i += 2
                            let lo = try hex4()
                            guard lo >= 0xDC00 && lo < 0xE000 else { throw error("unpaired surrogate in a \\u escape") }
                            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                        } else if u >= 0xDC00 && u < 0xE000 {
                            throw error("unpaired surrogate in a \\u escape")
                        }
                        bytes.append(contentsOf: String(Character(Unicode.Scalar(u)!)).utf8)
                    default: i -= 1; throw error("invalid escape")
                    }
                default: bytes.append(c)
                }
            }
        }
    }

    // MARK: writing

    /// The JSON text: compact (`{"a":1,"b":[2,3]}`, as JSONSerialization and serde_json write it),
    /// or with `indent` spaces a level as Python's json.dumps(indent=) (what transformers writes
    /// config.json with); keys in UTF-8 byte order with `sortKeys`.
    public func serialized(indent: Int? = nil, sortKeys: Bool = false) -> String {
        var out = ""
        write(to: &out, indent: indent, sortKeys: sortKeys, level: 0)
        return out
    }

    func write(to out: inout String, indent: Int?, sortKeys: Bool, level: Int) {
        func newline(_ l: Int) {
            if let indent { out += "\n" + String(repeating: " ", count: indent * l) }
        }
        switch self {
        case .null: out += "null"
        case .bool(let v): out += v ? "true" : "false"
        case .number(let s): out += s
        case .string(let s): Self.quote(s, into: &out)
        case .array(let a):
            guard !a.isEmpty else { out += "[]"; return }
            out += "["
            for (n, v) in a.enumerated() {
                if n > 0 { out += "," }
                newline(level + 1)
                v.write(to: &out, indent: indent, sortKeys: sortKeys, level: level + 1)
            }
            newline(level)
            out += "]"
        case .object(let m):
            guard !m.isEmpty else { out += "{}"; return }
            out += "{"
            let ms = sortKeys ? m.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) } : m
            for (n, e) in ms.enumerated() {
                if n > 0 { out += "," }
                newline(level + 1)
                Self.quote(e.key, into: &out)
                out += indent == nil ? ":" : ": "
                e.value.write(to: &out, indent: indent, sortKeys: sortKeys, level: level + 1)
            }
            newline(level)
            out += "}"
        }
    }

    static func quote(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\u{00}" ..< "\u{20}":
                let h = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }
}
