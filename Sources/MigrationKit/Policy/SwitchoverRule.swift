/// Why the source switched over (mirrors enum mk_switchover_reason).
package enum SwitchoverReason: Int32, Sendable {
    case none = 0
    case target = 1   // expected downtime at or under downtime-target
    case noGain = 2   // under the limit, and iterating would not halve it soon
    case timeout = 3  // completion-timeout with the switchover strategy
}

/// Once expected downtime is under the limit, QEMU switches at once. This
/// rule keeps iterating while that buys a clearly lower downtime: expected
/// downtime is above downtime-target and, at the rate it has been falling,
/// would reach half of itself (or the target) within a bounded extra time:
/// max(1 s, half the migration so far). It never waits on parts iterating
/// cannot shrink (fixed costs, device state, the destination's resume).
///
/// While auto-converge throttles a vCPU the target is at least half the
/// limit. Below that, every second of iterating is a second of a vCPU held
/// back (up to 99 %) for a downtime the limit does not ask for; above it,
/// iterating buys room for a stop-and-copy slower than measured, which is
/// likeliest then: the throttled vCPUs' share of the cores changes at the
/// pause, and on a busy 2-core machine the stop-and-copy ran at half the
/// predicted rate (KVM: 426 ms for 231 ms expected when switching near the
/// limit).
///
/// The trend comes from exact predictions (right after dirty-log syncs),
/// because between syncs the dirty count only falls: new dirt is not
/// visible until the next sync. Pure: times come in as arguments.
package struct SwitchoverRule: Sendable {
    /// Trend windows: the oldest sample at least this old and at most
    /// `maxWindowNs` old, and the newest at least this old, are compared
    /// with the latest.
    static let minWindowNs: UInt64 = 300_000_000
    static let maxWindowNs: UInt64 = 2_000_000_000

    /// The movable part of each exact prediction, as bytes (movable ms
    /// times the B/ms it was computed with; ms when there was no figure).
    /// Bytes, not ms: when the bandwidth figure changes (a new override, a
    /// better estimate) every prediction moves at once, and comparing ms
    /// across that change reads a drop that iterating did not buy (an
    /// override set while running once iterated 2 s more at a flat 52 ms).
    private var history: [(ns: UInt64, work: Double, scale: Double)] = []

    package init() {}

    /// An exact prediction (after a sync).
    package mutating func observe(_ p: DowntimePrediction, atNs now: UInt64) {
        let scale = p.bandwidth.map { $0.bytesPerSecond / 1000 } ?? 1
        history.append((now, p.movableMs * scale, scale))
        history.removeAll { now - $0.ns > Self.maxWindowNs }
    }

    /// Expected downtime lost per second of iterating, over the window, at
    /// the latest bandwidth figure; nil without enough history.
    /// The slower of two trends: over the whole window, and since the
    /// newest sample at least `minWindowNs` old. A dirty set that fell and
    /// then levelled off still shows the fall over 2 s; iterating on for
    /// those 2 s at a flat expected downtime buys nothing.
    package func declinePerSecond(atNs now: UInt64) -> Double? {
        guard let last = history.last, last.scale > 0,
              let oldest = history.first(where: { now - $0.ns >= Self.minWindowNs }),
              let recent = history.last(where: { now - $0.ns >= Self.minWindowNs }) else { return nil }
        func rate(_ old: (ns: UInt64, work: Double, scale: Double)) -> Double? {
            let seconds = Double(last.ns - old.ns) / 1e9
            return seconds > 0 ? (old.work - last.work) / last.scale / seconds : nil
        }
        guard let a = rate(oldest), let b = rate(recent) else { return nil }
        return min(a, b)
    }

    /// The downtime worth iterating for: downtime-target, and at least half
    /// the limit while a vCPU is throttled (see above).
    package static func target(_ targetMs: UInt64, limitMs: UInt64, throttled: Bool) -> UInt64 {
        throttled ? max(targetMs, limitMs / 2) : targetMs
    }

    /// nil: keep iterating. Otherwise switch over now, for that reason.
    /// `backlogDraining`: the stream already written is being loaded faster
    /// than new stream is written (it shrank since the last look).
    /// `throttled`: auto-converge holds a throttle on some vCPU right now.
    package func decide(_ p: DowntimePrediction, limitMs: UInt64, targetMs: UInt64,
                       nowNs: UInt64, elapsedNs: UInt64, backlogDraining: Bool = false,
                       throttled: Bool = false) -> SwitchoverReason? {
        guard DowntimePredictor.shouldSwitchOver(p, limitMs: limitMs) else { return nil }
        // Stream already on its way costs the guest nothing to wait for
        // while it drains: when it is most of what is left, let it drain,
        // even under the target (a static guest's last socket-full) --
        // unless the target is the limit, QEMU's switch-at-once.
        if targetMs < limitMs && backlogDraining && p.backlogMs >= 2 && p.backlogMs > 2 * p.ramMs { return nil }
        let target = Self.target(targetMs, limitMs: limitMs, throttled: throttled)
        if p.totalMs <= Double(target) { return .target }
        let goal = max(Double(target), p.totalMs / 2)
        // Iterating shrinks RAM and backlog only.
        guard p.totalMs - goal <= p.movableMs else { return .noGain }
        // No trend yet (the first pass just ended): look again once there
        // is one, rather than switching at the first point under the limit.
        guard let decline = declinePerSecond(atNs: nowNs) else { return nil }
        guard decline > 0 else { return .noGain }
        let needSeconds = (p.totalMs - goal) / decline
        let budgetSeconds = max(1.0, Double(elapsedNs) / 2e9)
        return needSeconds <= budgetSeconds ? nil : .noGain
    }
}
