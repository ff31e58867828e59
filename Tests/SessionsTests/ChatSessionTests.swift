import Foundation
import Glibc
import HTTPAPI
import Inference
import Logging
import NIOCore
import Policy
import NIOConcurrencyHelpers
import NIOPosix
import Sessions
import SluiceProtocol
@testable import SluiceTestSupport
import Testing
import WSServer

/// The chat protocol over real loopback sockets, against the built-in simulator.
@Suite struct ChatSessionTests {
    /// A server running `ChatApplication` and a way to open clients that speak JSON frames.
    struct Harness {
        let port: Int
        let group: any EventLoopGroup
        var server: WebSocketServer?

        static func run(
            simulator: (inout SimulatorEngine.Configuration) -> Void = { _ in },
            chat: (inout ChatConfiguration) -> Void = { _ in },
            server configure: (inout WebSocketServerConfiguration) -> Void = { _ in },
            engine: (any InferenceEngine)? = nil,
            router: InferenceRouter? = nil,
            limits: GatewayLimits = GatewayLimits(),
            memoryBudget: MemoryBudget = .unlimited(),
            _ body: (Harness) async throws -> Void
        ) async throws {
            var server = WebSocketServerConfiguration()
            server.host = "127.0.0.1"
            server.port = 0
            server.drain.gracePeriod = .milliseconds(50)
            server.drain.deadline = .seconds(3)
            configure(&server)
            var simulatorConfiguration = SimulatorEngine.Configuration()
            simulatorConfiguration.timeToFirstToken = .milliseconds(5)
            simulatorConfiguration.tokensPerSecond = 0
            simulatorConfiguration.answerTokens = 40
            simulator(&simulatorConfiguration)
            var chatConfiguration = ChatConfiguration(instanceID: "test-instance")
            chat(&chatConfiguration)
            var logger = Logger(label: "sluice.sessions-test")
            logger.logLevel = .warning
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let outcome: Result<Void, any Error>
            do {
                let application = ChatApplication(
                    configuration: chatConfiguration,
                    router: router ?? InferenceRouter(single: engine ?? SimulatorEngine(configuration: simulatorConfiguration)),
                    conversations: ConversationMemory(),
                    policy: ChatPolicy(limiter: GenerationLimiter(limits: limits, limiter: RateLimiter(redis: nil, logger: logger))),
                    memoryBudget: memoryBudget, logger: logger)
                let wsServer = try WebSocketServer(
                    configuration: server, application: application,
                    httpRoutes: RouteList(providers: [ChatStreamRoutes(application: application), OpenAIRoutes(application: application)]),
                    eventLoopGroup: group, memoryBudget: memoryBudget, logger: logger)
                let address = try await wsServer.start()
                try await body(Harness(port: try #require(address.port), group: group, server: wsServer))
                outcome = .success(())
            } catch {
                outcome = .failure(error)
            }
            try? await group.shutdownGracefully()
            try outcome.get()
        }

        func connect(autoRead: Bool = true, socketBufferSize: Int? = nil) async throws -> ChatClient {
            let raw = try await RawClient.connect(port: self.port, group: self.group, autoRead: autoRead, socketBufferSize: socketBufferSize)
            if !autoRead { try await raw.resumeReading() }
            let (response, _) = try await raw.handshake(extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1")])
            #expect(response.status == 101)
            if !autoRead { try await raw.pauseReading() }
            return ChatClient(raw: raw)
        }
    }

    struct ChatClient {
        let raw: RawClient

        func send(_ text: String) async throws { try await self.raw.send(TestFrames.text(text)) }
        func send(_ object: [String: Any]) async throws {
            let data = try JSONSerialization.data(withJSONObject: object)
            try await self.send(String(decoding: data, as: UTF8.self))
        }

        func next(timeout: Duration = .seconds(5)) async throws -> [String: Any] {
            let frame = try await self.raw.nextFrame(timeout: timeout)
            #expect(frame.opcode == 0x1)
            return try #require(try JSONSerialization.jsonObject(with: Data(frame.payload)) as? [String: Any])
        }

        /// Reads messages until one of `type` arrives (collecting the others).
        func until(_ type: String, _ collected: inout [[String: Any]]) async throws -> [String: Any] {
            while true {
                let message = try await self.next()
                if message["type"] as? String == type { return message }
                collected.append(message)
            }
        }
    }

    @Test func sessionReadyThenAStreamedAnswerWithContiguousSeqsAndUsage() async throws {
        try await Harness.run { harness in
            let client = try await harness.connect()
            let ready = try await client.next()
            #expect(ready["type"] as? String == "session.ready")
            #expect(ready["protocol"] as? String == "sluice.v1" && ready["instance_id"] as? String == "test-instance")
            #expect(ready["model"] as? String == "sluice-simulator")

            try await client.send("hello gateway")  // plain text is a chat.send
            let started = try await client.next()
            #expect(started["type"] as? String == "generation.started")
            #expect(started["request_id"] == nil)
            var deltas: [[String: Any]] = []
            let done = try await client.until("generation.done", &deltas)
            #expect(deltas.map { $0["seq"] as? Int } == (1...40).map { $0 })
            let text = deltas.compactMap { $0["text"] as? String }.joined()
            #expect(text == SimulatorEngine.tokens(for: "hello gateway", seed: 0, count: 40).joined())
            #expect(done["finish_reason"] as? String == "stop" && done["seq"] as? Int == 40)
            let usage = try #require(done["usage"] as? [String: Any])
            #expect(usage["completion_tokens"] as? Int == 40 && usage["usage_source"] as? String == "upstream")
        }
    }

    @Test func modelPicksANamedUpstream() async throws {
        func simulator(seed: UInt64) -> SimulatorEngine {
            var configuration = SimulatorEngine.Configuration()
            configuration.timeToFirstToken = .zero
            configuration.tokensPerSecond = 0
            configuration.answerTokens = 12
            configuration.seed = seed
            return SimulatorEngine(configuration: configuration)
        }
        let router = InferenceRouter(upstreams: [.init(name: "alpha", engine: simulator(seed: 1)), .init(name: "beta", engine: simulator(seed: 2))])
        try await Harness.run(router: router) { harness in
            let client = try await harness.connect()
            _ = try await client.next()
            for (model, seed) in [(String?.none, UInt64(1)), ("beta", 2), ("alpha", 1), ("sluice-simulator", 1)] {
                var send: [String: Any] = ["type": "chat.send", "content": "which one?"]
                if let model { send["model"] = model }
                try await client.send(send)
                let started = try await client.next()
                #expect(started["type"] as? String == "generation.started")
                #expect(started["model"] as? String == "sluice-simulator")
                var deltas: [[String: Any]] = []
                _ = try await client.until("generation.done", &deltas)
                let text = deltas.compactMap { $0["text"] as? String }.joined()
                #expect(text == SimulatorEngine.tokens(for: "which one?", seed: seed, count: 12).joined(), "model \(model ?? "none")")
            }
            try await client.send(["type": "chat.send", "content": "x", "model": "gpt-9", "request_id": "r-9"])
            let error = try await client.next()
            #expect(error["type"] as? String == "error" && error["code"] as? String == "not_found")
            #expect(error["request_id"] as? String == "r-9")
            #expect((error["message"] as? String)?.contains("alpha, beta") == true)
            try await client.send(["type": "ping", "id": "still-up"])
            #expect(try await client.next()["id"] as? String == "still-up")
        }
    }

    @Test func maxTokensEndsWithLengthAndRequestIDIsEchoed() async throws {
        try await Harness.run { harness in
            let client = try await harness.connect()
            _ = try await client.next()
            try await client.send(["type": "chat.send", "content": "short please", "max_tokens": 3, "request_id": "r-1"])
            let started = try await client.next()
            #expect(started["request_id"] as? String == "r-1")
            var deltas: [[String: Any]] = []
            let done = try await client.until("generation.done", &deltas)
            #expect(deltas.count == 3 && done["finish_reason"] as? String == "length")
        }
    }

    @Test func cancelStopsTheGenerationWithTheLastDeliveredSeq() async throws {
        try await Harness.run(simulator: { $0.tokensPerSecond = 200; $0.answerTokens = 1000 }) { harness in
            let client = try await harness.connect()
            _ = try await client.next()
            try await client.send(["type": "chat.send", "content": "a long answer"])
            let started = try await client.next()
            let generationID = try #require(started["generation_id"] as? String)
            var lastSeq = 0
            while lastSeq < 3 { lastSeq = try await client.next()["seq"] as? Int ?? lastSeq }
            try await client.send(["type": "generation.cancel", "generation_id": generationID])
            var deltas: [[String: Any]] = []
            let done = try await client.until("generation.done", &deltas)
            let finalSeq = deltas.last?["seq"] as? Int ?? lastSeq
            #expect(done["finish_reason"] as? String == "cancelled")
            #expect(done["seq"] as? Int == finalSeq)
            #expect((done["usage"] as? [String: Any])?["completion_tokens"] as? Int == finalSeq)
            #expect((done["usage"] as? [String: Any])?["usage_source"] as? String == "gateway")
            // Cancelling again is a no-op: the next message is the pong.
            try await client.send(["type": "generation.cancel", "generation_id": generationID])
            try await client.send(["type": "ping", "id": "after"])
            let pong = try await client.next()
            #expect(pong["type"] as? String == "pong" && pong["id"] as? String == "after")
        }
    }

    @Test func aConversationContinuesAndUnknownOnesAreNotFound() async throws {
        try await Harness.run { harness in
            let client = try await harness.connect()
            _ = try await client.next()
            try await client.send("first question")
            let started = try await client.next()
            let conversationID = try #require(started["conversation_id"] as? String)
            var ignored: [[String: Any]] = []
            _ = try await client.until("generation.done", &ignored)
            try await client.send(["type": "chat.send", "content": "second", "conversation_id": conversationID])
            let again = try await client.next()
            #expect(again["conversation_id"] as? String == conversationID)
            _ = try await client.until("generation.done", &ignored)
            try await client.send(["type": "chat.send", "content": "x", "conversation_id": "conv_nope", "request_id": "q"])
            let error = try await client.next()
            #expect(error["type"] as? String == "error" && error["code"] as? String == "not_found" && error["request_id"] as? String == "q")
        }
    }

    @Test func badInputAnswersErrorAndTheConnectionKeepsWorking() async throws {
        // Without the per-connection message limit: this is about the protocol's answers.
        var limits = GatewayLimits()
        limits.messagesPerSecondPerConnection = 0
        try await Harness.run(chat: { $0.maxContentBytes = 100 }, limits: limits) { harness in
            let client = try await harness.connect()
            _ = try await client.next()
            let cases: [(String, String)] = [
                (#"{not json"#, "invalid_message"),
                (#"{"type":"chat.send","content":7}"#, "invalid_message"),
                (#"{"type":"chat.send"}"#, "invalid_message"),
                (#"{"type":"wat"}"#, "unknown_type"),
                (#"{"type":"generation.cancel","generation_id":"gen_unknown"}"#, "not_found"),
                (#"{"type":"chat.send","content":""# + String(repeating: "x", count: 101) + #""}"#, "too_large"),
            ]
            for (input, code) in cases {
                try await client.send(input)
                let error = try await client.next()
                #expect(error["type"] as? String == "error" && error["code"] as? String == code, "\(input)")
            }
            try await client.raw.send(TestFrames.client(0x2, [1, 2, 3]))
            #expect(try await client.next()["code"] as? String == "invalid_message")
            // 10,000 cancels for nothing: 10,000 errors, then the connection still chats.
            var burst: [UInt8] = []
            for index in 0..<10_000 { burst += TestFrames.text(#"{"type":"generation.cancel","generation_id":"g\#(index)"}"#) }
            try await client.raw.send(burst)
            for _ in 0..<10_000 { #expect(try await client.next()["code"] as? String == "not_found") }
            try await client.send("still there?")
            #expect(try await client.next()["type"] as? String == "generation.started")
        }
    }

    @Test func tooManyGenerationsAtOnceIsOverloadedWithRetryAfter() async throws {
        try await Harness.run(simulator: { $0.tokensPerSecond = 10 }, chat: { $0.maxGenerationsPerConnection = 2 }) { harness in
            let client = try await harness.connect()
            _ = try await client.next()
            for content in ["one", "two", "three"] { try await client.send(["type": "chat.send", "content": content, "request_id": content]) }
            var overloaded: [String: Any]?
            for _ in 0..<10 {
                let message = try await client.next()
                if message["type"] as? String == "error" { overloaded = message; break }
            }
            #expect(overloaded?["code"] as? String == "overloaded")
            #expect(overloaded?["request_id"] as? String == "three")
            #expect(overloaded?["retry_after_ms"] as? Int == 1000)
        }
    }

    @Test func aClientThatFallsBehindGetsMergedDeltasWithContiguousSeqs() async throws {
        var simulator = SimulatorEngine.Configuration()
        simulator.timeToFirstToken = .milliseconds(5)
        simulator.tokensPerSecond = 0
        simulator.answerTokens = 100_000
        let engine = EndWatchingEngine(SimulatorEngine(configuration: simulator))
        try await Harness.run(
            chat: { $0.maxTokensLimit = 100_000 },
            server: { $0.writeBufferLowWatermark = 4096; $0.writeBufferHighWatermark = 8192 },
            engine: engine
        ) { harness in
            let client = try await harness.connect(autoRead: false, socketBufferSize: 4096)
            try await client.raw.resumeReading()
            _ = try await client.next()
            try await client.raw.pauseReading()
            try await client.send(["type": "chat.send", "content": "flood me", "max_tokens": 100_000])
            // The whole answer (some MB of deltas) is produced while the client reads nothing: far
            // more than the socket buffers and the write buffer hold, so the server had to merge.
            try await eventually("the simulator produced all 100,000 tokens") { engine.ended }
            try await client.raw.resumeReading()
            var messages: [[String: Any]] = []
            let done = try await client.until("generation.done", &messages)
            let deltas = messages.filter { $0["type"] as? String == "generation.delta" }
            var expectedFirst = 1
            for delta in deltas {
                let seq = try #require(delta["seq"] as? Int)
                let first = delta["first_seq"] as? Int ?? seq
                #expect(first == expectedFirst, "gap or repeat at \(first)")
                expectedFirst = seq + 1
            }
            #expect(expectedFirst - 1 == 100_000 && done["seq"] as? Int == 100_000)
            #expect(deltas.contains { $0["first_seq"] != nil }, "no delta was merged")
            let text = deltas.compactMap { $0["text"] as? String }.joined()
            let textMatches = text == SimulatorEngine.tokens(for: "flood me", seed: 0, count: 100_000).joined()
            #expect(textMatches, "merged text differs from the token sequence")
        }
    }
}

/// `POST /v1/chat/stream` (Server-Sent Events) and drain, over real sockets.
@Suite struct ChatStreamAndDrainTests {
    private func post(_ client: RawClient, _ body: String) async throws {
        try await client.send("POST /v1/chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
    }

    @Test func sseStreamsTheSameMessagesAndEndsWithDone() async throws {
        try await ChatSessionTests.Harness.run { harness in
            let client = try await RawClient.connect(port: harness.port, group: harness.group)
            try await self.post(client, #"{"content":"over sse","max_tokens":7}"#)
            let response = try await client.readHTTPResponse()
            #expect(response.status == 200 && response.value("Content-Type") == "text/event-stream")
            let events = response.body.components(separatedBy: "\n\n").filter { !$0.isEmpty }
            #expect(events.allSatisfy { $0.hasPrefix("data: ") })
            #expect(events.last == "data: [DONE]")
            let objects = try events.dropLast().map {
                try #require(try JSONSerialization.jsonObject(with: Data($0.dropFirst(6).utf8)) as? [String: Any])
            }
            #expect(objects.map { $0["type"] as? String } == ["generation.started"] + Array(repeating: "generation.delta", count: 7) + ["generation.done"])
            #expect(objects.last?["finish_reason"] as? String == "length")
            let text = objects.compactMap { $0["text"] as? String }.joined()
            #expect(text == SimulatorEngine.tokens(for: "over sse", seed: 0, count: 7).joined())
        }
    }

    /// The OpenAI door's generations are the pipeline's like any other: in the hub under the
    /// response's `id`, so the same user's WebSocket cancels one (and gets its end), and another
    /// user's cannot see it.
    @Test func anOpenAIStreamCanBeCancelledByIDFromTheSameUsersWebSocket() async throws {
        try await ChatSessionTests.Harness.run(simulator: { $0.tokensPerSecond = 100; $0.answerTokens = 10_000 }) { harness in
            let http = try await RawClient.connect(port: harness.port, group: harness.group)
            let body = #"{"messages":[{"role":"user","content":"go on"}],"stream":true,"max_tokens":10000}"#
            try await http.send(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Sluice-User: ada\r\nContent-Type: application/json\r\n"
                    + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)")
            let first = try await http.waitForText(containing: "\n\n")
            let id = try #require(first.firstMatch(of: /"id":"(chatcmpl-[0-9a-f]{16})"/)?.output.1, "\(first)")
            func webSocket(user: String) async throws -> ChatSessionTests.ChatClient {
                let raw = try await RawClient.connect(port: harness.port, group: harness.group)
                let (response, _) = try await raw.handshake(extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1"), ("X-Sluice-User", user)])
                #expect(response.status == 101)
                let client = ChatSessionTests.ChatClient(raw: raw)
                #expect(try await client.next()["type"] as? String == "session.ready")
                return client
            }
            let stranger = try await webSocket(user: "eve")
            try await stranger.send(["type": "generation.cancel", "generation_id": String(id)])
            let refused = try await stranger.next()
            #expect(refused["type"] as? String == "error" && refused["code"] as? String == "not_found", "\(refused)")
            let owner = try await webSocket(user: "ada")
            try await owner.send(["type": "generation.cancel", "generation_id": String(id)])
            var others: [[String: Any]] = []
            let done = try await owner.until("generation.done", &others)
            #expect(done["generation_id"] as? String == String(id) && done["finish_reason"] as? String == "cancelled", "\(done)")
            // The HTTP stream ends as OpenAI's do: a last chunk with a finish_reason, then [DONE].
            let ended = try await http.waitForText(containing: "data: [DONE]\n\n")
            #expect(ended.contains(#""finish_reason":"stop""#))
            let seq = try #require(done["seq"] as? Int)
            #expect(seq > 0 && seq < 10_000)
        }
    }

    @Test func sseRefusesBadBodiesWithJSONErrorsBeforeAnyEvent() async throws {
        try await ChatSessionTests.Harness.run { harness in
            let client = try await RawClient.connect(port: harness.port, group: harness.group)
            for (body, status, code) in [
                (#"not json"#, 400, "invalid_message"),
                (#"{"content":5}"#, 400, "invalid_message"),
                (#"{"content":"x","conversation_id":"conv_missing"}"#, 404, "not_found"),
                (#"{"type":"ping"}"#, 400, "invalid_message"),
            ] {
                try await self.post(client, body)
                let response = try await client.readHTTPResponse()
                #expect(response.status == status, "\(body)")
                #expect(response.value("Content-Type") == "application/json")
                let object = try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any]
                #expect(object?["code"] as? String == code, "\(body)")
            }
        }
    }

    @Test func closingTheSSEConnectionCancelsTheGeneration() async throws {
        let engine = RecordingEngine()
        try await ChatSessionTests.Harness.run(engine: engine) { harness in
            let client = try await RawClient.connect(port: harness.port, group: harness.group)
            try await self.post(client, #"{"content":"then hang up"}"#)
            try await engine.waitForStart()
            await client.close()
            try await engine.waitForCancel()
        }
    }

    @Test func drainEndsRunningGenerationsBeforeClose1012() async throws {
        try await ChatSessionTests.Harness.run(simulator: { $0.tokensPerSecond = 20; $0.answerTokens = 1000 }) { harness in
            let client = try await harness.connect()
            _ = try await client.next()
            try await client.send("keep talking")
            _ = try await client.next()  // started
            _ = try await client.next()  // first delta
            let drain = Task { await harness.server!.drain() }
            var messages: [[String: Any]] = []
            let done = try await client.until("generation.done", &messages)
            #expect(done["finish_reason"] as? String == "cancelled")
            let close = try await client.raw.nextFrame()
            #expect(close.closeCode == 1012)
            try await client.raw.send(TestFrames.close(code: 1012))
            await drain.value
        }
    }
}

/// Another engine, unchanged, that says when its generation delivered its terminal event.
final class EndWatchingEngine: InferenceEngine {
    private let inner: any InferenceEngine
    private let endedFlag = NIOLockedValueBox(false)

    init(_ inner: any InferenceEngine) { self.inner = inner }

    var defaultModel: String { self.inner.defaultModel }
    /// A generation has finished or failed (its sink heard it).
    var ended: Bool { self.endedFlag.withLockedValue { $0 } }

    func startGeneration(_ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink) -> any GenerationHandle {
        self.inner.startGeneration(request, on: eventLoop, sink: Sink(sink, ended: self.endedFlag))
    }

    private final class Sink: GenerationSink {
        let inner: any GenerationSink
        let ended: NIOLockedValueBox<Bool>
        init(_ inner: any GenerationSink, ended: NIOLockedValueBox<Bool>) {
            self.inner = inner
            self.ended = ended
        }

        func generationDidConnect() { self.inner.generationDidConnect() }
        func generationDidProduce(_ text: Substring) { self.inner.generationDidProduce(text) }
        func generationDidReportUsage(promptTokens: Int, completionTokens: Int) {
            self.inner.generationDidReportUsage(promptTokens: promptTokens, completionTokens: completionTokens)
        }
        func generationDidEndBatch() { self.inner.generationDidEndBatch() }
        func generationDidFinish(_ reason: FinishReason) {
            self.ended.withLockedValue { $0 = true }
            self.inner.generationDidFinish(reason)
        }
        func generationDidFail(_ error: InferenceError) {
            self.ended.withLockedValue { $0 = true }
            self.inner.generationDidFail(error)
        }
        func generationWasCached() { self.inner.generationWasCached() }
        func generationDidRequestToolCalls(_ calls: [ToolCall]) { self.inner.generationDidRequestToolCalls(calls) }
    }
}

/// An engine that only records start and cancel, for tests that need to see the upstream side.
final class RecordingEngine: InferenceEngine, @unchecked Sendable {
    // @unchecked: the counters are guarded by the lock.
    private let lock = NIOLock()
    private var started = 0
    private var cancelled = 0

    var defaultModel: String { "recording" }

    final class Handle: GenerationHandle {
        let engine: RecordingEngine
        init(engine: RecordingEngine) { self.engine = engine }
        func cancel() { self.engine.lock.withLock { self.engine.cancelled += 1 } }
    }

    func startGeneration(_ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink) -> any GenerationHandle {
        self.lock.withLock { self.started += 1 }
        return Handle(engine: self)
    }

    func waitForStart() async throws { try await self.wait { $0.started > 0 } }
    func waitForCancel() async throws { try await self.wait { $0.cancelled > 0 } }

    private func wait(_ condition: (RecordingEngine) -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while !self.lock.withLock({ condition(self) }) {
            guard ContinuousClock.now < deadline else { throw CancellationError() }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// Upstream failures as the client sees them, with the real OpenAI-compatible engine against
/// canned upstream servers on loopback.
@Suite struct UpstreamFailureTests {
    /// Answers every request with `response` (bytes written in pieces, `pause` between them).
    final class CannedUpstream: ChannelInboundHandler, @unchecked Sendable {
        // @unchecked: lives on one event loop.
        typealias InboundIn = ByteBuffer
        let pieces: [String]
        var received = ByteBuffer()
        var answered = false
        init(pieces: [String]) { self.pieces = pieces }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var chunk = self.unwrapInboundIn(data)
            self.received.writeBuffer(&chunk)
            guard !self.answered, self.received.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) != nil else { return }
            self.answered = true
            let loop = context.eventLoop.assumeIsolated()
            for (index, piece) in self.pieces.enumerated() {
                loop.scheduleTask(in: .milliseconds(Int64(index) * 30)) {
                    context.writeAndFlush(NIOAny(ByteBuffer(string: piece)), promise: nil)
                    if index == self.pieces.count - 1 { context.close(promise: nil) }
                }
            }
        }

        static func start(_ pieces: [String], group: any EventLoopGroup) async throws -> (any Channel, Int) {
            let channel = try await ServerBootstrap(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(CannedUpstream(pieces: pieces)) }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            return (channel, channel.localAddress!.port!)
        }
    }

    private func engine(port: Int) throws -> OpenAICompatibleEngine {
        try OpenAICompatibleEngine(configuration: .init(baseURL: URL(string: "http://127.0.0.1:\(port)")!, model: "m"))
    }

    private func ask(_ harness: ChatSessionTests.Harness) async throws -> ChatSessionTests.ChatClient {
        let client = try await harness.connect()
        _ = try await client.next()
        try await client.send(["type": "chat.send", "content": "hi", "request_id": "req-7"])
        return client
    }

    @Test func anUnreachableUpstreamIsARetryableErrorWithTheRequestID() async throws {
        // Bound but never listening: connecting is refused, and nobody else can take the port meanwhile.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        try #require(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        try await ChatSessionTests.Harness.run(engine: try self.engine(port: port)) { harness in
            let client = try await self.ask(harness)
            let error = try await client.next()
            #expect(error["type"] as? String == "error")
            #expect(error["code"] as? String == "upstream_unavailable")
            #expect(error["request_id"] as? String == "req-7")
            #expect(error["retry_after_ms"] as? Int == 1000)
            // The connection keeps working.
            try await client.send(["type": "ping", "id": "p"])
            #expect(try await client.next()["type"] as? String == "pong")
        }
    }

    @Test func anHTTPErrorBeforeTheStreamIsAnErrorWithTheUpstreamStatus() async throws {
        let (upstream, port) = try await CannedUpstream.start(
            ["HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n{\"error\":{\"message\":\"overloaded!\"}}"],
            group: MultiThreadedEventLoopGroup.singleton)
        defer { upstream.close(promise: nil) }
        try await ChatSessionTests.Harness.run(engine: try self.engine(port: port)) { harness in
            let client = try await self.ask(harness)
            let error = try await client.next()
            #expect(error["code"] as? String == "upstream_error")
            #expect((error["message"] as? String)?.contains("503") == true)
            #expect(error["retry_after_ms"] as? Int == 1000)
        }
    }

    @Test func aFailureInsideTheStreamEndsTheGenerationWithFinishReasonError() async throws {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        let delta = #"data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}"# + "\n\n"
        let failure = #"data: {"error":{"message":"model crashed"}}"# + "\n\n"
        let (upstream, port) = try await CannedUpstream.start([head, delta, failure], group: MultiThreadedEventLoopGroup.singleton)
        defer { upstream.close(promise: nil) }
        try await ChatSessionTests.Harness.run(engine: try self.engine(port: port)) { harness in
            let client = try await self.ask(harness)
            let started = try await client.next()
            #expect(started["type"] as? String == "generation.started" && started["request_id"] as? String == "req-7")
            var deltas: [[String: Any]] = []
            let done = try await client.until("generation.done", &deltas)
            #expect(deltas.compactMap { $0["text"] as? String } == ["Hel"])
            #expect(done["finish_reason"] as? String == "error" && done["seq"] as? Int == 1)
            let error = try #require(done["error"] as? [String: Any])
            #expect(error["code"] as? String == "upstream_error")
            #expect((error["message"] as? String)?.contains("model crashed") == true)
            #expect((done["usage"] as? [String: Any])?["completion_tokens"] as? Int == 1)
        }
    }
}
