import MigrationKit
import MigrationKitSim
import XCTest

/// A destination whose return direction closes while the guest is still
/// live can never acknowledge: the source must fail then, with the guest
/// running here, rather than pause it, send END and be left undecided.
final class SimReturnClosedTests: XCTestCase {
    private func failedBeforeThePause(_ sim: Simulation, file: StaticString = #filePath, line: UInt = #line) {
        let why = sim.summary() + "\n" + sim.logText()
        SimT.assertUnwound(sim, code: .transport, status: .failed, file: file, line: line)
        XCTAssertEqual(sim.hooks.pauseCalls, 0, "the guest was paused: " + why, file: file, line: line)
        XCTAssertEqual(sim.hooks.ackReads, 0, "it waited for an ack that could not come: " + why, file: file, line: line)
        XCTAssertFalse(sim.destinationRunsGuest, why, file: file, line: line)
        XCTAssertFalse(sim.destination.guestRunning, why, file: file, line: line)
        XCTAssertTrue(sim.error?.message.contains("closed the return channel") ?? false, why, file: file, line: line)
    }

    /// Mid-migration, with the guest throttled: it fails at the next poll
    /// of the destination, unthrottled.
    func testClosedWhileThrottledFailsBeforeThePause() {
        var c = SimConvergenceTests.tooFastConfig()
        c.params.autoConverge = true
        c.params.maxCpuThrottle = 20
        c.link.returnClosesAtSeconds = 6
        let sim = SimT.make(c)
        var throttle: UInt32 = 0
        sim.at(seconds: 5.99) { throttle = $0.guest.throttlePercent }
        sim.run()
        XCTAssertEqual(throttle, 20, "the case wants a throttled guest: " + sim.summary())
        failedBeforeThePause(sim)
        // Within a poll interval (a window, 100 ms), not at the switchover.
        XCTAssertLessThan(sim.elapsedSeconds, 6.2, sim.summary())
    }

    /// Closed just as the sync that decides the switchover runs (this
    /// guest converges at the first sync after arming, the end of the first
    /// pass): that sync learns it and the stop-and-copy must not start.
    func testClosedDuringTheSwitchoverSyncFailsBeforeThePause() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            if case .fetchDirtyLog = call, sim.hooks.fetchCalls == 2 { sim.link.returnClosesAtNs = sim.clock.now }
        }
        sim.run()
        XCTAssertNotNil(sim.link.returnClosesAtNs, "the case never closed the channel: " + sim.summary())
        failedBeforeThePause(sim)
    }

    /// MK_SOURCE_NO_ACK: nothing is awaited on the way back, so its closing
    /// changes nothing.
    func testClosedWithoutWaitingForTheAckCompletes() {
        var c = SimCancelTests.convergingConfig()
        c.engine.waitForAck = false
        c.link.returnClosesAtSeconds = 0.05
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
    }
}
