import CShim
import Glibc

/// The source side of one precopy migration: the body of the migration
/// thread. It owns its state; other threads reach it only through
/// `SourceControl`. Time comes from the injected clock and every effect goes
/// through `SourceHooks`, so the simulator runs this same code.
package final class SourceEngine {
    package struct Config: Sendable {
        package var deviceStateHint: UInt64 = 0
        package var waitForAck = true
        package var ackTimeoutMs = 30_000
        /// Accounting window: bandwidth samples, mbps, progress callbacks.
        var windowNs: UInt64 = 100_000_000
        /// Dirty-rate and auto-converge period (QEMU: at least 1 s).
        package var periodNs: UInt64 = 1_000_000_000
        /// Exact syncs near the threshold are at least this far apart, so a
        /// migration hovering at the threshold does not storm the dirty log.
        var minSyncIntervalNs: UInt64 = 20_000_000
        /// Page data per batch while live.
        package var batchBytes: UInt64 = 1 << 20
        /// After the final sync, resume the guest and keep iterating if the
        /// exact prediction exceeds the limit by this factor (plus 10 ms):
        /// a few extra pauses instead of an unbounded downtime.
        var abortFactor: Double = 1.5
        /// vCPUs the guest has (throttle and per-vCPU statistics).
        package var vcpus: Int = 1
        /// Closed-loop auto-converge: one control decision this often, at a
        /// dirty-log sync (forced if no pass asks for one), independent of
        /// bitmap passes.
        var controlPeriodNs: UInt64 = 500_000_000
        /// Authenticate the stream with this pre-shared key (nil: do not).
        package var authKey: [UInt8]?
        /// The stream header's nonce for an authenticated stream: fresh
        /// random bytes in production, fixed in a simulation.
        package var authNonce: [UInt8] = []
        package init() {}
    }

    let regions: [GuestRegion]
    let hooks: SourceHooks
    let clock: EngineClock
    let control: SourceControl
    let config: Config

    // The engine's state is internal, not private, only so that its parts in
    // SourceEngine+Downtime.swift and SourceEngine+Throttle.swift reach it;
    // nothing outside the engine touches it (other threads go through
    // SourceControl).
    let tracker: DirtyTracker
    let batcher: RecordBatcher
    var params: MigrationParameters
    var paramsGeneration = -1
    var estimator = BandwidthEstimator()
    var throttle = AutoConverge()
    var closedLoop: ClosedLoopThrottle
    /// What the vCPUs are throttled to now (set through the hooks).
    var applied: [UInt32]
    var controlStartNs: UInt64 = 0
    var controlStartTransferred: UInt64 = 0
    var controlDirtied: UInt64 = 0
    /// Time the engine idled in this control period (nothing dirty to send).
    var controlIdleNs: UInt64 = 0
    /// The last control period's sent bytes per second of not idling.
    var retireWhileBusy: Double?
    var controlVCPUPages: [UInt64]
    var controlAttributed = true
    var periodVCPUPages: [UInt64]
    var periodAttributed = true
    var bucket: TokenBucket
    var stats = MigrationStats()
    var startNs: UInt64 = 0
    var paused = false
    /// END is on the wire: the destination may be running the guest, so a
    /// failure from here on must not resume it here too.
    var endSent = false
    /// What the engine waits for from the destination ("the hello", "the
    /// ack"), while it waits: the phase a failure's message names.
    var waitingFor: String?
    /// An authenticated stream, once both nonces are known: what seals the
    /// records and the key that checks the destination's ack.
    var sealer: StreamSealer?
    var sessionKey: [UInt8]?

    // Accounting.
    var window = WindowSample()
    var windowStartNs: UInt64 = 0
    var lastSyncNs: UInt64 = 0
    var lastSyncCostNs: UInt64 = 0
    var lastPauseCostNs: UInt64 = 0
    var periodStartNs: UInt64 = 0
    var periodStartTransferred: UInt64 = 0
    var periodDirtied: UInt64 = 0
    var lastPassLogNs: UInt64 = 0
    /// The next batch follows the last one with nothing between (no
    /// sleep, no sync): its timing is the stop-and-copy's (WindowSample.warm).
    var followsBatch = false
    var pipelineBytes: UInt64?
    /// When the last write that had to wait returned (the pipeline was
    /// full then) and the wire bytes written since: without reports or a
    /// local queue, the learned pipeline drains from there at the link rate.
    var pipelineFullAtNs: UInt64 = 0
    var writtenSincePipelineFull: UInt64 = 0
    var noSwitchoverBeforeNs: UInt64 = 0
    var prediction: DowntimePrediction?

    // The destination's side of the downtime.
    var delivery = DeliveryTracker()
    var backlog: (bytes: UInt64, zeroPages: UInt64) = (0, 0)
    /// Its VMM's resume cost plus the END record's one-way trip.
    var destinationNs: UInt64 = 0
    var rule = SwitchoverRule()
    /// Under the limit but iterating for a lower downtime: the next look.
    var nextDecisionNs: UInt64 = 0
    var backlogAtLastDecision: UInt64?
    /// The destination reported a failure mid-stream: ends the migration.
    var destinationFailure: MKError?

    package init(regions: [GuestRegion], hooks: SourceHooks, clock: EngineClock,
                control: SourceControl, marks: ExternalMarks, config: Config = Config()) {
        self.regions = regions
        self.hooks = hooks
        self.clock = clock
        self.control = control
        self.config = config
        // Everything is worked out in locals and self is only written, never
        // read, until every stored property is set. The Swift 6.3 optimizer
        // (-O, so every shipped build) miscompiled the earlier form, which
        // called `regions.reduce { ... }` (a rethrowing call with a closure)
        // half-way through the initialization, between reads of self: the
        // optimized initializer kept one retain of self unbalanced (replacing
        // that reduce alone removed it from the SIL), so every engine -- with
        // its RecordBatcher buffers and all it references, ~200 KB --
        // outlived its migration, a leak per migration in a long-lived VMM
        // (LeakSanitizer on the C tests; SourceEngineLifetimeTests under
        // `swift test -c release -Xswiftc -enable-testing`).
        let p = control.params
        let n = max(config.vcpus, 1)
        var total: UInt64 = 0
        for r in regions { total += r.size }
        var s = MigrationStats()
        s.total = total
        s.downtimeLimitMs = p.downtimeLimitMs
        s.downtimeTargetMs = min(p.downtimeTargetMs, p.downtimeLimitMs)
        s.vcpus = Array(repeating: VCPUStats(), count: n)
        s.throttleMode = p.throttleMode
        tracker = DirtyTracker(regions, marks: marks)
        batcher = RecordBatcher(regions: regions)
        params = p
        bucket = TokenBucket(rate: p.maxBandwidth, nowNs: 0)
        closedLoop = ClosedLoopThrottle(vcpus: n)
        applied = Array(repeating: 0, count: n)
        controlVCPUPages = Array(repeating: 0, count: n)
        periodVCPUPages = Array(repeating: 0, count: n)
        stats = s
    }

    /// Run the whole migration. nil when it completed; otherwise the error,
    /// after the guest was resumed and unthrottled on the source.
    @discardableResult
    package func run() -> MKError? {
        startNs = clock.nowNs()
        do throws(MKError) {
            setStatus(.setup)
            try setup()
            try iterate()
            stats.totalTimeMs = ms(clock.nowNs() - startNs)
            let activeMs = max(stats.totalTimeMs - stats.setupTimeMs, 1)
            stats.mbps = Double(stats.transferred) * 8 / Double(activeMs) / 1000
            setStatus(.completed)
            return nil
        } catch {
            // A cancel interrupts blocking I/O, which then fails: report the
            // cause, not the symptom.
            var e = error
            if control.isCancelRequested && e.code != .canceled {
                e = MKError(.canceled, "cancelled by mk_source_cancel (\(e.message))")
            }
            // Named once, here, not at every throw site: "writev on fd 8:
            // Connection reset by peer" alone does not tell the VMM whether
            // the guest had been paused or the destination has it all.
            e = MKError(e.code, "\(failurePhase): \(e.message)")
            unwind(after: e)
            return e
        }
    }

    // MARK: - phases

    func setup() throws(MKError) {
        applyParams()
        let descriptors = regions.map {
            RegionDescriptor(guestPhysAddr: $0.guestPhysAddr, size: $0.size, granularity: $0.granularity)
        }
        let header = config.authKey == nil
            ? StreamHeader.encode(regions: descriptors)
            : StreamHeader(flags: StreamHeader.authFlag, regions: descriptors, nonce: config.authNonce).encoded()
        try withBytes(header) { (raw) throws(MKError) in
            var v = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress!), iov_len: raw.count)
            try writeTimed(&v, count: 1, wire: UInt64(raw.count))
        }
        try greet()
        try beginSealing(header: header)
        tracker.markAll()
        let now = clock.nowNs()
        periodStartNs = now
        controlStartNs = now
        windowStartNs = now
        // The first fetch only arms tracking (KVM may report every page
        // here): not a measure of the guest's dirtying.
        try sync(arming: true)
        stats.setupTimeMs = ms(clock.nowNs() - startNs)
        setStatus(.active)
    }

    /// Before any page: the destination accepted the header, how long its
    /// answers take to come back, and what its VMM will spend after END.
    /// A refusal fails here, before the guest was ever paused.
    func greet() throws(MKError) {
        guard hooks.hasReturnChannel else { return }
        let t0 = clock.nowNs()
        // The completion-timeout (strategy cancel) bounds this wait too.
        var timeoutMs = config.ackTimeoutMs
        if let d = completionDeadlineNs {
            timeoutMs = min(timeoutMs, Int(clamping: (d > t0 ? d - t0 : 0) / 1_000_000))
        }
        let resumeCostUs: UInt64
        waitingFor = "the hello"
        do throws(MKError) {
            resumeCostUs = try hooks.awaitHello(timeoutMs: timeoutMs)
        } catch {
            if error.code == .timedOut && timeoutMs < config.ackTimeoutMs { throw completionTimeout(while: "waiting for the destination's hello") }
            throw error
        }
        waitingFor = nil
        let rtt = clock.nowNs() - t0
        delivery.pause()
        stats.rttUs = rtt / 1000
        destinationNs = resumeCostUs * 1000 + rtt / 2
    }

    func iterate() throws(MKError) {
        while true {
            try checkCancel()
            applyParams()
            if try timeoutExpired() {
                stats.switchoverReason = .timeout
                try stopAndCopy(forced: true)
                return
            }
            let now = clock.nowNs()
            prediction = predict()
            let passDone = tracker.dirtyPages == 0
            let near = mayStop && now >= nextDecisionNs
                && DowntimePredictor.shouldSwitchOver(prediction, limitMs: params.downtimeLimitMs)
            let sinceSync = now - lastSyncNs
            let controlDue = closedLoopOn && now - controlStartNs >= config.controlPeriodNs
            if passDone || (near && sinceSync >= config.minSyncIntervalNs) || sinceSync >= config.periodNs || controlDue {
                if passDone && !controlDue {
                    // Let the guest dirty and the window fill before the
                    // next sweep instead of spinning on an empty bitmap.
                    if sinceSync < config.minSyncIntervalNs {
                        sleep(until: lastSyncNs + config.minSyncIntervalNs, idle: true)
                        continue
                    }
                }
                if passDone { tracker.rewind() }
                try sync()
                if mayStop, let reason = switchoverDecision() {
                    stats.switchoverReason = reason
                    if try stopAndCopy(forced: false) { return }
                    continue
                }
            }
            // Under a cap, bursts of two batches: the second runs warm and
            // times the source's own work as the stop-and-copy will see it.
            let delay = bucket.delayNs(nowNs: now, debt: config.batchBytes * 3 / 2)
            if delay > 0 {
                sleep(until: now + min(delay, 50_000_000))
                continue
            }
            let b = try sendBatch(stopped: false, budget: config.batchBytes)
            bucket.consume(b.wireBytes, nowNs: clock.nowNs())
            closeWindowIfDue()
        }
    }

    /// Never stop the guest before every page went out once: pages nobody
    /// re-dirties cost nothing to send live and all of the downtime to send
    /// paused (QEMU switches over mid-first-pass as soon as the threshold
    /// allows).
    var mayStop: Bool { tracker.sweeps > 0 && clock.nowNs() >= noSwitchoverBeforeNs }

    /// Stop the guest and send everything else. Returns false if the exact
    /// numbers after the final sync broke the limit and the guest was resumed
    /// to keep iterating.
    @discardableResult
    func stopAndCopy(forced: Bool) throws(MKError) -> Bool {
        // The sync that led here may have learnt that the destination
        // cannot take the guest: fail without pausing it.
        if let destinationFailure { throw destinationFailure }
        setStatus(.device)
        var stop = StopCopyBreakdown()
        // A vCPU asleep in the throttle point would hold the pause back.
        let throttled = applied
        if throttled.contains(where: { $0 > 0 }) { hooks.setThrottle(perVCPU: Array(repeating: 0, count: throttled.count)) }
        let wait0 = clock.cpuWaitNs()
        let t0 = clock.nowNs()
        paused = true
        try hooks.pauseVCPUs()
        let t1 = clock.nowNs()
        stop.pauseUs = us(t1 - t0)
        lastPauseCostNs = t1 - t0
        try checkCancel()
        try sync(paused: true)
        let t2 = clock.nowNs()
        stop.syncUs = us(t2 - t1)
        let bound = Double(params.downtimeLimitMs) * config.abortFactor + 10
        if !forced, prediction.map({ $0.totalMs > bound }) ?? (tracker.remainingBytes > 0) {
            // Say the comparison that fired: the abort bound, not the limit.
            let why = prediction.map {
                "expected downtime \(Self.msText($0.totalMs, roundingUp: true)) > \(Self.msText(bound)) (1.5 x downtime-limit \(params.downtimeLimitMs) ms + 10 ms)"
            } ?? "no bandwidth figure to predict the downtime with"
            hooks.log(.info, "switchover aborted: after the final sync \(tracker.remainingBytes >> 10) KiB remain, \(why); guest resumed")
            try hooks.resumeVCPUs()
            paused = false
            if throttled.contains(where: { $0 > 0 }) { hooks.setThrottle(perVCPU: throttled) }
            stats.abortedSwitchovers += 1
            // Each abort cost the guest a pause: back off before the next try
            // (200 ms, 400 ms, ... up to 2 s) so a bursty guest is not
            // paused every few milliseconds.
            let backoff = min(UInt64(200_000_000) << min(stats.abortedSwitchovers - 1, 4), 2_000_000_000)
            noSwitchoverBeforeNs = clock.nowNs() + backoff
            setStatus(.active)
            return false
        }
        if let p = prediction {
            stats.expectedDowntimeMs = UInt64(p.totalMs.rounded(.up))
            stats.expected = ExpectedParts(p)
        }
        stop.ramBytes = tracker.remainingBytes
        while tracker.dirtyPages > 0 {
            try checkCancel()
            // Batches as small as the live ones: one that does not fit in
            // the socket buffer makes the write wait for the destination,
            // which then idles while the next batch is scanned; small ones
            // keep the two sides working at once (4 MiB batches ran the
            // paced KVM scenario's stop-and-copy at 1.05 GB/s, serially).
            _ = try sendBatch(stopped: true, budget: config.batchBytes)
        }
        let t3 = clock.nowNs()
        stop.ramUs = us(t3 - t2)

        let blob = try hooks.saveDeviceState()
        if !blob.isEmpty {
            try withBytes(blob) { (raw) throws(MKError) in
                let crc = cshim_crc32c(0, raw.baseAddress, raw.count)
                let h = RecordHeader(type: .device, flags: [.payloadCRC, .stopped], length: UInt64(raw.count), payloadCRC: crc)
                try sendSingle(h, payload: raw)
            }
        }
        stats.deviceStateBytes = UInt64(blob.count)
        let t4 = clock.nowNs()
        stop.deviceUs = us(t4 - t3)

        try checkCancel()
        guard control.commit() else { throw MKError(.canceled, "cancelled by mk_source_cancel") }
        try sendSingle(RecordHeader(type: .end, flags: [.stopped]), payload: nil)
        endSent = true
        if config.waitForAck && hooks.hasReturnChannel {
            waitingFor = "the ack"
            try awaitAck()
        }
        let t5 = clock.nowNs()
        stop.flushUs = us(t5 - t4)
        if let wait0, let wait5 = clock.cpuWaitNs() { stop.cpuWaitUs = us(wait5 > wait0 ? wait5 - wait0 : 0) }
        stats.stop = stop
        stats.downtimeMs = ms(t5 - t0)
        stats.remaining = 0
        // The guest lives on the destination now: its vCPUs stay paused here.
        releaseThrottle()
        return true
    }

    /// The destination's word. A refusal (it did not resume the guest) lets
    /// the source resume; silence does not, because the destination has the
    /// whole stream and may be running the guest already.
    func awaitAck() throws(MKError) {
        let reply: AckReply
        do throws(MKError) {
            reply = try hooks.awaitAck(timeoutMs: config.ackTimeoutMs)
            try checkAckTag(reply)
        } catch {
            throw MKError(error.code, "\(error.message); the whole stream was sent, so the destination may be running the guest: the vCPUs stay paused here for the VMM to decide")
        }
        stats.destResumeUs = UInt64(reply.resumeUs)
        if let failure = reply.failure {
            endSent = false  // refused: the guest is not running there
            throw MKError(.dest, "the destination failed to resume the guest: \(failure)")
        }
    }

    /// Every failure and cancel ends here: the guest must be left running on
    /// the source, unthrottled, its memory untouched (the engine only reads) --
    /// unless the destination may already be running it (END sent, no answer).
    func unwind(after error: MKError) {
        releaseThrottle()
        if !endSent { hooks.abandonTransport() }
        if paused && !endSent {
            do throws(MKError) {
                try hooks.resumeVCPUs()
                paused = false
            } catch {
                hooks.log(.error, "resuming the vCPUs after a failure failed too: \(error.message)")
            }
        }
        stats.error = error.code.rawValue
        stats.errorMessage = error.message
        stats.totalTimeMs = ms(clock.nowNs() - startNs)
        hooks.log(.error, "migration \(error.code == .canceled ? "cancelled" : "failed"): \(error.message)")
        setStatus(error.code == .canceled ? .cancelled : .failed)
    }

    // MARK: - steps

    func sync(arming: Bool = false, paused: Bool = false) throws(MKError) {
        delivery.pause()
        followsBatch = false
        let t0 = clock.nowNs()
        let reported = try tracker.sync { (i, bitmap, pages) throws(MKError) in
            try hooks.fetchDirtyLog(region: i, bitmap: bitmap, pages: pages)
        }
        let t1 = clock.nowNs()
        lastSyncCostNs = t1 - t0
        lastSyncNs = t1
        window.syncNs += t1 - t0
        stats.dirtySyncCount += 1
        stats.pendingDeviceBytes = hooks.deviceStateSize() ?? config.deviceStateHint
        // Who dirtied it, when the VMM can tell (dirty ring). Fetched at
        // every sync so each call covers exactly one dirty-log interval.
        let counts = try hooks.fetchVCPUDirtyCounts()
        if !arming {
            periodDirtied += UInt64(reported)
            // Every page reported, also those still dirty from before: a
            // guest that keeps its dirty set full re-dirties pages that are
            // still dirty, and counting only the newly dirty ones hid its
            // demand (the closed loop read 0 MB/s from a vCPU writing
            // 600 MB/s and dropped its throttle every other period).
            controlDirtied += UInt64(reported)
            if let counts, counts.count >= applied.count {
                for i in applied.indices {
                    controlVCPUPages[i] += counts[i]
                    periodVCPUPages[i] += counts[i]
                    stats.vcpus[i].dirtyPages += counts[i]
                }
            } else {
                controlAttributed = false
                periodAttributed = false
            }
        }
        refreshBacklog()
        // Stream still queued after the sync: the link worked through it.
        if backlog.bytes > 0 { window.linkAwayNs += t1 - t0 }
        prediction = predict()
        // The trend is what iterating on the dirty set buys: the first pass
        // shrinks all of memory at link speed, and a window reaching back
        // into it reads a fast decline that further passes will not repeat.
        if !paused && tracker.sweeps > 0, let p = prediction { rule.observe(p, atNs: t1) }
        // A paused guest dirties nothing: no throttle decision from it.
        if !paused && t1 - periodStartNs >= config.periodNs {
            endPeriod(at: t1)
        }
        if !paused && !arming && t1 - controlStartNs >= config.controlPeriodNs {
            endControlPeriod(at: t1)
        }
        refreshThrottleStats()
        if tracker.sweeps > Int(stats.passes) {
            stats.passes = UInt64(tracker.sweeps)
            if !paused { logPass(force: false) }
        }
        publish()
    }

    func sendBatch(stopped: Bool, budget: UInt64) throws(MKError) -> RecordBatcher.Batch {
        let t0 = clock.nowNs()
        let busyBefore = window.busyNs
        let b = batcher.fill(from: tracker, budget: budget, stopped: stopped, clock: clock)
        if b.iovCount > 0 {
            let start = stats.transferred
            batcher.forEachZeroRecord { end, pages in delivery.wroteZero(endingAt: start + end, pages: pages) }
            try writeTimed(batcher.iov, count: b.iovCount, wire: b.wireBytes)
        }
        window.dataBytes += b.dataPages * MigrationParameters.pageSize
        window.zeroBytes += b.zeroPages * MigrationParameters.pageSize
        if followsBatch {
            window.warm.ns += clock.nowNs() - t0
            window.warm.busyNs += window.busyNs - busyBefore
            window.warm.dataBytes += b.dataPages * MigrationParameters.pageSize
            window.warm.zeroBytes += b.zeroPages * MigrationParameters.pageSize
        }
        followsBatch = true
        stats.normal += b.dataPages
        stats.duplicate += b.zeroPages
        publish()
        return b
    }

    func sendSingle(_ h: RecordHeader, payload: UnsafeRawBufferPointer?) throws(MKError) {
        let b = batcher.single(h, payload: payload)
        try writeTimed(batcher.iov, count: b.iovCount, wire: b.wireBytes)
    }

    func writeTimed(_ iov: UnsafePointer<iovec>, count: Int, wire: UInt64) throws(MKError) {
        let t0 = clock.nowNs()
        do throws(MKError) {
            if let sealer {
                try sealer.seal(iov, count: count) { (v, n) throws(MKError) in try hooks.write(v, count: n) }
            } else {
                try hooks.write(iov, count: count)
            }
        } catch {
            // Only the completion-timeout's deadline bounds a write.
            if error.code == .timedOut { throw completionTimeout(while: "writing to the transport (\(error.message))") }
            throw error
        }
        let spent = clock.nowNs() - t0
        learnPipeline(writeNs: spent, wire: wire)
        if spent >= Self.blockedWriteNs {
            pipelineFullAtNs = clock.nowNs()
            writtenSincePipelineFull = 0
        } else {
            writtenSincePipelineFull += wire
        }
        window.busyNs += spent
        window.wireBytes += wire
        delivery.wrote(from: stats.transferred, to: stats.transferred + wire)
        stats.transferred += wire
    }

    /// How much the channel holds between our write and the receiver's
    /// loader (socket buffers on both ends, queues): what the first write
    /// that had to wait had been allowed to push without waiting. Learned
    /// once, early; a channel that only fills up late says nothing clear.
    func learnPipeline(writeNs: UInt64, wire: UInt64) {
        guard pipelineBytes == nil else { return }
        if writeNs >= Self.blockedWriteNs {
            pipelineBytes = stats.transferred
        } else if stats.transferred > Self.maxPipelineBytes {
            pipelineBytes = 0
        }
    }

    static let blockedWriteNs: UInt64 = 1_000_000
    static let maxPipelineBytes: UInt64 = 64 << 20

    /// Sleep for the rate limit, or (idle) because nothing is dirty.
    func sleep(until deadline: UInt64, idle: Bool = false) {
        delivery.pause()
        followsBatch = false
        let t0 = clock.nowNs()
        clock.sleep(untilNs: deadline)
        let slept = clock.nowNs() - t0
        if idle {
            window.idleNs += slept
            controlIdleNs += slept
        } else {
            window.sleepNs += slept
        }
        closeWindowIfDue()
    }

    func closeWindowIfDue() {
        let now = clock.nowNs()
        guard now - windowStartNs >= config.windowNs else { return }
        window.elapsedNs = now - windowStartNs
        window.cumulativeWireBytes = stats.transferred
        estimator.add(window)
        refreshBacklog()
        stats.mbps = Double(window.wireBytes) * 8 / Double(window.elapsedNs) * 1000
        window = WindowSample()
        windowStartNs = now
        refreshThrottleStats()
        publish()
        hooks.progress(control.snapshot())
    }

    func applyParams() {
        guard let (p, gen) = control.paramsIfChanged(since: paramsGeneration) else { return }
        let first = paramsGeneration < 0
        paramsGeneration = gen
        params = p
        bucket.setRate(p.maxBandwidth, nowNs: clock.nowNs())
        stats.downtimeLimitMs = p.downtimeLimitMs
        stats.downtimeTargetMs = min(p.downtimeTargetMs, p.downtimeLimitMs)
        if !p.autoConverge || p.throttleMode != stats.throttleMode {
            // Off, or the other controller takes over from nothing.
            if isThrottled { releaseThrottle() }
            throttle.release()
            closedLoop.release()
        }
        stats.throttleMode = p.throttleMode
        hooks.setWaitDeadline(ns: completionDeadlineNs)
        if !first {
            hooks.log(.info, "parameters changed: downtime-limit \(p.downtimeLimitMs) ms, max-bandwidth \(p.maxBandwidth) B/s, avail-switchover-bandwidth \(p.availSwitchoverBandwidth) B/s, auto-converge \(p.autoConverge ? "on" : "off") (throttle-mode \(p.throttleMode.name))")
        }
    }

    /// true: time is up and the strategy says switch over anyway.
    func timeoutExpired() throws(MKError) -> Bool {
        let limit = params.completionTimeoutMs
        guard limit > 0, clock.nowNs() - startNs >= limit * 1_000_000 else { return false }
        if params.timeoutStrategy == .switchover {
            hooks.log(.warn, "completion-timeout \(limit) ms expired: switching over with expected downtime \(stats.expectedDowntimeMs) ms")
            return true
        }
        throw MKError(.timedOut, "completion-timeout of \(limit) ms expired before convergence: \(notConvergingReason())")
    }

    func checkCancel() throws(MKError) {
        if control.isCancelRequested { throw MKError(.canceled, "cancelled by mk_source_cancel") }
        if let destinationFailure { throw destinationFailure }
    }

    /// With timeout-strategy cancel, the completion-timeout ends every wait
    /// of the migration (the transport's included), not only the loop's
    /// checks: the absolute deadline on the engine's clock.
    var completionDeadlineNs: UInt64? {
        guard params.completionTimeoutMs > 0, params.timeoutStrategy == .cancel else { return nil }
        return startNs + params.completionTimeoutMs * 1_000_000
    }

    func completionTimeout(while what: String) -> MKError {
        MKError(.timedOut, "completion-timeout of \(params.completionTimeoutMs) ms expired \(what)")
    }

    // MARK: - reporting

    /// Where the migration is, as its failure's message names it: setup,
    /// waiting for the hello, pass N (stats' passes + 1, so that the two
    /// agree; 1: the first sweep of memory), stop-and-copy (the guest
    /// paused), waiting for the ack.
    var failurePhase: String {
        if let waitingFor { return "waiting for \(waitingFor)" }
        switch stats.status {
        case .setup: return "setup"
        case .device: return "stop-and-copy"
        default: return "pass \(stats.passes + 1)"
        }
    }

    func setStatus(_ s: MigrationStatus) {
        stats.status = s
        publish()
        hooks.progress(control.snapshot())
    }

    func publish() {
        let now = clock.nowNs()
        if !stats.status.isTerminal { stats.totalTimeMs = ms(now - startNs) }
        // While iterating, the snapshot shows the prediction as of now (the
        // loop recomputes it before every decision anyway), so expected
        // downtime and both bandwidth figures describe the same moment.
        // Without an override the library's estimate *is* the figure the
        // switchover uses (provisional and destination-timed ones included):
        // the two never disagree. During the stop-and-copy and after, the
        // switchover's prediction stays.
        if stats.status == .setup || stats.status == .active { prediction = predict() }
        let used = prediction?.bandwidth
        let own = used?.source == .override ? switchoverBandwidth(remaining: tracker.remainingBytes, override: 0) : used
        if stats.status != .completed {
            stats.remaining = tracker.remainingBytes
            stats.expectedDowntimeMs = prediction.map { UInt64($0.totalMs.rounded(.up)) } ?? 0
            stats.switchoverBandwidth = UInt64(used?.bytesPerSecond ?? 0)
            stats.switchoverSource = used?.source ?? .none
            stats.expected = prediction.map(ExpectedParts.init) ?? ExpectedParts()
        }
        stats.bandwidthEstimate = UInt64(own?.bytesPerSecond ?? 0)
        stats.bandwidthSource = own?.source ?? .none
        control.publish(stats)
    }

    /// What the switchover rule iterates towards, as the log says it.
    var iterationTargetText: String {
        let t = SwitchoverRule.target(stats.downtimeTargetMs, limitMs: params.downtimeLimitMs, throttled: isThrottled)
        return t == stats.downtimeTargetMs ? "downtime-target \(t) ms" : "\(t) ms (half the limit: the guest is throttled)"
    }

    func notConvergingReason() -> String {
        let remaining = tracker.remainingBytes >> 10
        guard let p = prediction else {
            return "\(remaining) KiB dirty and no trustworthy bandwidth figure yet"
        }
        // kB/s under 10 MB/s: a slow link is not "0 MB/s".
        let bps = p.bandwidth?.bytesPerSecond ?? 0
        let rate = bps >= 10e6 ? "\(Int(bps / 1e6)) MB/s" : "\(Int(bps / 1e3)) kB/s"
        if DowntimePredictor.shouldSwitchOver(p, limitMs: params.downtimeLimitMs) {
            let falling = rule.declinePerSecond(atNs: clock.nowNs()).map { "\(Int($0)) ms/s" } ?? "unknown"
            return "\(remaining) KiB dirty, expected downtime \(Self.msText(p.decisionMs)) (with margin) is under downtime-limit \(params.downtimeLimitMs) ms; iterating towards \(iterationTargetText) (falling \(falling)) at \(rate)"
        }
        // The comparison shouldSwitchOver made, decisionMs > limit, rounded
        // up so that it stays true as printed (0.4 ms over a 0 ms limit was
        // "0 ms > 0 ms").
        return "\(remaining) KiB dirty, expected downtime \(Self.msText(p.decisionMs, roundingUp: true)) (with margin) > downtime-limit \(params.downtimeLimitMs) ms at \(rate); guest dirties \(stats.dirtyPagesRate) pages/s"
    }

    /// Milliseconds for a message: two decimals under 10 ms, one under
    /// 100 ms, none above, so that a small figure does not print as 0.
    /// `roundingUp` for the larger side of a printed "a > b" with b at
    /// most as precise, which then stays true as printed.
    static func msText(_ ms: Double, roundingUp: Bool = false) -> String {
        guard ms.isFinite, ms >= 0 else { return "\(ms) ms" }
        let decimals = ms < 10 ? 2 : ms < 100 ? 1 : 0
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let v = UInt64((ms * scale).rounded(roundingUp ? .up : .toNearestOrAwayFromZero))
        let whole = v / UInt64(scale), frac = v % UInt64(scale)
        guard decimals > 0 else { return "\(whole) ms" }
        let f = String(frac)
        return "\(whole).\(String(repeating: "0", count: decimals - f.count))\(f) ms"
    }

    /// One line per pass (at most one a second): the "why" of a migration
    /// that does not converge.
    func logPass(force: Bool) {
        let now = clock.nowNs()
        guard force || now - lastPassLogNs >= 1_000_000_000 else { return }
        lastPassLogNs = now
        hooks.log(.info, "pass \(tracker.sweeps), \(stats.dirtySyncCount) syncs, not converged: \(notConvergingReason())")
    }

    func ms(_ ns: UInt64) -> UInt64 { ns / 1_000_000 }
    func us(_ ns: UInt64) -> UInt64 { ns / 1_000 }
}
