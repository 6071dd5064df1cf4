import MigrationKit
import MigrationKitSim
import XCTest

/// Parameters changed while the migration runs take effect at once.
final class SimParamsTests: XCTestCase {
    func testRaisingTheDowntimeLimitMidRunLetsItComplete() {
        var c = SimConvergenceTests.tooFastConfig()
        c.deadlineSeconds = 20
        let sim = SimT.make(c)
        sim.at(seconds: 3.0) { $0.downtimeLimitMs = 2000 }
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText()
        // Not before the change, and soon after it (6 MiB at 10 MB/s fits 2 s).
        XCTAssertGreaterThan(sim.hooks.lastPauseStartNs.map { $0 - sim.clock.startNs } ?? 0, 3_000_000_000, why)
        XCTAssertLessThan(sim.elapsedSeconds, 3.0 + 0.3 + 2.0, why)
        XCTAssertEqual(sim.stats.downtimeLimitMs, 2000, why)
        XCTAssertTrue(sim.hooks.progress.filter { $0.ns < 2_900_000_000 }.allSatisfy { $0.stats.downtimeLimitMs == 300 }, why)
        XCTAssertTrue(sim.hooks.logs.contains { $0.message.contains("downtime-limit 2000") }, why)
        XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, 2000, why)
    }

    func testMaxBandwidthChangesTheSendRate() {
        var c = SimT.config(mib: 48, zero: 0, linkMBps: 1000, limitMs: 300)
        c.params.maxBandwidth = 10_000_000
        c.engine.batchBytes = 256 << 10   // finer pacing, so short windows measure well
        let sim = SimT.make(c)
        var sent: [Double: UInt64] = [:]
        for t in [0.2, 0.8, 1.0, 1.3, 1.4, 1.9] {
            sim.at(seconds: t) { sent[t] = $0.link.acceptedBytes }
        }
        sim.at(seconds: 1.0) { $0.maxBandwidth = 40_000_000 }
        sim.at(seconds: 1.3) { $0.maxBandwidth = 5_000_000 }
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary()
        func rate(_ a: Double, _ b: Double) -> Double { Double((sent[b] ?? 0) - (sent[a] ?? 0)) / (b - a) }
        XCTAssertEqual(rate(0.2, 0.8), 10e6, accuracy: 1e6, why)
        XCTAssertEqual(rate(1.0, 1.3), 40e6, accuracy: 4e6, why)
        XCTAssertEqual(rate(1.4, 1.9), 5e6, accuracy: 0.75e6, why)
        // The cap does not apply to the stop-and-copy: the last MiBs went
        // at link speed.
        XCTAssertLessThan(sim.measuredDowntimeMs ?? .infinity, 100, why)
    }

    /// Auto-converge switched on at 2 s: when does the first throttle come?
    private func firstThrottleNs(switchedOnAt2sIn mode: ThrottleMode) -> UInt64? {
        var c = SimConvergenceTests.tooFastConfig()
        c.deadlineSeconds = 30
        c.params.throttleMode = mode
        let sim = SimT.make(c)
        sim.at(seconds: 2.0) { $0.autoConverge = true }
        sim.run()
        SimT.assertCompleted(sim)
        return sim.hooks.throttleCalls.first { $0.percent > 0 }?.ns
    }

    func testAutoConvergeSwitchedOnMidRun() throws {
        let first = try XCTUnwrap(firstThrottleNs(switchedOnAt2sIn: .step))
        // Two high periods after the change, not before it.
        XCTAssertGreaterThan(first, 3_000_000_000)
    }

    /// The closed loop does not wait for two high periods: its first
    /// control period after the switch (0.5 s) already throttles.
    func testClosedLoopSwitchedOnMidRunThrottlesWithinAControlPeriod() throws {
        let first = try XCTUnwrap(firstThrottleNs(switchedOnAt2sIn: .closedLoop))
        XCTAssertGreaterThan(first, 2_000_000_000)
        XCTAssertLessThanOrEqual(first, 2_600_000_000)
    }

    func testAutoConvergeSwitchedOffReleasesTheThrottle() {
        var c = SimConvergenceTests.tooFastConfig()
        c.params.autoConverge = true
        c.params.cpuThrottleInitial = 20
        c.params.maxCpuThrottle = 20      // never enough to converge
        c.deadlineSeconds = 7
        let sim = SimT.make(c)
        var before: UInt32 = 0
        var after: UInt32 = 99
        sim.at(seconds: 5.0) { before = $0.guest.throttlePercent }
        sim.at(seconds: 5.0) { $0.autoConverge = false }
        // Within a batch (1 MiB at 10 MB/s: 105 ms).
        sim.at(seconds: 5.2) { after = $0.guest.throttlePercent }
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertEqual(before, 20, why)
        XCTAssertEqual(after, 0, why)
        XCTAssertFalse(sim.hooks.throttleCalls.contains { $0.ns > 5_000_000_000 && $0.percent > 0 }, why)
        XCTAssertTrue(sim.hooks.throttleCalls.contains { $0.ns >= 5_000_000_000 && $0.percent == 0 }, why)
        XCTAssertTrue(sim.reachedDeadline, why)
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled)
    }
}
