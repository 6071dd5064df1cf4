/// A source session's settings, as the C API reads them from
/// mk_source_config (CAPI/SourceAPI.swift converts).
struct SourceSessionConfig: Sendable {
    /// 1...1024: kick_vcpu and the throttle point take 0..<vcpus.
    var vcpus: UInt32 = 1
    var deviceStateHint: UInt64 = 0
    /// False with MK_SOURCE_NO_ACK.
    var waitForAck = true
    var ackTimeoutMs = 30_000
    /// The pre-shared key for an authenticated stream (copied).
    var authKey: [UInt8]?
}

/// A destination session's settings, from mk_dest_config
/// (CAPI/DestAPI.swift converts).
package struct DestSessionConfig: Sendable {
    /// MK_DEST_MANUAL_ACK: the VMM acknowledges with mk_dest_ack.
    package var manualAck = false
    /// What the VMM spends from END to the ack, declared in the hello.
    package var resumeCostUs: UInt64 = 0
    /// The pre-shared key (copied): the stream must be authenticated with
    /// it. nil: only plain streams are accepted.
    package var authKey: [UInt8]?

    package init(manualAck: Bool = false, resumeCostUs: UInt64 = 0, authKey: [UInt8]? = nil) {
        self.manualAck = manualAck
        self.resumeCostUs = resumeCostUs
        self.authKey = authKey
    }
}
