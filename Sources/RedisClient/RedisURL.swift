/// Where Redis is and how to log in: `redis://[user[:password]@]host[:port][/db]`, or
/// `rediss://…` for TLS (port 6379 and database 0 by default).
///
/// Credentials are percent-decoded. `redis://:password@host` logs in with `AUTH password` (the
/// `default` user, or Redis's `requirepass`); `redis://user:password@host` with
/// `AUTH user password` (an ACL user). `description` masks the password, so the URL can be
/// logged and put in errors as it is.
public struct RedisURL: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public var host: String
    public var port: Int
    public var database: Int
    /// ACL user name; nil logs in as `default` (or not at all when there is no password).
    public var user: String?
    /// Sent in `AUTH` on every connection; never printed.
    public var password: String?
    /// `rediss://`: the connection is TLS (see `RedisTLSConfiguration`).
    public var usesTLS: Bool

    public static let defaultPort = 6379

    public init(
        host: String, port: Int = RedisURL.defaultPort, database: Int = 0,
        user: String? = nil, password: String? = nil, usesTLS: Bool = false
    ) {
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.password = password
        self.usesTLS = usesTLS
    }

    /// Parses `redis[s]://[user[:password]@]host[:port][/db]`. IPv6 hosts go in brackets:
    /// `redis://[::1]:6379`. The password may hold any character percent-encoded; `/`, `?`, `#`
    /// and `@` are also taken as they are (the last `@` ends the credentials).
    public init(_ string: String) throws(RedisURLError) {
        let text = string.trimmingWhitespace()
        guard let schemeEnd = text.firstRange(of: "://") else {
            throw RedisURLError(text, "expected redis://[user:password@]host[:port][/db]")
        }
        let scheme = text[..<schemeEnd.lowerBound].lowercased()
        switch scheme {
        case "redis": self.usesTLS = false
        case "rediss": self.usesTLS = true
        default: throw RedisURLError(text, "unsupported scheme \"\(scheme)\"; expected redis:// or rediss://")
        }
        var rest = text[schemeEnd.upperBound...]

        self.user = nil
        self.password = nil
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let userPart: Substring
            var passwordPart: Substring?
            if let colon = userInfo.firstIndex(of: ":") {
                userPart = userInfo[..<colon]
                passwordPart = userInfo[userInfo.index(after: colon)...]
            } else {
                userPart = userInfo
            }
            guard let user = Self.percentDecoded(userPart) else {
                throw RedisURLError(text, "the user name is not valid percent-encoded UTF-8")
            }
            var password: String?
            if let passwordPart {
                guard let decoded = Self.percentDecoded(passwordPart) else {
                    throw RedisURLError(text, "the password is not valid percent-encoded UTF-8")
                }
                password = decoded
            }
            self.user = user.isEmpty ? nil : user
            self.password = password
            if self.user != nil && self.password == nil {
                throw RedisURLError(text, "a user name needs a password: redis://user:password@host")
            }
            // `redis://:@host`: nothing to send.
            if self.user == nil && self.password == "" { self.password = nil }
        }

        if rest.contains("?") || rest.contains("#") {
            throw RedisURLError(text, "query parameters and fragments are not supported")
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
            guard portPart.allSatisfy(\.isASCIIDigit), portPart.count <= 5, let port = Int(portPart), (1...65535).contains(port) else {
                throw RedisURLError(text, "port must be a number from 1 to 65535")
            }
            self.port = port
        } else {
            self.port = Self.defaultPort
        }

        if path.isEmpty {
            self.database = 0
        } else {
            // Redis has 16 databases by default and at most 2^31 (its `databases` setting).
            guard path.allSatisfy(\.isASCIIDigit), path.count <= 10, let database = Int(path), database <= Int(Int32.max) else {
                throw RedisURLError(text, "database must be a number from 0 to 2147483647, as in redis://host:6379/0")
            }
            self.database = database
        }
    }

    /// Whether `AUTH` is sent when connecting.
    public var hasCredentials: Bool { self.password != nil }

    /// The URL with the password replaced by `***`: `redis://user:***@host:6379/0`.
    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        var credentials = ""
        if self.password != nil { credentials = "\(self.user ?? ""):***@" }
        return "\(self.usesTLS ? "rediss" : "redis")://\(credentials)\(host):\(self.port)/\(self.database)"
    }

    public var debugDescription: String { self.description }

    /// `text` with whatever stands where a password would be replaced by `***`, for a URL
    /// that may not parse (configuration errors): everything between the first `:` after
    /// `://` and the last `@`, or all before that `@` when there is no `:` (a password put
    /// where the user name goes).
    public static func masked(_ text: String) -> String {
        guard let schemeEnd = text.firstRange(of: "://"), let at = text[schemeEnd.upperBound...].lastIndex(of: "@") else {
            return text
        }
        let userInfo = text[schemeEnd.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else {
            return String(text[..<schemeEnd.upperBound]) + "***" + String(text[at...])
        }
        return String(text[..<text.index(after: colon)]) + "***" + String(text[at...])
    }

    /// `%XX` escapes decoded as UTF-8; nil for a bad escape or bytes that are not UTF-8.
    static func percentDecoded(_ text: Substring) -> String? {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var utf8 = text.utf8[...]
        while let byte = utf8.popFirst() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.popFirst().flatMap(Self.hexValue), let low = utf8.popFirst().flatMap(Self.hexValue) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        let decoded = String(decoding: bytes, as: UTF8.self)
        // Decoding replaces invalid sequences; a round trip that changes the bytes had some.
        return decoded.utf8.elementsEqual(bytes) ? decoded : nil
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// A Redis URL that could not be used, with the reason. The URL is kept masked (no password).
public struct RedisURLError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The URL as given, with its password replaced by `***`.
    public var url: String
    public var reason: String

    init(_ url: String, _ reason: String) {
        self.url = RedisURL.masked(url)
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
