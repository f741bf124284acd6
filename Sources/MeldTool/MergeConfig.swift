import Foundation
import Yams

/// A parameter value as mergekit's YAML allows it: a scalar, a gradient (a list of numbers
/// interpolated over the layers), or conditional entries with `filter` (first match wins).
public indirect enum ParamValue: Equatable, Sendable {
    case number(Double)
    case bool(Bool)
    case gradient([Double])
    case conditional([(filter: String?, value: ParamValue)])

    public static func == (a: ParamValue, b: ParamValue) -> Bool {
        switch (a, b) {
        case let (.number(x), .number(y)): x == y
        case let (.bool(x), .bool(y)): x == y
        case let (.gradient(x), .gradient(y)): x == y
        case let (.conditional(x), .conditional(y)): x.count == y.count && zip(x, y).allSatisfy { $0.filter == $1.filter && $0.value == $1.value }
        default: false
        }
    }

    static func parse(_ node: Node, at key: String) throws -> ParamValue {
        switch node {
        case .scalar(let s):
            if let b = Bool(s.string.lowercased()), ["true", "false"].contains(s.string.lowercased()) { return .bool(b) }
            guard let d = Double(s.string) else { throw ToolError("parameter \(key): \"\(s.string)\" is not a number") }
            return .number(d)
        case .sequence(let seq):
            if seq.allSatisfy({ if case .scalar = $0 { true } else { false } }) {
                guard !seq.isEmpty else { throw ToolError("parameter \(key): empty list") }
                return .gradient(try seq.map { n in
                    guard let d = Double(n.scalar!.string) else { throw ToolError("parameter \(key): gradient entry \"\(n.scalar!.string)\" is not a number") }
                    return d
                })
            }
            var out: [(String?, ParamValue)] = []
            for item in seq {
                guard case .mapping(let m) = item else { throw ToolError("parameter \(key): list entries must be all numbers or all {filter, value} maps") }
                var filter: String?
                var value: ParamValue?
                for (k, v) in m {
                    switch k.string ?? "" {
                    case "filter": filter = v.string
                    case "value": value = try parse(v, at: key)
                    default: throw ToolError("parameter \(key): unknown key \(k.string ?? "?") in a conditional entry (supported: filter, value)")
                    }
                }
                guard let value else { throw ToolError("parameter \(key): conditional entry without value") }
                out.append((filter, value))
            }
            return .conditional(out)
        default:
            throw ToolError("parameter \(key): unsupported value")
        }
    }

    /// The value for a tensor: filters by substring, gradients at t (0 outside numbered layers).
    public func resolve(tensor: String, t: Double) -> Double? {
        switch self {
        case .number(let d): return d
        case .bool(let b): return b ? 1 : 0
        case .gradient(let pts):
            if pts.count == 1 { return pts[0] }
            let x = min(max(t, 0), 1) * Double(pts.count - 1)
            let i = min(Int(x.rounded(.down)), pts.count - 2)
            let f = x - Double(i)
            return pts[i] + (pts[i + 1] - pts[i]) * f
        case .conditional(let entries):
            for e in entries where e.filter == nil || tensor.contains(e.filter!) { return e.value.resolve(tensor: tensor, t: t) }
            return nil
        }
    }
}

public struct ModelEntry: Sendable {
    public var model: String
    public var parameters: [String: ParamValue]
}

/// A mergekit YAML merge configuration (the subset Meld runs; anything else is an error that
/// says what is supported).
public struct MergeConfig: Sendable {
    public static let methods = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                                 "breadcrumbs_ties", "della", "della_linear", "slerp", "nuslerp", "model_stock"]
    static let topKeys = ["merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source", "name"]
    static let dtypes = ["float32": "F32", "float16": "F16", "bfloat16": "BF16", "fp32": "F32", "fp16": "F16", "bf16": "BF16"]

    public var method: String
    public var baseModel: String?
    public var models: [ModelEntry]
    public var parameters: [String: ParamValue]
    public var dtype: STDType?
    public var outDtype: STDType?

    public init(yaml: String, source: String = "config") throws {
        let node: Node
        do {
            // the basic resolver tags every plain scalar str: values are read from their text below, and
            // the default resolver's regular expressions cost ~2 ms to build on first use
            guard let n = try Yams.compose(yaml: yaml, .basic) else { throw ToolError("\(source): empty configuration") }
            node = n
        } catch let e as ToolError { throw e } catch { throw ToolError("\(source): not valid YAML: \(error)") }
        guard case .mapping(let top) = node else { throw ToolError("\(source): the configuration must be a mapping") }
        var method: String?, base: String?, models: [ModelEntry] = [], params: [String: ParamValue] = [:]
        var dtype: STDType?, outDtype: STDType?
        for (k, v) in top {
            let key = k.string ?? ""
            switch key {
            case "merge_method": method = v.string
            case "base_model": base = v.string
            case "dtype", "out_dtype":
                guard let s = v.string, let d = Self.dtypes[s].flatMap(STDType.init(rawValue:)) else {
                    throw ToolError("\(source): \(key) \"\(v.string ?? "?")\" is not supported (supported: float32, float16, bfloat16)")
                }
                if key == "dtype" { dtype = d } else { outDtype = d }
            case "parameters": params = try Self.parameters(v, at: "parameters")
            case "tokenizer_source":
                guard v.string == "base" else { throw ToolError("\(source): tokenizer_source \"\(v.string ?? "?")\" is not supported (supported: base)") }
            case "name": break
            case "models":
                guard case .sequence(let seq) = v else { throw ToolError("\(source): models must be a list") }
                for item in seq {
                    guard case .mapping(let m) = item else { throw ToolError("\(source): each models entry must be a mapping with model:") }
                    var name: String?, p: [String: ParamValue] = [:]
                    for (mk, mv) in m {
                        switch mk.string ?? "" {
                        case "model": name = mv.string
                        case "parameters": p = try Self.parameters(mv, at: "models.parameters")
                        default: throw ToolError("\(source): unknown key \(mk.string ?? "?") in a models entry (supported: model, parameters)")
                        }
                    }
                    guard let name, !name.isEmpty else { throw ToolError("\(source): a models entry has no model path") }
                    models.append(ModelEntry(model: name, parameters: p))
                }
            default:
                throw ToolError("\(source): unknown key \(key) (supported: \(Self.topKeys.joined(separator: ", ")))")
            }
        }
        guard let method else { throw ToolError("\(source): merge_method is missing (supported: \(Self.methods.joined(separator: ", ")))") }
        guard Self.methods.contains(method) else {
            throw ToolError("\(source): merge_method \(method) is not supported (supported: \(Self.methods.joined(separator: ", ")))")
        }
        guard !models.isEmpty else { throw ToolError("\(source): models is empty") }
        self.method = method; baseModel = base; self.models = models; parameters = params; self.dtype = dtype; self.outDtype = outDtype
        try validateKeys(source: source)
    }

    static func parameters(_ node: Node, at key: String) throws -> [String: ParamValue] {
        guard case .mapping(let m) = node else { throw ToolError("\(key) must be a mapping") }
        var out: [String: ParamValue] = [:]
        for (k, v) in m {
            let name = k.string ?? ""
            out[name] = try ParamValue.parse(v, at: name)
        }
        return out
    }

    /// Parameters each method takes (mergekit 0.1.5), per model and global.
    public static func modelParameters(_ method: String) -> [String] {
        switch method {
        case "linear", "task_arithmetic", "nuslerp": ["weight"]
        case "ties", "dare_ties", "dare_linear": ["weight", "density"]
        case "breadcrumbs", "breadcrumbs_ties": ["weight", "density", "gamma"]
        case "della", "della_linear": ["weight", "density", "epsilon"]
        default: []
        }
    }
    public static func globalParameters(_ method: String) -> [String] {
        switch method {
        case "linear": ["normalize"]
        case "slerp": ["t"]
        case "nuslerp": ["nuslerp_flatten", "nuslerp_row_wise"]
        case "model_stock": ["filter_wise"]
        default: ["normalize", "lambda", "rescale", "int8_mask"]
        }
    }

    func validateKeys(source: String) throws {
        let mp = Self.modelParameters(method), gp = Self.globalParameters(method)
        for k in parameters.keys where !gp.contains(k) && !mp.contains(k) {
            throw ToolError("\(source): parameter \(k) is not taken by \(method) (supported: \((gp + mp).joined(separator: ", ")))")
        }
        for m in models {
            for k in m.parameters.keys where !mp.contains(k) {
                throw ToolError("\(source): parameter \(k) of model \(m.model) is not taken by \(method) (supported: \(mp.isEmpty ? "none" : mp.joined(separator: ", ")))")
            }
        }
    }
}

/// A size as mergekit's `--out-shard-size` takes it: a number with an optional K, M or B
/// (thousand, million, billion) suffix, or KB/MB/GB/KiB/MiB/GiB; nil unless it is a positive
/// whole number of bytes up to Int.max.
public func parseByteSize(_ s: String) -> Int? {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased()
    let units: [(String, Double)] = [("KIB", 1024), ("MIB", 1_048_576), ("GIB", 1_073_741_824), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9),
                                     ("K", 1e3), ("M", 1e6), ("B", 1e9), ("G", 1e9)]
    for (u, m) in units where t.hasSuffix(u) {
        // Int(_:) traps past Int.max (and on infinity): such sizes are refused first
        guard let v = Double(t.dropLast(u.count)), v > 0, v * m < Double(Int.max), v * m >= 1 else { continue }
        return Int(v * m)
    }
    if let v = Int(t), v > 0 { return v }
    return nil
}
