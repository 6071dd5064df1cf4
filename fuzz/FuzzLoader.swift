import CShim

/// libFuzzer target: the destination loader, fed the way DestSession feeds
/// it (page data read straight into guest memory where the loader offers a
/// span, everything else through consume), over two small regions of
/// heap memory so that AddressSanitizer sees any write outside them. The
/// first input byte picks the chunk sizes; the rest is the stream.
private let regionSizes = [64 << 10, 16 << 10]
private let gpas: [UInt64] = [0x1_0000_0000, 0x2_0000_0000]
nonisolated(unsafe) private let memory = regionSizes.map { UnsafeMutableRawPointer.allocate(byteCount: $0, alignment: 4096) }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLoader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    // The regions live across runs (a fresh 80 KiB heap allocation per run
    // costs more than the run); cleared each time. ASan still guards their
    // edges.
    for (m, n) in zip(memory, regionSizes) { m.initializeMemory(as: UInt8.self, repeating: 0, count: n) }
    let regions = zip(memory, zip(gpas, regionSizes)).map { (m, g) in
        LoaderRegion(host: m, guestPhysAddr: g.0, size: UInt64(g.1), granularity: 4096, fresh: data[0] & 0x80 != 0)
    }
    let loader = StreamLoader(regions: regions, loadDevice: { (blob) throws(MKError) in
        // The VMM reads what it is given: every byte must be readable.
        var x: UInt8 = 0
        for b in blob { x ^= b }
        if x == 0xFF && blob.count == 3 { throw MKError(.callback, "a device that refuses this blob") }
    })
    let chunkSeed = Int(data[0] & 0x7F) + 1
    var at = 1
    var step = 0
    do throws(MKError) {
        while at < size && !loader.isComplete {
            step += 1
            let chunk = max(1, (chunkSeed * step * 7919) % 5000)
            let left = size - at
            if let span = loader.directSpan(limit: chunk) {
                let n = min(span.count, left)
                span.target.copyMemory(from: data + at, byteCount: n)
                try loader.consumeInPlace(n)
                at += n
            } else {
                let cap = min(loader.headerBytesWanted ?? loader.bytesBeforeNextPayload ?? chunk, chunk, left)
                try loader.consume(UnsafeRawBufferPointer(start: data + at, count: cap))
                at += cap
            }
        }
        if at < size { try loader.consume(UnsafeRawBufferPointer(start: data + at, count: size - at)) }
        try loader.finish()
    } catch {
        // Every failure must come with a message a VMM can show.
        precondition(!error.message.isEmpty, "an error without a message")
    }
    return 0
}
