import CShim

/// An MK_E* code: one the header defines, or one this build does not know.
/// Open (a struct, not an enum) because codes cross the wire: a destination
/// running a newer library acknowledges with its own codes, and such a code
/// must reach the VMM as the number that was sent, not folded into one this
/// build happens to know. The values come from the header's enum mk_error.
package struct MKErrorCode: RawRepresentable, Hashable, Sendable {
    package let rawValue: Int32

    /// Every negative value is a code, known or not. 0 (MK_OK) and positive
    /// values are not: an MKError always reports a failure, and a status of
    /// 0 (the destination's "resumed") must not read as one.
    package init?(rawValue: Int32) {
        guard rawValue < 0 else { return nil }
        self.rawValue = rawValue
    }

    private init(_ code: mk_error) { rawValue = code.rawValue }

    package static let invalid = MKErrorCode(MK_EINVAL)
    package static let noMemory = MKErrorCode(MK_ENOMEM)
    package static let state = MKErrorCode(MK_ESTATE)
    package static let version = MKErrorCode(MK_EVERSION)
    package static let transport = MKErrorCode(MK_ETRANSPORT)
    package static let callback = MKErrorCode(MK_ECALLBACK)
    package static let canceled = MKErrorCode(MK_ECANCELED)
    package static let timedOut = MKErrorCode(MK_ETIMEDOUT)
    package static let proto = MKErrorCode(MK_EPROTO)
    package static let checksum = MKErrorCode(MK_ECHECKSUM)
    package static let truncated = MKErrorCode(MK_ETRUNCATED)
    package static let range = MKErrorCode(MK_ERANGE)
    package static let notSupported = MKErrorCode(MK_ENOTSUP)
    package static let dest = MKErrorCode(MK_EDEST)
    package static let noSpace = MKErrorCode(MK_ENOSPC)
    package static let auth = MKErrorCode(MK_EAUTH)
}

/// A failure with the public MK_E* code it maps to and a message for a human.
/// Every layer throws this, so the C boundary only has to copy two fields.
package struct MKError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The C API layer's spelling of MKErrorCode.
    typealias Code = MKErrorCode

    package let code: MKErrorCode
    package let message: String

    package init(_ code: MKErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    package var description: String { "\(message) (\(code))" }
}
