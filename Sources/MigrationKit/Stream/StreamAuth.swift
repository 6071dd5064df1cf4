import CShim
import Glibc

/// Authenticated streams (header flag AUTH; docs/stream-format.md,
/// "Authenticated streams"). Both VMMs hold a pre-shared key. The source
/// puts a fresh nonce in the stream header, the destination answers with
/// its own in a nonce frame after its hello, and both derive a session key
/// from the pre-shared key, the two nonces and the header's bytes. Every
/// byte after the header then travels in frames that carry an HMAC-SHA-256
/// under that key and the frame's sequence number, and the destination
/// checks each frame before any of its bytes reaches the loader, so before
/// guest memory. A stream recorded from another migration cannot pass: the
/// destination's nonce is new each time.
package enum StreamAuth {
    static let nonceSize = 16
    static let macSize = 32
    static let sessionKeySize = 32
    /// A frame: u32 payload length, payload, MAC.
    static let frameHeaderSize = 4
    /// The largest payload a destination accepts in one frame; it buffers a
    /// whole frame before it checks it.
    package static let maxFrame = 4 << 20
    /// What the source puts in one frame (its batches are 1 MiB).
    static let sourceFrame = 1 << 20
    /// A shorter key is guessable; longer is pointless (HMAC hashes it).
    static let minKeySize = 16
    static let maxKeySize = 1024
    /// Bytes of the ack's MAC carried in the ack-tag frame.
    static let ackTagSize = 16

    static let keyLabel = Array("MigrationKit stream key v2".utf8)
    static let ackLabel = Array("MigrationKit ack v2".utf8)

    /// HMAC-SHA-256(psk, label || source nonce || destination nonce ||
    /// SHA-256(stream header bytes)).
    package static func sessionKey(psk: [UInt8], sourceNonce: [UInt8], destinationNonce: [UInt8],
                                  header: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        var c = cshim_sha256()
        cshim_sha256_init(&c)
        header.withUnsafeBytes { cshim_sha256_update(&c, $0.baseAddress, $0.count) }
        cshim_sha256_final(&c, &digest)
        return hmac(key: psk, keyLabel + sourceNonce + destinationNonce + digest)
    }

    /// The tag that proves an acknowledgement came from the destination that
    /// holds the session key: the first 16 bytes of HMAC(session key, label
    /// || the ack frame's 24 bytes).
    package static func ackTag(sessionKey: [UInt8], ack: [UInt8]) -> [UInt8] {
        Array(hmac(key: sessionKey, ackLabel + ack).prefix(ackTagSize))
    }

    package static func hmac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in cshim_hmac_sha256(k.baseAddress, k.count, d.baseAddress, d.count, &out) }
        }
        return out
    }

    /// A fresh nonce from the kernel's random source.
    package static func nonce() throws(MKError) -> [UInt8] {
        var n = [UInt8](repeating: 0, count: nonceSize)
        let rc = n.withUnsafeMutableBytes { cshim_random_bytes($0.baseAddress, $0.count) }
        guard rc == 0 else { throw MKError(.noMemory, "no random bytes for the stream nonce: \(String(cString: strerror(-rc)))") }
        return n
    }

    package static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in cshim_ct_compare(x.baseAddress, y.baseAddress, x.count) == 0 } }
    }

    /// Validates a key handed over the C API.
    package static func checkKey(length: Int, present: Bool) throws(MKError) {
        guard present || length == 0 else { throw MKError(.invalid, "auth_key is NULL but auth_key_len is \(length)") }
        guard present else { return }
        guard length >= minKeySize, length <= maxKeySize else {
            throw MKError(.invalid, "auth_key_len is \(length): a pre-shared key is \(minKeySize)..\(maxKeySize) bytes (32 random bytes are plenty)")
        }
    }
}

/// An HMAC-SHA-256 key with its pads hashed once, and the frame MAC:
/// HMAC(key, u64 sequence number || the frame's length field and payload).
final class FrameMAC {
    private var key = cshim_hmac_key()

    init(sessionKey: [UInt8]) {
        sessionKey.withUnsafeBytes { cshim_hmac_key_init(&key, $0.baseAddress, $0.count) }
    }

    deinit { withUnsafeMutableBytes(of: &key) { _ = memset($0.baseAddress!, 0, $0.count) } }

    func mac(sequence: UInt64, _ frame: UnsafeRawPointer, count: Int, into out: UnsafeMutableRawPointer) {
        var msg = cshim_sha256()
        cshim_hmac_begin(&key, &msg)
        var seq = sequence.littleEndian
        withUnsafeBytes(of: &seq) { cshim_sha256_update(&msg, $0.baseAddress, 8) }
        cshim_sha256_update(&msg, frame, count)
        cshim_hmac_end(&key, &msg, out.assumingMemoryBound(to: UInt8.self))
    }
}

/// The source's side: copies what the engine writes into frames and seals
/// each. The copy is the point: page data leaves guest memory while the
/// guest runs, and a MAC over memory that changes before it is sent would
/// fail; the frame's bytes are private and stay as they were hashed. (A page
/// torn between its MKH-32 and this copy is still caught by the loader as
/// before, and re-sent.)
package final class StreamSealer {
    private let mac: FrameMAC
    private let capacity: Int
    private let frame: UnsafeMutableRawPointer
    private var used = 0
    package private(set) var sequence: UInt64 = 0

    package init(sessionKey: [UInt8], frameSize: Int = StreamAuth.sourceFrame) {
        mac = FrameMAC(sessionKey: sessionKey)
        capacity = frameSize
        frame = .allocate(byteCount: StreamAuth.frameHeaderSize + frameSize + StreamAuth.macSize, alignment: 64)
    }

    deinit { frame.deallocate() }

    /// Seal every byte of `iov[0..<count]`, in order, into frames of at most
    /// the frame size, and hand each to `write` as one iovec.
    package func seal(_ iov: UnsafePointer<iovec>, count: Int,
                     write: (UnsafePointer<iovec>, Int) throws(MKError) -> Void) throws(MKError) {
        for i in 0..<count {
            var from = UnsafeRawPointer(iov[i].iov_base)
            var left = iov[i].iov_len
            while left > 0, let src = from {
                let n = min(left, capacity - used)
                (frame + StreamAuth.frameHeaderSize + used).copyMemory(from: src, byteCount: n)
                used += n
                left -= n
                from = src + n
                if used == capacity { try flush(write) }
            }
        }
        try flush(write)
    }

    private func flush(_ write: (UnsafePointer<iovec>, Int) throws(MKError) -> Void) throws(MKError) {
        guard used > 0 else { return }
        StreamBytes.store(UInt32(used), frame, 0)
        let body = StreamAuth.frameHeaderSize + used
        mac.mac(sequence: sequence, frame, count: body, into: frame + body)
        var v = iovec(iov_base: frame, iov_len: body + StreamAuth.macSize)
        used = 0
        sequence += 1
        try write(&v, 1)
    }
}

/// The destination's side: collects one frame at a time, checks its MAC and
/// only then hands the payload on. A reader reads straight into `space`
/// and calls `commit`.
package final class StreamOpener {
    private let mac: FrameMAC
    /// Grown to the largest frame seen (a frame is checked whole), so a
    /// source's 1 MiB frames never cost the 4 MiB the format allows.
    private var buffer: UnsafeMutableRawPointer
    private var capacity: Int
    private var have = 0
    private var need = StreamAuth.frameHeaderSize
    package private(set) var sequence: UInt64 = 0
    /// Stream bytes (after the header) in frames that passed.
    private(set) var openedBytes: UInt64 = 0

    package init(sessionKey: [UInt8]) {
        mac = FrameMAC(sessionKey: sessionKey)
        capacity = 4096
        buffer = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { buffer.deallocate() }

    /// Where the next bytes go, at most as many as the current frame lacks.
    package var space: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: buffer + have, count: need - have)
    }

    /// True between frames: input may end here.
    var atBoundary: Bool { have == 0 }

    /// `n` bytes were read into `space`. Once a frame is whole and its MAC
    /// checks, `deliver` gets its payload (valid during the call only).
    package func commit(_ n: Int, deliver: (UnsafeRawBufferPointer) throws(MKError) -> Void) throws(MKError) {
        precondition(n >= 0 && n <= need - have)
        have += n
        guard have == need else { return }
        if need == StreamAuth.frameHeaderSize {
            let length = Int(StreamBytes.load(buffer, 0, as: UInt32.self))
            guard length >= 1, length <= StreamAuth.maxFrame else {
                throw MKError(.auth, "authenticated frame \(sequence) claims \(length) bytes (1..\(StreamAuth.maxFrame) allowed): "
                    + "not a stream sealed with this session's key")
            }
            need = StreamAuth.frameHeaderSize + length + StreamAuth.macSize
            if need > capacity {
                let bigger = UnsafeMutableRawPointer.allocate(byteCount: need, alignment: 64)
                bigger.copyMemory(from: buffer, byteCount: have)
                buffer.deallocate()
                buffer = bigger
                capacity = need
            }
            return
        }
        let body = need - StreamAuth.macSize
        var expected = [UInt8](repeating: 0, count: StreamAuth.macSize)
        expected.withUnsafeMutableBytes { mac.mac(sequence: sequence, buffer, count: body, into: $0.baseAddress!) }
        let ok = expected.withUnsafeBytes { cshim_ct_compare($0.baseAddress, buffer + body, StreamAuth.macSize) == 0 }
        guard ok else {
            throw MKError(.auth, "authenticated frame \(sequence) (stream bytes \(openedBytes)..\(openedBytes + UInt64(body - 4))) "
                + "failed its MAC: a different key, a stream recorded from another migration, or bytes changed in transit; "
                + "none of it was loaded")
        }
        sequence += 1
        openedBytes += UInt64(body - StreamAuth.frameHeaderSize)
        have = 0
        need = StreamAuth.frameHeaderSize
        try deliver(UnsafeRawBufferPointer(start: buffer + StreamAuth.frameHeaderSize, count: body - StreamAuth.frameHeaderSize))
    }
}
