/// The growable buffer behind mk_buffer: what save_device_state appends to.
final class DeviceBuffer {
    static let limit = 1 << 30
    var bytes: [UInt8] = []

    func append(_ p: UnsafeRawPointer, _ n: Int) throws(MKError) {
        guard bytes.count + n <= Self.limit else {
            throw MKError(.noMemory, "device state would exceed \(Self.limit >> 20) MiB")
        }
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: n))
    }
}
