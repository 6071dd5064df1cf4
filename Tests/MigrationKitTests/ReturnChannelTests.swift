import Glibc
import XCTest
@testable import MigrationKit

/// The source's reader of the return channel, on a real socket pair: frames
/// arrive several to a read, or split across reads, and every one is taken
/// in order (the backlog and the delivered rate are built from them).
final class ReturnChannelTests: XCTestCase {
    private var fds: [Int32] = [-1, -1]

    override func setUp() {
        fds = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
    }

    override func tearDown() {
        for fd in fds where fd >= 0 { close(fd) }
    }

    /// What the destination would send: bytes in one write.
    private func send(_ bytes: [UInt8]) {
        let n = bytes.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
        XCTAssertEqual(n, bytes.count)
    }

    private func report(_ i: UInt64) -> ProgressReport {
        ProgressReport(consumed: i << 20, destinationUs: UInt32(1000 * i), zeroPagePs: UInt32(500 + i))
    }

    func testFramesSeveralToAReadOrSplitAreAllTaken() throws {
        let channel = ReturnChannel(fd: fds[0], wakeFd: -1)
        XCTAssertEqual(channel.poll(), [], "nothing sent yet")
        // Three whole frames and the first 10 bytes of a fourth in one write.
        let fourth = Progress.encode(report(4))
        send(Progress.encode(report(1)) + Progress.encode(report(2)) + Progress.encode(report(3)) + Array(fourth[..<10]))
        XCTAssertEqual(channel.poll(), [report(1), report(2), report(3)])
        XCTAssertEqual(channel.poll(), [], "half a frame is no report")
        send(Array(fourth[10...]))
        XCTAssertEqual(channel.poll(), [report(4)])
    }

    /// The acknowledgement may follow progress frames in the same read; the
    /// hello comes first of all, split at any byte.
    func testHelloProgressAndAckInOneStream() throws {
        let channel = ReturnChannel(fd: fds[0], wakeFd: -1)
        let hello = Hello.encode(resumeCostUs: 4321)
        send(Array(hello[..<7]))
        send(Array(hello[7...]) + Progress.encode(report(1)))
        XCTAssertEqual(try channel.awaitHello(timeoutMs: 1000), 4321)
        XCTAssertEqual(channel.poll(), [report(1)])
        let ack = AckReply(status: 0, timestampNs: 99, resumeUs: 250)
        send(Progress.encode(report(2)) + Progress.encode(report(3)) + Ack.encode(ack))
        XCTAssertEqual(try channel.awaitAck(timeoutMs: 1000), ack)
        XCTAssertEqual(channel.poll(), [report(2), report(3)], "progress read while waiting for the ack is kept")
    }

    /// The destination shut its sending side: the reports before the end of
    /// file are still taken, and the end is remembered for the engine (no
    /// acknowledgement can come), as MK_ETRANSPORT.
    func testEndOfFileIsRememberedAndReported() throws {
        let transport = FdSourceTransport(fd: fds[0], isSocket: true, wake: WakeSignal())
        send(Progress.encode(report(1)))
        XCTAssertNil(transport.pollDestination().returnChannelLost, "open: nothing lost")
        send(Progress.encode(report(2)))
        XCTAssertEqual(shutdown(fds[1], Int32(SHUT_WR)), 0)
        let report = transport.pollDestination()
        XCTAssertEqual(report.progress, [self.report(2)])
        XCTAssertEqual(report.returnChannelLost?.code, .transport)
        XCTAssertEqual(report.returnChannelLost?.message, "the destination closed the return channel")
        XCTAssertNotNil(transport.pollDestination().returnChannelLost, "and it stays so")
    }
}
