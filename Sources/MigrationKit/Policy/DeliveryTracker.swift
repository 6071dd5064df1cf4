/// What the destination's progress reports say about the stream on its way,
/// in the units expected downtime needs: time.
///
/// - Backlog: stream bytes written but not yet loaded, and the ZERO pages
///   among them. The source keeps a ledger of where in the stream its ZERO
///   pages went, so a report of "consumed up to byte N" tells how much page
///   work is still ahead of the loader, not just how many bytes.
/// - Delivered rate: for each stretch the source wrote without stopping
///   (no sleep, sync or wait in between), the destination's reports inside
///   it time how fast those bytes were loaded, on the destination's own
///   clock. That is the rate of the whole pipeline (source, link, loader),
///   and the only figure for the stop-and-copy under max-bandwidth, when
///   no write ever blocks on the link.
///
/// Pure: offsets and destination timestamps come in, figures go out.
package struct DeliveryTracker: Sendable {
    /// Least stream bytes between two reports for a rate sample.
    static let minSampleBytes: UInt64 = 192 << 10
    var smoothing = 0.3

    package private(set) var consumed: UInt64?
    package private(set) var zeroPagePs: UInt64 = 0
    /// Delivered rate, stream bytes per second (EWMA), and how far its
    /// samples strayed from it (EWMA of the relative error).
    package private(set) var rate: Double?
    package private(set) var dispersion: Double = 0
    package private(set) var samples = 0

    private var zeroLedger: [(end: UInt64, cumulative: UInt64)] = []
    private var zeroPagesWritten: UInt64 = 0
    private var stretches: [(start: UInt64, end: UInt64)] = []
    private var openStretch: (start: UInt64, end: UInt64)?
    private var reports: [ProgressReport] = []
    /// ZERO pages of ledger entries already pruned.
    private var prunedCumulative: UInt64 = 0

    package init() {}

    /// A ZERO record of `pages` pages ends at stream offset `end` (call in
    /// stream order, before `wrote` for the write that carries it).
    package mutating func wroteZero(endingAt end: UInt64, pages: UInt64) {
        zeroPagesWritten += pages
        zeroLedger.append((end, zeroPagesWritten))
    }

    /// The source wrote stream bytes [from, to); contiguous with the
    /// previous write unless `pause()` was called in between.
    package mutating func wrote(from: UInt64, to: UInt64) {
        if let open = openStretch, open.end == from {
            openStretch = (open.start, to)
        } else {
            pause()
            openStretch = (from, to)
        }
    }

    /// The source stopped writing for a while (sleep, sync, waiting).
    package mutating func pause() {
        if let open = openStretch, open.end - open.start >= 2 * Self.minSampleBytes {
            stretches.append(open)
            if stretches.count > 64 { stretches.removeFirst() }
        }
        openStretch = nil
    }

    /// Take new progress reports (in order).
    package mutating func add(_ new: [ProgressReport]) {
        guard let last = new.last else { return }
        consumed = max(consumed ?? 0, last.consumed)
        zeroPagePs = UInt64(last.zeroPagePs)
        reports.append(contentsOf: new)
        evaluateStretches()
    }

    /// Bytes and ZERO pages written but not yet loaded; nil before the
    /// first report.
    package func backlog(written: UInt64) -> (bytes: UInt64, zeroPages: UInt64)? {
        guard let consumed else { return nil }
        return (written > consumed ? written - consumed : 0, zeroPagesWritten - zeroPagesBefore(consumed))
    }

    /// ZERO pages in records that end at or before stream offset `offset`
    /// (for offsets not older than the pruned part of the ledger).
    private func zeroPagesBefore(_ offset: UInt64) -> UInt64 {
        zeroLedger.last { $0.end <= offset }?.cumulative ?? prunedCumulative
    }

    /// Rate samples from closed stretches the loader has gone past.
    private mutating func evaluateStretches() {
        guard let consumed else { return }
        while let s = stretches.first, s.end <= consumed {
            stretches.removeFirst()
            let inside = reports.filter { $0.consumed > s.start && $0.consumed <= s.end }
            guard let a = inside.first, let b = inside.last, b.consumed - a.consumed >= Self.minSampleBytes else { continue }
            let us = Double(b.destinationUs &- a.destinationUs)
            let zeroUs = Double(zeroPagesBefore(b.consumed) - zeroPagesBefore(a.consumed)) * Double(zeroPagePs) / 1e6
            guard us - zeroUs > 50 else { continue }
            record(Double(b.consumed - a.consumed) / (us - zeroUs) * 1e6)
        }
        // Keep what later samples and backlog queries can still ask about.
        let keepFrom = min(stretches.first?.start ?? consumed, openStretch?.start ?? consumed, consumed)
        reports.removeAll { $0.consumed <= keepFrom }
        while let first = zeroLedger.first, first.end <= keepFrom {
            prunedCumulative = first.cumulative
            zeroLedger.removeFirst()
        }
    }

    private mutating func record(_ sample: Double) {
        samples += 1
        guard let r = rate else {
            rate = sample
            return
        }
        dispersion += smoothing * (abs(sample - r) / r - dispersion)
        rate = r + smoothing * (sample - r)
    }
}
