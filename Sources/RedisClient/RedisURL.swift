/// Where Redis is: `redis://host[:port][/db]` (port 6379 and database 0 by default).
/// Passwords and TLS (`rediss://`) are not supported yet and are rejected rather than ignored.
public struct RedisURL: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var database: Int

    public static let defaultPort = 6379

    public init(host: String, port: Int = RedisURL.defaultPort, database: Int = 0) {
        self.host = host
        self.port = port
        self.database = database
    }

    /// Parses `redis://host:port/db`. IPv6 hosts go in brackets: `redis://[::1]:6379`.
    public init(_ string: String) throws(RedisURLError) {
        let text = string.trimmingWhitespace()
        guard let schemeEnd = text.firstRange(of: "://") else {
            throw RedisURLError(text, "expected redis://host[:port][/db]")
        }
        let scheme = text[..<schemeEnd.lowerBound].lowercased()
        switch scheme {
        case "redis": break
        case "rediss": throw RedisURLError(text, "TLS (rediss://) is not supported yet")
        default: throw RedisURLError(text, "unsupported scheme \"\(scheme)\"; expected redis://")
        }
        var rest = text[schemeEnd.upperBound...]
        if rest.contains("?") || rest.contains("#") {
            throw RedisURLError(text, "query parameters and fragments are not supported")
        }
        if rest.contains("@") {
            throw RedisURLError(text, "credentials in the URL are not supported yet")
        }

        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }

        let hostPart: Substring
        var portPart: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw RedisURLError(text, "unterminated IPv6 address") }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw RedisURLError(text, "unexpected text after the IPv6 address") }
                portPart = after.dropFirst()
            }
        } else if let colon = rest.firstIndex(of: ":") {
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        } else {
            hostPart = rest
        }
        guard !hostPart.isEmpty else { throw RedisURLError(text, "missing host") }
        self.host = String(hostPart)

        if let portPart {
            guard portPart.allSatisfy(\.isASCIIDigit), let port = Int(portPart), (1...65535).contains(port) else {
                throw RedisURLError(text, "port must be a number from 1 to 65535")
            }
            self.port = port
        } else {
            self.port = Self.defaultPort
        }

        if path.isEmpty {
            self.database = 0
        } else {
            guard path.allSatisfy(\.isASCIIDigit), let database = Int(path) else {
                throw RedisURLError(text, "database must be a non-negative number, as in redis://host:6379/0")
            }
            self.database = database
        }
    }

    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "redis://\(host):\(self.port)/\(self.database)"
    }
}

/// A `--redis-url` that could not be used, with the reason.
public struct RedisURLError: Error, Sendable, Hashable, CustomStringConvertible {
    public var url: String
    public var reason: String

    init(_ url: String, _ reason: String) {
        self.url = url
        self.reason = reason
    }

    public var description: String { "invalid Redis URL \"\(self.url)\": \(self.reason)" }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { self.isASCII && self.isNumber }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
