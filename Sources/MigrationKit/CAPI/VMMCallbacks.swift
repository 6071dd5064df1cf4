import CShim
import Glibc

/// A VMM's callback table, copied at create time. The one place where
/// sendability is asserted for the VMM: migrationkit.h documents which
/// thread calls what, and `user` is the VMM's business.
// @unchecked: C function pointers and the opaque `user` pointer, which the
// library only passes back to the VMM on the threads the header names.
struct CallbackTable<Table>: @unchecked Sendable {
    let c: Table
}

// mk_iovec and struct iovec share their layout (checked in the tests), so
// the library's iovecs go to the VMM's write as they are.
private func asMKIovec(_ iov: UnsafePointer<iovec>, _ count: Int32, _ body: (UnsafePointer<mk_iovec>) -> Int32) -> Int32 {
    UnsafeRawPointer(iov).withMemoryRebound(to: mk_iovec.self, capacity: Int(count), body)
}

extension CallbackTable<mk_source_callbacks> {
    private var user: UnsafeMutableRawPointer? { c.user }

    /// Everything but the transport. get_dirty_log, pause_vcpus and
    /// resume_vcpus are checked present by mk_source_create.
    var vmm: SourceVMM {
        let t = self
        var v = SourceVMM(getDirtyLog: { region, bitmap, pages in t.c.get_dirty_log!(t.user, region, bitmap, pages) },
                          pauseVCPUs: { t.c.pause_vcpus!(t.user) },
                          resumeVCPUs: { t.c.resume_vcpus!(t.user) })
        if t.c.kick_vcpu != nil {
            v.kickVCPU = { vcpu in _ = t.c.kick_vcpu!(t.user, vcpu) }
        }
        if t.c.get_vcpu_dirty_counts != nil {
            v.getVCPUDirtyCounts = { counts, n in t.c.get_vcpu_dirty_counts!(t.user, counts, n) }
        }
        if t.c.save_device_state != nil {
            v.saveDeviceState = { buf in t.c.save_device_state!(t.user, OpaquePointer(Unmanaged.passUnretained(buf).toOpaque())) }
        }
        if t.c.device_state_size != nil {
            v.deviceStateSize = { t.c.device_state_size!(t.user) }
        }
        if t.c.log != nil {
            v.log = { level, message in message.withCString { t.c.log!(t.user, level.rawValue, $0) } }
        }
        if t.c.progress != nil {
            v.progress = { stats in
                var s = mk_stats()
                s.fill(from: stats)
                t.c.progress!(t.user, &s)
            }
        }
        return v
    }

    /// The write callback (checked present when there is no fd) and the
    /// optional read callback for the return channel.
    var transport: SourceTransportChoice {
        let t = self
        var read: CallbackSourceTransport.Read?
        if t.c.read != nil {
            read = { buf in t.c.read!(t.user, buf.baseAddress, buf.count) }
        }
        let write: CallbackSourceTransport.Write = { iov, count in
            asMKIovec(iov, count) { t.c.write!(t.user, $0, count) }
        }
        return .callbacks(write: write, read: read)
    }
}

extension CallbackTable<mk_dest_callbacks> {
    private var user: UnsafeMutableRawPointer? { c.user }

    var hooks: DestHooks {
        let t = self
        guard t.c.load_device_state != nil else { return DestHooks(loadDeviceState: nil) }
        return DestHooks(loadDeviceState: { blob in t.c.load_device_state!(t.user, blob.baseAddress, blob.count) })
    }

    /// The read callback carries the stream; nil without one.
    var transport: CallbackDestTransport? {
        let t = self
        guard t.c.read != nil else { return nil }
        var write: CallbackDestTransport.Write?
        if t.c.write != nil {
            write = { iov, count in asMKIovec(iov, count) { t.c.write!(t.user, $0, count) } }
        }
        return CallbackDestTransport(read: { buf, cap in
            var got = 0
            let rc = t.c.read!(t.user, buf, cap, &got)
            return (rc, got)
        }, write: write)
    }
}
