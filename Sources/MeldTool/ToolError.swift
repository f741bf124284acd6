import Foundation

/// A failure of the command-line tool, with a message that names the file, tensor or key at fault.
public struct ToolError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
