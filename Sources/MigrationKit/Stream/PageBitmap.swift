/// One bit per 4 KiB page of each region, allocated for a region the first
/// time one of its bits is set, so large untouched memory costs nothing.
/// Shared by the loader's suspect-page and written-page bookkeeping.
struct PageBitmap {
    private var words: [[UInt64]?]
    private let pageCounts: [Int]
    /// Bits set right now, over all regions.
    private(set) var count: UInt64 = 0

    init(regionSizes: [UInt64]) {
        pageCounts = regionSizes.map { Int(($0 + UInt64(StreamFormat.pageSize) - 1) / UInt64(StreamFormat.pageSize)) }
        words = Array(repeating: nil, count: regionSizes.count)
    }

    mutating func set(region: Int, firstPage first: Int, pages: Int) {
        if words[region] == nil {
            words[region] = Array(repeating: 0, count: (pageCounts[region] + 63) / 64)
        }
        count += UInt64(Self.update(&words[region]!, first, pages, set: true))
    }

    mutating func clear(region: Int, firstPage first: Int, pages: Int) {
        guard words[region] != nil else { return }
        count -= UInt64(Self.update(&words[region]!, first, pages, set: false))
    }

    /// The lowest set bit, as (region, page index).
    func first() -> (region: Int, page: Int)? {
        for (region, bitmap) in words.enumerated() {
            guard let bitmap else { continue }
            for (w, word) in bitmap.enumerated() where word != 0 {
                return (region, w * 64 + word.trailingZeroBitCount)
            }
        }
        return nil
    }

    /// Calls `body(first, count)` for each run of set bits inside
    /// [first, first+pages) of `region`, lowest first. A word of zeros is
    /// skipped in one step, so an untouched range costs pages/64 loads.
    func forEachRun(region: Int, firstPage first: Int, pages: Int, _ body: (Int, Int) -> Void) {
        guard let bitmap = words[region] else { return }
        let end = first + pages
        var bit = first
        var runStart = -1
        while bit < end {
            let word = bitmap[bit >> 6] >> UInt64(bit & 63)
            if word == 0 && runStart < 0 {
                bit = min((bit | 63) + 1, end)
                continue
            }
            let isSet = word & 1 != 0
            if isSet && runStart < 0 { runStart = bit }
            if !isSet && runStart >= 0 {
                body(runStart, bit - runStart)
                runStart = -1
            }
            bit += 1
        }
        if runStart >= 0 { body(runStart, end - runStart) }
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
