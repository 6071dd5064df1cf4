import MigrationKit
import MigrationKitSim
import XCTest

/// The stop-and-copy phase: switchovers called off when the final sync
/// finds too much to send while paused, and the timing breakdown.
final class SimSwitchoverTests: XCTestCase {
    /// Arm a 2 GB/s burst for the time the vCPUs take to stop, on the first
    /// switchover only.
    private func burstOnFirstPause(_ sim: Simulation) {
        var bursts = 0
        sim.hooks.onCall = { [unowned sim] call in
            guard call == .pauseVCPUs, bursts == 0 else { return }
            bursts += 1
            sim.guest.setDirtyRate(bytesPerSecond: 2e9)
            sim.clock.schedule(atNs: sim.clock.now + sim.hooks.costs.pauseNs) {
                sim.guest.setDirtyRate(bytesPerSecond: 1e6)
            }
        }
    }

    private func assertAbortedOnce(_ sim: Simulation, limitMs: Double, file: StaticString = #filePath, line: UInt = #line) {
        SimT.assertCompleted(sim, file: file, line: line)
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertEqual(sim.stats.abortedSwitchovers, 1, why, file: file, line: line)
        XCTAssertEqual(sim.guest.pauseHistory.map(\.paused), [true, false, true], why, file: file, line: line)
        XCTAssertTrue(sim.hooks.logs.contains { $0.message.contains("switchover aborted") }, why, file: file, line: line)
        XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, limitMs * 1.5 + 10, why, file: file, line: line)
    }

    /// The guest bursts while its vCPUs are being stopped: the final sync
    /// finds all 32 MiB dirty (335 ms at 100 MB/s, over 1.5 x 50 + 10 ms),
    /// so the engine resumes the guest and keeps iterating instead of
    /// sending an unbounded tail.
    func testBurstDuringThePauseAbortsTheSwitchoverOnce() {
        var c = SimT.config(mib: 32, zero: 0, linkMBps: 100, limitMs: 50)
        c.guest.dirty(bytesPerSecond: 1e6)
        c.costs.pauseNs = 20_000_000
        let sim = SimT.make(c)
        burstOnFirstPause(sim)
        sim.run()
        assertAbortedOnce(sim, limitMs: 50)
    }

    /// Same burst on a guest small enough that no trusted bandwidth figure
    /// exists yet (under 16 MiB on the wire) and more than 10 MiB is dirty
    /// after the final sync: there is no prediction at all, which is no
    /// reason to go ahead with an unbounded stop-and-copy.
    func testBurstDuringThePauseAbortsEvenWithoutAPrediction() {
        var c = SimT.config(mib: 16, zero: 0.2, linkMBps: 100, limitMs: 50)
        c.guest.dirty(bytesPerSecond: 1e6)
        c.costs.pauseNs = 20_000_000
        let sim = SimT.make(c)
        burstOnFirstPause(sim)
        sim.run()
        assertAbortedOnce(sim, limitMs: 50)
    }

    /// A guest that bursts at every pause: each abort backs off (200 ms,
    /// 400 ms, ...) before the next try, so the guest is not paused every
    /// few milliseconds, and the migration still ends once the bursts stop.
    func testRepeatedAbortsBackOff() {
        var c = SimT.config(mib: 32, zero: 0, linkMBps: 100, limitMs: 50)
        c.guest.dirty(bytesPerSecond: 1e6)
        c.costs.pauseNs = 20_000_000
        let sim = SimT.make(c)
        var bursts = 0
        sim.hooks.onCall = { [unowned sim] call in
            guard call == .pauseVCPUs, bursts < 3 else { return }
            bursts += 1
            sim.guest.setDirtyRate(bytesPerSecond: 2e9)
            sim.clock.schedule(atNs: sim.clock.now + sim.hooks.costs.pauseNs) {
                sim.guest.setDirtyRate(bytesPerSecond: 1e6)
            }
        }
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertEqual(sim.stats.abortedSwitchovers, 3, why)
        let pauses = sim.guest.pauseHistory.filter(\.paused).map(\.ns)
        XCTAssertEqual(pauses.count, 4, why)
        for (i, gap) in zip(pauses, pauses.dropFirst()).map({ $1 - $0 }).enumerated() {
            XCTAssertGreaterThanOrEqual(gap, UInt64(200_000_000) << UInt64(i), "pause \(i + 1) came \(gap / 1_000_000) ms after the one before; " + why)
        }
    }

    /// The breakdown of the stop-and-copy adds up, and each part
    /// matches what the simulated VMM spent.
    func testStopAndCopyBreakdownMatchesTheSimulatedCosts() {
        var c = SimCancelTests.convergingConfig()
        c.costs.pauseNs = 3_000_000
        c.costs.fetchFixedNs = 4_000_000
        c.costs.fetchNsPerGiB = 0
        c.guest.deviceSaveNs = 7_000_000
        c.guest.deviceStateBytes = 1 << 20      // 10.5 ms at 100 MB/s
        c.link.latencyNs = 2_000_000
        c.destinationResumeNs = 5_000_000
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let s = sim.stats.stop
        let why = sim.summary()
        XCTAssertEqual(s.pauseUs, 3_000, why)
        XCTAssertEqual(s.syncUs, 4_000, why)
        XCTAssertGreaterThanOrEqual(s.deviceUs, 7_000, why)
        // Flush: the buffered tail drains, END crosses (2 ms), the
        // destination starts the guest (5 ms), the ack comes back (2 ms).
        XCTAssertGreaterThanOrEqual(s.flushUs, 9_000, why)
        XCTAssertEqual(Double(s.totalUs) / 1000, Double(sim.stats.downtimeMs), accuracy: 1, why)
        XCTAssertEqual(Double(sim.stats.downtimeMs), (sim.measuredDowntimeMs ?? 0) + 2, accuracy: 1.5, why)
    }

    /// The first-pass rule: the guest is not stopped before every page went
    /// out once. 64 MiB of which the guest rewrites only 1 MiB, and
    /// downtime-target = limit (switch at the first point under the limit):
    /// 28 MB of never-sent pages already fit the 300 ms limit at 100 MB/s
    /// halfway through the first pass, but sending them paused costs the
    /// guest 280 ms where finishing the pass live leaves a 1 MiB tail.
    func testNoSwitchoverBeforeTheFirstPassEnds() {
        var c = SimT.config(mib: 64, zero: 0, linkMBps: 100, limitMs: 300)
        c.params.downtimeTargetMs = 300
        c.guest.workingSetBytes = 1 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 1e6)
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        // Not vacuous: during the first pass the prediction was already
        // under the limit, so only the rule held the switchover back.
        let tempting = sim.hooks.progress.contains {
            $0.stats.status == .active && $0.stats.passes == 0 && $0.stats.remaining > 8 * SimT.MiB
                && $0.stats.expectedDowntimeMs > 0 && $0.stats.expectedDowntimeMs <= 300
        }
        XCTAssertTrue(tempting, "no first-pass prediction under the limit: the scenario tests nothing; " + why)
        // What was sent paused is at most the working set, the outage that
        // of 1 MiB at 100 MB/s (10.5 ms) plus the fixed costs.
        XCTAssertLessThanOrEqual(sim.stats.stop.ramBytes, 1 * SimT.MiB, why)
        XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, 30, why)
    }

    /// A vCPU asleep in the throttle point does not stop until its sleep
    /// ends (up to 990 ms at 99 %): the throttle is dropped before the
    /// pause, so the pause costs only what the VMM needs (here 200 us).
    /// The guest dirties 4x what the link moves, so the closed loop holds
    /// the hot vCPU at a high throttle until the switchover.
    func testThrottleReleasedBeforeThePause() {
        let c = SimThrottleTests.hotCold(factor: 4.0, mode: .closedLoop)
        let sim = SimT.make(c)
        var atPause: [[UInt32]] = []
        sim.hooks.onCall = { [unowned sim] call in
            if call == .pauseVCPUs { atPause.append(sim.guest.vcpuThrottle) }
        }
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        let highest = sim.hooks.vcpuThrottleCalls.map { $0.percents.max() ?? 0 }.max() ?? 0
        XCTAssertGreaterThanOrEqual(highest, 50, "the guest was never throttled much: the scenario tests nothing; " + why)
        XCTAssertFalse(atPause.isEmpty, why)
        for t in atPause { XCTAssertEqual(t, [0, 0], "vCPU throttles when the pause was asked for; " + why) }
        XCTAssertLessThanOrEqual(sim.stats.stop.pauseUs, 1000, why)
        XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, 300, why)
    }

    /// The switchover decision compares expected downtime plus its margin
    /// (at least 5 % of the bandwidth-bound parts, header: expected_margin_us)
    /// with the limit; downtime-target = limit switches at the first point
    /// where that holds. Two guests whose prediction comes down to the
    /// limit in small steps: one dirtying half the link rate at random over
    /// 8 MiB (50 ms limit: without the margin it stopped at 49.6 ms
    /// expected and was down 51.6 ms), and the hot/cold pair of
    /// SimThrottleTests at 2x the link under the closed loop (300 ms).
    func testMarginKeepsASteadyLinkUnderTheLimit() {
        var random = SimT.config(mib: 32, zero: 0.2, linkMBps: 100, limitMs: 50)
        SimDestinationTests.realisticDestination(&random)
        random.guest.workingSetBytes = 8 * SimT.MiB
        random.guest.pattern = .random
        random.guest.dirty(bytesPerSecond: 50e6)
        random.deadlineSeconds = 20
        let hotCold = SimThrottleTests.hotCold(factor: 2.0, mode: .closedLoop)
        for var c in [random, hotCold] {
            let limit = c.params.downtimeLimitMs
            c.params.downtimeTargetMs = limit
            let sim = SimT.make(c)
            sim.run()
            SimT.assertCompleted(sim)
            let why = sim.summary() + " parts=\(sim.stats.expected)\n" + sim.logText()
            let e = sim.stats.expected
            let boundUs = e.ramUs + e.backlogUs + e.deviceUs
            let totalUs = boundUs + e.destinationUs + e.fixedUs
            XCTAssertGreaterThanOrEqual(Double(e.marginUs) + 1, 0.05 * Double(boundUs), why)
            XCTAssertLessThanOrEqual(Double(totalUs + e.marginUs), Double(limit) * 1000 + 1,
                                     "expected + margin over the limit at switchover; " + why)
            XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, Double(limit), why)
        }
    }

    /// Device state is sent with the guest paused, so it is part of the
    /// prediction: 6 MiB of it is 63 ms at 100 MB/s against a 100 ms limit,
    /// with downtime-target = limit (switch at the first point under it).
    func testDeviceStateIsPartOfTheDowntime() {
        var c = SimT.config(mib: 32, zero: 0.2, linkMBps: 100, limitMs: 100)
        c.params.downtimeTargetMs = 100
        c.guest.deviceStateBytes = 6 << 20
        c.guest.workingSetBytes = 8 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 20e6)
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + " parts=\(sim.stats.expected)\n" + sim.logText()
        let s = sim.stats
        XCTAssertEqual(s.deviceStateBytes, 6 << 20, why)
        // 6 MiB at the switchover bandwidth, in us.
        let deviceUs = Double(6 << 20) / Double(max(s.switchoverBandwidth, 1)) * 1e6
        XCTAssertEqual(Double(s.expected.deviceUs), deviceUs, accuracy: 0.02 * deviceUs, why)
        let measured = sim.measuredDowntimeMs ?? .infinity
        XCTAssertLessThanOrEqual(measured, 100, why)
        XCTAssertEqual(Double(s.expectedDowntimeMs), measured, accuracy: max(0.1 * measured, 5), why)
    }

    /// downtime-target (header): under the limit, keep iterating while the
    /// expected downtime is above the target and falling fast enough. A
    /// guest that dirties 30 % of what the link moves is under the 300 ms
    /// limit after its first pass (about 60 ms) and keeps converging: it
    /// must end at or under the 20 ms target, and say so (switchover_reason
    /// TARGET), not at the first point under the limit.
    func testDowntimeTargetIteratesBelowTheLimit() {
        var c = SimT.config(mib: 64, zero: 0.2, linkMBps: 100, limitMs: 300)
        c.params.downtimeTargetMs = 20
        c.guest.workingSetBytes = 32 * SimT.MiB
        c.guest.pattern = .random
        c.guest.dirty(bytesPerSecond: 30e6)
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + " reason=\(sim.stats.switchoverReason)\n" + sim.logText()
        // Not vacuous: right after the first pass it was under the limit
        // but above the target.
        let first = sim.hooks.progress.first { $0.stats.passes >= 1 && $0.stats.expectedDowntimeMs > 0 }?.stats
        XCTAssertGreaterThan(first?.expectedDowntimeMs ?? 0, 20, why)
        XCTAssertEqual(sim.stats.switchoverReason, .target, why)
        XCTAssertLessThanOrEqual(sim.stats.expectedDowntimeMs, 20, why)
        XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, 25, why)
    }

    /// A guest held back by auto-converge iterates down to half the limit,
    /// not to downtime-target: below that, iterating costs throttled
    /// seconds the limit does not ask for (the same guest unthrottled
    /// iterates down to the target, as above).
    func testThrottledGuestIteratesOnlyToHalfTheLimit() {
        var c = SimT.config(mib: 128, zero: 0.2, linkMBps: 100, limitMs: 300)
        c.params.downtimeTargetMs = 20
        c.params.autoConverge = true
        c.params.throttleMode = .closedLoop
        // Live phase capped at a fifth of the link, the stop-and-copy not
        // (the KVM force scenario's shape); the writer dirties 4x the cap
        // over a working set that does not fit the limit unthrottled.
        c.params.maxBandwidth = 20_000_000
        c.guest.workingSetBytes = 96 * SimT.MiB
        c.guest.pattern = .random
        c.guest.dirty(bytesPerSecond: 80e6)
        c.deadlineSeconds = 120
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + " reason=\(sim.stats.switchoverReason)\n" + sim.logText(last: 40)
        // Not vacuous: the throttle was on, and the first exact prediction
        // after the first pass was above half the limit.
        XCTAssertGreaterThanOrEqual(sim.throttleHistory.map(\.percent).max() ?? 0, 70, why)
        let first = sim.hooks.progress.first { $0.stats.passes >= 1 && $0.stats.expectedDowntimeMs > 0 }?.stats
        XCTAssertGreaterThan(first?.expectedDowntimeMs ?? 0, 150, why)
        // Iterated down to half the limit, and no further.
        XCTAssertEqual(sim.stats.switchoverReason, .target, why)
        XCTAssertLessThanOrEqual(sim.stats.expectedDowntimeMs, 150, why)
        XCTAssertGreaterThan(sim.stats.expectedDowntimeMs, 75, why)
        XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, 300, why)
        XCTAssertEqual(sim.guest.vcpuThrottle.max(), 0, why)
    }
}
