import Foundation
import HTTPAPI
import Inference
import Logging
import NIOCore
import NIOPosix
import RedisClient
import Sessions
import SluiceProtocol
@testable import SluiceTestSupport
import Storage
import Synchronization
import Testing
import WSServer

/// Conversations kept in storage: context sent upstream (checked at a real HTTP upstream),
/// history pages, per-user isolation, a full write queue, and the Redis conversation cache.
@Suite(.serialized) struct PersistenceTests {
    typealias Client = ChatSessionTests.ChatClient

    /// A gateway in process: `ChatApplication` with `storage` behind a running write queue.
    struct Gateway {
        let port: Int
        let group: any EventLoopGroup
        let application: ChatApplication
        let queue: WriteBehindQueue

        func connect(user: String? = nil) async throws -> Client {
            let raw = try await RawClient.connect(port: self.port, group: self.group)
            let path = user.map { "/v1/ws?user=\($0)" } ?? "/v1/ws"
            let (response, _) = try await raw.handshake(path: path, extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1")])
            #expect(response.status == 101)
            let client = Client(raw: raw)
            #expect(try await client.next()["type"] as? String == "session.ready")
            return client
        }

        func get(_ path: String, user: String? = nil) async throws -> (status: Int, json: [String: Any]) {
            let raw = try await RawClient.connect(port: self.port, group: self.group)
            let header = user.map { "X-Sluice-User: \($0)\r\n" } ?? ""
            try await raw.send("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\(header)Connection: close\r\n\r\n")
            let response = try await raw.readHTTPResponse()
            await raw.close()
            let json = (try? JSONSerialization.jsonObject(with: Data(response.body.utf8))) as? [String: Any] ?? [:]
            return (response.status, json)
        }

        static func run(
            storage: any ConversationStorage, engine: any InferenceEngine, queueCapacity: Int = 1000,
            fanOut: (any EventLoop) -> FanOut = { _ in .singleNode }, configure: (inout ChatConfiguration) -> Void = { _ in },
            _ body: (Gateway) async throws -> Void
        ) async throws {
            var logger = Logger(label: "sluice.persistence-test")
            logger.logLevel = .critical
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let queue = WriteBehindQueue(
                storage: storage, configuration: .init(capacity: queueCapacity, initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(200)),
                logger: logger)
            let writer = Task { await queue.run() }
            let shared = fanOut(group.next())
            var chat = ChatConfiguration(instanceID: "persist")
            configure(&chat)
            let outcome: Result<Void, any Error>
            do {
                let application = ChatApplication(
                    configuration: chat, router: InferenceRouter(single: engine), conversations: ConversationMemory(),
                    fanOut: shared, persistence: .storage(storage, queue: queue), logger: logger)
                var server = WebSocketServerConfiguration()
                server.host = "127.0.0.1"
                server.port = 0
                let wsServer = try WebSocketServer(
                    configuration: server, application: application, httpRoutes: ChatStreamRoutes(application: application),
                    eventLoopGroup: group, logger: logger)
                let address = try await wsServer.start()
                try await body(Gateway(port: try #require(address.port), group: group, application: application, queue: queue))
                outcome = .success(())
            } catch {
                outcome = .failure(error)
            }
            queue.finish()
            _ = await queue.flush(timeout: .seconds(5))
            writer.cancel()
            await writer.value
            await shared.shutdown()
            try? await group.shutdownGracefully()
            try outcome.get()
        }
    }

    /// An OpenAI-compatible upstream on loopback answering "re: <last user message>" in two
    /// deltas, recording every request body.
    static func echoingUpstream() async throws -> (FakeUpstream, any InferenceEngine) {
        let upstream = try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            let last = messages.last?["content"] as? String ?? ""
            return [
                .write(FakeUpstream.head()),
                .write(FakeUpstream.delta("re: ")),
                .write(FakeUpstream.delta(last)),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)),
                .write("data: [DONE]\n\n"),
                .close,
            ]
        }
        let engine = try OpenAICompatibleEngine(configuration: .init(
            baseURL: URL(string: "http://127.0.0.1:\(upstream.port)")!, model: "echo-model"))
        return (upstream, engine)
    }

    /// The messages of the upstream request number `index`, as (role, content) pairs.
    static func sentMessages(_ upstream: FakeUpstream, _ index: Int) -> [String] {
        let messages = upstream.requests[index].json?["messages"] as? [[String: Any]] ?? []
        return messages.map { "\($0["role"] as? String ?? "?"):\($0["content"] as? String ?? "?")" }
    }

    /// Sends `content` (in `conversation` if given) and returns the conversation id and the answer.
    static func chat(_ client: Client, _ content: String, in conversation: String? = nil) async throws -> (conversation: String, answer: String, done: [String: Any]) {
        var message: [String: Any] = ["type": "chat.send", "content": content]
        if let conversation { message["conversation_id"] = conversation }
        try await client.send(message)
        let started = try await client.next()
        #expect(started["type"] as? String == "generation.started", "\(started)")
        var deltas: [[String: Any]] = []
        let done = try await client.until("generation.done", &deltas)
        return (try #require(started["conversation_id"] as? String), deltas.compactMap { $0["text"] as? String }.joined(), done)
    }

    /// [hits, misses] of the conversation cache.
    static func cache(_ gateway: Gateway) -> [Int] {
        let counts = gateway.application.conversationCacheCounts
        return [counts.hits, counts.misses]
    }

    static func temporaryDatabase() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("sluice-persist-\(UUID().uuidString)/sluice.db").path
    }

    @Test(.timeLimit(.minutes(15)))
    func contextComesFromStorageAndSurvivesARestart() async throws {
        let (upstream, engine) = try await Self.echoingUpstream()
        defer { Task { await upstream.stop() } }
        let path = Self.temporaryDatabase()
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path) }

        var conversation = ""
        do {
            let storage = try await SQLiteStorage.open(path: path)
            try await storage.migrate()
            try await Gateway.run(storage: storage, engine: engine) { gateway in
                let client = try await gateway.connect(user: "alice")
                let first = try await Self.chat(client, "first question")
                conversation = first.conversation
                #expect(UUID(uuidString: conversation) != nil && conversation == conversation.lowercased())
                #expect(first.answer == "re: first question")
                let second = try await Self.chat(client, "second question", in: conversation)
                #expect(second.conversation == conversation)
                #expect(Self.sentMessages(upstream, 1) == [
                    "user:first question", "assistant:re: first question", "user:second question",
                ])
                // Answered from this process's memory: a cache hit, no storage read.
                #expect(gateway.application.conversationCacheCounts.hits == 1 && gateway.application.conversationCacheCounts.misses == 0)
            }
            await storage.shutdown()
        }

        // A new process (fresh memory) on the same file: the context comes from storage.
        let storage = try await SQLiteStorage.open(path: path)
        try await storage.migrate()
        try await Gateway.run(storage: storage, engine: engine) { gateway in
            let client = try await gateway.connect(user: "alice")
            let before = storage.metrics
            _ = try await Self.chat(client, "third question", in: conversation)
            #expect(Self.sentMessages(upstream, 2) == [
                "user:first question", "assistant:re: first question", "user:second question",
                "assistant:re: second question", "user:third question",
            ])
            #expect(gateway.application.conversationCacheCounts.misses == 1)
            // Owner and context, once; and whether alice has a token quota (remembered for 30 s).
            #expect(storage.metrics.since(before).readStatements == 3)
            _ = try await Self.chat(client, "fourth", in: conversation)
            #expect(storage.metrics.since(before).readStatements == 3)
            #expect(gateway.application.conversationCacheCounts.hits == 1 && gateway.application.conversationCacheCounts.misses == 1)

            try await client.send(["type": "conversation.history", "conversation_id": conversation, "request_id": "h1"])
            let history = try await client.next()
            #expect(history["type"] as? String == "conversation.history.result" && history["request_id"] as? String == "h1")
            let messages = try #require(history["messages"] as? [[String: Any]])
            #expect(messages.map { $0["content"] as? String ?? "" } == [
                "re: fourth", "fourth", "re: third question", "third question", "re: second question", "second question",
                "re: first question", "first question",
            ])
            #expect(messages[0]["role"] as? String == "assistant" && messages[0]["finish_reason"] as? String == "stop")
            #expect(messages[0]["model"] as? String == "echo-model")
            #expect((messages[0]["usage"] as? [String: Any])?["completion_tokens"] as? Int == 2)
            #expect((messages[0]["created_at"] as? String)?.hasSuffix("Z") == true)
            #expect(history["next"] is NSNull)

            try await client.send(["type": "conversation.list"])
            let list = try await client.next()
            let conversations = try #require(list["conversations"] as? [[String: Any]])
            #expect(conversations.map { $0["id"] as? String } == [conversation])
            #expect(conversations.first?["title"] as? String == "first question")
        }
        await storage.shutdown()
    }

    @Test(.timeLimit(.minutes(15)))
    func historyPagesAndUsersSeeOnlyTheirOwn() async throws {
        let (upstream, engine) = try await Self.echoingUpstream()
        defer { Task { await upstream.stop() } }
        let storage = try await SQLiteStorage.open(path: ":memory:")
        try await storage.migrate()
        try await Gateway.run(storage: storage, engine: engine) { gateway in
            let alice = try await gateway.connect(user: "alice")
            let bob = try await gateway.connect(user: "bob")
            var ids: [String] = []
            for index in 0..<3 { ids.append(try await Self.chat(alice, "topic \(index)").conversation) }
            _ = try await Self.chat(alice, "more on 0", in: ids[0])  // now the most recently updated

            // Conversations, two at a time, most recently updated first.
            try await alice.send(["type": "conversation.list", "limit": 2])
            let page1 = try await alice.next()
            #expect((page1["conversations"] as? [[String: Any]])?.map { $0["id"] as? String } == [ids[0], ids[2]])
            let cursor = try #require(page1["next"] as? String)
            try await alice.send(["type": "conversation.list", "limit": 2, "before": cursor])
            let page2 = try await alice.next()
            #expect((page2["conversations"] as? [[String: Any]])?.map { $0["id"] as? String } == [ids[1]])
            #expect(page2["next"] is NSNull)

            // Messages, three at a time, newest first.
            try await alice.send(["type": "conversation.history", "conversation_id": ids[0], "limit": 3])
            let messages1 = try await alice.next()
            #expect((messages1["messages"] as? [[String: Any]])?.map { $0["content"] as? String } == ["re: more on 0", "more on 0", "re: topic 0"])
            try await alice.send(["type": "conversation.history", "conversation_id": ids[0], "limit": 3, "before": try #require(messages1["next"] as? String)])
            let messages2 = try await alice.next()
            #expect((messages2["messages"] as? [[String: Any]])?.map { $0["content"] as? String } == ["topic 0"])

            // The same over HTTP.
            let listed = try await gateway.get("/v1/conversations?limit=2", user: "alice")
            #expect(listed.status == 200 && (listed.json["conversations"] as? [[String: Any]])?.count == 2)
            let read = try await gateway.get("/v1/conversations/\(ids[1])/messages", user: "alice")
            #expect(read.status == 200 && (read.json["messages"] as? [[String: Any]])?.map { $0["content"] as? String } == ["re: topic 1", "topic 1"])

            // Bob sees none of it, and cannot tell Alice's conversations from missing ones.
            try await bob.send(["type": "conversation.list"])
            #expect((try await bob.next()["conversations"] as? [Any])?.isEmpty == true)
            for message: [String: Any] in [
                ["type": "conversation.history", "conversation_id": ids[0]],
                ["type": "chat.send", "content": "let me in", "conversation_id": ids[0]],
                ["type": "conversation.subscribe", "conversation_id": ids[0]],
                ["type": "conversation.history", "conversation_id": UUID().uuidString],
            ] {
                try await bob.send(message)
                let error = try await bob.next()
                #expect(error["type"] as? String == "error" && error["code"] as? String == "not_found", "\(message): \(error)")
            }
            #expect(try await gateway.get("/v1/conversations/\(ids[0])/messages", user: "bob").status == 404)
            #expect(try await gateway.get("/v1/conversations/\(ids[0])/messages").status == 404)  // anonymous
            #expect((try await gateway.get("/v1/conversations", user: "bob").json["conversations"] as? [Any])?.isEmpty == true)
            #expect(upstream.requests.count == 4)  // bob's chat.send never went upstream

            // Bad cursors and limits get invalid_message; the connection stays up.
            try await alice.send(["type": "conversation.list", "before": "not-a-cursor"])
            #expect(try await alice.next()["code"] as? String == "invalid_message")
            try await alice.send(["type": "conversation.history", "conversation_id": ids[0], "limit": 0])
            #expect(try await alice.next()["code"] as? String == "invalid_message")
            #expect(try await gateway.get("/v1/conversations?limit=abc", user: "alice").status == 400)
            _ = try await Self.chat(alice, "still here", in: ids[1])
        }
        await storage.shutdown()
    }

    @Test(.timeLimit(.minutes(15)))
    func aFullWriteQueueRefusesNewChatsWithARetryableError() async throws {
        let (upstream, engine) = try await Self.echoingUpstream()
        defer { Task { await upstream.stop() } }
        // A real PostgreSQL client pointed at a port where nothing listens (bound, not listening,
        // for the whole test): every write fails.
        let closedPort = try SluiceProcess.deadPort()
        let unreachable = try PostgresStorage(configuration: .init(
            url: try PostgresURL("postgres://sluice:x@127.0.0.1:\(closedPort.port)/sluice?sslmode=disable"), connectTimeout: .milliseconds(200), operationTimeout: .milliseconds(300)))
        let pool = Task { await unreachable.run() }
        defer { pool.cancel() }
        // Room for two generations (each holds its question and its answer).
        try await Gateway.run(storage: unreachable, engine: engine, queueCapacity: 4) { gateway in
            let client = try await gateway.connect(user: "carol")
            let first = try await Self.chat(client, "one")
            _ = try await Self.chat(client, "two", in: first.conversation)
            try await client.send(["type": "chat.send", "content": "three", "request_id": "r3"])
            let refused = try await client.next()
            #expect(refused["type"] as? String == "error" && refused["code"] as? String == "overloaded", "\(refused)")
            #expect(refused["request_id"] as? String == "r3" && refused["retry_after_ms"] as? Int == 1000)
            #expect(upstream.requests.count == 2)
            let counters = gateway.queue.counters
            #expect(counters.pending == 4 && counters.refusedFull == 1 && counters.written == 0)
            try await MultiInstanceTests.eventually("writes retried") { gateway.queue.counters.retries >= 2 }
            // History reads fail retryably rather than hang.
            try await client.send(["type": "conversation.list"])
            let unavailable = try await client.next()
            #expect(unavailable["code"] as? String == "unavailable" && unavailable["retry_after_ms"] as? Int == 1000)
        }
        await unreachable.shutdown()
        withExtendedLifetime(closedPort) {}
    }

    @Test(.timeLimit(.minutes(15)))
    func theRedisCacheAnswersContextAndIsRefilledFromStorage() async throws {
        let (upstream, engine) = try await Self.echoingUpstream()
        defer { Task { await upstream.stop() } }
        try await RedisServerProcess.withServer { redis in
            let storage = try await SQLiteStorage.open(path: ":memory:")
            try await storage.migrate()
            let url = try RedisURL(redis.url)
            try await Gateway.run(
                storage: storage, engine: engine,
                fanOut: { .redis(url: url, instanceID: "cache-test", eventLoop: $0, logger: Logger(label: "test")) }
            ) { gateway in
                try await MultiInstanceTests.eventually("redis connected") { gateway.application.isSharedHealthy }
                let client = try await gateway.connect(user: "dora")
                let conversation = try await Self.chat(client, "hello").conversation
                _ = try await Self.chat(client, "again", in: conversation)
                #expect(Self.cache(gateway) == [1, 0])
                let probe = RedisClient(configuration: RedisConfiguration(url: url), eventLoop: gateway.group.next())
                defer { Task { await probe.shutdown() } }
                try await MultiInstanceTests.eventually("probe connected") { probe.isConnected }
                let ttl = try await probe.send("PTTL", "sluice:conv:\(conversation):m").int ?? -1
                #expect(ttl > 25 * 60 * 1000 && ttl <= 30 * 60 * 1000)

                // The cache expires: the next message reads storage and fills the cache again.
                _ = try await probe.send("DEL", "sluice:conv:\(conversation):m", "sluice:conv:\(conversation):o")
                _ = try await Self.chat(client, "after expiry", in: conversation)
                #expect(Self.cache(gateway) == [1, 1])
                #expect(Self.sentMessages(upstream, 2) == [
                    "user:hello", "assistant:re: hello", "user:again", "assistant:re: again", "user:after expiry",
                ])
                try await MultiInstanceTests.eventually("cache refilled and written through") {
                    (try await probe.send("LLEN", "sluice:conv:\(conversation):m").int ?? 0) == 6
                }
                _ = try await Self.chat(client, "last", in: conversation)
                #expect(Self.cache(gateway) == [2, 1])
                #expect(Self.sentMessages(upstream, 3).count == 7)
            }
            await storage.shutdown()
        }
    }
}
