@testable import MigrationKit
import XCTest

/// DeliveryTracker and SwitchoverRule: pure policy, times come in as numbers.
final class PolicyDeliveryRuleTests: XCTestCase {
    private func report(_ consumed: UInt64, us: UInt32, ps: UInt32 = 0) -> ProgressReport {
        ProgressReport(consumed: consumed, destinationUs: us, zeroPagePs: ps)
    }

    // MARK: DeliveryTracker

    /// The backlog is bytes written but not loaded, and the ZERO pages of
    /// records that end past what the destination loaded.
    func testBacklogLedgerCountsZeroPagesAheadOfTheLoader() {
        var d = DeliveryTracker()
        XCTAssertNil(d.backlog(written: 0))
        d.wroteZero(endingAt: 1000, pages: 100)
        d.wrote(from: 0, to: 1000)      // ZERO pages ending at 1000
        d.wrote(from: 1000, to: 5000)
        d.wroteZero(endingAt: 6000, pages: 300)
        d.wrote(from: 5000, to: 6000)   // ending at 6000
        d.add([report(999, us: 10, ps: 2_000_000)])
        XCTAssertEqual(d.backlog(written: 6000)?.bytes, 5001)
        XCTAssertEqual(d.backlog(written: 6000)?.zeroPages, 400)
        XCTAssertEqual(d.zeroPagePs, 2_000_000)
        d.add([report(1000, us: 20, ps: 2_000_000)])
        XCTAssertEqual(d.backlog(written: 6000)?.zeroPages, 300)
        d.add([report(6000, us: 30, ps: 2_000_000)])
        XCTAssertEqual(d.backlog(written: 6000)?.bytes, 0)
        XCTAssertEqual(d.backlog(written: 6000)?.zeroPages, 0)
    }

    /// A rate sample comes from reports inside one stretch the source wrote
    /// without stopping, timed on the destination's clock (which wraps),
    /// with the ZERO pages' load time taken out.
    func testRateFromStretchesOnTheDestinationClock() throws {
        var d = DeliveryTracker()
        let mib: UInt64 = 1 << 20
        d.wrote(from: 0, to: 4 * mib)
        d.pause()
        // 100 MB/s: 1 MiB per 10486 us; the clock wraps in between.
        let t0 = UInt32.max - 5000
        d.add([report(mib, us: t0), report(2 * mib, us: t0 &+ 10486), report(3 * mib, us: t0 &+ 20972)])
        XCTAssertNil(d.rate, "the stretch is not loaded past its end yet")
        d.add([report(4 * mib, us: t0 &+ 31457)])
        let r = try XCTUnwrap(d.rate)
        XCTAssertEqual(r, 100e6, accuracy: 1e5)
        XCTAssertEqual(d.samples, 1)
    }

    /// Reports across a pause (the source slept: the loader waited for it)
    /// are not a rate; a stretch too short gives no sample either.
    func testNoRateAcrossAPauseOrFromAShortStretch() {
        var d = DeliveryTracker()
        d.wrote(from: 0, to: 300 << 10)   // < 2 x 192 KiB
        d.pause()
        d.wrote(from: 300 << 10, to: 400 << 10)
        d.pause()
        d.add([report(64 << 10, us: 0), report(256 << 10, us: 100), report(400 << 10, us: 5_000_000)])
        XCTAssertNil(d.rate)
    }

    /// Dispersion: how far samples stray from the running rate.
    func testDispersionGrowsWithUnevenSamples() throws {
        func run(_ rates: [Double]) -> DeliveryTracker {
            var d = DeliveryTracker()
            var offset: UInt64 = 0
            var us: UInt32 = 0
            for r in rates {
                let len: UInt64 = 1 << 20
                d.wrote(from: offset, to: offset + len)
                d.pause()
                let dt = UInt32(Double(len / 2) / r * 1e6)
                d.add([report(offset + len / 4, us: us), report(offset + 3 * len / 4, us: us + dt), report(offset + len, us: us + dt + 1)])
                us += dt + 1000
                offset += len
            }
            return d
        }
        let even = run([100e6, 100e6, 100e6, 100e6])
        let uneven = run([100e6, 50e6, 150e6, 60e6])
        XCTAssertEqual(even.samples, 4)
        XCTAssertLessThan(even.dispersion, 0.01)
        XCTAssertGreaterThan(uneven.dispersion, 0.2)
    }

    // MARK: SwitchoverRule

    private func prediction(ram: Double, fixed: Double = 2, bw: Double = 100e6) -> DowntimePrediction {
        DowntimePrediction(totalMs: ram + fixed, ramMs: ram, backlogMs: 0, deviceMs: 0, destinationMs: 0, fixedMs: fixed,
                           marginMs: 0, bandwidth: BandwidthEstimate(bytesPerSecond: bw, source: .link))
    }

    func testTargetAndLimit() {
        let rule = SwitchoverRule()
        XCTAssertEqual(rule.decide(prediction(ram: 40), limitMs: 300, targetMs: 50, nowNs: 0, elapsedNs: 0), .target)
        XCTAssertNil(rule.decide(prediction(ram: 400), limitMs: 300, targetMs: 50, nowNs: 0, elapsedNs: 0), "over the limit")
        // target = limit: QEMU's rule, switch as soon as under the limit.
        XCTAssertEqual(rule.decide(prediction(ram: 250), limitMs: 300, targetMs: 300, nowNs: 0, elapsedNs: 0), .target)
    }

    /// Under the limit and falling fast: keep iterating; flat: no gain.
    func testKeepIteratingWhileFallingFastElseNoGain() {
        var falling = SwitchoverRule()
        var flat = SwitchoverRule()
        let ms: UInt64 = 1_000_000
        for k in 0...10 {
            falling.observe(prediction(ram: 250 - 20 * Double(k)), atNs: UInt64(k) * 50 * ms)  // -400 ms/s
            flat.observe(prediction(ram: 200), atNs: UInt64(k) * 50 * ms)
        }
        let now = 500 * ms
        XCTAssertNil(falling.decide(prediction(ram: 50), limitMs: 300, targetMs: 10, nowNs: now, elapsedNs: 2000 * ms))
        XCTAssertEqual(flat.decide(prediction(ram: 200), limitMs: 300, targetMs: 10, nowNs: now, elapsedNs: 2000 * ms), .noGain)
        XCTAssertNil(SwitchoverRule().declinePerSecond(atNs: now), "no history, no trend")
    }

    /// The fixed parts do not shrink: no waiting for them.
    func testNoGainWhenOnlyFixedPartsAreLeft() {
        var r = SwitchoverRule()
        for k in 0...10 { r.observe(prediction(ram: 10 - Double(k), fixed: 100), atNs: UInt64(k) * 50_000_000) }
        XCTAssertEqual(r.decide(prediction(ram: 1, fixed: 100), limitMs: 300, targetMs: 50, nowNs: 500_000_000, elapsedNs: 5_000_000_000), .noGain)
    }

    /// Budget: iterating on is worth it only if half the downtime is
    /// reached within max(1 s, half the migration so far).
    func testBudget() {
        var r = SwitchoverRule()
        let ms: UInt64 = 1_000_000
        for k in 0...10 { r.observe(prediction(ram: 200 - Double(k)), atNs: UInt64(k) * 100 * ms) }  // -10 ms/s
        // Halving 200 ms at 10 ms/s takes 10 s.
        XCTAssertEqual(r.decide(prediction(ram: 190), limitMs: 300, targetMs: 10, nowNs: 1000 * ms, elapsedNs: 4000 * ms), .noGain)
        XCTAssertNil(r.decide(prediction(ram: 190), limitMs: 300, targetMs: 10, nowNs: 1000 * ms, elapsedNs: 40_000 * ms))
    }

    /// A throttled guest iterates down to half the limit, not to the
    /// target: below that, iterating costs throttled seconds the limit does
    /// not ask for.
    func testThrottledGuestIteratesOnlyToHalfTheLimit() {
        var r = SwitchoverRule()
        let ms: UInt64 = 1_000_000
        for k in 0...10 { r.observe(prediction(ram: 250 - 10 * Double(k)), atNs: UInt64(k) * 100 * ms) }  // -100 ms/s
        // 142 ms: under half the limit. Unthrottled it would iterate on
        // (halving at 100 ms/s takes 0.7 s, within the budget).
        let low = prediction(ram: 140)
        XCTAssertNil(r.decide(low, limitMs: 300, targetMs: 10, nowNs: 1000 * ms, elapsedNs: 6000 * ms))
        XCTAssertEqual(r.decide(low, limitMs: 300, targetMs: 10, nowNs: 1000 * ms, elapsedNs: 6000 * ms, throttled: true), .target)
        // 222 ms: above half the limit, falling fast: iterate either way.
        let high = prediction(ram: 220)
        XCTAssertNil(r.decide(high, limitMs: 300, targetMs: 10, nowNs: 1000 * ms, elapsedNs: 6000 * ms, throttled: true))
        // A target above half the limit stays as it is.
        XCTAssertEqual(r.decide(prediction(ram: 190), limitMs: 300, targetMs: 200, nowNs: 1000 * ms, elapsedNs: 6000 * ms,
                                throttled: true), .target)
        // Never over the limit.
        XCTAssertNil(r.decide(prediction(ram: 400), limitMs: 300, targetMs: 10, nowNs: 1000 * ms, elapsedNs: 6000 * ms, throttled: true))
    }

    /// A new bandwidth figure moves every prediction at once: not a trend.
    func testBandwidthChangeIsNotADecline() {
        var r = SwitchoverRule()
        let ms: UInt64 = 1_000_000
        // 12 MB left all along: 600 ms at 20 MB/s, then (a new override at
        // 0.9 s) 15 ms at 800 MB/s.
        for k in 0...8 { r.observe(prediction(ram: 600, bw: 20e6), atNs: UInt64(k) * 100 * ms) }
        for k in 9...10 { r.observe(prediction(ram: 15, bw: 800e6), atNs: UInt64(k) * 100 * ms) }
        XCTAssertEqual(r.declinePerSecond(atNs: 1000 * ms) ?? 1, 0, accuracy: 0.01)
        XCTAssertEqual(r.decide(prediction(ram: 15, fixed: 37, bw: 800e6), limitMs: 150, targetMs: 50, nowNs: 1000 * ms, elapsedNs: 1000 * ms), .noGain)
    }

    /// Just after the first pass there is no trend yet: keep iterating
    /// until there is one (switching at the first point under the limit put
    /// 250 MB into the paced KVM scenario's downtime).
    func testNoTrendYetKeepsIterating() {
        XCTAssertNil(SwitchoverRule().decide(prediction(ram: 200), limitMs: 300, targetMs: 50, nowNs: 0, elapsedNs: 5_000_000_000))
    }

    /// A draining backlog that is most of what is left is waited for, even
    /// under the target; not when the target is the limit (switch at once),
    /// not when it is not draining, not when it is tiny.
    func testDrainingBacklogIsWaitedFor() {
        let p = DowntimePrediction(totalMs: 20, ramMs: 0.5, backlogMs: 17, deviceMs: 0, destinationMs: 1, fixedMs: 1.5,
                                   marginMs: 0, bandwidth: BandwidthEstimate(bytesPerSecond: 1e9, source: .link))
        let rule = SwitchoverRule()
        XCTAssertNil(rule.decide(p, limitMs: 300, targetMs: 50, nowNs: 0, elapsedNs: 0, backlogDraining: true))
        XCTAssertEqual(rule.decide(p, limitMs: 300, targetMs: 50, nowNs: 0, elapsedNs: 0, backlogDraining: false), .target)
        XCTAssertEqual(rule.decide(p, limitMs: 300, targetMs: 300, nowNs: 0, elapsedNs: 0, backlogDraining: true), .target)
        var small = p
        small.backlogMs = 1
        small.totalMs = 4
        XCTAssertEqual(rule.decide(small, limitMs: 300, targetMs: 50, nowNs: 0, elapsedNs: 0, backlogDraining: true), .target)
    }

    /// The backlog is past the source: it drains at the destination's rate,
    /// and never slower than new stream would move.
    func testBacklogDrainsAtTheDestinationsRate() throws {
        let bw = BandwidthEstimate(bytesPerSecond: 1e9, source: .link)
        func backlogMs(_ rate: Double?) throws -> Double {
            let input = DowntimeInputs(remainingBytes: 0, deviceBytes: 0, syncNs: 0, pauseNs: 0,
                                       backlogBytes: 6_000_000, backlogBytesPerSecond: rate)
            return try XCTUnwrap(DowntimePredictor.predict(input, bandwidth: bw)).backlogMs
        }
        XCTAssertEqual(try backlogMs(nil), 6, accuracy: 0.001)
        XCTAssertEqual(try backlogMs(3e9), 2, accuracy: 0.001)
        XCTAssertEqual(try backlogMs(0.5e9), 6, accuracy: 0.001, "not slower than the end-to-end figure")
    }
}
