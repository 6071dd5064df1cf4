import MigrationKit

/// Simulated time for the engine. Nothing happens by itself: time moves only
/// when the engine sleeps, scans memory (`didScan`), or a simulated hook
/// (link, dirty-log fetch, pause, device save) spends time. Actions scheduled
/// at virtual times run, in time order, whenever the clock moves past them.
package final class VirtualClock: EngineClock {
    /// Current virtual time, ns.
    package private(set) var now: UInt64
    /// Where the clock started (not zero, so code that assumes a clock
    /// starting at 0 shows up).
    package let startNs: UInt64
    /// How fast the migration thread reads guest memory (zero checks and
    /// checksums), B/s. 0 = free.
    package var scanBytesPerSecond: Double
    /// Extra cost of the first scan after a sleep, ns.
    package var wakeScanNs: UInt64 = 0
    /// A busy host: while set, every scan waits this fraction of its own
    /// time for a CPU on top, counted in `cpuWaitTotalNs`.
    package var scanCpuWait: Double = 0
    /// Time the migration thread waited for a CPU, ns (what cpuWaitNs says).
    package private(set) var cpuWaitTotalNs: UInt64 = 0
    private var woke = false

    /// Totals, for tests and benchmarks.
    package private(set) var scannedBytes: UInt64 = 0
    private(set) var scanNs: UInt64 = 0
    private(set) var sleptNs: UInt64 = 0

    /// If the engine reads the clock this many times without time moving,
    /// it is spinning: `onSpin` is called once (the simulation cancels).
    package var spinLimit = 2_000_000
    package var onSpin: (() -> Void)?

    private struct Action {
        let atNs: UInt64
        let seq: Int
        let run: () -> Void
    }
    private var actions: [Action] = []
    private var nextSeq = 0
    private var runningAction = false
    private var scanCarryNs: Double = 0
    private var readsSinceMove = 0
    private var spinReported = false

    package init(startNs: UInt64 = 1_000_000_000, scanBytesPerSecond: Double = 10e9) {
        self.now = startNs
        self.startNs = startNs
        self.scanBytesPerSecond = scanBytesPerSecond
    }

    /// Virtual time since the start, ns.
    package var elapsedNs: UInt64 { now - startNs }

    /// Absolute time of a point `seconds` after the start.
    package func ns(atSeconds seconds: Double) -> UInt64 {
        startNs + UInt64((seconds * 1e9).rounded())
    }

    // MARK: EngineClock

    package func nowNs() -> UInt64 {
        readsSinceMove += 1
        if readsSinceMove > spinLimit && !spinReported {
            spinReported = true
            onSpin?()
        }
        return now
    }

    package func sleep(untilNs deadline: UInt64) {
        guard deadline > now else { return }
        sleptNs += deadline - now
        woke = true
        advance(to: deadline)
    }

    package func didScan(bytes: UInt64) {
        scannedBytes += bytes
        guard scanBytesPerSecond > 0, bytes > 0 else { return }
        var exact = Double(bytes) / scanBytesPerSecond * 1e9 + scanCarryNs
        if woke {
            woke = false
            exact += Double(wakeScanNs)
        }
        let whole = exact.rounded(.down)
        scanCarryNs = exact - whole
        scanNs += UInt64(whole)
        let wait = UInt64((Double(whole) * scanCpuWait).rounded())
        cpuWaitTotalNs += wait
        advance(by: UInt64(whole) + wait)
    }

    package func cpuWaitNs() -> UInt64? { cpuWaitTotalNs }

    // MARK: moving time

    /// Move to `t` (never backwards), running every action due by then at
    /// its own time. An action that itself moves the clock only moves it;
    /// the actions it passes run once it returns.
    package func advance(to t: UInt64) {
        guard t > now else { return }
        readsSinceMove = 0
        if runningAction {
            now = t
            return
        }
        while let first = actions.first, first.atNs <= t {
            actions.removeFirst()
            if first.atNs > now { now = first.atNs }
            runningAction = true
            first.run()
            runningAction = false
        }
        now = max(now, t)
    }

    package func advance(by ns: UInt64) { advance(to: now + ns) }

    // MARK: scheduled actions

    /// Run `action` when time reaches `atNs` (absolute). An action for a
    /// time already past runs at the next move of the clock.
    package func schedule(atNs: UInt64, _ action: @escaping () -> Void) {
        let a = Action(atNs: atNs, seq: nextSeq, run: action)
        nextSeq += 1
        let i = actions.firstIndex { ($0.atNs, $0.seq) > (a.atNs, a.seq) } ?? actions.count
        actions.insert(a, at: i)
    }

    /// Run `action` `seconds` after the start of the simulation.
    package func schedule(atSeconds seconds: Double, _ action: @escaping () -> Void) {
        schedule(atNs: ns(atSeconds: seconds), action)
    }

    /// Time of the earliest pending action.
    var nextActionNs: UInt64? { actions.first?.atNs }

    var pendingActions: Int { actions.count }

    func removeAllActions() { actions.removeAll() }
}

/// SplitMix64: small, fast, deterministic.
struct SimRNG: RandomNumberGenerator, Sendable {
    package var state: UInt64

    package init(seed: UInt64) { state = seed }

    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    package mutating func unit() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }
}
