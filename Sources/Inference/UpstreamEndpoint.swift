import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix
import NIOSSL

/// How long an upstream may take, shared by the HTTP engines.
public struct UpstreamTimeouts: Sendable, Equatable {
    /// TCP connect (DNS included).
    public var connect: TimeAmount
    /// From sending the request to the first stream event.
    public var timeToFirstToken: TimeAmount
    /// Between two stream events once the first has arrived.
    public var betweenTokens: TimeAmount

    public init(connect: TimeAmount = .seconds(5), timeToFirstToken: TimeAmount = .seconds(60), betweenTokens: TimeAmount = .seconds(30)) {
        self.connect = connect
        self.timeToFirstToken = timeToFirstToken
        self.betweenTokens = betweenTokens
    }
}

/// An engine configuration that cannot work.
public enum UpstreamConfigurationError: Error, Equatable {
    /// Not an absolute `http://` or `https://` URL with a host.
    case invalidBaseURL(String)
    /// The TLS client context could not be made (e.g. unreadable trust roots).
    case tls(String)
}

/// Where an upstream lives: host, port, path prefix and TLS, parsed once per engine.
struct UpstreamEndpoint: Sendable {
    let host: String
    let port: Int
    /// The base URL's path without a trailing slash ("" for none).
    let basePath: String
    let hostHeader: String
    /// Made once: loading trust roots is far too slow for every connection.
    let tlsContext: NIOSSLContext?
    /// SNI and certificate name; nil for IP literals (SNI must not carry them).
    let serverHostname: String?

    init(baseURL: URL, trustRoots: NIOSSLTrustRoots) throws(UpstreamConfigurationError) {
        guard let scheme = baseURL.scheme?.lowercased(), scheme == "http" || scheme == "https",
              var host = baseURL.host, !host.isEmpty
        else { throw .invalidBaseURL(baseURL.absoluteString) }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let isTLS = scheme == "https"
        self.host = host
        self.port = baseURL.port ?? (isTLS ? 443 : 80)
        var path = baseURL.path(percentEncoded: true)
        while path.hasSuffix("/") { path.removeLast() }
        self.basePath = path
        let isIPLiteral = (try? SocketAddress(ipAddress: host, port: 0)) != nil
        let bracketed = host.contains(":") ? "[\(host)]" : host
        self.hostHeader = baseURL.port.map { "\(bracketed):\($0)" } ?? bracketed
        self.serverHostname = isTLS && !isIPLiteral ? host : nil
        if isTLS {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = trustRoots
            do {
                self.tlsContext = try NIOSSLContext(configuration: tls)
            } catch {
                throw .tls("\(error)")
            }
        } else {
            self.tlsContext = nil
        }
    }

    func requestHead(
        _ method: HTTPMethod, path: String, apiKey: String?, bodyLength: Int?, accept: String,
        extraHeaders: [(name: String, value: String)] = []
    ) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.reserveCapacity(7 + extraHeaders.count)
        headers.add(name: "Host", value: self.hostHeader)
        headers.add(name: "User-Agent", value: "sluice")
        headers.add(name: "Accept", value: accept)
        if let bodyLength {
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(bodyLength))
        }
        if let apiKey {
            headers.add(name: "Authorization", value: "Bearer \(apiKey)")
        }
        for header in extraHeaders { headers.add(name: header.name, value: header.value) }
        // One request per connection: closing it is how a generation is stopped upstream.
        headers.add(name: "Connection", value: "close")
        return HTTPRequestHead(version: .http1_1, method: method, uri: self.basePath + path, headers: headers)
    }

    /// Connects a new channel on `eventLoop` (so its reads arrive there with no hop), with TLS
    /// and the HTTP/1.1 client codec in place; `addHandlers` adds the rest. With a host name,
    /// Happy Eyeballs may call `addHandlers` for several channels: only the returned one won.
    /// `address`, when given, is connected to instead of resolving the host.
    func connect(
        on eventLoop: any EventLoop, to address: SocketAddress? = nil, timeout: TimeAmount,
        addHandlers: @escaping @Sendable (any Channel) throws -> Void
    ) -> EventLoopFuture<any Channel> {
        guard let bootstrap = ClientBootstrap(validatingGroup: eventLoop) else {
            return eventLoop.makeFailedFuture(UnsupportedEventLoop())
        }
        let tlsContext = self.tlsContext
        let serverHostname = self.serverHostname
        let configured = bootstrap
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                do {
                    let pipeline = channel.pipeline.syncOperations
                    if let tlsContext {
                        try pipeline.addHandler(try NIOSSLClientHandler(context: tlsContext, serverHostname: serverHostname))
                    }
                    try pipeline.addHTTPClientHandlers()
                    try addHandlers(channel)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        if let address { return configured.connect(to: address) }
        // An IP literal needs no resolver (which would hop to a thread for getaddrinfo).
        if let address = try? SocketAddress(ipAddress: self.host, port: self.port) {
            return configured.connect(to: address)
        }
        return configured.connect(host: self.host, port: self.port)
    }
}

struct UnsupportedEventLoop: Error, CustomStringConvertible {
    var description: String { "the event loop cannot run NIOPosix sockets" }
}

/// What an upstream said when it failed: the usual JSON error shapes, else the body as text.
enum UpstreamErrorMessage {
    static let maximumBodySize = 64 * 1024

    static func from(body: ByteBuffer) -> String {
        if let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any],
           let message = self.from(object: object) {
            return message
        }
        let text = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "no details" : String(text.prefix(512))
    }

    /// `{"error": {"message": …}}` (OpenAI, vLLM, llama.cpp), `{"error": "…"}` (Triton),
    /// `{"message": …}`, `{"detail": …}` (FastAPI).
    static func from(object: [String: Any]) -> String? {
        if let error = object["error"] as? [String: Any] {
            return (error["message"] as? String) ?? (error["msg"] as? String) ?? "upstream error"
        }
        if let error = object["error"] as? String { return error }
        if let message = object["message"] as? String { return message }
        if let detail = object["detail"] as? String { return detail }
        if let detail = object["detail"] { return "\(detail)" }
        return nil
    }
}

extension TimeAmount {
    var milliseconds: String { "\(self.nanoseconds / 1_000_000) ms" }
}
