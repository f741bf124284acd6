import ArgumentParser
import Foundation
import Meld
import MeldTool

@main
struct MeldCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meld",
        abstract: "Merge expert models with Meld's kernels (mergekit-compatible configs).",
        version: Version.string,
        subcommands: [Merge.self, Example.self, Generate.self]
    )
}

/// On SIGINT, SIGTERM or SIGHUP, removes `path` (a merge's partial output) and then dies of
/// the signal. The signals are blocked in this thread, and so in every thread started after
/// (OpenMP's, the writer's); one thread of ours takes them with sigwait, outside signal context,
/// where removing files is safe. A signal the process was started ignoring (nohup, a background
/// job) stays ignored.
func removeOnSignal(_ path: String) {
    var set = sigset_t()
    sigemptyset(&set)
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        let previous = signal(sig, SIG_DFL)
        if unsafeBitCast(previous, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) { signal(sig, SIG_IGN) } else { sigaddset(&set, sig) }
    }
    pthread_sigmask(SIG_BLOCK, &set, nil)
    let blocked = set
    let waiter = Thread {
        var wait = blocked, sig: Int32 = 0
        guard sigwait(&wait, &sig) == 0 else { return }
        try? FileManager.default.removeItem(atPath: path)
        var one = sigset_t()
        sigemptyset(&one)
        sigaddset(&one, sig)
        signal(sig, SIG_DFL)
        pthread_sigmask(SIG_UNBLOCK, &one, nil) /* the pending signal is delivered here */
        raise(sig)
    }
    waiter.start()
}

/// Runs body; a failure is one line on stderr ("meld: error: ...", prefixed with `subject` for
/// system errors, which do not name their file) and exit status 1.
@discardableResult
func reportingErrors<T>(subject: String, _ body: () throws -> T) throws -> T {
    func fail(_ message: String) -> ExitCode {
        FileHandle.standardError.write("meld: error: \(message)\n".data(using: .utf8)!)
        return ExitCode(1)
    }
    do { return try body() } catch let e as ToolError { throw fail(e.message) } catch let e as MeldError { throw fail("\(e)") } catch let e as ExitCode {
        throw e
    } catch { throw fail("\(subject): \(error.localizedDescription)") }
}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Merge the models of a mergekit YAML config into OUT_DIR.")
    @Argument(help: "The mergekit YAML config (model paths resolve against the working directory).") var config: String
    @Argument(help: "The output folder (written under a temporary name, renamed when complete).") var outDir: String
    @Option(name: .customLong("random-seed"), help: "Seed of the random sparsifiers (DARE, DELLA).") var seed: UInt64 = 0
    @Option(name: .customLong("out-shard-size"), help: "Largest output shard, e.g. 5B (default), 500M.") var shardSize = "5B"
    @Option(help: "Threads (0 = all cores).") var threads = 0
    @Flag(help: "No progress output.") var quiet = false
    @Flag(help: "Replace OUT_DIR if it exists.") var overwrite = false
    @Flag(help: "Flush the output to the disk before it takes its final name (survives a power loss; waits for the disk).") var fsync = false
    @Option(help: "cpu (default), or opencl[:N] to run the kernels on OpenCL device N.") var device = "cpu"
    @Option(name: .customLong("max-mapped"), help: "The most input bytes mapped at once, e.g. 1G (default), 256M: a tensor whose inputs need more is paged in windows.") var maxMapped = "1GiB"

    func run() throws {
        var req = MergeRequest(configPath: config, outDir: outDir)
        if device != "cpu" {
            let parts = device.split(separator: ":", maxSplits: 1)
            guard parts.first == "opencl", parts.count == 1 || Int(parts[1]) != nil else {
                throw ValidationError("--device \(device): expected cpu, opencl or opencl:N (devices: \(OpenCL.devices.enumerated().map { "\($0.offset): \($0.element)" }.joined(separator: "; ")))")
            }
            req.openCLDevice = parts.count == 2 ? Int(parts[1])! : -1
        }
        req.seed = seed
        guard let size = parseByteSize(shardSize) else {
            throw ValidationError("--out-shard-size \(shardSize): expected a size such as 5B, 500M or 2GiB, at most \(Int.max) bytes")
        }
        req.shardSize = size
        guard let mapped = parseByteSize(maxMapped), mapped >= 1 << 20 else {
            throw ValidationError("--max-mapped \(maxMapped): expected a size of at least 1M, such as 1G or 256M")
        }
        req.mapBudget = mapped
        guard (0...4096).contains(threads) else { throw ValidationError("--threads \(threads): expected 0 (all cores) to 4096") }
        req.threads = threads
        req.quiet = quiet
        req.overwrite = overwrite
        req.sync = fsync
        removeOnSignal(Merger.temporaryFolder(for: outDir))
        let s = try reportingErrors(subject: outDir) { try Merger.run(req) }
        if !quiet {
            print(String(format: "meld: %@ merge of %d tensors (%.1f MB read, %.1f MB written) in %.2f s -> %@",
                         s.method, s.tensors, Double(s.bytesRead) / 1e6, Double(s.bytesWritten) / 1e6, s.seconds, s.outDir))
        }
    }
}

struct Example: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate small example checkpoints and TIES-merge them (no downloads needed).")
    @Argument(help: "Working folder for the example models and the merged output.") var dir = "meld-example"

    func run() throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dir, isDirectory: &isDir) && !isDir.boolValue {
            throw ValidationError("\(dir) is a file: meld example needs a folder to work in")
        }
        let (s, g) = try reportingErrors(subject: dir) { try example() }
        print("""
        meld example: generated a Llama-shaped base and 3 fine-tuned experts (\(g.parameterCount) parameters each) in \(dir)/models,
        TIES-merged them with \(dir)/ties.yml (densities 0.2/0.5/0.35, sum vote, normalized, bf16 output):
        \(s.tensors) tensors, \(String(format: "%.1f", Double(s.bytesRead) / 1e6)) MB read, \(String(format: "%.1f", Double(s.bytesWritten) / 1e6)) MB written in \(String(format: "%.3f", s.seconds)) s -> \(s.outDir)
        Merge your own models with: meld merge CONFIG.yml OUT_DIR
        """)
    }

    func example() throws -> (MergeSummary, CheckpointGenerator) {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var g = CheckpointGenerator()
        g.experts = 3
        try g.write(to: dir + "/models")
        // paths as double-quoted YAML scalars: a folder name may hold spaces, '#' or ': '
        func model(_ name: String) -> String {
            "\"" + (dir + "/models/" + name).replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        let yaml = """
        merge_method: ties
        base_model: \(model("base"))
        models:
          - model: \(model("expert0"))
            parameters: {weight: 1.0, density: 0.2}
          - model: \(model("expert1"))
            parameters: {weight: 0.6, density: 0.5}
          - model: \(model("expert2"))
            parameters: {weight: 0.8, density: 0.35}
        dtype: float32
        out_dtype: bfloat16

        """
        try yaml.write(toFile: dir + "/ties.yml", atomically: true, encoding: .utf8)
        var req = MergeRequest(configPath: dir + "/ties.yml", outDir: dir + "/merged")
        req.overwrite = true
        req.quiet = true
        return (try Merger.run(req), g)
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write Llama-shaped base + expert checkpoints (for benchmarks).")
    @Argument var dir: String
    @Option var hidden = 1024
    @Option var layers = 8
    @Option var vocab = 32000
    @Option var intermediate = 2048
    @Option var heads = 16
    @Option(name: .customLong("kv-heads")) var kvHeads = 16
    @Option var experts = 3
    @Option(help: "f32, bf16 or f16") var dtype = "f32"

    func run() throws {
        var g = CheckpointGenerator()
        g.hidden = hidden; g.layers = layers; g.vocab = vocab; g.intermediate = intermediate
        g.heads = heads; g.kvHeads = kvHeads; g.experts = experts
        switch dtype {
        case "f32": g.dtype = .F32
        case "bf16": g.dtype = .BF16
        case "f16": g.dtype = .F16
        default: throw ValidationError("--dtype must be f32, bf16 or f16")
        }
        do { try g.validate(dir: dir) } catch let e as ToolError { throw ValidationError(e.message) }
        try reportingErrors(subject: dir) { try g.write(to: dir) }
        print("meld generate: base + \(experts) experts of \(g.parameterCount) parameters (\(dtype)) in \(dir)")
    }
}
