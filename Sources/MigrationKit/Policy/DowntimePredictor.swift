/// Everything the guest will wait for if it stops now, as known before
/// stopping: the source's work, the stream already on its way, and the
/// destination's own work after the stream.
package struct DowntimeInputs: Sendable, Equatable {
    /// Dirty guest memory, counted at each region's dirty granularity
    /// (a huge-page-backed region re-sends whole huge pages).
    package var remainingBytes: UInt64
    /// Device state expected (callback or hint).
    package var deviceBytes: UInt64
    /// Cost of the final dirty-log sync, measured on the last sync.
    package var syncNs: UInt64
    /// Cost of pausing the vCPUs, measured if a pause happened before.
    package var pauseNs: UInt64
    /// Stream bytes written but not yet loaded by the destination.
    package var backlogBytes: UInt64
    /// ZERO pages inside that backlog, and what one costs the destination
    /// (picoseconds): a 32-byte record can stand for a GiB of page work.
    var backlogZeroPages: UInt64
    package var zeroPagePs: UInt64
    /// How fast the backlog drains, B/s: it is already past the source, so
    /// what the destination loads it at (its measured delivered rate), not
    /// the end-to-end rate new pages will move at. nil: the same figure.
    package var backlogBytesPerSecond: Double?
    /// The destination after the stream: its VMM's declared resume cost
    /// plus the END record's one-way trip.
    package var destinationNs: UInt64
    /// How far the bandwidth figure may be off, as a fraction (learned
    /// from how much its samples strayed): the decision adds this much of
    /// the bandwidth-bound time.
    var marginFraction: Double

    package init(remainingBytes: UInt64, deviceBytes: UInt64, syncNs: UInt64, pauseNs: UInt64,
                backlogBytes: UInt64 = 0, backlogZeroPages: UInt64 = 0, zeroPagePs: UInt64 = 0,
                backlogBytesPerSecond: Double? = nil, destinationNs: UInt64 = 0, marginFraction: Double = 0) {
        self.remainingBytes = remainingBytes
        self.deviceBytes = deviceBytes
        self.syncNs = syncNs
        self.pauseNs = pauseNs
        self.backlogBytes = backlogBytes
        self.backlogZeroPages = backlogZeroPages
        self.zeroPagePs = zeroPagePs
        self.backlogBytesPerSecond = backlogBytesPerSecond
        self.destinationNs = destinationNs
        self.marginFraction = marginFraction
    }
}

/// A downtime forecast and its parts, in milliseconds.
package struct DowntimePrediction: Sendable, Equatable {
    /// The best estimate: every part but the margin.
    package var totalMs: Double
    package var ramMs: Double
    package var backlogMs: Double
    package var deviceMs: Double
    package var destinationMs: Double
    /// Source-side pause and final sync.
    package var fixedMs: Double
    package var marginMs: Double
    package var bandwidth: BandwidthEstimate?

    /// What the switchover decision compares with downtime-limit.
    var decisionMs: Double { totalMs + marginMs }
    /// The parts another pass (or a wait) can shrink.
    var movableMs: Double { ramMs + backlogMs }
}

/// Expected downtime is the switchover decision value: one formula serves
/// both the displayed figure and the decision, unlike QEMU, where the two
/// use different quantities.
package enum DowntimePredictor {
    /// nil when there is no usable bandwidth figure and there is data to move.
    package static func predict(_ input: DowntimeInputs, bandwidth: BandwidthEstimate?) -> DowntimePrediction? {
        let fixedMs = Double(input.syncNs + input.pauseNs) / 1e6
        let destinationMs = Double(input.destinationNs) / 1e6
        // ZERO pages cost the destination time, not bandwidth.
        let zeroMs = Double(input.backlogZeroPages) * Double(input.zeroPagePs) / 1e9
        let bytes = input.remainingBytes + input.deviceBytes + input.backlogBytes
        guard let bw = bandwidth, bw.bytesPerSecond > 0 else {
            guard bytes == 0 else { return nil }
            return DowntimePrediction(totalMs: fixedMs + destinationMs + zeroMs, ramMs: 0, backlogMs: zeroMs, deviceMs: 0,
                                      destinationMs: destinationMs, fixedMs: fixedMs, marginMs: 0, bandwidth: nil)
        }
        let perMs = bw.bytesPerSecond / 1000  // B/s -> B/ms: the unit bug QEMU's first draft had
        let ramMs = Double(input.remainingBytes) / perMs
        // Never slower than new stream: that rate includes every stage the
        // backlog has yet to cross, and the source's, which it has not.
        let backlogPerMs = max(input.backlogBytesPerSecond.map { $0 / 1000 } ?? perMs, perMs)
        let backlogMs = Double(input.backlogBytes) / backlogPerMs + zeroMs
        let deviceMs = Double(input.deviceBytes) / perMs
        let marginMs = (ramMs + backlogMs + deviceMs) * max(input.marginFraction, 0)
        return DowntimePrediction(totalMs: ramMs + backlogMs + deviceMs + destinationMs + fixedMs,
                                  ramMs: ramMs, backlogMs: backlogMs, deviceMs: deviceMs,
                                  destinationMs: destinationMs, fixedMs: fixedMs, marginMs: marginMs, bandwidth: bw)
    }

    package static func shouldSwitchOver(_ p: DowntimePrediction?, limitMs: UInt64) -> Bool {
        guard let p else { return false }
        return p.decisionMs <= Double(limitMs)
    }
}
