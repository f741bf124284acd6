import CMeld

/// OpenCL devices visible through the installed ICDs (a GPU, or PoCL on the CPU).
public enum OpenCL {
    public static var devices: [String] {
        var n = 0
        meld_opencl_device_count(&n)
        return (0..<n).map { i in
            var buf = [CChar](repeating: 0, count: 256)
            meld_opencl_device_name(i, &buf, buf.count)
            return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}

extension Context {
    /// Runs this context's kernels on OpenCL device `index` (-1: MELD_CL_DEVICE, else 0).
    public func useOpenCL(device index: Int = -1) throws { try run(meld_context_use_opencl(raw, Int32(index))) }

    /// "cpu" or the OpenCL device's name.
    public var deviceName: String {
        var kind = meld_device_kind(0)
        var buf = [CChar](repeating: 0, count: 256)
        meld_context_device(raw, &kind, &buf, buf.count)
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Memory on the context's OpenCL device, so that a chain of operations stays there.
public final class DeviceBuffer {
    let raw: OpaquePointer
    let ctx: Context
    public let bytes: Int
    public init(_ ctx: Context, bytes: Int) throws {
        var p: OpaquePointer?
        try ctx.run(meld_buffer_create(ctx.raw, bytes, &p))
        raw = p!
        self.ctx = ctx
        self.bytes = bytes
    }
    public convenience init<T: MeldScalar>(_ ctx: Context, _ values: [T]) throws {
        try self.init(ctx, bytes: values.count * T.dtype.size)
        try upload(values)
    }
    deinit { meld_buffer_destroy(raw) }
    public func upload<T: MeldScalar>(_ values: [T], offset: Int = 0) throws {
        try values.withUnsafeBytes { try ctx.run(meld_buffer_upload(ctx.raw, raw, offset, $0.baseAddress, $0.count)) }
    }
    public func download<T: MeldScalar>(_ count: Int, as: T.Type = T.self) throws -> [T] {
        try [T](unsafeUninitializedCapacity: count) { buf, n in
            try ctx.run(meld_buffer_download(ctx.raw, raw, 0, buf.baseAddress, count * T.dtype.size))
            n = count
        }
    }
    /// A view of the buffer for the TensorView-taking entry points.
    public func view(_ dtype: DType, count: Int) -> TensorView { TensorView(data: UnsafeRawPointer(raw), count: count, dtype: dtype) }
    public func mutableView(_ dtype: DType, count: Int) -> MutableTensorView {
        MutableTensorView(data: UnsafeMutableRawPointer(raw), count: count, dtype: dtype)
    }
}
