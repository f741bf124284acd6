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
    let mapped: Int
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
        var p: UnsafeMutableRawPointer? = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        if p == MAP_FAILED { p = nil }
        guard let map = p else { throw ToolError("cannot map \(path)") }
        do {
            let n = map.loadUnaligned(as: UInt64.self).littleEndian
            guard n <= UInt64(Self.maxHeader), Int(n) <= size - 8 else {
                throw ToolError("\(path): header length \(n) exceeds the file (\(size) bytes): truncated or not a safetensors file")
            }
            let header = Data(bytes: map + 8, count: Int(n))
            (tensors, metadata) = try Self.parseHeader(header, dataSize: size - 8 - Int(n), path: path)
            dataStart = 8 + Int(n)
        } catch {
            munmap(map, size)
            throw error
        }
        base = map
        mapped = size
    }

    deinit { if let base { munmap(base, mapped) } }

    static func parseHeader(_ data: Data, dataSize: Int, path: String) throws -> ([String: TensorInfo], [String: String]) {
        guard let obj = try? JSONSerialization.jsonObject(with: data, options: []), let dict = obj as? [String: Any] else {
            throw ToolError("\(path): header is not a JSON object")
        }
        var out: [String: TensorInfo] = [:], meta: [String: String] = [:]
        for (name, value) in dict {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw ToolError("\(path): __metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw ToolError("\(path): __metadata__.\(k) is not a string") }
                    meta[k] = s
                }
                continue
            }
            guard let e = value as? [String: Any] else { throw ToolError("\(path): tensor \(name): entry is not an object") }
            guard let ds = e["dtype"] as? String, let dt = STDType(rawValue: ds) else {
                throw ToolError("\(path): tensor \(name): unknown dtype \(String(describing: e["dtype"] ?? "none"))")
            }
            guard let shapeAny = e["shape"] as? [Any], shapeAny.count <= 16 else { throw ToolError("\(path): tensor \(name): shape is not a list of at most 16 integers") }
            var shape: [Int] = []
            var count = 1
            for s in shapeAny {
                guard let v = exactInt(s), v >= 0 else { throw ToolError("\(path): tensor \(name): shape entry \(s) is not a non-negative integer") }
                shape.append(v)
                let (c, o) = count.multipliedReportingOverflow(by: v)
                guard !o, c <= Int(Int32.max) * 64 else { throw ToolError("\(path): tensor \(name): shape \(shape) is too large") }
                count = c
            }
            guard let offs = e["data_offsets"] as? [Any], offs.count == 2, let b = exactInt(offs[0]), let en = exactInt(offs[1]) else {
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

    static func exactInt(_ v: Any) -> Int? {
        if let i = v as? Int { return i }
        if let d = v as? Double, d == d.rounded(), abs(d) < 9e15 { return Int(d) }
        if let n = v as? NSNumber { let d = n.doubleValue; if d == d.rounded(), abs(d) < 9e15 { return Int(d) } }
        return nil
    }

    /// A zero-copy view of a float tensor.
    public func view(_ name: String) throws -> TensorView {
        guard let t = tensors[name] else { throw ToolError("\(path): no tensor \(name)") }
        guard let d = t.dtype.meld else { throw ToolError("\(path): tensor \(name) has dtype \(t.dtype.rawValue); meld merges F32, F16 and BF16 only") }
        return TensorView(data: UnsafeRawPointer(base! + dataStart + t.begin), count: t.count, dtype: d)
    }

    /// Maps the tensor's pages in one call (MADV_POPULATE_READ, Linux 5.14+; a no-op where
    /// unsupported): far cheaper than one page fault per 4 KiB inside the kernels.
    public func prefetch(_ name: String) {
        guard let t = tensors[name], let base, t.end > t.begin else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let a = (dataStart + t.begin) / page * page, b = dataStart + t.end
        _ = madvise(base + a, b - a, 22 /* MADV_POPULATE_READ */)
    }

    /// Drops the tensor's pages from this process (they stay in the page cache).
    public func release(_ name: String) {
        guard let t = tensors[name], let base, t.end > t.begin else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let a = (dataStart + t.begin) / page * page, b = dataStart + t.end
        madvise(base + a, b - a, MADV_DONTNEED)
    }
}

/// Writes safetensors shards: the plan (names, dtypes, shapes) is known up front, so headers
/// are written first and each tensor lands at its offset as soon as it is merged. Files are
/// created inside a temporary folder that the caller renames when everything succeeded.
public final class ShardedWriter {
    public struct Planned { public var name: String; public var dtype: STDType; public var shape: [Int] }
    struct Shard { var file: String; var names: [String]; var fd: Int32; var size: Int; var dataStart: Int }
    var shards: [Shard] = []
    var location: [String: (shard: Int, begin: Int, bytes: Int)] = [:]
    public let directory: String
    public let totalBytes: Int
    /// Flush every shard to the disk before close() returns (survives a power loss).
    let sync: Bool

    public init(directory: String, plan: [Planned], shardSize: Int, sync: Bool = false) throws {
        self.directory = directory
        self.sync = sync
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
            var header: [String: Any] = ["__metadata__": ["format": "pt"]]
            var off = 0
            for p in g {
                let bytes = p.shape.reduce(1, *) * p.dtype.size
                header[p.name] = ["dtype": p.dtype.rawValue, "shape": p.shape, "data_offsets": [off, off + bytes]]
                location[p.name] = (i, off, bytes)
                off += bytes
            }
            var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
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
            head.append(json)
            let w = head.withUnsafeBytes { pwrite(fd, $0.baseAddress, head.count, 0) }
            guard w == head.count else { Glibc.close(fd); throw ToolError("cannot write \(path)") }
            shards.append(Shard(file: file, names: g.map(\.name), fd: fd, size: size, dataStart: 8 + json.count))
        }
    }

    /// A buffer of at least `bytes` that the kernels write into before `write` copies it to its
    /// shard, reused for every tensor (its pages fault in once). Writing into fresh file pages
    /// through a mapping costs a fault and a block allocation per 4 KiB instead.
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

    /// Writes `bytes` bytes of a planned tensor, starting `offset` bytes into it.
    public func write(_ name: String, offset: Int, from src: UnsafeRawPointer, bytes: Int) throws {
        guard let l = location[name], bytes > 0 else { return }
        precondition(offset >= 0 && offset + bytes <= l.bytes, "write outside tensor \(name)")
        let s = shards[l.shard]
        var off = 0
        while off < bytes {
            let w = pwrite(s.fd, src + off, bytes - off, off_t(s.dataStart + l.begin + offset + off))
            guard w > 0 else { throw ToolError("cannot write \(directory)/\(s.file): \(String(cString: strerror(errno)))") }
            off += w
        }
        // with durability asked for, start writeback now (non-blocking) so that close()'s fsync
        // finds little left; without it the page cache flushes on its own, as after mergekit
        if sync { _ = meld_sync_file_range(s.fd, Int64(s.dataStart + l.begin + offset), Int64(bytes), 2 /* SYNC_FILE_RANGE_WRITE */) }
    }

    /// Closes every shard (syncing it first when asked) and writes the index when there are several.
    public func close() throws {
        for s in shards {
            guard !sync || fsync(s.fd) == 0 else { throw ToolError("cannot sync \(directory)/\(s.file)") }
            Glibc.close(s.fd)
        }
        let opened = shards
        shards = []
        if opened.count > 1 {
            var map: [String: String] = [:]
            for s in opened { for n in s.names { map[n] = s.file } }
            let index: [String: Any] = ["metadata": ["total_size": totalBytes], "weight_map": map]
            let data = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: directory + "/model.safetensors.index.json"))
        }
    }

    deinit {
        for s in shards { Glibc.close(s.fd) }
        staging?.deallocate()
    }
}
