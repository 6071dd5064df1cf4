import CShim
import Glibc
import XCTest
@testable import MigrationKit

/// Authenticated streams: SHA-256 and HMAC against their published vectors,
/// the SHA-extension path against the portable one, and the sealed frames:
/// what passes, and that a changed, reordered, dropped or foreign frame does
/// not reach the loader.
final class StreamAuthTests: XCTestCase {
    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    private func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var c = cshim_sha256()
        cshim_sha256_init(&c)
        data.withUnsafeBytes { cshim_sha256_update(&c, $0.baseAddress, $0.count) }
        cshim_sha256_final(&c, &out)
        return out
    }

    func testSHA256PublishedVectors() {
        // FIPS 180-4 examples.
        XCTAssertEqual(hex(sha256(Array("abc".utf8))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(sha256(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(hex(sha256([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(sha256([UInt8](repeating: 0x61, count: 1_000_000))),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testHMACRFC4231() {
        XCTAssertEqual(hex(StreamAuth.hmac(key: [UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8))),
                       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        XCTAssertEqual(hex(StreamAuth.hmac(key: Array("Jefe".utf8), Array("what do ya want for nothing?".utf8))),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        // A key longer than the block is hashed first.
        XCTAssertEqual(hex(StreamAuth.hmac(key: [UInt8](repeating: 0xaa, count: 131),
                                           Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8))),
                       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    func testAcceleratedPathMatchesThePortableOneAtEveryLengthAndSplit() {
        var rng = SystemRandomNumberGenerator()
        let data = (0..<5000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        for n in stride(from: 0, through: 5000, by: 37) {
            var reference = [UInt8](repeating: 0, count: 32)
            data.withUnsafeBytes { cshim_sha256_scalar($0.baseAddress, n, &reference) }
            // Fed in two pieces split anywhere, as the frame MAC does.
            let split = n / 3
            var c = cshim_sha256()
            cshim_sha256_init(&c)
            data.withUnsafeBytes {
                cshim_sha256_update(&c, $0.baseAddress, split)
                cshim_sha256_update(&c, $0.baseAddress! + split, n - split)
            }
            var out = [UInt8](repeating: 0, count: 32)
            cshim_sha256_final(&c, &out)
            XCTAssertEqual(out, reference, "length \(n)")
        }
    }

    // MARK: sealed frames

    private let keyA = StreamAuth.hmac(key: Array("a".utf8), Array("session".utf8))
    private let keyB = StreamAuth.hmac(key: Array("b".utf8), Array("session".utf8))

    /// Seal `data` as the source does, writes of `writeSize` bytes each.
    private func seal(_ data: [UInt8], key: [UInt8], frameSize: Int = 1000, writeSize: Int = 700) throws -> [UInt8] {
        let sealer = StreamSealer(sessionKey: key, frameSize: frameSize)
        var wire: [UInt8] = []
        var at = 0
        while at < data.count {
            let n = min(writeSize, data.count - at)
            try data.withUnsafeBytes { raw in
                var v = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress! + at), iov_len: n)
                try sealer.seal(&v, count: 1) { (iov, count) throws(MKError) in
                    for i in 0..<count {
                        wire += UnsafeRawBufferPointer(start: iov[i].iov_base, count: iov[i].iov_len)
                    }
                }
            }
            at += n
        }
        return wire
    }

    /// Open `wire` in reads of `chunk` bytes; what was delivered, and the
    /// error if any.
    private func open(_ wire: [UInt8], key: [UInt8], chunk: Int = 333) -> (delivered: [UInt8], error: MKError?) {
        let opener = StreamOpener(sessionKey: key)
        var delivered: [UInt8] = []
        var at = 0
        do throws(MKError) {
            while at < wire.count {
                let space = opener.space
                let n = min(space.count, chunk, wire.count - at)
                wire.withUnsafeBytes { space.baseAddress!.copyMemory(from: $0.baseAddress! + at, byteCount: n) }
                at += n
                try opener.commit(n) { delivered += $0 }
            }
        } catch {
            return (delivered, error)
        }
        return (delivered, nil)
    }

    private func sample(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) } }

    func testSealedFramesRoundTripInAnyChunking() throws {
        let data = sample(10_000)
        let wire = try seal(data, key: keyA)
        // Each 700-byte write is one frame; 4 + 32 bytes of overhead each.
        XCTAssertEqual(wire.count, data.count + 15 * 36)
        for chunk in [1, 7, 36, 333, 4096] {
            let (out, error) = open(wire, key: keyA, chunk: chunk)
            XCTAssertNil(error, "chunk \(chunk)")
            XCTAssertEqual(out, data, "chunk \(chunk)")
        }
        // A large write is split at the frame size.
        let big = try seal(data, key: keyA, frameSize: 1000, writeSize: 10_000)
        XCTAssertEqual(big.count, data.count + 10 * 36)
        XCTAssertEqual(open(big, key: keyA).delivered, data)
    }

    func testAnyChangedByteIsRefusedAndNothingOfItsFrameIsDelivered() throws {
        let data = sample(2100)
        let wire = try seal(data, key: keyA)   // frames of 700: 736 bytes on the wire each
        for position in [0, 3, 4, 100, 703, 735, 736 + 4, 2 * 736 + 735] {
            var damaged = wire
            damaged[position] ^= 0x20
            let (out, error) = open(damaged, key: keyA)
            XCTAssertEqual(error?.code, .auth, "byte \(position)")
            // Frames before the damaged one were delivered, nothing after.
            XCTAssertEqual(out.count, position / 736 * 700, "byte \(position)")
        }
    }

    func testAnotherKeyReorderedOrDroppedFramesAreRefused() throws {
        let data = sample(2100)
        let wire = try seal(data, key: keyA)
        let (none, wrongKey) = open(wire, key: keyB)
        XCTAssertEqual(wrongKey?.code, .auth)
        XCTAssertTrue(wrongKey?.message.contains("failed its MAC") ?? false)
        XCTAssertTrue(none.isEmpty)
        // The sequence number is in the MAC: frame 1 where frame 0 belongs.
        let frames = stride(from: 0, to: wire.count, by: 736).map { Array(wire[$0..<min($0 + 736, wire.count)]) }
        XCTAssertEqual(open(frames[1] + frames[0] + frames[2], key: keyA).error?.code, .auth)
        XCTAssertEqual(open(frames[0] + frames[2], key: keyA).delivered.count, 700)
        XCTAssertEqual(open(frames[0] + frames[2], key: keyA).error?.code, .auth)
    }

    func testFrameLengthsOutsideTheLimitAreRefusedBeforeAnyBuffering() {
        for length in [UInt32(0), UInt32(StreamAuth.maxFrame + 1), UInt32.max] {
            var frame = [UInt8](repeating: 0, count: 4)
            frame.withUnsafeMutableBytes { StreamBytes.store(length, $0.baseAddress!, 0) }
            let (_, error) = open(frame, key: keyA)
            XCTAssertEqual(error?.code, .auth, "length \(length)")
        }
    }

    // MARK: handshake pieces

    func testAuthenticatedHeaderCarriesTheNonceUnderItsCRC() throws {
        let regions = [RegionDescriptor(guestPhysAddr: 0x1000_0000, size: 1 << 20, granularity: 4096)]
        let nonce = Array(0..<16).map { UInt8($0 * 3) }
        let bytes = StreamHeader(flags: StreamHeader.authFlag, regions: regions, nonce: nonce).encoded()
        XCTAssertEqual(bytes.count, 24 + 24 + 16 + 4)
        let total = try bytes.withUnsafeBytes { try StreamHeader.totalSize(fixedPart: UnsafeRawBufferPointer(rebasing: $0[..<24])) }
        XCTAssertEqual(total, bytes.count)
        let decoded = try bytes.withUnsafeBytes { try StreamHeader.decode($0) }
        XCTAssertTrue(decoded.authenticated)
        XCTAssertEqual(decoded.nonce, nonce)
        XCTAssertEqual(decoded.regions, regions)
        var changed = bytes
        changed[24 + 24 + 5] ^= 1
        XCTAssertThrowsError(try changed.withUnsafeBytes { try StreamHeader.decode($0) }) {
            XCTAssertEqual(($0 as? MKError)?.code, .checksum)
        }
        // Bit 1 and up stay undefined.
        let unknown = StreamHeader(flags: 2, regions: regions).encoded()
        XCTAssertThrowsError(try unknown.withUnsafeBytes { try StreamHeader.decode($0) }) {
            XCTAssertEqual(($0 as? MKError)?.code, .proto)
        }
    }

    func testSessionKeyDependsOnEveryInput() {
        let psk = [UInt8](repeating: 7, count: 32)
        let n1 = [UInt8](repeating: 1, count: 16), n2 = [UInt8](repeating: 2, count: 16)
        let header = Array("MKSTREAM header bytes".utf8)
        let key = StreamAuth.sessionKey(psk: psk, sourceNonce: n1, destinationNonce: n2, header: header)
        XCTAssertEqual(key.count, 32)
        XCTAssertEqual(key, StreamAuth.sessionKey(psk: psk, sourceNonce: n1, destinationNonce: n2, header: header))
        let variants = [
            StreamAuth.sessionKey(psk: psk.map { $0 ^ 1 }, sourceNonce: n1, destinationNonce: n2, header: header),
            StreamAuth.sessionKey(psk: psk, sourceNonce: n2, destinationNonce: n2, header: header),
            StreamAuth.sessionKey(psk: psk, sourceNonce: n1, destinationNonce: n1, header: header),
            StreamAuth.sessionKey(psk: psk, sourceNonce: n1, destinationNonce: n2, header: header + [0]),
        ]
        for v in variants { XCTAssertNotEqual(v, key) }
    }

    func testNonceAndAckTagFramesRoundTrip() throws {
        let sixteen = (0..<16).map { UInt8(0xF0 - $0) }
        for (magic, expect) in [(SealFrame.nonceMagic, ReturnMessage.nonce(sixteen)), (SealFrame.ackTagMagic, .ackTag(sixteen))] {
            let frame = SealFrame.encode(magic, sixteen)
            XCTAssertEqual(frame.count, ReturnMessage.size)
            XCTAssertEqual(try frame.withUnsafeBytes { try ReturnMessage.decode($0) }, expect)
            var bad = frame
            bad[9] ^= 1
            XCTAssertThrowsError(try bad.withUnsafeBytes { try ReturnMessage.decode($0) })
        }
        // The tag binds every field of the ack.
        let key = [UInt8](repeating: 9, count: 32)
        let ok = Ack.encode(AckReply(status: 0, timestampNs: 5, resumeUs: 10))
        let refused = Ack.encode(AckReply(status: -16, timestampNs: 5, resumeUs: 10))
        XCTAssertEqual(StreamAuth.ackTag(sessionKey: key, ack: ok).count, 16)
        XCTAssertNotEqual(StreamAuth.ackTag(sessionKey: key, ack: ok), StreamAuth.ackTag(sessionKey: key, ack: refused))
    }

    func testKeyLengthRules() {
        XCTAssertNoThrow(try StreamAuth.checkKey(length: 0, present: false))
        XCTAssertNoThrow(try StreamAuth.checkKey(length: 16, present: true))
        XCTAssertNoThrow(try StreamAuth.checkKey(length: 1024, present: true))
        for (length, present) in [(15, true), (1025, true), (0, true), (32, false)] {
            XCTAssertThrowsError(try StreamAuth.checkKey(length: length, present: present)) {
                XCTAssertEqual(($0 as? MKError)?.code, .invalid)
            }
        }
    }
}
