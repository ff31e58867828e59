import NIOHTTP1

/// Which web pages may use the server through their visitors' browsers. A browser sends the page's
/// `Origin` with every WebSocket handshake and every cross-site POST (a "simple" `text/plain` POST
/// needs no CORS preflight), so without this check any site a developer visits could chat, submit
/// jobs or read answers through their local gateway. Clients that are not browsers send no Origin
/// (and could send any): they are not affected.
///
/// The one rule for the WebSocket upgrade and the application's HTTP routes:
/// - no `Origin` header: allowed;
/// - `allowedOrigins` configured: the origin must be one of them (exact, case-insensitive), or
///   the list holds `*`;
/// - nothing configured: `defaultOrigins` decides: only loopback pages (`http(s)://localhost`,
///   `127.0.0.1` or `[::1]`, any port; the default, safe without authentication), or any.
public enum OriginCheck {
    public static func allows(_ headers: HTTPHeaders, configuration: WebSocketServerConfiguration) -> Bool {
        let origins = headers["origin"]
        guard !origins.isEmpty else { return true }
        // Two Origin headers: no browser sends that; refuse rather than pick one.
        guard origins.count == 1 else { return false }
        let origin = origins[0].trimmingCharacters(in: " \t").lowercased()
        if !configuration.allowedOrigins.isEmpty {
            return configuration.allowedOrigins.contains { $0 == "*" || $0.lowercased() == origin }
        }
        switch configuration.defaultOrigins {
        case .any: return true
        case .loopbackOnly: return Self.isLoopback(origin)
        }
    }

    /// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with or without a port (already lowercased).
    static func isLoopback(_ origin: String) -> Bool {
        let rest: Substring
        if origin.hasPrefix("http://") {
            rest = origin.dropFirst("http://".count)
        } else if origin.hasPrefix("https://") {
            rest = origin.dropFirst("https://".count)
        } else {
            return false
        }
        for host in ["localhost", "127.0.0.1", "[::1]"] where rest.hasPrefix(host) {
            let after = rest.dropFirst(host.count)
            if after.isEmpty { return true }
            guard after.first == ":" else { continue }
            let port = after.dropFirst()
            return !port.isEmpty && port.count <= 5 && port.allSatisfy { $0.isASCII && $0.isNumber }
        }
        return false
    }
}
