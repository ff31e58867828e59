/// Incremental UTF-8 validator (RFC 3629): feeds may split a code point anywhere, and an
/// invalid sequence is reported at the first byte that makes it invalid (fail fast), so a
/// fragmented text message is rejected as soon as its bad byte arrives.
public struct UTF8Validator: Sendable {
    /// Continuation bytes still expected for the current code point.
    private var pending: UInt8 = 0
    /// Allowed range of the next continuation byte (tighter than 0x80...0xBF right after
    /// E0, ED, F0 and F4: excludes overlongs, surrogates and code points above U+10FFFF).
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    public init() {}

    /// True when the bytes so far end on a code point boundary.
    public var isAtBoundary: Bool { self.pending == 0 }

    /// Validates more bytes; returns false at the first invalid byte.
    public mutating func validate(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let count = bytes.count
        var index = 0
        while index < count {
            if self.pending == 0 {
                // ASCII fast path, eight bytes at a time.
                while index + 8 <= count,
                    base.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 == 0
                {
                    index += 8
                }
                guard index < count else { break }
                let byte = base.load(fromByteOffset: index, as: UInt8.self)
                index += 1
                switch byte {
                case 0x00...0x7F: continue
                case 0xC2...0xDF: self.expect(1, 0x80, 0xBF)
                case 0xE0: self.expect(2, 0xA0, 0xBF)
                case 0xE1...0xEC, 0xEE...0xEF: self.expect(2, 0x80, 0xBF)
                case 0xED: self.expect(2, 0x80, 0x9F)
                case 0xF0: self.expect(3, 0x90, 0xBF)
                case 0xF1...0xF3: self.expect(3, 0x80, 0xBF)
                case 0xF4: self.expect(3, 0x80, 0x8F)
                default: return false
                }
            } else {
                let byte = base.load(fromByteOffset: index, as: UInt8.self)
                index += 1
                guard byte >= self.lower && byte <= self.upper else { return false }
                self.pending -= 1
                self.lower = 0x80
                self.upper = 0xBF
            }
        }
        return true
    }

    public mutating func validate<Bytes: Sequence>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
        let array = Array(bytes)
        return array.withUnsafeBytes { self.validate($0) }
    }

    private mutating func expect(_ count: UInt8, _ lower: UInt8, _ upper: UInt8) {
        self.pending = count
        self.lower = lower
        self.upper = upper
    }
}
