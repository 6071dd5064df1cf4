import MigrationKit
import MigrationKitSim
import XCTest

/// A failure's message begins with where the migration was: whether the
/// guest had been paused, whether the destination may have it all.
final class SimFailurePhaseTests: XCTestCase {
    func testTransportErrorInAPassNamesThePass() {
        var c = SimConvergenceTests.tooFastConfig()
        c.link.latencyNs = 100_000
        let sim = SimT.make(c)
        sim.at(seconds: 6) { $0.link.broken = MKError(.transport, "writev on fd 8: Connection reset by peer") }
        sim.run()
        let passes = sim.stats.passes
        XCTAssertGreaterThan(passes, 1, "the case wants a later pass: " + sim.summary())
        XCTAssertEqual(sim.error?.code, .transport, sim.summary())
        XCTAssertEqual(sim.error?.message, "pass \(passes + 1): writev on fd 8: Connection reset by peer")
        XCTAssertEqual(sim.stats.errorMessage, sim.error?.message, "the stats say the same")
    }

    func testTransportErrorInTheStopAndCopyNamesIt() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            if case .write = call, sim.guest.paused { sim.link.broken = MKError(.transport, "reset") }
        }
        sim.run()
        XCTAssertEqual(sim.error?.code, .transport, sim.summary())
        XCTAssertEqual(sim.error?.message, "stop-and-copy: reset")
    }

    func testSetupAndHelloAndAckAreNamed() {
        var c = SimCancelTests.convergingConfig()
        c.link.failAfterBytes = 10
        var sim = SimT.make(c)
        sim.run()
        XCTAssertEqual(sim.error?.message, "setup: connection reset after 10 bytes")

        c = SimCancelTests.convergingConfig()
        c.link.returnClosesAtSeconds = 0
        sim = SimT.make(c)
        sim.run()
        XCTAssertEqual(sim.error?.message, "waiting for the hello: the destination closed the channel before its hello")

        c = SimCancelTests.convergingConfig()
        c.engine.ackTimeoutMs = 50
        c.destinationResumeNs = 200_000_000
        sim = SimT.make(c)
        sim.run()
        XCTAssertTrue(sim.error?.message.hasPrefix("waiting for the ack: no acknowledgement") ?? false, sim.summary())
    }
}
