import Foundation
import Meld

/// A Hugging Face model folder: config.json plus model.safetensors, or shards listed in
/// model.safetensors.index.json (checked for consistency both ways).
public final class ModelFolder {
    public let path: String
    /// config.json (an empty object when the folder has none)
    public let config: JSON
    public let files: [SafeTensorsFile]
    public let tensorFile: [String: SafeTensorsFile]

    public init(path: String) throws {
        self.path = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ToolError("model folder \(path) does not exist")
        }
        guard isDir.boolValue else { throw ToolError("model \(path) is a file, not a model folder") }
        let cfgPath = path + "/config.json"
        if let d = FileManager.default.contents(atPath: cfgPath) {
            let c: JSON
            do { c = try JSON.parse(d) } catch { throw ToolError("\(cfgPath) is not valid JSON: \(error)") }
            guard c.members != nil else { throw ToolError("\(cfgPath) is not a JSON object") }
            config = c
        } else {
            config = .object([])
        }
        let index = path + "/model.safetensors.index.json"
        var map: [String: SafeTensorsFile] = [:]
        if let d = FileManager.default.contents(atPath: index) {
            let obj: JSON
            do { obj = try JSON.parse(d) } catch { throw ToolError("\(index) is not valid JSON: \(error)") }
            guard let wm = obj["weight_map"]?.members else { throw ToolError("\(index): no weight_map object") }
            var opened: [String: SafeTensorsFile] = [:]
            for m in wm {
                let (tensor, fileValue) = (m.key, m.value)
                guard map[tensor] == nil else { throw ToolError("\(index): weight_map lists \(tensor) twice") }
                guard let file = fileValue.string, !file.contains("/") else { throw ToolError("\(index): weight_map[\(tensor)] is not a file name") }
                if opened[file] == nil { opened[file] = try SafeTensorsFile(path: path + "/" + file) }
                guard opened[file]!.tensors[tensor] != nil else { throw ToolError("\(index): \(tensor) is mapped to \(file), which does not contain it") }
                map[tensor] = opened[file]!
            }
            for (file, f) in opened {
                for t in f.tensors.keys where map[t] !== f {
                    throw ToolError("\(index): \(file) holds \(t), which the index does not map to it")
                }
            }
            files = Array(opened.values)
        } else if FileManager.default.fileExists(atPath: path + "/model.safetensors") {
            let f = try SafeTensorsFile(path: path + "/model.safetensors")
            for t in f.tensors.keys { map[t] = f }
            files = [f]
        } else {
            throw ToolError("\(path): no model.safetensors or model.safetensors.index.json")
        }
        tensorFile = map
    }

    public var tensorNames: [String] { tensorFile.keys.sorted() }
    public func info(_ name: String) -> TensorInfo? { tensorFile[name]?.tensors[name] }
    public func view(_ name: String) throws -> TensorView {
        guard let f = tensorFile[name] else { throw ToolError("\(path) has no tensor \(name)") }
        return try f.view(name)
    }
    public func release(_ names: [String]) {
        for f in files { f.release(names.filter { tensorFile[$0] === f }) }
    }
    public func pages(_ name: String) -> UnsafeMutableRawBufferPointer? { tensorFile[name]?.pages(name) }
    public var numLayers: Int? { config["num_hidden_layers"]?.int }
}
