import NIOHTTP1

/// RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without a `Host` header and to
/// any request with more than one. Two Hosts are a request-smuggling and cache-poisoning shape:
/// a proxy in front and the gateway could each read a different one.
enum HTTPHostRule {
    /// Why `head` breaks the rule, or nil when it keeps it.
    static func problem(_ head: HTTPRequestHead) -> String? {
        let hosts = head.headers["host"].count
        if hosts > 1 { return "more than one Host header" }
        if hosts == 0 && (head.version.major > 1 || head.version.major == 1 && head.version.minor >= 1) {
            return "an HTTP/1.1 request needs a Host header"
        }
        return nil
    }
}
