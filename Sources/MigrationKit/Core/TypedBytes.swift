/// `withUnsafeBytes` does not forward typed throws (the closure's error
/// becomes `any Error`), so carry the outcome out as a Result.
@inline(__always)
func withBytes<R>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(MKError) -> R) throws(MKError) -> R {
    let result: Result<R, MKError> = array.withUnsafeBytes { raw in
        do throws(MKError) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
}

@inline(__always)
func withMutableBytes<R>(_ array: inout [UInt8], _ body: (UnsafeMutableRawBufferPointer) throws(MKError) -> R) throws(MKError) -> R {
    let result: Result<R, MKError> = array.withUnsafeMutableBytes { raw in
        do throws(MKError) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
}
