/// What travels back from the destination, in 24-byte frames (MK_ACK_SIZE):
/// - "MKHI" hello, once the stream header is accepted: the VMM's expected
///   cost after END (`resume_cost_us`); its round trip is the channel's RTT;
/// - "MKPG" progress while the stream loads: how far the loader is, on the
///   destination's clock, and what a ZERO page costs there, so the source
///   can turn what it wrote but the destination has not loaded into time;
/// - "MKAK" the final acknowledgement (see `Ack`);
/// - on an authenticated stream only: "MKNC" the destination's nonce, right
///   after the hello, and "MKAT" the acknowledgement's tag, right after it
///   (StreamAuth).
package enum ReturnMessage: Equatable, Sendable {
    case ack(AckReply)
    case progress(ProgressReport)
    case hello(resumeCostUs: UInt64)
    case nonce([UInt8])
    case ackTag([UInt8])

    package static let size = 24

    package static func decode(_ bytes: UnsafeRawBufferPointer) throws(MKError) -> ReturnMessage {
        guard bytes.count == size, let base = bytes.baseAddress else {
            throw MKError(.proto, "return message: \(bytes.count) bytes, expected \(size)")
        }
        let magic = Array(bytes[0..<4])
        if magic == Ack.magic { return .ack(try Ack.decode(bytes)) }
        let name: String
        switch magic {
        case Progress.magic: name = "progress"
        case Hello.magic: name = "hello"
        case SealFrame.nonceMagic: name = "nonce"
        case SealFrame.ackTagMagic: name = "ack tag"
        default:
            throw MKError(.proto, "return message: magic \(magic.map { String($0, radix: 16) }.joined(separator: " ")) is none of MKAK, MKPG, MKHI, MKNC, MKAT")
        }
        let stored = StreamBytes.load(base, 20, as: UInt32.self)
        let computed = StreamFormat.crc32c(base, 20)
        guard stored == computed else {
            throw MKError(.checksum, "\(name): CRC-32C \(StreamBytes.hex(stored)) does not match the computed \(StreamBytes.hex(computed))")
        }
        if magic == SealFrame.nonceMagic { return .nonce(Array(bytes[4..<20])) }
        if magic == SealFrame.ackTagMagic { return .ackTag(Array(bytes[4..<20])) }
        if magic == Hello.magic {
            guard StreamBytes.load(base, 4, as: UInt32.self) == 0, StreamBytes.load(base, 16, as: UInt32.self) == 0 else {
                throw MKError(.proto, "hello: reserved fields must be 0")
            }
            return .hello(resumeCostUs: StreamBytes.load(base, 8, as: UInt64.self))
        }
        return .progress(ProgressReport(consumed: StreamBytes.load(base, 8, as: UInt64.self),
                                        destinationUs: StreamBytes.load(base, 4, as: UInt32.self),
                                        zeroPagePs: StreamBytes.load(base, 16, as: UInt32.self)))
    }

    /// Magic, three fields, CRC-32C of bytes 0..19.
    static func frame(_ magic: [UInt8], _ a: UInt32, _ b: UInt64, _ c: UInt32) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { buffer in
            let base = buffer.baseAddress!
            for (i, byte) in magic.enumerated() { base.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
            StreamBytes.store(a, base, 4)
            StreamBytes.store(b, base, 8)
            StreamBytes.store(c, base, 16)
            StreamBytes.store(StreamFormat.crc32c(UnsafeRawPointer(base), 20), base, 20)
        }
        return bytes
    }
}

/// One progress report. `destinationUs` is the destination's monotonic
/// clock in microseconds, modulo 2^32: only differences between two reports
/// mean anything (the clocks of the two hosts are not comparable).
package struct ProgressReport: Equatable, Sendable {
    package var consumed: UInt64
    package var destinationUs: UInt32
    /// Average cost of a ZERO page at the destination so far, picoseconds
    /// (0 when it keeps a bitmap of fresh memory and the pages were never
    /// written, or before the first ZERO record).
    package var zeroPagePs: UInt32

    package init(consumed: UInt64, destinationUs: UInt32 = 0, zeroPagePs: UInt32 = 0) {
        self.consumed = consumed
        self.destinationUs = destinationUs
        self.zeroPagePs = zeroPagePs
    }
}

/// "MKPG", u32 destination clock in us (mod 2^32), u64 stream bytes the
/// loader has consumed, u32 ZERO page cost in ps, u32 CRC-32C of bytes 0..19.
package enum Progress {
    package static let magic: [UInt8] = Array("MKPG".utf8)

    package static func encode(_ r: ProgressReport) -> [UInt8] {
        ReturnMessage.frame(magic, r.destinationUs, r.consumed, r.zeroPagePs)
    }
}

/// "MKHI", u32 0, u64 the destination VMM's resume_cost_us, u32 0, u32 CRC.
package enum Hello {
    package static let magic: [UInt8] = Array("MKHI".utf8)

    package static func encode(resumeCostUs: UInt64) -> [UInt8] {
        ReturnMessage.frame(magic, 0, resumeCostUs, 0)
    }
}

/// "MKNC" and "MKAT": 16 opaque bytes (the destination's nonce, the ack's
/// tag) between the magic and the CRC.
package enum SealFrame {
    package static let nonceMagic: [UInt8] = Array("MKNC".utf8)
    package static let ackTagMagic: [UInt8] = Array("MKAT".utf8)

    package static func encode(_ magic: [UInt8], _ sixteen: [UInt8]) -> [UInt8] {
        precondition(sixteen.count == 16)
        return sixteen.withUnsafeBytes { b in
            ReturnMessage.frame(magic, StreamBytes.load(b.baseAddress!, 0, as: UInt32.self),
                                StreamBytes.load(b.baseAddress!, 4, as: UInt64.self),
                                StreamBytes.load(b.baseAddress!, 12, as: UInt32.self))
        }
    }
}
