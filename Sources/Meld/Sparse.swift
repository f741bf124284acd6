import CMeld

/// How a task vector is sparsified before merging (see meld_sparse.h for the exact rules).
public struct Sparsifier: Sendable {
    public enum Method: UInt32, Sendable { case none = 0, magnitude = 1, random = 2, magnitudeOutliers = 3, della = 4, mask = 5 }
    public enum Rescale: UInt32, Sendable { case none = 0, density = 1, l1 = 2 }
    public var method: Method
    public var density: Double
    public var gamma: Double = 0.01
    public var epsilon: Double = 0.15
    public var rescale: Rescale = .none
    public var seed: UInt64 = 0
    public var stream: UInt64 = 0
    public var rowLength: Int = 0
    public var mask: [UInt8]? = nil

    public init(_ method: Method, density: Double = 1, gamma: Double = 0.01, epsilon: Double = 0.15, rescale: Rescale = .none,
                seed: UInt64 = 0, stream: UInt64 = 0, rowLength: Int = 0, mask: [UInt8]? = nil) {
        self.method = method; self.density = density; self.gamma = gamma; self.epsilon = epsilon; self.rescale = rescale
        self.seed = seed; self.stream = stream; self.rowLength = rowLength; self.mask = mask
    }
    public static let none = Sparsifier(.none)
    public static func magnitude(_ d: Double) -> Sparsifier { Sparsifier(.magnitude, density: d) }
    public static func dare(_ d: Double, seed: UInt64, stream: UInt64, rescale: Rescale = .l1) -> Sparsifier {
        Sparsifier(.random, density: d, rescale: rescale, seed: seed, stream: stream)
    }
    public static func breadcrumbs(_ d: Double, gamma: Double) -> Sparsifier { Sparsifier(.magnitudeOutliers, density: d, gamma: gamma) }
    public static func della(_ d: Double, epsilon: Double, seed: UInt64, stream: UInt64, rowLength: Int = 0, rescale: Rescale = .l1) -> Sparsifier {
        Sparsifier(.della, density: d, epsilon: epsilon, rescale: rescale, seed: seed, stream: stream, rowLength: rowLength)
    }

    /// The documented stream of a tensor and expert: the same name and index give the same masks.
    public static func stream(tensor name: String, expert: Int) -> UInt64 {
        var n = Array(name.utf8)
        return n.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: max(p.count, 1)) { meld_rng_stream($0, p.count, UInt32(expert)) }
        }
    }
}

/// Merge options of the generalized task-vector merge.
public struct MergeOptions: Sendable {
    public var consensus: Consensus
    public var divisor: Divisor
    public var voteUnweighted: Bool
    public var lambda: Float
    public init(consensus: Consensus = .none, divisor: Divisor = .none, voteUnweighted: Bool = false, lambda: Float = 1) {
        self.consensus = consensus; self.divisor = divisor; self.voteUnweighted = voteUnweighted; self.lambda = lambda
    }
    var c: meld_merge_options {
        meld_merge_options(consensus: meld_consensus(rawValue: consensus.rawValue), divisor: meld_divisor(rawValue: divisor.rawValue),
                           vote_unweighted: voteUnweighted ? 1 : 0, lambda: lambda)
    }
}

/// A masked sparse task vector: bitmap (LSB first) + the kept values in index order.
public struct PackedDelta<T: MeldScalar> {
    public var mask: [UInt8]
    public var values: [T]
    public var count: Int
}

/// C forms of sparsifiers, with their MASK bitmaps copied into storage that lives as long as this.
final class SparsifierStorage {
    let buf: UnsafeMutablePointer<UInt8>
    let c: [meld_sparsifier]
    init(_ s: [Sparsifier]) {
        let total = s.reduce(0) { $0 + ($1.mask?.count ?? 0) }
        let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: max(total, 1))
        var off = 0
        c = s.map { sp in
            var m: UnsafePointer<UInt8>? = nil
            if let mask = sp.mask {
                (buf + off).initialize(from: mask, count: mask.count)
                m = UnsafePointer(buf + off)
                off += mask.count
            }
            return meld_sparsifier(method: meld_sparsify_method(rawValue: sp.method.rawValue), density: sp.density, gamma: sp.gamma,
                                   epsilon: sp.epsilon, rescale: meld_rescale(rawValue: sp.rescale.rawValue), seed: sp.seed,
                                   stream: sp.stream, row_length: sp.rowLength, mask: m)
        }
        self.buf = buf
    }
    deinit { buf.deallocate() }
}

/// Keeps caller mask arrays alive and addressable for one C call.
func withSparsifiers<R>(_ s: [Sparsifier], _ body: ([meld_sparsifier]) throws -> R) rethrows -> R {
    let storage = SparsifierStorage(s)
    return try withExtendedLifetime(storage) { try body(storage.c) }
}

/// A task-vector merge prepared once (thresholds, norms and masks computed) and then written in
/// ranges, so a caller can stream the output in chunks with no tensor-sized buffer. The views it
/// was made from must stay valid while it is used.
public final class MergePlan {
    let raw: OpaquePointer
    let ctx: Context
    let sparsifiers: SparsifierStorage
    public let count: Int
    /// Ranges start on multiples of this many elements.
    public static let rangeAlignment = Int(MELD_MERGE_RANGE_ALIGN)

    public init(_ ctx: Context, base: TensorView, _ models: [TensorView], weights: [Float], sparsifiers: [Sparsifier],
                options: MergeOptions) throws {
        let v = models.map(\.c)
        guard weights.count == v.count, sparsifiers.count == v.count else {
            throw MeldError(status: MeldError.sizeMismatch, message: "\(v.count) models, \(weights.count) weights, \(sparsifiers.count) sparsifiers")
        }
        let sp = SparsifierStorage(sparsifiers)
        var o = options.c
        var p: OpaquePointer?
        try ctx.run(meld_merge_plan_create(ctx.raw, base.c, v.count, v, weights, sp.c, &o, &p))
        raw = p!
        self.ctx = ctx
        self.sparsifiers = sp
        count = base.count
    }
    deinit { meld_merge_plan_destroy(raw) }

    /// Writes elements first ..< first + out.count of the merged tensor (the same bits as the
    /// one-call merge); first is a multiple of `rangeAlignment`.
    public func run(first: Int, into out: MutableTensorView) throws {
        try ctx.run(meld_merge_plan_run(ctx.raw, raw, first, out.c))
    }
}

extension Context {
    /// One Philox4x32-10 block.
    public static func philox(counter: (UInt32, UInt32, UInt32, UInt32), key: (UInt32, UInt32)) -> [UInt32] {
        let c = [counter.0, counter.1, counter.2, counter.3], k = [key.0, key.1]
        var out = [UInt32](repeating: 0, count: 4)
        meld_philox4x32_10(c, k, &out)
        return out
    }

    /// The generalized task-vector merge (ties, dare_ties, dare_linear, breadcrumbs(_ties), della(_linear), ...).
    public func mergeTaskVectors(base: TensorView, _ models: [TensorView], weights: [Float], sparsifiers: [Sparsifier],
                                 options: MergeOptions, into out: MutableTensorView) throws {
        let v = models.map(\.c)
        guard weights.count == v.count, sparsifiers.count == v.count else { try mismatch() }
        var o = options.c
        try withSparsifiers(sparsifiers) { sp in try run(meld_merge_task_vectors(raw, base.c, v.count, v, weights, sp, &o, out.c)) }
    }

    public func mergeTaskVectors<T: MeldScalar, U: MeldScalar>(base: [T], _ models: [[T]], weights: [Float], sparsifiers: [Sparsifier],
                                                               options: MergeOptions, as: U.Type = U.self) throws -> [U] {
        guard weights.count == models.count, sparsifiers.count == models.count else { try mismatch() }
        var o = options.c
        return try withView(base) { b in try withViews(models) { v in try withSparsifiers(sparsifiers) { sp in
            try makeOutput(base.count) { try run(meld_merge_task_vectors(raw, b, v.count, v, weights, sp, &o, $0)) }
        } } }
    }

    /// The keep mask (and rescale factor) of a sparsifier on x - base (base nil: on x).
    public func sparsifyMask<T: MeldScalar>(base: [T]?, _ x: [T], _ s: Sparsifier) throws -> (mask: [UInt8], scale: Float) {
        var scale: Float = 1
        let bytes = (x.count + 7) / 8
        let mask = try withView(x) { xv in try withSparsifiers([s]) { sp in
            try [UInt8](unsafeUninitializedCapacity: max(bytes, 1)) { buf, count in
                if let base {
                    try withView(base) { try run(meld_sparsify_mask(raw, $0, xv, sp, buf.baseAddress, &scale)) }
                } else {
                    try run(meld_sparsify_mask(raw, meld_view(data: nil, numel: 0, dtype: MELD_F32), xv, sp, buf.baseAddress, &scale))
                }
                count = bytes
            }
        } }
        return (mask, scale)
    }

    /// Packs (x - base) * scale at the mask's set bits.
    public func pack<T: MeldScalar, U: MeldScalar>(base: [T]?, _ x: [T], mask: [UInt8], scale: Float = 1, as: U.Type = U.self) throws -> PackedDelta<U> {
        var nnz = 0
        try check(meld_mask_count(mask, x.count, &nnz))
        let values: [U] = try withView(x) { xv in
            try makeOutput(nnz) { out in
                if let base { try withView(base) { try run(meld_pack(raw, $0, xv, mask, scale, out)) } }
                else { try run(meld_pack(raw, meld_view(data: nil, numel: 0, dtype: MELD_F32), xv, mask, scale, out)) }
            }
        }
        return PackedDelta(mask: mask, values: values, count: x.count)
    }

    /// out = base + sum_k scales[k] * unpack(deltas[k]), one pass.
    public func sparseApply<T: MeldScalar, V: MeldScalar, U: MeldScalar>(base: [T], _ deltas: [PackedDelta<V>], scales: [Float], as: U.Type = U.self) throws -> [U] {
        guard scales.count == deltas.count else { try mismatch() }
        func go(_ i: Int, _ acc: [meld_packed_view], _ b: meld_view) throws -> [U] {
            if i == deltas.count { return try makeOutput(base.count) { try run(meld_sparse_apply(raw, b, acc.count, acc, scales, $0)) } }
            return try deltas[i].mask.withUnsafeBufferPointer { m in try deltas[i].values.withUnsafeBytes { v in
                try go(i + 1, acc + [meld_packed_view(mask: m.baseAddress, values: v.baseAddress, numel: deltas[i].count,
                                                      nnz: deltas[i].values.count, dtype: V.dtype.c)], b)
            } }
        }
        return try withView(base) { try go(0, [], $0) }
    }

    public func slerp<T: MeldScalar, U: MeldScalar>(t: Float, _ v0: [T], _ v1: [T], as: U.Type = U.self) throws -> [U] {
        try withView(v0) { a in try withView(v1) { b in try makeOutput(v0.count) { try run(meld_slerp(raw, t, a, b, $0)) } } }
    }

    public func nuslerp<T: MeldScalar, U: MeldScalar>(base: [T]?, _ x0: [T], _ x1: [T], weights: (Float, Float), as: U.Type = U.self) throws -> [U] {
        try withView(x0) { a in try withView(x1) { b in try makeOutput(x0.count) { out in
            if let base { try withView(base) { try run(meld_nuslerp(raw, $0, a, b, weights.0, weights.1, out)) } }
            else { try run(meld_nuslerp(raw, meld_view(data: nil, numel: 0, dtype: MELD_F32), a, b, weights.0, weights.1, out)) }
        } } }
    }

    /// Model Stock; returns the merged tensor and the interpolation ratio t.
    public func modelStock<T: MeldScalar, U: MeldScalar>(base: [T], _ models: [[T]], as: U.Type = U.self) throws -> (merged: [U], t: Float) {
        var t: Float = 0
        let out: [U] = try withView(base) { b in try withViews(models) { v in
            try makeOutput(base.count) { try run(meld_model_stock(raw, b, v.count, v, $0, &t)) }
        } }
        return (out, t)
    }

    // Views (zero-copy) for the CLI.
    public func slerp(t: Float, _ v0: TensorView, _ v1: TensorView, into out: MutableTensorView) throws {
        try run(meld_slerp(raw, t, v0.c, v1.c, out.c))
    }
    public func nuslerp(base: TensorView?, _ x0: TensorView, _ x1: TensorView, weights: (Float, Float), into out: MutableTensorView) throws {
        try run(meld_nuslerp(raw, base?.c ?? meld_view(data: nil, numel: 0, dtype: MELD_F32), x0.c, x1.c, weights.0, weights.1, out.c))
    }
    public func modelStock(base: TensorView, _ models: [TensorView], into out: MutableTensorView) throws -> Float {
        var t: Float = 0
        try run(meld_model_stock(raw, base.c, models.count, models.map(\.c), out.c, &t))
        return t
    }

    // The weights of the geometric merges, from their reduction pass alone: `linear` with them
    // (normalize off) over any range of the inputs gives the merge's bits there.
    /// SLERP as weights of (v0, v1).
    public func slerpWeights(t: Float, _ v0: TensorView, _ v1: TensorView) throws -> [Float] {
        var w = [Float](repeating: 0, count: 2)
        try run(meld_slerp_weights(raw, t, v0.c, v1.c, &w))
        return w
    }
    /// NuSLERP as weights of (x0, x1, base); the base's weight is 0 without a base.
    public func nuslerpWeights(base: TensorView?, _ x0: TensorView, _ x1: TensorView, weights: (Float, Float)) throws -> [Float] {
        var w = [Float](repeating: 0, count: 3)
        try run(meld_nuslerp_weights(raw, base?.c ?? meld_view(data: nil, numel: 0, dtype: MELD_F32), x0.c, x1.c, weights.0, weights.1, &w))
        return w
    }
    /// Model Stock as weights of (models..., base), and its t.
    public func modelStockWeights(base: TensorView, _ models: [TensorView]) throws -> (weights: [Float], t: Float) {
        var w = [Float](repeating: 0, count: models.count + 1), t: Float = 0
        try run(meld_model_stock_weights(raw, base.c, models.count, models.map(\.c), &w, &t))
        return (w, t)
    }
}
