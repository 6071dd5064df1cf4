import CShim
import Glibc
import MigrationKitSim
import XCTest
@testable import MigrationKit

/// The source's side of an authenticated stream, with a destination that
/// really opens the frames: everything after the header arrives sealed and
/// loads, and only an acknowledgement with the session's tag completes the
/// migration (a forged one leaves the guest paused, as no answer does).
final class SourceAuthTests: XCTestCase {
    /// A destination in the hooks: the header is checked by a loader, the
    /// frames by an opener under the same session key, the pages land in
    /// `memory`. It answers with `ackTagFor` (the right tag, or another).
    final class SealedDestination: SourceHooks {
        let clock: VirtualClock
        let psk: [UInt8]
        let destNonce = [UInt8](repeating: 0x3C, count: 16)
        let memory: UnsafeMutableRawPointer
        let size: Int
        var loader: StreamLoader
        var header: [UInt8] = []
        var opener: StreamOpener?
        var forgeTag = false
        var pauses = 0, resumes = 0
        let hasReturnChannel = true

        init(clock: VirtualClock, psk: [UInt8], size: Int) {
            self.clock = clock
            self.psk = psk
            self.size = size
            memory = .allocate(byteCount: size, alignment: 4096)
            memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            loader = StreamLoader(regions: [GuestRegion(host: memory, guestPhysAddr: 0, size: UInt64(size), granularity: 4096)],
                                  loadDevice: { _ in })
        }
        deinit { memory.deallocate() }

        func fetchDirtyLog(region: Int, bitmap: UnsafeMutablePointer<UInt64>, pages: Int) throws(MKError) {}
        func write(_ iov: UnsafePointer<iovec>, count: Int) throws(MKError) {
            clock.advance(by: 10_000)
            for i in 0..<count {
                var bytes = UnsafeRawBufferPointer(start: iov[i].iov_base, count: iov[i].iov_len)
                if opener == nil {
                    // The header, in the clear: keep its bytes for the key.
                    header += bytes
                    try loader.consume(bytes)
                    continue
                }
                while !bytes.isEmpty {
                    let space = opener!.space
                    let n = min(space.count, bytes.count)
                    space.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: n)
                    try opener!.commit(n) { (payload) throws(MKError) in try loader.consume(payload) }
                    bytes = UnsafeRawBufferPointer(rebasing: bytes[n...])
                }
            }
        }
        var sessionKey: [UInt8] {
            let h = try! header.withUnsafeBytes { try StreamHeader.decode($0) }
            return StreamAuth.sessionKey(psk: psk, sourceNonce: h.nonce, destinationNonce: destNonce, header: header)
        }
        func awaitHello(timeoutMs: Int) throws(MKError) -> UInt64 { 0 }
        func awaitNonce(timeoutMs: Int) throws(MKError) -> [UInt8] {
            opener = StreamOpener(sessionKey: sessionKey)
            return destNonce
        }
        let reply = AckReply(status: 0, timestampNs: 42, resumeUs: 7)
        func awaitAck(timeoutMs: Int) throws(MKError) -> AckReply { reply }
        func awaitAckTag(timeoutMs: Int) throws(MKError) -> [UInt8] {
            forgeTag ? [UInt8](repeating: 0, count: 16) : StreamAuth.ackTag(sessionKey: sessionKey, ack: Ack.encode(reply))
        }
        func pauseVCPUs() throws(MKError) { pauses += 1 }
        func resumeVCPUs() throws(MKError) { resumes += 1 }
        func setThrottle(percent: UInt32) {}
        func saveDeviceState() throws(MKError) -> [UInt8] { [] }
        func deviceStateSize() -> UInt64? { 0 }
        func log(_ level: LogLevel, _ message: String) {}
        func progress(_ stats: MigrationStats) {}
        func pollDestination() -> DestinationReport { DestinationReport() }
    }

    private func migrate(forgeTag: Bool) -> (MKError?, SealedDestination, UnsafeMutableRawPointer) {
        let size = 1 << 20
        let guest = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        for i in 0..<size { guest.storeBytes(of: UInt8(truncatingIfNeeded: i &* 7 &+ i >> 12), toByteOffset: i, as: UInt8.self) }
        let clock = VirtualClock()
        let psk = [UInt8](repeating: 0x11, count: 32)
        let dest = SealedDestination(clock: clock, psk: psk, size: size)
        dest.forgeTag = forgeTag
        let region = GuestRegion(host: guest, guestPhysAddr: 0, size: UInt64(size), granularity: 4096)
        var config = SourceEngine.Config()
        config.authKey = psk
        config.authNonce = [UInt8](repeating: 0xA5, count: 16)
        let engine = SourceEngine(regions: [region], hooks: dest, clock: clock,
                                  control: SourceControl(params: MigrationParameters()), marks: ExternalMarks([region]),
                                  config: config)
        return (engine.run(), dest, guest)
    }

    func testSealedStreamLoadsAndTheTaggedAckCompletes() {
        let (error, dest, guest) = migrate(forgeTag: false)
        defer { guest.deallocate() }
        XCTAssertNil(error)
        XCTAssertTrue(dest.loader.isComplete, "the destination saw END through the opener")
        XCTAssertGreaterThan(dest.opener?.sequence ?? 0, 0, "frames were sealed")
        XCTAssertEqual(memcmp(guest, dest.memory, dest.size), 0, "memory equal")
        XCTAssertEqual(dest.resumes, 0, "the guest lives on the destination now")
    }

    func testAnAckWithoutTheSessionTagIsNoAnswer() {
        let (error, dest, guest) = migrate(forgeTag: true)
        defer { guest.deallocate() }
        XCTAssertEqual(error?.code, .auth)
        XCTAssertTrue(error?.message.contains("stay paused") ?? false, error?.message ?? "")
        XCTAssertEqual(dest.pauses, 1)
        XCTAssertEqual(dest.resumes, 0, "END went out and the answer is not trusted: the vCPUs stay paused")
    }
}
