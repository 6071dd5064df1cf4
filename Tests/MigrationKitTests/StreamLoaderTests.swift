import CShim
import Foundation
import Glibc
@testable import MigrationKit
import XCTest

// MARK: - Test helpers (Stream-prefixed: other test files share this module)

/// SplitMix64: a deterministic PRNG so every failing case reproduces from its seed.
struct StreamTestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// n random bytes, eight per draw (debug builds are slow).
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var word = next()
            for _ in 0..<min(8, n - i) {
                out[i] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                i += 1
            }
        }
        return out
    }
}

/// Guest memory for tests. Every region is an anonymous mapping with a
/// PROT_NONE guard page right before and right after it, so a loader write
/// outside a region crashes the test instead of passing silently. `canary`
/// is guarded the same way, registered nowhere, and filled with a pattern
/// that must survive whatever the stream does.
final class StreamGuardedMemory {
    static let page = 4096
    static let canaryByte: UInt8 = 0xA5
    private var mappings: [(base: UnsafeMutableRawPointer, total: Int)] = []
    private(set) var regions: [UnsafeMutableRawBufferPointer] = []
    private(set) var canary: UnsafeMutableRawBufferPointer!

    init(sizes: [Int], canarySize: Int = 2 * 4096) {
        regions = sizes.map { map($0) }
        canary = map(canarySize)
        canary.initializeMemory(as: UInt8.self, repeating: Self.canaryByte)
    }

    private func map(_ size: Int) -> UnsafeMutableRawBufferPointer {
        let total = size + 2 * Self.page
        let base = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        precondition(base != UnsafeMutableRawPointer(bitPattern: -1), "mmap failed")
        precondition(mprotect(base, Self.page, PROT_NONE) == 0)
        precondition(mprotect(base + Self.page + size, Self.page, PROT_NONE) == 0)
        mappings.append((base, total))
        return UnsafeMutableRawBufferPointer(start: base + Self.page, count: size)
    }

    deinit { for m in mappings { munmap(m.base, m.total) } }

    /// Distinct, non-overlapping guest-physical addresses per region.
    static func gpa(_ index: Int) -> UInt64 { 0x1_0000_0000 + UInt64(index) * 0x1000_0000 }

    var loaderRegions: [LoaderRegion] {
        regions.enumerated().map {
            LoaderRegion(host: $1.baseAddress!, guestPhysAddr: Self.gpa($0), size: UInt64($1.count), granularity: 4096)
        }
    }

    var descriptors: [RegionDescriptor] {
        regions.enumerated().map { RegionDescriptor(guestPhysAddr: Self.gpa($0), size: UInt64($1.count), granularity: 4096) }
    }

    var canaryIntact: Bool { canary.allSatisfy { $0 == Self.canaryByte } }

    func contents(_ region: Int) -> [UInt8] { Array(regions[region]) }
}

/// Builds streams record by record. `raw` writes a record header byte by
/// byte from the documented layout, independently of RecordHeader.encode,
/// so tests can also build headers the encoder would never produce.
struct StreamTestBuilder {
    var bytes: [UInt8]
    /// Stream offset of every record header, in order.
    var recordOffsets: [Int] = []

    init(regions: [RegionDescriptor]) { bytes = StreamHeader.encode(regions: regions) }
    init(headerBytes: [UInt8]) { bytes = headerBytes }

    mutating func record(_ header: RecordHeader, payload: [UInt8] = []) {
        recordOffsets.append(bytes.count)
        bytes += header.encoded()
        bytes += payload
    }

    /// A PAGES record. With PAYLOAD_CRC the page data is followed by the page
    /// CRC array (one little-endian CRC-32C per page, built here from the
    /// documented layout, not with StreamFormat.pageCRCs) and payload_crc is
    /// the CRC-32C of that array. `torn`: indices of pages the guest wrote
    /// after the source checksummed them, so their array entry (the CRC of
    /// what the page held before) does not match the data sent; the array
    /// and its CRC stay consistent, as on a real source. `arrayCRC`: a
    /// payload_crc to send instead of the array's real CRC (damage).
    mutating func pages(region: UInt32, offset: UInt64, _ data: [UInt8], flags: RecordFlags = [.payloadCRC],
                        torn: Set<Int> = [], arrayCRC: UInt32? = nil) {
        guard flags.contains(.payloadCRC) else {
            record(RecordHeader(type: .pages, flags: flags, region: region, offset: offset, length: UInt64(data.count)), payload: data)
            return
        }
        let crcs = Self.pageCRCArray(data, torn: torn)
        let good = crcs.withUnsafeBytes { cshim_crc32c(0, $0.baseAddress, $0.count) }
        record(RecordHeader(type: .pages, flags: flags, region: region, offset: offset, length: UInt64(data.count),
                            payloadCRC: arrayCRC ?? good), payload: data + crcs)
    }

    /// The page CRC array for `data`, entries of `torn` pages computed from
    /// different contents (what the page held before the guest wrote it).
    static func pageCRCArray(_ data: [UInt8], torn: Set<Int> = []) -> [UInt8] {
        precondition(data.count % 4096 == 0)
        var out: [UInt8] = []
        for i in 0..<(data.count / 4096) {
            var page = Array(data[(i * 4096)..<((i + 1) * 4096)])
            if torn.contains(i) { page[Int(UInt32(i) &* 2654435761 % 4096)] ^= 0x5A }
            let crc = page.withUnsafeBytes { cshim_page_hash($0.baseAddress!) }
            for k in 0..<4 { out.append(UInt8(truncatingIfNeeded: crc >> (8 * UInt32(k)))) }
        }
        return out
    }

    mutating func zero(region: UInt32, offset: UInt64, length: UInt64) {
        record(RecordHeader(type: .zero, flags: [.stopped], region: region, offset: offset, length: length))
    }

    mutating func device(_ blob: [UInt8], crc: UInt32? = nil) {
        let good = blob.withUnsafeBytes { StreamFormat.crc32c($0) }
        record(RecordHeader(type: .device, flags: [.payloadCRC, .stopped], length: UInt64(blob.count), payloadCRC: crc ?? good), payload: blob)
    }

    mutating func end() { record(RecordHeader(type: .end, flags: [.stopped])) }

    mutating func raw(type: UInt16, flags: UInt16 = 0, region: UInt32 = 0, offset: UInt64 = 0, length: UInt64 = 0,
                      payloadCRC: UInt32 = 0, headerCRC: UInt32? = nil, payload: [UInt8] = []) {
        var h: [UInt8] = []
        func le<T: FixedWidthInteger>(_ v: T) { for i in 0..<(T.bitWidth / 8) { h.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
        le(type); le(flags); le(region); le(offset); le(length); le(payloadCRC)
        le(headerCRC ?? h.withUnsafeBytes { cshim_crc32c(0, $0.baseAddress, 28) })
        recordOffsets.append(bytes.count)
        bytes += h + payload
    }

    /// Rewrites one field of the record header at `at` and recomputes its header CRC.
    mutating func patch<T: FixedWidthInteger>(recordAt at: Int, fieldOffset: Int, _ value: T) {
        for i in 0..<(T.bitWidth / 8) { bytes[at + fieldOffset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
        let crc = bytes.withUnsafeBytes { cshim_crc32c(0, $0.baseAddress! + at, 28) }
        for i in 0..<4 { bytes[at + 28 + i] = UInt8(truncatingIfNeeded: crc >> (8 * i)) }
    }
}

/// Device blobs the loader handed over, in order.
final class StreamDeviceSink {
    var blobs: [[UInt8]] = []
    var failWith: MKError?
    func load(_ b: UnsafeRawBufferPointer) throws(MKError) {
        if let failWith { throw failWith }
        blobs.append(Array(b))
    }
}

func streamMakeLoader(_ memory: StreamGuardedMemory, _ sink: StreamDeviceSink = StreamDeviceSink()) -> StreamLoader {
    StreamLoader(regions: memory.loaderRegions, loadDevice: { (b) throws(MKError) in try sink.load(b) })
}

/// Feeds `bytes` in random chunks of 1...maxChunk bytes.
func streamFeed(_ loader: StreamLoader, _ bytes: [UInt8], rng: inout StreamTestRNG, maxChunk: Int = 6000) throws {
    try bytes.withUnsafeBytes { all in
        var at = 0
        while at < all.count {
            let n = min(all.count - at, Int.random(in: 1...maxChunk, using: &rng))
            try loader.consume(UnsafeRawBufferPointer(rebasing: all[at..<(at + n)]))
            at += n
        }
    }
}

func streamFeed(_ loader: StreamLoader, _ bytes: [UInt8]) throws {
    try bytes.withUnsafeBytes { try loader.consume($0) }
}

/// Feeds `bytes` the way DestSession reads a socket: page data straight
/// into guest memory through `directSpan`/`consumeInPlace` (reads of random
/// size, sometimes ending inside a page), the bytes after it and everything
/// else through `consume`.
func streamFeedInPlace(_ loader: StreamLoader, _ bytes: [UInt8], rng: inout StreamTestRNG, maxChunk: Int = 6000) throws {
    try bytes.withUnsafeBytes { all in
        var at = 0
        while at < all.count {
            let n = min(all.count - at, Int.random(in: 1...maxChunk, using: &rng))
            if let span = loader.directSpan(limit: maxChunk) {
                let direct = min(n, span.count)
                span.target.copyMemory(from: all.baseAddress! + at, byteCount: direct)
                try loader.consumeInPlace(direct)
                let rest = min(n - direct, span.tail)
                if rest > 0 { try loader.consume(UnsafeRawBufferPointer(rebasing: all[(at + direct)..<(at + direct + rest)])) }
                at += direct + rest
            } else {
                let cap = min(n, loader.bytesBeforeNextPayload ?? n)
                try loader.consume(UnsafeRawBufferPointer(rebasing: all[at..<(at + cap)]))
                at += cap
            }
        }
    }
}

/// Asserts that `body` throws an MKError with `code` whose message contains every fragment.
func streamAssertThrows(_ code: MKErrorCode, _ fragments: [String] = [], file: StaticString = #filePath, line: UInt = #line,
                        _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("expected MKError \(code), nothing was thrown", file: file, line: line)
    } catch let error as MKError {
        XCTAssertEqual(error.code, code, "message: \(error.message)", file: file, line: line)
        for fragment in fragments {
            XCTAssertTrue(error.message.contains(fragment), "message \"\(error.message)\" lacks \"\(fragment)\"", file: file, line: line)
        }
    } catch {
        XCTFail("expected MKError \(code), got \(error)", file: file, line: line)
    }
}

// MARK: - Tests

final class StreamLoaderTests: XCTestCase {
    static let sizes = [64 * 1024, 32 * 1024, 16 * 1024]
    let page = 4096

    private func memory() -> StreamGuardedMemory { StreamGuardedMemory(sizes: Self.sizes) }

    /// Loads `bytes` in one go, expects an error with `code` and fragments, and
    /// checks that the loader stays failed and the canary is intact.
    private func expectLoadError(_ code: MKErrorCode, _ fragments: [String] = [], file: StaticString = #filePath, line: UInt = #line,
                                 memory mem: StreamGuardedMemory? = nil, _ bytes: [UInt8]) {
        let mem = mem ?? memory()
        let loader = streamMakeLoader(mem)
        streamAssertThrows(code, fragments, file: file, line: line) {
            try streamFeed(loader, bytes)
            try loader.finish()
        }
        XCTAssertFalse(loader.isComplete, file: file, line: line)
        streamAssertThrows(code, file: file, line: line) { try loader.finish() }  // sticky
        XCTAssertTrue(mem.canaryIntact, "canary overwritten", file: file, line: line)
    }

    private func builder(_ mem: StreamGuardedMemory) -> StreamTestBuilder { StreamTestBuilder(regions: mem.descriptors) }

    // MARK: Round trips

    /// Random valid streams using every record type, fed in random chunks;
    /// guest memory, device blobs and stats must come out exactly as sent.
    func testRoundTripEveryRecordTypeRandomChunks() throws {
        for seed in UInt64(1)...12 {
            var rng = StreamTestRNG(seed: seed)
            let mem = memory()
            // Region 0 starts as garbage, so ZERO records have something to clear.
            for i in 0..<mem.regions[0].count { mem.regions[0][i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
            var expected = (0..<mem.regions.count).map { mem.contents($0) }
            var b = builder(mem)
            var blobs: [[UInt8]] = []
            var pagesSent: UInt64 = 0, zeroSent: UInt64 = 0, deviceBytes: UInt64 = 0

            for _ in 0..<40 {
                let r = Int.random(in: 0..<mem.regions.count, using: &rng)
                let regionPages = mem.regions[r].count / page
                let first = Int.random(in: 0..<regionPages, using: &rng)
                let count = Int.random(in: 1...min(4, regionPages - first), using: &rng)
                let range = (first * page)..<((first + count) * page)
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<6:
                    let data = rng.bytes(range.count)
                    b.pages(region: UInt32(r), offset: UInt64(range.lowerBound), data,
                            flags: Bool.random(using: &rng) ? [.payloadCRC] : [.payloadCRC, .stopped])
                    expected[r].replaceSubrange(range, with: data)
                    pagesSent += UInt64(count)
                case 6..<8:
                    b.zero(region: UInt32(r), offset: UInt64(range.lowerBound), length: UInt64(range.count))
                    expected[r].replaceSubrange(range, with: repeatElement(0, count: range.count))
                    zeroSent += UInt64(count)
                default:
                    let blob = rng.bytes(Int.random(in: 0...3000, using: &rng))
                    b.device(blob)
                    blobs.append(blob)
                    deviceBytes += UInt64(blob.count)
                }
            }
            b.end()

            let sink = StreamDeviceSink()
            let loader = streamMakeLoader(mem, sink)
            try streamFeed(loader, b.bytes, rng: &rng, maxChunk: Int.random(in: 1...9000, using: &rng))
            XCTAssertTrue(loader.isComplete, "seed \(seed)")
            try loader.finish()
            for r in 0..<mem.regions.count { XCTAssertEqual(mem.contents(r), expected[r], "seed \(seed) region \(r)") }
            XCTAssertEqual(sink.blobs, blobs, "seed \(seed)")
            let s = loader.stats
            XCTAssertEqual(s.bytes, UInt64(b.bytes.count))
            XCTAssertEqual(s.records, UInt64(b.recordOffsets.count))
            XCTAssertEqual(s.pagesLoaded, pagesSent)
            XCTAssertEqual(s.zeroPages, zeroSent)
            XCTAssertEqual(s.deviceStateBytes, deviceBytes)
            XCTAssertEqual(s.tornPages, 0)
            XCTAssertTrue(mem.canaryIntact)
        }
    }

    /// Reading page data straight into guest memory (DestSession's path)
    /// loads exactly what `consume` loads: same memory, same stats, torn
    /// pages found the same way, the same error when one is never re-sent.
    func testInPlaceReadsLoadLikeConsume() throws {
        for seed in UInt64(1)...16 {
            var rng = StreamTestRNG(seed: seed)
            let mems = [memory(), memory()]
            var b = builder(mems[0])
            for _ in 0..<30 {
                let r = Int.random(in: 0..<Self.sizes.count, using: &rng)
                let regionPages = Self.sizes[r] / page
                let first = Int.random(in: 0..<regionPages, using: &rng)
                let count = Int.random(in: 1...min(9, regionPages - first), using: &rng)
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<6:
                    let torn: Set<Int> = Int.random(in: 0..<8, using: &rng) == 0 ? [Int.random(in: 0..<count, using: &rng)] : []
                    b.pages(region: UInt32(r), offset: UInt64(first * page), rng.bytes(count * page),
                            flags: Int.random(in: 0..<5, using: &rng) == 0 ? [] : [.payloadCRC], torn: torn)
                case 6..<9:
                    b.zero(region: UInt32(r), offset: UInt64(first * page), length: UInt64(count * page))
                default:
                    b.device(rng.bytes(Int.random(in: 0...500, using: &rng)))
                }
            }
            b.end()
            var outcomes: [String] = []
            var stats: [LoaderStats] = []
            for (k, mem) in mems.enumerated() {
                let loader = streamMakeLoader(mem, StreamDeviceSink())
                var feedRNG = StreamTestRNG(seed: seed &* 31)
                do {
                    if k == 0 {
                        try streamFeed(loader, b.bytes, rng: &feedRNG, maxChunk: 9000)
                    } else {
                        try streamFeedInPlace(loader, b.bytes, rng: &feedRNG, maxChunk: Int.random(in: 1...9000, using: &feedRNG))
                    }
                    try loader.finish()
                    outcomes.append("ok")
                } catch let e as MKError {
                    outcomes.append(e.message)
                }
                stats.append(loader.stats)
                XCTAssertTrue(mem.canaryIntact, "seed \(seed)")
            }
            XCTAssertEqual(outcomes[0], outcomes[1], "seed \(seed)")
            if outcomes[0] == "ok" {
                XCTAssertEqual(stats[0], stats[1], "seed \(seed)")
                for r in 0..<Self.sizes.count { XCTAssertEqual(mems[0].contents(r), mems[1].contents(r), "seed \(seed) region \(r)") }
            }
        }
    }

    func testOneByteAtATime() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 99)
        let data = rng.bytes(2 * page)
        let blob = rng.bytes(777)
        var b = builder(mem)
        b.pages(region: 1, offset: UInt64(page), data)
        b.zero(region: 2, offset: 0, length: UInt64(page))
        b.device(blob)
        b.device([])  // an empty blob is still handed over
        b.end()
        let sink = StreamDeviceSink()
        let loader = streamMakeLoader(mem, sink)
        for byte in b.bytes {
            XCTAssertFalse(loader.isComplete)
            try withUnsafeBytes(of: byte) { try loader.consume($0) }
        }
        XCTAssertTrue(loader.isComplete)
        try loader.finish()
        XCTAssertEqual(Array(mem.regions[1][page..<(3 * page)]), data)
        XCTAssertEqual(sink.blobs, [blob, []])
        XCTAssertEqual(loader.stats.records, 5)
        XCTAssertEqual(loader.stats.bytes, UInt64(b.bytes.count))
    }

    func testEmptyChunksAreHarmless() throws {
        let mem = memory()
        var b = builder(mem)
        b.end()
        let loader = streamMakeLoader(mem)
        try loader.consume(UnsafeRawBufferPointer(start: nil, count: 0))
        try streamFeed(loader, b.bytes)
        try loader.consume(UnsafeRawBufferPointer(start: nil, count: 0))
        XCTAssertTrue(loader.isComplete)
        try loader.finish()
    }

    /// A ZERO record must not write pages that are already zero: here the
    /// region is read-only, so any write would crash the test.
    func testZeroRecordLeavesZeroPagesUnwritten() throws {
        let mem = memory()
        mem.regions[0].storeBytes(of: 0xFF, toByteOffset: 3 * page + 5, as: UInt8.self)
        XCTAssertEqual(mprotect(mem.regions[1].baseAddress!, mem.regions[1].count, PROT_READ), 0)
        defer { mprotect(mem.regions[1].baseAddress!, mem.regions[1].count, PROT_READ | PROT_WRITE) }
        var b = builder(mem)
        b.zero(region: 1, offset: 0, length: UInt64(mem.regions[1].count))
        b.zero(region: 0, offset: 0, length: UInt64(mem.regions[0].count))
        b.end()
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes)
        try loader.finish()
        XCTAssertTrue(mem.contents(0).allSatisfy { $0 == 0 })
        XCTAssertEqual(loader.stats.zeroPages, UInt64((mem.regions[0].count + mem.regions[1].count) / page))
    }

    /// MK_REGION_FRESH (header): memory only the loader writes. A ZERO
    /// record must clear every page the loader wrote there (the guest
    /// cleared it after it was sent), and touch no other page: a page never
    /// written is zero already, and one cleared once stays zero until the
    /// loader writes it again. Here pages 0-1 are written, then ZERO covers
    /// pages 0-3, twice: two pages to clear in all, not four, not six.
    func testFreshRegionZeroClearsOnlyWrittenPages() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 77)
        var b = builder(mem)
        b.pages(region: 0, offset: 0, rng.bytes(2 * page))
        b.zero(region: 0, offset: 0, length: UInt64(4 * page))
        b.zero(region: 0, offset: 0, length: UInt64(4 * page))
        b.end()
        let fresh = mem.loaderRegions.map { r -> LoaderRegion in
            var f = r
            f.fresh = true
            return f
        }
        let loader = StreamLoader(regions: fresh) { _ in }
        try streamFeed(loader, b.bytes)
        try loader.finish()
        XCTAssertTrue(mem.contents(0)[0..<(4 * page)].allSatisfy { $0 == 0 }, "a page the loader wrote survived a ZERO record")
        XCTAssertEqual(loader.stats.zeroPages, 8)
        XCTAssertEqual(loader.stats.zeroPagesCleared, 2, "pages cleared: only the two the loader had written, once")
    }

    func testPagesWithoutPayloadCRCFlagAreAccepted() throws {
        let mem = memory()
        let data = [UInt8](repeating: 0x5A, count: page)
        var b = builder(mem)
        b.pages(region: 2, offset: 0, data, flags: [])
        b.end()
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes)
        try loader.finish()
        XCTAssertEqual(Array(mem.regions[2][0..<page]), data)
        XCTAssertEqual(loader.stats.bytes, UInt64(b.bytes.count))  // no page CRC array follows
    }

    /// A copy without PAYLOAD_CRC has nothing to check, so it is the latest
    /// word and clears suspicion like a good one.
    func testPagesWithoutPayloadCRCClearTornPages() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 12)
        var b = builder(mem)
        b.pages(region: 0, offset: 0, rng.bytes(2 * page), torn: [0, 1])
        let unchecked = rng.bytes(2 * page)
        b.pages(region: 0, offset: 0, unchecked, flags: [.stopped])
        b.end()
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes)
        try loader.finish()
        XCTAssertEqual(loader.stats.tornPages, 2)
        XCTAssertEqual(Array(mem.regions[0][0..<(2 * page)]), unchecked)
    }

    /// `stats` is published under a lock, so another thread (mk_dest_get_stats)
    /// may read it while the loader runs; what it sees only ever grows.
    func testStatsReadableFromAnotherThreadWhileLoading() throws {
        final class Shared: @unchecked Sendable {
            let loader: StreamLoader
            var seen: [UInt64] = []
            init(_ loader: StreamLoader) { self.loader = loader }
        }
        let mem = memory()
        var rng = StreamTestRNG(seed: 11)
        var b = builder(mem)
        for i in 0..<8 { b.pages(region: 1, offset: UInt64(i * page), rng.bytes(page)) }
        b.end()
        let shared = Shared(streamMakeLoader(mem))
        let finished = DispatchSemaphore(value: 0)
        let reader = Thread {
            for _ in 0..<2000 { shared.seen.append(shared.loader.stats.bytes) }
            finished.signal()
        }
        reader.start()
        try streamFeed(shared.loader, b.bytes, rng: &rng, maxChunk: 64)
        finished.wait()
        XCTAssertEqual(shared.seen, shared.seen.sorted())
        XCTAssertEqual(shared.loader.stats.pagesLoaded, 8)
        XCTAssertEqual(shared.loader.stats.bytes, UInt64(b.bytes.count))
    }

    // MARK: Stream header errors

    func testHeaderWrongMagic() {
        let mem = memory()
        var bytes = builder(mem).bytes
        bytes[0] = UInt8(ascii: "X")
        expectLoadError(.proto, ["magic", "XKSTREAM"], memory: mem, bytes)
    }

    func testHeaderWrongMagicFailsBeforeTheRegionTable() {
        let mem = memory()
        let loader = streamMakeLoader(mem)
        streamAssertThrows(.proto, ["magic"]) { try streamFeed(loader, Array("MKSTRAEM".utf8) + [UInt8](repeating: 0, count: 16)) }
    }

    func testHeaderUnsupportedVersion() {
        let mem = memory()
        // Version 1 (no return frames) and a future version 3 are both refused
        // by their number, before anything else.
        expectLoadError(.version, ["version 1", "reads version 2"], memory: mem, StreamHeader(version: 1, regions: mem.descriptors).encoded())
        expectLoadError(.version, ["version 3"], memory: memory(), StreamHeader(version: 3, regions: mem.descriptors).encoded())
    }

    func testHeaderPageSize() {
        let mem = memory()
        expectLoadError(.proto, ["page size 8192"], memory: mem, StreamHeader.encode(pageSize: 8192, regions: mem.descriptors))
    }

    func testHeaderFlags() {
        let mem = memory()
        expectLoadError(.proto, ["flags 0x4"], memory: mem, StreamHeader(flags: 4, regions: mem.descriptors).encoded())
    }

    func testHeaderRegionCountZero() {
        expectLoadError(.range, ["region count 0"], StreamHeader.encode(regions: []))
    }

    func testHeaderRegionCountTooLargeFailsOnTheFixedPart() {
        let mem = memory()
        var fixed = StreamHeader.encode(regions: mem.descriptors)
        fixed.removeSubrange(StreamHeader.fixedSize...)
        fixed.replaceSubrange(16..<20, with: [0x01, 0x10, 0, 0])  // 4097
        expectLoadError(.range, ["region count 4097"], memory: mem, fixed)
    }

    func testHeaderRegionCountNotRegistered() {
        let mem = memory()
        let regions = mem.descriptors
        expectLoadError(.range, ["region count 2", "3 registered"], memory: mem, StreamHeader.encode(regions: Array(regions.prefix(2))))
        expectLoadError(.range, ["region count 4", "3 registered"], memory: mem,
                        StreamHeader.encode(regions: regions + [RegionDescriptor(guestPhysAddr: 0, size: 4096, granularity: 0)]))
    }

    func testHeaderRegionAddressOrSizeMismatch() {
        let mem = memory()
        var regions = mem.descriptors
        regions[1].guestPhysAddr += 0x1000
        expectLoadError(.range, ["region 1", "guest_phys_addr 0x110001000", "registered region 1"], memory: mem,
                        StreamHeader.encode(regions: regions))
        regions = mem.descriptors
        regions[2].size *= 2
        expectLoadError(.range, ["region 2", "size 0x8000", "size 0x4000"], memory: mem, StreamHeader.encode(regions: regions))
    }

    func testHeaderGranularityIsNotComparedButMustBeSane() throws {
        let mem = memory()
        var regions = mem.descriptors
        regions[0].granularity = 2 << 20  // huge pages on the source only: fine
        var b = StreamTestBuilder(headerBytes: StreamHeader.encode(regions: regions))
        b.end()
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes)
        try loader.finish()
        regions[0].granularity = 4097
        expectLoadError(.proto, ["region 0 dirty_granularity 0x1001"], memory: mem, StreamHeader.encode(regions: regions))
    }

    func testHeaderCRC() {
        let mem = memory()
        let good = StreamHeader.encode(regions: mem.descriptors)
        // Any byte of the region table or the CRC itself.
        for at in [24, 30, 47, 60, good.count - 1] {
            var bytes = good
            bytes[at] ^= 0x10
            expectLoadError(.checksum, ["stream header: CRC-32C"], memory: mem, bytes)
        }
    }

    // MARK: Record errors

    func testRecordUnknownType() {
        let mem = memory()
        for type: UInt16 in [0, 5, 0xFFFF] {
            var b = builder(mem)
            b.raw(type: type)
            expectLoadError(.proto, ["record 1", "unknown type \(type)"], memory: mem, b.bytes)
        }
    }

    func testRecordUnknownFlags() {
        let mem = memory()
        var b = builder(mem)
        b.raw(type: 4, flags: 0x4)
        expectLoadError(.proto, ["unknown bits 0x4"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 2, flags: 0x8001, length: 4096)
        expectLoadError(.proto, ["unknown bits 0x8000"], memory: mem, b.bytes)
    }

    func testRecordHeaderCRC() {
        let mem = memory()
        var b = builder(mem)
        b.zero(region: 0, offset: 0, length: 4096)
        b.raw(type: 4, headerCRC: 0x1234_5678)
        expectLoadError(.checksum, ["record 2", "header_crc 0x12345678"], memory: mem, b.bytes)
        // A damaged field is reported as a checksum failure, not as the field's error.
        var bytes = builder(mem).bytes
        var r = StreamTestBuilder(headerBytes: [])
        r.zero(region: 0, offset: 0, length: 4096)
        var rec = r.bytes
        rec[4] = 9  // region 9, CRC not updated
        bytes += rec
        expectLoadError(.checksum, ["header_crc"], memory: mem, bytes)
    }

    func testRecordRegionOutOfRange() {
        let mem = memory()
        for region: UInt32 in [3, 0xFFFF_FFFF] {
            var b = builder(mem)
            b.raw(type: 1, flags: 1, region: region, length: 4096, payload: [UInt8](repeating: 0, count: 4096))
            expectLoadError(.range, ["region \(region) does not exist"], memory: mem, b.bytes)
            b = builder(mem)
            b.zero(region: region, offset: 0, length: 4096)
            expectLoadError(.range, ["ZERO record", "region \(region)"], memory: mem, b.bytes)
        }
    }

    func testRecordAlignmentAndZeroLength() {
        let mem = memory()
        var b = builder(mem)
        b.raw(type: 1, flags: 0, offset: 100, length: 4096)
        expectLoadError(.proto, ["PAGES", "offset 0x64", "not a multiple"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 1, flags: 0, offset: 0, length: 4095)
        expectLoadError(.proto, ["PAGES", "length 0xfff", "not a multiple"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 1, flags: 0, offset: 4096, length: 0)
        expectLoadError(.proto, ["PAGES", "length is 0"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 2, offset: 2048, length: 4096)
        expectLoadError(.proto, ["ZERO", "offset 0x800"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 2, offset: 0, length: 12)
        expectLoadError(.proto, ["ZERO", "length 0xc"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 2, offset: 0, length: 0)
        expectLoadError(.proto, ["ZERO", "length is 0"], memory: mem, b.bytes)
    }

    func testRecordPastRegionEndOrOverflow() {
        let mem = memory()
        let size = UInt64(Self.sizes[1])
        let cases: [(UInt16, UInt64, UInt64)] = [
            (1, size, 4096),                            // starts at the end
            (1, size - 4096, 8192),                     // straddles the end
            (2, 0, size + 4096),                        // longer than the region
            (2, UInt64.max - 4095, 4096),               // offset + length == 2^64
            (2, 4096, UInt64.max - 4095),               // overflow through length
            (1, UInt64.max - 4095, 0x10000),            // overflow with a valid PAGES length
        ]
        for (type, offset, length) in cases {
            var b = builder(mem)
            b.raw(type: type, flags: 0, region: 1, offset: offset, length: length)
            expectLoadError(.range, ["offset 0x\(String(offset, radix: 16))", "region 1's size 0x8000"], memory: mem, b.bytes)
        }
    }

    func testRecordLengthLimits() {
        let mem = memory()
        var b = builder(mem)
        b.raw(type: 1, flags: 1, length: (64 << 20) + 4096)
        expectLoadError(.proto, ["PAGES", "64 MiB"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 3, flags: 1, length: (1 << 30) + 1)
        expectLoadError(.proto, ["DEVICE", "1 GiB"], memory: mem, b.bytes)
    }

    func testDeviceAndEndFieldsMustBeZero() {
        let mem = memory()
        var b = builder(mem)
        b.raw(type: 3, flags: 1, region: 1, length: 4)
        expectLoadError(.proto, ["DEVICE", "region 1"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 3, flags: 1, offset: 4096, length: 4)
        expectLoadError(.proto, ["DEVICE", "offset 0x1000"], memory: mem, b.bytes)
        for (region, offset, length) in [(UInt32(1), UInt64(0), UInt64(0)), (0, 4096, 0), (0, 0, 4096)] {
            b = builder(mem)
            b.raw(type: 4, region: region, offset: offset, length: length)
            expectLoadError(.proto, ["END record", "must all be 0"], memory: mem, b.bytes)
        }
        b = builder(mem)
        b.raw(type: 4, flags: 1, payloadCRC: 7)
        expectLoadError(.proto, ["END", "payload_crc 0x7"], memory: mem, b.bytes)
        b = builder(mem)
        b.raw(type: 1, flags: 0, length: 4096, payloadCRC: 7)
        expectLoadError(.proto, ["PAGES", "payload_crc 0x7", "without the PAYLOAD_CRC flag"], memory: mem, b.bytes)
    }

    func testBytesAfterEnd() throws {
        let mem = memory()
        var b = builder(mem)
        b.end()
        expectLoadError(.proto, ["1 byte(s) after the END record"], memory: mem, b.bytes + [0])
        // In a later chunk.
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes)
        XCTAssertTrue(loader.isComplete)
        streamAssertThrows(.proto, ["after the END record", "stream offset \(b.bytes.count)"]) {
            try streamFeed(loader, RecordHeader(type: .end).encoded())
        }
        XCTAssertFalse(loader.isComplete)
    }

    func testSecondDeviceRecordIsPassedOn() throws {
        let mem = memory()
        var b = builder(mem)
        b.device([1, 2, 3])
        b.pages(region: 0, offset: 0, [UInt8](repeating: 9, count: page))
        b.device([4, 5])
        b.end()
        let sink = StreamDeviceSink()
        let loader = streamMakeLoader(mem, sink)
        try streamFeed(loader, b.bytes)
        try loader.finish()
        XCTAssertEqual(sink.blobs, [[1, 2, 3], [4, 5]])
        XCTAssertEqual(loader.stats.deviceStateBytes, 5)
    }

    func testDevicePayloadCRCMismatchFailsAtOnce() throws {
        let mem = memory()
        var b = builder(mem)
        b.device([1, 2, 3, 4], crc: 0xDEAD_BEEF)
        let sink = StreamDeviceSink()
        let loader = streamMakeLoader(mem, sink)
        streamAssertThrows(.checksum, ["DEVICE", "payload_crc 0xdeadbeef"]) { try streamFeed(loader, b.bytes) }  // no END needed
        XCTAssertEqual(sink.blobs, [])
    }

    func testLoadDeviceErrorIsRethrown() {
        let mem = memory()
        var b = builder(mem)
        b.device([1])
        b.end()
        let sink = StreamDeviceSink()
        sink.failWith = MKError(.callback, "vmm said no")
        let loader = streamMakeLoader(mem, sink)
        streamAssertThrows(.callback, ["vmm said no"]) { try streamFeed(loader, b.bytes) }
        streamAssertThrows(.callback) { try loader.finish() }
    }

    /// A hostile DEVICE length must not allocate before the bytes exist.
    func testHostileDeviceLengthDoesNotAllocateUpFront() {
        let mem = memory()
        var b = builder(mem)
        b.raw(type: 3, flags: 1, length: 1 << 30, payloadCRC: 1, payload: [UInt8](repeating: 7, count: 100))
        let loader = streamMakeLoader(mem)
        XCTAssertNoThrow(try streamFeed(loader, b.bytes))
        XCTAssertLessThan(loader.deviceBufferCapacity, 64 * 1024)
        streamAssertThrows(.truncated, ["DEVICE", "100 of 1073741824 bytes"]) { try loader.finish() }
    }

    // MARK: Truncation

    func testTruncatedStreamAtManyCutPoints() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 7)
        var b = builder(mem)
        b.pages(region: 0, offset: 0, rng.bytes(2 * page))
        b.zero(region: 1, offset: 0, length: UInt64(page))
        b.device(rng.bytes(300))
        b.pages(region: 2, offset: UInt64(page), rng.bytes(page))
        b.end()
        let full = b.bytes
        // Every cut in the header, around every record boundary and in and
        // around every page CRC array (the 8 bytes before each next record), plus random ones.
        var cuts = Set(0...(StreamHeader.size(regionCount: 3) + 40))
        for at in b.recordOffsets { cuts.formUnion(max(0, at - 12)...min(full.count - 1, at + RecordHeader.size + 3)) }
        for _ in 0..<200 { cuts.insert(Int.random(in: 0..<full.count, using: &rng)) }
        for cut in cuts.sorted() {
            let loader = streamMakeLoader(mem)
            try streamFeed(loader, Array(full[..<cut]), rng: &rng, maxChunk: 700)
            XCTAssertFalse(loader.isComplete, "cut \(cut)")
            streamAssertThrows(.truncated, ["without its END record"]) { try loader.finish() }
            streamAssertThrows(.truncated) { try streamFeed(loader, [0]) }  // sticky
        }
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, full)
        try loader.finish()
        // Where it stopped, in the message.
        let inArray = streamMakeLoader(mem)
        try streamFeed(inArray, Array(full[..<(b.recordOffsets[1] - 3)]))
        streamAssertThrows(.truncated, ["inside the page CRC array of record 1", "5 of 8 bytes"]) { try inArray.finish() }
        let inPages = streamMakeLoader(mem)
        try streamFeed(inPages, Array(full[..<(b.recordOffsets[0] + RecordHeader.size + 5000)]))
        streamAssertThrows(.truncated, ["inside the payload of record 1", "5000 of 8192 bytes"]) { try inPages.finish() }
    }

    // MARK: Torn pages

    func testTornPageResentLaterSucceeds() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 3)
        let torn = rng.bytes(3 * page), good = rng.bytes(page)
        var b = builder(mem)
        // Three pages sent live; the CRC was computed before the guest wrote them.
        b.pages(region: 1, offset: UInt64(page), torn, torn: [0, 1, 2])
        b.pages(region: 1, offset: UInt64(page), good)        // page 1 re-sent
        b.zero(region: 1, offset: UInt64(2 * page), length: UInt64(page))  // page 2 became zero
        b.pages(region: 1, offset: UInt64(3 * page), good, flags: [.payloadCRC, .stopped])  // page 3, stop-and-copy
        b.end()
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes, rng: &rng)
        try loader.finish()
        XCTAssertTrue(loader.isComplete)
        XCTAssertEqual(loader.stats.tornPages, 3)
        XCTAssertEqual(loader.stats.pagesLoaded, 5)
        XCTAssertEqual(Array(mem.regions[1][page..<(2 * page)]), good)
        XCTAssertEqual(Array(mem.regions[1][(3 * page)..<(4 * page)]), good)
    }

    func testTornPageNeverResentFailsAtEnd() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 4)
        var b = builder(mem)
        b.pages(region: 2, offset: 0, rng.bytes(3 * page), torn: [0, 1, 2])
        b.pages(region: 0, offset: UInt64(5 * page), rng.bytes(page), torn: [0])
        b.pages(region: 2, offset: 0, rng.bytes(page))               // clears region 2 page 0 only
        b.zero(region: 2, offset: UInt64(2 * page), length: UInt64(page))  // and page 2
        let loader = streamMakeLoader(mem)
        // Suspicion alone is not an error while the stream goes on.
        try streamFeed(loader, b.bytes)
        b = StreamTestBuilder(headerBytes: [])
        b.end()
        streamAssertThrows(.checksum, ["END record", "2 page(s)", "region 0 offset 0x5000"]) { try streamFeed(loader, b.bytes) }
        XCTAssertFalse(loader.isComplete)
        XCTAssertEqual(loader.stats.tornPages, 4)
    }

    func testGoodPageTornLaterFails() {
        let mem = memory()
        var rng = StreamTestRNG(seed: 5)
        var b = builder(mem)
        b.pages(region: 0, offset: 0, rng.bytes(page))
        b.pages(region: 0, offset: 0, rng.bytes(page), torn: [0])
        b.end()
        expectLoadError(.checksum, ["1 page(s)", "region 0 offset 0x0"], memory: mem, b.bytes)
    }

    /// The case per-page checksums exist for: one page of a full 64-page
    /// record is torn, and the source re-sends only that page (only it was
    /// re-dirtied). Its 63 neighbours must not stay suspect.
    func testTornPageInsideFullRecordOnlyThatPageResentSucceeds() throws {
        let mem = StreamGuardedMemory(sizes: [64 * page, 4 * page])
        var rng = StreamTestRNG(seed: 21)
        let data = rng.bytes(64 * page)
        let fixes: [(index: Int, copy: [UInt8])] = [(37, rng.bytes(page)), (0, rng.bytes(page)), (63, rng.bytes(page))]
        var expected = data
        var b = StreamTestBuilder(regions: mem.descriptors)
        b.pages(region: 0, offset: 0, data, torn: Set(fixes.map(\.index)))
        for (index, copy) in fixes {
            b.pages(region: 0, offset: UInt64(index * page), copy, flags: [.payloadCRC, .stopped])
            expected.replaceSubrange((index * page)..<((index + 1) * page), with: copy)
        }
        b.end()
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes, rng: &rng)
        try loader.finish()
        XCTAssertTrue(loader.isComplete)
        XCTAssertEqual(mem.contents(0), expected)
        XCTAssertEqual(loader.stats.tornPages, 3)
        XCTAssertEqual(loader.stats.pagesLoaded, 67)
        XCTAssertEqual(loader.stats.records, 5)
        XCTAssertEqual(loader.stats.bytes, UInt64(b.bytes.count))
        XCTAssertTrue(mem.canaryIntact)
    }

    /// A page in the middle of a record torn and never re-sent fails at END,
    /// and the error names that page, not the record's first one; its
    /// neighbours in the same record are cleared, even if an earlier copy of
    /// them was torn.
    func testTornPageInMiddleOfRecordNeverResentIsNamed() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 22)
        var b = builder(mem)
        b.pages(region: 0, offset: UInt64(2 * page), rng.bytes(5 * page), torn: [0, 1, 2, 3, 4])
        b.pages(region: 0, offset: UInt64(2 * page), rng.bytes(5 * page), torn: [2])  // region 0 page 4
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes, rng: &rng, maxChunk: 3000)
        XCTAssertEqual(loader.stats.tornPages, 6)
        b = StreamTestBuilder(headerBytes: [])
        b.end()
        streamAssertThrows(.checksum, ["END record", "1 page(s)", "region 0 offset 0x4000"]) { try streamFeed(loader, b.bytes) }
        XCTAssertFalse(loader.isComplete)
    }

    /// The page CRC array is built privately by the source, so it cannot be
    /// torn: an array failing payload_crc is damage and fails at once, before
    /// END, however its entries compare with the pages.
    func testPageCRCArrayCorruptionFailsAtOnce() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 23)
        let data = rng.bytes(3 * page)
        // payload_crc that is not the array's.
        var b = builder(mem)
        b.zero(region: 0, offset: 0, length: UInt64(page))
        b.pages(region: 1, offset: UInt64(page), data, arrayCRC: 0xDEAD_BEEF)
        var loader = streamMakeLoader(mem)
        streamAssertThrows(.checksum, ["record 2", "PAGES", "page CRC array", "payload_crc 0xdeadbeef"]) { try streamFeed(loader, b.bytes) }
        XCTAssertEqual(loader.stats.tornPages, 0)
        streamAssertThrows(.checksum) { try loader.finish() }  // sticky

        // Any damaged byte of the array (its payload_crc intact), even one
        // that would otherwise have made an entry match or mismatch.
        for torn: Set<Int> in [[], [1]] {
            var good = builder(mem)
            good.pages(region: 1, offset: UInt64(page), data, torn: torn)
            let arrayStart = good.recordOffsets[0] + RecordHeader.size + data.count
            XCTAssertEqual(good.bytes.count, arrayStart + 12)
            for at in arrayStart..<good.bytes.count {
                var bytes = good.bytes
                bytes[at] ^= 0x01
                loader = streamMakeLoader(mem)
                streamAssertThrows(.checksum, ["page CRC array"]) { try streamFeed(loader, bytes, rng: &rng, maxChunk: 5) }
                XCTAssertEqual(loader.stats.tornPages, 0)
            }
        }
    }

    /// Chunk boundaries anywhere: inside the record header, inside a page,
    /// on page boundaries, inside the page CRC array, between records.
    func testChunkSplitsInsidePagesAndPageCRCArray() throws {
        let mem = memory()
        var rng = StreamTestRNG(seed: 24)
        let data = rng.bytes(3 * page), fix = rng.bytes(page)
        var b = builder(mem)
        b.pages(region: 0, offset: UInt64(page), data, torn: [1])
        b.pages(region: 0, offset: UInt64(2 * page), fix)
        b.end()
        var expected = data
        expected.replaceSubrange(page..<(2 * page), with: fix)
        let first = b.recordOffsets[0] + RecordHeader.size
        let arrayStart = first + data.count
        var cuts = Set(0...b.bytes.count)
        cuts = cuts.filter { c in
            (arrayStart - 8...arrayStart + 20).contains(c)       // in and around the first array
                || (0...3).contains(where: { abs(c - (first + $0 * page)) <= 5 })  // around page boundaries
                || (b.recordOffsets[1] + RecordHeader.size + page - 2...b.recordOffsets[2] + 2).contains(c)  // second array
        }
        for _ in 0..<100 { cuts.insert(Int.random(in: 0...b.bytes.count, using: &rng)) }
        for cut in cuts.sorted() {
            mem.regions[0].initializeMemory(as: UInt8.self, repeating: 0)
            let loader = streamMakeLoader(mem)
            try streamFeed(loader, Array(b.bytes[..<cut]))
            XCTAssertFalse(loader.isComplete)
            try streamFeed(loader, Array(b.bytes[cut...]))
            XCTAssertTrue(loader.isComplete, "cut \(cut)")
            try loader.finish()
            XCTAssertEqual(loader.stats.tornPages, 1, "cut \(cut)")
            XCTAssertEqual(loader.stats.pagesLoaded, 4, "cut \(cut)")
            XCTAssertEqual(Array(mem.regions[0][page..<(4 * page)]), expected, "cut \(cut)")
        }
        // One byte at a time, torn page never re-sent: still found, and named.
        var c = builder(mem)
        c.pages(region: 2, offset: 0, rng.bytes(4 * page), torn: [3])
        c.end()
        let loader = streamMakeLoader(mem)
        streamAssertThrows(.checksum, ["1 page(s)", "region 2 offset 0x3000"]) {
            for byte in c.bytes { try withUnsafeBytes(of: byte) { try loader.consume($0) } }
        }
    }

    /// The largest record: 64 MiB of page data, 16384 page CRCs (64 KiB).
    func testLargestPagesRecord() throws {
        let count = StreamFormat.maxPagesPerRecord
        XCTAssertEqual(count, 16384)
        let mem = StreamGuardedMemory(sizes: [count * page])
        var data = [UInt8](repeating: 0x3C, count: count * page)
        for i in 0..<count { data[i * page] = UInt8(truncatingIfNeeded: i); data[i * page + 1] = UInt8(truncatingIfNeeded: i >> 8) }
        var b = StreamTestBuilder(regions: mem.descriptors)
        b.pages(region: 0, offset: 0, data, torn: [count - 1])
        b.pages(region: 0, offset: UInt64((count - 1) * page), Array(data[((count - 1) * page)...]))
        b.end()
        var rng = StreamTestRNG(seed: 25)
        let loader = streamMakeLoader(mem)
        try streamFeed(loader, b.bytes, rng: &rng, maxChunk: 1 << 20)
        try loader.finish()
        XCTAssertEqual(loader.stats.tornPages, 1)
        XCTAssertEqual(data.withUnsafeBytes { memcmp($0.baseAddress!, mem.regions[0].baseAddress!, data.count) }, 0)
    }

    // MARK: Fuzz

    /// Thousands of mutated streams (their PAGES records sometimes torn,
    /// re-sent or unchecked): flipped bytes, hostile fields behind valid
    /// header CRCs, truncations, trailing junk. None may crash (the
    /// guard pages turn any write outside a region into a crash) or touch the
    /// canary; every failure must be an MKError.
    func testFuzzNeverCrashesNorWritesOutside() {
        let mem = StreamGuardedMemory(sizes: [16 * 1024, 8 * 1024, 4 * 1024])
        var rng = StreamTestRNG(seed: 0xF0221)
        var outcomes: [MKErrorCode?: Int] = [:]
        var tornAtEnd = 0, badArray = 0
        let hostile64: [UInt64] = [0, 1, 4095, 4096, 8192, 16 * 1024, 16 * 1024 + 4096, 0x10000, (64 << 20), (64 << 20) + 4096,
                                   1 << 30, (1 << 30) + 1, 1 << 40, 1 << 63, UInt64.max - 4095, UInt64.max]
        let hostile32: [UInt32] = [0, 1, 2, 3, 4, 4096, 0x8000_0000, UInt32.max]

        for _ in 0..<3000 {
            // A valid stream to start from.
            var b = StreamTestBuilder(regions: mem.descriptors)
            for _ in 0..<Int.random(in: 0...8, using: &rng) {
                let r = Int.random(in: 0..<3, using: &rng)
                let pages = mem.regions[r].count / 4096
                let first = Int.random(in: 0..<pages, using: &rng)
                let n = Int.random(in: 1...(pages - first), using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0:
                    // Sometimes with torn pages, sometimes re-sent afterwards, sometimes unchecked.
                    var torn: Set<Int> = []
                    if Int.random(in: 0..<4, using: &rng) == 0 { torn.insert(Int.random(in: 0..<n, using: &rng)) }
                    let flags: RecordFlags = Int.random(in: 0..<8, using: &rng) == 0 ? [] : [.payloadCRC]
                    b.pages(region: UInt32(r), offset: UInt64(first * 4096), rng.bytes(n * 4096), flags: flags, torn: torn)
                    for page in torn where Bool.random(using: &rng) {
                        b.pages(region: UInt32(r), offset: UInt64((first + page) * 4096), rng.bytes(4096))
                    }
                case 1: b.zero(region: UInt32(r), offset: UInt64(first * 4096), length: UInt64(n * 4096))
                default: b.device(rng.bytes(Int.random(in: 0...200, using: &rng)))
                }
            }
            b.end()

            // Mutate it.
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                switch Int.random(in: 0..<6, using: &rng) {
                case 0:  // flip a byte anywhere
                    guard !b.bytes.isEmpty else { break }
                    b.bytes[Int.random(in: 0..<b.bytes.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
                case 1, 2:  // a hostile field behind a valid header CRC
                    let at = b.recordOffsets.randomElement(using: &rng)!
                    guard at + RecordHeader.size <= b.bytes.count else { break }  // truncated away
                    switch Int.random(in: 0..<5, using: &rng) {
                    case 0: b.patch(recordAt: at, fieldOffset: 0, UInt16.random(in: 0...5, using: &rng))
                    case 1: b.patch(recordAt: at, fieldOffset: 2, UInt16.random(in: 0...3, using: &rng))
                    case 2: b.patch(recordAt: at, fieldOffset: 4, hostile32.randomElement(using: &rng)!)
                    case 3: b.patch(recordAt: at, fieldOffset: 8, hostile64.randomElement(using: &rng)!)
                    default: b.patch(recordAt: at, fieldOffset: 16, hostile64.randomElement(using: &rng)!)
                    }
                case 3:  // truncate
                    b.bytes.removeLast(Int.random(in: 0...b.bytes.count, using: &rng))
                case 4:  // trailing junk
                    b.bytes += rng.bytes(Int.random(in: 1...64, using: &rng))
                default:  // drop a few bytes from the middle (desynchronises the records)
                    if b.bytes.count > 8 {
                        let at = Int.random(in: 0..<(b.bytes.count - 4), using: &rng)
                        b.bytes.removeSubrange(at..<(at + Int.random(in: 1...4, using: &rng)))
                    }
                }
            }

            let sink = StreamDeviceSink()
            let loader = streamMakeLoader(mem, sink)
            var code: MKErrorCode? = nil
            do {
                try streamFeed(loader, b.bytes, rng: &rng, maxChunk: 5000)
                try loader.finish()
                XCTAssertTrue(loader.isComplete)
            } catch let error as MKError {
                code = error.code
                if error.message.contains("never re-sent") { tornAtEnd += 1 }
                if error.message.contains("page CRC array") { badArray += 1 }
                XCTAssertFalse(loader.isComplete)
                XCTAssertLessThan(loader.deviceBufferCapacity, 64 * 1024)
            } catch {
                XCTFail("not an MKError: \(error)")
            }
            outcomes[code, default: 0] += 1
            XCTAssertLessThanOrEqual(loader.stats.bytes, UInt64(b.bytes.count))
            if !mem.canaryIntact {
                XCTFail("canary overwritten")
                return
            }
        }
        // The mutations must actually reach every kind of check, or this test proves little.
        for code: MKErrorCode? in [nil, .proto, .checksum, .range, .truncated] {
            XCTAssertGreaterThan(outcomes[code, default: 0], 10, "outcome \(String(describing: code)): \(outcomes)")
        }
        // Both kinds of PAGES checksum failure: torn pages left at END, and a damaged page CRC array.
        XCTAssertGreaterThan(tornAtEnd, 10, "torn pages at END")
        XCTAssertGreaterThan(badArray, 10, "damaged page CRC arrays")
    }
}
