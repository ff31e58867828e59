import Glibc
import Foundation
import NIOCore
import NIOPosix
import SluiceProtocol
import SluiceTestSupport
import Testing

@testable import Inference

/// The OpenAI-compatible engine against a scripted upstream over real loopback sockets.
@Suite struct OpenAICompatibleEngineTests {
    typealias Step = FakeUpstream.Step

    static func engine(
        port: Int, model: String? = "test-model", timeouts: UpstreamTimeouts = UpstreamTimeouts(connect: .seconds(2))
    ) throws -> OpenAICompatibleEngine {
        try OpenAICompatibleEngine(configuration: .init(
            baseURL: URL(string: "http://127.0.0.1:\(port)")!, model: model, apiKey: "sk-test", timeouts: timeouts))
    }

    static func usageChunk(_ prompt: Int, _ completion: Int, finish: String? = nil, choices: Bool = true) -> String {
        let usage = #""usage":{"prompt_tokens":\#(prompt),"completion_tokens":\#(completion),"total_tokens":\#(prompt + completion)}"#
        guard choices else { return FakeUpstream.event(#"{"choices":[],\#(usage)}"#) }
        let reason = finish.map { "\"\($0)\"" } ?? "null"
        return FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":\#(reason)}],\#(usage)}"#)
    }

    static func delta(_ text: String, usage: (Int, Int)) -> String {
        FakeUpstream.event(
            #"{"choices":[{"index":0,"delta":{"content":"\#(text)"},"finish_reason":null}],"usage":{"prompt_tokens":\#(usage.0),"completion_tokens":\#(usage.1)}}"#)
    }

    // MARK: Streams

    @Test func streamsChunksWithUsageLikeVLLM() async throws {
        // Chunked transfer encoding, a role chunk, usage in every chunk, a final usage-only chunk.
        let upstream = try await FakeUpstream.start { _ in
            [
                .write(FakeUpstream.chunkedHead()
                    + FakeUpstream.chunk(FakeUpstream.event(
                        #"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":0}}"#))),
                .pause(.milliseconds(30)),
                .write(FakeUpstream.chunk(Self.delta("Hello", usage: (12, 1)))),
                .pause(.milliseconds(30)),
                .write(FakeUpstream.chunk(Self.delta(", wörld 🌊", usage: (12, 2)))),
                .pause(.milliseconds(30)),
                .write(FakeUpstream.chunk(Self.usageChunk(12, 3, finish: "length"))
                    + FakeUpstream.chunk(Self.usageChunk(12, 3, choices: false))
                    + FakeUpstream.chunk("data: [DONE]\n\n") + FakeUpstream.lastChunk),
                .hang,
            ]
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        await generation.log.waitForEnd()
        #expect(generation.log.withoutBatches == [
            .usage(12, 0), .text("Hello"), .usage(12, 1), .text(", wörld 🌊"), .usage(12, 2), .usage(12, 3), .usage(12, 3),
            .finish(.length),
        ])
        #expect(generation.log.batchesAreWellPlaced())
        #expect(generation.log.events.filter { $0 == .batch }.count >= 1)
        // Finished: the connection is closed at once, even though the upstream keeps it open.
        #expect(await upstream.wait { $0.closedConnections == 1 })

        let request = try #require(upstream.requests.first)
        #expect(request.method == .POST)
        #expect(request.uri == "/v1/chat/completions")
        #expect(request.headers["Authorization"] == ["Bearer sk-test"])
        #expect(request.headers["Connection"] == ["close"])
        #expect(request.headers["Content-Type"] == ["application/json"])
        #expect(request.headers["Accept"] == ["text/event-stream"])
        let json = try #require(request.json)
        #expect(json["model"] as? String == "test-model")
        let messages = try #require(json["messages"] as? [[String: String]])
        #expect(messages == [["role": "system", "content": "Be brief."], ["role": "user", "content": "Hi \"there\"\n"]])
        #expect(json["stream"] as? Bool == true)
        #expect(json["stream_options"] as? [String: Bool] == ["include_usage": true, "continuous_usage_stats": true])
        #expect(json["max_tokens"] as? Int == 64)
        #expect(json["temperature"] as? Double == 0.5)
    }

    @Test func oneReadIsOneBatch() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [
                .write(FakeUpstream.head() + FakeUpstream.delta("a") + FakeUpstream.delta("b") + ": keep-alive\n\n"
                    + FakeUpstream.delta("c") + Self.usageChunk(5, 3, finish: "stop") + "data: [DONE]\n\n"),
                .hang,
            ]
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        // The request had no temperature: none is sent.
        #expect(await generation.log.waitForEnd() == [.text("a"), .text("b"), .text("c"), .usage(5, 3), .batch, .finish(.stop)])
    }

    @Test func chunksSplitAcrossWritesMidLineAndMidUTF8() async throws {
        // CRLF line ends, no usage at all, every TCP write 7 bytes.
        let body = (FakeUpstream.delta("héllo") + FakeUpstream.delta(" 🌊 ") + FakeUpstream.delta("wörld")
            + FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#) + "data: [DONE]\n\n")
            .replacingOccurrences(of: "\n", with: "\r\n")
        let bytes = Array((FakeUpstream.head() + body).utf8)
        let upstream = try await FakeUpstream.start { _ in
            var steps: [Step] = []
            for start in stride(from: 0, to: bytes.count, by: 7) {
                // Raw byte slices: a piece may end inside a multi-byte character.
                steps.append(.bytes(Array(bytes[start..<min(start + 7, bytes.count)])))
                steps.append(.pause(.milliseconds(1)))
            }
            steps.append(.hang)
            return steps
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        await generation.log.waitForEnd()
        #expect(generation.log.withoutBatches == [.text("héllo"), .text(" 🌊 "), .text("wörld"), .finish(.stop)])
        #expect(generation.log.batchesAreWellPlaced())
    }

    // MARK: Failures

    @Test func errorObjectInTheStream() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [
                .write(FakeUpstream.head() + FakeUpstream.delta("Hel")
                    + FakeUpstream.event(#"{"error":{"object":"error","message":"CUDA out of memory","type":"InternalServerError","param":null,"code":500}}"#)),
                .hang,
            ]
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.text("Hel"), .batch, .fail(.upstreamError(status: nil))])
        #expect(generation.log.error?.message == "CUDA out of memory")
        #expect(await upstream.wait { $0.closedConnections == 1 })
    }

    @Test func httpErrorStatusWithJSONBody() async throws {
        let body = #"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","code":404}"#
        let upstream = try await FakeUpstream.start { _ in
            [
                .write("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n"),
                .pause(.milliseconds(5)),
                .write(body),
                .hang,
            ]
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.fail(.upstreamError(status: 500))])
        #expect(generation.log.error?.message == "upstream returned HTTP 500: The model `x` does not exist.")
        #expect(generation.log.error?.code == .upstreamError)
    }

    @Test func httpErrorStatusWithTextBodyEndedByClose() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [.write(FakeUpstream.head(status: "503 Service Unavailable", contentType: "text/plain") + "  busy, try later\n"), .close]
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.fail(.upstreamError(status: 503))])
        #expect(generation.log.error?.message == "upstream returned HTTP 503: busy, try later")
    }

    @Test func slowFirstTokenTimesOut() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [.write(FakeUpstream.head() + ": still loading\n\n"), .pause(.seconds(3)), .write(FakeUpstream.delta("late")), .hang]
        }
        defer { Task { await upstream.stop() } }
        let timeouts = UpstreamTimeouts(connect: .seconds(2), timeToFirstToken: .milliseconds(300), betweenTokens: .milliseconds(100))
        let started = ContinuousClock.now
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port, timeouts: timeouts))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.fail(.timeout)])
        let elapsed = ContinuousClock.now - started
        // At least the configured timeout, and far below the 60 s default: the setting applied.
        #expect(elapsed >= .milliseconds(300) && elapsed < .seconds(20), "\(elapsed)")
        #expect(generation.log.error?.code == .upstreamTimeout)
        #expect(await upstream.wait(timeout: .seconds(5)) { $0.closedConnections == 1 })
    }

    @Test func upstreamHangingAfterTwoChunksTimesOut() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [.write(FakeUpstream.head() + FakeUpstream.delta("one")), .pause(.milliseconds(20)), .write(FakeUpstream.delta("two")), .hang]
        }
        defer { Task { await upstream.stop() } }
        // The first-token timeout is long: the between-tokens one must take over at the first event.
        let timeouts = UpstreamTimeouts(connect: .seconds(2), timeToFirstToken: .seconds(10), betweenTokens: .milliseconds(300))
        let started = ContinuousClock.now
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port, timeouts: timeouts))
        defer { withExtendedLifetime(generation) {} }
        await generation.log.waitForEnd()
        let elapsed = ContinuousClock.now - started
        #expect(generation.log.withoutBatches == [.text("one"), .text("two"), .fail(.timeout)])
        #expect(generation.log.batchesAreWellPlaced())
        #expect(elapsed >= .milliseconds(320) && elapsed < .seconds(20), "\(elapsed)")
        #expect(await upstream.wait(timeout: .seconds(5)) { $0.closedConnections == 1 })
    }

    @Test(arguments: [false, true])
    func upstreamClosingEarly(chunked: Bool) async throws {
        let upstream = try await FakeUpstream.start { _ in
            chunked
                ? [.write(FakeUpstream.chunkedHead() + FakeUpstream.chunk(FakeUpstream.delta("one") + FakeUpstream.delta("two"))), .pause(.milliseconds(20)), .close]
                : [.write(FakeUpstream.head() + FakeUpstream.delta("one") + FakeUpstream.delta("two")), .pause(.milliseconds(20)), .close]
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.text("one"), .text("two"), .batch, .fail(.upstreamError(status: nil))])
        #expect(generation.log.error?.message.hasPrefix("stream ended early") == true)
    }

    @Test func connectionRefused() async throws {
        // A port bound but never listened on: connecting is refused, and no other test can take
        // the port while it is held (a port merely closed again could be reused concurrently).
        let (socketFD, port) = try Self.boundButNotListening()
        defer { close(socketFD) }
        let generation = try await TestGeneration.start(try Self.engine(port: port))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.fail(.unavailable)])
        #expect(generation.log.error?.code == .upstreamUnavailable)
    }

    static func boundButNotListening() throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard fd >= 0, bound == 0, named == 0 else { throw CancellationError() }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    @Test func malformedChunkFails() async throws {
        let upstream = try await FakeUpstream.start { _ in [.write(FakeUpstream.head() + "data: {not json\n\n"), .hang] }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.fail(.upstreamError(status: nil))])
    }

    @Test func oversizedEventFails() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [.write(FakeUpstream.head() + "data: " + String(repeating: "x", count: 5000)), .hang]
        }
        defer { Task { await upstream.stop() } }
        var configuration = OpenAICompatibleEngine.Configuration(
            baseURL: URL(string: "http://127.0.0.1:\(upstream.port)")!, model: "m")
        configuration.maximumEventSize = 1024
        let generation = try await TestGeneration.start(try OpenAICompatibleEngine(configuration: configuration))
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.fail(.upstreamError(status: nil))])
        #expect(generation.log.error?.message.contains("larger than 1024") == true)
    }

    // MARK: Cancel

    @Test func cancelClosesTheConnectionAtOnce() async throws {
        let upstream = try await FakeUpstream.start { _ in
            var steps: [Step] = [.write(FakeUpstream.head())]
            for index in 0..<500 {
                steps.append(.write(FakeUpstream.delta("t\(index) ")))
                steps.append(.pause(.milliseconds(10)))
            }
            return steps
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port), cancelAfterChunks: 3)
        defer { withExtendedLifetime(generation) {} }
        await generation.log.wait { $0.filter { if case .text = $0 { true } else { false } }.count >= 3 }
        #expect(await upstream.wait(timeout: .seconds(5)) { $0.closedConnections == 1 })
        // How fast is measured by loadtest/cancel-latency.py, not asserted here.
        // Nothing more reaches the sink, though the upstream would have sent 497 more chunks:
        // the connection is closed (the upstream saw it), so nothing more is read, and whatever
        // the close left queued on the generation's loop has run once this task has.
        try await generation.eventLoop.submit {}.get()
        let events = generation.log.events
        #expect(events.filter { if case .text = $0 { true } else { false } } == [.text("t0 "), .text("t1 "), .text("t2 ")])
        #expect(events.last == .text("t2 "))
        #expect(!events.contains { $0.isTerminal })
        #expect(!events.contains(.offLoop))
    }

    @Test func cancelFromOutsideTheSink() async throws {
        let upstream = try await FakeUpstream.start { _ in
            var steps: [Step] = [.write(FakeUpstream.head())]
            for index in 0..<500 {
                steps.append(.write(FakeUpstream.delta("t\(index) ")))
                steps.append(.pause(.milliseconds(10)))
            }
            return steps
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        await generation.log.wait { $0.filter { if case .text = $0 { true } else { false } }.count >= 3 }
        try await generation.cancel()
        let atCancel = generation.log.events
        #expect(await upstream.wait(timeout: .seconds(5)) { $0.closedConnections == 1 })
        // Closed, so nothing more is read; what the close queued on the loop has run after this.
        try await generation.eventLoop.submit {}.get()
        #expect(generation.log.events == atCancel)
    }

    @Test func cancelBeforeConnecting() async throws {
        let upstream = try await FakeUpstream.start { _ in [.write(FakeUpstream.head() + FakeUpstream.delta("x")), .hang] }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port), cancelAtOnce: true)
        defer { withExtendedLifetime(generation) {} }
        // `start` queued the connect step on the generation's loop; it has run once this task has,
        // and it found the generation cancelled: no connection was even attempted.
        let sink = generation.sink
        let attempted = try await generation.eventLoop.submit {
            (sink.value.handle as? StreamingHTTPRequest<OpenAIStreamDecoder>)?.connectAttempted
        }.get()
        #expect(attempted == false)
        #expect(generation.log.events.isEmpty)
        #expect(upstream.requests.isEmpty)
        #expect(upstream.connections == 0)
    }

    // MARK: Model discovery

    static func modelsServer() async throws -> FakeUpstream {
        try await FakeUpstream.start { request in
            if request.method == .GET && request.uri == "/v1/models" {
                let body = #"{"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","owned_by":"vllm"},{"id":"other"}]}"#
                return [.write(FakeUpstream.head(contentType: "application/json", extra: "Content-Length: \(body.utf8.count)\r\n") + body), .hang]
            }
            return [.write(FakeUpstream.head() + FakeUpstream.delta("ok") + "data: [DONE]\n\n"), .hang]
        }
    }

    @Test func discoversTheModelOnce() async throws {
        let upstream = try await Self.modelsServer()
        defer { Task { await upstream.stop() } }
        let engine = try Self.engine(port: upstream.port, model: nil)
        #expect(engine.defaultModel == "default")
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        #expect(try await engine.discoverModel(on: loop).get() == "meta-llama/Llama-3.1-8B-Instruct")
        #expect(engine.defaultModel == "meta-llama/Llama-3.1-8B-Instruct")
        #expect(try await engine.discoverModel(on: loop).get() == "meta-llama/Llama-3.1-8B-Instruct")
        let generation = try await TestGeneration.start(engine)
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.text("ok"), .batch, .finish(.stop)])
        let requests = upstream.requests
        #expect(requests.map(\.uri) == ["/v1/models", "/v1/chat/completions"])
        #expect(requests.first?.headers["Authorization"] == ["Bearer sk-test"])
        #expect(requests.last?.json?["model"] as? String == "meta-llama/Llama-3.1-8B-Instruct")
    }

    @Test func firstGenerationTriggersDiscovery() async throws {
        let upstream = try await Self.modelsServer()
        defer { Task { await upstream.stop() } }
        let engine = try Self.engine(port: upstream.port, model: nil)
        let first = try await TestGeneration.start(engine)
        defer { withExtendedLifetime(first) {} }
        await first.log.waitForEnd()
        #expect(await upstream.wait { _ in engine.defaultModel != "default" })
        let second = try await TestGeneration.start(engine)
        defer { withExtendedLifetime(second) {} }
        #expect(await second.log.waitForEnd() == [.text("ok"), .batch, .finish(.stop)])
        let posts = upstream.requests.filter { $0.method == .POST }
        #expect(posts.map { $0.json?["model"] as? String } == ["default", "meta-llama/Llama-3.1-8B-Instruct"])
        #expect(upstream.requests.filter { $0.method == .GET }.count == 1)
    }

    @Test func parsesBaseURLs() throws {
        let ipv6 = try UpstreamEndpoint(baseURL: URL(string: "http://[::1]:8000/prefix/")!, trustRoots: .default)
        #expect(ipv6.host == "::1" && ipv6.port == 8000 && ipv6.basePath == "/prefix" && ipv6.hostHeader == "[::1]:8000")
        #expect(ipv6.tlsContext == nil && ipv6.serverHostname == nil)
        let named = try UpstreamEndpoint(baseURL: URL(string: "https://llm.example.com")!, trustRoots: .default)
        #expect(named.host == "llm.example.com" && named.port == 443 && named.basePath == "" && named.hostHeader == "llm.example.com")
        #expect(named.tlsContext != nil && named.serverHostname == "llm.example.com")
        let address = try UpstreamEndpoint(baseURL: URL(string: "https://10.0.0.7:8443")!, trustRoots: .default)
        #expect(address.serverHostname == nil)
        #expect(address.requestHead(.GET, path: "/v1/models", apiKey: nil, bodyLength: nil, accept: "*/*").uri == "/v1/models")
    }

    @Test func rejectsBadBaseURLs() {
        #expect(throws: UpstreamConfigurationError.self) {
            try OpenAICompatibleEngine(configuration: .init(baseURL: URL(string: "ftp://example.com")!))
        }
        #expect(throws: UpstreamConfigurationError.self) {
            try TritonEngine(configuration: .init(baseURL: URL(string: "file:///tmp")!))
        }
    }
}
