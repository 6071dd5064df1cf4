extension MKError.Code {
    /// The static text behind mk_strerror.
    public var text: StaticString {
        switch self {
        case .invalid: "invalid argument"
        case .noMemory: "out of memory"
        case .state: "not allowed in the current state"
        case .version: "unsupported struct or stream version"
        case .transport: "transport failure"
        case .callback: "a VMM callback failed"
        case .canceled: "cancelled"
        case .timedOut: "timed out"
        case .proto: "malformed migration stream"
        case .checksum: "checksum mismatch in the migration stream"
        case .truncated: "migration stream truncated"
        case .range: "address or size outside registered guest memory"
        case .notSupported: "not supported"
        case .dest: "the destination reported a failure"
        case .noSpace: "output buffer too small"
        case .auth: "stream authentication failed"
        }
    }
}
