// The engine's side of auto-converge: the dirty-rate period, QEMU's step
// controller and the closed-loop per-vCPU throttle (Policy/AutoConverge),
// applied through the hooks and released on every terminal state.
extension SourceEngine {
    /// Dirty rate and the auto-converge trigger, once per period.
    func endPeriod(at now: UInt64) {
        let dt = now - periodStartNs
        stats.dirtyPagesRate = periodDirtied * 1_000_000_000 / max(dt, 1)
        let sent = stats.transferred - periodStartTransferred
        if params.throttleMode == .step,
           throttle.onPeriod(dirtiedBytes: periodDirtied * MigrationParameters.pageSize,
                             transferredBytes: sent, params: params) {
            apply(Array(repeating: throttle.percentage, count: applied.count))
            hooks.log(.info, "auto-converge: throttle \(throttle.percentage)% (dirtied \(periodDirtied * 4) KiB vs sent \(sent >> 10) KiB in \(dt / 1_000_000) ms)")
        }
        for i in applied.indices {
            stats.vcpus[i].dirtyRateKnown = periodAttributed
            stats.vcpus[i].dirtyPagesRate = periodAttributed ? periodVCPUPages[i] * 1_000_000_000 / max(dt, 1) : 0
            periodVCPUPages[i] = 0
        }
        periodAttributed = true
        stats.cpuThrottlePercentage = applied.max() ?? 0
        logPass(force: now - lastPassLogNs >= 5_000_000_000)
        periodStartNs = now
        periodStartTransferred = stats.transferred
        periodDirtied = 0
    }

    var closedLoopOn: Bool { params.autoConverge && params.throttleMode == .closedLoop }

    /// Auto-converge holds some vCPU back right now.
    var isThrottled: Bool { applied.contains { $0 > 0 } }

    /// Closed-loop auto-converge: one decision per control period, from the
    /// end of the first pass on. A page written before its first send costs
    /// the link nothing, and what the guest dirties again after a send is
    /// bounded by its working set, which the second pass sends anyway: on
    /// KVM (512 MiB written flat out, 100 MB/s) throttling the first pass
    /// held the writer at 10-50 % for 5 s and left 444 MiB dirty at its end
    /// instead of 512, while the whole migration took as long.
    func endControlPeriod(at now: UInt64) {
        let dt = now - controlStartNs
        let sent = stats.transferred - controlStartTransferred
        if closedLoopOn && tracker.sweeps > 0 {
            // What the link retired while the engine had something to send:
            // idling (the pass done, nothing dirty) is spare capacity, not
            // a slow link, and must not make the guest's own rate look like
            // the link's.
            let busy = dt > controlIdleNs ? dt - controlIdleNs : 0
            if busy >= 10_000_000 && sent > 0 {
                retireWhileBusy = Double(sent) * 1e9 / Double(busy)
            }
            let sentRate = retireWhileBusy ?? 0
            var link = estimator.measured?.bytesPerSecond ?? 0
            if params.maxBandwidth > 0 { link = min(link, Double(params.maxBandwidth)) }
            let retire = max(sentRate, link)
            let pages: [UInt64]? = controlAttributed ? controlVCPUPages : nil
            // The target stays throttle-trigger-threshold % of the link also
            // once expected downtime is under the limit: how far to iterate
            // then is the switchover rule's business (downtime-target), and
            // letting the dirty set stop shrinking there only made it give up
            // near the limit (KVM: 150-250 ms instead of 40-220 ms), with no
            // gain for the writing vCPU.
            if closedLoop.onPeriod(dirtiedBytes: controlDirtied * MigrationParameters.pageSize, periodNs: dt,
                                   vcpuPages: pages, retireBytesPerSecond: retire, params: params) {
                apply(closedLoop.percents)
                let rate = Double(controlDirtied) * 4096 / Double(max(dt, 1)) * 1e3
                let link = "\(Int(retire / 1e6)) MB/s"
                hooks.log(.info, "auto-converge (closed-loop, pass \(tracker.sweeps)): throttle \(closedLoop.percents.map { "\($0)%" }.joined(separator: " ")) per vCPU (dirtying \(Int(rate)) MB/s\(pages == nil ? "" : " by vCPU \(pages!)") vs link \(link), target \(Int(closedLoop.lastTarget / 1e6)) MB/s)")
            }
        }
        controlStartNs = now
        controlStartTransferred = stats.transferred
        controlDirtied = 0
        controlIdleNs = 0
        for i in controlVCPUPages.indices { controlVCPUPages[i] = 0 }
        controlAttributed = true
    }

    /// Set the vCPUs' throttles (through the hooks only when they change).
    func apply(_ p: [UInt32]) {
        guard p != applied else { return }
        applied = p
        hooks.setThrottle(perVCPU: p)
        stats.cpuThrottlePercentage = p.max() ?? 0
        for i in applied.indices { stats.vcpus[i].throttlePercent = p[i] }
    }

    /// Drop every throttle: terminal states, auto-converge off.
    func releaseThrottle() {
        throttle.release()
        closedLoop.release()
        applied = Array(repeating: 0, count: applied.count)
        hooks.setThrottle(perVCPU: applied)
        stats.cpuThrottlePercentage = 0
        for i in applied.indices { stats.vcpus[i].throttlePercent = 0 }
        refreshThrottleStats()
    }

    /// Guest time the throttle took, from the hooks' counters.
    func refreshThrottleStats() {
        let slept = hooks.throttleSleepNs()
        var total: UInt64 = 0
        for (i, ns) in slept.enumerated() where i < stats.vcpus.count {
            stats.vcpus[i].throttleSleepUs = ns / 1000
            total += ns / 1000
        }
        stats.throttleSleepUs = total
    }
}
