import NIOCore

/// Reads the few fields the harness needs from a `sluice.v1` message without a JSON parser:
/// the server writes `type`, ids and seqs before any free text (`text`, `message`), so the first
/// occurrence of `"key":` is the field. Keeps the harness's own cost per delta small, so it can
/// out-run the server it measures.
struct FrameFields {
    let bytes: ByteBufferView

    init(_ buffer: ByteBuffer) {
        self.bytes = buffer.readableBytesView
    }

    /// The message's `type`.
    var type: Substring? { self.string("type") }

    func string(_ key: String) -> Substring? {
        guard var index = self.valueStart(key), index < self.bytes.endIndex, self.bytes[index] == UInt8(ascii: "\"") else { return nil }
        index += 1
        let start = index
        while index < self.bytes.endIndex {
            let byte = self.bytes[index]
            if byte == UInt8(ascii: "\\") {
                index += 2
                continue
            }
            if byte == UInt8(ascii: "\"") {
                return Substring(decoding: self.bytes[start..<index], as: UTF8.self)
            }
            index += 1
        }
        return nil
    }

    func integer(_ key: String) -> Int64? {
        guard var index = self.valueStart(key) else { return nil }
        var value: Int64 = 0
        var digits = 0
        while index < self.bytes.endIndex, self.bytes[index] >= UInt8(ascii: "0"), self.bytes[index] <= UInt8(ascii: "9") {
            value = value * 10 + Int64(self.bytes[index] - UInt8(ascii: "0"))
            digits += 1
            index += 1
        }
        return digits > 0 ? value : nil
    }

    /// The length of the `text` field's JSON string (escapes counted as written).
    var textLength: Int {
        guard let text = self.string("text") else { return 0 }
        return text.utf8.count
    }

    /// Index just after `"key":`.
    private func valueStart(_ key: String) -> Int? {
        let pattern = Array("\"\(key)\":".utf8)
        guard let first = pattern.first, self.bytes.count >= pattern.count else { return nil }
        var index = self.bytes.startIndex
        let last = self.bytes.endIndex - pattern.count
        while index <= last {
            if self.bytes[index] == first {
                var matched = true
                for offset in 1..<pattern.count where self.bytes[index + offset] != pattern[offset] {
                    matched = false
                    break
                }
                if matched { return index + pattern.count }
            }
            index += 1
        }
        return nil
    }
}
