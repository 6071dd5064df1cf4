import MigrationKit
import MigrationKitSim
import XCTest

/// Cancel in every state. Afterwards the guest runs on the source,
/// unthrottled, its memory untouched, status cancelled, and never on both
/// sides at once.
final class SimCancelTests: XCTestCase {
    /// Converges in well under a second with a real stop-and-copy.
    static func convergingConfig() -> SimConfig {
        var c = SimT.config(mib: 16, zero: 0.2, linkMBps: 100, limitMs: 300)
        c.guest.workingSetBytes = 4 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 10e6)
        c.costs.pauseNs = 2_000_000
        c.guest.deviceSaveNs = 3_000_000
        return c
    }

    private func cancelled(_ sim: Simulation, file: StaticString = #filePath, line: UInt = #line) {
        SimT.assertUnwound(sim, code: .canceled, status: .cancelled, file: file, line: line)
        XCTAssertFalse(sim.destinationRunsGuest, "the destination got the whole stream: " + sim.summary(), file: file, line: line)
        XCTAssertFalse(sim.control.requestCancel(), "cancel after the end must report nothing to cancel", file: file, line: line)
    }

    func testCancelBeforeStart() {
        let sim = SimT.make(Self.convergingConfig())
        XCTAssertTrue(sim.control.requestCancel())
        XCTAssertEqual(sim.control.snapshot().status, .none)
        sim.run()
        cancelled(sim)
        XCTAssertEqual(sim.hooks.pauseCalls, 0, sim.summary())
        XCTAssertLessThan(sim.link.acceptedBytes, 1 << 20, "it went on sending after the cancel: " + sim.summary())
    }

    func testCancelDuringSetup() {
        let sim = SimT.make(Self.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            if case .fetchDirtyLog = call, sim.hooks.fetchCalls == 1 {
                XCTAssertEqual(sim.control.snapshot().status, .setup)
                sim.control.requestCancel()
                XCTAssertEqual(sim.control.snapshot().status, .cancelling)
            }
        }
        sim.run()
        cancelled(sim)
        XCTAssertLessThan(sim.link.acceptedBytes, 1 << 20, sim.summary())
    }

    func testCancelWhileActive() {
        let sim = SimT.make(Self.convergingConfig())
        var status: MigrationStatus?
        sim.at(seconds: 0.05) { s in
            status = s.control.snapshot().status
            s.control.requestCancel()
        }
        sim.run()
        XCTAssertEqual(status, .active)
        cancelled(sim)
        XCTAssertEqual(sim.elapsedSeconds, 0.05, accuracy: 0.02, "the cancel took long to act: " + sim.summary())
    }

    func testCancelWhileThrottledReleasesTheThrottle() {
        var c = SimConvergenceTests.tooFastConfig()
        c.params.autoConverge = true
        c.params.cpuThrottleInitial = 20
        c.params.maxCpuThrottle = 20
        let sim = SimT.make(c)
        var throttleBefore: UInt32 = 0
        sim.at(seconds: 6.0) { s in
            throttleBefore = s.guest.throttlePercent
            s.control.requestCancel()
        }
        sim.run()
        XCTAssertEqual(throttleBefore, 20, sim.summary())
        cancelled(sim)
        XCTAssertEqual(sim.stats.cpuThrottlePercentage, 0, sim.summary())
    }

    /// Cancel arriving while the vCPUs are being paused for switchover.
    func testCancelInsidePauseVCPUs() {
        let sim = SimT.make(Self.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            if call == .pauseVCPUs { sim.control.requestCancel() }
        }
        sim.run()
        cancelled(sim)
        XCTAssertEqual(sim.hooks.pauseCalls, 1, sim.summary())
        XCTAssertEqual(sim.hooks.resumeCalls, 1, sim.summary())
        XCTAssertEqual(sim.guest.pauseHistory.map(\.paused), [true, false])
    }

    /// Same, from a scheduled action that fires in the middle of the pause.
    func testCancelScheduledDuringThePause() {
        let sim = SimT.make(Self.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            guard call == .pauseVCPUs else { return }
            sim.clock.schedule(atNs: sim.clock.now + sim.hooks.costs.pauseNs / 2) { sim.control.requestCancel() }
        }
        sim.run()
        cancelled(sim)
        XCTAssertEqual(sim.hooks.pauseCalls, 1, sim.summary())
    }

    /// Cancel during the final dirty sync, with the guest paused.
    func testCancelDuringTheFinalSync() {
        let sim = SimT.make(Self.convergingConfig())
        var acceptedAtCancel: UInt64?
        sim.hooks.onCall = { [unowned sim] call in
            if case .fetchDirtyLog = call, sim.guest.paused {
                sim.control.requestCancel()
                acceptedAtCancel = sim.link.acceptedBytes
            }
        }
        sim.run()
        cancelled(sim)
        // (stats.stop is only filled in by a completed stop-and-copy, so
        // it cannot tell; the link can.)
        XCTAssertEqual(sim.link.acceptedBytes, acceptedAtCancel, "RAM sent after the cancel: " + sim.summary())
    }

    /// A transport a cancel cannot interrupt (callbacks that just block):
    /// the engine itself must notice the cancel at its next step, not run
    /// the migration to its end and fail only at the commit.
    func testCancelActsWithoutInterruptibleIO() {
        var c = Self.convergingConfig()
        c.cancelInterruptsIO = false
        let sim = SimT.make(c)
        var acceptedAtCancel: UInt64 = 0
        sim.at(seconds: 0.05) { s in
            acceptedAtCancel = s.link.acceptedBytes
            s.control.requestCancel()
        }
        sim.run()
        cancelled(sim)
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertEqual(sim.hooks.pauseCalls, 0, "the guest was paused after the cancel: " + why)
        // At most the batch in flight (1 MiB at 100 MB/s: 10.5 ms) after it.
        XCTAssertLessThanOrEqual(sim.link.acceptedBytes - acceptedAtCancel, (1 << 20) + (64 << 10), why)
        XCTAssertLessThanOrEqual(sim.elapsedSeconds, 0.05 + 0.02, why)
    }

    /// Cancel while the last RAM goes out with the guest paused.
    func testCancelDuringTheStopAndCopyRAM() {
        let sim = SimT.make(Self.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            if case .write = call, sim.guest.paused { sim.control.requestCancel() }
        }
        sim.run()
        cancelled(sim)
        XCTAssertTrue(sim.guest.savedDeviceStates.isEmpty, "device state saved after the cancel: " + sim.summary())
    }

    /// Cancel while the device state is being saved: the stream must not be
    /// finished after it (an END at the destination means the guest starts
    /// there, while the source resumes it too).
    func testCancelDuringSaveDeviceState() {
        let sim = SimT.make(Self.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            if call == .saveDeviceState { sim.control.requestCancel() }
        }
        sim.run()
        cancelled(sim)
    }

    /// Cancel while waiting for the destination's acknowledgement. The END
    /// is out: whatever the outcome, the guest must not run on both sides.
    func testCancelWhileWaitingForTheAck() {
        var c = Self.convergingConfig()
        c.destinationResumeNs = 20_000_000
        let sim = SimT.make(c)
        sim.hooks.onCall = { [unowned sim] call in
            if call == .readAck {
                sim.clock.schedule(atNs: sim.clock.now + 5_000_000) { sim.control.requestCancel() }
            }
        }
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertFalse(sim.splitBrain, "the guest runs on both sides after a cancel during the ack wait: " + why)
        if sim.error == nil {
            SimT.assertCompleted(sim)
        } else {
            cancelled(sim)
        }
    }
}
