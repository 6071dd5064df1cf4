import CShim

/// libFuzzer target: what arrives from the other side besides records.
/// The first byte picks the parser:
/// - even: the return channel, as the source reads it: 24-byte frames
///   through ReturnMessage.decode (hello, progress, ack, nonce, ack tag);
/// - odd: sealed frames of an authenticated stream through StreamOpener,
///   in reads of any size, as the destination takes them before the loader.
private let sessionKey = [UInt8](repeating: 0x5A, count: 32)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReturn(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let body = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    if data[0] & 1 == 0 {
        var at = 0
        while at + ReturnMessage.size <= body.count {
            do throws(MKError) {
                _ = try ReturnMessage.decode(UnsafeRawBufferPointer(rebasing: body[at..<(at + ReturnMessage.size)]))
            } catch {
                precondition(!error.message.isEmpty)
            }
            at += ReturnMessage.size
        }
        // A short frame is an error, never a read past its end.
        if at < body.count {
            precondition((try? ReturnMessage.decode(UnsafeRawBufferPointer(rebasing: body[at...]))) == nil)
        }
        return 0
    }
    let opener = StreamOpener(sessionKey: sessionKey)
    let step = Int(data[0] >> 1) + 1
    var at = 0
    do throws(MKError) {
        while at < body.count {
            let space = opener.space
            let n = min(space.count, step * 37, body.count - at)
            space.baseAddress!.copyMemory(from: body.baseAddress! + at, byteCount: n)
            at += n
            try opener.commit(n) { (payload) throws(MKError) in
                // Only a frame whose MAC checks gets here (the seeds hold
                // some): it must be one the opener had whole.
                precondition(payload.count >= 1 && payload.count <= StreamAuth.maxFrame)
            }
        }
    } catch {
        precondition(error.code == .auth && !error.message.isEmpty)
    }
    return 0
}
