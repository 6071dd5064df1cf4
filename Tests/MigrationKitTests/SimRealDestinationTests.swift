import MigrationKit
import MigrationKitSim
import XCTest

/// The destination is the real DestSession (what mk_dest_run runs), driven
/// through its seam (DestTransport + DestHooks) by the simulator's link and
/// virtual clock, instead of a bare StreamLoader.
final class SimRealDestinationTests: XCTestCase {
    /// A guest that keeps writing, so pages are re-sent (and some torn)
    /// over several passes: DestSession loads all of it, hands the device
    /// state to load_device_state, says hello and acknowledges, and its
    /// stats count what it loaded.
    func testDestSessionLoadsADirtyingGuestAndAcknowledges() throws {
        var c = SimT.config(mib: 16, zero: 0.3, linkMBps: 200)
        c.guest.dirtyRate = [RateStep(atSeconds: 0, bytesPerSecond: 20 * SimT.MB)]
        c.realDestination = true
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let dest = try XCTUnwrap(sim.destination.session)
        let why = sim.summary()
        XCTAssertTrue(dest.finished, why)
        XCTAssertNil(dest.error, why)

        // The acknowledgement went back, after the hello with the VMM's
        // resume cost.
        XCTAssertEqual(dest.ack?.status, 0, why)
        XCTAssertEqual(dest.returnedMessages.first, .hello(resumeCostUs: c.destinationResumeNs / 1000), why)
        XCTAssertNotNil(sim.destination.resumedAtNs, why)

        let stats = dest.session.stats()
        XCTAssertEqual(stats.status, .completed, why)
        XCTAssertEqual(stats.error, 0, why)
        let loaded = try XCTUnwrap(stats.loader)
        XCTAssertEqual(loaded.bytes, sim.link.acceptedBytes, why)
        XCTAssertGreaterThan(sim.stats.passes, 1, "the guest should have needed more than one pass: " + why)
        // Every page sent with contents was loaded; re-sent pages count again.
        XCTAssertEqual(loaded.pagesLoaded, sim.stats.normal, why)
        XCTAssertEqual(loaded.deviceStateBytes, UInt64(sim.guest.config.deviceStateBytes), why)
        XCTAssertEqual(dest.deviceStates.count, 1, why)

        // The CPU wait covers the stop-and-copy as the destination saw it,
        // from the first record sent with the guest paused to END (here
        // the meter reads the virtual clock: the figure is that span).
        let span = Double(try XCTUnwrap(stats.stoppedCpuWaitUs, why)) / 1000
        let downtime = try XCTUnwrap(sim.measuredDowntimeMs, why)
        XCTAssertGreaterThan(sim.stats.stop.ramBytes, 0, why)
        XCTAssertLessThanOrEqual(span, downtime, why)
        XCTAssertGreaterThanOrEqual(span, 0.5 * Double(sim.stats.stop.ramUs) / 1000, why)
    }
}
