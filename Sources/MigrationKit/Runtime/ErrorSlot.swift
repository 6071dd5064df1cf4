/// The per-handle error text, readable as a stable C string: the last
/// failing call's message until the migration itself failed (seal), then
/// that failure's for good (see mk_source_errmsg).
// @unchecked: the buffer is raw memory, written only under `lock`; C reads
// it through `cString`, valid until the next failing call (the header's
// contract for *_errmsg).
final class ErrorSlot: @unchecked Sendable {
    private let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: 1024)
    private let lock = Locked(false)  // sealed

    init() { buffer.initialize(repeating: 0, count: 1024) }
    deinit { buffer.deallocate() }

    /// A failing call's message; ignored once sealed.
    func set(_ message: String) { store(message, seal: false) }

    /// The migration's own failure: kept whatever fails later.
    func seal(_ message: String) { store(message, seal: true) }

    private func store(_ message: String, seal: Bool) {
        lock.withLock { sealed in
            guard !sealed else { return }
            sealed = seal
            var utf8 = Array(message.utf8.prefix(1023))
            utf8.append(0)
            utf8.withUnsafeBufferPointer { src in
                UnsafeMutableRawPointer(buffer).copyMemory(from: src.baseAddress!, byteCount: src.count)
            }
        }
    }

    var cString: UnsafePointer<CChar> { UnsafePointer(buffer) }
}
