import CShim
@testable import MigrationKit
import XCTest

/// Encoders and decoders against the byte layout of docs/stream-format.md.
/// Layout tests spell out expected bytes by hand, so an encoder and decoder
/// that agree with each other but not with the document still fail.
final class StreamFormatTests: XCTestCase {
    private let regions = [
        RegionDescriptor(guestPhysAddr: 0, size: 0xA_0000, granularity: 4096),
        RegionDescriptor(guestPhysAddr: 0x1_0000_0000, size: 0x4000_0000, granularity: 2 << 20),
    ]

    private func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
    }

    private func crc(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { cshim_crc32c(0, $0.baseAddress, $0.count) } }

    private func decodeHeader(_ bytes: [UInt8]) throws -> StreamHeader {
        try bytes.withUnsafeBytes { try StreamHeader.decode($0) }
    }

    private func decodeRecord(_ bytes: [UInt8]) throws -> RecordHeader {
        try bytes.withUnsafeBytes { try RecordHeader.decode($0.baseAddress!) }
    }

    private func decodeAck(_ bytes: [UInt8]) throws -> AckReply {
        try bytes.withUnsafeBytes { try Ack.decode($0) }
    }

    /// Rewrites the trailing CRC of a stream header after editing a field.
    private func resealHeader(_ bytes: inout [UInt8]) {
        let body = Array(bytes.dropLast(4))
        bytes = body + le(crc(body))
    }

    // MARK: CRC

    func testCRC32CCheckValueAndChaining() {
        XCTAssertEqual(crc(Array("123456789".utf8)), 0xE306_9283)  // the standard CRC-32C check value
        let data = Array("123456789".utf8)
        let chained = data.withUnsafeBytes { b in
            StreamFormat.crc32c(b.baseAddress! + 4, 5, continuing: StreamFormat.crc32c(b.baseAddress, 4))
        }
        XCTAssertEqual(chained, 0xE306_9283)
    }

    // MARK: Stream header

    func testStreamHeaderLayout() {
        let bytes = StreamHeader.encode(regions: regions)
        var expected: [UInt8] = Array("MKSTREAM".utf8) + le(UInt32(2)) + le(UInt32(4096)) + le(UInt32(2)) + le(UInt32(0))
        for r in regions { expected += le(r.guestPhysAddr) + le(r.size) + le(r.granularity) }
        expected += le(crc(expected))
        XCTAssertEqual(bytes, expected)
        XCTAssertEqual(bytes.count, StreamHeader.size(regionCount: 2))
        XCTAssertEqual(StreamHeader.size(regionCount: 2), 24 + 48 + 4)
    }

    func testStreamHeaderRoundTripAndTupleForm() throws {
        let bytes = StreamHeader.encode(regions: regions)
        let tuples = regions.map { (gpa: $0.guestPhysAddr, size: $0.size, granularity: $0.granularity) }
        XCTAssertEqual(StreamHeader.encode(pageSize: 4096, regions: tuples), bytes)
        let header = try decodeHeader(bytes)
        XCTAssertEqual(header, StreamHeader(regions: regions))
        XCTAssertEqual(try bytes.withUnsafeBytes { try StreamHeader.totalSize(fixedPart: UnsafeRawBufferPointer(rebasing: $0[..<24])) },
                       bytes.count)
        // The largest legal region table.
        let many = (0..<4096).map { RegionDescriptor(guestPhysAddr: UInt64($0) << 32, size: 4096, granularity: 0) }
        XCTAssertEqual(try decodeHeader(StreamHeader.encode(regions: many)).regions, many)
    }

    func testStreamHeaderDecodeErrors() {
        let good = StreamHeader.encode(regions: regions)
        var bytes = good
        bytes[7] = UInt8(ascii: "X")
        streamAssertThrows(.proto, ["magic", "MKSTREAX"]) { _ = try decodeHeader(bytes) }

        bytes = good
        bytes.replaceSubrange(8..<12, with: le(UInt32(7)))
        resealHeader(&bytes)
        streamAssertThrows(.version, ["version 7"]) { _ = try decodeHeader(bytes) }

        for count: UInt32 in [0, 4097, UInt32.max] {
            bytes = good
            bytes.replaceSubrange(16..<20, with: le(count))
            streamAssertThrows(.range, ["region count \(count)"]) { _ = try decodeHeader(bytes) }
        }

        for at in 0..<good.count where !(0..<12).contains(at) && !(16..<20).contains(at) {
            bytes = good
            // (Flags bit 0 is AUTH, which makes the header 16 bytes longer.)
            bytes[at] ^= at == 20 ? 0x02 : 0x01
            streamAssertThrows(.checksum, ["CRC-32C"]) { _ = try decodeHeader(bytes) }
        }

        bytes = good
        bytes.replaceSubrange(12..<16, with: le(UInt32(65536)))
        resealHeader(&bytes)
        streamAssertThrows(.proto, ["page size 65536"]) { _ = try decodeHeader(bytes) }

        bytes = good
        bytes.replaceSubrange(20..<24, with: le(UInt32(4)))
        resealHeader(&bytes)
        streamAssertThrows(.proto, ["flags 0x4"]) { _ = try decodeHeader(bytes) }

        bytes = good
        bytes.replaceSubrange((24 + 24 + 16)..<(24 + 24 + 24), with: le(UInt64(3 << 20)))  // region 1 granularity: not a power of two
        resealHeader(&bytes)
        streamAssertThrows(.proto, ["region 1 dirty_granularity 0x300000"]) { _ = try decodeHeader(bytes) }

        streamAssertThrows(.truncated) { _ = try decodeHeader(Array(good.dropLast())) }
        streamAssertThrows(.truncated) { _ = try decodeHeader(Array(good.prefix(10))) }
    }

    // MARK: Record header

    func testRecordHeaderLayout() {
        let header = RecordHeader(type: .pages, flags: [.payloadCRC, .stopped], region: 0x0102_0304,
                                  offset: 0x1122_3344_5566_7000, length: 0x2000, payloadCRC: 0xCAFE_F00D)
        var expected = le(UInt16(1)) + le(UInt16(3)) + le(UInt32(0x0102_0304)) + le(UInt64(0x1122_3344_5566_7000))
            + le(UInt64(0x2000)) + le(UInt32(0xCAFE_F00D))
        expected += le(crc(expected))
        XCTAssertEqual(header.encoded(), expected)
        XCTAssertEqual(RecordHeader.size, 32)

        // encode(into:) works at any alignment.
        var buffer = [UInt8](repeating: 0xEE, count: 40)
        buffer.withUnsafeMutableBytes { header.encode(into: $0.baseAddress! + 3) }
        XCTAssertEqual(Array(buffer[3..<35]), expected)
        XCTAssertEqual(buffer[0..<3] + buffer[35...], [0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE])
    }

    /// A PAGES record with PAYLOAD_CRC: header, `length` bytes of page data,
    /// then one little-endian MKH-32 per page; payload_crc is the CRC-32C of
    /// those 4 × pages bytes, and `length` counts the page data only.
    func testPagesPageCRCArrayLayout() {
        let pages = (0..<3).map { p in (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* (p + 3) &+ p) } }
        let data = pages.flatMap { $0 }
        let array = data.withUnsafeBytes { StreamFormat.pageCRCs($0) }
        func mkh(_ page: [UInt8]) -> UInt32 { page.withUnsafeBytes { cshim_page_hash_scalar($0.baseAddress!) } }
        XCTAssertEqual(array, le(mkh(pages[0])) + le(mkh(pages[1])) + le(mkh(pages[2])))
        XCTAssertEqual(array.count, 12)
        XCTAssertEqual([UInt8]().withUnsafeBytes { StreamFormat.pageCRCs($0) }, [])
        // A page of zeros has MKH-32 0x322216f9, sent least significant byte first.
        XCTAssertEqual([UInt8](repeating: 0, count: 4096).withUnsafeBytes { StreamFormat.pageCRCs($0) }, [0xF9, 0x16, 0x22, 0x32])

        let header = RecordHeader(type: .pages, flags: [.payloadCRC], region: 1, offset: 0x2000, length: 0x3000, payloadCRC: crc(array))
        var expected = le(UInt16(1)) + le(UInt16(1)) + le(UInt32(1)) + le(UInt64(0x2000)) + le(UInt64(0x3000)) + le(crc(array))
        expected += le(crc(expected))
        XCTAssertEqual(header.encoded(), expected)
        XCTAssertNoThrow(try header.validateFields())
        XCTAssertEqual(StreamFormat.maxPagesPerRecord, 16384)
        XCTAssertEqual(StreamFormat.maxPagesPerRecord * 4, 64 * 1024)
    }

    /// The worked example of docs/stream-format.md, byte for byte as printed
    /// there, built with the encoders and loaded by the loader.
    func testDocumentedExample() throws {
        func hex(_ text: String) -> [UInt8] { text.split(separator: " ").map { UInt8($0, radix: 16)! } }
        let header = hex("4d 4b 53 54 52 45 41 4d 02 00 00 00 00 10 00 00 01 00 00 00 00 00 00 00 "
            + "00 00 00 00 01 00 00 00 00 30 00 00 00 00 00 00 00 10 00 00 00 00 00 00 68 44 ed f8")
        let pagesHeader = hex("01 00 01 00 00 00 00 00 00 10 00 00 00 00 00 00 00 20 00 00 00 00 00 00 de 51 33 ef 13 47 df 88")
        let data = [UInt8](repeating: 0x11, count: 4096) + [UInt8](repeating: 0x22, count: 4096)
        let array = hex("57 1d 9e 34 ab 98 d3 55")
        let zero = hex("02 00 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 00 00 00 87 12 c3 b0")
        let end = hex("04 00 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 45 0e 1a 2f")
        let documented = header + pagesHeader + data + array + zero + end
        XCTAssertEqual(documented.count, 8348)

        let region = RegionDescriptor(guestPhysAddr: 0x1_0000_0000, size: 0x3000, granularity: 0x1000)
        XCTAssertEqual(StreamHeader.encode(regions: [region]), header)
        let pageCRCs = data.withUnsafeBytes { StreamFormat.pageCRCs($0) }
        XCTAssertEqual(pageCRCs, array)
        let payloadCRC = pageCRCs.withUnsafeBytes { StreamFormat.crc32c($0) }
        XCTAssertEqual(payloadCRC, 0xEF33_51DE)
        XCTAssertEqual(RecordHeader(type: .pages, flags: [.payloadCRC], offset: 0x1000, length: 0x2000, payloadCRC: payloadCRC).encoded(), pagesHeader)
        XCTAssertEqual(RecordHeader(type: .zero, flags: [.stopped], length: 0x1000).encoded(), zero)
        XCTAssertEqual(RecordHeader(type: .end, flags: [.stopped]).encoded(), end)

        let memory = StreamGuardedMemory(sizes: [0x3000])
        memory.regions[0].initializeMemory(as: UInt8.self, repeating: 0x77)
        let loader = streamMakeLoader(memory)
        try streamFeed(loader, documented)
        try loader.finish()
        XCTAssertEqual(memory.contents(0), [UInt8](repeating: 0, count: 4096) + data)
        XCTAssertEqual(loader.stats.pagesLoaded, 2)
        XCTAssertEqual(loader.stats.tornPages, 0)
    }

    func testRecordHeaderRoundTripEveryType() throws {
        let headers = [
            RecordHeader(type: .pages, flags: [.payloadCRC], region: 2, offset: 0x7000, length: 0x3000, payloadCRC: 0x1234_5678),
            RecordHeader(type: .zero, flags: [.stopped], region: 4095, offset: 0, length: 1 << 40),
            RecordHeader(type: .device, flags: [.payloadCRC, .stopped], length: 99, payloadCRC: 0xFFFF_FFFF),
            RecordHeader(type: .end),
        ]
        for header in headers {
            let decoded = try decodeRecord(header.encoded())
            XCTAssertEqual(decoded, header)
            XCTAssertNoThrow(try decoded.validateFields(), "\(header)")
        }
        // Decoding from an unaligned address.
        let bytes = [0] + headers[0].encoded()
        XCTAssertEqual(try bytes.withUnsafeBytes { try RecordHeader.decode($0.baseAddress! + 1) }, headers[0])
    }

    func testRecordHeaderAnyFlippedBitFailsItsCRC() {
        let good = RecordHeader(type: .pages, flags: [.payloadCRC], region: 1, offset: 4096, length: 4096, payloadCRC: 5).encoded()
        for bit in 0..<(32 * 8) {
            var bytes = good
            bytes[bit / 8] ^= UInt8(1 << (bit % 8))
            streamAssertThrows(.checksum, ["header_crc"]) { _ = try decodeRecord(bytes) }
        }
    }

    func testRecordHeaderUnknownTypeAndFlags() {
        func raw(type: UInt16, flags: UInt16) -> [UInt8] {
            var b = StreamTestBuilder(headerBytes: [])
            b.raw(type: type, flags: flags)
            return b.bytes
        }
        streamAssertThrows(.proto, ["unknown type 0"]) { _ = try decodeRecord(raw(type: 0, flags: 0)) }
        streamAssertThrows(.proto, ["unknown type 5"]) { _ = try decodeRecord(raw(type: 5, flags: 0)) }
        streamAssertThrows(.proto, ["unknown bits 0x4"]) { _ = try decodeRecord(raw(type: 4, flags: 4)) }
        streamAssertThrows(.proto, ["flags 0xffff", "unknown bits 0xfffc"]) { _ = try decodeRecord(raw(type: 1, flags: 0xFFFF)) }
    }

    func testRecordFieldRules() {
        let ok: [RecordHeader] = [
            RecordHeader(type: .pages, flags: [.payloadCRC], offset: 0, length: 64 << 20, payloadCRC: 1),  // exactly the limit
            RecordHeader(type: .pages, flags: [], offset: 4096, length: 4096),
            RecordHeader(type: .zero, flags: [.payloadCRC], offset: 8192, length: 1 << 50),  // payload_crc 0 = CRC of nothing
            RecordHeader(type: .device, flags: [.payloadCRC], length: 1 << 30, payloadCRC: 1),  // exactly the limit
            RecordHeader(type: .device, flags: [], length: 0),
            RecordHeader(type: .end, flags: [.stopped]),
        ]
        for header in ok { XCTAssertNoThrow(try header.validateFields(), "\(header)") }

        let bad: [(RecordHeader, String)] = [
            (RecordHeader(type: .pages, offset: 1, length: 4096), "offset 0x1"),
            (RecordHeader(type: .pages, offset: 0, length: 4097), "length 0x1001"),
            (RecordHeader(type: .pages, offset: 0, length: 0), "length is 0"),
            (RecordHeader(type: .pages, offset: 0, length: (64 << 20) + 4096), "64 MiB"),
            (RecordHeader(type: .pages, flags: [], offset: 0, length: 4096, payloadCRC: 3), "payload_crc 0x3"),
            (RecordHeader(type: .zero, offset: 0, length: 0), "length is 0"),
            (RecordHeader(type: .zero, offset: 4095, length: 4096), "offset 0xfff"),
            (RecordHeader(type: .zero, flags: [.payloadCRC], offset: 0, length: 4096, payloadCRC: 3), "payload_crc"),
            (RecordHeader(type: .device, region: 1, length: 1), "region 1"),
            (RecordHeader(type: .device, offset: 8, length: 1), "offset 0x8"),
            (RecordHeader(type: .device, length: (1 << 30) + 1), "1 GiB"),
            (RecordHeader(type: .end, region: 1), "must all be 0"),
            (RecordHeader(type: .end, length: 4096), "must all be 0"),
        ]
        for (header, fragment) in bad {
            streamAssertThrows(.proto, [fragment]) { try header.validateFields() }
        }
    }

    // MARK: Ack

    func testAckLayoutAndRoundTrip() throws {
        let bytes = Ack.encode(AckReply(status: -14, timestampNs: 0x0102_0304_0506_0708, resumeUs: 0x0A0B_0C0D))
        var expected: [UInt8] = Array("MKAK".utf8) + le(Int32(-14)) + le(UInt64(0x0102_0304_0506_0708)) + le(UInt32(0x0A0B_0C0D))
        expected += le(crc(expected))
        XCTAssertEqual(bytes, expected)
        XCTAssertEqual(bytes.count, Ack.size)
        XCTAssertEqual(UInt32(Ack.size), MK_ACK_SIZE)
        let reply = try decodeAck(bytes)
        XCTAssertEqual(reply.status, -14)
        XCTAssertEqual(reply.timestampNs, 0x0102_0304_0506_0708)
        XCTAssertEqual(reply.resumeUs, 0x0A0B_0C0D)
        XCTAssertEqual(try decodeAck(Ack.encode(AckReply(status: 0, timestampNs: 1))).status, 0)
    }

    func testAckErrors() {
        let good = Ack.encode(AckReply(status: 0, timestampNs: 42))
        streamAssertThrows(.proto, ["23 bytes"]) { _ = try decodeAck(Array(good.dropLast())) }
        streamAssertThrows(.proto, ["25 bytes"]) { _ = try decodeAck(good + [0]) }
        var bytes = good
        bytes[0] = 0
        streamAssertThrows(.proto, ["magic"]) { _ = try decodeAck(bytes) }
        for at in 4..<24 {
            bytes = good
            bytes[at] ^= 0x80
            streamAssertThrows(.checksum, ["CRC-32C"]) { _ = try decodeAck(bytes) }
        }
        streamAssertThrows(.proto, ["status 3"]) { _ = try decodeAck(Ack.encode(AckReply(status: 3, timestampNs: 0))) }
    }

    func testWireConstantsMatchTheCHeader() {
        XCTAssertEqual(StreamFormat.pageSize, MK_PAGE_SIZE)
        XCTAssertEqual(StreamFormat.magic.count, 8)
        XCTAssertEqual(StreamFormat.maxPagesLength, 64 * 1024 * 1024)
        XCTAssertEqual(StreamFormat.maxDeviceLength, 1024 * 1024 * 1024)
        XCTAssertEqual(RecordType.allCases.map(\.rawValue), [1, 2, 3, 4])
    }
}
