/// Pages whose latest copy failed its page CRC ("torn": the guest wrote the
/// page while the source was sending it; each page of a PAGES record has its
/// own CRC, so only the pages actually written are suspect). The source re-sends every such
/// page, so suspicion is normal during a live migration; only a page still
/// suspect at END is an error.
///
/// One bit per 4 KiB page per region. A region's bitmap is allocated the
/// first time one of its pages becomes suspect, so a clean migration of a
/// large guest costs nothing here.
struct SuspectPages {
    private var bitmaps: [[UInt64]?]
    private let pageCounts: [Int]
    /// Pages suspect right now, over all regions.
    private(set) var count: UInt64 = 0

    init(regionSizes: [UInt64]) {
        pageCounts = regionSizes.map { Int(($0 + UInt64(StreamFormat.pageSize) - 1) / UInt64(StreamFormat.pageSize)) }
        bitmaps = Array(repeating: nil, count: regionSizes.count)
    }

    /// Marks pages [first, first+pages) of `region` suspect.
    mutating func mark(region: Int, firstPage first: Int, pages: Int) {
        if bitmaps[region] == nil {
            bitmaps[region] = Array(repeating: 0, count: (pageCounts[region] + 63) / 64)
        }
        count += UInt64(Self.update(&bitmaps[region]!, first, pages, set: true))
    }

    /// Clears suspicion of pages [first, first+pages) of `region`.
    mutating func clear(region: Int, firstPage first: Int, pages: Int) {
        guard bitmaps[region] != nil else { return }
        count -= UInt64(Self.update(&bitmaps[region]!, first, pages, set: false))
    }

    /// The lowest suspect page, as (region, page index), for error messages.
    func first() -> (region: Int, page: Int)? {
        for (region, bitmap) in bitmaps.enumerated() {
            guard let bitmap else { continue }
            for (w, word) in bitmap.enumerated() where word != 0 {
                return (region, w * 64 + word.trailingZeroBitCount)
            }
        }
        return nil
    }

    /// Sets or clears a bit range a word at a time; returns how many bits
    /// actually changed, which keeps `count` exact when ranges overlap.
    private static func update(_ words: inout [UInt64], _ first: Int, _ pages: Int, set: Bool) -> Int {
        var changed = 0
        var bit = first
        let end = first + pages
        while bit < end {
            let shift = bit & 63
            let n = min(64 - shift, end - bit)
            let mask: UInt64 = (n == 64 ? ~0 : (UInt64(1) << UInt64(n)) - 1) << UInt64(shift)
            let old = words[bit >> 6]
            let new = set ? old | mask : old & ~mask
            changed += (old ^ new).nonzeroBitCount
            words[bit >> 6] = new
            bit += n
        }
        return changed
    }
}
