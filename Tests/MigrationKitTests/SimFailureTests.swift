import MigrationKit
import MigrationKitSim
import XCTest

/// Failures anywhere leave the guest running on the source, unthrottled,
/// with the right error code, and never running on both sides.
final class SimFailureTests: XCTestCase {
    private func failed(_ sim: Simulation, _ code: MKErrorCode, file: StaticString = #filePath, line: UInt = #line) {
        SimT.assertUnwound(sim, code: code, status: .failed, file: file, line: line)
    }

    func testTransportErrorMidStream() {
        var c = SimCancelTests.convergingConfig()
        c.link.failAfterBytes = 8_000_000
        let sim = SimT.make(c)
        sim.run()
        failed(sim, .transport)
        XCTAssertFalse(sim.destination.isComplete)
        XCTAssertEqual(sim.hooks.pauseCalls, 0, sim.summary())
    }

    func testTransportErrorWhileThrottled() {
        var c = SimConvergenceTests.tooFastConfig()
        c.params.autoConverge = true
        c.params.maxCpuThrottle = 20
        let sim = SimT.make(c)
        var throttle: UInt32 = 0
        sim.at(seconds: 6) { s in
            throttle = s.guest.throttlePercent
            s.link.broken = MKError(.transport, "cable pulled")
        }
        sim.run()
        XCTAssertEqual(throttle, 20, sim.summary())
        failed(sim, .transport)
        XCTAssertEqual(sim.error?.message, "pass \(sim.stats.passes + 1): cable pulled")
    }

    func testTransportErrorDuringStopAndCopy() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.hooks.onCall = { [unowned sim] call in
            if case .write = call, sim.guest.paused { sim.link.broken = MKError(.transport, "reset") }
        }
        sim.run()
        failed(sim, .transport)
        XCTAssertEqual(sim.hooks.pauseCalls, 1, sim.summary())
    }

    func testDirtyLogCallbackError() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.hooks.onCall = { [unowned sim] (call) throws(MKError) in
            if case .fetchDirtyLog = call, sim.hooks.fetchCalls == 2 {
                throw MKError(.callback, "get_dirty_log(region 0) returned -14")
            }
        }
        sim.run()
        failed(sim, .callback)
        XCTAssertEqual(sim.error?.message, "pass 1: get_dirty_log(region 0) returned -14")
    }

    func testDirtyLogErrorInTheFinalSync() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.hooks.onCall = { [unowned sim] (call) throws(MKError) in
            if case .fetchDirtyLog = call, sim.guest.paused { throw MKError(.callback, "KVM_GET_DIRTY_LOG failed") }
        }
        sim.run()
        failed(sim, .callback)
        XCTAssertEqual(sim.hooks.pauseCalls, 1, sim.summary())
    }

    func testPauseFailure() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.hooks.onCall = { (call) throws(MKError) in
            if call == .pauseVCPUs { throw MKError(.callback, "pause_vcpus returned -1") }
        }
        sim.run()
        failed(sim, .callback)
    }

    func testSaveDeviceStateFailure() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.hooks.onCall = { (call) throws(MKError) in
            if call == .saveDeviceState { throw MKError(.callback, "save_device_state returned -5") }
        }
        sim.run()
        failed(sim, .callback)
        XCTAssertFalse(sim.destination.isComplete, sim.summary())
    }

    func testDestinationRejects() {
        var c = SimCancelTests.convergingConfig()
        c.destinationRejectStatus = MKErrorCode.callback.rawValue
        let sim = SimT.make(c)
        sim.run()
        failed(sim, .dest)
        XCTAssertTrue(sim.destination.isComplete, "the stream itself was fine: " + sim.summary())
        XCTAssertTrue(sim.destinationMatchesSource || !sim.guest.paused, sim.summary())
        XCTAssertTrue(sim.error?.message.contains("destination") ?? false, sim.summary())
    }

    /// A destination running a newer library refuses with a code this build
    /// does not know: the VMM reads that number, not one this side made up.
    func testDestinationRejectsWithACodeFromANewerLibrary() {
        var c = SimCancelTests.convergingConfig()
        c.destinationRejectStatus = -42
        let sim = SimT.make(c)
        sim.run()
        failed(sim, .dest)
        let message = sim.error?.message ?? ""
        XCTAssertTrue(message.hasSuffix("the destination failed to resume the guest: unknown error code -42 from the peer"),
                      sim.summary())
    }

    func testDestinationFailsToLoadDeviceState() {
        let sim = SimT.make(SimCancelTests.convergingConfig())
        sim.destination.loadDeviceError = MKError(.callback, "load_device_state returned -22")
        sim.run()
        let why = sim.summary()
        XCTAssertNotNil(sim.error, why)
        XCTAssertTrue([.transport, .dest].contains(sim.error?.code), why)
        SimT.assertUnwound(sim, code: sim.error?.code ?? .dest, status: .failed)
        XCTAssertEqual(sim.destination.error?.code, .callback, why)
    }

    /// The ack does not come in time. The destination has the whole stream
    /// and starts the guest a moment later; resuming the source as well
    /// would run the guest twice.
    func testAckTimeout() {
        var c = SimCancelTests.convergingConfig()
        c.engine.ackTimeoutMs = 50
        c.destinationResumeNs = 200_000_000   // the destination is slow to start the guest
        let sim = SimT.make(c)
        sim.run()
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertEqual(sim.error?.code, .timedOut, why)
        XCTAssertTrue(sim.destinationRunsGuest, why)
        XCTAssertFalse(sim.splitBrain, "ack timeout resumed the source while the destination runs the guest: " + why)
    }
}
