import CShim

/// An MK_E* code: one the header defines, or one this build does not know.
/// Open (a struct, not an enum) because codes cross the wire: a destination
/// running a newer library acknowledges with its own codes, and such a code
/// must reach the VMM as the number that was sent, not folded into one this
/// build happens to know. The values come from the header's enum mk_error.
public struct MKErrorCode: RawRepresentable, Hashable, Sendable {
    public let rawValue: Int32

    /// Every negative value is a code, known or not. 0 (MK_OK) and positive
    /// values are not: an MKError always reports a failure, and a status of
    /// 0 (the destination's "resumed") must not read as one.
    public init?(rawValue: Int32) {
        guard rawValue < 0 else { return nil }
        self.rawValue = rawValue
    }

    private init(_ code: mk_error) { rawValue = code.rawValue }

    public static let invalid = MKErrorCode(MK_EINVAL)
    public static let noMemory = MKErrorCode(MK_ENOMEM)
    public static let state = MKErrorCode(MK_ESTATE)
    public static let version = MKErrorCode(MK_EVERSION)
    public static let transport = MKErrorCode(MK_ETRANSPORT)
    public static let callback = MKErrorCode(MK_ECALLBACK)
    public static let canceled = MKErrorCode(MK_ECANCELED)
    public static let timedOut = MKErrorCode(MK_ETIMEDOUT)
    public static let proto = MKErrorCode(MK_EPROTO)
    public static let checksum = MKErrorCode(MK_ECHECKSUM)
    public static let truncated = MKErrorCode(MK_ETRUNCATED)
    public static let range = MKErrorCode(MK_ERANGE)
    public static let notSupported = MKErrorCode(MK_ENOTSUP)
    public static let dest = MKErrorCode(MK_EDEST)
    public static let noSpace = MKErrorCode(MK_ENOSPC)
    public static let auth = MKErrorCode(MK_EAUTH)
}

/// A failure with the public MK_E* code it maps to and a message for a human.
/// Every layer throws this, so the C boundary only has to copy two fields.
public struct MKError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The C API layer's spelling of MKErrorCode.
    public typealias Code = MKErrorCode

    public let code: MKErrorCode
    public let message: String

    public init(_ code: MKErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message) (\(code))" }
}
