import CMeld

/// Which entries a magnitude selection keeps: `|v_i| > threshold` (as f32 bits), or equal and
/// `i < tieCutoff` (ties go to the lower index).
public struct Selection: Equatable, Sendable {
    public var threshold: UInt32
    public var tieCutoff: UInt64
    public var kept: UInt64
    init(_ s: meld_selection) { threshold = s.threshold; tieCutoff = s.tie_cutoff; kept = s.kept }
    var c: meld_selection { meld_selection(threshold: threshold, tie_cutoff: tieCutoff, kept: kept) }
}

public enum Consensus: UInt32, Sendable { case none = 0, sum = 1, count = 2 }
public enum Divisor: UInt32, Sendable { case none = 0, weightSum = 1, count = 2 }

/// TIES options. Defaults are mergekit's: sum vote on weighted deltas, normalize by the
/// agreeing weights, lambda 1. `.paper` is the TIES paper / PEFT variant.
public struct TiesOptions: Sendable {
    public var consensus: Consensus = .sum
    public var divisor: Divisor = .weightSum
    public var voteUnweighted = false
    public var lambda: Float = 1
    public init(consensus: Consensus = .sum, divisor: Divisor = .weightSum, voteUnweighted: Bool = false, lambda: Float = 1) {
        self.consensus = consensus; self.divisor = divisor; self.voteUnweighted = voteUnweighted; self.lambda = lambda
    }
    public static let mergekit = TiesOptions()
    public static let paper = TiesOptions(consensus: .sum, divisor: .count, voteUnweighted: true)
    var c: meld_ties_options {
        meld_ties_options(consensus: meld_consensus(rawValue: consensus.rawValue), divisor: meld_divisor(rawValue: divisor.rawValue),
                          vote_unweighted: voteUnweighted ? 1 : 0, lambda: lambda)
    }
}

// MARK: - Views (zero-copy; the CLI streams mmap'ed checkpoints through these)

extension Context {
    public func convert(_ src: TensorView, into dst: MutableTensorView) throws {
        try run(meld_convert(raw, src.c, dst.c))
    }

    public func linear(_ models: [TensorView], weights: [Float], normalize: Bool = true, into out: MutableTensorView) throws {
        let v = models.map(\.c)
        guard weights.count == v.count else { try mismatch() }
        try run(meld_linear(raw, v.count, v, weights, normalize ? 1 : 0, out.c))
    }

    public func taskArithmetic(base: TensorView, _ models: [TensorView], weights: [Float], lambda: Float = 1,
                               normalize: Bool = false, into out: MutableTensorView) throws {
        let v = models.map(\.c)
        guard weights.count == v.count else { try mismatch() }
        try run(meld_task_arithmetic(raw, base.c, v.count, v, weights, lambda, normalize ? 1 : 0, out.c))
    }

    public func ties(base: TensorView, _ models: [TensorView], weights: [Float], densities: [Double],
                     options: TiesOptions = .mergekit, into out: MutableTensorView) throws {
        let v = models.map(\.c)
        guard weights.count == v.count, densities.count == v.count else { try mismatch() }
        var o = options.c
        try run(meld_ties(raw, base.c, v.count, v, weights, densities, &o, out.c))
    }

    public func tiesFused(base: TensorView, _ models: [TensorView], weights: [Float], selections: [Selection],
                          options: TiesOptions = .mergekit, into out: MutableTensorView) throws {
        let v = models.map(\.c)
        guard weights.count == v.count, selections.count == v.count else { try mismatch() }
        var o = options.c
        try run(meld_ties_fused(raw, base.c, v.count, v, weights, selections.map(\.c), &o, out.c))
    }

    public func select(_ v: TensorView, density: Double) throws -> Selection {
        var s = meld_selection()
        try run(meld_magnitude_select(raw, v.c, density, &s))
        return Selection(s)
    }

    public func select(_ v: TensorView, topK k: Int) throws -> Selection {
        var s = meld_selection()
        try run(meld_select_topk(raw, v.c, UInt64(max(k, 0)), &s))
        return Selection(s)
    }

    /// Selections on the task vectors x_k - base, all in one pass.
    public func taskSelect(base: TensorView, _ models: [TensorView], densities: [Double]) throws -> [Selection] {
        let v = models.map(\.c)
        guard densities.count == v.count else { try mismatch() }
        var out = [meld_selection](repeating: meld_selection(), count: v.count)
        try run(meld_task_select(raw, base.c, v.count, v, densities, &out))
        return out.map(Selection.init)
    }

    public func applySelection(_ v: TensorView, _ s: Selection, into out: MutableTensorView) throws {
        var c = s.c
        try run(meld_apply_selection(raw, v.c, &c, out.c))
    }

    /// The elected sign (+1/-1) per element; `weights` nil votes on the unweighted deltas.
    public func signElect(_ deltas: [TensorView], weights: [Float]?, method: Consensus = .sum) throws -> [Int8] {
        let v = deltas.map(\.c)
        let n = v.first?.numel ?? 0
        if let w = weights, w.count != v.count { try mismatch() }
        return try [Int8](unsafeUninitializedCapacity: n) { buf, count in
            try run(meld_sign_elect(raw, v.count, v, weights, meld_consensus(rawValue: method.rawValue), buf.baseAddress, n))
            count = n
        }
    }

    public func disjointMerge(base: TensorView?, _ deltas: [TensorView], weights: [Float], sign: [Int8],
                              voteUnweighted: Bool = false, divisor: Divisor = .weightSum, lambda: Float = 1,
                              into out: MutableTensorView) throws {
        let v = deltas.map(\.c)
        guard weights.count == v.count, sign.count == out.count else { try mismatch() }
        let b = base?.c ?? meld_view(data: nil, numel: 0, dtype: MELD_F32)
        try run(meld_disjoint_merge(raw, b, v.count, v, weights, sign, voteUnweighted ? 1 : 0,
                                    meld_divisor(rawValue: divisor.rawValue), lambda, out.c))
    }
}

func mismatch() throws -> Never { throw MeldError(status: MeldError.sizeMismatch, message: "argument arrays differ in length") }

// MARK: - Arrays (convenience over Swift buffers of Float, Float16 or BFloat16)

extension Context {
    public func convert<T: MeldScalar, U: MeldScalar>(_ x: [T], to: U.Type = U.self) throws -> [U] {
        try withView(x) { v in try makeOutput(x.count) { try run(meld_convert(raw, v, $0)) } }
    }

    public func linear<T: MeldScalar, U: MeldScalar>(_ models: [[T]], weights: [Float], normalize: Bool = true, as: U.Type = U.self) throws -> [U] {
        guard weights.count == models.count else { try mismatch() }
        return try withViews(models) { v in
            try makeOutput(v.first.map { Int($0.numel) } ?? 0) { try run(meld_linear(raw, v.count, v, weights, normalize ? 1 : 0, $0)) }
        }
    }

    public func taskArithmetic<T: MeldScalar, U: MeldScalar>(base: [T], _ models: [[T]], weights: [Float], lambda: Float = 1,
                                                             normalize: Bool = false, as: U.Type = U.self) throws -> [U] {
        guard weights.count == models.count else { try mismatch() }
        return try withView(base) { b in try withViews(models) { v in
            try makeOutput(base.count) { try run(meld_task_arithmetic(raw, b, v.count, v, weights, lambda, normalize ? 1 : 0, $0)) }
        } }
    }

    public func ties<T: MeldScalar, U: MeldScalar>(base: [T], _ models: [[T]], weights: [Float], densities: [Double],
                                                   options: TiesOptions = .mergekit, as: U.Type = U.self) throws -> [U] {
        guard weights.count == models.count, densities.count == models.count else { try mismatch() }
        var o = options.c
        return try withView(base) { b in try withViews(models) { v in
            try makeOutput(base.count) { try run(meld_ties(raw, b, v.count, v, weights, densities, &o, $0)) }
        } }
    }

    public func select<T: MeldScalar>(_ x: [T], density: Double) throws -> Selection {
        try x.withUnsafeBufferPointer { try select(TensorView($0), density: density) }
    }

    public func select<T: MeldScalar>(_ x: [T], topK k: Int) throws -> Selection {
        try x.withUnsafeBufferPointer { try select(TensorView($0), topK: k) }
    }

    public func taskSelect<T: MeldScalar>(base: [T], _ models: [[T]], densities: [Double]) throws -> [Selection] {
        guard densities.count == models.count else { try mismatch() }
        return try withView(base) { b in try withViews(models) { v in
            var out = [meld_selection](repeating: meld_selection(), count: v.count)
            try run(meld_task_select(raw, b, v.count, v, densities, &out))
            return out.map(Selection.init)
        } }
    }

    public func applySelection<T: MeldScalar>(_ x: [T], _ s: Selection) throws -> [T] {
        var c = s.c
        return try withView(x) { v in try makeOutput(x.count) { try run(meld_apply_selection(raw, v, &c, $0)) } }
    }

    public func signElect<T: MeldScalar>(_ deltas: [[T]], weights: [Float]?, method: Consensus = .sum) throws -> [Int8] {
        try withViews(deltas) { v in
            try signElect(v.map { TensorView(data: $0.data, count: Int($0.numel), dtype: T.dtype) }, weights: weights, method: method)
        }
    }

    public func disjointMerge<T: MeldScalar, U: MeldScalar>(base: [T]?, _ deltas: [[T]], weights: [Float], sign: [Int8],
                                                            voteUnweighted: Bool = false, divisor: Divisor = .weightSum,
                                                            lambda: Float = 1, as: U.Type = U.self) throws -> [U] {
        guard weights.count == deltas.count else { try mismatch() }
        let n = sign.count
        let body = { (b: meld_view) throws -> [U] in
            try withViews(deltas) { v in
                try makeOutput(n) { try self.run(meld_disjoint_merge(self.raw, b, v.count, v, weights, sign, voteUnweighted ? 1 : 0,
                                                                     meld_divisor(rawValue: divisor.rawValue), lambda, $0)) }
            }
        }
        if let base { return try withView(base, body) }
        return try body(meld_view(data: nil, numel: 0, dtype: MELD_F32))
    }
}
