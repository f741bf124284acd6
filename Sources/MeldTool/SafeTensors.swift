import Foundation
import Meld
#if canImport(Glibc)
import Glibc
#endif

/// Linux sync_file_range(2); Glibc's module map hides it (it needs _GNU_SOURCE).
@_silgen_name("sync_file_range")
func meld_sync_file_range(_ fd: Int32, _ offset: Int64, _ nbytes: Int64, _ flags: UInt32) -> Int32
/// Linux fallocate(2) (hidden the same way); unlike posix_fallocate it never falls back to
/// writing zeros.
@_silgen_name("fallocate")
func meld_fallocate(_ fd: Int32, _ mode: Int32, _ offset: Int64, _ len: Int64) -> Int32

/// safetensors element types. Meld merges the float ones; the rest are named in errors.
public enum STDType: String, CaseIterable, Sendable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, U16, U32, U64, F8_E4M3, F8_E5M2
    public var size: Int {
        switch self {
        case .F64, .I64, .U64: 8
        case .F32, .I32, .U32: 4
        case .F16, .BF16, .I16, .U16: 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2: 1
        }
    }
    public var meld: DType? {
        switch self { case .F32: .f32; case .F16: .f16; case .BF16: .bf16; default: nil }
    }
    public init(_ d: DType) { self = d == .f32 ? .F32 : d == .f16 ? .F16 : .BF16 }
}

public struct TensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: STDType
    public var shape: [Int]
    public var begin: Int   // byte offsets within the data section
    public var end: Int
    public var count: Int { shape.reduce(1, *) }
}

/// A read-only safetensors file over mmap, with a fully validated header: well-formed JSON,
/// known dtypes, offsets in bounds and not overlapping, byte counts matching dtype and shape.
public final class SafeTensorsFile {
    public let path: String
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    let base: UnsafeMutableRawPointer?
    let dataStart: Int

    static let maxHeader = 100 << 20

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ToolError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ToolError("cannot stat \(path)") }
        let size = Int(st.st_size)
        guard size >= 8 else { throw ToolError("\(path): truncated safetensors file (\(size) bytes, no header)") }
        // Mapped at a 2 MiB-aligned address with MADV_HUGEPAGE: page-cache folios of 2 MiB are then
        // mapped whole (MADV_POPULATE_READ of 600 MB: 0.5 ms against 3.5 ms with 4 KiB entries), and
        // pages read in on a fault come in as such folios.
        let align = 2 << 20
        var r: UnsafeMutableRawPointer? = mmap(nil, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if r == MAP_FAILED { r = nil }
        guard let reservation = r else { throw ToolError("cannot map \(path): \(String(cString: strerror(errno)))") }
        let at = UnsafeMutableRawPointer(bitPattern: (Int(bitPattern: reservation) + align - 1) & ~(align - 1))!
        guard mmap(at, size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) != MAP_FAILED else {
            munmap(reservation, size + align)
            throw ToolError("cannot map \(path): \(String(cString: strerror(errno)))")
        }
        _ = madvise(at, size, 14 /* MADV_HUGEPAGE; only advice */)
        let map = at
        do {
            let n = map.loadUnaligned(as: UInt64.self).littleEndian
            guard n <= UInt64(Self.maxHeader), Int(n) <= size - 8 else {
                throw ToolError("\(path): header length \(n) exceeds the file (\(size) bytes): truncated or not a safetensors file")
            }
            (tensors, metadata) = try Self.parseHeader(UnsafeRawBufferPointer(start: map + 8, count: Int(n)), dataSize: size - 8 - Int(n), path: path)
            dataStart = 8 + Int(n)
        } catch {
            munmap(reservation, size + align)
            throw error
        }
        base = map
        (self.reservation, reserved) = (reservation, size + align)
    }

    /// the whole reserved range, the file's mapping included
    let reservation: UnsafeMutableRawPointer
    let reserved: Int

    deinit { munmap(reservation, reserved) }

    static func parseHeader(_ header: UnsafeRawBufferPointer, dataSize: Int, path: String) throws -> ([String: TensorInfo], [String: String]) {
        let root: JSON
        do { root = try JSON.parse(header) } catch { throw ToolError("\(path): header is not valid JSON: \(error)") }
        guard let members = root.members else { throw ToolError("\(path): header is not a JSON object") }
        var out: [String: TensorInfo] = [:], meta: [String: String] = [:]
        out.reserveCapacity(members.count)
        for m in members {
            let (name, value) = (m.key, m.value)
            if name == "__metadata__" {
                guard let m = value.members else { throw ToolError("\(path): __metadata__ is not an object") }
                for e in m {
                    guard let s = e.value.string else { throw ToolError("\(path): __metadata__.\(e.key) is not a string") }
                    meta[e.key] = s
                }
                continue
            }
            guard value.members != nil else { throw ToolError("\(path): tensor \(name): entry is not an object") }
            guard out[name] == nil else { throw ToolError("\(path): tensor \(name) appears twice in the header") }
            guard let ds = value["dtype"]?.string, let dt = STDType(rawValue: ds) else {
                throw ToolError("\(path): tensor \(name): unknown dtype \(value["dtype"].map { $0.serialized() } ?? "none")")
            }
            guard let dims = value["shape"]?.elements, dims.count <= 16 else { throw ToolError("\(path): tensor \(name): shape is not a list of at most 16 integers") }
            var shape: [Int] = []
            var count = 1
            for s in dims {
                guard let v = s.int, v >= 0 else { throw ToolError("\(path): tensor \(name): shape entry \(s.serialized()) is not a non-negative integer") }
                shape.append(v)
                let (c, o) = count.multipliedReportingOverflow(by: v)
                guard !o, c <= Int(Int32.max) * 64 else { throw ToolError("\(path): tensor \(name): shape \(shape) is too large") }
                count = c
            }
            guard let offs = value["data_offsets"]?.elements, offs.count == 2, let b = offs[0].int, let en = offs[1].int else {
                throw ToolError("\(path): tensor \(name): data_offsets is not a pair of integers")
            }
            guard b >= 0, b <= en, en <= dataSize else {
                throw ToolError("\(path): tensor \(name): data_offsets [\(b), \(en)] out of bounds (data section is \(dataSize) bytes; truncated file?)")
            }
            guard en - b == count * dt.size else {
                throw ToolError("\(path): tensor \(name): \(en - b) bytes, but \(dt.rawValue) \(shape) needs \(count * dt.size)")
            }
            out[name] = TensorInfo(name: name, dtype: dt, shape: shape, begin: b, end: en)
        }
        let sorted = out.values.filter { $0.end > $0.begin }.sorted { $0.begin < $1.begin }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.begin < a.end {
            throw ToolError("\(path): tensors \(a.name) and \(b.name) overlap")
        }
        return (out, meta)
    }

    /// A zero-copy view of a float tensor.
    public func view(_ name: String) throws -> TensorView {
        guard let t = tensors[name] else { throw ToolError("\(path): no tensor \(name)") }
        guard let d = t.dtype.meld else { throw ToolError("\(path): tensor \(name) has dtype \(t.dtype.rawValue); meld merges F32, F16 and BF16 only") }
        return TensorView(data: UnsafeRawPointer(base! + dataStart + t.begin), count: t.count, dtype: d)
    }

    /// The tensor's mapped bytes, from the page that holds its first byte.
    public func pages(_ name: String) -> UnsafeMutableRawBufferPointer? {
        guard let t = tensors[name], let base, t.end > t.begin else { return nil }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let a = (dataStart + t.begin) / page * page, b = dataStart + t.end
        return UnsafeMutableRawBufferPointer(start: base + a, count: b - a)
    }

    /// Drops the tensors' pages from this process (they stay in the page cache), in one call per
    /// run of adjacent tensors: each call costs a TLB shootdown on every core running the process.
    public func release(_ names: [String]) {
        guard let base else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let ranges = names.compactMap { tensors[$0] }.filter { $0.end > $0.begin }
            .map { ((dataStart + $0.begin) / page * page, dataStart + $0.end) }.sorted { $0.0 < $1.0 }
        var i = 0
        while i < ranges.count {
            var (a, b) = ranges[i]
            i += 1
            while i < ranges.count && ranges[i].0 <= (b + page - 1) / page * page { b = max(b, ranges[i].1); i += 1 }
            madvise(base + a, b - a, MADV_DONTNEED)
        }
    }
}

/// Maps pages of a file mapping in one call (MADV_POPULATE_READ, Linux 5.14+; a no-op where
/// unsupported): far cheaper than a page fault per 4 KiB (or per 64 KiB, faulting around) inside
/// the kernels.
func populate(_ p: UnsafeMutableRawBufferPointer) { _ = madvise(p.baseAddress, p.count, 22 /* MADV_POPULATE_READ */) }

/// Maps the pages of `ranges` in pieces of up to 8 MiB on the context's threads. Page-cache
/// folios smaller than 2 MiB (what a file read from its start holds first) are mapped 4 KiB at a
/// time: ~17 ms for one 131 MB input tensor here, on the calling thread while the other waited.
func populate(_ ranges: [UnsafeMutableRawBufferPointer], on ctx: Context) {
    let piece = 8 << 20
    let pieces = ranges.flatMap { r in stride(from: 0, to: r.count, by: piece).map { UnsafeMutableRawBufferPointer(rebasing: r[$0 ..< min($0 + piece, r.count)]) } }
    if pieces.count <= 1 { pieces.forEach(populate) } else { ctx.parallelFor(pieces.count) { populate(pieces[$0]) } }
}

/// Pages one large tensor's mmap'ed inputs out as the kernels stream over them
/// (Context.setWindow): what a pass reports read is dropped from this process, a window (or the
/// pass's end) at a time, so the inputs mapped at a time stay near a window or two, whatever the
/// tensor's size. Pages come back by faults, also for a later pass over a dropped range: this
/// kernel maps a whole large folio of the page cache a fault, which beat mapping each window ahead
/// with MADV_POPULATE_READ, a walk page by page (545M-parameter set, best of 4: TIES 0.86 -> 0.53 s,
/// Model Stock 0.71 -> 0.56 s). Only for file-backed views: dropping anonymous memory (a
/// converted copy) would zero it.
final class InputPager {
    private(set) var views: [(base: UnsafeRawPointer, elementSize: Int)]
    let count: Int, window: Int
    let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
    /// elements before this are dropped (in the current pass)
    var droppedTo = 0

    init(files: [TensorView], window: Int) {
        views = files.compactMap { v in v.data.map { ($0, v.dtype.size) } }
        count = files.first?.count ?? 0
        self.window = window
    }

    /// Pages `v` too (a scratch copy of an input, with the inputs' element count).
    func add(_ v: TensorView) {
        if let p = v.data, v.count == count { views.append((p, v.dtype.size)) }
    }

    /// The kernels' reports of passes over the whole tensor come to `done` through the context.
    func attach(_ ctx: Context) { ctx.setWindow(elements: window) { [unowned self] in self.done($0, $1) } }

    /// A pass has read elements [first, first + n): drop what it has read once that is a window
    /// or the pass has ended (an madvise per report, such as per output chunk, cost more).
    func done(_ first: Int, _ n: Int) {
        let end = first + n
        if first < droppedTo { droppedTo = first }   // a new pass
        guard end >= count || end - droppedTo >= window else { return }
        for (p, es) in views {   // the pages wholly inside the range
            let x = (UInt(bitPattern: p + droppedTo * es) + page - 1) / page * page, y = UInt(bitPattern: p + end * es) / page * page
            if y > x { _ = madvise(UnsafeMutableRawPointer(bitPattern: x), Int(y - x), MADV_DONTNEED) }
        }
        droppedTo = end >= count ? 0 : end
    }
}

/// Scratch data in a file in `directory` (the output's temporary folder), unlinked at once:
/// written with pwrite, then mapped shared and read-only, so pages dropped with MADV_DONTNEED
/// go back to the page cache, which writes them out and frees them under pressure (anonymous
/// memory would stay resident). Written through a mapping, every page faulted in zero-filled
/// first: a third of the time of a paged task arithmetic merge went to that and its locks.
final class ScratchFile {
    let fd: Int32, directory: String
    private(set) var base: UnsafeRawPointer?
    private var mappedBytes = 0
    init(directory: String) throws {
        var template = Array((directory + "/.meld-scratch-XXXXXX").utf8CString)
        fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw ToolError("cannot create a scratch file in \(directory): \(String(cString: strerror(errno)))") }
        _ = template.withUnsafeBufferPointer { unlink($0.baseAddress!) }
        self.directory = directory
    }
    func write(_ src: UnsafeRawPointer, bytes: Int, at offset: Int) throws {
        if let e = pwriteAll(fd, src, bytes, at: offset, startWriteback: false) {
            throw ToolError("cannot write scratch data in \(directory) (the rounded inputs of a paged tensor): \(e)")
        }
    }
    /// The first `bytes` written, mapped read-only.
    func map(bytes: Int) throws -> UnsafeRawPointer {
        guard let p = mmap(nil, max(bytes, 1), PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw ToolError("cannot map \(bytes) bytes of scratch in \(directory): \(String(cString: strerror(errno)))")
        }
        (base, mappedBytes) = (UnsafeRawPointer(p), max(bytes, 1))
        return UnsafeRawPointer(p)
    }
    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), mappedBytes) }
        Glibc.close(fd)
    }
}

/// A small file written whole (config.json, an index), or an error that names it.
func writeFile(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw ToolError("cannot create \(path): \(String(cString: strerror(errno)))") }
    defer { Glibc.close(fd) }
    let bytes = Array(text.utf8)
    if let e = bytes.withUnsafeBytes({ $0.isEmpty ? nil : pwriteAll(fd, $0.baseAddress!, $0.count, at: 0, startWriteback: false) }) {
        throw ToolError("cannot write \(path): \(e)")
    }
}

/// pwrite of all `count` bytes at `offset` (short writes retried). With `startWriteback`, the
/// range's writeback starts at once (non-blocking), so that a later fsync finds little left;
/// without it the page cache flushes on its own, as after mergekit. nil, or why it failed.
func pwriteAll(_ fd: Int32, _ src: UnsafeRawPointer, _ count: Int, at offset: Int, startWriteback: Bool) -> String? {
    var done = 0
    while done < count {
        let w = pwrite(fd, src + done, count - done, off_t(offset + done))
        guard w > 0 else { return String(cString: strerror(errno)) }
        done += w
    }
    if startWriteback { _ = meld_sync_file_range(fd, Int64(offset), Int64(count), 2 /* SYNC_FILE_RANGE_WRITE */) }
    return nil
}

/// The output ring: anonymous memory, 2 MiB-aligned and in 2 MiB pages where the kernel has them
/// (MADV_HUGEPAGE), its size a multiple of the block, so that a piece (which never crosses a
/// block boundary) is contiguous in it. A reservation that would run past the ring's end is filled
/// in a bounce buffer and copied into the ring's end and start on commit, once a lap. Measured
/// here, 20 MiB: a ring mapped twice over a memfd (contiguous across the end, no bounce) took
/// 18-20 ms to fault in and 4-5 ms to unmap, 4 KiB shmem pages each; this one 1 ms and 0.1 ms.
final class OutputRing {
    let size: Int
    let base: UnsafeMutableRawPointer
    let mapping: UnsafeMutableRawPointer, mapped: Int
    /// where a reservation across the ring's end is filled (allocated on first use)
    private(set) var bounce: UnsafeMutableRawPointer?
    let bounceBytes: Int
    init(size: Int, block: Int, maxReservation: Int) throws {
        precondition(size % block == 0 && maxReservation <= size, "ring of \(size) bytes")
        (self.size, bounceBytes, mapped) = (size, maxReservation, size + block)
        guard let r = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), r != MAP_FAILED else {
            throw ToolError("cannot allocate \(size) bytes for the output ring buffer: \(String(cString: strerror(errno)))")
        }
        mapping = r
        base = UnsafeMutableRawPointer(bitPattern: (Int(bitPattern: r) + block - 1) / block * block)!
        _ = madvise(base, size, 14 /* MADV_HUGEPAGE; only advice */)
    }
    /// Where `bytes` bytes placed at ring offset `at` are filled: the ring itself, or the bounce
    /// buffer when they would cross its end (then `place(from: bounce, ...)` on commit).
    func slot(at: Int, bytes: Int) -> UnsafeMutableRawPointer {
        let p = at % size
        if p + bytes <= size { return base + p }
        if bounce == nil { bounce = UnsafeMutableRawPointer.allocate(byteCount: bounceBytes, alignment: 64) }
        return bounce!
    }
    /// Copies `bytes` bytes into the ring at offset `at`, across its end if need be.
    func place(from src: UnsafeRawPointer, at: Int, bytes: Int) {
        let p = at % size, head = min(bytes, size - p)
        memcpy(base + p, src, head)
        if bytes > head { memcpy(base, src + head, bytes - head) }
    }
    deinit {
        munmap(mapping, mapped)
        bounce?.deallocate()
    }
}

/// How a ShardedWriter's published pieces reach the file, beside the caller that fills the ring:
/// - `thread`: a thread of the writer's own writes them.
/// - `side`: whoever calls `sideWork()`, a piece a call: the kernels' threads between tiles
///   (Context.setSideWork). The page-cache copy then shares the cores with the kernels instead of
///   taking one from them mid-pass: with 2 cores, the writer thread often took the core of a
///   thread holding tiles while the other thread waited at the end of the pass.
/// - `inline`: the caller, as soon as they are published.
/// In the first two, a caller that must wait for room writes pieces itself meanwhile.
public enum WriteMode: String, Sendable { case thread, side, inline }

/// Sends ring bytes to a file with pwrite, one piece (up to the next 2 MiB block boundary) at a
/// time, as `mode` says. State guarded by `cond`.
final class RingFlusher: @unchecked Sendable {
    let cond = NSCondition()
    let ring: OutputRing
    let mode: WriteMode
    var fd: Int32 = -1, path = "", syncRanges = false
    /// file offsets: handed to a writer up to `claimed`, allowed out up to `target`; the starts of
    /// the pieces being written (at most one by the thread and one by the caller)
    var claimed = 0, target = 0
    var inFlight: [Int] = []
    var failure: String?
    var stop = false, running = false
    var seconds = 0.0
    let exited = DispatchSemaphore(value: 0)

    init(ring: OutputRing, mode: WriteMode) {
        self.ring = ring
        self.mode = mode
        if mode == .thread {
            running = true
            Thread { self.loop() }.start()
        }
    }

    /// everything before this is written out
    var flushed: Int { inFlight.min() ?? claimed }

    /// pwrite of ring bytes [a, b) of the current file; an error message or nil
    func write(_ a: Int, _ b: Int) -> String? {
        pwriteAll(fd, ring.base + a % ring.size, b - a, at: a, startWriteback: syncRanges).map { "cannot write \(path): \($0)" }
    }

    /// With the lock held: writes the next published piece, if there is one (unlocking around the
    /// pwrite), and says whether it did.
    func writeNextPiece() -> Bool {
        guard claimed < target, failure == nil else { return false }
        let a = claimed, b = min(target, (a / ShardedWriter.block + 1) * ShardedWriter.block)
        claimed = b
        inFlight.append(a)
        cond.unlock()
        let t0 = Date()
        let err = write(a, b)
        let dt = Date().timeIntervalSince(t0)
        cond.lock()
        inFlight.remove(at: inFlight.firstIndex(of: a)!)
        seconds += dt
        if let err, failure == nil { failure = err }
        cond.broadcast()
        return true
    }

    func loop() {
        cond.lock()
        while !stop {
            if !writeNextPiece() { cond.wait() }
        }
        cond.unlock()
        exited.signal()
    }

    /// Bytes up to `end` may go out: soon in the background, or now.
    func publish(_ end: Int) throws {
        cond.lock()
        if end > target { target = end; cond.broadcast() }
        if mode == .inline { while writeNextPiece() {} }
        let f = failure
        cond.unlock()
        if let f { throw ToolError(f) }
    }

    /// Returns once the bytes up to `end` (published) are written out, writing pieces meanwhile.
    func wait(until end: Int) throws {
        cond.lock()
        while flushed < end && failure == nil {
            if !writeNextPiece() { cond.wait() }
        }
        let f = failure
        cond.unlock()
        if let f { throw ToolError(f) }
    }

    func finish(_ end: Int) throws { try publish(end); try wait(until: end) }

    /// One published piece written, unless there is none or one is being written; whether it
    /// wrote. A failure is kept for the caller's next publish or wait.
    func sideWork() -> Bool {
        cond.lock()
        defer { cond.unlock() }
        return inFlight.isEmpty && writeNextPiece()
    }

    /// Another file, or bytes written past the ring: only when everything published is out.
    func restart(fd: Int32, path: String, syncRanges: Bool, at offset: Int) {
        cond.lock()
        precondition(inFlight.isEmpty && claimed == target, "ring writer restarted while writing")
        (self.fd, self.path, self.syncRanges, claimed, target) = (fd, path, syncRanges, offset, offset)
        cond.unlock()
    }

    func shutdown() {
        cond.lock()
        let wasRunning = running
        (stop, running) = (true, false)
        cond.broadcast()
        cond.unlock()
        if wasRunning { exited.wait() }
    }
}

/// Writes safetensors shards: the plan (names, dtypes, shapes) is known up front, so each shard's
/// header and size are fixed before any data arrives. Files are created inside a temporary folder
/// that the caller renames when everything succeeded.
///
/// Data arrives in file order (tensors in plan order, each from its first byte) and leaves in
/// pwrites of whole 2 MiB-aligned blocks through a ring (OutputRing): kernels write chunks straight
/// into it (`reserve`/`commit`); `write` copies only the unaligned head and tail of a large
/// buffer. Aligned block writes let the page cache keep the file in 2 MiB folios. Measured on
/// 600 MB here: unaligned 4 MiB pwrites left it in small folios, and mapping it later (as the
/// next merge's input) took 16 ms against 0.5 ms; the writes themselves were often 2x slower.
/// A shared mapping of the output instead (each chunk populated with MADV_POPULATE_WRITE, the
/// kernels storing into the page cache) was no faster: 600 MB in 0.16 s against pwrite's 0.14 s
/// (the kernel zeroes each page it maps), and a store to it can raise SIGBUS.
public final class ShardedWriter {
    public struct Planned { public var name: String; public var dtype: STDType; public var shape: [Int] }
    struct Shard { var file: String; var names: [String]; var fd: Int32; var size: Int; var dataStart: Int; var header: Data }
    var shards: [Shard] = []
    var location: [String: (shard: Int, begin: Int, bytes: Int)] = [:]
    public let directory: String
    public let totalBytes: Int
    /// Flush every shard to the disk before close() returns (survives a power loss).
    let sync: Bool
    static let block = 2 << 20
    /// holds a partial block and one reservation
    public static let maxReservation = 8 << 20
    let ring: OutputRing
    let flusher: RingFlusher
    /// a reservation being filled in the ring's bounce buffer (it crosses the ring's end)
    var bounced = false
    /// the shard being written (-1 before the first), and the end of the bytes placed in the ring
    var current = -1, filled = 0
    /// time spent in pwrite (for MELD_TIMING); beside the kernels unless inline
    public var writeSeconds: Double { flusher.cond.lock(); defer { flusher.cond.unlock() }; return flusher.seconds }
    public var writeMode: WriteMode { flusher.mode }

    /// One piece of the output written, if one is waiting (for `.side`); whether it wrote.
    public func sideWork() -> Bool { flusher.sideWork() }

    /// `writes`: see WriteMode; MELD_WRITER=thread|side|inline overrides it (for timing).
    public init(directory: String, plan: [Planned], shardSize: Int, sync: Bool = false, writes: WriteMode = .thread) throws {
        self.directory = directory
        self.sync = sync
        // a partial block and one reservation, twice over: the kernels fill one chunk while the
        // previous one is written out
        ring = try OutputRing(size: 2 * (Self.maxReservation + Self.block), block: Self.block, maxReservation: Self.maxReservation)
        flusher = RingFlusher(ring: ring, mode: ProcessInfo.processInfo.environment["MELD_WRITER"].flatMap(WriteMode.init) ?? writes)
        var groups: [[Planned]] = [[]]
        var acc = 0
        for p in plan {
            let bytes = p.shape.reduce(1, *) * p.dtype.size
            if acc > 0 && acc + bytes > shardSize { groups.append([]); acc = 0 }
            groups[groups.count - 1].append(p)
            acc += bytes
        }
        totalBytes = plan.reduce(0) { $0 + $1.shape.reduce(1, *) * $1.dtype.size }
        let n = groups.count
        for (i, g) in groups.enumerated() {
            let file = n == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", i + 1, n)
            var header: [JSON.Member] = [.init("__metadata__", .object([.init("format", .string("pt"))]))]
            var off = 0
            for p in g {
                let bytes = p.shape.reduce(1, *) * p.dtype.size
                header.append(.init(p.name, .object([.init("dtype", .string(p.dtype.rawValue)), .init("shape", .array(p.shape.map(JSON.int))),
                                                     .init("data_offsets", .array([.int(off), .int(off + bytes)]))])))
                location[p.name] = (i, off, bytes)
                off += bytes
            }
            var json = Array(JSON.object(header).serialized(sortKeys: true).utf8)
            while (8 + json.count) % 8 != 0 { json.append(0x20) }
            let path = directory + "/" + file
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { throw ToolError("cannot create \(path): \(String(cString: strerror(errno)))") }
            let size = 8 + json.count + off
            guard ftruncate(fd, off_t(size)) == 0 else { Glibc.close(fd); throw ToolError("cannot size \(path) to \(size) bytes (disk full?)") }
            // Allocate the blocks up front: one extent, and a full disk fails here rather than
            // midway; writes then skip per-block allocation (pwrite ran ~1.6x faster on ext4).
            // Filesystems without fallocate (EOPNOTSUPP) allocate as the data arrives.
            if meld_fallocate(fd, 0, 0, Int64(size)) != 0 && errno == ENOSPC {
                Glibc.close(fd)
                throw ToolError("cannot allocate \(size) bytes for \(path): no space left on the device")
            }
            var len = UInt64(json.count).littleEndian
            var head = Data(bytes: &len, count: 8)
            head.append(contentsOf: json)
            shards.append(Shard(file: file, names: g.map(\.name), fd: fd, size: size, dataStart: 8 + json.count, header: head))
        }
    }

    /// A buffer of at least `bytes` for a whole tensor that `write` then sends to its shard,
    /// reused for every tensor (its pages fault in once).
    public func staging(bytes: Int) -> UnsafeMutableRawPointer {
        if bytes > stagingBytes || staging == nil {
            staging?.deallocate()
            stagingBytes = max(bytes, 4096)
            staging = UnsafeMutableRawPointer.allocate(byteCount: stagingBytes, alignment: 4096)
        }
        return staging!
    }
    var staging: UnsafeMutableRawPointer?
    var stagingBytes = 0

    /// Makes `shard` current: the shards before it are written out in full, headers included.
    func enter(_ shard: Int) throws {
        while current < shard {
            if current >= 0 { try flusher.finish(filled) }
            current += 1
            let s = shards[current], h = s.header, path = directory + "/" + s.file
            if h.count <= Self.maxReservation {
                h.withUnsafeBytes { _ = memcpy(ring.base, $0.baseAddress!, h.count) }
                flusher.restart(fd: s.fd, path: path, syncRanges: sync, at: 0)
            } else {   // a header of more than 8 MiB (a plan of very many tensors) goes out on its own
                if let e = h.withUnsafeBytes({ pwriteAll(s.fd, $0.baseAddress!, h.count, at: 0, startWriteback: sync) }) {
                    throw ToolError("cannot write \(path): \(e)")
                }
                flusher.restart(fd: s.fd, path: path, syncRanges: sync, at: h.count)
            }
            filled = h.count
        }
    }

    /// Checks that bytes [offset, offset + bytes) of a planned tensor are the next bytes of its
    /// file, entering its shard.
    func advance(_ name: String, offset: Int, bytes: Int) throws {
        guard let l = location[name] else { throw ToolError("internal: no planned tensor \(name)") }
        precondition(offset >= 0 && bytes >= 0 && offset + bytes <= l.bytes, "write outside tensor \(name)")
        if l.shard != current { try enter(l.shard) }
        let at = shards[l.shard].dataStart + l.begin + offset
        guard at == filled else { throw ToolError("internal: \(name) written out of order (byte \(at), expected \(filled))") }
    }

    /// Room in the ring for `bytes` (at most maxReservation) more: whole blocks go out first, and
    /// the partial one too when that is not enough.
    func room(_ bytes: Int) throws -> UnsafeMutableRawPointer {
        let blocks = filled / Self.block * Self.block, need = filled + bytes - ring.size
        try flusher.publish(blocks)
        if need > blocks { try flusher.finish(filled) } else { try flusher.wait(until: need) }
        let p = ring.slot(at: filled, bytes: bytes)
        bounced = p == ring.bounce
        return p
    }

    /// Bytes from where the next bytes go in the ring to its end: a reservation of more is filled
    /// in a bounce buffer and copied on commit. (A tensor that starts a new shard starts at the
    /// ring's start instead.)
    public var bytesToRingEnd: Int { ring.size - filled % ring.size }

    /// Where bytes [offset, offset + bytes) of a planned tensor go, in the ring: at most
    /// `maxReservation`, and the next bytes of the file. Fill them, then `commit`.
    public func reserve(_ name: String, offset: Int, bytes: Int) throws -> UnsafeMutableRawPointer {
        precondition(bytes <= Self.maxReservation, "reservation of \(bytes) bytes")
        try advance(name, offset: offset, bytes: bytes)
        return try room(bytes)
    }

    /// The reserved bytes are filled: whole blocks go out.
    public func commit(_ bytes: Int) throws {
        if bounced { ring.place(from: ring.bounce!, at: filled, bytes: bytes); bounced = false }
        filled += bytes
        try flusher.publish(filled / Self.block * Self.block)
    }

    /// Writes `bytes` bytes of a planned tensor, starting `offset` bytes into it (the next bytes of
    /// its file). Whole blocks go out from `src` itself, before this returns; the unaligned head
    /// and tail through the ring.
    public func write(_ name: String, offset: Int, from src: UnsafeRawPointer, bytes: Int) throws {
        try advance(name, offset: offset, bytes: bytes)
        let s = shards[current], path = directory + "/" + s.file
        var done = 0
        while done < bytes {
            let toBlock = (Self.block - filled % Self.block) % Self.block
            let whole = (bytes - done) / Self.block * Self.block
            if toBlock == 0 && whole > 0 {
                try flusher.finish(filled)
                if let e = pwriteAll(s.fd, src + done, whole, at: filled, startWriteback: sync) { throw ToolError("cannot write \(path): \(e)") }
                filled += whole
                flusher.restart(fd: s.fd, path: path, syncRanges: sync, at: filled)
                done += whole
            } else {
                let c = min(bytes - done, toBlock > 0 ? toBlock : Self.block)
                memcpy(try room(c), src + done, c)
                try commit(c)
                done += c
            }
        }
    }

    /// Writes out and closes every shard (syncing it first when asked), and writes the index when
    /// there are several.
    public func close() throws {
        if !shards.isEmpty {
            try enter(shards.count - 1)
            try flusher.finish(filled)
        }
        flusher.shutdown()
        let opened = shards
        shards = []   // closed below, whatever happens (not again in deinit)
        var unsynced: String?
        for s in opened {
            if sync && fsync(s.fd) != 0 && unsynced == nil { unsynced = s.file }
            Glibc.close(s.fd)
        }
        if let f = unsynced { throw ToolError("cannot sync \(directory)/\(f)") }
        if opened.count > 1 {
            let map = opened.flatMap { s in s.names.map { JSON.Member($0, .string(s.file)) } }
            let index = JSON.object([.init("metadata", .object([.init("total_size", .int(totalBytes))])), .init("weight_map", .object(map))])
            try writeFile(directory + "/model.safetensors.index.json", index.serialized(indent: 2, sortKeys: true) + "\n")
        }
    }

    deinit {
        flusher.shutdown()
        for s in shards { Glibc.close(s.fd) }
        staging?.deallocate()
    }
}
