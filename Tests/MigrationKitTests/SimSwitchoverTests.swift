import MigrationKit
import MigrationKitSim
import XCTest

/// The stop-and-copy phase: aborted switchovers (seed 004's "abortable
/// switchover" improvement) and the timing breakdown.
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

    /// Seed 004: the breakdown of the stop-and-copy adds up, and each part
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
}
