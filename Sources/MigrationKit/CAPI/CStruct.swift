import CShim

/// Versioned structs across the C boundary, the way the kernel's
/// copy_struct_from_user does it: the caller's struct_size says how much it
/// has; missing fields keep defaults, unknown trailing fields must be zero.
enum CStruct {
    static let maxSize = 1 << 16

    static func read<T>(_ p: UnsafePointer<T>?, defaults: T, name: String) throws(MKError) -> T {
        guard let p else { throw MKError(.invalid, "\(name) is NULL") }
        let raw = UnsafeRawPointer(p)
        let size = Int(raw.load(as: UInt32.self))
        let known = MemoryLayout<T>.size
        guard size >= MemoryLayout<UInt32>.size, size <= maxSize else {
            throw MKError(.version, "\(name)->struct_size is \(size); set it to sizeof (\(known) in this library)")
        }
        if size > known {
            for i in known..<size where raw.load(fromByteOffset: i, as: UInt8.self) != 0 {
                throw MKError(.version, "\(name) comes from a newer header (struct_size \(size) > \(known)) and sets fields this library does not know")
            }
        }
        var v = defaults
        withUnsafeMutableBytes(of: &v) {
            $0.copyMemory(from: UnsafeRawBufferPointer(start: raw, count: min(size, known)))
        }
        return v
    }

    /// Write as much of `value` as the caller's struct holds.
    static func write<T>(_ value: T, to p: UnsafeMutablePointer<T>?, name: String) throws(MKError) {
        guard let p else { throw MKError(.invalid, "\(name) is NULL") }
        let raw = UnsafeMutableRawPointer(p)
        let size = Int(raw.load(as: UInt32.self))
        guard size >= MemoryLayout<UInt32>.size, size <= maxSize else {
            throw MKError(.version, "\(name)->struct_size is \(size); set it to sizeof (\(MemoryLayout<T>.size) in this library)")
        }
        let n = min(size, MemoryLayout<T>.size)
        var v = value
        withUnsafeBytes(of: &v) { raw.copyMemory(from: $0.baseAddress!, byteCount: n) }
        raw.storeBytes(of: UInt32(n), as: UInt32.self)
    }

    /// *_init: write the defaults into the caller's `size` bytes only.
    static func initialize<T>(_ p: UnsafeMutablePointer<T>?, size: Int, with value: T, name: String) throws(MKError) {
        guard let p else { throw .null(name) }
        let n = UInt(bitPattern: size)
        guard n >= UInt(MemoryLayout<UInt32>.size), n <= UInt(maxSize) else {
            throw MKError(.version, "size \(n) for \(name) is not a struct size; pass sizeof (\(MemoryLayout<T>.size) here)")
        }
        let count = min(Int(n), MemoryLayout<T>.size)
        var v = value
        withUnsafeBytes(of: &v) { UnsafeMutableRawPointer(p).copyMemory(from: $0.baseAddress!, byteCount: count) }
        // A newer header's larger struct: the fields this library does not
        // know must read as zero (CStruct.read insists on it).
        if Int(n) > count { (UnsafeMutableRawPointer(p) + count).initializeMemory(as: UInt8.self, repeating: 0, count: Int(n) - count) }
        UnsafeMutableRawPointer(p).storeBytes(of: UInt32(count), as: UInt32.self)
    }

    /// A struct of T with only struct_size set.
    static func fresh<T>(_ zero: T) -> T {
        var v = zero
        withUnsafeMutableBytes(of: &v) { $0.storeBytes(of: UInt32(MemoryLayout<T>.size), as: UInt32.self) }
        return v
    }
}

/// Failure reporting shared by every entry point: the handle's slot (if any)
/// and the calling thread's mk_last_error().
enum CResult {
    static func fail(_ e: MKError, _ slot: ErrorSlot?) -> Int32 {
        slot?.set(e.message)
        cshim_set_last_error(e.message)
        return e.code.rawValue
    }

    static func run(_ slot: ErrorSlot?, _ body: () throws(MKError) -> Void) -> Int32 {
        do throws(MKError) {
            try body()
            return 0
        } catch {
            return fail(error, slot)
        }
    }
}

extension MKError {
    static func null(_ what: String) -> MKError { MKError(.invalid, "\(what) is NULL") }
}

/// config->auth_key / auth_key_len, checked and copied (the caller's buffer
/// need not outlive create).
func authKey(_ p: UnsafeRawPointer?, _ length: UInt64) throws(MKError) -> [UInt8]? {
    try StreamAuth.checkKey(length: Int(clamping: length), present: p != nil)
    guard let p else { return nil }
    return Array(UnsafeRawBufferPointer(start: p, count: Int(length)))
}
