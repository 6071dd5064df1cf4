import CShim
import Glibc

/// The destination's end of the channel, chosen once per run: the VMM's
/// transport_fd (FdDestTransport), its read/write callbacks
/// (CallbackDestTransport), or a simulator's link. Reads come from the
/// thread in mk_dest_run only; frames back from it or from mk_dest_ack's;
/// `interrupt` from any thread.
package protocol DestTransport: AnyObject, Sendable {
    /// Up to `cap` stream bytes into `buf`; 0 at the end of the stream.
    func read(into buf: UnsafeMutableRawPointer, cap: Int) throws(MKError) -> Int
    /// Into `a`, and past it into `b` where the transport can (one readv).
    func read(into a: UnsafeMutableRawPointer, cap alen: Int,
              thenInto b: UnsafeMutableRawPointer, cap blen: Int) throws(MKError) -> Int
    /// Whole frames back to the source, if the channel goes both ways
    /// (otherwise dropped: a one-way channel has nobody to tell).
    func sendReturn(_ bytes: [UInt8]) throws(MKError)
    /// True when progress reports can go out without ever blocking the
    /// load (sendWithoutWaiting); false: they are not sent.
    var carriesProgress: Bool { get }
    /// As much of `bytes` as fits now; how many went out.
    func sendWithoutWaiting(_ bytes: UnsafeRawBufferPointer) -> Int
    /// Wait up to `ms` for stream data; true if none came (the stream is
    /// quiet), false on data, end, error or cancel.
    func waitQuiet(ms: Int32) -> Bool
    /// Ends a read in progress (mk_dest_cancel), from any thread.
    var interrupt: @Sendable () -> Void { get }
    /// The load failed: let a sender still writing learn it through its
    /// write too, if the transport can.
    func abandon()
}

extension DestTransport {
    package func read(into a: UnsafeMutableRawPointer, cap alen: Int,
                     thenInto b: UnsafeMutableRawPointer, cap blen: Int) throws(MKError) -> Int {
        try read(into: a, cap: alen)
    }
    package var carriesProgress: Bool { false }
    package func sendWithoutWaiting(_ bytes: UnsafeRawBufferPointer) -> Int { 0 }
    package func waitQuiet(ms: Int32) -> Bool { false }
    package func abandon() {}
}

/// The VMM's read callback for the stream and, if set, its write callback
/// for frames back. The VMM's transport owns every wait and wakeup.
final class CallbackDestTransport: DestTransport, Sendable {
    /// Up to `cap` bytes into the buffer; the callback's int and the bytes
    /// it reported.
    typealias Read = @Sendable (_ buf: UnsafeMutableRawPointer, _ cap: Int) -> (rc: Int32, got: Int)
    typealias Write = @Sendable (_ iov: UnsafePointer<iovec>, _ count: Int32) -> Int32

    private let readBytes: Read
    private let writeBytes: Write?

    init(read: @escaping Read, write: Write?) {
        readBytes = read
        writeBytes = write
    }

    let interrupt: @Sendable () -> Void = {}

    func read(into buf: UnsafeMutableRawPointer, cap: Int) throws(MKError) -> Int {
        let (rc, got) = readBytes(buf, cap)
        if rc < 0 { throw MKError(.transport, "read callback returned \(rc)") }
        guard got <= cap else { throw MKError(.callback, "read callback reported \(got) bytes for a \(cap)-byte buffer") }
        return got
    }

    func sendReturn(_ bytes: [UInt8]) throws(MKError) {
        guard let writeBytes else { return }
        try withBytes(bytes) { (raw) throws(MKError) in
            var v = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress!), iov_len: raw.count)
            let rc = writeBytes(&v, 1)
            if rc < 0 { throw MKError(.transport, "write callback returned \(rc) for the acknowledgement") }
        }
    }
}

/// The built-in transport on the VMM's fd: the stream comes in on it and,
/// on a socket, frames go back on it. The VMM closes the fd, never this.
final class FdDestTransport: DestTransport, Sendable {
    private let fd: Int32
    private let isSocket: Bool
    /// A pipe (any fd that is not a socket) cannot be shut down: cancel
    /// wakes this instead, and reads on such an fd wait in poll() for data
    /// or this (sockets keep the plain read: shutdown ends it).
    private let wake: WakeSignal
    let interrupt: @Sendable () -> Void

    init(fd: Int32) {
        self.fd = fd
        isSocket = cshim_is_socket(fd) != 0
        let wake = WakeSignal()
        self.wake = wake
        interrupt = {
            _ = cshim_shutdown(fd)
            wake.wake()
        }
    }

    func read(into buf: UnsafeMutableRawPointer, cap: Int) throws(MKError) -> Int {
        try waitReadable()
        let n = cshim_read_some(fd, buf, cap)
        if n < 0 { throw MKError(.transport, "read on fd \(fd): \(String(cString: strerror(Int32(-n))))") }
        return n
    }

    func read(into a: UnsafeMutableRawPointer, cap alen: Int,
              thenInto b: UnsafeMutableRawPointer, cap blen: Int) throws(MKError) -> Int {
        try waitReadable()
        let n = cshim_read2(fd, a, alen, b, blen)
        if n < 0 { throw MKError(.transport, "read on fd \(fd): \(String(cString: strerror(Int32(-n))))") }
        return n
    }

    /// Before a read on a pipe: wait for data, or for mk_dest_cancel.
    private func waitReadable() throws(MKError) {
        guard !isSocket, wake.isAvailable else { return }
        if cshim_wait_readable(fd, wake.fd) == -ECANCELED {
            throw MKError(.canceled, "cancelled by mk_dest_cancel")
        }
    }

    /// A pipe carries the stream one way only: nothing to send back on.
    func sendReturn(_ bytes: [UInt8]) throws(MKError) {
        guard isSocket else { return }
        try withBytes(bytes) { (raw) throws(MKError) in
            var v = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress!), iov_len: raw.count)
            // The source's own bounded write: it waits in poll(), so
            // mk_dest_cancel ends it too (besides shutting the socket).
            var done = 0
            let rc = cshim_writev_bounded(fd, 1, &v, 1, &done, wake.fd, 0)
            if rc == -ECANCELED { throw MKError(.canceled, "cancelled by mk_dest_cancel") }
            if rc < 0 { throw MKError(.transport, "sending the acknowledgement: \(String(cString: strerror(-rc)))") }
        }
    }

    var carriesProgress: Bool { isSocket }

    func sendWithoutWaiting(_ bytes: UnsafeRawBufferPointer) -> Int {
        cshim_send_nowait(fd, bytes.baseAddress, bytes.count)
    }

    func waitQuiet(ms: Int32) -> Bool { cshim_wait_readable_ms(fd, wake.fd, ms) == -ETIMEDOUT }

    /// The fd stays open: the VMM closes it.
    func abandon() { if isSocket { _ = cshim_shutdown(fd) } }
}
