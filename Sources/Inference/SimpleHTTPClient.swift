import Foundation
import NIOCore
import NIOHTTP1

/// A one-shot HTTP request for callers outside this module (tools that fetch a page or call a
/// webhook): one connection per request, bounded answer (1 MiB), a deadline for the whole.
public enum SimpleHTTPClient {
    public struct Response: Sendable {
        public var status: Int
        public var body: ByteBuffer
    }

    /// - Parameter address: connect here instead of resolving the URL's host (which still goes in
    ///   `Host` and in TLS's SNI and certificate check): for callers that checked the address.
    public static func request(
        _ method: HTTPMethod, url: URL, body: ByteBuffer? = nil, contentType: String = "application/json",
        connectingTo address: SocketAddress? = nil, timeout: TimeAmount, on eventLoop: any EventLoop
    ) async throws -> Response {
        var base = URLComponents(url: url, resolvingAgainstBaseURL: false)
        base?.path = ""
        base?.query = nil
        base?.fragment = nil
        guard let baseURL = base?.url else { throw UpstreamConfigurationError.invalidBaseURL(url.absoluteString) }
        let endpoint = try UpstreamEndpoint(baseURL: baseURL, trustRoots: .default)
        var path = url.path(percentEncoded: true)
        if path.isEmpty { path = "/" }
        if let query = url.query(percentEncoded: true) { path += "?" + query }
        var head = endpoint.requestHead(method, path: path, apiKey: nil, bodyLength: body?.readableBytes, accept: "*/*")
        if body != nil { head.headers.replaceOrAdd(name: "Content-Type", value: contentType) }
        let timeouts = UpstreamTimeouts(connect: timeout, timeToFirstToken: timeout, betweenTokens: timeout)
        let response = try await HTTPFetch.fetch(head, body: body, from: endpoint, address: address, timeouts: timeouts, on: eventLoop).get()
        return Response(status: response.status, body: response.body)
    }
}
