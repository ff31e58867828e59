import Foundation
import Logging
import NIOPosix
@testable import SluiceTestSupport
import Storage
import Testing

/// History kept by the real `sluice serve` binary: across a restart (embedded SQLite), and on a
/// real PostgreSQL that is stopped in the middle of the chats and started again.
@Suite struct PersistenceProcessTests {
    static let environment = [
        "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0",
        "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "100",
        "SLUICE_SERVER_DRAIN_GRACE_PERIOD": "100ms",
        "SLUICE_SERVER_EVENT_LOOP_THREADS": "1",
    ]

    static func json(_ body: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
    }

    /// One chat turn: the conversation id and the answer's text.
    static func chat(
        _ client: JSONWebSocketClient, _ content: String, in conversation: String? = nil, maxTokens: Int = 5
    ) async throws -> (conversation: String, answer: String) {
        var message: [String: Any] = ["type": "chat.send", "content": content, "max_tokens": maxTokens]
        if let conversation { message["conversation_id"] = conversation }
        try await client.send(message)
        var events: [[String: Any]] = []
        let done = try await client.until(type: "generation.done", collecting: &events, timeout: .seconds(20))
        #expect(done["error"] == nil, "\(done)")
        let started = try #require(events.first { $0["type"] as? String == "generation.started" })
        let answer = events.filter { $0["type"] as? String == "generation.delta" }.compactMap { $0["text"] as? String }.joined()
        return (try #require(started["conversation_id"] as? String), answer)
    }

    static func eventually(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        try await SluiceTestSupport.eventually(what, timeout: timeout, condition)
    }

    @Test(.timeLimit(.minutes(15)))
    func aRestartedGatewayKeepsItsHistory() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-data-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dataDirectory) }
        let group = MultiThreadedEventLoopGroup.singleton
        var conversation = ""
        var answers: [String] = []
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--data-dir", dataDirectory], environment: Self.environment) { processes in
            let client = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?user=erin")
            _ = try await client.next()
            let first = try await Self.chat(client, "remember this")
            conversation = first.conversation
            answers.append(first.answer)
            answers.append(try await Self.chat(client, "and this", in: conversation).answer)
            // SIGTERM: the queue writes what it holds before the process exits.
            #expect(try await processes[0].terminate(timeout: .seconds(20)) == .exited(0))
        }
        #expect(FileManager.default.fileExists(atPath: dataDirectory + "/sluice.db"))

        try await SluiceProcess.withProcesses(count: 1, arguments: ["--data-dir", dataDirectory], environment: Self.environment) { processes in
            let process = processes[0]
            let listed = try await process.httpGet(path: "/v1/conversations?user=erin")
            #expect(listed.status == 200)
            let conversations = try #require(try Self.json(listed.body)["conversations"] as? [[String: Any]])
            #expect(conversations.map { $0["id"] as? String } == [conversation])
            #expect(conversations.first?["title"] as? String == "remember this")
            let read = try await process.httpGet(path: "/v1/conversations/\(conversation)/messages?user=erin")
            let messages = try #require(try Self.json(read.body)["messages"] as? [[String: Any]])
            #expect(messages.map { $0["content"] as? String ?? "" } == [answers[1], "and this", answers[0], "remember this"])
            #expect(messages.map { $0["role"] as? String ?? "" } == ["assistant", "user", "assistant", "user"])
            #expect(messages.first?["finish_reason"] as? String == "length")

            // The conversation goes on: its context is read from the file (one cache miss).
            let client = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=erin")
            _ = try await client.next()
            #expect(try await Self.chat(client, "still there?", in: conversation).conversation == conversation)
            let stats = try Self.json(try await process.adminGet(path: "/v1/stats").body)
            #expect((stats["conversation_cache"] as? [String: Any])?["misses"] as? Int == 1)
            // Another user cannot read it.
            #expect(try await process.httpGet(path: "/v1/conversations/\(conversation)/messages?user=mallory").status == 404)
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func migrateCreatesTheEmbeddedDatabaseAndRefusesABadURL() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-migrate-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dataDirectory) }
        for _ in 0..<2 {
            let migrated = try await SluiceProcess.runCommand(["migrate", "--data-dir", dataDirectory])
            #expect(migrated.status == 0 && migrated.output.contains("migrated sqlite"), "\(migrated.output)")
        }
        #expect(FileManager.default.fileExists(atPath: dataDirectory + "/sluice.db"))
        let bad = try await SluiceProcess.runCommand(["migrate", "--database-url", "mysql://nope"])
        #expect(bad.status == 78 && bad.output.contains("storage.database_url"), "\(bad.output)")
        let unreachable = try await SluiceProcess.runCommand(
            ["migrate", "--timeout", "2"], environment: ["SLUICE_STORAGE_DATABASE_URL": "postgres://u:p@127.0.0.1:1/x?sslmode=disable"])
        #expect(unreachable.status == 1 && unreachable.output.contains("migration failed"), "\(unreachable.output)")
    }

    @Test(.timeLimit(.minutes(15)))
    func postgresStoppedMidChatThenRestartedStoresEveryMessageOnce() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await PostgresServerProcess.withServer { postgres in
            // `sluice migrate` creates the schema, and running it again changes nothing.
            for _ in 0..<2 {
                let migrated = try await SluiceProcess.runCommand(["migrate"], environment: ["SLUICE_STORAGE_DATABASE_URL": postgres.url])
                #expect(migrated.status == 0 && migrated.output.contains("migrated postgres"), "\(migrated.output)")
            }
            try await SluiceProcess.withProcesses(
                count: 1, environment: Self.environment.merging(["SLUICE_STORAGE_DATABASE_URL": postgres.url]) { $1 }
            ) { processes in
                let process = processes[0]
                try await Self.eventually("/ready after migrations") { try await process.httpGet(path: "/ready").status == 200 }
                let client = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=frank")
                _ = try await client.next()
                var turns: [(conversation: String, content: String, answer: String)] = []
                func turn(_ content: String, in conversation: String? = nil) async throws {
                    let result = try await Self.chat(client, content, in: conversation, maxTokens: 20)
                    turns.append((result.conversation, content, result.answer))
                }
                try await turn("before the outage")
                try await turn("still before", in: turns[0].conversation)

                // Stop PostgreSQL while a generation streams; it and the next ones still stream.
                try await client.send(["type": "chat.send", "content": "during the stop", "max_tokens": 20, "conversation_id": turns[0].conversation])
                _ = try await client.until(type: "generation.started", timeout: .seconds(10))
                try await postgres.stop()
                var events: [[String: Any]] = []
                let done = try await client.until(type: "generation.done", collecting: &events, timeout: .seconds(20))
                #expect(done["finish_reason"] as? String == "length")
                let answer = events.compactMap { $0["text"] as? String }.joined()
                turns.append((turns[0].conversation, "during the stop", answer))
                try await turn("while it is down")
                try await turn("a follow-up while down", in: turns[3].conversation)
                try await turn("old conversation while down", in: turns[0].conversation)

                let stats = try Self.json(try await process.adminGet(path: "/v1/stats").body)
                let pending = (stats["write_queue"] as? [String: Any])?["pending"] as? Int ?? 0
                #expect(pending >= 6, "\(stats)")  // at least the four turns since the stop, two messages each, minus a lucky batch

                try await postgres.restart()
                // postgres-nio's pool backs off up to 60 s between reconnects while the database is down.
                try await Self.eventually("the queue drained into PostgreSQL", timeout: .seconds(90)) {
                    let stats = try Self.json(try await process.adminGet(path: "/v1/stats").body)
                    return (stats["write_queue"] as? [String: Any])?["pending"] as? Int == 0
                }

                // Every message stored exactly once, in order, with its answer's text.
                var logger = Logger(label: "test")
                logger.logLevel = .critical
                let reader = try PostgresStorage(configuration: .init(url: try PostgresURL(postgres.url)), logger: logger)
                let pool = Task { await reader.run() }
                defer { pool.cancel() }
                let conversations = try await reader.listConversations(userExternalID: "frank", before: nil, limit: 50)
                #expect(Set(conversations.conversations.map { $0.id.uuidString.lowercased() }) == Set(turns.map(\.conversation)))
                var stored = 0
                for conversation in Set(turns.map(\.conversation)) {
                    let id = try #require(UUID(uuidString: conversation))
                    let page = try #require(try await reader.messages(conversationID: id, userExternalID: "frank", before: nil, limit: 100))
                    let expected = turns.filter { $0.conversation == conversation }.flatMap { [$0.content, $0.answer] }
                    #expect(page.messages.reversed().map(\.content) == expected)
                    #expect(Set(page.messages.map(\.id)).count == page.messages.count)
                    stored += page.messages.count
                }
                #expect(stored == turns.count * 2)
                await reader.shutdown()
            }
        }
    }
}
