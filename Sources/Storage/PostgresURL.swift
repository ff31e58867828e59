import Foundation

/// Where PostgreSQL is: `postgres://user[:password]@host[:port]/database[?sslmode=…]`
/// (`postgresql://` too; port 5432 by default). User, password and database may be
/// percent-encoded. `sslmode` follows libpq: `disable`, `prefer` (the default: TLS if the server
/// offers it, certificate not checked), `require` (TLS, certificate not checked), `verify-full`
/// (TLS, certificate and host name checked). Any other parameter is rejected rather than ignored.
public struct PostgresURL: Sendable, Hashable, CustomStringConvertible {
    public enum TLSMode: String, Sendable, Hashable {
        case disable
        case prefer
        case require
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tls: TLSMode

    public static let defaultPort = 5432

    public init(
        host: String, port: Int = PostgresURL.defaultPort, username: String, password: String?,
        database: String, tls: TLSMode = .prefer
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Parses a `--database-url`. IPv6 hosts go in brackets: `postgres://u@[::1]:5432/db`.
    public init(_ string: String) throws(PostgresURLError) {
        let text = string.trimmingCharacters(in: .whitespaces)
        guard let schemeEnd = text.firstRange(of: "://") else {
            throw PostgresURLError(text, "expected postgres://user:password@host:port/database")
        }
        let scheme = text[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "postgres" || scheme == "postgresql" else {
            throw PostgresURLError(text, "unsupported scheme \"\(scheme)\"; expected postgres://")
        }
        var rest = text[schemeEnd.upperBound...]
        if rest.contains("#") { throw PostgresURLError(text, "fragments are not supported") }

        var tls = TLSMode.prefer
        if let question = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: question)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, parts[0] == "sslmode" else {
                    throw PostgresURLError(text, "unsupported parameter \"\(pair)\" (only sslmode is)")
                }
                guard let mode = TLSMode(rawValue: parts[1]) else {
                    throw PostgresURLError(text, "sslmode must be disable, prefer, require or verify-full")
                }
                tls = mode
            }
            rest = rest[..<question]
        }

        // The last "@" separates the credentials: an unencoded "@" in a password still works.
        guard let at = rest.lastIndex(of: "@") else {
            throw PostgresURLError(text, "missing user name (postgres://user@host/database)")
        }
        let credentials = rest[..<at]
        rest = rest[rest.index(after: at)...]

        let userPart: Substring
        var passwordPart: Substring?
        if let colon = credentials.firstIndex(of: ":") {
            userPart = credentials[..<colon]
            passwordPart = credentials[credentials.index(after: colon)...]
        } else {
            userPart = credentials
        }
        guard let username = String(userPart).removingPercentEncoding, !username.isEmpty else {
            throw PostgresURLError(text, "missing or badly encoded user name")
        }
        var password: String?
        if let passwordPart {
            guard let decoded = String(passwordPart).removingPercentEncoding else {
                throw PostgresURLError(text, "badly percent-encoded password")
            }
            password = decoded
        }

        guard let slash = rest.firstIndex(of: "/") else {
            throw PostgresURLError(text, "missing database name (…/database)")
        }
        let databasePart = rest[rest.index(after: slash)...]
        rest = rest[..<slash]
        guard let database = String(databasePart).removingPercentEncoding, !database.isEmpty, !database.contains("/") else {
            throw PostgresURLError(text, "missing or invalid database name")
        }

        let hostPart: Substring
        var portPart: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw PostgresURLError(text, "unterminated IPv6 address") }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw PostgresURLError(text, "unexpected text after the IPv6 address") }
                portPart = after.dropFirst()
            }
        } else if let colon = rest.firstIndex(of: ":") {
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        } else {
            hostPart = rest
        }
        guard !hostPart.isEmpty else { throw PostgresURLError(text, "missing host") }

        var port = Self.defaultPort
        if let portPart {
            guard !portPart.isEmpty, portPart.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let value = Int(portPart), (1...65535).contains(value)
            else {
                throw PostgresURLError(text, "port must be a number from 1 to 65535")
            }
            port = value
        }
        self.init(host: String(hostPart), port: port, username: username, password: password,
                  database: database, tls: tls)
    }

    /// The URL with the password masked, for logs.
    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        let password = self.password == nil ? "" : ":***"
        return "postgres://\(self.username)\(password)@\(host):\(self.port)/\(self.database)?sslmode=\(self.tls.rawValue)"
    }
}

/// A `--database-url` that could not be used, with the reason. The URL in `description` has its
/// password masked.
public struct PostgresURLError: Error, Sendable, Hashable, CustomStringConvertible {
    public var url: String
    public var reason: String

    init(_ url: String, _ reason: String) {
        self.url = Self.masked(url)
        self.reason = reason
    }

    public var description: String { "invalid database URL \"\(self.url)\": \(self.reason)" }

    /// Hides whatever sits between the first ":" after "://" and the last "@".
    private static func masked(_ url: String) -> String {
        guard let schemeEnd = url.firstRange(of: "://"), let at = url.lastIndex(of: "@"), at > schemeEnd.upperBound else {
            return url
        }
        let credentials = url[schemeEnd.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return url }
        return String(url[..<url.index(after: colon)]) + "***" + String(url[at...])
    }
}
