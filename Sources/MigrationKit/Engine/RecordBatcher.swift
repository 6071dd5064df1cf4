import CShim
import Glibc

/// Turns dirty pages into one scatter-gather write: small record headers
/// from a private buffer, page contents straight from guest memory (no copy).
/// Zero pages become ZERO records (a header, no payload); adjacent zero runs
/// merge into one record.
final class RecordBatcher {
    struct Batch {
        var iovCount = 0
        var records = 0
        var wireBytes: UInt64 = 0
        var dataPages: UInt64 = 0
        var zeroPages: UInt64 = 0
        /// The tracker ran out of dirty pages while filling.
        var exhausted = false
    }

    /// Records per batch; a run of 64 pages can add at most 64 records.
    /// (Runs of 256 pages, 1 MiB records, were tried for fewer, larger
    /// reads at the destination: no clear win in the noise of this machine,
    /// and the simulator's downtime predictions moved; see BENCHMARKS.md.)
    static let maxRecords = 512
    static let runPages = 64

    private let headerBuf: UnsafeMutableRawPointer
    /// Per-page checksums, one slot of `runPages` per record.
    private let crcBuf: UnsafeMutablePointer<UInt32>
    /// The current run's check values and zero-page bits.
    private let runHashes: UnsafeMutablePointer<UInt32>
    private let zeroBits: UnsafeMutablePointer<UInt64>
    private var pending: [RecordHeader] = []
    let iov: UnsafeMutablePointer<iovec>
    private let regions: [GuestRegion]

    init(regions: [GuestRegion]) {
        self.regions = regions
        headerBuf = UnsafeMutableRawPointer.allocate(byteCount: Self.maxRecords * RecordHeader.size, alignment: 16)
        crcBuf = UnsafeMutablePointer<UInt32>.allocate(capacity: Self.maxRecords * Self.runPages)
        iov = UnsafeMutablePointer<iovec>.allocate(capacity: Self.maxRecords * 3)
        runHashes = UnsafeMutablePointer<UInt32>.allocate(capacity: Self.runPages)
        zeroBits = UnsafeMutablePointer<UInt64>.allocate(capacity: Self.runPages / 64)
        pending.reserveCapacity(Self.maxRecords)
    }

    deinit {
        headerBuf.deallocate()
        crcBuf.deallocate()
        iov.deallocate()
        runHashes.deallocate()
        zeroBits.deallocate()
    }

    /// Fill one batch with up to about `budget` bytes of page data.
    func fill(from tracker: DirtyTracker, budget: UInt64, stopped: Bool, clock: EngineClock) -> Batch {
        var b = Batch()
        pending.removeAll(keepingCapacity: true)
        let page = Int(MigrationParameters.pageSize)
        var flags: RecordFlags = [.payloadCRC]
        if stopped { flags.insert(.stopped) }
        while pending.count <= Self.maxRecords - Self.runPages - 1, b.dataPages * UInt64(page) < budget {
            // Runs end at the budget (whole pages), so a batch stays within it.
            let left = Int((budget - b.dataPages * UInt64(page) + UInt64(page) - 1) / UInt64(page))
            guard let run = tracker.nextRun(maxPages: min(Self.runPages, left)) else {
                b.exhausted = true
                break
            }
            let base = regions[run.region].host + run.page * page
            // One pass per page: zero check, else its check value.
            _ = cshim_pages_zero_or_hash(base, Int32(run.count), runHashes, zeroBits)
            func isZero(_ k: Int) -> Bool { zeroBits[k / 64] & (1 << UInt64(k % 64)) != 0 }
            var i = 0
            while i < run.count {
                let zero = isZero(i)
                var j = i + 1
                while j < run.count, isZero(j) == zero { j += 1 }
                let offset = UInt64(run.page + i) * UInt64(page)
                let length = UInt64(j - i) * UInt64(page)
                if zero {
                    b.zeroPages += UInt64(j - i)
                    if let last = pending.last, last.type == .zero, last.region == UInt32(run.region),
                       last.offset + last.length == offset {
                        pending[pending.count - 1].length += length
                    } else {
                        addRecord(RecordHeader(type: .zero, flags: stopped ? [.stopped] : [],
                                               region: UInt32(run.region), offset: offset, length: length),
                                  payload: nil, into: &b)
                    }
                } else {
                    b.dataPages += UInt64(j - i)
                    let data = UnsafeRawPointer(base + i * page)
                    // The guest may write these pages while they are sent. A
                    // torn page fails its own checksum at the destination and
                    // is re-sent because the write also dirtied it; per-page
                    // checksums keep its neighbours from being suspected.
                    let crcs = crcBuf + pending.count * Self.runPages
                    for k in 0..<(j - i) {
                        crcs[k] = runHashes[i + k].littleEndian
                    }
                    let crcBytes = (j - i) * 4
                    let crcOfCrcs = cshim_crc32c(0, crcs, crcBytes)
                    addRecord(RecordHeader(type: .pages, flags: flags, region: UInt32(run.region),
                                           offset: offset, length: length, payloadCRC: crcOfCrcs),
                              payload: (data, Int(length)), into: &b)
                    appendIov(UnsafeRawPointer(crcs), crcBytes, into: &b)
                }
                i = j
            }
            clock.didScan(bytes: UInt64(run.count * page))
        }
        finish(&b)
        return b
    }

    /// For the ZERO records of the last batch, in stream order: the wire
    /// offset just past each, from the batch's first byte, and its pages.
    /// The destination's progress reports are stream offsets; this is how
    /// the source knows which ZERO pages are still ahead of its loader.
    func forEachZeroRecord(_ body: (_ endOffset: UInt64, _ pages: UInt64) -> Void) {
        let page = UInt64(MigrationParameters.pageSize)
        var offset: UInt64 = 0
        for h in pending {
            offset += UInt64(RecordHeader.size)
            switch h.type {
            case .zero: body(offset, h.length / page)
            case .pages: offset += h.length + (h.flags.contains(.payloadCRC) ? h.length / page * 4 : 0)
            case .device: offset += h.length
            case .end: break
            }
        }
    }

    /// A batch of one record (device state, END).
    func single(_ header: RecordHeader, payload: UnsafeRawBufferPointer?) -> Batch {
        var b = Batch()
        pending.removeAll(keepingCapacity: true)
        addRecord(header, payload: payload.map { ($0.baseAddress!, $0.count) }, into: &b)
        finish(&b)
        return b
    }

    private func appendIov(_ p: UnsafeRawPointer, _ n: Int, into b: inout Batch) {
        iov[b.iovCount] = iovec(iov_base: UnsafeMutableRawPointer(mutating: p), iov_len: n)
        b.iovCount += 1
        b.wireBytes += UInt64(n)
    }

    private func addRecord(_ h: RecordHeader, payload: (UnsafeRawPointer, Int)?, into b: inout Batch) {
        let slot = headerBuf + pending.count * RecordHeader.size
        pending.append(h)
        iov[b.iovCount] = iovec(iov_base: slot, iov_len: RecordHeader.size)
        b.iovCount += 1
        b.wireBytes += UInt64(RecordHeader.size)
        if let (p, n) = payload, n > 0 { appendIov(p, n, into: &b) }
    }

    /// Headers are encoded last, because zero records may still grow.
    private func finish(_ b: inout Batch) {
        for (i, h) in pending.enumerated() { h.encode(into: headerBuf + i * RecordHeader.size) }
        b.records = pending.count
    }
}
