import Foundation

/// A `ws://` or `wss://` URL split into what the connection needs.
struct WebSocketURL: Equatable, Sendable {
    var secure: Bool
    var host: String
    var port: Int
    /// Path and query, as sent in the request line.
    var target: String

    init?(_ string: String) {
        guard let components = URLComponents(string: string),
              let scheme = components.scheme?.lowercased(), scheme == "ws" || scheme == "wss",
              let host = components.host, !host.isEmpty else { return nil }
        self.secure = scheme == "wss"
        // URLComponents keeps IPv6 brackets on Linux but not on Darwin; sockets want none.
        self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        self.port = components.port ?? (self.secure ? 443 : 80)
        guard (1...65535).contains(self.port) else { return nil }
        let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        self.target = components.percentEncodedQuery.map { "\(path)?\($0)" } ?? path
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    var hostHeader: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return self.port == (self.secure ? 443 : 80) ? host : "\(host):\(self.port)"
    }

    /// Whether `host` is an IP literal (TLS must then not send it as SNI).
    var hostIsIPAddress: Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, self.host, &v4) == 1 || inet_pton(AF_INET6, self.host, &v6) == 1
    }
}
