import NIOHTTP1
import Testing
@testable import SluiceTestSupport
@testable import WSServer

@Suite struct HandshakeTests {
    private func request(
        uri: String = "/v1/ws", method: HTTPMethod = .GET, headers extra: [(String, String)] = [],
        omit: Set<String> = []
    ) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        let base = [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
        for (name, value) in base where !omit.contains(name) { headers.add(name: name, value: value) }
        for (name, value) in extra { headers.add(name: name, value: value) }
        return HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)
    }

    @Test func anUpgradeWithoutExactlyOneHostIsRefused() {
        let configuration = WebSocketServerConfiguration()
        #expect(throws: HandshakeRejection(reason: .malformed("an HTTP/1.1 request needs a Host header"))) {
            try WebSocketHandshake.evaluate(self.request(omit: ["Host"]), configuration: configuration).get()
        }
        #expect(throws: HandshakeRejection(reason: .malformed("more than one Host header"))) {
            try WebSocketHandshake.evaluate(self.request(headers: [("Host", "evil.test")]), configuration: configuration).get()
        }
    }

    @Test func acceptKeyMatchesRFC6455Example() {
        #expect(WebSocketHandshake.acceptKey(for: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func acceptsAValidRequestAndPicksTheSubprotocol() throws {
        let result = WebSocketHandshake.evaluate(
            request(uri: "/v1/ws?user=a", headers: [("Sec-WebSocket-Protocol", "chat, sluice.v1")]),
            configuration: .init())
        let agreement = try result.get()
        #expect(agreement.subprotocol == "sluice.v1")
        #expect(agreement.responseHeaders["Sec-WebSocket-Accept"] == ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="])
        #expect(agreement.deflate == nil)
    }

    @Test func noSubprotocolWhenNoneOffered() throws {
        let agreement = try WebSocketHandshake.evaluate(request(), configuration: .init()).get()
        #expect(agreement.subprotocol == nil)
        #expect(agreement.responseHeaders["Sec-WebSocket-Protocol"].isEmpty)
    }

    @Test func rejections() {
        let configuration = WebSocketServerConfiguration()
        func status(_ head: HTTPRequestHead, _ configuration: WebSocketServerConfiguration = .init()) -> HTTPResponseStatus? {
            if case .failure(let rejection) = WebSocketHandshake.evaluate(head, configuration: configuration) { return rejection.status }
            return nil
        }
        #expect(status(request(uri: "/elsewhere")) == .notFound)
        #expect(status(request(method: .POST)) == .methodNotAllowed)
        #expect(status(request(omit: ["Sec-WebSocket-Key"])) == .badRequest)
        #expect(status(request(omit: ["Sec-WebSocket-Version"])) == .badRequest)
        #expect(status(request(headers: [("Sec-WebSocket-Version", "8")], omit: ["Sec-WebSocket-Version"])) == .upgradeRequired)
        #expect(status(request(headers: [("Sec-WebSocket-Key", "short")], omit: ["Sec-WebSocket-Key"])) == .badRequest)
        #expect(status(request(headers: [("Connection", "keep-alive")], omit: ["Connection"])) == .badRequest)
        var restricted = configuration
        restricted.allowedOrigins = ["https://chat.example"]
        #expect(status(request(headers: [("Origin", "https://evil.example")]), restricted) == .forbidden)
        // No Origin: not a browser, and anything else can send any header (OriginCheck).
        #expect(status(request(), restricted) == nil)
        #expect(status(request(headers: [("Origin", "https://CHAT.example")]), restricted) == nil)
        // Nothing configured: loopback pages only, by default.
        #expect(status(request(headers: [("Origin", "https://evil.example")])) == .forbidden)
        #expect(status(request(headers: [("Origin", "http://localhost:5173")])) == nil)
    }

    @Test func base64RoundTrip() {
        for length in 0..<20 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 * 37 + 11) }
            #expect(WebSocketHandshake.base64Decode(WebSocketHandshake.base64Encode(bytes)) == bytes)
        }
        #expect(WebSocketHandshake.base64Decode("abc") == nil)
        #expect(WebSocketHandshake.base64Decode("a=bc") == nil)
    }
}
