import CShim

// The engine's side of expected downtime: what the guest will wait for if it
// stops now (Policy/DowntimePredictor from the engine's measurements), and
// when to switch over (Policy/SwitchoverRule).
extension SourceEngine {
    /// After an exact sync: switch now (and why), or keep iterating. Under
    /// the limit but iterating for a lower downtime, look again in 100 ms
    /// rather than after every 20 ms sync.
    func switchoverDecision() -> SwitchoverReason? {
        guard let p = prediction else { return nil }
        let now = clock.nowNs()
        let target = min(params.downtimeTargetMs, params.downtimeLimitMs)
        let draining = backlog.bytes < (backlogAtLastDecision ?? .max)
        backlogAtLastDecision = backlog.bytes
        let reason = rule.decide(p, limitMs: params.downtimeLimitMs, targetMs: target, nowNs: now,
                                 elapsedNs: now - startNs, backlogDraining: draining,
                                 throttled: isThrottled)
        if reason == nil && DowntimePredictor.shouldSwitchOver(p, limitMs: params.downtimeLimitMs) {
            nextDecisionNs = now + 100_000_000
        }
        return reason
    }

    func predict() -> DowntimePrediction? {
        let remaining = tracker.remainingBytes
        let bandwidth = switchoverBandwidth(remaining: remaining)
        let input = DowntimeInputs(remainingBytes: remaining, deviceBytes: stats.pendingDeviceBytes,
                                   syncNs: lastSyncCostNs, pauseNs: lastPauseCostNs,
                                   backlogBytes: endSent ? 0 : backlog.bytes,
                                   backlogZeroPages: endSent ? 0 : backlog.zeroPages,
                                   zeroPagePs: delivery.zeroPagePs, backlogBytesPerSecond: delivery.rate,
                                   destinationNs: destinationNs,
                                   marginFraction: marginFraction(bandwidth))
        return DowntimePredictor.predict(input, bandwidth: bandwidth)
    }

    /// The rate the stop-and-copy will run at. Under max-bandwidth no write
    /// waits on the link, so the library's windows only prove the capped
    /// rate, while the stop-and-copy runs uncapped: the destination's
    /// timing of what it loaded is the measured figure there.
    func switchoverBandwidth(remaining: UInt64, override: UInt64? = nil) -> BandwidthEstimate? {
        let est = estimator.estimate(remainingBytes: remaining + stats.pendingDeviceBytes,
                                     override: override ?? params.availSwitchoverBandwidth)
        if est?.source != .override, estimator.isRateLimited, let r = delivery.rate {
            // The destination times stretches of stream that were already
            // in its socket: its own loading speed. The source's production
            // (scan, check values, copy) comes before that and does not
            // overlap it within a batch, so it bounds the rate too.
            let production = estimator.sourceProductionRate ?? r
            return BandwidthEstimate(bytesPerSecond: min(r, production), source: .pipeline)
        }
        return est
    }

    /// The margin: twice the typical relative error of the samples behind
    /// the figure (at most half), none for the user's own figure.
    /// At least `minMargin`: a steady link has no dispersion, yet the
    /// figure is still a few per cent off (report granularity, the last
    /// batch's scan); switching at exactly the limit then overshot it by
    /// up to 3 % (1.4 ms at 50 ms) in the simulator's matrix.
    func marginFraction(_ bw: BandwidthEstimate?) -> Double {
        switch bw?.source {
        case .pipeline?: return min(max(2 * delivery.dispersion, Self.minMargin), 0.5)
        case .link?, .throughput?: return min(max(2 * estimator.dispersion, Self.minMargin), 0.5)
        default: return 0
        }
    }

    static let minMargin = 0.05

    /// What the stop-and-copy must also wait for, already written: what
    /// the destination says it has not loaded (bytes, and the ZERO pages
    /// among them); failing that, what the local queue shows or, while the
    /// link is the bottleneck (every buffer on the way full), the learned
    /// pipeline size, whichever is larger.
    /// Refreshed at every sync and window close, not per batch: asking
    /// costs the transport a syscall or two.
    func refreshBacklog() {
        let report = hooks.pollDestination()
        if destinationFailure == nil { destinationFailure = report.failure }
        // Only a migration that waits for the acknowledgement needs the way
        // back: found gone before END, it fails while the guest still runs
        // here, instead of pausing it for an answer that cannot come.
        if destinationFailure == nil, config.waitForAck, let lost = report.returnChannelLost {
            destinationFailure = MKError(lost.code, "\(lost.message): no acknowledgement can come; the guest keeps running here")
        }
        delivery.add(report.progress)
        stats.pipelineBandwidth = UInt64(delivery.rate ?? 0)
        if let b = delivery.backlog(written: stats.transferred) {
            backlog = b
        } else {
            backlog = (max(report.localQueue ?? 0, pipelineLeft()), 0)
        }
        stats.backlogBytes = backlog.bytes
    }

    /// The learned pipeline, full at the last write that had to wait, less
    /// what the link drained since (plus what went in since). Counting it
    /// full for ever made a migration that idles after its pass (the
    /// downtime-target rule iterating on) expect 600 ms for a 3 ms outage.
    func pipelineLeft() -> UInt64 {
        guard estimator.isTransportBound, let full = pipelineBytes else { return 0 }
        guard let rate = estimator.measured?.bytesPerSecond, rate > 0 else { return full }
        let drained = rate * Double(clock.nowNs() - pipelineFullAtNs) / 1e9
        let left = Double(full + writtenSincePipelineFull) - drained
        return UInt64(min(max(left, 0), Double(full)))
    }
}
