/// Everything the stop-and-copy will have to do, as known before stopping.
public struct DowntimeInputs: Sendable, Equatable {
    /// Dirty guest memory, counted at each region's dirty granularity
    /// (a huge-page-backed region re-sends whole huge pages; seed 001).
    public var remainingBytes: UInt64
    /// Device state expected (callback or hint).
    public var deviceBytes: UInt64
    /// Cost of the final dirty-log sync, measured on the last sync.
    public var syncNs: UInt64
    /// Cost of pausing the vCPUs, measured if a pause happened before.
    public var pauseNs: UInt64
    /// Stream bytes already written but still queued in the transport.
    public var inFlightBytes: UInt64

    public init(remainingBytes: UInt64, deviceBytes: UInt64, syncNs: UInt64, pauseNs: UInt64,
                inFlightBytes: UInt64 = 0) {
        self.remainingBytes = remainingBytes
        self.deviceBytes = deviceBytes
        self.syncNs = syncNs
        self.pauseNs = pauseNs
        self.inFlightBytes = inFlightBytes
    }
}

/// A downtime forecast and its parts, in milliseconds.
public struct DowntimePrediction: Sendable, Equatable {
    public var totalMs: Double
    public var ramMs: Double
    public var deviceMs: Double
    public var fixedMs: Double
    public var bandwidth: BandwidthEstimate?
}

/// Expected downtime is the switchover decision value: one formula serves
/// both the displayed figure and the decision, unlike QEMU, where the two
/// use different quantities.
public enum DowntimePredictor {
    /// nil when there is no usable bandwidth figure and there is data to move.
    public static func predict(_ input: DowntimeInputs, bandwidth: BandwidthEstimate?) -> DowntimePrediction? {
        let fixedMs = Double(input.syncNs + input.pauseNs) / 1e6
        let bytes = input.remainingBytes + input.deviceBytes + input.inFlightBytes
        guard let bw = bandwidth, bw.bytesPerSecond > 0 else {
            if bytes == 0 {
                return DowntimePrediction(totalMs: fixedMs, ramMs: 0, deviceMs: 0, fixedMs: fixedMs, bandwidth: nil)
            }
            return nil
        }
        let perMs = bw.bytesPerSecond / 1000  // B/s -> B/ms: the unit bug QEMU's first draft had
        let ramMs = Double(input.remainingBytes + input.inFlightBytes) / perMs
        let deviceMs = Double(input.deviceBytes) / perMs
        return DowntimePrediction(totalMs: ramMs + deviceMs + fixedMs, ramMs: ramMs, deviceMs: deviceMs,
                                  fixedMs: fixedMs, bandwidth: bw)
    }

    public static func shouldSwitchOver(_ p: DowntimePrediction?, limitMs: UInt64) -> Bool {
        guard let p else { return false }
        return p.totalMs <= Double(limitMs)
    }
}
