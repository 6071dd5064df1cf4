import CShim
import XCTest

/// MKH-32, the per-page check value: the documented check values, the SIMD
/// path against the portable reference, the fused copy, and that a torn
/// page (one flipped bit anywhere) changes it.
final class PageHashTests: XCTestCase {
    private func page(_ byte: (Int) -> UInt8) -> [UInt8] { (0..<4096).map(byte) }

    func testDocumentedCheckValues() {
        XCTAssertEqual(page { _ in 0 }.withUnsafeBytes { cshim_page_hash($0.baseAddress!) }, 0x3222_16F9)
        XCTAssertEqual(page { UInt8($0 & 0xFF) }.withUnsafeBytes { cshim_page_hash($0.baseAddress!) }, 0xF42D_276A)
        XCTAssertEqual(page { _ in 0x11 }.withUnsafeBytes { cshim_page_hash_scalar($0.baseAddress!) }, 0x349E_1D57)
    }

    func testFastPathsMatchTheReference() {
        var rng = SystemRandomNumberGenerator()
        var dst = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<2000 {
            let p = page { _ in UInt8.random(in: 0...255, using: &rng) }
            let reference = p.withUnsafeBytes { cshim_page_hash_scalar($0.baseAddress!) }
            XCTAssertEqual(p.withUnsafeBytes { cshim_page_hash($0.baseAddress!) }, reference)
            let copied = dst.withUnsafeMutableBytes { d in p.withUnsafeBytes { cshim_page_copy_hash(d.baseAddress!, $0.baseAddress!) } }
            XCTAssertEqual(copied, reference)
            XCTAssertEqual(dst, p)
        }
    }

    func testEveryBitOfThePageCounts() {
        var p = page { UInt8(truncatingIfNeeded: $0 &* 131) }
        let h0 = p.withUnsafeBytes { cshim_page_hash($0.baseAddress!) }
        for bit in stride(from: 0, to: 4096 * 8, by: 7) {
            p[bit / 8] ^= UInt8(1 << (bit % 8))
            XCTAssertNotEqual(p.withUnsafeBytes { cshim_page_hash($0.baseAddress!) }, h0, "bit \(bit)")
            p[bit / 8] ^= UInt8(1 << (bit % 8))
        }
    }
}
