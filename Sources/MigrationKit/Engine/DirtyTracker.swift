import CShim

/// Dirty pages still to send, per region, one bit per 4 KiB page.
///
/// Bits come from two sources that are OR-ed at every sync: the VMM's
/// dirty-log callback (e.g. KVM) and marks set at any time from any thread
/// through `ExternalMarks` (device models, DMA). A dirty bit in a
/// huge-page-backed region dirties the whole huge page (its granule), so
/// the pending count is right at that granularity.
final class DirtyTracker {
    struct Region {
        let pages: Int
        let words: Int
        let granulePages: Int
        let bits: UnsafeMutablePointer<UInt64>
        let scratch: UnsafeMutablePointer<UInt64>
    }

    private(set) var regions: [Region]
    let marks: ExternalMarks
    /// Pages set in `bits`.
    private(set) var dirtyPages = 0
    /// Completed sweeps of the cursor over all of guest memory (passes).
    private(set) var sweeps = 0
    private var cursorRegion = 0
    private var cursorPage = 0

    init(_ guest: [GuestRegion], marks: ExternalMarks) {
        self.marks = marks
        regions = guest.map { r in
            let pages = r.pages
            let words = (pages + 63) / 64
            let bits = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
            bits.initialize(repeating: 0, count: words)
            let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
            scratch.initialize(repeating: 0, count: words)
            return Region(pages: pages, words: words,
                          granulePages: Int(r.granularity / MigrationParameters.pageSize),
                          bits: bits, scratch: scratch)
        }
    }

    deinit {
        for r in regions {
            r.bits.deallocate()
            r.scratch.deallocate()
        }
    }

    var remainingBytes: UInt64 { UInt64(dirtyPages) * MigrationParameters.pageSize }

    /// Everything is dirty at the start of a migration.
    func markAll() {
        dirtyPages = 0
        for r in regions {
            for w in 0..<r.words { r.bits[w] = ~0 }
            trimTail(r)
            dirtyPages += r.pages
        }
    }

    /// Pull the dirty log of every region and merge it. Returns the number of
    /// pages the sources reported (re-dirtied pages included: that is the
    /// guest's real dirtying rate) .
    func sync(_ fetch: (Int, UnsafeMutablePointer<UInt64>, Int) throws(MKError) -> Void) throws(MKError) -> Int {
        var reported = 0
        for (i, r) in regions.enumerated() {
            r.scratch.update(repeating: 0, count: r.words)
            try fetch(i, r.scratch, r.pages)
            marks.drain(region: i, into: r.scratch, words: r.words)
            trim(r.scratch, r)
            for w in 0..<r.words { reported += r.scratch[w].nonzeroBitCount }
            if r.granulePages > 1 { expandToGranules(r) }
            for w in 0..<r.words {
                let fresh = r.scratch[w] & ~r.bits[w]
                if fresh != 0 {
                    r.bits[w] |= fresh
                    dirtyPages += fresh.nonzeroBitCount
                }
            }
        }
        return reported
    }

    /// Take the next run of up to `maxPages` contiguous dirty pages at or
    /// after the cursor (wrapping around), clearing them. nil when clean.
    func nextRun(maxPages: Int) -> (region: Int, page: Int, count: Int)? {
        guard dirtyPages > 0 else { return nil }
        for _ in 0...regions.count {
            let r = regions[cursorRegion]
            if let first = findSet(r, from: cursorPage) {
                var n = 0
                while n < maxPages, first + n < r.pages, testAndClear(r, first + n) { n += 1 }
                dirtyPages -= n
                cursorPage = first + n
                return (cursorRegion, first, n)
            }
            cursorRegion = (cursorRegion + 1) % regions.count
            cursorPage = 0
            if cursorRegion == 0 { sweeps += 1 }
        }
        return nil
    }

    /// Back to the start, ending the current sweep if it had begun.
    func rewind() {
        if cursorRegion != 0 || cursorPage != 0 { sweeps += 1 }
        cursorRegion = 0
        cursorPage = 0
    }

    // MARK: - bit helpers

    private func findSet(_ r: Region, from page: Int) -> Int? {
        guard page < r.pages else { return nil }
        var w = page / 64
        var word = r.bits[w] & (~0 << UInt64(page % 64))
        while true {
            if word != 0 { return w * 64 + word.trailingZeroBitCount }
            w += 1
            if w >= r.words { return nil }
            word = r.bits[w]
        }
    }

    private func testAndClear(_ r: Region, _ page: Int) -> Bool {
        let mask: UInt64 = 1 << UInt64(page % 64)
        guard r.bits[page / 64] & mask != 0 else { return false }
        r.bits[page / 64] &= ~mask
        return true
    }

    private func trimTail(_ r: Region) { trim(r.bits, r) }

    /// Clear bits past the last page so callbacks cannot invent pages.
    private func trim(_ words: UnsafeMutablePointer<UInt64>, _ r: Region) {
        let tail = r.pages % 64
        if tail != 0 { words[r.words - 1] &= (1 << UInt64(tail)) - 1 }
    }

    private func expandToGranules(_ r: Region) {
        let g = r.granulePages
        if g >= 64 {
            let wordsPerGranule = g / 64
            var w = 0
            while w < r.words {
                let end = min(w + wordsPerGranule, r.words)
                var any: UInt64 = 0
                for k in w..<end { any |= r.scratch[k] }
                if any != 0 { for k in w..<end { r.scratch[k] = ~0 } }
                w = end
            }
            trim(r.scratch, r)
        } else {
            let mask: UInt64 = (1 << UInt64(g)) - 1
            for w in 0..<r.words where r.scratch[w] != 0 {
                var out: UInt64 = 0
                var shift = 0
                while shift < 64 {
                    if (r.scratch[w] >> UInt64(shift)) & mask != 0 { out |= mask << UInt64(shift) }
                    shift += g
                }
                r.scratch[w] = out
            }
        }
    }
}

/// Dirty marks other threads may set at any time (mk_source_mark_dirty).
/// Word-wide atomics keep it lock-free; the tracker drains it at each sync.
/// Unchecked Sendable: the bitmaps are raw memory written and drained only
/// through CShim atomics (or, load, exchange), and the arrays are set once in init.
package final class ExternalMarks: @unchecked Sendable {
    private let bitmaps: [UnsafeMutablePointer<UInt64>]
    private let words: [Int]
    private let regions: [GuestRegion]

    package init(_ regions: [GuestRegion]) {
        self.regions = regions
        words = regions.map { ($0.pages + 63) / 64 }
        bitmaps = words.map { n in
            let p = UnsafeMutablePointer<UInt64>.allocate(capacity: n)
            p.initialize(repeating: 0, count: n)
            return p
        }
    }

    deinit { bitmaps.forEach { $0.deallocate() } }

    /// Mark [gpa, gpa+len) dirty; false if no part of it is registered memory.
    package func mark(guestPhysAddr gpa: UInt64, length: UInt64) -> Bool {
        let page = MigrationParameters.pageSize
        let (end, overflow) = gpa.addingReportingOverflow(max(length, 1))
        guard !overflow else { return false }
        var hit = false
        for (i, r) in regions.enumerated() {
            let lo = max(gpa, r.guestPhysAddr), hi = min(end, r.guestPhysAddr + r.size)
            guard lo < hi else { continue }
            hit = true
            let first = Int((lo - r.guestPhysAddr) / page)
            let last = Int((hi - 1 - r.guestPhysAddr) / page)
            for p in first...last {
                cshim_atomic_or_u64(bitmaps[i] + p / 64, 1 << UInt64(p % 64))
            }
        }
        return hit
    }

    func drain(region: Int, into dst: UnsafeMutablePointer<UInt64>, words n: Int) {
        let src = bitmaps[region]
        for w in 0..<n where cshim_atomic_load_u64(src + w) != 0 {
            dst[w] |= cshim_atomic_xchg_u64(src + w, 0)
        }
    }
}
