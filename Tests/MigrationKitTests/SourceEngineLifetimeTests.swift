import CShim
import Glibc
import XCTest
@testable import MigrationKit

/// A VMM migrates many times in one process: each migration's engine (its
/// record buffers, bitmaps, hooks) must be gone when the migration is.
/// Swift 6.3's optimizer once left the engine's initializer holding one
/// retain too many, so this fails only in an optimized build:
/// `swift test -c release -Xswiftc -enable-testing --filter SourceEngineLifetimeTests`
/// (`make sanitize` catches the same leak with LeakSanitizer on the C tests).
final class SourceEngineLifetimeTests: XCTestCase {
    private static let size = 1 << 20
    private var memory: UnsafeMutableRawPointer!

    override func setUp() {
        memory = UnsafeMutableRawPointer.allocate(byteCount: Self.size, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 7, count: Self.size)
    }

    override func tearDown() { memory.deallocate() }

    /// The production hooks over VMM callbacks that accept every byte and
    /// report nothing dirty: one pass, no return channel.
    private func makeEngine() -> SourceEngine {
        let vmm = SourceVMM(getDirtyLog: { _, _, _ in 0 }, pauseVCPUs: { 0 }, resumeVCPUs: { 0 })
        let transport = CallbackSourceTransport(write: { _, _ in 0 }, read: nil)
        let regions = [GuestRegion(host: memory, guestPhysAddr: 0, size: UInt64(Self.size), granularity: 4096)]
        let hooks = CallbackHooks(vmm: vmm, transport: transport,
                                  throttler: Throttler(vcpus: 1, kick: nil), vcpus: 1)
        return SourceEngine(regions: regions, hooks: hooks, clock: SystemClock(),
                            control: SourceControl(params: MigrationParameters()), marks: ExternalMarks(regions))
    }

    func testAnEngineThatNeverRanIsFreed() {
        weak var engine: SourceEngine?
        do { let e = makeEngine(); engine = e }
        XCTAssertNil(engine, "the engine outlived its last reference")
    }

    /// The way SourceSession runs it: on its own thread, the closure
    /// handed over through spawnThread, then joined.
    func testTheEngineIsFreedAfterItsMigrationThreadEnds() throws {
        weak var engine: SourceEngine?
        let tid: pthread_t
        do {
            // The weak reference only tells, after the join, whether the
            // engine was freed: it shares nothing with the thread.
            nonisolated(unsafe) let e = makeEngine()
            engine = e
            tid = try spawnThread(name: "test") { XCTAssertNil(e.run()) }
        }
        pthread_join(tid, nil)
        XCTAssertNil(engine, "the engine outlived its migration")
    }
}
