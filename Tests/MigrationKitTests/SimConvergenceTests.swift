import MigrationKit
import MigrationKitSim
import XCTest

/// A guest that dirties faster than the link drains, and
/// what the library does about it: nothing (it must not pretend), auto-
/// converge, or the completion timeout with either strategy.
final class SimConvergenceTests: XCTestCase {
    /// 8 MiB; the guest sweeps a 6 MiB working set at 20 MB/s; the link
    /// moves 10 MB/s; limit 300 ms = 3 MB at that rate.
    static func tooFastConfig() -> SimConfig {
        var c = SimT.config(mib: 8, zero: 0.1, linkMBps: 10, limitMs: 300)
        c.guest.workingSetBytes = 6 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 20e6)
        return c
    }

    func testDirtyRateAboveBandwidthDoesNotConvergeWithoutAutoConverge() {
        var c = Self.tooFastConfig()
        c.deadlineSeconds = 8
        let sim = SimT.make(c)
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertTrue(sim.reachedDeadline, why)
        XCTAssertEqual(sim.statsAtDeadline?.status, .active, why)
        XCTAssertGreaterThan(sim.statsAtDeadline?.remaining ?? 0, 3_000_000, why)
        XCTAssertTrue(sim.hooks.throttleCalls.allSatisfy { $0.percent == 0 }, "throttled without auto-converge: " + why)
        // It kept working the whole time (several complete sweeps of memory).
        XCTAssertGreaterThan(sim.stats.transferred, 8 * 8 * SimT.MiB, why)
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled)
    }

    /// "passes: complete sweeps over dirty memory" (mk_stats). A guest that
    /// never lets the bitmap run empty is still swept over and over, and the
    /// once-a-pass "not converged because..." log line is what an operator
    /// needs most in exactly this case.
    func testPassesAndPassLogWhenTheBitmapNeverEmpties() {
        var c = Self.tooFastConfig()
        c.deadlineSeconds = 5
        let sim = SimT.make(c)
        sim.run()
        let s = sim.statsAtDeadline ?? sim.stats
        // About 50 MB crossed the link for an 8 MiB guest: at least 4 sweeps.
        XCTAssertGreaterThan(s.transferred, 5 * 8 * SimT.MiB, sim.summary())
        XCTAssertGreaterThanOrEqual(s.passes, 4, "passes \(s.passes) after \(s.transferred) B sent of an 8 MiB guest; " + sim.summary())
        XCTAssertTrue(sim.hooks.logs.contains { $0.message.contains("not converged") },
                      "no pass log in 5 s of not converging:\n" + sim.logText())
    }

    func testAutoConvergeThrottlesInStepsAndConverges() {
        var c = Self.tooFastConfig()
        c.params.autoConverge = true
        c.params.throttleMode = .step
        c.params.cpuThrottleInitial = 30
        c.params.cpuThrottleIncrement = 15
        c.deadlineSeconds = 30
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        let steps = sim.hooks.throttleSteps
        // 0, initial, then +increment until the guest's dirtying
        // (20 MB/s x (1 - p)) lets it converge, then 0 at the end.
        XCTAssertGreaterThanOrEqual(steps.count, 4, why)
        XCTAssertEqual(steps.first, 0, why)
        XCTAssertEqual(steps.dropFirst().first, 30, why)
        XCTAssertEqual(steps.last, 0, why)
        let live = Array(steps.dropFirst().dropLast())
        for (a, b) in zip(live, live.dropFirst()) {
            XCTAssertEqual(b, a + 15, "steps \(steps); " + why)
        }
        XCTAssertGreaterThanOrEqual(live.count, 2, why)
        // Each step needs two high periods of at least a second.
        let changes = sim.hooks.throttleCalls.filter { $0.percent > 0 }
        var distinct: [(ns: UInt64, percent: UInt32)] = []
        for c in changes where distinct.last?.percent != c.percent { distinct.append(c) }
        for (a, b) in zip(distinct, distinct.dropFirst()) {
            XCTAssertGreaterThanOrEqual(b.ns - a.ns, 1_900_000_000, "steps too close: \(distinct); " + why)
        }
        // The guest really ran throttled: fewer writes than unthrottled.
        let unthrottled = 20e6 / 4096 * sim.elapsedSeconds
        XCTAssertLessThan(Double(sim.guest.pageWrites), 0.85 * unthrottled, why)
        XCTAssertLessThanOrEqual(Double(sim.measuredDowntimeMs ?? .infinity), 1.5 * 300 + 10, why)
    }

    func testCompletionTimeoutWithCancelStrategy() {
        var c = Self.tooFastConfig()
        c.params.completionTimeoutMs = 3000
        c.params.timeoutStrategy = .cancel
        // Auto-converge on but capped too low to help: the throttle is on
        // when the time runs out, and must be released.
        c.params.autoConverge = true
        c.params.cpuThrottleInitial = 20
        c.params.maxCpuThrottle = 20
        let sim = SimT.make(c)
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertFalse(sim.reachedDeadline, why)
        SimT.assertUnwound(sim, code: .timedOut, status: .failed)
        XCTAssertEqual(sim.elapsedSeconds, 3.0, accuracy: 0.1, why)
        XCTAssertTrue(sim.hooks.throttleCalls.contains { $0.percent == 20 }, "the throttle was never on: " + why)
        XCTAssertFalse(sim.destination.isComplete, why)
        XCTAssertTrue(sim.error?.message.contains("completion-timeout") ?? false, why)
    }

    func testCompletionTimeoutWithSwitchoverStrategyForcesCompletion() {
        var c = Self.tooFastConfig()
        c.params.completionTimeoutMs = 2000
        c.params.timeoutStrategy = .switchover
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        let s = sim.stats
        XCTAssertEqual(sim.elapsedSeconds, 2.0 + (sim.measuredDowntimeMs ?? 0) / 1000, accuracy: 0.1, why)
        // Forced: over the limit, and the stats say so.
        XCTAssertGreaterThan(s.downtimeMs, s.downtimeLimitMs, why)
        XCTAssertGreaterThan(s.expectedDowntimeMs, s.downtimeLimitMs, why)
        XCTAssertEqual(Double(s.downtimeMs), sim.measuredDowntimeMs ?? 0, accuracy: 1.5, why)
        XCTAssertEqual(s.abortedSwitchovers, 0, "a forced switchover must not be aborted: " + why)
        XCTAssertTrue(sim.hooks.logs.contains { $0.level == .warn && $0.message.contains("completion-timeout") }, why)
    }

    /// ram_dirty_sync_count and ram_dirty_pages_rate (header): the dirty
    /// log is synced at least once a second even when no pass ends (a
    /// 64 MiB pass takes 6.7 s at 10 MB/s), and the rate is pages per
    /// second over the last period of at least a second. The guest writes
    /// 2 MB/s of distinct pages (a sweep of a 32 MiB working set), so it
    /// dirties 488 pages/s.
    func testDirtyRateAndOnceASecondSync() {
        var c = SimT.config(mib: 64, zero: 0, linkMBps: 10, limitMs: 300)
        c.guest.workingSetBytes = 32 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 2e6)
        c.deadlineSeconds = 4
        let sim = SimT.make(c)
        var at35: MigrationStats?
        sim.at(seconds: 3.5) { at35 = $0.control.snapshot() }
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertTrue(sim.reachedDeadline, why)
        let s = at35 ?? sim.stats
        XCTAssertEqual(s.passes, 0, "a pass ended: the periodic sync is not what is tested; " + why)
        // Syncs: setup's arming sync, then one a second; the check comes
        // between batches (1 MiB at 10 MB/s: 105 ms).
        let fetches = sim.guest.fetches.map(\.atNs)
        XCTAssertGreaterThanOrEqual(s.dirtySyncCount, 4, why)
        for (a, b) in zip(fetches, fetches.dropFirst()) {
            XCTAssertLessThanOrEqual(b - a, 1_150_000_000, "\((b - a) / 1_000_000) ms between dirty-log syncs; " + why)
        }
        XCTAssertEqual(Double(s.dirtyPagesRate), 2e6 / 4096, accuracy: 0.1 * 2e6 / 4096, why)
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled)
    }

    /// max-cpu-throttle bounds QEMU's step controller: initial 20, +10 per
    /// two high periods, up to 40, and there it stays although the guest
    /// (20 MB/s x 60 % on a 10 MB/s link) still does not converge.
    func testStepThrottleStopsAtMaxCpuThrottle() {
        var c = Self.tooFastConfig()
        c.params.autoConverge = true
        c.params.throttleMode = .step
        c.params.cpuThrottleInitial = 20
        c.params.cpuThrottleIncrement = 10
        c.params.maxCpuThrottle = 40
        c.deadlineSeconds = 12
        let sim = SimT.make(c)
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertTrue(sim.reachedDeadline, why)
        XCTAssertEqual(sim.hooks.throttleSteps, [0, 20, 30, 40, 0], why)
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled)
    }
}

/// A guest that re-dirties almost as fast as the link retires, with a
/// dirty-log sync as expensive as an 8 GiB guest's (~4 ms; bytes scaled
/// down 16x, the sync cost kept) and a 50 ms limit, so exact syncs come
/// every 20 ms near the threshold. The link keeps draining its queue during
/// each sync; counting that time out of the link's read 85 MB/s on this
/// 78 MB/s link, and the downtime came out at 51.5 ms against 50.
final class SimExpensiveSyncTests: XCTestCase {
    func testLinkEstimateCountsTheSyncsAndKeepsTheLimit() {
        let link = 1.25e9 / 16
        var c = SimT.config(mib: 512, zero: 0.3, linkMBps: link / SimT.MB, limitMs: 50)
        c.guest.workingSetBytes = 32 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 0.95 * link)
        c.costs.fetchNsPerGiB = 4_000_000 * 2  // 4 ms for this 512 MiB, as for 8 GiB
        c.deadlineSeconds = 60
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, Double(c.params.downtimeLimitMs), why)
        XCTAssertLessThanOrEqual(Double(sim.stats.bandwidthEstimate), 1.03 * link, why)
    }
}
