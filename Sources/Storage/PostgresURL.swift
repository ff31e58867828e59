import Foundation

/// Where PostgreSQL is: `postgres://user[:password]@host[:port]/database[?sslmode=…&sslrootcert=…]`
/// (`postgresql://` too; port 5432 by default). User, password, database and parameter values
/// may be percent-encoded. The TLS parameters mean what they mean to libpq:
///
/// - `sslmode`: `disable` (no TLS); `allow` and `prefer` (the default: TLS if the server offers
///   it; `allow` is taken as `prefer`, which only ever tries TLS first); `require` (TLS, the
///   certificate not checked, unless `sslrootcert` is given: then as `verify-ca`); `verify-ca`
///   (TLS, the certificate must chain to a trusted CA); `verify-full` (that, and the host name
///   or IP address in the URL must be the certificate's).
/// - `sslrootcert`: PEM file of the CA certificates to trust (a private CA); `system` or absent:
///   the system's trust store. With `allow`, `prefer` or `require` it turns verification on.
/// - `sslcert` and `sslkey`: PEM client certificate and key, given together.
///
/// Any other parameter is rejected rather than ignored.
public struct PostgresURL: Sendable, Hashable, CustomStringConvertible {
    public enum TLSMode: String, Sendable, Hashable, CaseIterable {
        case disable
        case allow
        case prefer
        case require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    /// What is checked of the server's certificate when TLS is used.
    public enum Verification: Sendable, Hashable {
        /// Nothing: encryption without authentication (a man in the middle is not detected).
        case none
        /// It must chain to a trusted CA (`verify-ca`).
        case certificate
        /// It must chain to a trusted CA and name the host (`verify-full`).
        case full
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tls: TLSMode
    /// `sslrootcert`: the CA certificates to trust; nil: the system's.
    public var rootCertificatePath: String?
    /// `sslcert` and `sslkey`: a client certificate.
    public var clientCertificatePath: String?
    public var clientKeyPath: String?

    public static let defaultPort = 5432
    /// The query parameters understood (libpq's names).
    static let parameters = ["sslmode", "sslrootcert", "sslcert", "sslkey"]

    public init(
        host: String, port: Int = PostgresURL.defaultPort, username: String, password: String?,
        database: String, tls: TLSMode = .prefer, rootCertificatePath: String? = nil,
        clientCertificatePath: String? = nil, clientKeyPath: String? = nil
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
        self.rootCertificatePath = rootCertificatePath
        self.clientCertificatePath = clientCertificatePath
        self.clientKeyPath = clientKeyPath
    }

    /// libpq's rules: the mode decides, and a root certificate makes the weaker modes check the
    /// certificate chain too.
    public var verification: Verification {
        switch self.tls {
        case .verifyFull: .full
        case .verifyCA: .certificate
        case .disable: .none
        case .allow, .prefer, .require: self.rootCertificatePath == nil ? .none : .certificate
        }
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
        var rootCertificatePath: String?
        var clientCertificatePath: String?
        var clientKeyPath: String?
        if let question = rest.firstIndex(of: "?") {
            var seen: Set<String> = []
            for pair in rest[rest.index(after: question)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                let supported = Self.parameters
                guard parts.count == 2, supported.contains(parts[0]) else {
                    throw PostgresURLError(text, "unsupported parameter \"\(pair.split(separator: "=").first ?? "")\" (supported: \(supported.joined(separator: ", ")))")
                }
                guard seen.insert(parts[0]).inserted else {
                    throw PostgresURLError(text, "\(parts[0]) is given twice")
                }
                guard let value = parts[1].removingPercentEncoding, !value.isEmpty else {
                    throw PostgresURLError(text, "\(parts[0]) needs a value")
                }
                switch parts[0] {
                case "sslmode":
                    guard let mode = TLSMode(rawValue: value) else {
                        throw PostgresURLError(text, "sslmode must be one of \(TLSMode.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    tls = mode
                case "sslrootcert": rootCertificatePath = value == "system" ? nil : value
                case "sslcert": clientCertificatePath = value
                default: clientKeyPath = value
                }
            }
            rest = rest[..<question]
        }
        guard (clientCertificatePath == nil) == (clientKeyPath == nil) else {
            throw PostgresURLError(text, "sslcert and sslkey go together")
        }
        if tls == .disable, rootCertificatePath != nil || clientCertificatePath != nil {
            throw PostgresURLError(text, "sslmode=disable uses no TLS: sslrootcert, sslcert and sslkey would be ignored")
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
                  database: database, tls: tls, rootCertificatePath: rootCertificatePath,
                  clientCertificatePath: clientCertificatePath, clientKeyPath: clientKeyPath)
    }

    /// The URL with the password masked, for logs.
    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        let password = self.password == nil ? "" : ":***"
        var text = "postgres://\(self.username)\(password)@\(host):\(self.port)/\(self.database)?sslmode=\(self.tls.rawValue)"
        if let path = self.rootCertificatePath { text += "&sslrootcert=\(path)" }
        if let path = self.clientCertificatePath { text += "&sslcert=\(path)" }
        if let path = self.clientKeyPath { text += "&sslkey=\(path)" }
        return text
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

    /// Hides whatever sits between the first ":" after "://" and the last "@" before the query,
    /// and the values of query parameters that are not libpq's TLS ones (`?password=…`); without
    /// "://" (a typo) everything before the last "@".
    static func masked(_ url: String) -> String {
        guard let schemeEnd = url.firstRange(of: "://") else {
            guard let at = url.lastIndex(of: "@") else { return url }
            return "***" + String(url[at...])
        }
        let end = url[schemeEnd.upperBound...].firstIndex(of: "?") ?? url.endIndex
        var result = String(url[..<end])
        if let at = url[schemeEnd.upperBound..<end].lastIndex(of: "@"),
           let colon = url[schemeEnd.upperBound..<at].firstIndex(of: ":") {
            result = String(url[..<url.index(after: colon)]) + "***" + String(url[at..<end])
        }
        guard end < url.endIndex else { return result }
        let pairs = url[url.index(after: end)...].split(separator: "&", omittingEmptySubsequences: false)
        let query = pairs.map { (pair: Substring) -> String in
            guard let equals = pair.firstIndex(of: "=") else { return String(pair) }
            let name = String(pair[pair.startIndex..<equals])
            return PostgresURL.parameters.contains(name) ? String(pair) : name + "=***"
        }
        return result + "?" + query.joined(separator: "&")
    }
}
