import Glibc
import MigrationKit

// MigrationKitSim: a deterministic simulator for the source engine.
//
// The real SourceEngine runs on the calling thread against models:
//   VirtualClock  time moves only when the engine sleeps, scans memory, or a
//                 hook spends time; closures scheduled at virtual times run as
//                 it passes them (parameter changes, cancel, link changes).
//   GuestModel    real memory with lazy vCPUs: dirty rate (a schedule), working
//                 set, write pattern, throttle and pause honoured; a shadow
//                 copy proves nobody else wrote guest memory.
//   LinkModel     send buffer + drain rate + latency + stalls; every byte goes
//                 to a real StreamLoader (Destination) with its own memory.
//   SimHooks      the VMM side (dirty-log fetch cost, pause/resume cost,
//                 device save), recording every call; `onCall` injects faults.
//   Simulation    wires it all and reports: error, stats and their history,
//                 throttle history, pause state, destination == source,
//                 source intact, device state delivered, measured downtime.
// No wall clock, no threads, no sleeps: the same config gives the same run.

/// Everything one simulated migration is made of.
package struct SimConfig: Sendable {
    package var guest = GuestConfig()
    package var link = LinkConfig()
    package var costs = SimCosts()
    package var params = MigrationParameters()
    package var engine = SourceEngine.Config()
    /// Migration thread's memory scan rate (zero checks + checksums), B/s.
    package var scanBytesPerSecond: Double = 10e9
    /// What the first scan after a sleep costs on top (caches gone cold
    /// while the thread slept; on KVM a 1 MiB batch after a rate-limit
    /// sleep took 240 us longer than one right after another batch).
    package var wakeScanNs: UInt64 = 0
    package var hasReturnChannel = true
    /// Destination: from END loaded to the guest running there (the VMM's
    /// resume cost; declared in the hello unless
    /// `destination.declaredResumeNs` says otherwise).
    package var destinationResumeNs: UInt64 = 1_000_000
    /// The destination host's loader, buffers and reports.
    package var destination = DestinationConfig()
    /// Destination answers with this status (a negative MK_E*) instead of 0.
    package var destinationRejectStatus: Int32?
    /// The destination is the real DestSession (SessionDestination), not
    /// the bare loader: its hello, progress timing stay the link model's,
    /// the loading and the acknowledgement are DestSession's.
    package var realDestination = false
    /// The simulation cancels the migration at this virtual time (and
    /// records that it got there): a safety net and the "still not
    /// converged at T" probe.
    package var deadlineSeconds: Double = 600
    /// Cancel interrupts a blocked write or ack read (production shuts the
    /// socket down).
    package var cancelInterruptsIO = true

    package init() {}
}

/// One migration, wired end to end: guest model + link + destination
/// loader + the real SourceEngine on a virtual clock. `run()` runs it to the
/// end on the calling thread; then the properties tell what happened.
package final class Simulation {
    package let config: SimConfig
    package let clock: VirtualClock
    package let guest: GuestModel
    package let destination: Destination
    package let link: LinkModel
    package let hooks: SimHooks
    package let control: SourceControl
    package let marks: ExternalMarks

    /// nil = completed (valid after run).
    package private(set) var error: MKError?
    package private(set) var finished = false
    /// The deadline was reached with the migration still going.
    package private(set) var reachedDeadline = false
    package private(set) var statsAtDeadline: MigrationStats?
    /// The engine read the clock over and over without time moving.
    package private(set) var spinDetected = false
    /// Absolute time run() returned.
    private(set) var endNs: UInt64 = 0

    package init(_ config: SimConfig) throws(MKError) {
        try config.params.validate()
        self.config = config
        clock = VirtualClock(scanBytesPerSecond: config.scanBytesPerSecond)
        clock.wakeScanNs = config.wakeScanNs
        guest = GuestModel(config.guest, clock: clock)
        let regions = guest.guestRegions
        var existing: [GuestRegion] = []
        for r in regions {
            try GuestRegion.validate(r, against: existing)
            existing.append(r)
        }
        destination = Destination(regions, resumeNs: config.destinationResumeNs, config: config.destination)
        destination.rejectStatus = config.destinationRejectStatus
        if config.realDestination {
            let mapped = zip(regions, destination.regions).map { s, d in
                GuestRegion(host: d.host, guestPhysAddr: s.guestPhysAddr, size: s.size, granularity: s.granularity,
                            fresh: config.destination.fresh)
            }
            let resumeNs = config.destination.declaredResumeNs ?? config.destinationResumeNs
            destination.session = try SessionDestination(regions: mapped, resumeCostUs: resumeNs / 1000, clock: clock)
        }
        link = LinkModel(config.link, clock: clock, destination: destination)
        hooks = SimHooks(clock: clock, guest: guest, link: link, costs: config.costs,
                         hasReturnChannel: config.hasReturnChannel)
        control = SourceControl(params: config.params)
        marks = ExternalMarks(regions)
        if config.cancelInterruptsIO {
            link.interrupted = { [unowned control] in control.isCancelRequested }
        }
    }

    /// Run `action` at `seconds` of virtual time after the start.
    package func at(seconds: Double, _ action: @escaping (Simulation) -> Void) {
        clock.schedule(atSeconds: seconds) { [unowned self] in action(self) }
    }

    /// Change a parameter at a virtual time (the change must validate).
    package func at(seconds: Double, change: @escaping (inout MigrationParameters) -> Void) {
        at(seconds: seconds) { sim in
            do throws(MKError) {
                try sim.control.updateParams { (p) throws(MKError) in change(&p) }
            } catch {
                preconditionFailure("scheduled parameter change rejected: \(error)")
            }
        }
    }

    /// Request a cancel at a virtual time, as mk_source_cancel would.
    package func cancel(atSeconds seconds: Double) {
        at(seconds: seconds) { $0.control.requestCancel() }
    }

    /// Change the link's drain rate at a virtual time.
    func linkBandwidth(atSeconds seconds: Double, bytesPerSecond: Double) {
        at(seconds: seconds) { $0.link.setBandwidth(bytesPerSecond) }
    }

    /// Change the guest's dirty rate at a virtual time.
    package func dirtyRate(atSeconds seconds: Double, bytesPerSecond: Double) {
        at(seconds: seconds) { $0.guest.setDirtyRate(bytesPerSecond: bytesPerSecond) }
    }

    /// A device model writes a guest page behind KVM's back and reports it
    /// with mk_source_mark_dirty (unless `report` is false: a VMM bug the
    /// end-to-end check must catch).
    package func dmaWrite(region: Int = 0, page: Int, report: Bool = true) {
        let gpa = guest.dmaWrite(region: region, page: page)
        if report { _ = marks.mark(guestPhysAddr: gpa, length: 4096) }
    }

    /// Run the migration to its end. Returns its error (nil = completed).
    @discardableResult
    package func run() -> MKError? {
        precondition(!finished, "a Simulation runs once")
        clock.schedule(atSeconds: config.deadlineSeconds) { [unowned self] in
            reachedDeadline = true
            statsAtDeadline = control.snapshot()
            control.requestCancel()
        }
        clock.onSpin = { [unowned self] in
            spinDetected = true
            control.requestCancel()
        }
        var engineConfig = config.engine
        engineConfig.vcpus = guest.vcpuCount
        let engine = SourceEngine(regions: guest.guestRegions, hooks: hooks, clock: clock,
                                  control: control, marks: marks, config: engineConfig)
        destination.session?.start()
        error = engine.run()
        // A destination still reading learns that the stream ended.
        destination.session?.close()
        endNs = clock.now
        finished = true
        // Break reference cycles test closures may have made.
        clock.removeAllActions()
        clock.onSpin = nil
        hooks.onCall = nil
        hooks.onProgress = nil
        return error
    }

    // MARK: results

    /// The final snapshot.
    package var stats: MigrationStats { control.snapshot() }
    /// Snapshots passed to the progress callback, in order.
    var statsHistory: [MigrationStats] { hooks.progress.map(\.stats) }
    /// (elapsed ns, percent) for every setThrottle call.
    package var throttleHistory: [(ns: UInt64, percent: UInt32)] { hooks.throttleCalls }
    package var elapsedNs: UInt64 { clock.now - clock.startNs }
    package var elapsedSeconds: Double { Double(elapsedNs) / 1e9 }

    package var guestPaused: Bool { guest.paused }
    var guestRunningOnSource: Bool { !guest.paused }
    /// The destination accepted the whole stream and will run the guest
    /// (it auto-acknowledges, as DestSession does, unless told to reject).
    package var destinationRunsGuest: Bool {
        destination.isComplete && destination.error == nil && destination.rejectStatus == nil
    }
    /// The guest runs on both sides: the one outcome that must never happen.
    package var splitBrain: Bool { destinationRunsGuest && guestRunningOnSource }

    /// Destination memory equals source memory, region by region.
    package var destinationMatchesSource: Bool {
        guard destination.isComplete else { return false }
        return destination.regions.indices.allSatisfy { guest.regionEquals($0, destination.regions[$0].host) }
    }

    /// Source memory holds exactly what the guest wrote.
    package var sourceIntact: Bool { guest.memoryIntact }

    /// The last device state saved reached the destination unchanged.
    package var deviceStateDelivered: Bool {
        guard let saved = guest.savedDeviceStates.last else { return false }
        return destination.deviceStates.last == saved
    }

    /// When the guest started running on the destination (absolute ns):
    /// from the ack if there was one, else when the stream was loaded
    /// there plus its resume.
    var destinationResumedAtNs: UInt64? {
        if let t = destination.resumedAtNs { return t }
        guard destinationRunsGuest, finished else { return nil }
        return link.quietAt() + destination.resumeNs
    }

    /// The real downtime: the last pause began → the guest ran on the
    /// destination. nil unless it completed.
    var measuredDowntimeNs: UInt64? {
        guard let p = hooks.lastPauseStartNs, let r = destinationResumedAtNs, r >= p else { return nil }
        return r - p
    }
    package var measuredDowntimeMs: Double? { measuredDowntimeNs.map { Double($0) / 1e6 } }

    /// One paragraph for assertion messages.
    package func summary() -> String {
        let s = stats
        var out = "t=\(simFixed(elapsedSeconds, 3))s status=\(s.status.name)"
        out += " error=\(error.map { "\($0.code): \($0.message)" } ?? "none")"
        out += " passes=\(s.passes) syncs=\(s.dirtySyncCount) transferred=\(s.transferred) remaining=\(s.remaining)"
        out += " bw=\(s.bandwidthEstimate)(\(s.bandwidthSource)) switchBw=\(s.switchoverBandwidth)"
        out += " expected=\(s.expectedDowntimeMs)ms downtime=\(s.downtimeMs)ms measured=\(measuredDowntimeMs.map { simFixed($0, 1) } ?? "-")ms"
        out += " limit=\(s.downtimeLimitMs)ms throttle=\(s.cpuThrottlePercentage) steps=\(hooks.throttleSteps)"
        out += " aborted=\(s.abortedSwitchovers) stop=\(s.stop)"
        out += " guestPaused=\(guest.paused) destComplete=\(destination.isComplete) destError=\(destination.error.map(\.description) ?? "none")"
        out += " torn=\(destination.loader.stats.tornPages) deadline=\(reachedDeadline) spin=\(spinDetected)"
        return out
    }

    /// Engine log lines, for failure messages.
    package func logText(last n: Int = 20) -> String {
        var lines: [String] = []
        for l in hooks.logs.suffix(n) {
            let t = simFixed(Double(l.ns) / 1e9, 3)
            lines.append("[" + t + "] " + l.message)
        }
        return lines.joined(separator: "\n")
    }
}

/// `x` with `digits` decimals (no Foundation here).
package func simFixed(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "\(x)" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let v = (abs(x) * scale).rounded()
    let whole = Int(v / scale)
    var frac = String(Int(v - Double(whole) * scale))
    while frac.count < digits { frac = "0" + frac }
    return (x < 0 && v != 0 ? "-" : "") + String(whole) + (digits > 0 ? "." + frac : "")
}
