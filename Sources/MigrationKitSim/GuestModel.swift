import Glibc
import MigrationKit

/// How the guest chooses the pages it writes.
package enum WritePattern: Sendable, Equatable {
    /// Walk the working set in order, `stridePages` apart, wrapping (then the
    /// next lane). A stride of 512 touches a new 2 MiB huge page on every
    /// write until each huge page of the working set was touched once.
    case sweep(stridePages: Int)
    /// Uniformly random pages of the working set (deterministic PRNG).
    case random
}

/// One step of the dirty-rate schedule: from `atSeconds` after the start,
/// the guest writes `bytesPerSecond / 4096` pages per second (before the
/// throttle takes its share).
package struct RateStep: Sendable, Equatable {
    package var atSeconds: Double
    package var bytesPerSecond: Double

    package init(atSeconds: Double, bytesPerSecond: Double) {
        self.atSeconds = atSeconds
        self.bytesPerSecond = bytesPerSecond
    }
}

package struct GuestConfig: Sendable {
    package struct Region: Sendable, Equatable {
        package var size: UInt64
        /// Dirty granularity the VMM registers (4 KiB, or 2 MiB for huge pages).
        package var granularity: UInt64
        /// nil: right after the previous region, aligned to its granularity.
        package var guestPhysAddr: UInt64?

        package init(size: UInt64, granularity: UInt64 = 4096, guestPhysAddr: UInt64? = nil) {
            self.size = size
            self.granularity = granularity
            self.guestPhysAddr = guestPhysAddr
        }
    }

    package var regions: [Region] = [Region(size: 16 << 20)]
    /// Share of pages that start out all zero.
    package var zeroFraction: Double = 0.5
    /// Pages the guest writes: `workingSetBytes` from `workingSetOffset`,
    /// counted over the regions laid end to end. nil = all of memory.
    package var workingSetBytes: UInt64?
    var workingSetOffset: UInt64 = 0
    /// Piecewise constant; before the first step the guest is idle.
    package var dirtyRate: [RateStep] = []
    package var pattern: WritePattern = .sweep(stridePages: 1)
    /// Share of writes that clear the whole page instead (a guest freeing
    /// or zeroing memory): dirty pages the engine finds to be zero.
    package var zeroingWriteFraction: Double = 0
    package var seed: UInt64 = 0x5EED
    /// The vCPUs: each one's share of the dirty rate (one entry per vCPU;
    /// a 0 entry is a vCPU that only computes). Each is throttled on its own.
    package var vcpuDirtyShares: [Double] = [1]
    /// The VMM reports which vCPU dirtied what (a dirty ring): the engine
    /// gets per-vCPU counts. false: a plain bitmap.
    package var attributesDirtying = true
    /// Device state: size of the blob and how long saving it takes.
    package var deviceStateBytes: Int = 16 << 10
    package var deviceSaveNs: UInt64 = 500_000
    /// Whether the VMM can tell the device-state size in advance.
    package var reportsDeviceStateSize = true

    package init() {}

    /// A constant dirty rate from the start.
    package mutating func dirty(bytesPerSecond: Double) {
        dirtyRate = [RateStep(atSeconds: 0, bytesPerSecond: bytesPerSecond)]
    }

    var totalBytes: UInt64 { regions.reduce(0) { $0 + $1.size } }
}

/// A guest with real memory. The vCPUs are lazy: whenever anyone looks
/// (dirty-log fetch, pause, throttle change, a write to the link), the model
/// works out how many page writes happened since it last looked, given the
/// elapsed virtual time, the dirty-rate schedule and the throttle (p % of
/// throttle leaves the guest (100 - p) % of its CPU, and so of its dirty
/// rate), performs them in memory and sets their dirty bits. Paused: no
/// writes. Every write is mirrored in a shadow copy, so the model knows
/// what its memory must hold and can tell if anyone else wrote to it.
package final class GuestModel {
    package struct Region {
        package let host: UnsafeMutableRawPointer
        package let guestPhysAddr: UInt64
        package let size: UInt64
        package let granularity: UInt64
        /// What the guest itself wrote: memory must always equal this.
        let shadow: UnsafeMutableRawPointer
        let firstGlobalPage: Int
        package var pages: Int { Int(size / 4096) }
        let words: Int
        /// The "KVM dirty log": pages written since the last fetch.
        let dirty: UnsafeMutablePointer<UInt64>
    }

    /// What one dirty-log fetch reported.
    package struct Fetch: Sendable, Equatable {
        package var atNs: UInt64
        package var region: Int
        /// 4 KiB pages reported dirty.
        package var pages: Int
        /// Distinct dirty-granularity units those pages fall in.
        package var granules: Int
    }

    package let config: GuestConfig
    package let clock: VirtualClock
    package private(set) var regions: [Region] = []

    package private(set) var paused = false
    /// Each vCPU's throttle.
    package private(set) var vcpuThrottle: [UInt32]
    /// The highest throttle of any vCPU.
    package var throttlePercent: UInt32 { vcpuThrottle.max() ?? 0 }
    var vcpuCount: Int { vcpuThrottle.count }
    /// Per vCPU: time it ran (not paused, not throttled), time it slept in
    /// the throttle, page writes it made.
    package private(set) var vcpuRunNs: [UInt64]
    private(set) var vcpuSleepNs: [UInt64]
    private(set) var vcpuWrites: [UInt64]
    /// When each vCPU's current throttle began: its kick cycle (sleep in
    /// the throttle point, then a 10 ms slice of running) counts from there.
    private var throttleSinceNs: [UInt64]
    /// Pages each vCPU newly dirtied since the last takeVCPUCounts (a page
    /// counts once per interval, as in KVM's dirty ring).
    private var vcpuPending: [UInt64]
    private var vcpuCarry: [Double]
    /// (elapsed ns, paused?) for every pause and resume.
    package private(set) var pauseHistory: [(ns: UInt64, paused: Bool)] = []
    /// Page writes performed so far (by the vCPUs, and by DMA).
    package private(set) var pageWrites: UInt64 = 0
    package private(set) var dmaWrites: UInt64 = 0
    package private(set) var fetches: [Fetch] = []
    /// Device-state blobs handed out, in order.
    package private(set) var savedDeviceStates: [[UInt8]] = []

    private var steps: [(atNs: UInt64, rate: Double)]
    private var lastNs: UInt64
    private var cursor = 0
    private var rng: SimRNG
    private var writeSeq: UInt64 = 0
    private let wsFirstPage: Int
    private let wsPages: Int
    private let stride: Int

    package init(_ config: GuestConfig, clock: VirtualClock) {
        self.config = config
        let n = max(config.vcpuDirtyShares.count, 1)
        vcpuThrottle = Array(repeating: 0, count: n)
        vcpuRunNs = Array(repeating: 0, count: n)
        vcpuSleepNs = Array(repeating: 0, count: n)
        vcpuWrites = Array(repeating: 0, count: n)
        throttleSinceNs = Array(repeating: 0, count: n)
        vcpuPending = Array(repeating: 0, count: n)
        vcpuCarry = Array(repeating: 0, count: n)
        self.clock = clock
        lastNs = clock.now
        rng = SimRNG(seed: config.seed)
        steps = config.dirtyRate.map { (clock.ns(atSeconds: $0.atSeconds), $0.bytesPerSecond) }
            .sorted { $0.0 < $1.0 }
        var gpa: UInt64 = 0
        var page = 0
        for spec in config.regions {
            precondition(spec.size > 0 && spec.size % 4096 == 0, "region size must be a multiple of 4 KiB")
            let g = max(spec.granularity, 4096)
            let base = spec.guestPhysAddr ?? ((gpa + g - 1) / g * g)
            let host = Self.allocate(Int(spec.size))
            let shadow = Self.allocate(Int(spec.size))
            let pages = Int(spec.size / 4096)
            let words = (pages + 63) / 64
            let dirty = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
            dirty.initialize(repeating: 0, count: words)
            regions.append(Region(host: host, guestPhysAddr: base, size: spec.size, granularity: spec.granularity,
                                  shadow: shadow, firstGlobalPage: page, words: words, dirty: dirty))
            gpa = base + spec.size
            page += pages
        }
        let totalPages = page
        let wsStart = min(Int(config.workingSetOffset / 4096), totalPages)
        wsFirstPage = wsStart
        wsPages = min(Int((config.workingSetBytes ?? config.totalBytes) / 4096), totalPages - wsStart)
        if case .sweep(let s) = config.pattern, s > 1, wsPages % s == 0 {
            stride = s
        } else {
            stride = 1
        }
        fillInitialMemory()
    }

    deinit {
        for r in regions {
            SimMemory.release(r.host, Int(r.size))
            SimMemory.release(r.shadow, Int(r.size))
            r.dirty.deallocate()
        }
    }

    private static func allocate(_ size: Int) -> UnsafeMutableRawPointer { SimMemory.zeroed(size) }

    /// Zero pages with probability `zeroFraction`, the rest random bytes
    /// (copied from a random pool, each page stamped with its index so no
    /// two pages are alike).
    private func fillInitialMemory() {
        var fill = SimRNG(seed: config.seed ^ 0xF111)
        let poolPages = 64
        let pool = UnsafeMutablePointer<UInt64>.allocate(capacity: (poolPages + 1) * 512)
        defer { pool.deallocate() }
        for k in 0..<((poolPages + 1) * 512) { pool[k] = fill.next() | 1 }
        for r in regions {
            for p in 0..<r.pages {
                // Fresh anonymous memory is zero: zero pages stay untouched.
                guard fill.unit() >= config.zeroFraction else { continue }
                let page = r.host + p * 4096
                let from = Int(fill.next() % UInt64(poolPages * 512))
                page.copyMemory(from: pool + from, byteCount: 4096)
                page.storeBytes(of: UInt64(r.firstGlobalPage + p) | 1 << 63, as: UInt64.self)
                (r.shadow + p * 4096).copyMemory(from: page, byteCount: 4096)
            }
        }
    }

    /// The regions as the engine registers them.
    var guestRegions: [GuestRegion] {
        regions.map { GuestRegion(host: $0.host, guestPhysAddr: $0.guestPhysAddr, size: $0.size, granularity: $0.granularity) }
    }

    /// Working set, bytes.
    package var workingSetBytes: UInt64 { UInt64(wsPages) * 4096 }

    // MARK: the lazy vCPUs

    /// Dirty rate (B/s, before the throttle) at absolute time `t`.
    package func dirtyRate(atNs t: UInt64) -> Double {
        var r = 0.0
        for s in steps where s.atNs <= t { r = s.rate }
        return r
    }

    /// Change the dirty rate from now on (later scheduled steps still apply).
    package func setDirtyRate(bytesPerSecond: Double) {
        catchUp()
        let now = clock.now
        let i = steps.firstIndex { $0.atNs > now } ?? steps.count
        steps.insert((now, bytesPerSecond), at: i)
    }

    /// Perform the page writes due by now.
    package func catchUp() {
        let t = clock.now
        guard t > lastNs else { return }
        defer { lastNs = t }
        guard !paused else { return }
        let dt = Double(t - lastNs)
        let shares = config.vcpuDirtyShares.isEmpty ? [1.0] : config.vcpuDirtyShares
        for v in 0..<vcpuCount {
            let cpu = Double(100 - min(vcpuThrottle[v], 100)) / 100
            vcpuRunNs[v] += UInt64(dt * cpu)
            vcpuSleepNs[v] += UInt64(dt * (1 - cpu))
        }
        guard wsPages > 0 else { return }
        for v in 0..<vcpuCount {
            let cpu = Double(100 - min(vcpuThrottle[v], 100)) / 100
            var due = vcpuCarry[v]
            var a = lastNs
            while a < t {
                let next = steps.first { $0.atNs > a }?.atNs ?? t
                let b = min(next, t)
                due += dirtyRate(atNs: a) * shares[v] * Double(b - a) / 1e9 / 4096 * cpu
                a = b
            }
            let n = due.rounded(.down)
            vcpuCarry[v] = due - n
            for _ in 0..<Int(n) { writeOnePage(vcpu: v) }
        }
    }

    /// Pages each vCPU dirtied since the last call (the dirty ring's counts).
    func takeVCPUCounts() -> [UInt64] {
        catchUp()
        let out = vcpuPending
        for i in vcpuPending.indices { vcpuPending[i] = 0 }
        return out
    }

    private func nextPage() -> Int {
        switch config.pattern {
        case .random:
            return wsFirstPage + Int(rng.next() % UInt64(wsPages))
        case .sweep:
            let k = cursor % wsPages
            cursor = (cursor + 1) % wsPages
            let lanes = wsPages / stride
            return wsFirstPage + (k % lanes) * stride + k / lanes
        }
    }

    /// One guest write: an 8-byte store somewhere in the page (the page
    /// becomes non-zero and its contents change), or with
    /// `zeroingWriteFraction` a clear of the whole page; mirrored in the shadow.
    private func writeOnePage(vcpu: Int) {
        let global = nextPage()
        var ri = regions.count - 1
        while regions[ri].firstGlobalPage > global { ri -= 1 }
        let r = regions[ri]
        let page = global - r.firstGlobalPage
        writeSeq += 1
        if config.zeroingWriteFraction > 0 && rng.unit() < config.zeroingWriteFraction {
            memset(r.host + page * 4096, 0, 4096)
            memset(r.shadow + page * 4096, 0, 4096)
        } else {
            let value = (writeSeq &* 0x9E37_79B9_7F4A_7C15) | 1
            let offset = page * 4096 + Int(writeSeq % 512) * 8
            r.host.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
            r.shadow.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
        }
        let bit: UInt64 = 1 << UInt64(page % 64)
        if r.dirty[page / 64] & bit == 0 { vcpuPending[vcpu] += 1 }
        r.dirty[page / 64] |= bit
        pageWrites += 1
        vcpuWrites[vcpu] += 1
    }

    /// A device model's DMA into guest page `page` of `region` (not a vCPU
    /// write: KVM's dirty log does not see it). Returns the page's
    /// guest-physical address, for mk_source_mark_dirty.
    @discardableResult
    package func dmaWrite(region ri: Int, page: Int) -> UInt64 {
        catchUp()
        let r = regions[ri]
        writeSeq += 1
        let value = (writeSeq &* 0xD1B5_4A32_D192_ED03) | 1
        let offset = page * 4096 + Int(writeSeq % 512) * 8
        r.host.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
        r.shadow.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
        dmaWrites += 1
        return r.guestPhysAddr + UInt64(page) * 4096
    }

    // MARK: what the VMM does for the engine

    /// KVM_GET_DIRTY_LOG: OR the pages written since the last fetch into
    /// `bitmap` and forget them.
    package func fetchDirtyLog(region: Int, into bitmap: UnsafeMutablePointer<UInt64>, pages: Int) {
        catchUp()
        let r = regions[region]
        let words = min(r.words, (pages + 63) / 64)
        var count = 0
        var granules = 0
        let g = max(Int(r.granularity / 4096), 1)
        var lastGranule = -1
        for w in 0..<words {
            var bits = r.dirty[w]
            guard bits != 0 else { continue }
            bitmap[w] |= bits
            r.dirty[w] = 0
            count += bits.nonzeroBitCount
            while bits != 0 {
                let p = w * 64 + bits.trailingZeroBitCount
                bits &= bits - 1
                if p / g != lastGranule {
                    lastGranule = p / g
                    granules += 1
                }
            }
        }
        fetches.append(Fetch(atNs: clock.elapsedNs, region: region, pages: count, granules: granules))
    }

    package func pause() {
        catchUp()
        paused = true
        pauseHistory.append((clock.elapsedNs, true))
    }

    package func resume() {
        catchUp()
        paused = false
        pauseHistory.append((clock.elapsedNs, false))
    }

    package func setThrottle(percent: UInt32) {
        setThrottle(perVCPU: Array(repeating: percent, count: vcpuCount))
    }

    package func setThrottle(perVCPU p: [UInt32]) {
        catchUp()
        for i in vcpuThrottle.indices {
            let v = i < p.count ? p[i] : 0
            if v != vcpuThrottle[i] { throttleSinceNs[i] = clock.now }
            vcpuThrottle[i] = v
        }
    }

    /// How long the slowest vCPU needs to leave the throttle point at `t`:
    /// a throttled vCPU is kicked at the start of each cycle and sleeps
    /// ThrottleTiming.sleepNs(percent:) in mk_source_throttle_point before
    /// its slice; a pause request cannot stop it before it wakes (only a
    /// lower throttle wakes it early, as the production Throttler does).
    func throttleSleepLeftNs(atNs t: UInt64) -> UInt64 {
        var left: UInt64 = 0
        for i in vcpuThrottle.indices where vcpuThrottle[i] > 0 && t >= throttleSinceNs[i] {
            let period = ThrottleTiming.periodNs(percent: vcpuThrottle[i])
            let sleep = ThrottleTiming.sleepNs(percent: vcpuThrottle[i])
            let phase = (t - throttleSinceNs[i]) % period
            if phase < sleep { left = max(left, sleep - phase) }
        }
        return left
    }

    /// The device-state blob: deterministic bytes, different on each save.
    package func saveDeviceState() -> [UInt8] {
        var g = SimRNG(seed: config.seed ^ UInt64(savedDeviceStates.count + 1) &* 0xD1CE)
        var blob = [UInt8](repeating: 0, count: config.deviceStateBytes)
        blob.withUnsafeMutableBytes { raw in
            var i = 0
            while i + 8 <= raw.count {
                raw.storeBytes(of: g.next(), toByteOffset: i, as: UInt64.self)
                i += 8
            }
            while i < raw.count {
                raw[i] = UInt8(truncatingIfNeeded: g.next())
                i += 1
            }
        }
        savedDeviceStates.append(blob)
        return blob
    }

    // MARK: checks

    /// True when memory holds exactly what the guest wrote: nobody else
    /// (the engine) wrote to it.
    package var memoryIntact: Bool {
        regions.allSatisfy { memcmp($0.host, $0.shadow, Int($0.size)) == 0 }
    }

    /// Byte-compare region `i` with `other` (a destination's copy).
    func regionEquals(_ i: Int, _ other: UnsafeRawPointer) -> Bool {
        memcmp(regions[i].host, other, Int(regions[i].size)) == 0
    }
}

/// Page-aligned, zero-filled memory straight from the kernel: pages never
/// written cost nothing (zero-heavy guests stay cheap to simulate).
enum SimMemory {
    static func zeroed(_ size: Int) -> UnsafeMutableRawPointer {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(p != nil && p != MAP_FAILED, "mmap(\(size)) failed")
        return p!
    }

    static func release(_ p: UnsafeMutableRawPointer, _ size: Int) {
        munmap(p, size)
    }
}
