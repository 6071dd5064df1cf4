/// Rate limiter for the live phase: a token bucket refilled at `rate` B/s,
/// holding at most `burst` bytes. Unlike QEMU's 100 ms all-or-nothing
/// windows, the sender is paced smoothly and a long pause cannot bank more
/// than one burst. Pure: the caller passes the time.
package struct TokenBucket: Sendable {
    package private(set) var rate: UInt64      // B/s, 0 = unlimited
    package private(set) var burst: UInt64
    private var tokens: Double
    private var lastNs: UInt64

    /// Burst of 50 ms of the rate, but never less than 256 KiB so that one
    /// batch of pages always fits.
    static func defaultBurst(rate: UInt64) -> UInt64 { max(rate / 20, 256 * 1024) }

    package init(rate: UInt64, nowNs: UInt64) {
        self.rate = rate
        self.burst = Self.defaultBurst(rate: rate)
        self.tokens = Double(burst)
        self.lastNs = nowNs
    }

    var isUnlimited: Bool { rate == 0 }

    mutating func setRate(_ newRate: UInt64, nowNs: UInt64) {
        refill(nowNs)
        rate = newRate
        burst = Self.defaultBurst(rate: newRate)
        tokens = min(tokens, Double(burst))
    }

    /// Account bytes just sent; tokens may go negative (debt) so a batch is
    /// never split.
    package mutating func consume(_ bytes: UInt64, nowNs: UInt64) {
        guard rate != 0 else { return }
        refill(nowNs)
        tokens -= Double(bytes)
    }

    /// Nanoseconds to wait before the next send is allowed (0 = go now).
    /// `debt`: how far the tokens may already be below zero for the send
    /// to go now (the bytes of a burst after the first batch); the wait
    /// then pays the whole debt back, so the average rate is the same.
    package mutating func delayNs(nowNs: UInt64, debt: UInt64 = 0) -> UInt64 {
        guard rate != 0 else { return 0 }
        refill(nowNs)
        if tokens > -Double(debt) { return 0 }
        return UInt64((-tokens + 1) / Double(rate) * 1e9)
    }

    private mutating func refill(_ nowNs: UInt64) {
        if nowNs > lastNs, rate != 0 {
            tokens = min(Double(burst), tokens + Double(nowNs - lastNs) * Double(rate) / 1e9)
        }
        lastNs = max(lastNs, nowNs)
    }
}
