import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing
@testable import WSServer

/// Which pages may reach the server through their visitors' browsers: the rule itself, and the
/// application's HTTP routes on the real pipeline (`EmbeddedChannel`), where a "simple"
/// cross-site POST needs no CORS preflight.
@Suite struct OriginCheckTests {
    static func headers(_ origins: [String]) -> HTTPHeaders {
        HTTPHeaders(origins.map { ("Origin", $0) })
    }

    @Test func loopbackPagesOnlyByDefault() {
        let configuration = WebSocketServerConfiguration()
        let allowed = ["http://localhost", "http://localhost:3000", "https://LOCALHOST:8443", "http://127.0.0.1:8080", "http://[::1]:5173", "https://[::1]"]
        for origin in allowed {
            #expect(OriginCheck.allows(Self.headers([origin]), configuration: configuration), "\(origin)")
        }
        let refused = [
            "https://evil.example", "http://localhost.evil.example", "http://127.0.0.1.evil.example", "http://localhost:80x",
            "null", "file://", "http://127.0.0.2", "ws://localhost", "http://localhost:123456", "http://[::1]evil",
        ]
        for origin in refused {
            #expect(!OriginCheck.allows(Self.headers([origin]), configuration: configuration), "\(origin)")
        }
        // Not a browser: allowed. Two Origins: no browser sends that.
        #expect(OriginCheck.allows(HTTPHeaders(), configuration: configuration))
        #expect(!OriginCheck.allows(Self.headers(["http://localhost", "https://evil.example"]), configuration: configuration))
    }

    @Test func aConfiguredListOrAnyOrigin() {
        var listed = WebSocketServerConfiguration()
        listed.allowedOrigins = ["https://app.example"]
        #expect(OriginCheck.allows(Self.headers(["https://APP.example"]), configuration: listed))
        #expect(!OriginCheck.allows(Self.headers(["http://localhost:3000"]), configuration: listed), "the list replaces the loopback default")
        #expect(!OriginCheck.allows(Self.headers(["https://evil.example"]), configuration: listed))
        listed.allowedOrigins = ["*"]
        #expect(OriginCheck.allows(Self.headers(["https://evil.example"]), configuration: listed))
        var open = WebSocketServerConfiguration()
        open.defaultOrigins = .any
        #expect(OriginCheck.allows(Self.headers(["https://evil.example"]), configuration: open))
    }

    /// Counts the requests that reached the application.
    final class CountingRoutes: HTTPRouteProvider {
        let calls = Atomic<Int>(0)

        func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
            head.uri == "/v1/chat/stream" ? Responder(routes: self) : nil
        }

        final class Responder: HTTPRouteResponder {
            let routes: CountingRoutes
            var maxRequestBodyBytes: Int { 1024 }
            init(routes: CountingRoutes) { self.routes = routes }
            func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
                self.routes.calls.add(1, ordering: .relaxed)
                writer.respond(status: .ok, contentType: "text/plain", body: ByteBuffer(string: "streamed"))
            }
            func clientDisconnected() {}
        }
    }

    /// The status line of the answer to a text/plain POST from `origin`, and whether the route ran.
    static func post(origin: String?, configure: (inout WebSocketServerConfiguration) -> Void = { _ in }) throws -> (String, Bool) {
        var configuration = WebSocketServerConfiguration()
        configure(&configuration)
        let routes = CountingRoutes()
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try WebSocketServer.configurePipeline(
            channel, shared: ServerShared(configuration: configuration, application: EchoApplication(), httpRoutes: routes), sslContext: nil)
        let body = #"{"content":"exfiltrate"}"#
        var request = "POST /v1/chat/stream HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
        if let origin { request += "Origin: \(origin)\r\n" }
        try channel.writeInbound(ByteBuffer(string: request + "\r\n" + body))
        var response = ""
        while let part = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let buffer) = part { response += String(buffer: buffer) }
        }
        let statusLine = response.split(separator: "\r\n").first.map(String.init) ?? ""
        return (statusLine, routes.calls.load(ordering: .relaxed) == 1)
    }

    @Test func applicationRoutesRefuseOtherPages() throws {
        #expect(try Self.post(origin: "https://evil.example") == ("HTTP/1.1 403 Forbidden", false))
        #expect(try Self.post(origin: "http://localhost:3000") == ("HTTP/1.1 200 OK", true))
        #expect(try Self.post(origin: nil) == ("HTTP/1.1 200 OK", true))
        let listed: (inout WebSocketServerConfiguration) -> Void = { $0.allowedOrigins = ["https://app.example"] }
        #expect(try Self.post(origin: "https://evil.example", configure: listed) == ("HTTP/1.1 403 Forbidden", false))
        #expect(try Self.post(origin: "https://app.example", configure: listed) == ("HTTP/1.1 200 OK", true))
        #expect(try Self.post(origin: "https://evil.example", configure: { $0.defaultOrigins = .any }) == ("HTTP/1.1 200 OK", true))
    }
}
