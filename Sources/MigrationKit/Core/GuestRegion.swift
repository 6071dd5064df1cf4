/// Guest memory as the VMM mapped it, on either side: the source reads it,
/// the destination's loader writes it and nothing else.
/// Unchecked Sendable: `host` is the VMM's mapping, which the header makes
/// the VMM keep mapped for the handle's life; the value itself is a copy of
/// four numbers and that address, never mutated once a session holds it.
package struct GuestRegion: @unchecked Sendable, Equatable {
    package var host: UnsafeMutableRawPointer
    package var guestPhysAddr: UInt64
    package var size: UInt64
    package var granularity: UInt64
    /// Destination only (MK_REGION_FRESH): reads as zero and only the
    /// loader writes it, so a ZERO record needs to clear only the pages the
    /// loader wrote itself.
    package var fresh: Bool

    package init(host: UnsafeMutableRawPointer, guestPhysAddr: UInt64, size: UInt64, granularity: UInt64,
                fresh: Bool = false) {
        self.host = host
        self.guestPhysAddr = guestPhysAddr
        self.size = size
        self.granularity = granularity
        self.fresh = fresh
    }

    package var pages: Int { Int(size / MigrationParameters.pageSize) }

    /// Check one region against the rules in migrationkit.h and against
    /// those already registered.
    package static func validate(_ r: GuestRegion, against existing: [GuestRegion]) throws(MKError) {
        let page = MigrationParameters.pageSize
        let g = r.granularity
        if g < page || g & (g - 1) != 0 {
            throw MKError(.invalid, "dirty_granularity must be a power of two >= \(page), got \(g)")
        }
        if r.size == 0 || r.size % g != 0 {
            throw MKError(.invalid, "region size \(r.size) must be > 0 and a multiple of dirty_granularity \(g)")
        }
        if r.guestPhysAddr % g != 0 {
            throw MKError(.invalid, "guest_phys_addr 0x\(String(r.guestPhysAddr, radix: 16)) must be a multiple of dirty_granularity \(g)")
        }
        if UInt(bitPattern: r.host) % UInt(page) != 0 {
            throw MKError(.invalid, "host_addr must be \(page)-byte aligned")
        }
        let (gEnd, o1) = r.guestPhysAddr.addingReportingOverflow(r.size)
        let hStart = UInt64(UInt(bitPattern: r.host))
        let (hEnd, o2) = hStart.addingReportingOverflow(r.size)
        if o1 || o2 { throw MKError(.invalid, "region wraps around the address space") }
        for (i, e) in existing.enumerated() {
            let eh = UInt64(UInt(bitPattern: e.host))
            if r.guestPhysAddr < e.guestPhysAddr + e.size && e.guestPhysAddr < gEnd {
                throw MKError(.invalid, "region overlaps region \(i) in guest-physical addresses")
            }
            if hStart < eh + e.size && eh < hEnd {
                throw MKError(.invalid, "region overlaps region \(i) in host addresses")
            }
        }
        if existing.count >= 4096 { throw MKError(.invalid, "at most 4096 regions") }
    }
}
