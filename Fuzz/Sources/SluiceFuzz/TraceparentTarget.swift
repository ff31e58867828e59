import Telemetry

/// `TraceContext(traceparent:)` on any header value, against the W3C grammar written out here:
/// `version "-" trace-id "-" parent-id "-" flags`, lowercase hex, version ff invalid, all-zero ids
/// invalid, more fields only after a version above 00. A parsed context writes itself back as the
/// same header (version 00), and that parses to the same context.
///
/// Input: the header value.
enum TraceparentTarget {
    static func run(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        let context = TraceContext(traceparent: text)
        let expected = Self.reference(text)
        require((context != nil) == expected, "parser says \(context != nil), the grammar says \(expected) for \(text.debugDescription)")
        guard let context else { return }
        let written = context.traceparent
        require(TraceContext(traceparent: written) == context, "\(written) does not parse back to the same context")
        let parts = Self.fields(text)
        require(written.hasPrefix("00-\(parts[1])-\(parts[2])-"), "ids changed on the way through: \(written)")
        if parts[0] == "00" && (parts[3] == "00" || parts[3] == "01") {
            require(written == text, "\(text) written back as \(written)")
        }
    }

    /// The header's fields, cut at every "-" byte. Not `String.split`: that cuts between
    /// characters, and a "-" followed by a combining mark is one character (a false finding).
    static func fields(_ text: String) -> [Substring] {
        text.utf8.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false).map { Substring($0) }
    }

    static func reference(_ text: String) -> Bool {
        let parts = Self.fields(text)
        guard parts.count >= 4 else { return false }
        func isHex(_ part: Substring, count: Int) -> Bool {
            part.utf8.count == count && part.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
        }
        guard isHex(parts[0], count: 2), isHex(parts[1], count: 32), isHex(parts[2], count: 16), isHex(parts[3], count: 2) else {
            return false
        }
        if parts[0] == "ff" { return false }
        if parts[0] == "00" && parts.count != 4 { return false }
        if parts[1].allSatisfy({ $0 == "0" }) || parts[2].allSatisfy({ $0 == "0" }) { return false }
        return true
    }
}
