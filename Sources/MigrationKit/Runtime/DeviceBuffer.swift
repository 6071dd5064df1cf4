/// The growable buffer behind mk_buffer: what save_device_state appends to.
final class DeviceBuffer {
    static let limit = 1 << 30
    var bytes: [UInt8] = []

    func append(_ p: UnsafeRawPointer, _ n: UInt) throws(MKError) {
        // n is a caller's size_t: compare without adding, so no overflow.
        guard n <= UInt(Self.limit - bytes.count) else {
            throw MKError(.noMemory, "device state would exceed \(Self.limit >> 20) MiB (have \(bytes.count), adding \(n))")
        }
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: Int(n)))
    }
}
