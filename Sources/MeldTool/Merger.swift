import Foundation
import Meld
#if canImport(Glibc)
import Glibc
#endif

public struct MergeRequest: Sendable {
    public var configPath: String
    public var outDir: String
    public var seed: UInt64 = 0
    public var shardSize: Int = 5_000_000_000
    public var threads: Int = 0
    public var quiet = false
    public var overwrite = false
    /// Flush the output to the disk before it takes its final name (survives a power loss, at the
    /// disk's write speed). Off by default, as in mergekit: the folder still appears only whole.
    public var sync = false
    public var isa: ISA = .auto
    /// nil: the CPU; otherwise the OpenCL device index (-1: MELD_CL_DEVICE or 0)
    public var openCLDevice: Int? = nil
    /// The most input bytes mapped at once (at least 64 KiB): tensors whose inputs need more are
    /// paged in windows as the kernels stream over them.
    public var mapBudget = 1 << 30
    public init(configPath: String, outDir: String) { self.configPath = configPath; self.outDir = outDir }
}

public struct MergeSummary: Sendable {
    public var method: String
    public var tensors: Int
    public var bytesRead: Int
    public var bytesWritten: Int
    public var seconds: Double
    public var outDir: String
    /// tensors whose inputs were paged in windows (larger than the map budget allows whole)
    public var pagedTensors = 0
}

/// Runs a mergekit-style merge: one tensor at a time, inputs mmap'ed and their pages dropped after
/// each tensor, outputs streamed to the shards in chunks, so memory does not grow with the model.
public enum Merger {
    static let tokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                                 "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json"]

    public static func run(_ req: MergeRequest) throws -> MergeSummary {
        let start = Date()
        guard let text = try? String(contentsOfFile: req.configPath, encoding: .utf8) else {
            throw ToolError("cannot read config \(req.configPath)")
        }
        let cfg = try MergeConfig(yaml: text, source: req.configPath)
        let fm = FileManager.default
        // ".." resolved first: the temporary folder and the old one sit beside the output, and
        // "a/../out" would lose its parent once a had moved away
        let out = URL(fileURLWithPath: absolute(req.outDir)).standardizedFileURL.path
        if fm.fileExists(atPath: out) && !req.overwrite {
            throw ToolError("output folder \(req.outDir) already exists (pass --overwrite to replace it)")
        }
        // models resolve against the working directory, as in mergekit
        var folders: [String: ModelFolder] = [:]
        func folder(_ p: String) throws -> ModelFolder {
            if let f = folders[p] { return f }
            // a missing "owner/name" is most likely a Hugging Face hub id, which mergekit downloads
            let hubLike = !p.hasPrefix("/") && !p.hasPrefix(".") && p.split(separator: "/").count == 2
            if hubLike && !FileManager.default.fileExists(atPath: absolute(p)) {
                throw ToolError("model folder \(absolute(p)) does not exist (meld reads local folders only: if \(p) is a Hugging Face hub id, download it first with huggingface-cli download \(p) --local-dir DIR, and name DIR)")
            }
            let f = try ModelFolder(path: absolute(p))
            folders[p] = f
            return f
        }
        let base = try cfg.baseModel.map(folder)
        let models = try cfg.models.map { try folder($0.model) }
        let plan = try Plan(cfg: cfg, base: base, models: models)
        // replacing the output folder deletes it whole (even with --overwrite, never when it is
        // or holds an input model, or the config: `meld merge c.yml . --overwrite`)
        func real(_ p: String) -> String { URL(fileURLWithPath: p).resolvingSymlinksInPath().standardizedFileURL.path }
        let outReal = real(out)
        func within(_ p: String) -> Bool { p == outReal || p.hasPrefix(outReal == "/" ? "/" : outReal + "/") }
        for f in folders.values where within(real(f.path)) {
            throw ToolError(real(f.path) == outReal ? "output folder \(req.outDir) is an input model of the merge"
                                                     : "output folder \(req.outDir) holds the input model \(f.path)")
        }
        if within(real(absolute(req.configPath))) { throw ToolError("output folder \(req.outDir) holds the config \(req.configPath)") }

        let parent = (out as NSString).deletingLastPathComponent
        let tmp = temporaryFolder(for: req.outDir)
        try? fm.removeItem(atPath: tmp)
        do { try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true) } catch {
            throw ToolError("cannot create \(tmp): \(error.localizedDescription)")
        }
        do {
            let summary = try execute(plan: plan, cfg: cfg, req: req, dir: tmp, start: start)
            try writeConfig(plan: plan, dir: tmp)
            for f in tokenizerFiles where fm.fileExists(atPath: plan.reference.path + "/" + f) {
                try fm.copyItem(atPath: plan.reference.path + "/" + f, toPath: tmp + "/" + f)
            }
            if req.sync { try syncFolder(tmp) }
            if fm.fileExists(atPath: out) {
                let old = parent + "/.meld-old-\(getpid())-" + (out as NSString).lastPathComponent
                try fm.moveItem(atPath: out, toPath: old)
                do { try fm.moveItem(atPath: tmp, toPath: out) } catch {
                    try? fm.moveItem(atPath: old, toPath: out) /* the old output back where it was */
                    throw error
                }
                try? fm.removeItem(atPath: old)
            } else {
                try fm.moveItem(atPath: tmp, toPath: out)
            }
            if req.sync { try syncFolder(parent, files: false) }
            var s = summary
            s.outDir = out
            s.seconds = Date().timeIntervalSince(start)
            return s
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
    }

    /// Where this process writes the output before renaming it to `outDir` (beside it, named
    /// after it and the process id), so that a signal handler can remove it.
    public static func temporaryFolder(for outDir: String) -> String {
        let out = URL(fileURLWithPath: absolute(outDir)).standardizedFileURL.path
        return (out as NSString).deletingLastPathComponent + "/.meld-tmp-\(getpid())-" + (out as NSString).lastPathComponent
    }

    /// fsync of a folder's files and of the folder itself (its entries).
    static func syncFolder(_ dir: String, files: Bool = true) throws {
        let names = files ? ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []) : []
        for p in names.map({ dir + "/" + $0 }) + [dir] {
            let fd = open(p, O_RDONLY)
            guard fd >= 0 else { throw ToolError("cannot open \(p) to sync it") }
            defer { Glibc.close(fd) }
            guard fsync(fd) == 0 else { throw ToolError("cannot sync \(p): \(String(cString: strerror(errno)))") }
        }
    }

    static func absolute(_ p: String) -> String {
        p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p
    }

    /// What to merge: the tensor list, per-tensor dtypes, and which folders play which role.
    struct Plan {
        var method: String
        var base: ModelFolder?
        var entries: [(entry: ModelEntry, folder: ModelFolder)]
        var experts: [(entry: ModelEntry, folder: ModelFolder)]   // models other than the base
        var reference: ModelFolder
        var names: [String]
        var outDtype: [String: STDType]
        var layers: Int
        var global: [String: ParamValue]

        init(cfg: MergeConfig, base: ModelFolder?, models: [ModelFolder]) throws {
            method = cfg.method
            self.base = base
            entries = Array(zip(cfg.models, models))
            experts = entries.filter { base == nil || $0.folder !== base! }
            reference = base ?? models[0]
            global = cfg.parameters
            let needsBase = !["linear", "nuslerp"].contains(cfg.method)
            if needsBase && base == nil { throw ToolError("\(cfg.method) needs base_model") }
            switch cfg.method {
            case "slerp":
                guard entries.count == 2, base != nil, entries.contains(where: { $0.folder === base! }) else {
                    throw ToolError("slerp needs exactly two models, one of them base_model")
                }
            case "nuslerp":
                guard experts.count == 2 else { throw ToolError("nuslerp needs exactly two models besides base_model") }
                if case .bool(true)? = cfg.parameters["nuslerp_row_wise"] { throw ToolError("nuslerp_row_wise is not supported (supported: the flattened form)") }
            case "model_stock":
                guard experts.count >= 2 else { throw ToolError("model_stock needs base_model and at least two other models") }
            default:
                guard !experts.isEmpty else { throw ToolError("\(cfg.method) needs at least one model besides base_model") }
            }
            // every model has every tensor of the reference, with the same shape; dtypes may differ
            // (a bf16 base with an f32 fine-tune): the kernels widen each input exactly to f32, as
            // torch promotes them in mergekit, and the output takes out_dtype, else dtype, else
            // the reference's dtype (mergekit casts the result to the base's)
            names = reference.tensorNames
            var od: [String: STDType] = [:]
            let all = [reference] + models
            for n in names {
                let ri = reference.info(n)!
                guard ri.dtype.meld != nil else {
                    throw ToolError("tensor \(n) of \(reference.path) has dtype \(ri.dtype.rawValue); meld merges F32, F16 and BF16 only")
                }
                for m in all where m !== reference {
                    guard let mi = m.info(n) else { throw ToolError("tensor \(n) is missing from \(m.path)") }
                    guard mi.shape == ri.shape else { throw ToolError("tensor \(n) has shape \(mi.shape) in \(m.path) but \(ri.shape) in \(reference.path)") }
                    guard mi.dtype.meld != nil else {
                        throw ToolError("tensor \(n) has dtype \(mi.dtype.rawValue) in \(m.path); meld merges F32, F16 and BF16 only")
                    }
                }
                od[n] = cfg.outDtype ?? cfg.dtype ?? ri.dtype
            }
            outDtype = od
            let maxLayer = names.compactMap(Plan.layerIndex).max().map { $0 + 1 } ?? 1
            layers = reference.numLayers ?? maxLayer
        }

        static func layerIndex(_ name: String) -> Int? {
            for marker in [".layers.", ".h.", ".blocks."] {
                guard let r = name.range(of: marker) else { continue }
                let digits = name[r.upperBound...].prefix { $0.isNumber }
                if !digits.isEmpty { return Int(digits) }
            }
            return nil
        }

        /// Position of a tensor in the layer stack for gradients: i / (L - 1), 0 outside layers.
        func t(_ name: String) -> Double {
            guard let i = Plan.layerIndex(name) else { return 0 }
            return layers > 1 ? Double(i) / Double(layers - 1) : 1
        }

        func param(_ key: String, entry: ModelEntry?, tensor: String) -> Double? {
            if let e = entry, let v = e.parameters[key], let r = v.resolve(tensor: tensor, t: t(tensor)) { return r }
            if let v = global[key], let r = v.resolve(tensor: tensor, t: t(tensor)) { return r }
            return nil
        }
    }

    static func execute(plan: Plan, cfg: MergeConfig, req: MergeRequest, dir: String, start: Date) throws -> MergeSummary {
        let ctx = try Context(threads: req.threads, isa: req.isa)
        if let dev = req.openCLDevice { try ctx.useOpenCL(device: dev) }
        let planned = plan.names.map { ShardedWriter.Planned(name: $0, dtype: plan.outDtype[$0]!, shape: plan.reference.info($0)!.shape) }
        // on the CPU with 2+ threads, the kernels' threads write the output between tiles
        let side = req.openCLDevice == nil && ctx.threads >= 2
        let writer = try ShardedWriter(directory: dir, plan: planned, shardSize: req.shardSize, sync: req.sync, writes: side ? .side : .thread)
        if writer.writeMode == .side { ctx.setSideWork { [unowned writer] in writer.sideWork() } }
        defer { ctx.setSideWork(nil) }
        let inputFolders = plan.entries.map(\.folder) + (plan.base.map { [$0] } ?? [])
        var uniqueInputs: [ModelFolder] = []
        for f in inputFolders where !uniqueInputs.contains(where: { $0 === f }) { uniqueInputs.append(f) }
        let totalIn = plan.names.reduce(0) { acc, n in acc + uniqueInputs.reduce(0) { $0 + ($1.info(n).map { $0.end - $0.begin } ?? 0) } }
        let progress = Progress(total: totalIn + writer.totalBytes, tensors: plan.names.count, enabled: !req.quiet && isatty(2) != 0)
        var done = 0
        let timing = ProcessInfo.processInfo.environment["MELD_TIMING"] != nil
        // MELD_TEST_STALL_AFTER=N: stop for good after N tensors (tests interrupt a merge there)
        let stallAfter = ProcessInfo.processInfo.environment["MELD_TEST_STALL_AFTER"].flatMap { Int($0) }
        var tKernel = 0.0, tRelease = 0.0, tMap = 0.0
        // The inputs mapped at once stay within `mapBudget` (1 GiB by default). Merged tensors'
        // input pages are dropped in batches of up to a quarter of it (and before a tensor that
        // would take the mapped total past that): one madvise per run of adjacent tensors instead
        // of one per tensor and file. A tensor whose inputs exceed what is left besides a batch
        // and two windows is paged in windows of a sixteenth as the kernels stream over it.
        // Smaller tensors are mapped whole: one map and one drop, however many passes a method
        // makes (paged, each pass faults its pages back).
        let mapBudget = max(req.mapBudget, 1 << 16)
        let releaseBudget = mapBudget / 4, windowBudget = mapBudget / 16
        let pageAbove = mapBudget - releaseBudget - 2 * windowBudget
        var mapped: [String] = [], mappedBytes = 0, paged = 0
        func release() {
            let t = Date()
            // the files on the context's threads: the drop is page-table work, which one thread
            // did while the others waited. f32 TIES, 150M parameters, inputs in 4 KiB page-cache
            // folios (written 4 KiB at a time), 3 alternated pairs: release 0.077-0.171 ->
            // 0.041-0.046 s (large folios: ~3 ms either way)
            ctx.parallelFor(uniqueInputs.count) { uniqueInputs[$0].release(mapped) }
            (mapped, mappedBytes) = ([], 0)
            tRelease += Date().timeIntervalSince(t)
        }
        for (i, name) in plan.names.enumerated() {
            let info = plan.reference.info(name)!
            let inBytes = uniqueInputs.reduce(0) { $0 + ($1.info(name).map { $0.end - $0.begin } ?? 0) }
            if mappedBytes > 0 && mappedBytes + inBytes > releaseBudget { release() }
            let t0 = Date()
            // a tensor whose inputs exceed the budget is paged in windows as the kernels stream
            // over it (every pass of every method), so peak memory does not grow with it
            let pager = inBytes > pageAbove && req.openCLDevice == nil
                ? InputPager(files: uniqueInputs.compactMap { try? $0.view(name) }, window: max(1, info.count * windowBudget / inBytes)) : nil
            if let pager {
                paged += 1
                pager.attach(ctx)
            } else {
                populate(uniqueInputs.compactMap { $0.pages(name) }, on: ctx)
            }
            tMap += Date().timeIntervalSince(t0)
            defer { if pager != nil { ctx.setWindow(elements: 0, done: nil) } }
            let sink = TensorSink(writer: writer, name: name, dtype: plan.outDtype[name]!.meld!, count: info.count,
                                  chunks: req.openCLDevice == nil, pager: pager)
            do {
                try mergeTensor(name, info: info, plan: plan, cfg: cfg, seed: req.seed, ctx: ctx, sink: sink)
            } catch let e as MeldError {
                throw ToolError("\(plan.method) merge of tensor \(name): \(e)")
            }
            tKernel += Date().timeIntervalSince(t0)
            mapped.append(name)
            mappedBytes += inBytes
            if stallAfter == i + 1 { while true { sleep(60) } } /* test hook: a merge caught midway */
            done += inBytes + info.count * plan.outDtype[name]!.size
            progress.update(tensors: i + 1, bytes: done, seconds: Date().timeIntervalSince(start))
        }
        release()
        let tc = Date()
        try writer.close()
        progress.finish()
        if timing {
            let bg = writer.writeMode != .inline
            let line = String(format: "timing: setup %.3f s, inputs mapped %.3f s, kernels %.3f s, writes %.3f s",
                              tc.timeIntervalSince(start) - tKernel - tRelease, tMap, tKernel - tMap - (bg ? 0 : writer.writeSeconds),
                              writer.writeSeconds)
                + (writer.writeMode == .side ? " (by the kernels' threads between tiles)" : bg ? " (beside the kernels)" : "")
                + String(format: ", release %.3f s, close %.3f s, paged %d tensors, peak RSS %.0f MB\n", tRelease,
                         Date().timeIntervalSince(tc), paged, Double(peakRSSBytes()) / 1e6)
            FileHandle.standardError.write(line.data(using: .utf8)!)
        }
        return MergeSummary(method: cfg.method, tensors: plan.names.count, bytesRead: totalIn, bytesWritten: writer.totalBytes,
                            seconds: Date().timeIntervalSince(start), outDir: dir, pagedTensors: paged)
    }

    /// Inputs in the configured compute dtype: mergekit casts to `dtype` first, so a narrower
    /// dtype rounds the inputs (a temporary copy of the tensor, made once per input even where
    /// the input plays two roles, on the merge's threads); a wider one is exact and needs no copy.
    /// A paged tensor's copies go to scratch files that the pager drops window by window like
    /// the inputs (see ScratchFile), so they do not grow memory with the tensor either.
    final class Inputs {
        let ctx: Context
        let pager: InputPager?, scratchDir: String
        var keep: [UnsafeMutableRawPointer] = []
        var scratch: [ScratchFile] = []
        var made: [UnsafeRawPointer: TensorView] = [:]
        init(ctx: Context, pager: InputPager?, scratchDir: String) { (self.ctx, self.pager, self.scratchDir) = (ctx, pager, scratchDir) }
        func view(_ v: TensorView, dtype: STDType?) throws -> TensorView {
            guard let d = dtype?.meld, d != v.dtype, d.size < v.dtype.size || (d.size == v.dtype.size && d != v.dtype) else { return v }
            if let src = v.data, let c = made[src] { return c }
            let c: TensorView
            if let pager, let src = v.data {
                c = try pagedCopy(src, count: v.count, from: v.dtype, to: d, pager: pager)
            } else {
                let p = UnsafeMutableRawPointer.allocate(byteCount: max(v.count * d.size, 1), alignment: 64)
                keep.append(p)
                try ctx.convert(v, into: MutableTensorView(data: p, count: v.count, dtype: d))
                c = TensorView(data: UnsafeRawPointer(p), count: v.count, dtype: d)
            }
            if let src = v.data { made[src] = c }
            return c
        }

        /// The rounded copy of a paged input, converted a chunk at a time into a scratch file (the
        /// input's pages dropped as it goes), then mapped and paged with the inputs.
        func pagedCopy(_ src: UnsafeRawPointer, count: Int, from s: DType, to d: DType, pager: InputPager) throws -> TensorView {
            let f = try ScratchFile(directory: scratchDir)
            scratch.append(f)
            let chunk = 1 << 20
            let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk * d.size, alignment: 64)
            defer { buf.deallocate() }
            // the chunks' views start at each chunk: the pager hears of them here, in tensor indices
            ctx.setWindow(elements: 0, done: nil)
            defer { pager.attach(ctx) }
            var first = 0
            while first < count {
                let c = min(chunk, count - first)
                try ctx.convert(TensorView(data: src + first * s.size, count: c, dtype: s), into: MutableTensorView(data: buf, count: c, dtype: d))
                try f.write(buf, bytes: c * d.size, at: first * d.size)
                pager.done(first, c)
                first += c
            }
            let view = TensorView(data: try f.map(bytes: count * d.size), count: count, dtype: d)
            pager.add(view)
            return view
        }
        deinit { keep.forEach { $0.deallocate() } }
    }

    static func required(_ v: Double?, _ key: String, model: String, tensor: String) throws -> Double {
        guard let v else { throw ToolError("model \(model) has no \(key) for tensor \(tensor)") }
        return try finite32(v, key, model: model, tensor: tensor)
    }

    /// A weight or lambda goes to the kernels as an f32: past its range it would arrive as
    /// infinity and be refused there without naming the parameter.
    static func finite32(_ v: Double, _ key: String, model: String, tensor: String) throws -> Double {
        guard v.isFinite, abs(v) <= Double(Float.greatestFiniteMagnitude) else {
            throw ToolError("\(key) = \(v) for model \(model), tensor \(tensor): must be a finite number within f32 range (|\(key)| <= \(Float.greatestFiniteMagnitude))")
        }
        return v
    }

    /// Where a merged tensor goes: in chunks, each written straight into the writer's ring (the
    /// chunk stays in cache between the kernel and the write, and no tensor-sized buffer is
    /// needed); methods with whole-tensor reductions run those first, over the mapped inputs.
    /// On OpenCL a tensor goes whole through the staging buffer.
    struct TensorSink {
        let writer: ShardedWriter, name: String, dtype: DType, count: Int
        let chunks: Bool
        let pager: InputPager?
        static let chunk = 64 * MergePlan.rangeAlignment

        func whole(_ body: (MutableTensorView) throws -> Void) throws {
            let bytes = count * dtype.size
            let buf = writer.staging(bytes: bytes)
            try body(MutableTensorView(data: buf, count: count, dtype: dtype))
            try writer.write(name, offset: 0, from: buf, bytes: bytes)
        }

        /// out = Σ w_i x_i (over Σ w_i when normalizing), in chunks: elementwise, so a range of
        /// the inputs gives that range of the output.
        func combine(_ xs: [TensorView], weights: [Float], normalize: Bool = false, ctx: Context) throws {
            // each chunk's views start at the chunk, so the kernels would report ranges of the
            // chunk: the pager hears of each chunk here instead, in tensor indices
            if pager != nil { ctx.setWindow(elements: 0, done: nil) }
            defer { pager?.attach(ctx) }
            try chunked { first, out in
                try ctx.linear(xs.map { x in TensorView(data: x.data.map { $0 + first * x.dtype.size }, count: out.count, dtype: x.dtype) },
                               weights: weights, normalize: normalize, into: out)
                pager?.done(first, out.count)
            }
        }

        /// body(first, out) writes elements first ..< first + out.count; first is a multiple of
        /// MergePlan.rangeAlignment.
        func chunked(_ body: (Int, MutableTensorView) throws -> Void) throws {
            guard chunks else { return try whole { try body(0, $0) } }
            var first = 0
            while first < count {
                var c = min(Self.chunk, count - first)
                // A chunk that would cross the ring's end stops before it, at whole ranges, and the
                // next is one range: only that one goes through the ring's bounce buffer (a whole
                // chunk a lap cost f32 TIES ~9 ms of copying on the calling thread).
                let toEnd = writer.bytesToRingEnd / dtype.size
                if c > toEnd { c = toEnd >= MergePlan.rangeAlignment ? toEnd / MergePlan.rangeAlignment * MergePlan.rangeAlignment : min(c, MergePlan.rangeAlignment) }
                let buf = try writer.reserve(name, offset: first * dtype.size, bytes: c * dtype.size)
                try body(first, MutableTensorView(data: buf, count: c, dtype: dtype))
                try writer.commit(c * dtype.size)
                first += c
            }
        }
    }

    static func mergeTensor(_ name: String, info: TensorInfo, plan: Plan, cfg: MergeConfig, seed: UInt64, ctx: Context,
                            sink: TensorSink) throws {
        let inputs = Inputs(ctx: ctx, pager: sink.pager, scratchDir: sink.writer.directory)   // converted copies, which the views below point into
        defer { withExtendedLifetime(inputs) {} }
        func v(_ f: ModelFolder) throws -> TensorView { try inputs.view(try f.view(name), dtype: cfg.dtype) }
        func p(_ key: String, _ e: ModelEntry? = nil) -> Double? { plan.param(key, entry: e, tensor: name) }
        func flag(_ key: String, _ def: Bool) -> Bool { p(key).map { $0 != 0 } ?? def }
        func check(_ x: Double, _ key: String, _ range: ClosedRange<Double>, _ model: String) throws -> Float {
            guard range.contains(x) else { throw ToolError("\(key) = \(x) for model \(model), tensor \(name): must lie in [\(range.lowerBound), \(range.upperBound)]") }
            return Float(x)
        }
        switch plan.method {
        case "linear":
            let w = try plan.entries.map { Float(try required(p("weight", $0.entry), "weight", model: $0.entry.model, tensor: name)) }
            let xs = try plan.entries.map { try v($0.folder) }
            let normalize = flag("normalize", true)
            if normalize && w.reduce(0, +) == 0 {
                throw ToolError("linear merge of tensor \(name): the weights \(w) sum to 0, and normalize (the default) divides by that sum; change the weights or set normalize: false")
            }
            try sink.combine(xs, weights: w, normalize: normalize, ctx: ctx)
        // the geometric merges: weights from a reduction over the whole tensor, then a linear pass
        // written in chunks like the elementwise methods (the same bits as the whole call)
        case "slerp":
            let t = try required(p("t"), "t", model: "(global)", tensor: name)
            let other = plan.entries.first { $0.folder !== plan.base! }!.folder
            let (t32, b, o) = (try check(t, "t", 0...1, "(global)"), try v(plan.base!), try v(other))
            try sink.combine([b, o], weights: try ctx.slerpWeights(t: t32, b, o), ctx: ctx)
        case "nuslerp":
            let e = plan.experts
            let w = try e.map { try required(p("weight", $0.entry), "weight", model: $0.entry.model, tensor: name) }
            let (b, x0, x1) = (try plan.base.map(v), try v(e[0].folder), try v(e[1].folder))
            let nw = try ctx.nuslerpWeights(base: b, x0, x1, weights: (Float(w[0]), Float(w[1])))
            try sink.combine([x0, x1] + (b.map { [$0] } ?? []), weights: Array(nw.prefix(b == nil ? 2 : 3)), ctx: ctx)
        case "model_stock":
            let (b, xs) = (try v(plan.base!), try plan.experts.map { try v($0.folder) })
            try sink.combine(xs + [b], weights: try ctx.modelStockWeights(base: b, xs).weights, ctx: ctx)
        default:
            let m = plan.method
            let sparsify: Sparsifier.Method = switch m {
            case "ties": .magnitude
            case "dare_ties", "dare_linear": .random
            case "breadcrumbs", "breadcrumbs_ties": .magnitudeOutliers
            case "della", "della_linear": .della
            default: .none
            }
            let consensus: Consensus = ["ties", "dare_ties", "breadcrumbs_ties", "della"].contains(m) ? .sum : .none
            let normalize = flag("normalize", ["ties", "della"].contains(m))
            let rescale = flag("rescale", ["dare_ties", "dare_linear", "della", "della_linear"].contains(m))
            let lambda = try finite32(p("lambda") ?? 1, "lambda", model: "(global)", tensor: name)
            var weights: [Float] = [], sp: [Sparsifier] = []
            for (k, e) in plan.experts.enumerated() {
                let model = e.entry.model
                weights.append(Float(try required(p("weight", e.entry), "weight", model: model, tensor: name)))
                var s = Sparsifier(sparsify)
                s.density = p("density", e.entry) ?? 1; _ = try check(s.density, "density", 0...1, model)
                s.gamma = p("gamma", e.entry) ?? 0.01; _ = try check(s.gamma, "gamma", 0...1, model)
                s.epsilon = p("epsilon", e.entry) ?? 0.15; _ = try check(s.epsilon, "epsilon", 0...1, model)
                if sparsify == .della, s.density < 1, s.density > 0, !(s.density - s.epsilon > 0 && s.density + s.epsilon < 1) {
                    throw ToolError("epsilon = \(s.epsilon) with density = \(s.density) for model \(model), tensor \(name): density ± epsilon must lie in (0, 1)")
                }
                s.rescale = rescale && sparsify != .none ? .l1 : .none
                s.seed = seed
                s.stream = Sparsifier.stream(tensor: name, expert: k)
                s.rowLength = info.shape.count >= 2 ? info.shape.dropFirst().reduce(1, *) : 0
                sp.append(s)
            }
            let opts = MergeOptions(consensus: consensus, divisor: normalize ? .weightSum : .none, lambda: Float(lambda))
            // the thresholds, norms and masks need the whole tensor; the pass that writes it does not
            let merge = try MergePlan(ctx, base: try v(plan.base!), try plan.experts.map { try v($0.folder) }, weights: weights,
                                      sparsifiers: sp, options: opts)
            try sink.chunked { first, out in try merge.run(first: first, into: out) }
        }
    }

    static func writeConfig(plan: Plan, dir: String) throws {
        var cfg = plan.reference.config
        guard cfg.members?.isEmpty == false else { return }
        let dts = Set(plan.outDtype.values)
        if let d = dts.first, dts.count == 1 {
            let s = JSON.string(d == .F32 ? "float32" : d == .F16 ? "float16" : "bfloat16")
            cfg = cfg.setting("torch_dtype", s)
            if cfg["dtype"] != nil { cfg = cfg.setting("dtype", s) }
        }
        // as transformers writes it: json.dumps(indent=2, sort_keys=True) and a newline
        try writeFile(dir + "/config.json", cfg.serialized(indent: 2, sortKeys: true) + "\n")
    }
}

/// This process's peak resident set so far: VmHWM of its memory map. Not getrusage's ru_maxrss,
/// which Linux carries across execve from the address space the process was spawned in (a
/// vfork'ed child starts with its parent's peak).
func peakRSSBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") else { return 0 }
    return kb * 1024
}

/// Progress on stderr when it is a terminal: tensors, bytes, throughput, time left.
final class Progress {
    let total: Int, tensors: Int, enabled: Bool
    var last = 0.0
    init(total: Int, tensors: Int, enabled: Bool) { self.total = total; self.tensors = tensors; self.enabled = enabled }
    func update(tensors done: Int, bytes: Int, seconds: Double) {
        guard enabled, seconds - last > 0.1 || done == tensors else { return }
        last = seconds
        let rate = Double(bytes) / max(seconds, 1e-9)
        let left = rate > 0 ? Double(total - bytes) / rate : 0
        let line = String(format: "\r[%d/%d tensors] %.2f of %.2f GB, %.2f GB/s, %.0fs left   ", done, tensors,
                          Double(bytes) / 1e9, Double(total) / 1e9, rate / 1e9, left)
        FileHandle.standardError.write(line.data(using: .utf8)!)
    }
    func finish() { if enabled { FileHandle.standardError.write("\n".data(using: .utf8)!) } }
}
