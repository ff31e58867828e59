import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing
@testable import SluiceTestSupport
@testable import WSServer

/// The HTTP side of a connection on an `EmbeddedChannel` with the server's real pipeline: raw
/// request bytes in, raw response bytes out, time advanced by hand.
@Suite struct HTTPRouteHandlerTests {
    /// An application route that takes bodies up to `limit` and answers with what it got.
    final class EchoBodyRoute: HTTPRouteProvider, @unchecked Sendable {
        // @unchecked: used from the single EmbeddedEventLoop thread only.
        final class Responder: HTTPRouteResponder {
            let route: EchoBodyRoute
            init(route: EchoBodyRoute) { self.route = route }
            var maxRequestBodyBytes: Int { self.route.limit }
            func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
                self.route.bodies.append(body.readableBytes)
                if self.route.holdResponses {
                    self.route.writers.append(writer)
                    return
                }
                writer.respond(status: .ok, contentType: "text/plain", body: ByteBuffer(string: "got \(body.readableBytes)"))
            }
            func clientDisconnected() {}
        }

        let limit: Int
        var bodies: [Int] = []
        var holdResponses = false
        var writers: [HTTPResponseWriter] = []
        init(limit: Int) { self.limit = limit }

        func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
            head.uri.hasPrefix("/app") ? Responder(route: self) : nil
        }
    }

    struct Harness {
        let channel: EmbeddedChannel
        let shared: ServerShared
        let route: EchoBodyRoute

        init(limit: Int = 1000, budget: MemoryBudget = .unlimited(), configure: (inout WebSocketServerConfiguration) -> Void = { _ in }) throws {
            var configuration = WebSocketServerConfiguration()
            configuration.handshakeTimeout = .seconds(10)
            configuration.idleTimeout = .seconds(30)
            configure(&configuration)
            self.route = EchoBodyRoute(limit: limit)
            self.shared = ServerShared(configuration: configuration, application: EchoApplication(), httpRoutes: self.route, budget: budget)
            self.channel = EmbeddedChannel()
            try WebSocketServer.configurePipeline(self.channel, shared: self.shared, sslContext: nil)
            try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        /// Another connection to the same server.
        init(sharing other: Harness) throws {
            self.route = other.route
            self.shared = other.shared
            self.channel = EmbeddedChannel(loop: other.loop)
            try WebSocketServer.configurePipeline(self.channel, shared: self.shared, sslContext: nil)
            try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        }

        func send(_ text: String) throws {
            try self.channel.writeInbound(ByteBuffer(string: text))
        }

        func send(_ bytes: ByteBuffer) throws {
            try self.channel.writeInbound(bytes)
        }

        /// Everything written since the last call.
        func output() throws -> String {
            var text = ""
            while let data = try self.channel.readOutbound(as: IOData.self) {
                if case .byteBuffer(let buffer) = data { text += String(buffer: buffer) }
            }
            return text
        }

        var isActive: Bool { self.channel.isActive }
        var loop: EmbeddedEventLoop { self.channel.embeddedEventLoop }
    }

    static func statusLines(_ output: String) -> [String] {
        output.components(separatedBy: "\r\n").filter { $0.hasPrefix("HTTP/1.1 ") }
    }

    // MARK: Keep-alive timers

    @Test func anIdleKeepAliveConnectionIsClosedAfterEveryResponse() throws {
        let harness = try Harness()
        // An application route's (streamed) response: the timer used to be cancelled for good.
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        #expect(Self.statusLines(try harness.output()) == ["HTTP/1.1 200 OK"])
        harness.loop.advanceTime(by: .seconds(29))
        #expect(harness.isActive)
        // A second request on the same connection, then idle again: the timer starts over.
        try harness.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(Self.statusLines(try harness.output()) == ["HTTP/1.1 200 OK"])
        harness.loop.advanceTime(by: .seconds(29))
        #expect(harness.isActive)
        harness.loop.advanceTime(by: .seconds(1))
        #expect(!harness.isActive)
    }

    @Test func noTimerRunsWhileAResponseIsProducedAndTheIdleOneFollowsIt() throws {
        let harness = try Harness()
        harness.route.holdResponses = true
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
        // A long stream: neither the handshake nor the idle timeout cuts it.
        harness.loop.advanceTime(by: .seconds(300))
        #expect(harness.isActive)
        let writer = try #require(harness.route.writers.first)
        writer.respond(status: .ok, contentType: "text/plain", body: ByteBuffer(string: "late"))
        #expect(Self.statusLines(try harness.output()) == ["HTTP/1.1 200 OK"])
        harness.loop.advanceTime(by: .seconds(30))
        #expect(!harness.isActive)
    }

    @Test func aRequestThatHasBegunMustArriveWithinTheHandshakeTimeout() throws {
        let harness = try Harness()
        try harness.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        _ = try harness.output()
        harness.loop.advanceTime(by: .seconds(20))
        // A slow body: its head arrives, then nothing.
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        harness.loop.advanceTime(by: .seconds(9))
        #expect(harness.isActive)
        harness.loop.advanceTime(by: .seconds(1))
        #expect(!harness.isActive)
        #expect(harness.route.bodies.isEmpty)
    }

    // MARK: Body limits before the body

    /// RFC 9112 §3.2 (found by the adversarial catalogue: headers.host-twice, headers.host-missing).
    @Test(arguments: [
        ("GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
        ("GET /health HTTP/1.1\r\n\r\n", "an HTTP/1.1 request needs a Host header"),
        ("POST /app HTTP/1.1\r\nHost: a\r\nhost: b\r\nContent-Length: 3\r\n\r\nabc", "more than one Host header"),
        ("GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
    ])
    func aRequestWithoutExactlyOneHostIs400(request: String, problem: String) throws {
        let harness = try Harness(limit: 1000)
        try harness.send(request)
        let output = try harness.output()
        #expect(output.hasPrefix("HTTP/1.1 400 Bad Request\r\n") || output.hasPrefix("HTTP/1.0 400 Bad Request\r\n"), "\(output)")
        #expect(output.contains(problem) && output.contains("Connection: close"), "\(output)")
        #expect(harness.route.bodies.isEmpty)
        harness.loop.advanceTime(by: LingeringClose.timeout)
        #expect(!harness.isActive)
    }

    @Test func anHTTP10RequestMayLeaveHostOut() throws {
        let harness = try Harness(limit: 1000)
        try harness.send("GET /health HTTP/1.0\r\n\r\n")
        #expect(try harness.output().hasPrefix("HTTP/1.0 200 OK\r\n"))
    }

    @Test func aContentLengthOverTheRouteLimitIs413AtTheHead() throws {
        let harness = try Harness(limit: 1000)
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 1400000\r\n\r\n")
        let output = try harness.output()
        #expect(Self.statusLines(output) == ["HTTP/1.1 413 Payload Too Large"])
        #expect(output.contains("Connection: close"))
        // The body that follows is dropped unread, not buffered; the route never sees it.
        for _ in 0..<20 { try harness.send(ByteBuffer(repeating: UInt8(ascii: "x"), count: 70_000)) }
        #expect(harness.route.bodies.isEmpty)
        #expect(harness.shared.budget.used == 0)
        // Lingering: the connection is closed shortly after, whatever the client does.
        harness.loop.advanceTime(by: LingeringClose.timeout)
        #expect(!harness.isActive)
    }

    @Test func expect100ContinueGets413AtOnceOrAContinue() throws {
        let refused = try Harness(limit: 1000)
        try refused.send("POST /app HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        #expect(Self.statusLines(try refused.output()) == ["HTTP/1.1 413 Payload Too Large"])

        let accepted = try Harness(limit: 1000)
        try accepted.send("POST /app HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n")
        // The client waits for this before sending the body.
        #expect(Self.statusLines(try accepted.output()) == ["HTTP/1.1 100 Continue"])
        try accepted.send(String(repeating: "y", count: 500))
        let output = try accepted.output()
        #expect(Self.statusLines(output) == ["HTTP/1.1 200 OK"])
        #expect(output.hasSuffix("got 500"))
    }

    @Test func aChunkedBodyPastTheLimitIs413AsSoonAsItPassesIt() throws {
        let harness = try Harness(limit: 1000)
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        let chunk = "190\r\n" + String(repeating: "z", count: 400) + "\r\n"
        try harness.send(chunk + chunk)
        #expect(try harness.output().isEmpty)
        #expect(harness.shared.budget.used > 0)  // the body so far is charged
        try harness.send(chunk)
        let output = try harness.output()
        #expect(Self.statusLines(output) == ["HTTP/1.1 413 Payload Too Large"])
        #expect(harness.shared.budget.used == 0)
        // More chunks: dropped.
        for _ in 0..<50 { try harness.send(chunk) }
        #expect(try harness.output().isEmpty)
        #expect(harness.route.bodies.isEmpty)
    }

    @Test func withinTheLimitTheBodyReachesTheRouteWhole() throws {
        let harness = try Harness(limit: 1000)
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + String(repeating: "a", count: 1000))
        #expect(Self.statusLines(try harness.output()) == ["HTTP/1.1 200 OK"])
        #expect(harness.route.bodies == [1000])
        #expect(harness.shared.budget.used == 0)
        // A route without a body of its own (the default limit, 0) refuses one.
        #expect(EchoBodyRoute.Responder(route: EchoBodyRoute(limit: 0)).maxRequestBodyBytes == 0)
    }

    /// What NIO's parser and the route check do with lengths a client should never send: each is
    /// refused (400 or 413), never handed to the route, never a crash.
    @Test(arguments: [
        // NIO's parser (llhttp) refuses all of these with 400 before the route check runs,
        // which refuses them again if they ever get through (see the next test).
        ("Content-Length: 18446744073709551616", "400"),  // 2^64: overflows the parser's counter
        ("Content-Length: 99999999999999999999999999", "400"),
        ("Content-Length: -1", "400"),
        ("Content-Length: 5\r\nContent-Length: 7", "400"),  // conflicting
        ("Content-Length: 5, 7", "400"),
        ("Content-Length: 5000\r\nContent-Length: 5000", "400"),  // even identical duplicates
        ("Transfer-Encoding: chunked\r\nContent-Length: 5", "400"),  // both: request smuggling's favourite
        ("Content-Length: 1001", "413"),  // one over the route's limit
    ])
    func extremeAndConflictingLengthsAreRefused(header: String, status: String) throws {
        let harness = try Harness(limit: 1000)
        try? harness.send("POST /app HTTP/1.1\r\nHost: t\r\n\(header)\r\n\r\nhello")
        let output = try harness.output()
        #expect(Self.statusLines(output).first?.hasPrefix("HTTP/1.1 \(status) ") == true, "\(header): \(output)")
        #expect(harness.route.bodies.isEmpty)
    }

    @Test func theRouteCheckParsesLengthsWithoutTrusting() {
        func head(_ values: [String], expect: String? = nil) -> HTTPRequestHead {
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/app")
            for value in values { head.headers.add(name: "Content-Length", value: value) }
            if let expect { head.headers.add(name: "Expect", value: expect) }
            return head
        }
        #expect(HTTPRequestBodyLimit.evaluate(head([]), limit: 10) == .read(length: nil, sendContinue: false))
        #expect(HTTPRequestBodyLimit.evaluate(head(["10"]), limit: 10) == .read(length: 10, sendContinue: false))
        #expect(HTTPRequestBodyLimit.evaluate(head(["11"]), limit: 10) == .tooLarge)
        #expect(HTTPRequestBodyLimit.evaluate(head(["18446744073709551616"]), limit: .max) == .tooLarge)
        #expect(HTTPRequestBodyLimit.evaluate(head(["9223372036854775807"]), limit: .max) == .read(length: .max, sendContinue: false))
        #expect(HTTPRequestBodyLimit.evaluate(head(["-1"]), limit: 10) == .malformed("Content-Length is not a number"))
        #expect(HTTPRequestBodyLimit.evaluate(head(["+5"]), limit: 10) == .malformed("Content-Length is not a number"))
        #expect(HTTPRequestBodyLimit.evaluate(head([""]), limit: 10) == .malformed("Content-Length is not a number"))
        #expect(HTTPRequestBodyLimit.evaluate(head(["5", "6"]), limit: 10) == .malformed("conflicting Content-Length values"))
        #expect(HTTPRequestBodyLimit.evaluate(head(["5, 5"]), limit: 10) == .read(length: 5, sendContinue: false))
        #expect(HTTPRequestBodyLimit.evaluate(head(["5", "99999999999999999999"]), limit: 10) == .malformed("conflicting Content-Length values"))
        #expect(HTTPRequestBodyLimit.evaluate(head(["5"], expect: "100-Continue"), limit: 10) == .read(length: 5, sendContinue: true))
        #expect(HTTPRequestBodyLimit.evaluate(head(["0"], expect: "100-continue"), limit: 10) == .read(length: 0, sendContinue: false))
        #expect(HTTPRequestBodyLimit.evaluate(head(["5"]), limit: -3) == .tooLarge)
    }

    // MARK: The memory budget

    @Test func aBodyTheBudgetCannotHoldIs503WithRetryAfter() throws {
        let budget = MemoryBudget(limit: 1500)
        let harness = try Harness(limit: 4000, budget: budget)
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n")
        let output = try harness.output()
        #expect(Self.statusLines(output) == ["HTTP/1.1 503 Service Unavailable"])
        #expect(output.contains("Retry-After: 1"))
        #expect(budget.used == 0)
        // Within the budget: charged while the request is answered, given back after.
        let fits = try Harness(limit: 4000, budget: budget)
        fits.route.holdResponses = true
        try fits.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 1200\r\n\r\n" + String(repeating: "b", count: 1200))
        #expect(budget.used == 1200)
        fits.route.writers.first?.respond(status: .ok, contentType: "text/plain", body: ByteBuffer(string: "ok"))
        #expect(budget.used == 0)
    }

    @Test func aStreamedResponseToAClientThatDoesNotReadIsBoundedAndDropped() throws {
        let budget = MemoryBudget(limit: 1 << 20)
        let harness = try Harness(budget: budget, configure: { $0.maxOutboundBytes = 10_000 })
        harness.route.holdResponses = true
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        let writer = try #require(harness.route.writers.first)
        writer.writeHead(status: .ok, headers: ["Content-Type": "text/event-stream"])
        writer.writeBody(ByteBuffer(string: "data: 1\n\n"), flush: true)
        _ = try harness.output()
        harness.channel.isWritable = false
        writer.writeBody(ByteBuffer(repeating: 1, count: 6000), flush: false)
        #expect(budget.used(by: .httpResponse) == 6000)
        #expect(harness.isActive)
        // Past max_outbound_bytes of waiting bytes: the connection is dropped, the bytes given back.
        writer.writeBody(ByteBuffer(repeating: 2, count: 6000), flush: false)
        #expect(!harness.isActive)
        // A socket channel fails its waiting writes at close; an EmbeddedChannel completes them
        // at the next flush. Either way their bytes go back to the budget.
        harness.channel.flush()
        #expect(budget.used == 0)
    }

    @Test func aStreamedResponseToAnHTTP10ClientIsNotChunkedAndEndsWithTheConnection() throws {
        // Found by the `upgrade` fuzz target: a 1.0 client was sent `transfer-encoding: chunked`,
        // which it cannot read (RFC 9112 §6.1: only to requests of HTTP/1.1 or later).
        for keepAlive in [false, true] {
            let harness = try Harness()
            harness.route.holdResponses = true
            let connection = keepAlive ? "Connection: keep-alive\r\n" : ""
            try harness.send("POST /app HTTP/1.0\r\nHost: t\r\n\(connection)Content-Length: 0\r\n\r\n")
            let writer = try #require(harness.route.writers.first)
            writer.writeHead(status: .ok, headers: ["Content-Type": "text/event-stream"])
            writer.writeBody(ByteBuffer(string: "data: 1\n\n"), flush: true)
            writer.end()
            let output = try harness.output()
            #expect(output.hasPrefix("HTTP/1.0 200 OK\r\n"))
            #expect(!output.lowercased().contains("transfer-encoding"))
            #expect(output.contains("Connection: close\r\n"))
            #expect(output.hasSuffix("\r\n\r\ndata: 1\n\n"))
            #expect(!harness.isActive)
        }
        // HTTP/1.1 is still chunked and kept alive.
        let harness = try Harness()
        harness.route.holdResponses = true
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        let writer = try #require(harness.route.writers.first)
        writer.writeHead(status: .ok, headers: ["Content-Type": "text/event-stream"])
        writer.writeBody(ByteBuffer(string: "data: 1\n\n"), flush: true)
        writer.end()
        let output = try harness.output()
        #expect(output.lowercased().contains("transfer-encoding: chunked"))
        #expect(output.hasSuffix("0\r\n\r\n"))
        #expect(harness.isActive)
    }

    @Test func nothingIsAnsweredAfterAResponseThatClosesTheConnection() throws {
        // Found by the `upgrade` fuzz target: bytes that did not parse after an HTTP/1.0 request
        // got NIO's 400 written after the streamed answer, where the client reads it as body.
        for trailer in ["\u{97}LPZ garbage\r\n\r\n", "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"] {
            let harness = try Harness()
            harness.route.holdResponses = true
            try harness.send("POST /app HTTP/1.0\r\nHost: t\r\nContent-Length: 0\r\n\r\n" + trailer)
            let writer = try #require(harness.route.writers.first)
            writer.writeHead(status: .ok, headers: ["Content-Type": "text/event-stream"])
            writer.writeBody(ByteBuffer(string: "data: 1\n\n"), flush: true)
            writer.end()
            let output = try harness.output()
            #expect(output.hasSuffix("\r\n\r\ndata: 1\n\n"), "\(output.debugDescription)")
            #expect(Self.statusLines(output).isEmpty)  // only the HTTP/1.0 status line
            #expect(!harness.isActive)
        }
        // The same for a plain response that closes (HTTP/1.1, Connection: close).
        let harness = try Harness()
        try harness.send("POST /app HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx\u{97}LPZ\r\n\r\n")
        let output = try harness.output()
        #expect(Self.statusLines(output) == ["HTTP/1.1 200 OK"])
        #expect(output.hasSuffix("got 1"))
        #expect(!harness.isActive)
    }

    // MARK: Connections over a limit

    @Test func aConnectionOverALimitGetsA503AndACleanClose() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ConnectionRefusalHandler(message: "too many connections; retry later"))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var written = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { written += String(buffer: buffer) }
        #expect(written.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
        #expect(written.contains("Retry-After: 1\r\n"))
        #expect(written.contains("Connection: close\r\n"))
        // What the client sends is not parsed; the connection ends at the linger timeout at the latest.
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))
        channel.embeddedEventLoop.advanceTime(by: LingeringClose.timeout)
        #expect(!channel.isActive)
    }

    @Test func theCounterCapsTotalsAndAddressesAndForgetsEmptyAddresses() {
        let counter = ConnectionCounter()
        #expect(counter.open(key: "a", maxTotal: 3, maxPerAddress: 2) == nil)
        #expect(counter.open(key: "a", maxTotal: 3, maxPerAddress: 2) == nil)
        #expect(counter.open(key: "a", maxTotal: 3, maxPerAddress: 2) == .perAddress)
        #expect(counter.open(key: "b", maxTotal: 3, maxPerAddress: 2) == nil)
        #expect(counter.open(key: "c", maxTotal: 3, maxPerAddress: 2) == .total)
        #expect(counter.open(key: nil, maxTotal: 3, maxPerAddress: 2) == .total)
        counter.close(key: "a")
        #expect(counter.count(for: "a") == 1)
        #expect(counter.hold(key: "x", max: 1))
        #expect(!counter.hold(key: "x", max: 1))
        #expect(counter.hold(key: "x", max: 0))  // no cap
        counter.release(key: "x")
        counter.release(key: "x")  // more releases than holds: stays at zero
        counter.close(key: "a")
        counter.close(key: "b")
        #expect(counter.count(for: "a") == 0 && counter.count(for: "x") == 0)
        #expect(counter.total == 0)
    }

    @Test func addressesAreCountedPerIPv4AndPerIPv6Slash64() {
        #expect(ClientAddress.limitKey("192.0.2.7") == "192.0.2.7")
        #expect(ClientAddress.limitKey("2001:db8:1:2:aaaa::1") == ClientAddress.limitKey("2001:db8:1:2:bbbb::9"))
        #expect(ClientAddress.limitKey("2001:db8:1:2::1") == "2001:db8:1:2::/64")
        #expect(ClientAddress.limitKey("2001:db8:1:3::1") != ClientAddress.limitKey("2001:db8:1:2::1"))
        #expect(ClientAddress.limitKey("::ffff:192.0.2.7") == "192.0.2.7")
        #expect(ClientAddress.limitKey("not:an:address") == "not:an:address")
        #expect(ClientAddress.limitKey(String(repeating: "x", count: 500)).utf8.count == 64)
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        head.headers.add(name: "X-Forwarded-For", value: "6.6.6.6, 10.0.0.1")
        let peer = try? SocketAddress(ipAddress: "127.0.0.1", port: 1)
        #expect(ClientAddress.resolve(head, peer: peer, forwardedForHops: 0) == "127.0.0.1")
        #expect(ClientAddress.resolve(head, peer: peer, forwardedForHops: 1) == "10.0.0.1")
        #expect(ClientAddress.resolve(head, peer: peer, forwardedForHops: 2) == "6.6.6.6")
        #expect(ClientAddress.resolve(head, peer: peer, forwardedForHops: 3) == "127.0.0.1")
    }

    @Test func behindProxiesRequestsCountPerForwardedAddressWhileAnswered() throws {
        let first = try Harness(configure: {
            $0.forwardedForHops = 1
            $0.maxConnectionsPerAddress = 1
        })
        first.route.holdResponses = true
        try first.send("POST /app HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 0\r\n\r\n")
        #expect(first.shared.connections.count(for: "10.0.0.1") == 1)
        // Another proxy connection with a request of the same client, while the first is answered.
        let second = try Harness(sharing: first)
        try second.send("POST /app HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 0\r\n\r\n")
        let refused = try second.output()
        #expect(Self.statusLines(refused) == ["HTTP/1.1 503 Service Unavailable"])
        #expect(refused.contains("Retry-After: 1"))
        // Another client through the same proxy is not disturbed.
        let third = try Harness(sharing: first)
        try third.send("POST /app HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.2\r\nContent-Length: 0\r\n\r\n")
        #expect(first.route.writers.count == 2)
        // Answered: the client's count is back to zero.
        for writer in first.route.writers { writer.respond(status: .ok, contentType: "text/plain", body: ByteBuffer(string: "done")) }
        #expect(first.shared.connections.count(for: "10.0.0.1") == 0)
        #expect(first.shared.connections.count(for: "10.0.0.2") == 0)
        #expect(Self.statusLines(try third.output()) == ["HTTP/1.1 200 OK"])
    }
}
