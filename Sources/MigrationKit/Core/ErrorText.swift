extension MKErrorCode: CustomStringConvertible {
    /// The static text behind mk_strerror.
    package var text: StaticString { Self.texts[self] ?? "unknown error code" }

    /// False for a code from a newer library than this one.
    package var isKnown: Bool { Self.texts[self] != nil }

    /// For messages. The library raises only codes it knows, so an unknown
    /// one came from the other side, and its number is all there is to show.
    package var description: String { isKnown ? "\(text)" : "unknown error code \(rawValue) from the peer" }

    private static let texts: [MKErrorCode: StaticString] = [
        .invalid: "invalid argument",
        .noMemory: "out of memory",
        .state: "not allowed in the current state",
        .version: "unsupported struct or stream version",
        .transport: "transport failure",
        .callback: "a VMM callback failed",
        .canceled: "cancelled",
        .timedOut: "timed out",
        .proto: "malformed migration stream",
        .checksum: "checksum mismatch in the migration stream",
        .truncated: "migration stream truncated",
        .range: "address or size outside registered guest memory",
        .notSupported: "not supported",
        .dest: "the destination reported a failure",
        .noSpace: "output buffer too small",
        .auth: "stream authentication failed",
    ]
}
