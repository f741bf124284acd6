import CMeld

/// An error from the Meld C library: the status and the context's message, if any.
public struct MeldError: Error, Equatable, CustomStringConvertible {
    public let status: Int32
    public let message: String
    public var description: String { message.isEmpty ? Self.text(status) : "\(Self.text(status)): \(message)" }
    static func text(_ s: Int32) -> String { String(cString: meld_status_string(meld_status(rawValue: UInt32(bitPattern: s)))) }

    public static let nullPointer = Int32(MELD_ERR_NULL_POINTER.rawValue)
    public static let invalidArgument = Int32(MELD_ERR_INVALID_ARGUMENT.rawValue)
    public static let sizeMismatch = Int32(MELD_ERR_SIZE_MISMATCH.rawValue)
    public static let unsupportedDType = Int32(MELD_ERR_UNSUPPORTED_DTYPE.rawValue)
    public static let indexOutOfRange = Int32(MELD_ERR_INDEX_OUT_OF_RANGE.rawValue)
    public static let outOfMemory = Int32(MELD_ERR_OUT_OF_MEMORY.rawValue)
    public static let unsupported = Int32(MELD_ERR_UNSUPPORTED.rawValue)
    public static let noDevice = Int32(MELD_ERR_NO_DEVICE.rawValue)
    public static let buildFailed = Int32(MELD_ERR_BUILD_FAILED.rawValue)
}

@inline(__always)
func check(_ s: meld_status, _ ctx: OpaquePointer? = nil) throws {
    guard s == MELD_OK else {
        let msg = ctx.map { String(cString: meld_context_last_error($0)) } ?? ""
        throw MeldError(status: Int32(bitPattern: s.rawValue), message: msg)
    }
}

/// Element types Meld reads and writes.
public enum DType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, bf16 = 2
    var c: meld_dtype { meld_dtype(rawValue: rawValue) }
    public var size: Int { self == .f32 ? 4 : 2 }
}

/// Instruction-set paths; `.auto` picks the best (or `MELD_ISA` from the environment).
public enum ISA: UInt32, Sendable, CaseIterable {
    case auto = 0, scalar = 1, avx2 = 2, avx512 = 3, avx512bf16 = 4
    public var isSupported: Bool { meld_isa_supported(meld_isa(rawValue: rawValue)) != 0 }
    public var name: String { String(cString: meld_isa_name(meld_isa(rawValue: rawValue))) }
}

/// bfloat16 storage: the upper half of an IEEE f32.
public struct BFloat16: Hashable, Sendable {
    public var bitPattern: UInt16
    public init(bitPattern: UInt16) { self.bitPattern = bitPattern }
    /// Round to nearest even (NaN stays NaN).
    public init(_ f: Float) {
        let b = f.bitPattern
        if b & 0x7fff_ffff > 0x7f80_0000 { bitPattern = UInt16(truncatingIfNeeded: (b >> 16) | 0x40) }
        else { bitPattern = UInt16(truncatingIfNeeded: (b &+ 0x7fff &+ ((b >> 16) & 1)) >> 16) }
    }
    public var floatValue: Float { Float(bitPattern: UInt32(bitPattern) << 16) }
}

/// Scalar types a Swift buffer can hold for Meld.
public protocol MeldScalar { static var dtype: DType { get } }
extension Float: MeldScalar { public static var dtype: DType { .f32 } }
extension BFloat16: MeldScalar { public static var dtype: DType { .bf16 } }
#if !((os(macOS) || targetEnvironment(macCatalyst)) && arch(x86_64))
extension Float16: MeldScalar { public static var dtype: DType { .f16 } }
#endif

/// A read-only view of `count` elements of `dtype` (zero-copy, e.g. over an mmap'ed file).
public struct TensorView {
    public var data: UnsafeRawPointer?
    public var count: Int
    public var dtype: DType
    public init(data: UnsafeRawPointer?, count: Int, dtype: DType) { self.data = data; self.count = count; self.dtype = dtype }
    public init<T: MeldScalar>(_ buffer: UnsafeBufferPointer<T>) {
        self.init(data: UnsafeRawPointer(buffer.baseAddress), count: buffer.count, dtype: T.dtype)
    }
    var c: meld_view { meld_view(data: data, numel: count, dtype: dtype.c) }
}

/// A writable view.
public struct MutableTensorView {
    public var data: UnsafeMutableRawPointer?
    public var count: Int
    public var dtype: DType
    public init(data: UnsafeMutableRawPointer?, count: Int, dtype: DType) { self.data = data; self.count = count; self.dtype = dtype }
    public init<T: MeldScalar>(_ buffer: UnsafeMutableBufferPointer<T>) {
        self.init(data: UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, dtype: T.dtype)
    }
    var c: meld_span { meld_span(data: data, numel: count, dtype: dtype.c) }
}

/// Library version.
public enum Version {
    public static var string: String { String(cString: meld_version_string()) }
    public static var number: Int { Int(meld_version()) }
}

/// Owns threads, the ISA choice and devices. Use one per thread of the caller.
public final class Context {
    let raw: OpaquePointer
    /// - Parameters: threads: 0 = the OpenMP default. isa: `.auto` = best available.
    public init(threads: Int = 0, isa: ISA = .auto) throws {
        var opts = meld_context_options(threads: Int32(threads), isa: meld_isa(rawValue: isa.rawValue))
        var p: OpaquePointer?
        try check(meld_context_create_ex(&opts, &p))
        raw = p!
    }
    deinit { meld_context_destroy(raw) }
    public var threads: Int { var t: Int32 = 0; meld_context_threads(raw, &t); return Int(t) }
    public var isa: ISA { var i = meld_isa(0); meld_context_isa(raw, &i); return ISA(rawValue: i.rawValue) ?? .scalar }

    /// Streaming in windows (meld_context_set_window): every streaming pass over more than
    /// `elements` elements runs window by window in index order, calling `done(first, count)`
    /// after each window and at the end of each pass, on the calling thread, once that pass has
    /// read all it will of elements first ..< first + count of its inputs. For inputs paged in
    /// and out by the caller (mmap'ed checkpoints); results do not change. nil turns it off.
    public func setWindow(elements: Int, done: ((Int, Int) -> Void)?) {
        windowBox = done.map { WindowBox($0) }
        if let w = windowBox {
            meld_context_set_window(raw, elements, { user, first, count in
                Unmanaged<WindowBox>.fromOpaque(user!).takeUnretainedValue().done(first, count)
            }, Unmanaged.passUnretained(w).toOpaque())
        } else {
            meld_context_set_window(raw, 0, nil, nil)
        }
    }
    final class WindowBox { let done: (Int, Int) -> Void; init(_ d: @escaping (Int, Int) -> Void) { done = d } }
    var windowBox: WindowBox?   // kept alive while C holds its pointer

    /// Side work (meld_context_set_side_work): during streaming passes on two or more threads,
    /// `piece()` is called between tiles on any of the context's threads, one call at a time,
    /// while enough tiles remain to keep the others busy. It should do one short piece of work
    /// (well under a millisecond), say whether it did some, and keep its errors for later (it
    /// cannot throw). For work that would otherwise need a thread of its own, such as writing
    /// output; results do not change. nil turns it off.
    public func setSideWork(_ piece: (() -> Bool)?) {
        sideBox = piece.map { SideBox($0) }
        if let b = sideBox {
            meld_context_set_side_work(raw, { user in
                Unmanaged<SideBox>.fromOpaque(user!).takeUnretainedValue().piece() ? 1 : 0
            }, Unmanaged.passUnretained(b).toOpaque())
        } else {
            meld_context_set_side_work(raw, nil, nil)
        }
    }
    final class SideBox { let piece: () -> Bool; init(_ p: @escaping () -> Bool) { piece = p } }
    var sideBox: SideBox?   // kept alive while C holds its pointer

    /// `body(i)` for every i in 0 ..< count, once each, on this context's threads
    /// (meld_context_parallel_for): for work beside the kernels that should share their threads
    /// instead of starting threads of its own. `body` must not call into this context.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        guard count > 0 else { return }
        withoutActuallyEscaping(body) { b in
            let box = ItemBox(b)
            withExtendedLifetime(box) {
                _ = meld_context_parallel_for(raw, count, { user, i in
                    Unmanaged<ItemBox>.fromOpaque(user!).takeUnretainedValue().body(Int(i))
                }, Unmanaged.passUnretained(box).toOpaque())
            }
        }
    }
    final class ItemBox { let body: (Int) -> Void; init(_ b: @escaping (Int) -> Void) { body = b } }

    /// Runs a C call on this context: a failure throws with the message that call left (the
    /// context's message is cleared first, so an earlier failure's does not carry over).
    @inline(__always) func run(_ call: @autoclosure () -> meld_status) throws {
        meld_context_clear_error(raw)
        try check(call(), raw)
    }
}

/// Calls body with C views of every array, keeping them alive for the call.
func withViews<T: MeldScalar, R>(_ arrays: [[T]], _ body: ([meld_view]) throws -> R) rethrows -> R {
    var views: [meld_view] = []
    views.reserveCapacity(arrays.count)
    func go(_ i: Int) throws -> R {
        if i == arrays.count { return try body(views) }
        return try arrays[i].withUnsafeBytes { raw in
            views.append(meld_view(data: raw.baseAddress, numel: arrays[i].count, dtype: T.dtype.c))
            defer { views.removeLast() }
            return try go(i + 1)
        }
    }
    return try go(0)
}

func withView<T: MeldScalar, R>(_ a: [T], _ body: (meld_view) throws -> R) rethrows -> R {
    try a.withUnsafeBytes { try body(meld_view(data: $0.baseAddress, numel: a.count, dtype: T.dtype.c)) }
}

func makeOutput<U: MeldScalar>(_ n: Int, _ body: (meld_span) throws -> Void) rethrows -> [U] {
    try [U](unsafeUninitializedCapacity: n) { buf, count in
        try body(meld_span(data: UnsafeMutableRawPointer(buf.baseAddress), numel: n, dtype: U.dtype.c))
        count = n
    }
}
