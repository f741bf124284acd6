import XCTest
import Foundation
@testable import Meld
@testable import MeldTool

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let conformanceRoot = repoRoot + "/../shared/conformance/mergekit"

extension XCTestCase {
    /// A fresh scratch folder, removed when the test ends (merged models are hundreds of MB, and a
    /// /tmp that fills across runs fails later tests for the wrong reason).
    func tempDir(_ tag: String) -> String {
        let d = NSTemporaryDirectory() + "meld-test-\(tag)-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }
}

/// Float values of a tensor (any float dtype).
func floats(_ f: ModelFolder, _ name: String) throws -> [Float] {
    let v = try f.view(name)
    let ctx = try Context(threads: 1)
    var out = [Float](repeating: 0, count: v.count)
    try out.withUnsafeMutableBufferPointer { try ctx.convert(v, into: MutableTensorView($0)) }
    return out
}

func runMerge(_ config: String, _ out: String, in dir: String, threads: Int = 2, seed: UInt64 = 1, shard: Int = 5_000_000_000) throws -> MergeSummary {
    let cwd = FileManager.default.currentDirectoryPath
    XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(dir), "cd \(dir)")
    defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
    var r = MergeRequest(configPath: config, outDir: out)
    r.threads = threads; r.seed = seed; r.quiet = true; r.overwrite = true; r.shardSize = shard
    return try Merger.run(r)
}

/// `meld merge` against mergekit 0.1.5's outputs (../shared/conformance/mergekit): F32 within
/// |a - e| <= 1e-6 + 1e-5 |e|, BF16 within 1 ulp; random cases by their properties; and the
/// same bytes on 1 and 2 threads.
final class ConformanceTests: XCTestCase {
    func cases() throws -> [String] {
        let dir = conformanceRoot + "/cases"
        guard let c = try? FileManager.default.contentsOfDirectory(atPath: dir), !c.isEmpty else {
            throw XCTSkip("no conformance fixtures at \(dir)")
        }
        return c.sorted()
    }

    func testEveryCase() throws {
        for name in try cases() {
            let caseDir = conformanceRoot + "/cases/" + name
            let out1 = tempDir("conf-\(name)-1"), out2 = tempDir("conf-\(name)-2")
            _ = try runMerge("config.yml", out1 + "/m", in: caseDir, threads: 1)
            _ = try runMerge("config.yml", out2 + "/m", in: caseDir, threads: 2)
            let a = try Data(contentsOf: URL(fileURLWithPath: out1 + "/m/model.safetensors"))
            let b = try Data(contentsOf: URL(fileURLWithPath: out2 + "/m/model.safetensors"))
            XCTAssertEqual(a, b, "\(name): 1 and 2 threads differ")
            let got = try ModelFolder(path: out1 + "/m"), want = try ModelFolder(path: caseDir + "/expected")
            XCTAssertEqual(got.tensorNames, want.tensorNames, name)
            if name.hasPrefix("dare") { try checkDare(name, caseDir: caseDir, got: got); continue }
            for t in want.tensorNames {
                let g = try floats(got, t), e = try floats(want, t)
                XCTAssertEqual(got.info(t)?.dtype, want.info(t)?.dtype, "\(name) \(t) dtype")
                var bad = 0
                if want.info(t)?.dtype == .BF16 {
                    for (x, y) in zip(g, e) where abs(Int(x.bitPattern >> 16) - Int(y.bitPattern >> 16)) > 1 { bad += 1 }
                } else {
                    for (x, y) in zip(g, e) where abs(Double(x) - Double(y)) > 1e-6 + 1e-5 * abs(Double(y)) { bad += 1 }
                }
                XCTAssertEqual(bad, 0, "\(name): \(t) has \(bad) entries out of tolerance")
            }
            let cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out1 + "/m/config.json"))) as! [String: Any]
            let exp = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: caseDir + "/expected/config.json"))) as! [String: Any]
            XCTAssertEqual(cfg["dtype"] as? String, exp["dtype"] as? String, "\(name) config dtype")
        }
    }

    /// DARE: every entry of out - base is a sum over a subset of the experts' weighted
    /// (rescaled) deltas; each expert keeps a fraction within 4 sigma of its density.
    func checkDare(_ name: String, caseDir: String, got: ModelFolder) throws {
        let text = try String(contentsOfFile: caseDir + "/config.yml", encoding: .utf8)
        let cfg = try MergeConfig(yaml: text)
        let cwd = FileManager.default.currentDirectoryPath
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(caseDir), "cd \(caseDir)")
        defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
        let base = try ModelFolder(path: cfg.baseModel!)
        let experts = try cfg.models.map { try ModelFolder(path: $0.model) }
        let rescale = { if case .bool(false)? = cfg.parameters["rescale"] { return false }; return true }()
        let ctx = try Context(threads: 1)
        for t in base.tensorNames {
            let b = try floats(base, t), o = try floats(got, t)
            var terms: [[Double]] = []
            for (k, e) in experts.enumerated() {
                let x = try floats(e, t)
                guard case .number(let w)? = cfg.models[k].parameters["weight"], case .number(let d)? = cfg.models[k].parameters["density"] else { return XCTFail("config") }
                let (mask, scale) = try ctx.sparsifyMask(base: b, x, .dare(d, seed: 1, stream: Sparsifier.stream(tensor: t, expert: k), rescale: rescale ? .l1 : .none))
                let kept = (0..<b.count).filter { maskBit(mask, $0) }.count
                let sigma = (Double(b.count) * d * (1 - d)).squareRoot()
                XCTAssertLessThanOrEqual(abs(Double(kept) - d * Double(b.count)), 4 * sigma + 1, "\(name) \(t) expert \(k) kept \(kept)")
                terms.append((0..<b.count).map { Double(x[$0] - b[$0]) * Double(scale) * w })
            }
            var bad = 0
            for i in 0..<b.count {
                let diff = Double(o[i]) - Double(b[i])
                var best = Double.infinity
                for s in 0..<(1 << terms.count) {
                    var sum = 0.0
                    for k in 0..<terms.count where s & (1 << k) != 0 { sum += terms[k][i] }
                    best = min(best, abs(diff - sum))
                }
                if best > 1e-6 + 1e-5 * abs(Double(o[i])) { bad += 1 }
            }
            XCTAssertEqual(bad, 0, "\(name) \(t): \(bad) entries are no subset sum of the weighted deltas")
        }
    }
}

/// The tool's own behaviour: errors, sharding, bounded output protocol, parameters.
final class ToolTests: XCTestCase {
    func models(_ dir: String, experts: Int = 2, hidden: Int = 32, dtype: STDType = .F32) throws {
        var g = CheckpointGenerator()
        g.hidden = hidden; g.intermediate = 48; g.vocab = 64; g.experts = experts; g.dtype = dtype
        try g.write(to: dir)
    }

    func write(_ text: String, _ path: String) { try! text.write(toFile: path, atomically: true, encoding: .utf8) }

    func ties(_ extra: String = "") -> String {
        """
        merge_method: ties
        base_model: models/base
        models:
          - model: models/expert0
            parameters: {weight: 1.0, density: 0.5}
          - model: models/expert1
            parameters: {weight: 0.5, density: 0.3}
        dtype: float32
        \(extra)
        """
    }

    func expectError(_ config: String, in dir: String, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        write(config, dir + "/c.yml")
        XCTAssertThrowsError(try runMerge("c.yml", "out", in: dir), file: file, line: line) { e in
            let m = (e as? ToolError)?.message ?? "\(e)"
            XCTAssertTrue(m.contains(contains), "message \"\(m)\" lacks \"\(contains)\"", file: file, line: line)
        }
        // nothing that looks like a finished model is left behind
        let left = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        XCTAssertFalse(left.contains("out"), file: file, line: line)
        XCTAssertFalse(left.contains { $0.hasPrefix(".meld-tmp") }, file: file, line: line)
    }

    func testConfigErrors() throws {
        let d = tempDir("cfg")
        try models(d + "/models")
        expectError("merge_method: fancy\nmodels:\n  - model: models/base\n", in: d, contains: "supported: linear, task_arithmetic, ties")
        expectError(ties("colour: blue"), in: d, contains: "unknown key colour")
        expectError(ties().replacingOccurrences(of: "density: 0.5", with: "density: 1.5"), in: d, contains: "density = 1.5")
        expectError(ties().replacingOccurrences(of: "density: 0.5", with: "densty: 0.5"), in: d, contains: "parameter densty")
        expectError(ties().replacingOccurrences(of: "models/expert1", with: "models/nope"), in: d, contains: "models/nope does not exist")
        expectError(ties().replacingOccurrences(of: "models/expert1", with: "meta-llama/Llama-3.1-8B"), in: d, contains: "huggingface-cli download meta-llama/Llama-3.1-8B")
        expectError(ties().replacingOccurrences(of: "weight: 1.0, ", with: ""), in: d, contains: "has no weight")
        expectError(ties("out_dtype: int8"), in: d, contains: "out_dtype")
        // past f32's range a weight or lambda is refused by name, not as infinity by the kernels
        expectError(ties().replacingOccurrences(of: "weight: 0.5", with: "weight: -1e39"), in: d, contains: "weight = -1e+39 for model models/expert1")
        expectError(ties("parameters: {lambda: 4e38}"), in: d, contains: "lambda = 4e+38 for model (global)")
        expectError("merge_method: [ties\n", in: d, contains: "not valid YAML")
        // normalize divides by the weights' sum: a zero sum is refused, naming the tensor
        let linear = "merge_method: linear\nmodels:\n  - model: models/expert0\n    parameters: {weight: 1.0}\n  - model: models/expert1\n    parameters: {weight: -1.0}\n"
        expectError(linear, in: d, contains: "sum to 0")
        expectError(ties().replacingOccurrences(of: "merge_method: ties", with: "merge_method: slerp").replacingOccurrences(of: "{weight: 1.0, density: 0.5}", with: "{}").replacingOccurrences(of: "{weight: 0.5, density: 0.3}", with: "{}"), in: d, contains: "slerp needs")
        // without normalize, the same weights merge
        write(linear + "parameters: {normalize: false}\n", d + "/c.yml")
        XCTAssertNoThrow(try runMerge("c.yml", "out", in: d))
    }

    /// Mutated configs (tokens inserted, spans deleted or repeated; YAML syntax, anchors, odd
    /// numbers and keys among the tokens) each either merge into a complete output or fail with
    /// a ToolError that says something, leaving no output folder; none crashes the process.
    func testConfigFuzz() throws {
        let d = tempDir("cfg-fuzz")
        try models(d + "/models")
        let seeds = [ties(), ties("parameters: {normalize: false, int8_mask: true, lambda: 1.2}"),
                     ties().replacingOccurrences(of: "merge_method: ties", with: "merge_method: dare_linear")
                         .replacingOccurrences(of: "density: 0.5", with: "density: [0.2, 0.9]"),
                     """
                     merge_method: slerp
                     base_model: models/base
                     models:
                       - model: models/base
                       - model: models/expert0
                     parameters:
                       t:
                         - filter: self_attn
                           value: [0, 0.5, 1]
                         - value: 0.3
                     dtype: bfloat16
                     """]
        let tokens = ["[", "]", "{", "}", ":", "- ", " ", "\n", "  ", ".nan", ".inf", "-1", "1e39", "0", "\"", "'", "&a ", "*a",
                      "!!binary ", "~", "null", ",", "#", "? ", "|", ">", "\t", "1.5", "true", "model", "weight", "density",
                      "filter", "value", "[[]]", "{}", "%", "@", "models/base", "t", "dtype", "bfloat16", "float16", "int4"]
        var rng = Rng(2026)
        var merged = 0
        for iter in 0..<240 {
            var text = Array(seeds[iter % seeds.count].unicodeScalars)
            for _ in 0..<(iter % 3 == 2 ? 0 : 1 + rng.next() % 3) {
                let p = Int(rng.next() % UInt64(text.count + 1))
                switch rng.next() % 3 {
                case 0: text.insert(contentsOf: tokens[Int(rng.next() % UInt64(tokens.count))].unicodeScalars, at: p)
                case 1: text.removeSubrange(p..<min(text.count, p + 1 + Int(rng.next() % 8)))
                default:
                    let q = Int(rng.next() % UInt64(text.count + 1))
                    text.insert(contentsOf: text[q..<min(text.count, q + 1 + Int(rng.next() % 20))], at: p)
                }
            }
            var config = String(String.UnicodeScalarView(text))
            if iter % 3 == 2 { // a number replaced: the merge reaches its parameter checks and kernels
                let numbers = config.ranges(of: /-?[0-9][0-9.]*/)
                if !numbers.isEmpty {
                    let values = ["0", "-0.5", "1e-9", "2", "1e39", "-1e39", "0.99999", "1", "[0, 1]", "[]", "[0.5, 2, -1]", "3e-45", "65504"]
                    config.replaceSubrange(numbers[Int(rng.next() % UInt64(numbers.count))], with: values[Int(rng.next() % UInt64(values.count))])
                }
            }
            write(config, d + "/c.yml")
            try? FileManager.default.removeItem(atPath: d + "/out")
            do {
                let summary = try runMerge("c.yml", "out", in: d)
                XCTAssertGreaterThan(summary.tensors, 0, config)
                XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/out/config.json"), config)
                merged += 1
            } catch let e as ToolError {
                XCTAssertFalse(e.message.isEmpty, config)
                // a bare kernel status does not say which parameter is at fault (a weight of 1e39
                // reached the kernels as infinity)
                XCTAssertFalse(e.message.contains("out of its valid range"), "\(e.message) for\n\(config)")
                XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/out"), "a failed merge left out/: \(config)")
            } catch {
                XCTFail("not a ToolError: \(error) for\n\(config)")
            }
        }
        XCTAssertGreaterThan(merged, 20) // many mutations (spaces, comments, numbers in range) still merge: 31 of 240
    }

    /// Tensors with no elements (shape [0] or [2, 0], as safetensors allows) beside ordinary ones
    /// merge under every method: the output keeps their name, dtype and shape with an empty
    /// byte range, and the ordinary tensors are merged as usual.
    func testZeroSizeTensors() throws {
        let d = tempDir("zero-size")
        // name, dtype, shape; BF16 values are the high halves of normal f32 draws
        let layout: [(String, STDType, [Int])] = [("model.layers.0.a.weight", .F32, [4, 3]), ("model.layers.0.z", .F32, [0]),
                                                  ("model.layers.0.y", .BF16, [2, 0]), ("model.norm.weight", .BF16, [5])]
        var rng = Rng(5)
        for m in ["base", "e0", "e1"] {
            try FileManager.default.createDirectory(atPath: d + "/" + m, withIntermediateDirectories: true)
            let w = try ShardedWriter(directory: d + "/" + m, plan: layout.map { .init(name: $0.0, dtype: $0.1, shape: $0.2) }, shardSize: .max)
            for (name, dt, shape) in layout where shape.reduce(1, *) > 0 {
                let v = (0..<shape.reduce(1, *)).map { _ in rng.normal() }
                let bytes = dt == .F32 ? v.withUnsafeBytes { Data($0) } : Data(v.flatMap { withUnsafeBytes(of: UInt16($0.bitPattern >> 16).littleEndian) { Array($0) } })
                try bytes.withUnsafeBytes { try w.write(name, offset: 0, from: $0.baseAddress!, bytes: $0.count) }
            }
            try w.close()
            write("{\"architectures\": [\"LlamaForCausalLM\"], \"torch_dtype\": \"float32\"}", d + "/\(m)/config.json")
        }
        let two = "  - model: e0\n    parameters: {weight: 1.0, density: 0.5}\n  - model: e1\n    parameters: {weight: 0.5, density: 0.5}\n"
        let methods: [(String, String)] = [
            ("linear", two.replacingOccurrences(of: ", density: 0.5", with: "")),
            ("task_arithmetic", two.replacingOccurrences(of: ", density: 0.5", with: "")),
            ("nuslerp", two.replacingOccurrences(of: ", density: 0.5", with: "")),
            ("ties", two), ("dare_ties", two), ("dare_linear", two), ("breadcrumbs", two), ("breadcrumbs_ties", two),
            ("della", two), ("della_linear", two),
            ("slerp", "  - model: base\n  - model: e0\nparameters: {t: 0.3}\n"), ("model_stock", "  - model: e0\n  - model: e1\n")]
        for (method, models) in methods {
            write("merge_method: \(method)\nbase_model: base\nmodels:\n" + models, d + "/\(method).yml")
            let summary = try runMerge("\(method).yml", "out-\(method)", in: d)
            XCTAssertEqual(summary.tensors, layout.count, method)
            let out = try SafeTensorsFile(path: d + "/out-\(method)/model.safetensors")
            for (name, dt, shape) in layout {
                let t = try XCTUnwrap(out.tensors[name], "\(method): \(name)")
                XCTAssertEqual(t.dtype, dt, "\(method): \(name)")
                XCTAssertEqual(t.shape, shape, "\(method): \(name)")
                XCTAssertEqual(t.end - t.begin, shape.reduce(1, *) * dt.size, "\(method): \(name)")
            }
        }
    }

    /// --out-shard-size: mergekit's suffixes; nothing that is not a positive size up to Int.max
    /// (such a size used to trap in the conversion to Int).
    func testByteSizes() {
        XCTAssertEqual(parseByteSize("5B"), 5_000_000_000)
        XCTAssertEqual(parseByteSize("500m"), 500_000_000)
        XCTAssertEqual(parseByteSize("2GiB"), 2 << 30)
        XCTAssertEqual(parseByteSize("1.5K"), 1500)
        XCTAssertEqual(parseByteSize("4096"), 4096)
        for bad in ["0", "-1", "0.0001K", "5QB", "", "K", "inf", "infG", "nanM", "99999999999999999999G", "9223372036854775808"] {
            XCTAssertNil(parseByteSize(bad), bad)
        }
    }

    /// A merge stopped by a signal leaves nothing behind: `meld merge` removes its temporary
    /// folder, then dies of the signal (so its parent sees why it ended).
    func testInterruptedMergeLeavesNothing() throws {
        let bin = try meldExecutable()
        let d = tempDir("signal")
        try models(d + "/models")
        write(ties(), d + "/c.yml")
        for sig in [SIGTERM, SIGINT] {
            let p = Process()
            p.executableURL = bin
            p.arguments = ["merge", "c.yml", "out", "--quiet"]
            p.currentDirectoryURL = URL(fileURLWithPath: d)
            p.environment = ProcessInfo.processInfo.environment.merging(["MELD_TEST_STALL_AFTER": "2"]) { $1 }
            try p.run()
            let tmp = d + "/.meld-tmp-\(p.processIdentifier)-out", deadline = Date().addingTimeInterval(60)
            while !FileManager.default.fileExists(atPath: tmp + "/model.safetensors") && Date() < deadline { usleep(10_000) }
            XCTAssertTrue(FileManager.default.fileExists(atPath: tmp), "the merge never started writing")
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationReason, .uncaughtSignal)
            XCTAssertEqual(p.terminationStatus, sig)
            let left = try FileManager.default.contentsOfDirectory(atPath: d).filter { $0 != "models" && $0 != "c.yml" }
            XCTAssertEqual(left, [], "after signal \(sig)")
        }
    }

    /// The `meld` executable beside the test bundle (`swift test` builds it).
    func meldExecutable() throws -> URL {
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("meld")
        guard FileManager.default.isExecutableFile(atPath: bin.path) else {
            XCTFail("no meld executable at \(bin.path)")
            throw CocoaError(.fileNoSuchFile)
        }
        return bin
    }

    /// Runs the `meld` executable to its end: its exit status and what it wrote on stderr.
    func runMeld(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, stderr: String) {
        let p = Process(), err = Pipe()
        p.executableURL = try meldExecutable()
        p.arguments = arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        p.standardOutput = FileHandle.nullDevice
        p.standardError = err
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    /// --max-mapped: a tensor whose inputs exceed the budget is paged in windows, so the merge's
    /// peak memory falls by most of those inputs (embeddings and lm_head of 8.4M entries, 33.5 MB
    /// an input; mapped whole, 134 MB at the peak both for TIES over 4 inputs, with a merge plan,
    /// where a batch release separates the two tensors, and for SLERP over 2, through chunked
    /// linear passes, where it does not), and the output stays the same; bad budgets are refused
    /// by name. Under a sanitizer (CI sets MELD_SANITIZER) its shadow memory and quarantine of
    /// freed blocks decide the peak, so only the paging and the bytes are checked there.
    func testMaxMappedBoundsPeakMemory() throws {
        let rssChecked = ProcessInfo.processInfo.environment["MELD_SANITIZER"] == nil
        let d = tempDir("max-mapped")
        var g = CheckpointGenerator()
        g.hidden = 64; g.vocab = 131_072; g.layers = 1; g.intermediate = 64; g.heads = 4; g.kvHeads = 4; g.experts = 3
        try g.write(to: d + "/m")
        write("merge_method: ties\nbase_model: \(d)/m/base\nmodels:\n" + (0..<3).map {
            "  - model: \(d)/m/expert\($0)\n    parameters: {weight: \([1.0, 0.5, 0.7][$0]), density: \([0.3, 0.6, 0.5][$0])}\n" }.joined(), d + "/ties.yml")
        write("merge_method: slerp\nbase_model: \(d)/m/base\nmodels:\n  - model: \(d)/m/base\n  - model: \(d)/m/expert0\nparameters: {t: 0.3}\n", d + "/slerp.yml")
        func merge(_ method: String, _ budget: String) throws -> (paged: Int, peakMB: Int) {
            let (status, err) = try runMeld(["merge", d + "/\(method).yml", d + "/\(method)-\(budget)", "--quiet", "--max-mapped", budget],
                                            environment: ["MELD_TIMING": "1"])
            XCTAssertEqual(status, 0, err)
            let m = err.firstMatch(of: /paged (\d+) tensors, peak RSS (\d+) MB/)
            XCTAssertNotNil(m, "no timing line: \(err)")
            return (Int(m?.1 ?? "") ?? -1, Int(m?.2 ?? "") ?? -1)
        }
        // most of the 134 MB (paging one pass of SLERP but not the other saved 63 MB)
        var pagedPeak: [String: Int] = [:]
        for (method, drop) in [("ties", 90), ("slerp", 90)] {
            let whole = try merge(method, "1G"), paged = try merge(method, "4M")
            pagedPeak[method] = paged.peakMB
            XCTAssertEqual(whole.paged, 0, method)
            XCTAssertEqual(paged.paged, 2, method)
            if rssChecked { XCTAssertLessThan(paged.peakMB, whole.peakMB - drop, "\(method): peak RSS \(paged.peakMB) MB paged, \(whole.peakMB) MB whole") }
            XCTAssertEqual(FileManager.default.contents(atPath: d + "/\(method)-1G/model.safetensors"),
                           FileManager.default.contents(atPath: d + "/\(method)-4M/model.safetensors"), method)
        }
        // a narrower compute dtype: the 64 MB of rounded copies are paged too (from scratch files),
        // so they add little to the peak of the same merge in f32 (they added 41 MB when whole)
        write(try String(contentsOfFile: d + "/ties.yml", encoding: .utf8) + "dtype: bfloat16\n", d + "/ties_bf16.yml")
        let whole16 = try merge("ties_bf16", "1G"), paged16 = try merge("ties_bf16", "4M"), paged32 = pagedPeak["ties"] ?? 0
        XCTAssertEqual(paged16.paged, 2)
        if rssChecked {
            XCTAssertLessThan(paged16.peakMB, paged32 + 24, "peak RSS \(paged16.peakMB) MB paged in bf16, \(paged32) MB in f32")
            XCTAssertLessThan(paged16.peakMB, whole16.peakMB - 150, "peak RSS \(paged16.peakMB) MB paged, \(whole16.peakMB) MB whole")
        }
        XCTAssertEqual(FileManager.default.contents(atPath: d + "/ties_bf16-1G/model.safetensors"),
                       FileManager.default.contents(atPath: d + "/ties_bf16-4M/model.safetensors"))
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: d + "/ties_bf16-4M").contains { $0.hasPrefix(".meld-scratch") })
        for bad in ["0", "512K", "lots"] {
            let (status, err) = try runMeld(["merge", d + "/ties.yml", d + "/bad", "--max-mapped", bad])
            XCTAssertNotEqual(status, 0)
            XCTAssertTrue(err.contains("--max-mapped \(bad)"), err)
        }
    }

    /// The README's main job, `meld example DIR`, in a folder whose name YAML would misread
    /// unquoted; a file in place of the folder is a clear error that names it.
    func testExampleCommand() throws {
        let dir = tempDir("example") + "/a b#: \"c\\"
        XCTAssertEqual(try runMeld(["example", dir]).status, 0)
        XCTAssertEqual(try ModelFolder(path: dir + "/merged").tensorNames.count, 21)
        let f = tempDir("example-file") + "/file"
        write("x", f)
        let (status, stderr) = try runMeld(["example", f])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(stderr.contains(f) && stderr.contains("is a file"), stderr)
    }

    /// `meld generate`'s checks: the byte count it computes with checked arithmetic is the
    /// models' size; bad shapes are refused by name.
    func testGeneratorValidation() throws {
        var g = CheckpointGenerator()
        g.hidden = 48; g.heads = 4; g.kvHeads = 2; g.intermediate = 80; g.vocab = 100; g.layers = 3; g.experts = 2; g.dtype = .BF16
        XCTAssertEqual(try g.validate(dir: NSTemporaryDirectory()), g.parameterCount * 2 * 3)
        func refused(_ change: (inout CheckpointGenerator) -> Void, _ text: String, line: UInt = #line) {
            var b = g
            change(&b)
            XCTAssertThrowsError(try b.validate(dir: NSTemporaryDirectory()), line: line) { XCTAssertTrue("\($0)".contains(text), "\($0)", line: line) }
        }
        refused({ $0.hidden = 0 }, "--hidden 0")
        refused({ $0.layers = -1 }, "--layers -1")
        refused({ $0.experts = -1 }, "--experts -1")
        refused({ $0.heads = 5 }, "does not divide --hidden")
        refused({ $0.kvHeads = 3 }, "does not divide --heads")
        refused({ $0.hidden = 1 << 40; $0.heads = 1; $0.kvHeads = 1 }, "do not fit")
        refused({ $0.hidden = 1 << 20; $0.heads = 1; $0.kvHeads = 1; $0.vocab = 1 << 20 }, "GB free")
    }

    func testModelMismatches() throws {
        let d = tempDir("mis")
        try models(d + "/models")
        try models(d + "/wide", hidden: 48)
        try models(d + "/half", dtype: .BF16)
        expectError(ties().replacingOccurrences(of: "models/expert1", with: "wide/expert1"), in: d, contains: "has shape")
        // a model without one of the tensors
        let f = try ModelFolder(path: d + "/models/expert0")
        let names = f.tensorNames.filter { $0 != "model.norm.weight" }
        try FileManager.default.createDirectory(atPath: d + "/partial", withIntermediateDirectories: true)
        let w = try ShardedWriter(directory: d + "/partial", plan: names.map { .init(name: $0, dtype: .F32, shape: f.info($0)!.shape) }, shardSize: .max)
        try w.close()
        expectError(ties().replacingOccurrences(of: "models/expert1", with: "partial"), in: d, contains: "model.norm.weight is missing")
        // a tensor that is not floating point
        try FileManager.default.createDirectory(atPath: d + "/ints", withIntermediateDirectories: true)
        let iw = try ShardedWriter(directory: d + "/ints", plan: f.tensorNames.map { .init(name: $0, dtype: $0 == "model.norm.weight" ? .I32 : .F32, shape: f.info($0)!.shape) }, shardSize: .max)
        try iw.close()
        expectError(ties().replacingOccurrences(of: "models/expert1", with: "ints"), in: d, contains: "has dtype I32 in")
    }

    /// Models of different float dtypes merge (a bf16 fine-tune of an f32 base): each input is
    /// widened exactly, so the result equals the merge of an f32 copy of the bf16 model.
    func testMixedDtypes() throws {
        let d = tempDir("mixed")
        try models(d + "/models")
        try models(d + "/half", dtype: .BF16)
        let half = try ModelFolder(path: d + "/half/expert1")
        try FileManager.default.createDirectory(atPath: d + "/wide", withIntermediateDirectories: true)
        let w = try ShardedWriter(directory: d + "/wide", plan: half.tensorNames.map { .init(name: $0, dtype: .F32, shape: half.info($0)!.shape) }, shardSize: .max)
        for n in half.tensorNames {
            let v = try floats(half, n)
            try v.withUnsafeBytes { try w.write(n, offset: 0, from: $0.baseAddress!, bytes: $0.count) }
        }
        try w.close()
        for (method, dtype) in [("ties", true), ("ties", false), ("task_arithmetic", true)] {
            var cfg = method == "ties" ? ties() : ties().replacingOccurrences(of: "merge_method: ties", with: "merge_method: task_arithmetic")
                .replacingOccurrences(of: ", density: 0.5", with: "").replacingOccurrences(of: ", density: 0.3", with: "")
            if !dtype { cfg = cfg.replacingOccurrences(of: "dtype: float32", with: "") }
            write(cfg.replacingOccurrences(of: "models/expert1", with: "half/expert1"), d + "/mixed.yml")
            write(cfg.replacingOccurrences(of: "models/expert1", with: "wide"), d + "/wide.yml")
            _ = try runMerge("mixed.yml", "out-mixed", in: d)
            _ = try runMerge("wide.yml", "out-wide", in: d)
            let a = try ModelFolder(path: d + "/out-mixed"), b = try ModelFolder(path: d + "/out-wide")
            for n in a.tensorNames {
                XCTAssertEqual(a.info(n)?.dtype, .F32, "the base's dtype")
                XCTAssertEqual(try floats(a, n).map(\.bitPattern), try floats(b, n).map(\.bitPattern), "\(method) \(n)")
            }
        }
    }

    func testExistingOutputIsRefused() throws {
        let d = tempDir("exist")
        try models(d + "/models")
        write(ties(), d + "/c.yml")
        try FileManager.default.createDirectory(atPath: d + "/out", withIntermediateDirectories: true)
        let cwd = FileManager.default.currentDirectoryPath
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(d), "cd \(d)")
        defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
        var r = MergeRequest(configPath: "c.yml", outDir: "out")
        r.quiet = true
        XCTAssertThrowsError(try Merger.run(r)) { XCTAssertTrue("\($0)".contains("already exists")) }
        r.overwrite = true
        // never an input model, even with overwrite
        var into = MergeRequest(configPath: "c.yml", outDir: "models/expert1/../expert1")
        into.quiet = true; into.overwrite = true
        XCTAssertThrowsError(try Merger.run(into)) { XCTAssertTrue("\($0)".contains("is an input model"), "\($0)") }
        XCTAssertNoThrow(try ModelFolder(path: d + "/models/expert1"))
        // nor a folder that holds inputs or the config (it would be deleted whole)
        for (dir, text) in [("models", "holds the input model"), (".", "holds the input model")] {
            var holder = MergeRequest(configPath: "c.yml", outDir: dir)
            holder.quiet = true; holder.overwrite = true
            XCTAssertThrowsError(try Merger.run(holder)) { XCTAssertTrue("\($0)".contains(text), "\($0)") }
        }
        try FileManager.default.createDirectory(atPath: d + "/cfg", withIntermediateDirectories: true)
        write(ties(), d + "/cfg/c.yml") // model paths resolve against the working directory
        var cfgHolder = MergeRequest(configPath: "cfg/c.yml", outDir: "cfg")
        cfgHolder.quiet = true; cfgHolder.overwrite = true
        XCTAssertThrowsError(try Merger.run(cfgHolder)) { XCTAssertTrue("\($0)".contains("holds the config"), "\($0)") }
        XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/cfg/c.yml"))
        XCTAssertNoThrow(try ModelFolder(path: d + "/models/base"))
        XCTAssertNoThrow(try Merger.run(r))
        // an output named through itself and ".." is replaced in place (its parent path "out/.." vanished
        // with the old output, which was then left under a temporary name)
        var dotted = MergeRequest(configPath: "c.yml", outDir: "out/../out")
        dotted.quiet = true; dotted.overwrite = true
        XCTAssertNoThrow(try Merger.run(dotted))
        XCTAssertNoThrow(try ModelFolder(path: d + "/out"))
    }

    /// Small shards + index give the same tensors as one file; the index is consistent.
    func testShardingAndIndex() throws {
        let d = tempDir("shard")
        try models(d + "/models")
        write(ties(), d + "/c.yml")
        _ = try runMerge("c.yml", "one", in: d)
        _ = try runMerge("c.yml", "many", in: d, shard: 20_000)
        let one = try ModelFolder(path: d + "/one"), many = try ModelFolder(path: d + "/many")
        XCTAssertGreaterThan(many.files.count, 2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/many/model.safetensors.index.json"))
        XCTAssertEqual(one.tensorNames, many.tensorNames)
        for t in one.tensorNames { XCTAssertEqual(try floats(one, t), try floats(many, t)) }
        // merged shards can be merged again (the reader accepts the index)
        write(ties().replacingOccurrences(of: "models/expert1", with: "many"), d + "/c2.yml")
        XCTAssertNoThrow(try runMerge("c2.yml", "again", in: d))
        // an index that lists a tensor twice is refused, naming it
        let indexPath = d + "/many/model.safetensors.index.json"
        var index = try String(contentsOfFile: indexPath, encoding: .utf8)
        let first = try XCTUnwrap(try JSON.parse(Array(index.utf8))["weight_map"]?.members?.first)
        index = index.replacingOccurrences(of: "\"weight_map\": {", with: "\"weight_map\": {\"\(first.key)\": \"\(first.value.string!)\", ")
        try index.write(toFile: indexPath, atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try ModelFolder(path: d + "/many")) { XCTAssertTrue("\($0)".contains("weight_map lists \(first.key) twice"), "\($0)") }
    }

    /// The writer's ring: tensors of odd sizes across shards, written through reservations
    /// (chunks) and through `write` (unaligned heads and tails, blocks straight from the caller),
    /// with pwrite on the writer's thread, by side work and inline, read back byte for byte; a
    /// write out of file order is an error; a failing pwrite surfaces in every mode.
    func testWriterRingAcrossShardsAndBlocks() throws {
        let d = tempDir("ring")
        let counts = [5, 1_300_001, 700_001, 3, 2_600_007, 17, 524_288, 1]
        let names = counts.indices.map { "t\($0)" }
        let plan = zip(names, counts).map { ShardedWriter.Planned(name: $0, dtype: .F32, shape: [$1]) }
        func value(_ t: Int, _ i: Int) -> Float { Float(t * 10_000_000 + i) }
        for mode in [WriteMode.thread, .side, .inline] {
            try? FileManager.default.removeItem(atPath: d)
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            let w = try ShardedWriter(directory: d, plan: plan, shardSize: 9_000_000, writes: mode)
            for (t, n) in counts.enumerated() {
                if t % 2 == 0 {   // caller buffer, written at once
                    var buf = (0..<n).map { value(t, $0) }
                    try buf.withUnsafeMutableBytes { try w.write(names[t], offset: 0, from: $0.baseAddress!, bytes: n * 4) }
                } else {          // chunks of 400_000 elements filled in the ring
                    var first = 0
                    while first < n {
                        let c = min(400_000, n - first)
                        let p = try w.reserve(names[t], offset: first * 4, bytes: c * 4).bindMemory(to: Float.self, capacity: c)
                        for i in 0..<c { p[i] = value(t, first + i) }
                        try w.commit(c * 4)
                        if first % 800_000 == 0 { _ = w.sideWork() }   // as the kernels' threads would, now and then
                        first += c
                    }
                }
            }
            try w.close()
            let f = try ModelFolder(path: d)
            XCTAssertEqual(f.files.count, 3)
            for (t, n) in counts.enumerated() {
                let v = try f.view(names[t])
                XCTAssertEqual(v.count, n)
                let p = v.data!.bindMemory(to: Float.self, capacity: n)
                var bad = 0
                for i in 0..<n where p[i] != value(t, i) { bad += 1 }
                XCTAssertEqual(bad, 0, "tensor \(names[t]), writes: \(mode)")
            }
        }
        let w2 = try ShardedWriter(directory: tempDir("ring-order"), plan: plan, shardSize: .max)
        var one: Float = 1
        XCTAssertThrowsError(try w2.write(names[1], offset: 0, from: &one, bytes: 4)) { e in
            XCTAssertTrue("\(e)".contains("out of order"), "\(e)")
        }
        // chunks filled at memory speed: the caller outruns the writer thread and writes pieces
        // itself while it waits for room, both at once
        let big = 12_000_003, dBig = tempDir("ring-big")
        let wb = try ShardedWriter(directory: dBig, plan: [.init(name: "a", dtype: .F32, shape: [3]), .init(name: "big", dtype: .F32, shape: [big])],
                                   shardSize: .max, writes: .thread)
        var three: [Float] = [7, 8, 9]
        try three.withUnsafeMutableBytes { try wb.write("a", offset: 0, from: $0.baseAddress!, bytes: 12) }
        var first = 0
        while first < big {
            let c = min(1 << 20, big - first)
            let p = try wb.reserve("big", offset: first * 4, bytes: c * 4).bindMemory(to: Float.self, capacity: c)
            p.update(repeating: Float(first >> 20), count: c)
            try wb.commit(c * 4)
            first += c
        }
        try wb.close()
        let fb = try ModelFolder(path: dBig)
        XCTAssertEqual(try floats(fb, "a"), three)
        let vb = try fb.view("big").data!.bindMemory(to: Float.self, capacity: big)
        var badBig = 0
        for i in 0..<big where vb[i] != Float(i >> 20) { badBig += 1 }
        XCTAssertEqual(badBig, 0)
        // a failing pwrite (here: the shard's descriptor made read-only under the writer) surfaces
        // as an error naming the file, from the writer's thread too, by close() at the latest
        for mode in [WriteMode.thread, .side, .inline] {
            let w3 = try ShardedWriter(directory: tempDir("ring-fail"), plan: plan, shardSize: .max, writes: mode)
            var buf = [Float](repeating: 1, count: counts[0])
            try buf.withUnsafeMutableBytes { try w3.write(names[0], offset: 0, from: $0.baseAddress!, bytes: counts[0] * 4) }
            let readOnly = open("/dev/null", O_RDONLY)
            XCTAssertEqual(dup2(readOnly, w3.shards[0].fd), w3.shards[0].fd)
            Glibc.close(readOnly)
            XCTAssertThrowsError(try {
                let n = counts[1]
                _ = try w3.reserve(names[1], offset: 0, bytes: 4 << 20)
                try w3.commit(4 << 20)
                if mode == .side { XCTAssertTrue(w3.sideWork(), "a published piece to write") }   // fails, kept for later
                var rest = [Float](repeating: 2, count: n - (1 << 20))
                try rest.withUnsafeMutableBytes { try w3.write(names[1], offset: 4 << 20, from: $0.baseAddress!, bytes: (n - (1 << 20)) * 4) }
                try w3.close()
            }()) { e in
                XCTAssertTrue("\(e)".contains("cannot write") && "\(e)".contains("model.safetensors"), "\(e)")
            }
        }
    }

    /// The merge's output chunks: whole ranges from range-aligned starts, a chunk that would
    /// cross the ring's end cut short before it and the next one range, every byte in place,
    /// in f32 and bf16 (tensors of 7M elements go round the 20 MiB ring).
    func testOutputChunksAroundTheRing() throws {
        let align = MergePlan.rangeAlignment
        for (dtype, st) in [(DType.f32, STDType.F32), (.bf16, .BF16)] {
            let counts = [3, 7_000_003, 5_000_001]
            let names = counts.indices.map { "t\($0)" }
            let d = tempDir("chunks-\(st.rawValue)")
            let w = try ShardedWriter(directory: d, plan: zip(names, counts).map { .init(name: $0, dtype: st, shape: [$1]) }, shardSize: .max)
            var cut = 0
            for (t, n) in counts.enumerated() {
                let sink = Merger.TensorSink(writer: w, name: names[t], dtype: dtype, count: n, chunks: true, pager: nil)
                var next = 0
                try sink.chunked { first, out in
                    XCTAssertEqual(first, next, "chunks in order")
                    XCTAssertEqual(first % align, 0, "a chunk starts on a range")
                    XCTAssertTrue(out.count % align == 0 || first + out.count == n, "a chunk is whole ranges, but the tensor's last")
                    if out.count < min(Merger.TensorSink.chunk, n - first) { cut += 1 }
                    for i in 0..<out.count {   // element i of tensor t: t + i % 199, exact in bf16 too
                        let v = Float(t + (first + i) % 199)
                        if dtype == .f32 { out.data!.storeBytes(of: v, toByteOffset: 4 * i, as: Float.self) }
                        else { out.data!.storeBytes(of: UInt16(v.bitPattern >> 16), toByteOffset: 2 * i, as: UInt16.self) }
                    }
                    next = first + out.count
                }
                XCTAssertEqual(next, n)
            }
            try w.close()
            XCTAssertGreaterThan(cut, 0, "\(st.rawValue): no chunk cut short at the ring's end")
            let f = try ModelFolder(path: d)
            for (t, n) in counts.enumerated() {
                let v = try floats(f, names[t])
                var bad = 0
                for i in 0..<n where v[i] != Float(t + i % 199) { bad += 1 }
                XCTAssertEqual(bad, 0, "\(st.rawValue) tensor \(names[t])")
            }
        }
    }

    /// Truncated and corrupt safetensors: clear errors naming the file, never a crash.
    func testCorruptFiles() throws {
        let d = tempDir("corrupt")
        try models(d + "/models")
        let path = d + "/models/expert1/model.safetensors"
        let good = try Data(contentsOf: URL(fileURLWithPath: path))
        try good.prefix(good.count - 100).write(to: URL(fileURLWithPath: path))
        expectError(ties(), in: d, contains: "out of bounds")
        try good.prefix(5).write(to: URL(fileURLWithPath: path))
        expectError(ties(), in: d, contains: "truncated")
        var bad = good
        bad[8] = UInt8(ascii: "[")
        try bad.write(to: URL(fileURLWithPath: path))
        expectError(ties(), in: d, contains: "header is not valid JSON: expected ',' or ']' in an array at byte")
        // valid JSON, but not an object: the header's bytes become [0, 0, ...] of the same length
        let hlen = Int(good.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        bad = good
        bad.replaceSubrange(8 ..< 8 + hlen, with: Array(("[" + String(repeating: "0,", count: (hlen - 3) / 2) + "0" + String(repeating: " ", count: (hlen - 3) % 2) + "]").utf8))
        try bad.write(to: URL(fileURLWithPath: path))
        expectError(ties(), in: d, contains: "header is not a JSON object")
        // a tensor named twice: the header's first entry repeated in place of its padding
        let header = String(decoding: good[8 ..< 8 + hlen], as: UTF8.self)
        let root = try JSON.parse(Array(header.utf8))
        let entry = try XCTUnwrap(root.members?.first { $0.key != "__metadata__" })
        let twice = JSON.object(root.members! + [entry]).serialized()
        var h = Data(count: 8)
        h.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(twice.utf8.count).littleEndian, as: UInt64.self) }
        try (h + Data(twice.utf8) + good.suffix(from: 8 + hlen)).write(to: URL(fileURLWithPath: path))
        expectError(ties(), in: d, contains: "tensor \(entry.key) appears twice in the header")
    }

    /// Fuzz the header parser with random and mutated headers: errors, never crashes.
    func testHeaderFuzz() throws {
        let d = tempDir("fuzz")
        try models(d + "/m", experts: 0)
        let good = try Data(contentsOf: URL(fileURLWithPath: d + "/m/base/model.safetensors"))
        let hlen = Int(good.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        var rng = Rng(77)
        var accepted = 0
        for iter in 0..<400 {
            var data = good
            switch iter % 4 {
            case 0: // flip bytes in the header
                for _ in 0..<(1 + Int(rng.next() % 4)) { data[8 + Int(rng.next() % UInt64(hlen))] = UInt8(truncatingIfNeeded: rng.next()) }
            case 1: // random header bytes of a random length
                let n = Int(rng.next() % 200)
                var h = Data(count: 8)
                h.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(n).littleEndian, as: UInt64.self) }
                h.append(Data((0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
                data = h
            case 2: // digits mutated: offsets and shapes
                let s = String(decoding: good[8..<(8 + hlen)], as: UTF8.self)
                let mutated = String(s.map { c in c.isNumber && rng.next() % 5 == 0 ? Character(String(rng.next() % 10)) : c })
                data = good.prefix(8) + Data(mutated.utf8) + good.suffix(from: 8 + hlen)
            default: // wrong header length
                data.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(rng.next() % UInt64(good.count * 2)).littleEndian, as: UInt64.self) }
            }
            let p = d + "/f.safetensors"
            try data.write(to: URL(fileURLWithPath: p))
            if (try? SafeTensorsFile(path: p)) != nil { accepted += 1 }
        }
        XCTAssertLessThan(accepted, 400) // most mutations are caught; none crashed
    }

    func testParameterResolution() throws {
        let cfg = try MergeConfig(yaml: """
        merge_method: ties
        base_model: b
        models:
          - model: x
            parameters:
              weight: [0.2, 0.8]
              density:
                - filter: mlp
                  value: [0.6, 0.2, 0.4]
                - value: 0.3
        parameters: {lambda: 2}
        """)
        let d = cfg.models[0].parameters["density"]!, w = cfg.models[0].parameters["weight"]!
        XCTAssertEqual(d.resolve(tensor: "model.layers.0.mlp.up_proj.weight", t: 0), 0.6)
        XCTAssertEqual(d.resolve(tensor: "model.layers.1.mlp.up_proj.weight", t: 0.5)!, 0.2, accuracy: 1e-12)
        XCTAssertEqual(d.resolve(tensor: "model.layers.1.mlp.up_proj.weight", t: 0.75)!, 0.3, accuracy: 1e-12)
        XCTAssertEqual(d.resolve(tensor: "model.layers.0.self_attn.q_proj.weight", t: 0), 0.3)
        XCTAssertEqual(w.resolve(tensor: "x", t: 0.25)!, 0.35, accuracy: 1e-12)
        XCTAssertEqual(cfg.parameters["lambda"], .number(2))
        XCTAssertEqual(Merger.Plan.layerIndex("model.layers.12.mlp.up_proj.weight"), 12)
        XCTAssertNil(Merger.Plan.layerIndex("model.embed_tokens.weight"))
    }

    /// Every method runs end to end on generated models, in f32 and bf16, and bf16 output
    /// keeps the input's dtype in config.json.
    /// Tensors larger than the writer's chunk are merged and written in ranges: the bytes equal the
    /// one-call kernels' (TIES and DARE through a merge plan, linear by sub-views), with and
    /// without --fsync.
    func testChunkedOutputEqualsWholeTensorKernels() throws {
        let d = tempDir("chunks")
        var g = CheckpointGenerator()
        g.hidden = 64; g.vocab = Merger.TensorSink.chunk / 64 + 1000; g.layers = 1; g.intermediate = 32; g.experts = 2
        try g.write(to: d + "/m")
        let name = "lm_head.weight"
        XCTAssertGreaterThan(g.vocab * g.hidden, Merger.TensorSink.chunk)
        let configs = [
            ("ties", "merge_method: ties\nbase_model: m/base\nmodels:\n  - model: m/expert0\n    parameters: {weight: 1.0, density: 0.3}\n  - model: m/expert1\n    parameters: {weight: 0.5, density: 0.6}\n"),
            ("dare_ties", "merge_method: dare_ties\nbase_model: m/base\nmodels:\n  - model: m/expert0\n    parameters: {weight: 1.0, density: 0.3}\n  - model: m/expert1\n    parameters: {weight: 0.5, density: 0.6}\n"),
            ("linear", "merge_method: linear\nmodels:\n  - model: m/expert0\n    parameters: {weight: 1.0}\n  - model: m/expert1\n    parameters: {weight: 0.5}\n"),
            // the geometric merges: whole-tensor weights, then chunks
            ("slerp", "merge_method: slerp\nbase_model: m/base\nmodels:\n  - model: m/base\n  - model: m/expert0\nparameters: {t: 0.3}\n"),
            ("nuslerp", "merge_method: nuslerp\nbase_model: m/base\nmodels:\n  - model: m/expert0\n    parameters: {weight: 1.0}\n  - model: m/expert1\n    parameters: {weight: 3.0}\n"),
            ("model_stock", "merge_method: model_stock\nbase_model: m/base\nmodels:\n  - model: m/expert0\n  - model: m/expert1\n"),
            // checked against the unpaged merge only: DELLA's rows, breadcrumbs' two selections,
            // and inputs rounded to a narrower dtype (copies that paging must leave alone)
            ("della", "merge_method: della\nbase_model: m/base\nmodels:\n  - model: m/expert0\n    parameters: {weight: 1.0, density: 0.4, epsilon: 0.1}\n  - model: m/expert1\n    parameters: {weight: 0.5, density: 0.6, epsilon: 0.2}\n"),
            ("breadcrumbs_ties", "merge_method: breadcrumbs_ties\nbase_model: m/base\nmodels:\n  - model: m/expert0\n    parameters: {weight: 1.0, density: 0.4, gamma: 0.05}\n  - model: m/expert1\n    parameters: {weight: 0.5, density: 0.6, gamma: 0.02}\n"),
            ("ties_dtype_bf16", "merge_method: ties\nbase_model: m/base\nmodels:\n  - model: m/expert0\n    parameters: {weight: 1.0, density: 0.3}\n  - model: m/expert1\n    parameters: {weight: 0.5, density: 0.6}\ndtype: bfloat16\nout_dtype: float32\n"),
        ]
        let base = try ModelFolder(path: d + "/m/base")
        let xs = try (0..<2).map { try ModelFolder(path: d + "/m/expert\($0)") }
        let b = try floats(base, name), x = try xs.map { try floats($0, name) }
        let ctx = try Context(threads: 2)
        for (method, yaml) in configs {
            write(yaml, d + "/c.yml")
            XCTAssertEqual(try runMerge("c.yml", "out-\(method)", in: d, seed: 7).pagedTensors, 0)
            var r = MergeRequest(configPath: d + "/c.yml", outDir: d + "/out-\(method)-sync")
            r.seed = 7; r.quiet = true; r.sync = true; r.threads = 2
            let cwd = FileManager.default.currentDirectoryPath
            _ = FileManager.default.changeCurrentDirectoryPath(d)
            defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
            _ = try Merger.run(r)
            // paged: a map budget of 1 MiB pages the 4.5 MB lm_head inputs in 64 KiB windows
            r.outDir = d + "/out-\(method)-paged"; r.sync = false; r.mapBudget = 1 << 20
            XCTAssertEqual(try Merger.run(r).pagedTensors, 2, method + ": embed_tokens and lm_head must be paged")
            let file = "/model.safetensors"
            XCTAssertEqual(FileManager.default.contents(atPath: d + "/out-\(method)" + file),
                           FileManager.default.contents(atPath: d + "/out-\(method)-paged" + file), method + ": paging changed the output")
            let got = try floats(try ModelFolder(path: d + "/out-\(method)"), name)
            let synced = try floats(try ModelFolder(path: d + "/out-\(method)-sync"), name)
            let want: [Float]
            switch method {
            case "della", "breadcrumbs_ties", "ties_dtype_bf16": continue
            case "linear": want = try ctx.linear(x, weights: [1, 0.5])
            case "slerp": want = try ctx.slerp(t: 0.3, b, x[0])
            case "nuslerp": want = try ctx.nuslerp(base: b, x[0], x[1], weights: (1, 3))
            case "model_stock": want = try ctx.modelStock(base: b, x).merged
            default:
                let sp: [Sparsifier] = method == "ties" ? [.magnitude(0.3), .magnitude(0.6)]
                    : (0..<2).map { .dare([0.3, 0.6][$0], seed: 7, stream: Sparsifier.stream(tensor: name, expert: $0)) }
                // mergekit: ties normalizes by default, dare_ties does not
                want = try ctx.mergeTaskVectors(base: b, x, weights: [1, 0.5], sparsifiers: sp,
                                                options: MergeOptions(consensus: .sum, divisor: method == "ties" ? .weightSum : .none))
            }
            XCTAssertEqual(got.count, want.count)
            XCTAssertNil(got.indices.first { got[$0].bitPattern != want[$0].bitPattern }, method)
            XCTAssertNil(got.indices.first { synced[$0].bitPattern != want[$0].bitPattern }, method + " --fsync")
        }
    }

    func testAllMethodsRun() throws {
        let d = tempDir("all")
        try models(d + "/models", experts: 3)
        try models(d + "/bf", experts: 3, dtype: .BF16)
        let two = "  - model: M/expert0\n    parameters: {weight: 0.6, density: 0.5}\n  - model: M/expert1\n    parameters: {weight: 0.4, density: 0.6}\n"
        // "mixed": an f32 base with a bf16 expert0; the same bytes on 1 and 2 threads
        func paths(_ yaml: String, _ dir: String) -> String {
            dir != "mixed" ? yaml.replacingOccurrences(of: "M/", with: dir + "/")
                : yaml.replacingOccurrences(of: "M/expert0", with: "bf/expert0").replacingOccurrences(of: "M/", with: "models/")
        }
        for dir in ["models", "bf", "mixed"] {
            for m in ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"] {
                var body = two
                if m == "linear" || m == "task_arithmetic" { body = body.replacingOccurrences(of: ", density: 0.5", with: "").replacingOccurrences(of: ", density: 0.6", with: "") }
                let yaml = "merge_method: \(m)\nbase_model: M/base\nmodels:\n" + body
                write(paths(yaml, dir), d + "/c.yml")
                let s = try runMerge("c.yml", "out-\(m)", in: d)
                XCTAssertEqual(s.tensors, 21, m)
                let out = try ModelFolder(path: d + "/out-\(m)")
                XCTAssertEqual(out.info("lm_head.weight")?.dtype, dir == "bf" ? .BF16 : .F32)
                if dir == "mixed" {
                    _ = try runMerge("c.yml", "out1-\(m)", in: d, threads: 1)
                    XCTAssertEqual(FileManager.default.contents(atPath: d + "/out1-\(m)/model.safetensors"),
                                   FileManager.default.contents(atPath: d + "/out-\(m)/model.safetensors"), "mixed \(m), 1 vs 2 threads")
                }
            }
            let rest = [
                "merge_method: slerp\nbase_model: M/base\nmodels:\n  - model: M/base\n  - model: M/expert0\nparameters: {t: [0, 1]}\n",
                "merge_method: nuslerp\nbase_model: M/base\nmodels:\n  - model: M/expert0\n    parameters: {weight: 1}\n  - model: M/expert1\n    parameters: {weight: 2}\n",
                "merge_method: model_stock\nbase_model: M/base\nmodels:\n  - model: M/expert0\n  - model: M/expert1\n  - model: M/expert2\n",
            ]
            for (i, y) in rest.enumerated() {
                write(paths(y, dir), d + "/c.yml")
                XCTAssertEqual(try runMerge("c.yml", "out-r\(i)", in: d).tensors, 21)
            }
        }
    }
}
