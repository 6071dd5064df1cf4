import MigrationKit
import MigrationKitSim
import XCTest

/// Shared helpers for the simulator tests (Sim-prefixed: the test module is shared).
enum SimT {
    static let KiB: UInt64 = 1 << 10
    static let MiB: UInt64 = 1 << 20
    static let MB = 1e6

    /// A guest of `mib` MiB in one region.
    static func config(mib: UInt64 = 16, granularity: UInt64 = 4096, zero: Double = 0.5,
                       linkMBps: Double = 100, limitMs: UInt64 = 300) -> SimConfig {
        var c = SimConfig()
        c.guest.regions = [GuestConfig.Region(size: mib * MiB, granularity: granularity)]
        c.guest.zeroFraction = zero
        c.link.bytesPerSecond = linkMBps * MB
        c.params.downtimeLimitMs = limitMs
        return c
    }

    static func make(_ c: SimConfig, file: StaticString = #filePath, line: UInt = #line) -> Simulation {
        do throws(MKError) {
            return try Simulation(c)
        } catch {
            XCTFail("simulation rejected its config: \(error)", file: file, line: line)
            fatalError()
        }
    }

    /// The checks every completed migration must pass.
    static func assertCompleted(_ sim: Simulation, file: StaticString = #filePath, line: UInt = #line) {
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertNil(sim.error, "expected completion: " + why, file: file, line: line)
        XCTAssertEqual(sim.stats.status, .completed, why, file: file, line: line)
        XCTAssertFalse(sim.reachedDeadline, why, file: file, line: line)
        XCTAssertFalse(sim.spinDetected, why, file: file, line: line)
        XCTAssertTrue(sim.destination.isComplete, "destination did not accept END: " + why, file: file, line: line)
        XCTAssertNil(sim.destination.error, why, file: file, line: line)
        XCTAssertTrue(sim.destinationMatchesSource, "destination memory differs from the source: " + why, file: file, line: line)
        XCTAssertTrue(sim.sourceIntact, "the engine wrote to source memory: " + why, file: file, line: line)
        XCTAssertTrue(sim.deviceStateDelivered, "device state not delivered: " + why, file: file, line: line)
        XCTAssertTrue(sim.guestPaused, "guest must stay paused on the source after completion: " + why, file: file, line: line)
        XCTAssertEqual(sim.guest.throttlePercent, 0, "throttle left on: " + why, file: file, line: line)
        XCTAssertEqual(sim.stats.remaining, 0, why, file: file, line: line)
    }

    /// The checks every failed or cancelled migration must pass.
    static func assertUnwound(_ sim: Simulation, code: MKErrorCode, status: MigrationStatus,
                              file: StaticString = #filePath, line: UInt = #line) {
        let why = sim.summary() + "\n" + sim.logText()
        XCTAssertEqual(sim.error?.code, code, why, file: file, line: line)
        XCTAssertEqual(sim.stats.status, status, why, file: file, line: line)
        XCTAssertEqual(sim.stats.error, code.rawValue, why, file: file, line: line)
        XCTAssertFalse(sim.guestPaused, "guest left paused on the source: " + why, file: file, line: line)
        XCTAssertEqual(sim.guest.throttlePercent, 0, "throttle left on: " + why, file: file, line: line)
        XCTAssertEqual(sim.hooks.throttleCalls.last?.percent ?? 0, 0, why, file: file, line: line)
        XCTAssertTrue(sim.sourceIntact, "the engine wrote to source memory: " + why, file: file, line: line)
        XCTAssertFalse(sim.splitBrain, "the guest runs on both sides: " + why, file: file, line: line)
        XCTAssertEqual(sim.hooks.pauseCalls, sim.hooks.resumeCalls, "pause/resume unbalanced: " + why, file: file, line: line)
    }
}
