import CShim

// The wire format of a migration stream, version 2: a stream header describing
// guest memory, then a sequence of 32-byte record headers each followed by its
// payload, ending with an END record. Everything is little-endian. The byte
// layout and the validation rules are written down in docs/stream-format.md;
// keep the two in step.
//
// This file only encodes and decodes; it never touches guest memory. What a
// record means for guest memory (bounds against the registered regions, torn
// pages, device state) is StreamLoader's business.

/// Constants of stream format version 2 (version 1 had no hello frame and
/// no timing in progress and ack frames).
package enum StreamFormat {
    /// The first eight bytes of every stream.
    package static let magic: [UInt8] = Array("MKSTREAM".utf8)
    /// The only version this build writes and reads.
    package static let version: UInt32 = 2
    /// The page size the stream is expressed in (MK_PAGE_SIZE).
    package static let pageSize: UInt32 = 4096
    /// Most regions a stream header may describe.
    static let maxRegions: UInt32 = 4096
    /// Largest PAGES `length` (page data only; the page CRC array that may
    /// follow is not counted). Bounds how much guest memory is written before
    /// the page checksums arrive.
    package static let maxPagesLength: UInt64 = 64 << 20
    /// Most pages one PAGES record carries, so most entries in its page CRC
    /// array (whose bytes are then at most 64 KiB).
    package static let maxPagesPerRecord = Int(maxPagesLength / UInt64(pageSize))
    /// Largest DEVICE payload (the same 1 GiB cap as mk_buffer_append).
    package static let maxDeviceLength: UInt64 = 1 << 30

    /// CRC-32C of `count` bytes at `bytes`, continuing from `crc` (0 to start).
    @inline(__always)
    package static func crc32c(_ bytes: UnsafeRawPointer?, _ count: Int, continuing crc: UInt32 = 0) -> UInt32 {
        count == 0 ? crc : cshim_crc32c(crc, bytes, count)
    }

    /// CRC-32C of a whole buffer: what a DEVICE record carries in its
    /// payload_crc field (for PAGES it is the CRC of `pageCRCs`).
    package static func crc32c(_ buffer: UnsafeRawBufferPointer) -> UInt32 {
        crc32c(buffer.baseAddress, buffer.count)
    }

    /// The page check array a PAGES record with PAYLOAD_CRC carries after
    /// its page data: the MKH-32 of each 4 KiB page of `pages` (a whole
    /// number of pages), in order, as little-endian u32s. The record's
    /// payload_crc is `crc32c` of these bytes. (Per-page check values let
    /// the destination suspect only the pages the guest wrote while they
    /// were being sent; MKH-32 instead of CRC-32C because it costs a quarter
    /// as much and fuses with the loader's copy.)
    package static func pageCRCs(_ pages: UnsafeRawBufferPointer) -> [UInt8] {
        let page = Int(pageSize)
        precondition(pages.count % page == 0, "PAGES data must be a whole number of pages")
        let count = pages.count / page
        return [UInt8](unsafeUninitializedCapacity: count * 4) { buffer, initialized in
            let out = UnsafeMutableRawPointer(buffer.baseAddress)
            for i in 0..<count {
                StreamBytes.store(cshim_page_hash(pages.baseAddress! + i * page), out!, i * 4)
            }
            initialized = count * 4
        }
    }
}

/// Little-endian field access at byte offsets, alignment-free (stream
/// fields sit wherever the transport's chunks put them).
enum StreamBytes {
    @inline(__always)
    static func load<T: FixedWidthInteger>(_ base: UnsafeRawPointer, _ offset: Int, as: T.Type) -> T {
        T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    @inline(__always)
    static func store<T: FixedWidthInteger>(_ value: T, _ base: UnsafeMutableRawPointer, _ offset: Int) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    static func hex<T: FixedWidthInteger>(_ value: T) -> String {
        "0x" + String(value, radix: 16)
    }
}

// MARK: - Stream header

/// One guest memory region as the stream header describes it.
package struct RegionDescriptor: Sendable, Equatable, Hashable {
    package var guestPhysAddr: UInt64
    package var size: UInt64
    /// The source's dirty granularity for the region (0 or a power of two
    /// >= 4096). Informational for the destination.
    package var granularity: UInt64

    package init(guestPhysAddr: UInt64, size: UInt64, granularity: UInt64) {
        self.guestPhysAddr = guestPhysAddr
        self.size = size
        self.granularity = granularity
    }
}

/// The stream header: magic, version, page size, the region table, CRC-32C.
package struct StreamHeader: Sendable, Equatable {
    /// magic(8) version(4) page size(4) region count(4) flags(4).
    package static let fixedSize = 24
    /// gpa(8) size(8) granularity(8).
    static let regionEntrySize = 24
    /// The trailing CRC-32C.
    static let crcSize = 4

    /// Flag bit 0: the stream is authenticated (StreamAuth). The header then
    /// carries the source's 16-byte nonce between the region table and the
    /// CRC, and everything after the header travels in sealed frames.
    package static let authFlag: UInt32 = 1 << 0

    /// Encoded size of a header describing `regionCount` regions.
    package static func size(regionCount: Int, authenticated: Bool = false) -> Int {
        fixedSize + regionCount * regionEntrySize + (authenticated ? StreamAuth.nonceSize : 0) + crcSize
    }

    package var version: UInt32
    package var pageSize: UInt32
    package var flags: UInt32
    package var regions: [RegionDescriptor]
    /// With `authFlag`: the source's nonce (StreamAuth.nonceSize bytes).
    package var nonce: [UInt8]

    /// Any field values, valid or not (tests build bad headers this way).
    package init(version: UInt32 = StreamFormat.version, pageSize: UInt32 = StreamFormat.pageSize,
                flags: UInt32 = 0, regions: [RegionDescriptor], nonce: [UInt8] = []) {
        self.version = version
        self.pageSize = pageSize
        self.flags = flags
        self.regions = regions
        self.nonce = nonce
    }

    package var authenticated: Bool { flags & Self.authFlag != 0 }

    /// The header the source sends: the current version, flags 0, these regions.
    package static func encode(pageSize: UInt32 = StreamFormat.pageSize, regions: [RegionDescriptor]) -> [UInt8] {
        StreamHeader(pageSize: pageSize, regions: regions).encoded()
    }

    /// Same, with regions as tuples. (Disfavored so that `regions: []` picks
    /// the struct form instead of being ambiguous.)
    @_disfavoredOverload
    package static func encode(pageSize: UInt32 = StreamFormat.pageSize,
                              regions: [(gpa: UInt64, size: UInt64, granularity: UInt64)]) -> [UInt8] {
        encode(pageSize: pageSize, regions: regions.map {
            RegionDescriptor(guestPhysAddr: $0.gpa, size: $0.size, granularity: $0.granularity)
        })
    }

    /// This header's bytes, exactly as its fields say, with the CRC computed.
    package func encoded() -> [UInt8] {
        precondition(!authenticated || nonce.count == StreamAuth.nonceSize, "an authenticated header needs its nonce")
        let total = Self.size(regionCount: regions.count, authenticated: authenticated)
        return [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
            let base = UnsafeMutableRawPointer(buffer.baseAddress!)
            for (i, byte) in StreamFormat.magic.enumerated() { base.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
            StreamBytes.store(version, base, 8)
            StreamBytes.store(pageSize, base, 12)
            StreamBytes.store(UInt32(truncatingIfNeeded: regions.count), base, 16)
            StreamBytes.store(flags, base, 20)
            for (i, region) in regions.enumerated() {
                let at = Self.fixedSize + i * Self.regionEntrySize
                StreamBytes.store(region.guestPhysAddr, base, at)
                StreamBytes.store(region.size, base, at + 8)
                StreamBytes.store(region.granularity, base, at + 16)
            }
            if authenticated {
                let at = Self.fixedSize + regions.count * Self.regionEntrySize
                for (i, byte) in nonce.enumerated() { base.storeBytes(of: byte, toByteOffset: at + i, as: UInt8.self) }
            }
            let crc = StreamFormat.crc32c(base, total - Self.crcSize)
            StreamBytes.store(crc, base, total - Self.crcSize)
            initialized = total
        }
    }

    /// Checks the first `fixedSize` bytes (magic, version, region count) and
    /// returns the size of the whole header. A receiver calls this as soon as
    /// the fixed part arrives, so a bad stream fails before the region table
    /// is waited for, and a hostile count cannot make it wait for more than
    /// 4096 entries. Version is checked before anything else after the magic:
    /// another version may lay out the rest differently.
    package static func totalSize(fixedPart bytes: UnsafeRawBufferPointer) throws(MKError) -> Int {
        guard bytes.count >= fixedSize, let base = bytes.baseAddress else {
            throw MKError(.truncated, "stream header: \(bytes.count) of its first \(fixedSize) bytes")
        }
        let magic = Array(bytes[0..<8])
        guard magic == StreamFormat.magic else {
            let shown = magic.map { $0 >= 0x20 && $0 < 0x7f ? String(UnicodeScalar($0)) : "." }.joined()
            throw MKError(.proto, "stream header: magic is \"\(shown)\" (\(magic.map { String($0, radix: 16) }.joined(separator: " "))), expected \"MKSTREAM\"")
        }
        let version = StreamBytes.load(base, 8, as: UInt32.self)
        guard version == StreamFormat.version else {
            throw MKError(.version, "stream header: version \(version) is not supported (this build reads version \(StreamFormat.version))")
        }
        let count = StreamBytes.load(base, 16, as: UInt32.self)
        guard count >= 1 && count <= StreamFormat.maxRegions else {
            throw MKError(.range, "stream header: region count \(count) is outside 1..\(StreamFormat.maxRegions)")
        }
        // Only the one known flag changes the layout; unknown flags fail in
        // decode once the CRC has vouched for them.
        let flags = StreamBytes.load(base, 20, as: UInt32.self)
        return size(regionCount: Int(count), authenticated: flags & authFlag != 0)
    }

    /// Decodes and validates a whole header (on its own; matching it against
    /// the registered regions is the loader's job). Checks, in order: magic,
    /// version, region count range, CRC, page size, flags, granularities.
    package static func decode(_ bytes: UnsafeRawBufferPointer) throws(MKError) -> StreamHeader {
        let total = try totalSize(fixedPart: bytes)
        guard bytes.count >= total, let base = bytes.baseAddress else {
            throw MKError(.truncated, "stream header: \(bytes.count) of its \(total) bytes")
        }
        let stored = StreamBytes.load(base, total - crcSize, as: UInt32.self)
        let computed = StreamFormat.crc32c(base, total - crcSize)
        guard stored == computed else {
            throw MKError(.checksum, "stream header: CRC-32C \(StreamBytes.hex(stored)) does not match the computed \(StreamBytes.hex(computed))")
        }
        let pageSize = StreamBytes.load(base, 12, as: UInt32.self)
        guard pageSize == StreamFormat.pageSize else {
            throw MKError(.proto, "stream header: page size \(pageSize), expected \(StreamFormat.pageSize)")
        }
        let flags = StreamBytes.load(base, 20, as: UInt32.self)
        guard flags & ~authFlag == 0 else {
            throw MKError(.proto, "stream header: flags \(StreamBytes.hex(flags)), expected 0 or 0x1 (AUTH; no other flag is defined)")
        }
        let nonceBytes = flags & authFlag != 0 ? StreamAuth.nonceSize : 0
        let count = (total - fixedSize - nonceBytes - crcSize) / regionEntrySize
        var regions: [RegionDescriptor] = []
        regions.reserveCapacity(count)
        for i in 0..<count {
            let at = fixedSize + i * regionEntrySize
            let region = RegionDescriptor(guestPhysAddr: StreamBytes.load(base, at, as: UInt64.self),
                                          size: StreamBytes.load(base, at + 8, as: UInt64.self),
                                          granularity: StreamBytes.load(base, at + 16, as: UInt64.self))
            let g = region.granularity
            guard g == 0 || (g >= UInt64(StreamFormat.pageSize) && g.nonzeroBitCount == 1) else {
                throw MKError(.proto, "stream header: region \(i) dirty_granularity \(StreamBytes.hex(g)) is neither 0 nor a power of two >= 4096")
            }
            regions.append(region)
        }
        let nonceAt = fixedSize + count * regionEntrySize
        let nonce = Array(UnsafeRawBufferPointer(rebasing: bytes[nonceAt..<(nonceAt + nonceBytes)]))
        return StreamHeader(version: StreamFormat.version, pageSize: pageSize, flags: flags, regions: regions, nonce: nonce)
    }
}

// MARK: - Records

/// What a record carries.
package enum RecordType: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    /// `length` bytes of page contents for [offset, offset+length) of a
    /// region, then (with PAYLOAD_CRC) `length / 4096` u32 page CRCs.
    case pages = 1
    /// No payload: [offset, offset+length) of a region is zero pages.
    case zero = 2
    /// `length` bytes of device state, handed to the VMM unchanged.
    case device = 3
    /// The last record: all fields 0, nothing may follow.
    case end = 4

    package var description: String {
        switch self {
        case .pages: "PAGES"
        case .zero: "ZERO"
        case .device: "DEVICE"
        case .end: "END"
        }
    }
}

/// Record flag bits. Any other bit is an error: a reader that ignored a flag
/// it does not know could misread the record.
package struct RecordFlags: OptionSet, Sendable, Hashable {
    package let rawValue: UInt16
    package init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The payload is checked: DEVICE's payload_crc is the CRC-32C of its
    /// payload; PAGES carries a page CRC array after its page data and
    /// payload_crc is the CRC-32C of that array.
    package static let payloadCRC = RecordFlags(rawValue: 1 << 0)
    /// Sent while the guest was paused (informational).
    package static let stopped = RecordFlags(rawValue: 1 << 1)

    static let known: RecordFlags = [.payloadCRC, .stopped]
}

/// The 32-byte header in front of every record.
package struct RecordHeader: Sendable, Equatable {
    package static let size = 32

    package var type: RecordType
    package var flags: RecordFlags
    /// Region index (order of registration).
    package var region: UInt32
    /// Byte offset inside the region.
    package var offset: UInt64
    /// Page data bytes for PAGES (the page CRC array is not counted),
    /// payload bytes for DEVICE, bytes covered for ZERO.
    package var length: UInt64
    /// With .payloadCRC: for DEVICE the CRC-32C of the payload, for PAGES
    /// the CRC-32C of the page CRC array (see `StreamFormat.pageCRCs`).
    /// Otherwise 0.
    package var payloadCRC: UInt32

    package init(type: RecordType, flags: RecordFlags = [], region: UInt32 = 0, offset: UInt64 = 0,
                length: UInt64 = 0, payloadCRC: UInt32 = 0) {
        self.type = type
        self.flags = flags
        self.region = region
        self.offset = offset
        self.length = length
        self.payloadCRC = payloadCRC
    }

    /// Writes the 32 bytes at `into` (any alignment), computing header_crc.
    package func encode(into base: UnsafeMutableRawPointer) {
        StreamBytes.store(type.rawValue, base, 0)
        StreamBytes.store(flags.rawValue, base, 2)
        StreamBytes.store(region, base, 4)
        StreamBytes.store(offset, base, 8)
        StreamBytes.store(length, base, 16)
        StreamBytes.store(payloadCRC, base, 24)
        StreamBytes.store(StreamFormat.crc32c(UnsafeRawPointer(base), 28), base, 28)
    }

    /// The 32 bytes as an array (convenient for small records and tests).
    package func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { encode(into: $0.baseAddress!) }
        return bytes
    }

    /// Reads 32 bytes at `base`, checking the header CRC first (if it fails
    /// no other field can be trusted, so the error is MK_ECHECKSUM rather
    /// than whatever the damaged fields would suggest), then type and flags.
    /// Field rules that do not depend on the regions: `validateFields()`.
    package static func decode(_ base: UnsafeRawPointer) throws(MKError) -> RecordHeader {
        let stored = StreamBytes.load(base, 28, as: UInt32.self)
        let computed = StreamFormat.crc32c(base, 28)
        guard stored == computed else {
            throw MKError(.checksum, "record header: header_crc \(StreamBytes.hex(stored)) does not match the computed \(StreamBytes.hex(computed))")
        }
        let rawType = StreamBytes.load(base, 0, as: UInt16.self)
        guard let type = RecordType(rawValue: rawType) else {
            throw MKError(.proto, "record header: unknown type \(rawType)")
        }
        let flags = RecordFlags(rawValue: StreamBytes.load(base, 2, as: UInt16.self))
        guard RecordFlags.known.isSuperset(of: flags) else {
            throw MKError(.proto, "record header: \(type) flags \(StreamBytes.hex(flags.rawValue)) has unknown bits \(StreamBytes.hex(flags.subtracting(.known).rawValue))")
        }
        return RecordHeader(type: type, flags: flags,
                            region: StreamBytes.load(base, 4, as: UInt32.self),
                            offset: StreamBytes.load(base, 8, as: UInt64.self),
                            length: StreamBytes.load(base, 16, as: UInt64.self),
                            payloadCRC: StreamBytes.load(base, 24, as: UInt32.self))
    }

    /// The rules a record must follow whatever the regions are: page
    /// alignment, length limits, fields that must be zero. Region index and
    /// bounds are checked by the loader, which knows the regions.
    package func validateFields() throws(MKError) {
        let page = UInt64(StreamFormat.pageSize)
        // payload_crc means something only for a payload that is checked.
        if payloadCRC != 0 && !(flags.contains(.payloadCRC) && (type == .pages || type == .device)) {
            throw MKError(.proto, "\(type) record: payload_crc \(StreamBytes.hex(payloadCRC)) must be 0 "
                + (type == .pages || type == .device ? "without the PAYLOAD_CRC flag" : "(no payload)"))
        }
        switch type {
        case .pages, .zero:
            guard offset % page == 0 else {
                throw MKError(.proto, "\(type) record: offset \(StreamBytes.hex(offset)) is not a multiple of the page size \(page)")
            }
            guard length != 0 else {
                throw MKError(.proto, "\(type) record: length is 0")
            }
            guard length % page == 0 else {
                throw MKError(.proto, "\(type) record: length \(StreamBytes.hex(length)) is not a multiple of the page size \(page)")
            }
            if type == .pages && length > StreamFormat.maxPagesLength {
                throw MKError(.proto, "PAGES record: length \(StreamBytes.hex(length)) exceeds the 64 MiB limit")
            }
        case .device:
            guard region == 0 && offset == 0 else {
                throw MKError(.proto, "DEVICE record: region \(region) and offset \(StreamBytes.hex(offset)) must both be 0")
            }
            guard length <= StreamFormat.maxDeviceLength else {
                throw MKError(.proto, "DEVICE record: length \(StreamBytes.hex(length)) exceeds the 1 GiB limit")
            }
        case .end:
            guard region == 0 && offset == 0 && length == 0 else {
                throw MKError(.proto, "END record: region \(region), offset \(StreamBytes.hex(offset)), length \(StreamBytes.hex(length)) must all be 0")
            }
        }
    }
}

// MARK: - Acknowledgement

/// The destination's verdict, as the source reads it.
package struct AckReply: Equatable, Sendable {
    /// 0 when the guest resumed on the destination, else a negative MK_E*.
    package var status: Int32
    /// The destination's CLOCK_MONOTONIC when it answered (its own clock).
    package var timestampNs: UInt64
    /// The destination's time from the END record to this answer, us
    /// (saturated at 2^32 - 1; 0 when it failed before END).
    package var resumeUs: UInt32

    package init(status: Int32, timestampNs: UInt64, resumeUs: UInt32 = 0) {
        self.status = status
        self.timestampNs = timestampNs
        self.resumeUs = resumeUs
    }

    /// The destination's code when it did not resume the guest, kept as
    /// sent even when this build does not know it.
    package var failure: MKErrorCode? { MKErrorCode(rawValue: status) }
}

/// The destination's answer on the return channel, MK_ACK_SIZE bytes:
/// "MKAK", i32 status, u64 CLOCK_MONOTONIC ns, u32 END-to-ack us, u32 CRC-32C.
package enum Ack {
    package static let size = ReturnMessage.size
    package static let magic: [UInt8] = Array("MKAK".utf8)

    package static func encode(_ a: AckReply) -> [UInt8] {
        ReturnMessage.frame(magic, UInt32(bitPattern: a.status), a.timestampNs, a.resumeUs)
    }

    /// Checks size, magic, CRC and that status is 0 or negative.
    package static func decode(_ bytes: UnsafeRawBufferPointer) throws(MKError) -> AckReply {
        guard bytes.count == size, let base = bytes.baseAddress else {
            throw MKError(.proto, "ack: \(bytes.count) bytes, expected \(size)")
        }
        guard Array(bytes[0..<4]) == magic else {
            throw MKError(.proto, "ack: magic \(bytes[0..<4].map { String($0, radix: 16) }.joined(separator: " ")), expected \"MKAK\"")
        }
        let stored = StreamBytes.load(base, 20, as: UInt32.self)
        let computed = StreamFormat.crc32c(base, 20)
        guard stored == computed else {
            throw MKError(.checksum, "ack: CRC-32C \(StreamBytes.hex(stored)) does not match the computed \(StreamBytes.hex(computed))")
        }
        let status = StreamBytes.load(base, 4, as: Int32.self)
        guard status <= 0 else {
            throw MKError(.proto, "ack: status \(status) is positive (0 or a negative MK_E* code expected)")
        }
        return AckReply(status: status, timestampNs: StreamBytes.load(base, 8, as: UInt64.self),
                        resumeUs: StreamBytes.load(base, 16, as: UInt32.self))
    }
}
