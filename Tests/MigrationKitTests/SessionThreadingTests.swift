import CShim
import Glibc
import Synchronization
import XCTest
@testable import MigrationKit

/// Whole migrations through the C entry points, source and destination in
/// this process over a socket pair, with other threads calling in the way a
/// VMM does (stats, parameters, dirty marks, the vCPUs' throttle point,
/// cancel): under `make sanitize` this is what puts the state shared by the
/// migration thread, the throttle thread and the API callers in front of
/// ThreadSanitizer.
final class SessionThreadingTests: XCTestCase {
    private static let size = 8 << 20

    private final class Pair {
        let src = UnsafeMutableRawPointer.allocate(byteCount: SessionThreadingTests.size, alignment: 4096)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: SessionThreadingTests.size, alignment: 4096)
        var sv: [Int32] = [-1, -1]
        var source: OpaquePointer?
        var dest: OpaquePointer?

        init(dirtyEverything: Bool) {
            for i in stride(from: 0, to: SessionThreadingTests.size, by: 8) {
                src.storeBytes(of: UInt64(i) | 1, toByteOffset: i, as: UInt64.self)
            }
            dst.initializeMemory(as: UInt8.self, repeating: 0, count: SessionThreadingTests.size)
            _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv)
            var r = mk_region()
            _ = mk_region_init_sized(&r, MemoryLayout<mk_region>.size)
            r.size = UInt64(SessionThreadingTests.size)

            var dc = mk_dest_config()
            _ = mk_dest_config_init_sized(&dc, MemoryLayout<mk_dest_config>.size)
            dc.transport_fd = sv[1]
            var dcb = mk_dest_callbacks()
            dcb.struct_size = UInt32(MemoryLayout<mk_dest_callbacks>.size)
            _ = mk_dest_create(&dest, &dc, &dcb)
            r.host_addr = dst
            _ = mk_dest_add_region(dest, &r, nil)

            var sc = mk_source_config()
            _ = mk_source_config_init_sized(&sc, MemoryLayout<mk_source_config>.size)
            sc.transport_fd = sv[0]
            sc.nr_vcpus = 2
            var cb = mk_source_callbacks()
            cb.struct_size = UInt32(MemoryLayout<mk_source_callbacks>.size)
            if dirtyEverything {
                cb.get_dirty_log = { _, _, bitmap, pages in
                    for w in 0..<Int((pages + 63) / 64) { bitmap![w] = ~0 }
                    return 0
                }
            } else {
                cb.get_dirty_log = { _, _, _, _ in 0 }
            }
            cb.pause_vcpus = { _ in 0 }
            cb.resume_vcpus = { _ in 0 }
            cb.kick_vcpu = { _, _ in 0 }
            _ = mk_source_create(&source, &sc, &cb, nil)
            r.host_addr = src
            _ = mk_source_add_region(source, &r, nil)
        }

        deinit {
            mk_source_destroy(source)
            mk_dest_destroy(dest)
            close(sv[0])
            close(sv[1])
            src.deallocate()
            dst.deallocate()
        }
    }

    private final class StopFlag: Sendable {
        private let flag = Atomic(false)
        var isSet: Bool { flag.load(ordering: .acquiring) }
        func set() { flag.store(true, ordering: .releasing) }
    }

    /// A thread standing in for the VMM's other threads until `stop`.
    private func caller(_ p: Pair, stop: StopFlag) throws -> pthread_t {
        nonisolated(unsafe) let s = p.source, d = p.dest
        return try spawnThread(name: "test") {
            var i: UInt64 = 0
            while !stop.isSet {
                var st = mk_stats()
                st.struct_size = UInt32(MemoryLayout<mk_stats>.size)
                _ = mk_source_get_stats(s, &st)
                var vs = mk_vcpu_stats()
                vs.struct_size = UInt32(MemoryLayout<mk_vcpu_stats>.size)
                _ = mk_source_get_vcpu_stats(s, UInt32(i % 2), &vs)
                var ds = mk_dest_stats()
                ds.struct_size = UInt32(MemoryLayout<mk_dest_stats>.size)
                _ = mk_dest_get_stats(d, &ds)
                _ = mk_source_mark_dirty(s, (i * 4096) % UInt64(SessionThreadingTests.size), 4096)
                _ = mk_source_set_param(s, "max-bandwidth", i % 2 == 0 ? "16M" : "15M")
                _ = mk_source_throttle_point(s, UInt32(i % 2))
                i += 1
                usleep(200)
            }
        }
    }

    func testCallersOnOtherThreadsDuringAMigration() throws {
        let p = Pair(dirtyEverything: false)
        nonisolated(unsafe) let d = p.dest
        let destThread = try spawnThread(name: "test") { XCTAssertEqual(mk_dest_run(d), 0) }
        let stop = StopFlag()
        let other = try caller(p, stop: stop)
        XCTAssertEqual(mk_source_start(p.source), 0)
        var status: Int32 = 0
        XCTAssertEqual(mk_source_wait(p.source, &status), 0, String(cString: mk_source_errmsg(p.source)!))
        stop.set()
        pthread_join(other, nil)
        pthread_join(destThread, nil)
        XCTAssertEqual(memcmp(p.src, p.dst, Self.size), 0)
    }

    /// A guest that dirties everything over a slow link: auto-converge
    /// starts the throttle thread, the vCPUs sleep in the throttle point,
    /// and a cancel from yet another thread ends it.
    func testCancelWhileThrottled() throws {
        let p = Pair(dirtyEverything: true)
        XCTAssertEqual(mk_source_set_param(p.source, "auto-converge", "on"), 0)
        XCTAssertEqual(mk_source_set_param(p.source, "max-bandwidth", "16M"), 0)
        XCTAssertEqual(mk_source_set_param(p.source, "downtime-limit", "1"), 0)
        nonisolated(unsafe) let d = p.dest
        let destThread = try spawnThread(name: "test") { _ = mk_dest_run(d) }
        let stop = StopFlag()
        let other = try caller(p, stop: stop)
        XCTAssertEqual(mk_source_start(p.source), 0)
        usleep(1_500_000)
        var st = mk_stats()
        st.struct_size = UInt32(MemoryLayout<mk_stats>.size)
        _ = mk_source_get_stats(p.source, &st)
        XCTAssertEqual(mk_source_cancel(p.source), 0)
        var status: Int32 = 0
        XCTAssertEqual(mk_source_wait(p.source, &status), MKErrorCode.canceled.rawValue)
        stop.set()
        pthread_join(other, nil)
        pthread_join(destThread, nil)
        XCTAssertGreaterThan(st.cpu_throttle_percentage, 0, "the throttle never engaged: the test did not exercise it")
    }
}
