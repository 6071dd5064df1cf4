import CShim
import Glibc
import MigrationKit
import MigrationKitSim
import XCTest

/// The simulator's own models: if these are wrong, every Sim test is.
final class SimModelTests: XCTestCase {
    func testClockRunsActionsInOrderAtTheirTimes() {
        let clock = VirtualClock(startNs: 1_000, scanBytesPerSecond: 1e9)
        var seen: [(String, UInt64)] = []
        clock.schedule(atNs: 5_000) { seen.append(("b", clock.now)) }
        clock.schedule(atNs: 3_000) { seen.append(("a", clock.now)) }
        clock.schedule(atNs: 5_000) { seen.append(("c", clock.now)) }
        clock.schedule(atNs: 9_000) { seen.append(("d", clock.now)) }
        clock.sleep(untilNs: 6_000)
        XCTAssertEqual(seen.map(\.0), ["a", "b", "c"])
        XCTAssertEqual(seen.map(\.1), [3_000, 5_000, 5_000])
        XCTAssertEqual(clock.now, 6_000)
        clock.sleep(untilNs: 2_000)  // never backwards
        XCTAssertEqual(clock.now, 6_000)
        // 1 GB/s: 4096 bytes take 4096 ns; fractions carry over.
        clock.didScan(bytes: 4096)
        XCTAssertEqual(clock.now, 10_096)
        XCTAssertEqual(seen.map(\.0), ["a", "b", "c", "d"])
        for _ in 0..<10 { clock.didScan(bytes: 1) }  // 10 x 1 ns
        XCTAssertEqual(clock.now, 10_106)
        XCTAssertEqual(clock.scannedBytes, 4106)
    }

    func testClockReportsASpin() {
        let clock = VirtualClock()
        clock.spinLimit = 100
        var spins = 0
        clock.onSpin = { spins += 1 }
        for _ in 0..<1000 { _ = clock.nowNs() }
        XCTAssertEqual(spins, 1)
    }

    private func guest(_ mib: UInt64 = 4, rate: Double = 0, ws: UInt64? = nil,
                       pattern: WritePattern = .sweep(stridePages: 1), zero: Double = 0.5,
                       granularity: UInt64 = 4096) -> (VirtualClock, GuestModel) {
        var g = GuestConfig()
        g.regions = [.init(size: mib << 20, granularity: granularity)]
        g.zeroFraction = zero
        g.workingSetBytes = ws
        g.pattern = pattern
        if rate > 0 { g.dirty(bytesPerSecond: rate) }
        let clock = VirtualClock()
        return (clock, GuestModel(g, clock: clock))
    }

    private func fetch(_ g: GuestModel, region: Int = 0) -> Int {
        let pages = g.regions[region].pages
        var bits = [UInt64](repeating: 0, count: (pages + 63) / 64)
        bits.withUnsafeMutableBufferPointer { g.fetchDirtyLog(region: region, into: $0.baseAddress!, pages: pages) }
        return bits.reduce(0) { $0 + $1.nonzeroBitCount }
    }

    func testGuestDirtiesAtItsRateScaledByThrottleAndNotWhilePaused() {
        // 4096 pages/s over a 4 MiB working set (1024 pages).
        let (clock, g) = guest(8, rate: 4096 * 4096, ws: 4 << 20)
        XCTAssertEqual(g.workingSetBytes, 4 << 20)
        let zeroAtStart = (0..<g.regions[0].pages).filter { cshim_page_is_zero(g.regions[0].host + $0 * 4096) != 0 }.count
        XCTAssertEqual(Double(zeroAtStart) / 2048, 0.5, accuracy: 0.05)
        clock.advance(by: 100_000_000)           // 0.1 s: 409.6 writes
        XCTAssertEqual(fetch(g), 409)
        XCTAssertEqual(g.pageWrites, 409)
        g.setThrottle(percent: 75)
        clock.advance(by: 100_000_000)           // a quarter of that
        XCTAssertTrue((102...103).contains(fetch(g)))  // 102.4 + 0.6 carried over
        g.pause()
        clock.advance(by: 1_000_000_000)
        XCTAssertEqual(fetch(g), 0)
        g.resume()
        g.setThrottle(percent: 0)
        clock.advance(by: 1_000_000_000)         // 4096 writes over 1024 pages
        XCTAssertEqual(fetch(g), 1024)
        XCTAssertTrue(g.memoryIntact)
        XCTAssertEqual(g.pauseHistory.map(\.paused), [true, false])
    }

    func testSweepWithHugePageStrideTouchesEveryHugePageFirst() {
        // 16 MiB of 2 MiB pages = 8 huge pages; one write per huge page.
        let (clock, g) = guest(16, rate: 8 * 4096, pattern: .sweep(stridePages: 512), granularity: 2 << 20)
        clock.advance(by: 1_000_000_000)         // 8 writes
        XCTAssertEqual(fetch(g), 8)
        XCTAssertEqual(g.fetches.last?.granules, 8)
        XCTAssertEqual(g.fetches.last?.pages, 8)
    }

    func testGuestRateScheduleIsPiecewise() {
        var c = GuestConfig()
        c.regions = [.init(size: 8 << 20)]
        c.dirtyRate = [RateStep(atSeconds: 1, bytesPerSecond: 1000 * 4096),
                       RateStep(atSeconds: 2, bytesPerSecond: 3000 * 4096)]
        let clock = VirtualClock()
        let g = GuestModel(c, clock: clock)
        clock.advance(by: 2_500_000_000)
        g.catchUp()
        XCTAssertEqual(g.pageWrites, 1000 + 1500)
        XCTAssertEqual(g.dirtyRate(atNs: clock.ns(atSeconds: 0.5)), 0)
    }

    private func link(_ c: LinkConfig) -> (VirtualClock, LinkModel) {
        let clock = VirtualClock()
        let dest = Destination([GuestRegion(host: UnsafeMutableRawPointer(bitPattern: 4096)!, guestPhysAddr: 0,
                                            size: 4096, granularity: 4096)])
        return (clock, LinkModel(c, clock: clock, destination: dest))
    }

    func testLinkAbsorbsUpToItsBufferThenBlocksAtTheDrainRate() throws {
        var c = LinkConfig()
        c.bytesPerSecond = 1e6            // 1 byte per microsecond
        c.bufferBytes = 100_000
        let (clock, l) = link(c)
        let t0 = clock.now
        try l.transmit(bytes: 100_000)    // fits: instant
        XCTAssertEqual(clock.now, t0)
        try l.transmit(bytes: 50_000)     // must wait for 50 kB to drain: 50 ms
        XCTAssertEqual(Double(clock.now - t0), 50e6, accuracy: 1e3)
        XCTAssertEqual(l.quietAt() - clock.now, 100_000_000 + c.latencyNs, "a full buffer drains in 100 ms")
        clock.advance(by: 200_000_000)
        XCTAssertEqual(l.buffered, 0)
    }

    func testLinkStallsAndBandwidthChanges() throws {
        var c = LinkConfig()
        c.bytesPerSecond = 1e6
        c.bufferBytes = 4096
        c.stalls = [.init(startSeconds: 0.010, endSeconds: 0.030)]
        let (clock, l) = link(c)
        // 24096 bytes: 4096 fit, 20000 drain in 20 ms of flow + a 20 ms stall.
        try l.transmit(bytes: 24_096)
        XCTAssertEqual(Double(clock.elapsedNs), 40e6, accuracy: 1e3)
        clock.schedule(atSeconds: 0.050) { l.setBandwidth(2e6) }
        // 40 ms → 50 ms at 1 MB/s (10 kB), then 2 MB/s: 30 kB more takes 15 ms.
        try l.transmit(bytes: 40_000)
        XCTAssertEqual(Double(clock.elapsedNs), 65e6, accuracy: 1e3)
    }

    func testLinkBandwidthSchedule() throws {
        var c = LinkConfig()
        c.bytesPerSecond = 1e6
        c.bufferBytes = 4096
        c.bandwidthChanges = [RateStep(atSeconds: 0.010, bytesPerSecond: 4e6)]
        let (clock, l) = link(c)
        // 4096 fit; 10 ms at 1 MB/s drain 10 kB, the other 10 kB at 4 MB/s take 2.5 ms.
        try l.transmit(bytes: 4096 + 20_000)
        XCTAssertEqual(Double(clock.elapsedNs), 12.5e6, accuracy: 1e3)
        XCTAssertEqual(l.bandwidthHistory.map(\.bytesPerSecond), [1e6, 4e6])
    }

    func testLinkPeriodicStallsAndFailure() throws {
        var c = LinkConfig()
        c.bytesPerSecond = 1e6
        c.bufferBytes = 4096
        c.periodicStall = .init(periodSeconds: 0.010, stallSeconds: 0.005)  // half the time stalled
        c.failAfterBytes = 100_000
        let (clock, l) = link(c)
        try l.transmit(bytes: 4096 + 20_000)   // 20 ms of flow = 40 ms wall
        XCTAssertEqual(Double(clock.elapsedNs), 40e6, accuracy: 1e3)
        XCTAssertThrowsError(try l.transmit(bytes: 100_000)) { e in
            XCTAssertEqual((e as? MKError)?.code, .transport)
        }
        XCTAssertThrowsError(try l.transmit(bytes: 1))  // broken from now on
    }
}
