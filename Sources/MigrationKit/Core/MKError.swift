import CShim

/// A failure with the public MK_E* code it maps to and a message for a human.
/// Every layer throws this, so the C boundary only has to copy two fields.
public struct MKError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Int32, Sendable {
        case invalid = -1
        case noMemory = -2
        case state = -3
        case version = -4
        case transport = -5
        case callback = -6
        case canceled = -7
        case timedOut = -8
        case proto = -9
        case checksum = -10
        case truncated = -11
        case range = -12
        case notSupported = -13
        case dest = -14
        case noSpace = -15
        case auth = -16
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message) (\(code))" }
}
