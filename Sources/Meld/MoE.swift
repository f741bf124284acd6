import CMeld

/// Router options; the presets are the published models' settings.
public struct RouteOptions: Sendable {
    public enum Score: UInt32, Sendable { case softmax = 0, sigmoid = 1, logits = 2 }
    public var topK: Int
    public var score: Score = .softmax
    public var softmaxAfterTopK = false
    public var normalize = false
    public var selectionBias: [Float]? = nil
    public var nGroup = 0, topkGroup = 0
    public var routedScaling: Float = 1
    public init(topK: Int, score: Score = .softmax, softmaxAfterTopK: Bool = false, normalize: Bool = false,
                selectionBias: [Float]? = nil, nGroup: Int = 0, topkGroup: Int = 0, routedScaling: Float = 1) {
        self.topK = topK; self.score = score; self.softmaxAfterTopK = softmaxAfterTopK; self.normalize = normalize
        self.selectionBias = selectionBias; self.nGroup = nGroup; self.topkGroup = topkGroup; self.routedScaling = routedScaling
    }
    public static func mixtral(topK: Int = 2) -> RouteOptions { RouteOptions(topK: topK, normalize: true) }
    public static func qwen(topK: Int = 8, normTopkProb: Bool) -> RouteOptions { RouteOptions(topK: topK, normalize: normTopkProb) }
    public static func gptOss(topK: Int = 4) -> RouteOptions { RouteOptions(topK: topK, score: .logits, softmaxAfterTopK: true) }
    public static func deepseekV3(topK: Int = 8, bias: [Float], nGroup: Int = 8, topkGroup: Int = 4, scaling: Float = 2.5) -> RouteOptions {
        RouteOptions(topK: topK, score: .sigmoid, normalize: true, selectionBias: bias, nGroup: nGroup, topkGroup: topkGroup, routedScaling: scaling)
    }
}

/// Expert weights E x N x K (row-major, [out, in] per expert), packed for a context's ISA.
public final class PackedExperts {
    let raw: OpaquePointer
    public let experts: Int, n: Int, k: Int
    public init<T: MeldScalar>(_ ctx: Context, weights: [T], experts: Int, n: Int, k: Int) throws {
        guard weights.count == experts * n * k else { throw MeldError(status: MeldError.sizeMismatch, message: "weights hold \(weights.count) values, not \(experts) x \(n) x \(k)") }
        var p: OpaquePointer?
        try weights.withUnsafeBytes { try ctx.run(meld_moe_weights_pack(ctx.raw, $0.baseAddress, T.dtype.c, experts, n, k, k, &p)) }
        raw = p!
        self.experts = experts; self.n = n; self.k = k
    }
    deinit { meld_moe_weights_destroy(raw) }
    public var bytes: Int { meld_moe_weights_bytes(raw) }
    /// The microkernel the weights are packed for ("avx512", "avx512bf16-dot", "opencl", ...).
    public var kernel: String { String(cString: meld_moe_weights_kernel(raw)) }
}

public struct MoEFFNOptions: Sendable {
    public enum Activation: UInt32, Sendable { case silu = 0, geluTanh = 1, swigluOAI = 2 }
    public var activation: Activation = .silu
    public var alpha: Float = 1.702, limit: Float = 7
    public var interleavedGateUp = false
    public var accumulate = false
    public init(activation: Activation = .silu, alpha: Float = 1.702, limit: Float = 7, interleavedGateUp: Bool = false, accumulate: Bool = false) {
        self.activation = activation; self.alpha = alpha; self.limit = limit; self.interleavedGateUp = interleavedGateUp; self.accumulate = accumulate
    }
    var c: meld_moe_ffn_options {
        meld_moe_ffn_options(activation: meld_activation(rawValue: activation.rawValue), alpha: alpha, limit: limit,
                             interleaved_gate_up: interleavedGateUp ? 1 : 0, accumulate: accumulate ? 1 : 0)
    }
}

/// The dispatch plan of T x k routed pairs.
public struct DispatchPlan: Sendable, Equatable {
    public var counts: [Int32], offsets: [Int32], order: [Int32], inverse: [Int32]
}

extension Context {
    /// Top-k routing of `tokens` rows of router logits (`experts` per row).
    public func route(logits: [Float], tokens: Int, experts: Int, options: RouteOptions) throws -> (ids: [Int32], weights: [Float]) {
        guard logits.count == tokens * experts else { try mismatch() }
        var ids = [Int32](repeating: 0, count: tokens * options.topK), w = [Float](repeating: 0, count: tokens * options.topK)
        let bias = options.selectionBias
        if let b = bias, b.count != experts { try mismatch() }
        try (bias ?? []).withUnsafeBufferPointer { bp in
            var o = meld_route_options(top_k: options.topK, score: meld_route_score(rawValue: options.score.rawValue),
                                       softmax_after_topk: options.softmaxAfterTopK ? 1 : 0, normalize: options.normalize ? 1 : 0,
                                       selection_bias: bias == nil ? nil : bp.baseAddress, n_group: options.nGroup,
                                       topk_group: options.topkGroup, routed_scaling: options.routedScaling)
            try run(meld_moe_route(raw, logits, tokens, experts, experts, &o, &ids, &w))
        }
        return (ids, w)
    }

    public func dispatchPlan(ids: [Int32], tokens: Int, k: Int, experts: Int) throws -> DispatchPlan {
        guard ids.count == tokens * k else { try mismatch() }
        var p: OpaquePointer?
        try run(meld_moe_plan_create(raw, ids, tokens, k, experts, &p))
        defer { meld_moe_plan_destroy(p) }
        let m = tokens * k
        func arr(_ ptr: UnsafePointer<Int32>?, _ n: Int) -> [Int32] { Array(UnsafeBufferPointer(start: ptr, count: n)) }
        return DispatchPlan(counts: arr(meld_moe_plan_counts(p), experts), offsets: arr(meld_moe_plan_offsets(p), experts + 1),
                            order: arr(meld_moe_plan_order(p), m), inverse: arr(meld_moe_plan_inverse(p), m))
    }

    /// Offsets form: rows offsets[e] ..< offsets[e+1] of x (ldx per row) use expert e; returns M x N.
    public func groupedMatmul(x: [Float], ldx: Int, offsets: [Int32], weights: PackedExperts, ldy: Int? = nil) throws -> [Float] {
        guard offsets.count == weights.experts + 1 else { try mismatch() }
        let m = Int(offsets.last ?? 0), ly = ldy ?? weights.n
        guard x.count >= max(0, (m - 1) * ldx + weights.k) || m == 0 else { try mismatch() }
        var y = [Float](repeating: 0, count: m * ly)
        try run(meld_grouped_matmul(raw, x, ldx, offsets, weights.raw, &y, ly))
        return y
    }

    /// Gather form: row r of x uses expert ids[r].
    public func groupedMatmulGather(x: [Float], rows: Int, ldx: Int, ids: [Int32], weights: PackedExperts, ldy: Int? = nil) throws -> [Float] {
        guard ids.count == rows, rows == 0 || x.count >= (rows - 1) * ldx + weights.k else { try mismatch() }
        let ly = ldy ?? weights.n
        var y = [Float](repeating: 0, count: rows * ly)
        try run(meld_grouped_matmul_gather(raw, x, rows, ldx, ids, weights.raw, &y, ly))
        return y
    }

    /// The fused MoE FFN over `tokens` rows of x (hidden size H = gateUp.k).
    public func moeFFN(x: [Float], tokens: Int, ids: [Int32], routeWeights: [Float], k: Int, gateUp: PackedExperts, down: PackedExperts,
                       shared: (gateUp: PackedExperts, down: PackedExperts)? = nil, options: MoEFFNOptions = MoEFFNOptions(),
                       into out: [Float]? = nil) throws -> [Float] {
        let h = gateUp.k
        guard x.count == tokens * h, ids.count == tokens * k, routeWeights.count == tokens * k else { try mismatch() }
        var y = out ?? [Float](repeating: 0, count: tokens * h)
        guard y.count == tokens * h else { try mismatch() }
        var o = options.c
        try run(meld_moe_ffn(raw, x, tokens, h, ids, routeWeights, k, gateUp.raw, down.raw, shared?.gateUp.raw, shared?.down.raw, &o, &y, h))
        return y
    }
}
