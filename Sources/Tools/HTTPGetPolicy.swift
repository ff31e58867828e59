import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Where `http_get` may go, decided before any connection: the URL's host and port must be on
/// the allow-list, and every address the host resolves to is checked again, so a listed name
/// that resolves (or is re-pointed by its owner) to loopback, a private network or a cloud
/// metadata address is refused. The connection then goes to the address that was checked, not
/// to a second resolution of the name (which could answer differently: DNS rebinding).
///
/// Allow-list entries: `host` (the scheme's default port only: 80 for http, 443 for https),
/// `host:port`, `[v6]` or `[v6]:port`. Names match exactly, case-insensitively. Addresses in
/// non-public ranges are reached only when listed: an entry that is that IP literal itself, or
/// a network of `allowedNetworks` (CIDR, e.g. `10.20.0.0/16`).
public struct HTTPGetPolicy: Sendable, Equatable {
    struct Entry: Sendable, Equatable, Hashable {
        var host: String
        /// nil: the scheme's default port.
        var port: Int?
    }

    let entries: Set<Entry>
    let networks: [IPNetwork]

    public struct InvalidEntry: Error, Equatable, CustomStringConvertible {
        public var entry: String
        public var reason: String
        public var description: String { "\(self.entry): \(self.reason)" }
    }

    public init(allowedHosts: [String], allowedNetworks: [String] = []) throws(InvalidEntry) {
        var entries: Set<Entry> = []
        for text in allowedHosts {
            entries.insert(try Self.parseEntry(text))
        }
        var networks: [IPNetwork] = []
        for text in allowedNetworks {
            guard let network = IPNetwork(cidr: text) else {
                throw InvalidEntry(entry: text, reason: "expected a network in CIDR notation, e.g. 10.0.0.0/8 or fd00::/8")
            }
            networks.append(network)
        }
        self.entries = entries
        self.networks = networks
    }

    static func parseEntry(_ text: String) throws(InvalidEntry) -> Entry {
        let entry = text.trimmingCharacters(in: .whitespaces).lowercased()
        guard !entry.isEmpty, entry.utf8.count <= 255 else { throw InvalidEntry(entry: text, reason: "empty or too long") }
        var host = Substring(entry)
        var port: Int?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw InvalidEntry(entry: text, reason: "unterminated IPv6 address") }
            let after = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let value = Int(after.dropFirst()), (1...65535).contains(value) else {
                    throw InvalidEntry(entry: text, reason: "expected [address]:port with a port from 1 to 65535")
                }
                port = value
            }
        } else if let colon = host.lastIndex(of: ":") {
            guard host.firstIndex(of: ":") == colon else {
                throw InvalidEntry(entry: text, reason: "write an IPv6 address in brackets, e.g. [2001:db8::1]:8080")
            }
            guard let value = Int(host[host.index(after: colon)...]), (1...65535).contains(value) else {
                throw InvalidEntry(entry: text, reason: "the port must be a number from 1 to 65535")
            }
            port = value
            host = host[..<colon]
        }
        guard !host.isEmpty, !host.contains("/"), !host.contains("@") else { throw InvalidEntry(entry: text, reason: "expected host or host:port") }
        return Entry(host: String(host), port: port)
    }

    /// What the URL may be fetched as: its host (brackets removed) and port, or why not.
    func target(of url: URL) -> Result<(host: String, port: Int, isTLS: Bool), ToolError> {
        guard let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https", var host = url.host?.lowercased(), !host.isEmpty else {
            return .failure(ToolError("not an http(s) URL: \(url.absoluteString.prefix(200))"))
        }
        if url.user != nil || url.password != nil { return .failure(ToolError("URLs with credentials are not fetched")) }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let isTLS = scheme == "https"
        let defaultPort = isTLS ? 443 : 80
        let port = url.port ?? defaultPort
        guard (1...65535).contains(port) else { return .failure(ToolError("port \(port) is out of range")) }
        let allowed = self.entries.contains(Entry(host: host, port: port)) || (port == defaultPort && self.entries.contains(Entry(host: host, port: nil)))
        guard allowed else {
            let list = self.entries.map { $0.port.map { [host = $0.host] in "\(host):\($0)" } ?? $0.host }.sorted().joined(separator: ", ")
            return .failure(ToolError("\(host):\(port) is not on the allow-list (\(list))"))
        }
        return .success((host, port, isTLS))
    }

    /// Whether a resolved address of `host` may be connected to: a public address, or one the
    /// operator listed (the host entry is this very IP literal, or it is in an allowed network).
    func permits(_ address: IPAddressBytes, host: String) -> Bool {
        if address.isPublic { return true }
        if let literal = IPAddressBytes(host), literal == address { return true }
        return self.networks.contains { $0.contains(address) }
    }
}

/// An IPv4 or IPv6 address as its bytes (4 or 16).
struct IPAddressBytes: Sendable, Equatable, Hashable, CustomStringConvertible {
    let bytes: [UInt8]

    init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses a literal (`127.0.0.1`, `::1`); nil for a name.
    init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.bytes = withUnsafeBytes(of: &v6) { Array($0) }
            return
        }
        return nil
    }

    var description: String {
        if self.bytes.count == 4 { return self.bytes.map(String.init).joined(separator: ".") }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        var address = in6_addr()
        withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: self.bytes) }
        guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The IPv4 address an IPv6 one stands for (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`,
    /// 6to4 `2002:AABB:CCDD::`), which is what the connection really reaches.
    var embeddedIPv4: IPAddressBytes? {
        guard self.bytes.count == 16 else { return nil }
        let b = self.bytes
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF { return IPAddressBytes(bytes: Array(b[12..<16])) }
        if b[0..<12] == [0x00, 0x64, 0xFF, 0x9B, 0, 0, 0, 0, 0, 0, 0, 0] { return IPAddressBytes(bytes: Array(b[12..<16])) }
        if b[0] == 0x20 && b[1] == 0x02 { return IPAddressBytes(bytes: Array(b[2..<6])) }
        return nil
    }

    /// Not loopback, private, link-local (cloud metadata lives at 169.254.169.254), shared
    /// (CGNAT), multicast, reserved or documentation space (RFC 6890's special-purpose registries).
    var isPublic: Bool {
        if let v4 = self.embeddedIPv4 { return v4.isPublic }
        return !Self.special.contains { $0.contains(self) }
    }

    static let special: [IPNetwork] = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
        "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
        "224.0.0.0/4", "240.0.0.0/4",
        "::/127", "::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    ].map { IPNetwork(cidr: $0)! }
}

/// A network in CIDR notation.
struct IPNetwork: Sendable, Equatable, Hashable {
    let base: IPAddressBytes
    let prefixLength: Int

    init?(cidr: String) {
        let parts = cidr.trimmingCharacters(in: .whitespaces).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let base = IPAddressBytes(String(parts[0])), let length = Int(parts[1]),
              (0...(base.bytes.count * 8)).contains(length)
        else { return nil }
        self.base = base
        self.prefixLength = length
    }

    func contains(_ address: IPAddressBytes) -> Bool {
        guard address.bytes.count == self.base.bytes.count else { return false }
        var remaining = self.prefixLength
        for (a, b) in zip(address.bytes, self.base.bytes) where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if a & mask != b & mask { return false }
            remaining -= bits
        }
        return true
    }
}
