import NIOHTTP1

/// The body rules of an application route, decided from the request head before a byte of the
/// body is read or copied: a `Content-Length` over the route's limit is refused at once (413),
/// so is an `Expect: 100-continue` request whose body would be (the client then never sends
/// it), and a body without a length (chunked) is refused as soon as it passes the limit.
enum HTTPRequestBodyLimit {
    enum Decision: Equatable {
        /// Read the body: `length` is what `Content-Length` announces (nil: chunked, or no body);
        /// `sendContinue` when the client waits for `100 Continue` before sending it.
        case read(length: Int?, sendContinue: Bool)
        /// 413: the announced length is over the limit (or over any number this process holds).
        case tooLarge
        /// 400: `Content-Length` is not one non-negative decimal number (NIO's parser refuses
        /// these before us; checked again here rather than trusted).
        case malformed(String)
    }

    static func evaluate(_ head: HTTPRequestHead, limit: Int) -> Decision {
        var length: Int?
        var tooLarge = false
        for value in head.headers["content-length"] {
            for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                let text = item.trimmingCharacters(in: " \t")
                guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                    return .malformed("Content-Length is not a number")
                }
                guard let parsed = Self.parseDecimal(text) else {
                    // More digits than any length this process could hold: too large, whatever it is.
                    tooLarge = true
                    continue
                }
                if let length, length != parsed { return .malformed("conflicting Content-Length values") }
                length = parsed
            }
        }
        if tooLarge { return length == nil ? .tooLarge : .malformed("conflicting Content-Length values") }
        if let length, length > max(0, limit) { return .tooLarge }
        let expectsContinue = head.version == .http1_1
            && head.headers[canonicalForm: "expect"].contains { $0.lowercased() == "100-continue" }
        return .read(length: length, sendContinue: expectsContinue && length != 0)
    }

    /// A decimal number without a sign, or nil when it does not fit an `Int`.
    static func parseDecimal(_ text: String) -> Int? {
        var value = 0
        for byte in text.utf8 {
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            value = sum
        }
        return value
    }
}
