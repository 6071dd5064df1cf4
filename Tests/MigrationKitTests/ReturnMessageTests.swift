import XCTest
@testable import MigrationKit

/// Frames on the return channel: progress reports and the acknowledgement.
final class ReturnMessageTests: XCTestCase {
    private func decode(_ bytes: [UInt8]) throws -> ReturnMessage {
        try bytes.withUnsafeBytes { try ReturnMessage.decode($0) }
    }

    func testProgressRoundTrip() throws {
        XCTAssertEqual(try decode(Progress.encode(consumed: 123_456_789_012)), .progress(consumed: 123_456_789_012))
    }

    func testAckPassesThrough() throws {
        XCTAssertEqual(try decode(Ack.encode(status: -9, timestampNs: 42)), .ack(status: -9, timestampNs: 42))
    }

    func testDamagedProgressIsRejected() {
        var b = Progress.encode(consumed: 1 << 20)
        b[9] ^= 1
        XCTAssertThrowsError(try decode(b)) { XCTAssertEqual(($0 as? MKError)?.code, .checksum) }
        var r = Progress.encode(consumed: 1)
        r[4] = 1  // reserved, with a CRC that matches
        r.withUnsafeMutableBytes { raw in
            let crc = StreamFormat.crc32c(raw.baseAddress!, 20)
            raw.storeBytes(of: crc.littleEndian, toByteOffset: 20, as: UInt32.self)
        }
        XCTAssertThrowsError(try decode(r)) { XCTAssertEqual(($0 as? MKError)?.code, .proto) }
    }

    func testUnknownFrameIsRejected() {
        var b = Progress.encode(consumed: 1)
        b[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try decode(b)) { XCTAssertEqual(($0 as? MKError)?.code, .proto) }
    }
}
