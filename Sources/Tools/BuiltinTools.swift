import Foundation
import Inference
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// `current_time`: the date and time now, in UTC or a named IANA time zone.
public struct CurrentTimeTool: Tool {
    public let name = "current_time"
    public let description = "The current date and time. Optionally in an IANA time zone such as Europe/Paris."
    public let parameters = #"{"type":"object","properties":{"timezone":{"type":"string","description":"IANA time zone name, e.g. America/New_York; UTC when omitted","maxLength":64}},"additionalProperties":false}"#
    let clock: @Sendable () -> Date

    public init(clock: @escaping @Sendable () -> Date = { Date() }) {
        self.clock = clock
    }

    public func run(_ arguments: ToolArguments) async throws -> String {
        let name = arguments.string("timezone") ?? "UTC"
        guard let zone = TimeZone(identifier: name) else { throw ToolError("unknown time zone \"\(name)\"") }
        let now = self.clock()
        let style = Date.ISO8601FormatStyle(timeZoneSeparator: .colon, includingFractionalSeconds: false, timeZone: zone)
        let object: [String: Any] = [
            "iso8601": style.format(now), "timezone": zone.identifier, "unix": Int(now.timeIntervalSince1970),
            "utc_offset_seconds": zone.secondsFromGMT(for: now),
        ]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

/// `calculator`: arithmetic by a parser of its own (no `eval`, no NSExpression).
public struct CalculatorTool: Tool {
    public let name = "calculator"
    public let description = "Evaluates an arithmetic expression: + - * / % ^, parentheses, sqrt, ln, log, sin, cos, tan, abs, min, max, round, pi, e."
    public let parameters = #"{"type":"object","properties":{"expression":{"type":"string","description":"e.g. (2+3)*4^2 or sqrt(2)/2","minLength":1,"maxLength":1024}},"required":["expression"],"additionalProperties":false}"#

    public init() {}

    public func run(_ arguments: ToolArguments) async throws -> String {
        let expression = arguments.string("expression") ?? ""
        do {
            return Calculator.format(try Calculator.evaluate(expression))
        } catch {
            throw ToolError(error.description)
        }
    }
}

/// `http_get`: fetches a page from an allowed host and port (off unless hosts are configured).
/// Only `http`/`https`, no redirects followed, the answer cut at `maximumBytes`. Every address
/// the host resolves to is checked by `HTTPGetPolicy` before the connection, which then goes to
/// the checked address: a model cannot be talked into fetching loopback, a private network or
/// the cloud metadata service (SSRF), not even through a listed name that resolves there.
public struct HTTPGetTool: Tool {
    public let name = "http_get"
    public let description = "Fetches a URL with HTTP GET and returns the status and the beginning of the body. Only some hosts are allowed."
    public let parameters = #"{"type":"object","properties":{"url":{"type":"string","description":"an http:// or https:// URL","minLength":8,"maxLength":2048}},"required":["url"],"additionalProperties":false}"#
    let policy: HTTPGetPolicy
    let timeout: TimeAmount
    let maximumBytes: Int
    let eventLoopGroup: any EventLoopGroup
    let resolve: @Sendable (_ host: String, _ port: Int) async throws -> [IPAddressBytes]

    public init(
        allowedHosts: [String], allowedNetworks: [String] = [], timeout: TimeAmount = .seconds(10), maximumBytes: Int = 16 * 1024,
        eventLoopGroup: any EventLoopGroup
    ) throws(HTTPGetPolicy.InvalidEntry) {
        try self.init(
            policy: HTTPGetPolicy(allowedHosts: allowedHosts, allowedNetworks: allowedNetworks), timeout: timeout, maximumBytes: maximumBytes,
            eventLoopGroup: eventLoopGroup, resolve: HostResolver.resolve)
    }

    init(
        policy: HTTPGetPolicy, timeout: TimeAmount, maximumBytes: Int, eventLoopGroup: any EventLoopGroup,
        resolve: @escaping @Sendable (_ host: String, _ port: Int) async throws -> [IPAddressBytes]
    ) {
        self.policy = policy
        self.timeout = timeout
        self.maximumBytes = maximumBytes
        self.eventLoopGroup = eventLoopGroup
        self.resolve = resolve
    }

    public func run(_ arguments: ToolArguments) async throws -> String {
        let text = arguments.string("url") ?? ""
        guard let url = URL(string: text) else { throw ToolError("not an http(s) URL: \(text.prefix(200))") }
        let (host, port, _) = try self.policy.target(of: url).get()
        let addresses: [IPAddressBytes]
        if let literal = IPAddressBytes(host) {
            addresses = [literal]
        } else {
            do {
                addresses = try await self.resolve(host, port)
            } catch {
                throw ToolError("cannot resolve \(host): \(error)")
            }
        }
        guard let address = addresses.first(where: { self.policy.permits($0, host: host) }) else {
            let shown = addresses.prefix(4).map(\.description).joined(separator: ", ")
            throw ToolError("\(host) resolves to \(shown.isEmpty ? "no address" : shown): not a public address, and not listed in tools.http_get_allowed_networks")
        }
        let response: SimpleHTTPClient.Response
        do {
            let socketAddress = try SocketAddress(packedIPAddress: ByteBuffer(bytes: address.bytes), port: port)
            response = try await SimpleHTTPClient.request(
                .GET, url: url, connectingTo: socketAddress, timeout: self.timeout, on: self.eventLoopGroup.next())
        } catch {
            throw ToolError("fetch failed: \(error)")
        }
        var body = response.body
        let bytes = body.readBytes(length: min(body.readableBytes, self.maximumBytes)) ?? []
        let object: [String: Any] = [
            "status": response.status, "body": String(decoding: bytes, as: UTF8.self),
            "truncated": response.body.readableBytes > self.maximumBytes,
        ]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

/// Name resolution off the event loops: getaddrinfo blocks, so it runs on NIO's thread pool.
enum HostResolver {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    @Sendable static func resolve(_ host: String, port: Int) async throws -> [IPAddressBytes] {
        try await NIOThreadPool.singleton.runIfActive {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &list)
            guard status == 0, let first = list else {
                throw Failure(description: String(cString: gai_strerror(status)))
            }
            defer { freeaddrinfo(first) }
            var addresses: [IPAddressBytes] = []
            var next: UnsafeMutablePointer<addrinfo>? = first
            while let info = next, addresses.count < 64 {
                if let sockaddr = info.pointee.ai_addr {
                    switch info.pointee.ai_family {
                    case AF_INET:
                        let address = sockaddr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                        if let bytes = withUnsafeBytes(of: address, { IPAddressBytes(bytes: Array($0)) }) { addresses.append(bytes) }
                    case AF_INET6:
                        let address = sockaddr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                        if let bytes = withUnsafeBytes(of: address, { IPAddressBytes(bytes: Array($0)) }) { addresses.append(bytes) }
                    default:
                        break
                    }
                }
                next = info.pointee.ai_next
            }
            return addresses
        }
    }
}

/// A tool defined in configuration: the arguments are POSTed as JSON to `url`, and the response
/// body (2xx) is the result. How an operator adds a tool without writing Swift.
public struct WebhookTool: Tool {
    public let name: String
    public let description: String
    public let parameters: String
    let url: URL
    let timeout: TimeAmount
    let eventLoopGroup: any EventLoopGroup

    public init(name: String, description: String, parameters: String, url: URL, timeout: TimeAmount, eventLoopGroup: any EventLoopGroup) {
        self.name = name
        self.description = description
        self.parameters = parameters
        self.url = url
        self.timeout = timeout
        self.eventLoopGroup = eventLoopGroup
    }

    public func run(_ arguments: ToolArguments) async throws -> String {
        let response: SimpleHTTPClient.Response
        do {
            response = try await SimpleHTTPClient.request(
                .POST, url: self.url, body: ByteBuffer(string: arguments.json), timeout: self.timeout, on: self.eventLoopGroup.next())
        } catch {
            throw ToolError("the tool's service failed: \(error)")
        }
        let body = String(buffer: response.body)
        guard (200..<300).contains(response.status) else {
            throw ToolError("the tool's service answered HTTP \(response.status): \(body.prefix(500))")
        }
        return body
    }
}
