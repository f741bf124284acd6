import Foundation
import Meld
#if canImport(Glibc)
import Glibc
#endif

/// Writes Llama-shaped checkpoints: a base and experts = base + small dense noise + a sparse
/// larger perturbation on ~10% of entries (so trimming and sign conflicts both matter).
/// Deterministic: values are a hash of (seed, model, tensor, index).
public struct CheckpointGenerator: Sendable {
    public var hidden = 64, layers = 2, vocab = 256, intermediate = 160, heads = 4, kvHeads = 2
    public var experts = 3
    public var dtype: STDType = .F32
    public var seed: UInt64 = 1
    public init() {}

    public var tensorShapes: [(String, [Int])] {
        let headDim = hidden / heads
        var t: [(String, [Int])] = [("model.embed_tokens.weight", [vocab, hidden]), ("lm_head.weight", [vocab, hidden]), ("model.norm.weight", [hidden])]
        for l in 0..<layers {
            let p = "model.layers.\(l)."
            t += [(p + "input_layernorm.weight", [hidden]), (p + "post_attention_layernorm.weight", [hidden]),
                  (p + "self_attn.q_proj.weight", [heads * headDim, hidden]), (p + "self_attn.k_proj.weight", [kvHeads * headDim, hidden]),
                  (p + "self_attn.v_proj.weight", [kvHeads * headDim, hidden]), (p + "self_attn.o_proj.weight", [hidden, heads * headDim]),
                  (p + "mlp.gate_proj.weight", [intermediate, hidden]), (p + "mlp.up_proj.weight", [intermediate, hidden]),
                  (p + "mlp.down_proj.weight", [hidden, intermediate])]
        }
        return t.sorted { $0.0 < $1.0 }
    }

    public var parameterCount: Int { tensorShapes.reduce(0) { $0 + $1.1.reduce(1, *) } }

    /// Checks the shape parameters (each size at least 1, heads dividing hidden and kv-heads
    /// dividing heads), that the sizes do not overflow, and that the models fit on the disk.
    /// Returns the bytes the models take.
    @discardableResult
    public func validate(dir: String) throws -> Int {
        for (name, v) in [("hidden", hidden), ("layers", layers), ("vocab", vocab), ("intermediate", intermediate),
                          ("heads", heads), ("kv-heads", kvHeads)] where v < 1 {
            throw ToolError("--\(name) \(v): must be at least 1")
        }
        guard experts >= 0 else { throw ToolError("--experts \(experts): must be at least 0") }
        guard hidden % heads == 0 else { throw ToolError("--heads \(heads) does not divide --hidden \(hidden)") }
        guard heads % kvHeads == 0 else { throw ToolError("--kv-heads \(kvHeads) does not divide --heads \(heads)") }
        // bytes of all models, every product and sum checked (the shapes' own products trap on
        // overflow): embeddings and lm_head, the final norm, and per layer two norms, q and o,
        // k and v, and the three MLP matrices
        func product(_ f: Int...) -> Int? {
            f.reduce(Int?.some(1)) { acc, x in acc.flatMap { let (r, o) = $0.multipliedReportingOverflow(by: x); return o ? nil : r } }
        }
        func sum(_ t: Int?...) -> Int? {
            t.reduce(Int?.some(0)) { acc, x in acc.flatMap { a in x.flatMap { let (r, o) = a.addingReportingOverflow($0); return o ? nil : r } } }
        }
        let layer = sum(product(2, hidden), product(2, hidden, hidden), product(2, kvHeads, hidden / heads, hidden), product(3, intermediate, hidden))
        let params = sum(product(2, vocab, hidden), hidden, layer.flatMap { product($0, layers) })
        guard let bytes = params.flatMap({ product($0, dtype.size, experts + 1) }) else {
            throw ToolError("these shapes do not fit in memory addresses: choose smaller --hidden, --vocab, --intermediate or --layers")
        }
        var st = statvfs()
        var probe = URL(fileURLWithPath: dir).standardizedFileURL
        while !FileManager.default.fileExists(atPath: probe.path) && probe.path != "/" { probe.deleteLastPathComponent() }
        if statvfs(probe.path, &st) == 0 {
            let free = Double(st.f_bavail) * Double(st.f_frsize)
            if Double(bytes) > free {
                func size(_ b: Double) -> String { b >= 1e9 ? String(format: "%.2f GB", b / 1e9) : String(format: "%.1f MB", b / 1e6) }
                throw ToolError("the models need \(size(Double(bytes))) and \(probe.path) has \(size(free)) free")
            }
        }
        return bytes
    }

    @inline(__always) static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Writes `base` and `expert0...` folders under dir; returns their paths.
    @discardableResult
    public func write(to dir: String) throws -> [String] {
        let names = ["base"] + (0..<experts).map { "expert\($0)" }
        let shapes = tensorShapes
        for (m, name) in names.enumerated() {
            let path = dir + "/" + name
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            let writer = try ShardedWriter(directory: path, plan: shapes.map { .init(name: $0.0, dtype: dtype, shape: $0.1) }, shardSize: Int.max)
            let ctx = try Context()
            for (ti, (tname, shape)) in shapes.enumerated() {
                let n = shape.reduce(1, *)
                let isNorm = shape.count == 1
                let tkey = Self.mix(seed ^ UInt64(ti) &* 0x1000_0001)
                let buf = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
                defer { buf.deallocate() }
                let addr = Int(bitPattern: buf) // chunks write disjoint ranges
                let chunks = max(1, min(64, n / 65536))
                DispatchQueue.concurrentPerform(iterations: chunks) { c in
                    let buf = UnsafeMutablePointer<Float>(bitPattern: addr)!
                    let a = n * c / chunks, b = n * (c + 1) / chunks
                    for i in a..<b {
                        let r = Self.mix(tkey ^ UInt64(i))
                        // base: sum of two uniforms, centred; norms around 1
                        let u = Float(r & 0xFFFFFF) * 0x1p-24 + Float((r >> 24) & 0xFFFFFF) * 0x1p-24 - 1
                        var v = isNorm ? 1 + 0.1 * u : 0.04 * u
                        if m > 0 {
                            let e = Self.mix(r ^ UInt64(m) &* 0xD6E8_FEB8_6659_FD93)
                            v += 0.002 * (Float(e & 0xFFFF) * 0x1p-16 - 0.5)
                            if (e >> 16) & 0xFF < 26 { v += 0.02 * (Float((e >> 24) & 0xFFFF) * 0x1p-16 - 0.5) }
                        }
                        buf[i] = v
                    }
                }
                let out = writer.staging(bytes: n * dtype.size)
                try ctx.convert(TensorView(data: UnsafeRawPointer(buf), count: n, dtype: .f32), into: MutableTensorView(data: out, count: n, dtype: dtype.meld!))
                try writer.write(tname, offset: 0, from: out, bytes: n * dtype.size)
            }
            try writer.close()
            let cfg = JSON.object([
                .init("architectures", .array([.string("LlamaForCausalLM")])), .init("model_type", .string("llama")),
                .init("hidden_size", .int(hidden)), .init("intermediate_size", .int(intermediate)), .init("num_hidden_layers", .int(layers)),
                .init("num_attention_heads", .int(heads)), .init("num_key_value_heads", .int(kvHeads)), .init("vocab_size", .int(vocab)),
                .init("hidden_act", .string("silu")), .init("rms_norm_eps", .number("1e-06")), .init("tie_word_embeddings", .bool(false)),
                .init("torch_dtype", .string(dtype == .F32 ? "float32" : dtype == .BF16 ? "bfloat16" : "float16")),
            ])
            try writeFile(path + "/config.json", cfg.serialized(indent: 2, sortKeys: true) + "\n")
        }
        return names.map { dir + "/" + $0 }
    }
}
