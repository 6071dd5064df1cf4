import MigrationKit
import MigrationKitSim
import XCTest

/// Closed-loop, per-vCPU auto-converge under the virtual clock: a guest with
/// one hot vCPU (it dirties) and one cold one (it computes, dirtying 2 % as
/// much), a link of 10 MB/s, dirty rates from 0.5x to 4x the link, a rate
/// that changes mid-run, and QEMU's step controller side by side.
final class SimThrottleTests: XCTestCase {
    static let linkMBps = 10.0

    /// 8 MiB guest, 6 MiB working set, 300 ms limit; the hot vCPU dirties
    /// `factor` x the link, the cold one 2 % of that.
    static func hotCold(factor: Double, mode: ThrottleMode, attributed: Bool = true) -> SimConfig {
        var c = SimT.config(mib: 8, zero: 0.1, linkMBps: linkMBps, limitMs: 300)
        c.guest.workingSetBytes = 6 * SimT.MiB
        c.guest.dirty(bytesPerSecond: factor * linkMBps * 1e6)
        c.guest.vcpuDirtyShares = [1.0, 0.02]
        c.guest.attributesDirtying = attributed
        c.params.autoConverge = true
        c.params.throttleMode = mode
        c.params.cpuThrottleInitial = 20
        c.params.cpuThrottleIncrement = 10
        c.deadlineSeconds = 120
        return c
    }

    /// Share of the migration's time vCPU `v` ran (not throttled).
    static func runShare(_ sim: Simulation, _ v: Int) -> Double {
        let active = Double(sim.hooks.lastPauseStartNs ?? sim.clock.now) - Double(sim.clock.startNs)
        return Double(sim.guest.vcpuRunNs[v]) / max(active, 1)
    }

    func testClosedLoopThrottlesOnlyTheHotVCPUAcrossDirtyRates() {
        for factor in [0.4, 0.5, 1.0, 2.0, 4.0] {
            let sim = SimT.make(Self.hotCold(factor: factor, mode: .closedLoop))
            sim.run()
            SimT.assertCompleted(sim)
            let why = "factor \(factor): " + sim.summary() + "\n" + sim.logText(last: 30)
            // The cold vCPU is never throttled; it keeps running.
            XCTAssertFalse(sim.hooks.vcpuThrottleCalls.contains { $0.percents.count > 1 && $0.percents[1] > 0 }, why)
            XCTAssertGreaterThanOrEqual(Self.runShare(sim, 1), 0.99, why)
            let hotMax = sim.hooks.vcpuThrottleCalls.map { $0.percents.first ?? 0 }.max() ?? 0
            if factor < 0.5 {
                // Under the target (50 % of the link): no throttle.
                XCTAssertEqual(hotMax, 0, why)
            } else if factor == 0.5 {
                // Just over it (the cold vCPU's 2 % on top): a light touch.
                XCTAssertLessThanOrEqual(hotMax, 10, why)
            } else {
                XCTAssertGreaterThan(hotMax, 0, why)
                // The first pass runs free; then no waiting for two high
                // periods: the first control period after it (0.5 s, plus
                // a sync) throttles.
                let decisions = sim.hooks.logs.map(\.message).filter { $0.hasPrefix("auto-converge (closed-loop") }
                XCTAssertFalse(decisions.isEmpty, why)
                XCTAssertFalse(decisions.contains { $0.hasPrefix("auto-converge (closed-loop, pass 0)") },
                               "throttled in the first pass; " + why)
                // The progress report that shows the pass done comes at the
                // next 100 ms window, so this bound is loose by that much.
                let passEnd = sim.hooks.progress.first { $0.stats.passes > 0 }?.ns ?? .max
                let first = sim.hooks.throttleCalls.first { $0.percent > 0 }?.ns ?? .max
                XCTAssertLessThanOrEqual(first, passEnd &+ 700_000_000, why)
            }
            XCTAssertLessThan(sim.elapsedSeconds, 6, why)
            XCTAssertLessThanOrEqual(sim.measuredDowntimeMs ?? .infinity, 300, why)
            // Every vCPU unthrottled at the end; stats say what sleeping cost.
            XCTAssertEqual(sim.guest.vcpuThrottle, [0, 0], why)
            XCTAssertEqual(sim.stats.vcpus.map(\.throttlePercent), [0, 0], why)
            XCTAssertEqual(sim.stats.vcpus[1].throttleSleepUs, 0, why)
            if factor > 0.5 {
                XCTAssertGreaterThan(sim.stats.throttleSleepUs, 0, why)
                XCTAssertEqual(sim.stats.throttleSleepUs, sim.stats.vcpus[0].throttleSleepUs, why)
            }
            XCTAssertTrue(sim.stats.vcpus.allSatisfy(\.dirtyRateKnown), why)
            XCTAssertEqual(sim.stats.throttleMode, .closedLoop, why)
        }
    }

    /// The same guests under QEMU's step controller: it waits two periods,
    /// steps, and slows the cold vCPU just as much. The closed loop converges
    /// sooner and leaves the cold vCPU alone.
    func testStepControllerSideBySide() {
        for factor in [1.0, 2.0, 4.0] {
            let step = SimT.make(Self.hotCold(factor: factor, mode: .step))
            step.run()
            SimT.assertCompleted(step)
            let closed = SimT.make(Self.hotCold(factor: factor, mode: .closedLoop))
            closed.run()
            SimT.assertCompleted(closed)
            let why = "factor \(factor)\nstep: " + step.summary() + "\nclosed: " + closed.summary()
            // Step: steps of the configured size, on every vCPU alike.
            let steps = step.hooks.throttleSteps
            XCTAssertEqual(steps.dropFirst().first, 20, why)
            XCTAssertTrue(step.hooks.vcpuThrottleCalls.allSatisfy { Set($0.percents).count == 1 }, why)
            // ...the cold one too (20 %, then 30 %, for about half the run).
            XCTAssertTrue(step.hooks.vcpuThrottleCalls.contains { $0.percents.count > 1 && $0.percents[1] > 0 }, why)
            XCTAssertLessThan(Self.runShare(step, 1), 0.95, why)
            XCTAssertGreaterThanOrEqual(Self.runShare(closed, 1), 0.99, why)
            XCTAssertLessThan(closed.elapsedSeconds, step.elapsedSeconds, why)
        }
    }

    /// A plain dirty bitmap (no per-vCPU counts): the closed loop still
    /// converges, throttling every vCPU alike.
    func testClosedLoopWithoutAttributionThrottlesAllVCPUsAlike() {
        let sim = SimT.make(Self.hotCold(factor: 2.0, mode: .closedLoop, attributed: false))
        sim.run()
        SimT.assertCompleted(sim)
        let why = sim.summary() + "\n" + sim.logText(last: 30)
        let live = sim.hooks.vcpuThrottleCalls.filter { $0.percents.contains { $0 > 0 } }
        XCTAssertFalse(live.isEmpty, why)
        XCTAssertTrue(live.allSatisfy { $0.percents[0] == $0.percents[1] }, why)
        XCTAssertLessThan(sim.elapsedSeconds, 6, why)
        XCTAssertFalse(sim.stats.vcpus.contains(where: \.dirtyRateKnown), why)
    }

    /// The dirty rate changes mid-run: under the target at first (no
    /// throttle), then 3x the link (throttled within a control period), then
    /// 0.1x (released within two control periods, while still migrating).
    func testRateChangingMidRun() {
        var c = Self.hotCold(factor: 0.3, mode: .closedLoop)
        c.params.downtimeLimitMs = 0     // keep it migrating: look at the throttle only
        c.params.downtimeTargetMs = 0
        c.deadlineSeconds = 8
        let sim = SimT.make(c)
        sim.dirtyRate(atSeconds: 2.0, bytesPerSecond: 3 * Self.linkMBps * 1e6)
        sim.dirtyRate(atSeconds: 5.0, bytesPerSecond: 0.1 * Self.linkMBps * 1e6)
        var at = [Double: [UInt32]]()
        for t in [1.9, 3.0, 4.9, 6.0, 7.9] { sim.at(seconds: t) { at[t] = $0.guest.vcpuThrottle } }
        sim.run()
        let why = "\(at.sorted { $0.key < $1.key })\n" + sim.summary() + "\n" + sim.logText(last: 40)
        XCTAssertEqual(at[1.9], [0, 0], why)
        XCTAssertGreaterThan(at[3.0]?[0] ?? 0, 50, why)
        XCTAssertEqual(at[3.0]?[1], 0, why)
        XCTAssertGreaterThan(at[4.9]?[0] ?? 0, 50, why)
        XCTAssertEqual(at[6.0], [0, 0], why)
        XCTAssertEqual(at[7.9], [0, 0], why)
        let first = sim.hooks.throttleCalls.first { $0.percent > 0 }?.ns ?? .max
        XCTAssertLessThanOrEqual(first, 2_700_000_000, why)
        let release = sim.hooks.throttleCalls.first { $0.ns > 5_000_000_000 && $0.percent == 0 }?.ns ?? .max
        // The period straddling the change still saw the high rate: the next one
        // (two control periods at most) releases.
        XCTAssertLessThanOrEqual(release, 6_100_000_000, why)
        XCTAssertTrue(sim.reachedDeadline, why)
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled)
    }

    /// Cancel while throttled: every vCPU released.
    func testCancelReleasesEveryVCPU() {
        var c = Self.hotCold(factor: 4.0, mode: .closedLoop)
        c.params.downtimeLimitMs = 0
        c.params.downtimeTargetMs = 0
        let sim = SimT.make(c)
        var during: [UInt32] = []
        sim.at(seconds: 2.9) { during = $0.guest.vcpuThrottle }
        sim.cancel(atSeconds: 3.0)
        sim.run()
        let why = sim.summary()
        XCTAssertGreaterThan(during.first ?? 0, 0, why)
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled)
        XCTAssertEqual(sim.guest.vcpuThrottle, [0, 0], why)
        XCTAssertEqual(sim.stats.vcpus.map(\.throttlePercent), [0, 0], why)
    }

    /// The JSON carries the per-vCPU block.
    func testStatsJSONHasPerVCPUFields() {
        let sim = SimT.make(Self.hotCold(factor: 2.0, mode: .closedLoop))
        sim.run()
        let json = sim.stats.json
        XCTAssertTrue(json.contains("\"throttle-mode\":\"closed-loop\""), json)
        XCTAssertTrue(json.contains("\"vcpus\":[{\"vcpu\":0,"), json)
        XCTAssertTrue(json.contains("\"throttle-sleep-us\":"), json)
    }

    /// max-cpu-throttle bounds the closed loop too: a guest dirtying 4x the
    /// link wants about 90 % on its hot vCPU, and gets 60.
    func testClosedLoopRespectsMaxCpuThrottle() {
        var c = Self.hotCold(factor: 4.0, mode: .closedLoop)
        c.params.maxCpuThrottle = 60
        c.deadlineSeconds = 5
        let sim = SimT.make(c)
        sim.run()
        let why = sim.summary() + "\n" + sim.logText(last: 30)
        let highest = sim.hooks.vcpuThrottleCalls.map { $0.percents.max() ?? 0 }.max() ?? 0
        XCTAssertEqual(highest, 60, why)
        XCTAssertEqual(sim.guest.vcpuThrottle, [0, 0], why)
    }
}

/// The controller's arithmetic, without a simulation.
final class ClosedLoopThrottleTests: XCTestCase {
    func params(_ threshold: UInt32 = 50) -> MigrationParameters {
        var p = MigrationParameters()
        p.autoConverge = true
        p.throttleTriggerThreshold = threshold
        return p
    }

    func testWaterFillingSlowsOnlyTheHeavyDirtier() {
        var c = ClosedLoopThrottle(vcpus: 3)
        // 100 MB/s link -> target 50 MB/s; vCPUs dirty 90, 8, 2 MB/s.
        let changed = c.onPeriod(dirtiedBytes: 100_000_000 / 2, periodNs: 500_000_000,
                                 vcpuPages: [900, 80, 20], retireBytesPerSecond: 100e6, params: params())
        XCTAssertTrue(changed)
        // Cap 40 MB/s: vCPU 0 runs 40/90 of the time -> 56 %; the others none.
        XCTAssertEqual(c.percents, [56, 0, 0])
    }

    func testDemandHeldThenReleased() {
        var c = ClosedLoopThrottle(vcpus: 1)
        _ = c.onPeriod(dirtiedBytes: 100_000_000, periodNs: 1_000_000_000, vcpuPages: nil,
                       retireBytesPerSecond: 100e6, params: params())
        XCTAssertEqual(c.percents, [50])
        // Throttled to exactly the target: stays.
        XCTAssertFalse(c.onPeriod(dirtiedBytes: 50_000_000, periodNs: 1_000_000_000, vcpuPages: nil,
                                  retireBytesPerSecond: 100e6, params: params()))
        XCTAssertEqual(c.percents, [50])
        // Demand gone: released at once.
        XCTAssertTrue(c.onPeriod(dirtiedBytes: 5_000_000, periodNs: 1_000_000_000, vcpuPages: nil,
                                 retireBytesPerSecond: 100e6, params: params()))
        XCTAssertEqual(c.percents, [0])
    }

    func testCappedAtMaxCpuThrottle() {
        var c = ClosedLoopThrottle(vcpus: 2)
        var p = params()
        p.maxCpuThrottle = 70
        _ = c.onPeriod(dirtiedBytes: 1_000_000_000, periodNs: 1_000_000_000, vcpuPages: [1, 0],
                       retireBytesPerSecond: 10e6, params: p)
        XCTAssertEqual(c.percents, [70, 0])
    }
}
