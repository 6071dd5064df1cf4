import MigrationKit
import MigrationKitSim
import XCTest

final class SimBasicTests: XCTestCase {
    /// 1. An idle guest converges in one pass with few dirty syncs, and the
    /// destination ends up with exactly the source's memory.
    func testIdleGuestConvergesInOnePass() {
        var c = SimT.config(mib: 32, zero: 0.3, linkMBps: 200)
        c.guest.dirtyRate = []
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let s = sim.stats
        XCTAssertLessThanOrEqual(s.passes, 1, sim.summary())
        XCTAssertLessThanOrEqual(s.dirtySyncCount, 4, sim.summary())
        XCTAssertEqual(s.abortedSwitchovers, 0, sim.summary())
        XCTAssertEqual(sim.guest.pageWrites, 0)
        // Every page crossed once: data pages as PAGES, the rest as ZERO.
        XCTAssertEqual(s.normal + s.duplicate, 32 * SimT.MiB / 4096, sim.summary())
        // 32 MiB at 200 MB/s with 30 % zero pages: about 0.12 s, not more than 0.3 s.
        XCTAssertLessThan(sim.elapsedSeconds, 0.3, sim.summary())
        XCTAssertLessThanOrEqual(Double(s.downtimeMs), Double(s.downtimeLimitMs), sim.summary())
    }
}

final class SimBasicMoreTests: XCTestCase {
    /// Several regions (one of 2 MiB huge pages, placed high), a VMM that
    /// cannot tell the device-state size, no return channel: downtime ends
    /// when the last byte is written.
    func testMultiRegionGuestWithoutReturnChannel() {
        var c = SimT.config(mib: 8, zero: 0.4, linkMBps: 200)
        c.guest.regions = [
            .init(size: 8 * SimT.MiB),
            .init(size: 8 * SimT.MiB, granularity: 2 * SimT.MiB, guestPhysAddr: 1 << 32),
            .init(size: 4 * SimT.MiB),
        ]
        c.guest.reportsDeviceStateSize = false
        c.guest.deviceStateBytes = 100_000
        c.engine.deviceStateHint = 100_000
        c.hasReturnChannel = false
        c.guest.dirty(bytesPerSecond: 8e6)
        c.guest.pattern = .random
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        let s = sim.stats
        XCTAssertEqual(sim.hooks.ackReads, 0, sim.summary())
        XCTAssertEqual(s.pendingDeviceBytes, 100_000, "the hint stands in for the size: " + sim.summary())
        XCTAssertEqual(s.deviceStateBytes, 100_000, sim.summary())
        XCTAssertEqual(s.total, 20 * SimT.MiB)
        XCTAssertEqual(Set(sim.guest.fetches.map(\.region)), [0, 1, 2])
        // The stop-and-copy breakdown adds up to the downtime.
        XCTAssertEqual(Double(s.stop.totalUs) / 1000, Double(s.downtimeMs), accuracy: 1.0, sim.summary())
    }

    /// Pages the guest writes between their checksum and their copy reach
    /// the destination torn; they are re-sent and the copy ends exact.
    func testTornPagesAreResentAndTheCopyIsExact() {
        var c = SimT.config(mib: 16, zero: 0.0, linkMBps: 100, limitMs: 300)
        c.scanBytesPerSecond = 0.5e9              // a slow scan leaves time to tear pages
        c.guest.workingSetBytes = 2 * SimT.MiB
        c.guest.pattern = .random
        c.guest.dirty(bytesPerSecond: 100e6)
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        XCTAssertGreaterThan(sim.destination.loader.stats.tornPages, 0, "nothing was torn: the test proves nothing; " + sim.summary())
    }

    /// Device-model writes reported through ExternalMarks (mk_source_mark_dirty)
    /// reach the destination although the dirty log never shows them.
    func testDMAWritesReportedWithMarkDirtyAreMigrated() {
        var c = SimT.config(mib: 16, zero: 0.5, linkMBps: 100)
        c.guest.dirty(bytesPerSecond: 2e6)
        let sim = SimT.make(c)
        for i in 0..<20 {
            // Every 4 ms, a page spread over memory, during and after the first pass.
            sim.at(seconds: 0.004 * Double(i + 1)) { $0.dmaWrite(page: (i * 131) % 4096) }
        }
        sim.run()
        SimT.assertCompleted(sim)
        XCTAssertEqual(sim.guest.dmaWrites, 20, "the run was too short to see every write: " + sim.summary())
    }

    /// The same writes left unreported: the end-to-end check catches the
    /// difference (so the check above is not vacuous).
    func testUnreportedDMAWritesAreCaughtByTheEndToEndCheck() {
        var c = SimT.config(mib: 16, zero: 0.5, linkMBps: 100)
        c.guest.dirty(bytesPerSecond: 2e6)
        let sim = SimT.make(c)
        for i in 0..<20 {
            sim.at(seconds: 0.004 * Double(i + 1)) { $0.dmaWrite(page: (i * 131) % 4096, report: false) }
        }
        sim.run()
        XCTAssertNil(sim.error, sim.summary())
        XCTAssertEqual(sim.guest.dmaWrites, 20, sim.summary())
        XCTAssertFalse(sim.destinationMatchesSource, "unreported DMA writes went unnoticed: " + sim.summary())
        XCTAssertTrue(sim.sourceIntact)
    }
}
