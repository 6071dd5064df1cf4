import CShim
import XCTest
@testable import MigrationKit

/// Frames on the return channel: hello, progress reports and the acknowledgement.
final class ReturnMessageTests: XCTestCase {
    private func decode(_ bytes: [UInt8]) throws -> ReturnMessage {
        try bytes.withUnsafeBytes { try ReturnMessage.decode($0) }
    }

    func testProgressRoundTrip() throws {
        let r = ProgressReport(consumed: 123_456_789_012, destinationUs: 0xFFFF_FFF0, zeroPagePs: 630_000)
        XCTAssertEqual(try decode(Progress.encode(r)), .progress(r))
    }

    func testHelloRoundTrip() throws {
        XCTAssertEqual(try decode(Hello.encode(resumeCostUs: 12_345)), .hello(resumeCostUs: 12_345))
    }

    func testAckPassesThrough() throws {
        let a = AckReply(status: -9, timestampNs: 42, resumeUs: 7)
        XCTAssertEqual(try decode(Ack.encode(a)), .ack(a))
    }

    /// A destination running a newer library refuses with a code this build
    /// does not know: the number is kept as sent, and says where it came from.
    func testUnknownCodeInTheAckSurvivesDecoding() throws {
        guard case .ack(let reply) = try decode(Ack.encode(AckReply(status: -42, timestampNs: 42))) else {
            return XCTFail("not decoded as an ack")
        }
        let code = try XCTUnwrap(reply.failure)
        XCTAssertEqual(code.rawValue, -42)
        XCTAssertFalse(code.isKnown)
        XCTAssertEqual("\(code)", "unknown error code -42 from the peer")
        XCTAssertEqual("\(code.text)", "unknown error code")
        XCTAssertNil(AckReply(status: 0, timestampNs: 42).failure, "0 is the guest resumed, not a failure")
        XCTAssertEqual(AckReply(status: MK_EAUTH.rawValue, timestampNs: 42).failure, .auth)
    }

    func testDamagedFramesAreRejected() {
        var b = Progress.encode(ProgressReport(consumed: 1 << 20))
        b[9] ^= 1
        XCTAssertThrowsError(try decode(b)) { XCTAssertEqual(($0 as? MKError)?.code, .checksum) }
        var h = Hello.encode(resumeCostUs: 1)
        h[4] = 1  // reserved, with a CRC that matches
        h.withUnsafeMutableBytes { raw in
            let crc = StreamFormat.crc32c(raw.baseAddress!, 20)
            raw.storeBytes(of: crc.littleEndian, toByteOffset: 20, as: UInt32.self)
        }
        XCTAssertThrowsError(try decode(h)) { XCTAssertEqual(($0 as? MKError)?.code, .proto) }
    }

    func testUnknownFrameIsRejected() {
        var b = Progress.encode(ProgressReport(consumed: 1))
        b[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try decode(b)) { XCTAssertEqual(($0 as? MKError)?.code, .proto) }
    }
}
