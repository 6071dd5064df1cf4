import MigrationKit
import MigrationKitSim
import XCTest

/// Issue 9.7 item 6: without avail-switchover-bandwidth the switchover
/// bandwidth *is* the library's estimate (the header says it falls back to
/// it), in every snapshot: never a switchover figure while the estimate
/// says 0, never two different figures.
final class SimStatsContractTests: XCTestCase {
    private func assertSwitchoverIsTheEstimate(_ sim: Simulation, file: StaticString = #filePath, line: UInt = #line) {
        var checked = 0
        for (ns, s) in sim.hooks.progress where s.switchoverSource != .override {
            checked += 1
            guard s.switchoverBandwidth != s.bandwidthEstimate || s.switchoverSource != s.bandwidthSource else { continue }
            XCTFail("at \(ns / 1_000_000) ms: switchover_bandwidth \(s.switchoverBandwidth) (\(s.switchoverSource)) but bandwidth_estimate \(s.bandwidthEstimate) (\(s.bandwidthSource))", file: file, line: line)
            return
        }
        XCTAssertGreaterThan(checked, 0, file: file, line: line)
    }

    /// Every sample provisional (a small guest behind a stalling link):
    /// the figure the decision uses comes from them.
    func testProvisionalFigureIsReportedAsTheEstimate() {
        var c = SimT.config(mib: 8, zero: 0.3, linkMBps: 50, limitMs: 300)
        c.link.periodicStall = .init(periodSeconds: 0.05, stallSeconds: 0.02)
        c.guest.workingSetBytes = 1 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 1e6)
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        assertSwitchoverIsTheEstimate(sim)
    }

    /// Under max-bandwidth the destination's timing is the figure.
    func testPipelineFigureIsReportedAsTheEstimate() {
        var c = SimT.config(mib: 64, zero: 0.2, linkMBps: 1000, limitMs: 300)
        SimDestinationTests.realisticDestination(&c)
        c.destination.loaderBytesPerSecond = 800e6
        c.params.maxBandwidth = 100_000_000
        c.guest.workingSetBytes = 8 * SimT.MiB
        c.guest.dirty(bytesPerSecond: 50e6)
        let sim = SimT.make(c)
        sim.run()
        SimT.assertCompleted(sim)
        assertSwitchoverIsTheEstimate(sim)
    }
}
