/// What travels back from the destination, in 24-byte frames: progress
/// reports while the stream loads ("MKPG") and the final acknowledgement
/// ("MKAK", see `Ack`). Progress lets the source see how much of what it
/// wrote still sits in buffers on the way: the bytes the final stage must
/// wait for on top of the dirty pages.
public enum ReturnMessage: Equatable, Sendable {
    case ack(status: Int32, timestampNs: UInt64)
    case progress(consumed: UInt64)

    public static let size = 24

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(MKError) -> ReturnMessage {
        guard bytes.count == size, let base = bytes.baseAddress else {
            throw MKError(.proto, "return message: \(bytes.count) bytes, expected \(size)")
        }
        guard Array(bytes[0..<4]) == Progress.magic else {
            let a = try Ack.decode(bytes)
            return .ack(status: a.status, timestampNs: a.timestampNs)
        }
        let stored = StreamBytes.load(base, 20, as: UInt32.self)
        let computed = StreamFormat.crc32c(base, 20)
        guard stored == computed else {
            throw MKError(.checksum, "progress: CRC-32C \(StreamBytes.hex(stored)) does not match the computed \(StreamBytes.hex(computed))")
        }
        guard StreamBytes.load(base, 4, as: UInt32.self) == 0, StreamBytes.load(base, 16, as: UInt32.self) == 0 else {
            throw MKError(.proto, "progress: reserved fields must be 0")
        }
        return .progress(consumed: StreamBytes.load(base, 8, as: UInt64.self))
    }
}

/// "MKPG", u32 0, u64 stream bytes the destination has consumed, u32 0,
/// u32 CRC-32C of bytes 0..19.
public enum Progress {
    public static let magic: [UInt8] = Array("MKPG".utf8)

    public static func encode(consumed: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: ReturnMessage.size)
        bytes.withUnsafeMutableBytes { buffer in
            let base = buffer.baseAddress!
            for (i, byte) in magic.enumerated() { base.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
            StreamBytes.store(consumed, base, 8)
            StreamBytes.store(StreamFormat.crc32c(UnsafeRawPointer(base), 20), base, 20)
        }
        return bytes
    }
}
