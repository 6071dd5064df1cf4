import CShim

/// Destination guest memory the loader may write: `size` bytes at `host`.
/// The loader writes nowhere else, whatever the stream says.
package typealias LoaderRegion = GuestRegion

/// What the loader has done so far.
package struct LoaderStats: Sendable, Equatable {
    /// Stream bytes consumed (header, record headers, payloads).
    package var bytes: UInt64 = 0
    /// Records accepted, END included.
    package var records: UInt64 = 0
    /// Pages written from PAGES payloads (torn ones included).
    package var pagesLoaded: UInt64 = 0
    /// Pages covered by ZERO records.
    package var zeroPages: UInt64 = 0
    /// Device-state bytes handed to loadDevice.
    package var deviceStateBytes: UInt64 = 0
    /// Pages of PAGES records that failed their page CRC (each time it happened).
    package var tornPages: UInt64 = 0
    /// ZERO pages the loader had to read or clear (on fresh memory, only
    /// pages it had written itself).
    package var zeroPagesCleared: UInt64 = 0
    /// Time spent on ZERO records, when the loader has a clock.
    var zeroNs: UInt64 = 0

    package init() {}
}

/// The destination's push parser: feed it the stream in chunks of any size
/// and it validates the header against the registered regions, writes page
/// contents straight into guest memory, clears zero pages, hands device state
/// to `loadDevice`, and accepts END only when every page is trustworthy.
///
/// Errors are sticky: after one, every call throws it again. After an error
/// guest memory must be considered garbage (pages are written before their
/// CRC can be checked).
///
/// Not thread-safe, except `stats`, which may be read from any thread while
/// another one feeds the loader (it is published at the end of each call).
package final class StreamLoader {
    /// Where the parser is in the stream.
    private enum Phase {
        case header        // collecting the stream header in `staging`
        case recordHeader  // collecting a 32-byte record header in `staging`
        case pages         // `current`'s page data is going into guest memory
        case pageCRCs      // `current`'s page CRC array is accumulating in `receivedCRCs`
        case device        // `current`'s payload is accumulating in `deviceBlob`
        case complete      // END accepted; no byte may follow
        case failed        // `failure` says why
    }

    private let regions: [LoaderRegion]
    private let loadDevice: (UnsafeRawBufferPointer) throws(MKError) -> Void

    private var phase = Phase.header
    /// Header bytes received so far, and how many the current header needs
    /// (the stream header's size is known once its fixed part is in).
    private var staging: [UInt8] = []
    private var stagingNeed = StreamHeader.fixedSize

    /// The record whose payload is arriving, its 1-based number and the
    /// stream offset of its header (both for error messages).
    private var current = RecordHeader(type: .end)
    private var recordNumber: UInt64 = 0
    private var recordStart: UInt64 = 0
    /// Payload bytes of `current` received so far (for PAGES, page data
    /// only) and their running CRC (for PAGES, of the current page only).
    private var payloadDone: UInt64 = 0
    private var payloadCRC: UInt32 = 0
    /// PAGES with PAYLOAD_CRC: the CRC-32C of each page of `current` as it
    /// arrived, and the page CRC array the source sent (raw little-endian
    /// bytes, `crcArraySize` of them once complete). Both are allocated once,
    /// at their largest (16384 entries, 64 KiB), the first time they are
    /// needed, and reused by every later record.
    private var computedCRCs: [UInt32] = []
    private var receivedCRCs: [UInt8] = []
    private var crcArraySize = 0
    /// DEVICE payload received so far. Grows with the bytes that actually
    /// arrive, never by the length the record claims.
    private var deviceBlob: [UInt8] = []

    /// Pages whose latest copy failed its page CRC ("torn": the guest wrote
    /// the page while the source was sending it). The source re-sends every
    /// such page, so suspicion is normal during a live migration; only a
    /// page still suspect at END is an error.
    private var suspect: PageBitmap
    /// Pages of fresh regions the loader wrote: on fresh memory every other
    /// page still reads as zero, so a ZERO record touches only these.
    private var written: PageBitmap
    private var failure: MKError?
    private var working = LoaderStats()
    private let published = Locked(LoaderStats())

    /// `regions` in registration order, as on the source. `loadDevice` gets
    /// each DEVICE payload once it is complete and its CRC checked; the
    /// buffer is valid only during the call. An error it throws fails the
    /// load and is rethrown from `consume` unchanged.
    package init(regions: [LoaderRegion], loadDevice: @escaping (UnsafeRawBufferPointer) throws(MKError) -> Void) {
        self.regions = regions
        self.loadDevice = loadDevice
        self.suspect = PageBitmap(regionSizes: regions.map(\.size))
        self.written = PageBitmap(regionSizes: regions.map(\.size))
        staging.reserveCapacity(StreamHeader.fixedSize)
    }

    /// Monotonic time in ns, to measure what ZERO records cost (reported to
    /// the source, which counts them in expected downtime). nil: not measured.
    package var clock: (() -> UInt64)?

    /// END seen and everything validated.
    package var isComplete: Bool { phase == .complete }
    /// A record the source sent with the guest paused was accepted: the
    /// stop-and-copy has begun.
    package private(set) var sawStopped = false

    /// The stream header was accepted: records follow.
    var headerAccepted: Bool { phase != .header && phase != .failed }

    /// The accepted header, decoded and as its bytes (an authenticated
    /// stream's session key covers them).
    private(set) var acceptedHeader: (header: StreamHeader, bytes: [UInt8])?

    /// While the header is incomplete: how many more bytes it needs, as far
    /// as is known (its fixed part first). A reader that must not read past
    /// the header (an authenticated stream's frames follow it) reads no more.
    var headerBytesWanted: Int? { phase == .header ? stagingNeed - staging.count : nil }

    package var stats: LoaderStats { published.withLock { $0 } }

    /// Feeds the next bytes of the stream, in any chunking (one byte at a
    /// time works). Returns once all of them are consumed, or throws. Bytes
    /// after END are an error (MK_EPROTO).
    package func consume(_ bytes: UnsafeRawBufferPointer) throws(MKError) {
        if let failure { throw failure }
        defer { publishStats() }
        var rest = bytes
        do throws(MKError) {
            while !rest.isEmpty {
                let used = try step(rest)
                working.bytes += UInt64(used)
                rest = UnsafeRawBufferPointer(rebasing: rest[used...])
            }
        } catch {
            fail(error)
            throw error
        }
    }

    /// Call at end of input: MK_ETRUNCATED if END was not seen (or the
    /// earlier error, if the load already failed).
    package func finish() throws(MKError) {
        if let failure { throw failure }
        guard phase != .complete else { return }
        let error = MKError(.truncated, "stream ended after \(working.bytes) bytes without its END record: " + whereWeAre())
        fail(error)
        publishStats()
        throw error
    }

    // MARK: Parsing steps. Each consumes a prefix of `input` and returns its length.

    private func step(_ input: UnsafeRawBufferPointer) throws(MKError) -> Int {
        switch phase {
        case .header: return try takeStreamHeader(input)
        case .recordHeader: return try takeRecordHeader(input)
        case .pages: return try takePages(input)
        case .pageCRCs: return try takePageCRCs(input)
        case .device: return try takeDevice(input)
        case .complete:
            throw MKError(.proto, "\(input.count) byte(s) after the END record, at stream offset \(working.bytes)")
        case .failed:
            throw failure!
        }
    }

    /// Appends to `staging` up to `stagingNeed` bytes; returns how many it took.
    private func stage(_ input: UnsafeRawBufferPointer) -> Int {
        let n = min(stagingNeed - staging.count, input.count)
        staging.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[..<n]).assumingMemoryBound(to: UInt8.self))
        return n
    }

    private func takeStreamHeader(_ input: UnsafeRawBufferPointer) throws(MKError) -> Int {
        let n = stage(input)
        guard staging.count == stagingNeed else { return n }

        if stagingNeed == StreamHeader.fixedSize {
            // Fixed part in: validate it now so a wrong stream fails at once,
            // and learn how long the region table is.
            let total = try withStaging { (b) throws(MKError) in try StreamHeader.totalSize(fixedPart: b) }
            let count = try withStaging { (b) throws(MKError) in Int(StreamBytes.load(b.baseAddress!, 16, as: UInt32.self)) }
            guard count == regions.count else {
                throw MKError(.range, "stream header: region count \(count) does not match the \(regions.count) registered region(s)")
            }
            stagingNeed = total
            staging.reserveCapacity(total)
            return n
        }

        let header = try withStaging { (b) throws(MKError) in try StreamHeader.decode(b) }
        acceptedHeader = (header, staging)
        for (i, (sent, mine)) in zip(header.regions, regions).enumerated()
        where sent.guestPhysAddr != mine.guestPhysAddr || sent.size != mine.size {
            throw MKError(.range, "stream header: region \(i) is guest_phys_addr \(StreamBytes.hex(sent.guestPhysAddr)) size \(StreamBytes.hex(sent.size)), "
                + "but registered region \(i) is guest_phys_addr \(StreamBytes.hex(mine.guestPhysAddr)) size \(StreamBytes.hex(mine.size))")
        }
        startRecordHeader()
        return n
    }

    private func startRecordHeader() {
        phase = .recordHeader
        staging.removeAll(keepingCapacity: false)
        staging.reserveCapacity(RecordHeader.size)
        stagingNeed = RecordHeader.size
    }

    private func takeRecordHeader(_ input: UnsafeRawBufferPointer) throws(MKError) -> Int {
        if staging.isEmpty {
            recordStart = working.bytes
            recordNumber += 1
        }
        let n = stage(input)
        guard staging.count == RecordHeader.size else { return n }

        let header: RecordHeader
        do throws(MKError) {
            header = try withStaging { (b) throws(MKError) in try RecordHeader.decode(b.baseAddress!) }
            try header.validateFields()
            try checkBounds(header)
        } catch {
            throw recordError(error.code, error.message)
        }
        staging.removeAll(keepingCapacity: true)
        current = header
        payloadDone = 0
        payloadCRC = 0
        if header.flags.contains(.stopped) { sawStopped = true }

        switch header.type {
        case .pages:
            phase = .pages  // length > 0 was checked, so page data follows
            let (region, first, pages) = currentPages()
            if regions[region].fresh { written.set(region: region, firstPage: first, pages: pages) }
            if header.flags.contains(.payloadCRC) {
                // Sized by the largest record so far (our source sends
                // 256 pages), not the format's 16384: a short stream costs
                // no 128 KiB of zeroed arrays.
                if computedCRCs.count < pages {
                    computedCRCs = Array(repeating: 0, count: pages)
                    receivedCRCs.reserveCapacity(pages * 4)
                }
                receivedCRCs.removeAll(keepingCapacity: true)
                crcArraySize = Int(header.length / UInt64(StreamFormat.pageSize)) * 4
            }
        case .zero:
            loadZeroPages()
            working.records += 1
        case .device:
            deviceBlob = []
            phase = .device
            if header.length == 0 { try finishDevice() }
        case .end:
            try acceptEnd()
        }
        return n
    }

    /// Region index and [offset, offset+length) inside the region, for the
    /// records that address guest memory. The only thing standing between a
    /// hostile stream and memory outside the regions, so it is kept simple.
    private func checkBounds(_ header: RecordHeader) throws(MKError) {
        guard header.type == .pages || header.type == .zero else { return }
        guard header.region < UInt32(regions.count) else {
            throw MKError(.range, "\(header.type) record: region \(header.region) does not exist (\(regions.count) registered)")
        }
        let size = regions[Int(header.region)].size
        let (end, overflow) = header.offset.addingReportingOverflow(header.length)
        guard !overflow && end <= size else {
            throw MKError(.range, "\(header.type) record: offset \(StreamBytes.hex(header.offset)) + length \(StreamBytes.hex(header.length)) "
                + "ends past region \(header.region)'s size \(StreamBytes.hex(size))")
        }
    }

    /// Page data goes straight into guest memory; with PAYLOAD_CRC each
    /// page's check value (MKH-32) is computed on the way, in the same pass
    /// as the copy for every page the chunk holds whole. A page split
    /// between chunks is copied piece by piece and hashed from guest memory
    /// once its last byte is in (only the loader writes there meanwhile).
    private func takePages(_ input: UnsafeRawBufferPointer) throws(MKError) -> Int {
        let n = Int(min(UInt64(input.count), current.length - payloadDone))
        let source = input.baseAddress!
        // checkBounds guaranteed offset + length <= region size.
        let recordBase = regions[Int(current.region)].host + Int(current.offset)
        let pageSize = Int(StreamFormat.pageSize)
        let checked = current.flags.contains(.payloadCRC)
        var done = Int(payloadDone)
        var at = 0
        while at < n {
            let inPage = done % pageSize
            let k = min(n - at, pageSize - inPage)
            let target = recordBase + done
            if checked && inPage == 0 && k == pageSize {
                computedCRCs[done / pageSize] = cshim_page_copy_hash(target, source + at)
            } else {
                target.copyMemory(from: source + at, byteCount: k)
                if checked && inPage + k == pageSize {
                    computedCRCs[done / pageSize] = cshim_page_hash(target - inPage)
                }
            }
            at += k
            done += k
        }
        try advancePages(to: done)
        return n
    }

    /// The page data after `payloadDone` is now in guest memory up to
    /// `done`: settle the record when it is all in.
    private func advancePages(to done: Int) throws(MKError) {
        payloadDone = UInt64(done)
        if payloadDone == current.length {
            if current.flags.contains(.payloadCRC) {
                phase = .pageCRCs  // at least 4 bytes follow: length >= one page
            } else {
                try finishPages()
            }
        }
    }

    // MARK: Reading straight into guest memory

    /// Where the next stream bytes belong when they are page data: the rest
    /// of the current PAGES record's page data in guest memory (at most
    /// `limit` bytes), and `tail`, how many bytes follow it before the next
    /// record's payload can start (its check-value array and the next record
    /// header; 0 when the span does not reach the end of the record). nil
    /// when the next bytes are not page data. A reader may read into the span
    /// directly (the kernel's copy is the only one) and then call
    /// `consumeInPlace`; checkBounds already confined the span to the region.
    package func directSpan(limit: Int) -> (target: UnsafeMutableRawPointer, count: Int, tail: Int)? {
        guard phase == .pages, limit > 0 else { return nil }
        let left = current.length - payloadDone
        let n = Int(min(UInt64(limit), left))
        let target = regions[Int(current.region)].host + Int(current.offset) + Int(payloadDone)
        let tail = UInt64(n) == left ? (current.flags.contains(.payloadCRC) ? crcArraySize : 0) + RecordHeader.size : 0
        return (target, n, tail)
    }

    /// How many bytes the loader wants before the next record's payload can
    /// start, when it is between a PAGES record's data and the next header
    /// (so a reader need not read page data into a bounce buffer). nil
    /// elsewhere.
    package var bytesBeforeNextPayload: Int? {
        switch phase {
        case .pageCRCs: return crcArraySize - receivedCRCs.count + RecordHeader.size
        case .recordHeader where !staging.isEmpty: return RecordHeader.size - staging.count
        default: return nil
        }
    }

    /// `count` bytes of page data were placed at `directSpan`'s target (read
    /// there straight from the transport): check them as `consume` would
    /// have, hashing each page whose last byte is now in, in place.
    package func consumeInPlace(_ count: Int) throws(MKError) {
        if let failure { throw failure }
        defer { publishStats() }
        do throws(MKError) {
            guard phase == .pages, count >= 0, UInt64(count) <= current.length - payloadDone else {
                throw MKError(.invalid, "consumeInPlace(\(count)) outside the current page data")
            }
            let recordBase = regions[Int(current.region)].host + Int(current.offset)
            let pageSize = Int(StreamFormat.pageSize)
            let start = Int(payloadDone), end = start + count
            if current.flags.contains(.payloadCRC) {
                // Every page whose last byte lies in (start, end].
                var page = start / pageSize
                while (page + 1) * pageSize <= end {
                    computedCRCs[page] = cshim_page_hash(recordBase + page * pageSize)
                    page += 1
                }
            }
            working.bytes += UInt64(count)
            try advancePages(to: end)
        } catch {
            fail(error)
            throw error
        }
    }

    /// The page CRC array after the page data: at most 64 KiB, staged whole
    /// because it must pass its own CRC before any entry is believed.
    private func takePageCRCs(_ input: UnsafeRawBufferPointer) throws(MKError) -> Int {
        let n = min(input.count, crcArraySize - receivedCRCs.count)
        receivedCRCs.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[..<n]).assumingMemoryBound(to: UInt8.self))
        if receivedCRCs.count == crcArraySize { try finishPages() }
        return n
    }

    /// Settles a PAGES record once all of it is in. The page CRC array is
    /// built privately by the source, never from memory the guest can write,
    /// so an array failing payload_crc is damage in transit: an error at once.
    /// A page failing its own CRC is not an error yet: the guest was writing
    /// it while the source sent it, and the source will send it again.
    /// Remember it; a good copy later clears it. Pages that match are the
    /// latest good word, and so is every page of a record without
    /// PAYLOAD_CRC (nothing to check).
    private func finishPages() throws(MKError) {
        let (region, first, pages) = currentPages()
        if current.flags.contains(.payloadCRC) {
            let received = receivedCRCs
            let arrayCRC = received.withUnsafeBytes { StreamFormat.crc32c($0) }
            guard arrayCRC == current.payloadCRC else {
                throw recordError(.checksum, "PAGES record (region \(region), offset \(StreamBytes.hex(current.offset)), \(pages) page(s)): "
                    + "CRC-32C \(StreamBytes.hex(arrayCRC)) of its page CRC array does not match payload_crc \(StreamBytes.hex(current.payloadCRC))")
            }
            received.withUnsafeBytes { array in
                func matches(_ i: Int) -> Bool { StreamBytes.load(array.baseAddress!, i * 4, as: UInt32.self) == computedCRCs[i] }
                // Runs of equal verdicts, so the bitmap is updated a word at a time.
                var i = 0
                while i < pages {
                    let good = matches(i)
                    var j = i + 1
                    while j < pages && matches(j) == good { j += 1 }
                    if good {
                        suspect.clear(region: region, firstPage: first + i, pages: j - i)
                    } else {
                        suspect.set(region: region, firstPage: first + i, pages: j - i)
                        working.tornPages += UInt64(j - i)
                    }
                    i = j
                }
            }
            // `receivedCRCs` is emptied when the next PAGES record starts
            // (not here, while `received` still shares its buffer).
        } else {
            suspect.clear(region: region, firstPage: first, pages: pages)
        }
        working.pagesLoaded += UInt64(pages)
        working.records += 1
        startRecordHeader()
    }

    /// Makes the record's pages zero at the least cost. On fresh memory
    /// only pages the loader wrote can be non-zero: clear those, touch
    /// nothing else (a read of an untouched page is a page fault). Otherwise
    /// clear only pages that are not zero already: writing zeros into a
    /// fresh mapping would allocate memory for nothing.
    private func loadZeroPages() {
        let t0 = clock?() ?? 0
        let (region, first, pages) = currentPages()
        let pageSize = Int(StreamFormat.pageSize)
        let start = regions[region].host + first * pageSize
        if regions[region].fresh {
            written.forEachRun(region: region, firstPage: first, pages: pages) { runFirst, runPages in
                (start + (runFirst - first) * pageSize).initializeMemory(as: UInt8.self, repeating: 0, count: runPages * pageSize)
                working.zeroPagesCleared += UInt64(runPages)
            }
            written.clear(region: region, firstPage: first, pages: pages)
        } else {
            for i in 0..<pages {
                let page = start + i * pageSize
                if cshim_page_is_zero(page) == 0 {
                    page.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
                }
            }
            working.zeroPagesCleared += UInt64(pages)
        }
        suspect.clear(region: region, firstPage: first, pages: pages)
        working.zeroPages += UInt64(pages)
        if let clock { working.zeroNs += clock() - t0 }
    }

    private func takeDevice(_ input: UnsafeRawBufferPointer) throws(MKError) -> Int {
        let n = Int(min(UInt64(input.count), current.length - payloadDone))
        let piece = UnsafeRawBufferPointer(rebasing: input[..<n])
        deviceBlob.append(contentsOf: piece.assumingMemoryBound(to: UInt8.self))
        payloadCRC = StreamFormat.crc32c(piece.baseAddress, n, continuing: payloadCRC)
        payloadDone += UInt64(n)
        if payloadDone == current.length { try finishDevice() }
        return n
    }

    /// Device state is loaded by the VMM in one go, so unlike pages it must
    /// be right the first time: a bad CRC fails at once.
    private func finishDevice() throws(MKError) {
        if current.flags.contains(.payloadCRC) && payloadCRC != current.payloadCRC {
            throw recordError(.checksum, "DEVICE record: payload CRC-32C \(StreamBytes.hex(payloadCRC)) of \(current.length) bytes "
                + "does not match payload_crc \(StreamBytes.hex(current.payloadCRC))")
        }
        let blob = deviceBlob
        deviceBlob = []
        try withBytes(of: blob) { (b) throws(MKError) in try loadDevice(b) }
        working.deviceStateBytes += current.length
        working.records += 1
        startRecordHeader()
    }

    private func acceptEnd() throws(MKError) {
        if suspect.count > 0 {
            let (region, page) = suspect.first()!
            throw recordError(.checksum, "END record: \(suspect.count) page(s) failed their page CRC and were never re-sent; "
                + "the first is region \(region) offset \(StreamBytes.hex(UInt64(page) * UInt64(StreamFormat.pageSize)))")
        }
        working.records += 1
        phase = .complete
        releaseBuffers()
    }

    // MARK: Helpers

    /// (region, first page, page count) of the current PAGES or ZERO record.
    private func currentPages() -> (Int, Int, Int) {
        let page = UInt64(StreamFormat.pageSize)
        return (Int(current.region), Int(current.offset / page), Int(current.length / page))
    }

    private func recordError(_ code: MKErrorCode, _ message: String) -> MKError {
        MKError(code, "record \(recordNumber) at stream offset \(recordStart): \(message)")
    }

    /// For the truncation message: what was being received when input ended.
    private func whereWeAre() -> String {
        switch phase {
        case .header:
            return "inside the stream header (\(staging.count) of \(stagingNeed)\(stagingNeed == StreamHeader.fixedSize ? "+" : "") bytes)"
        case .recordHeader where staging.isEmpty:
            return "expected record \(recordNumber + 1) at stream offset \(working.bytes)"
        case .recordHeader:
            return "inside the header of record \(recordNumber) at stream offset \(recordStart) (\(staging.count) of \(RecordHeader.size) bytes)"
        case .pages, .device:
            return "inside the payload of record \(recordNumber) (\(current.type), region \(current.region), offset \(StreamBytes.hex(current.offset))) "
                + "at stream offset \(recordStart): \(payloadDone) of \(current.length) bytes"
        case .pageCRCs:
            return "inside the page CRC array of record \(recordNumber) (PAGES, region \(current.region), offset \(StreamBytes.hex(current.offset))) "
                + "at stream offset \(recordStart): \(receivedCRCs.count) of \(crcArraySize) bytes"
        case .complete, .failed:
            return "(no input expected)"
        }
    }

    private func fail(_ error: MKError) {
        failure = error
        phase = .failed
        releaseBuffers()
    }

    /// Nothing more will be parsed: give the buffers back.
    private func releaseBuffers() {
        staging = []
        deviceBlob = []
        computedCRCs = []
        receivedCRCs = []
    }

    private func publishStats() {
        let snapshot = working
        published.withLock { $0 = snapshot }
    }

    private func withStaging<R>(_ body: (UnsafeRawBufferPointer) throws(MKError) -> R) throws(MKError) -> R {
        try withBytes(of: staging, body)
    }

    /// Array.withUnsafeBytes with the error type kept (it only rethrows
    /// `any Error`), via Result.
    private func withBytes<R>(of array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(MKError) -> R) throws(MKError) -> R {
        let result = array.withUnsafeBytes { bytes in
            Result { () throws(MKError) -> R in try body(bytes) }
        }
        return try result.get()
    }

    /// Test hook: bytes reserved for the DEVICE payload being received.
    var deviceBufferCapacity: Int { deviceBlob.capacity }
}
