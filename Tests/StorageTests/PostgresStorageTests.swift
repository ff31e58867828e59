import Foundation
import PostgresNIO
import Testing
@testable import SluiceTestSupport
@testable import Storage

/// What only PostgreSQL has: monthly partitions, and a server that can go away and come back.
@Suite(.serialized) struct PostgresStorageTests {
    @Test func migrationCreatesTheCurrentAndComingMonthsPartitions() async throws {
        try await PostgresHarness.with { harness in
            let now = PartitionMonth(containing: Date())
            for month in [now.adding(months: -1), now, now.adding(months: 3)] {
                #expect(try await harness.partitionExists(month.tableName), "\(month)")
            }
            #expect(try await !harness.partitionExists(now.adding(months: 5).tableName))
            // Migrating again creates nothing new and fails on nothing existing.
            let before = try await harness.integer(PostgresHarness.partitionCount)
            try await harness.storage.migrate()
            #expect(try await harness.integer(PostgresHarness.partitionCount) == before)
        }
    }

    @Test func messagesAtAMonthBoundaryLandInAutoCreatedPartitions() async throws {
        try await PostgresHarness.with { harness in
            // Far enough ahead that neither migrate() nor maintenance made these partitions.
            let lastInstantOfJanuary = utc(2031, 1, 31, 23, 59, 59, milliseconds: 999)
            let firstInstantOfFebruary = utc(2031, 2, 1)
            #expect(try await !harness.partitionExists("messages_y2031m01"))
            let conversation = UUID()
            let january = NewMessage(conversationID: conversation, userExternalID: "alice", role: .user,
                                     content: "just before midnight", createdAt: lastInstantOfJanuary)
            let february = NewMessage(conversationID: conversation, userExternalID: "alice", role: .assistant,
                                      content: "just after", promptTokens: 1, completionTokens: 2, createdAt: firstInstantOfFebruary)
            let result = try await harness.storage.appendMessages([january, february])
            #expect(result.inserted == 2)

            #expect(try await harness.partitionOf(january.id) == "messages_y2031m01")
            #expect(try await harness.partitionOf(february.id) == "messages_y2031m02")
            #expect(try await harness.integer(PostgresHarness.partitionCount + " AND c.relname IN ('messages_y2031m01', 'messages_y2031m02')") == 2)
            // Stored to the microsecond.
            let page = try await harness.storage.messages(conversationID: conversation, userExternalID: "alice", before: nil, limit: 5)
            #expect(page?.messages.map(\.createdAtMicroseconds) == [firstInstantOfFebruary, lastInstantOfJanuary].map(\.microsecondsSince1970))

            // ensurePartitions ahead: three months from May 2031, none missing afterwards.
            try await harness.storage.ensurePartitions(from: utc(2031, 5, 17), monthsAhead: 2)
            for name in ["messages_y2031m05", "messages_y2031m06", "messages_y2031m07"] {
                #expect(try await harness.partitionExists(name), "\(name)")
            }
            #expect(try await !harness.partitionExists("messages_y2031m08"))
            let inJuly = NewMessage(conversationID: conversation, userExternalID: "alice", role: .user,
                                    content: "july", createdAt: utc(2031, 7, 31, 23, 59, 59, milliseconds: 999))
            let before = harness.storage.metrics
            try await harness.storage.appendMessages([inJuly])
            #expect(harness.storage.metrics.since(before).writeStatements == 1, "no partition had to be created")
            #expect(try await harness.partitionOf(inJuly.id) == "messages_y2031m07")
        }
    }

    /// PostgreSQL stopped mid-way: chats keep enqueueing, writes wait and are retried, and
    /// after the restart every message is stored exactly once, usage counted once.
    @Test func writesQueuedWhilePostgresIsDownAreStoredExactlyOnce() async throws {
        try await PostgresHarness.with(operationTimeout: .seconds(2)) { harness in
            let queue = WriteBehindQueue(
                storage: harness.storage,
                configuration: .init(capacity: 1000, batchSize: 16, initialBackoff: .milliseconds(50), maximumBackoff: .milliseconds(500)),
                logger: testLogger
            )
            let runner = Task { await queue.run() }
            defer { runner.cancel() }

            var expected: [NewMessage] = []
            func generation(_ index: Int) -> [NewMessage] {
                exchange(user: "user\(index % 3)", conversation: UUID(), at: Date(), text: "question \(index)",
                         answer: "answer \(index)", promptTokens: 5, completionTokens: index)
            }
            for index in 0..<10 {
                let messages = generation(index)
                expected += messages
                #expect(queue.enqueue(messages[0], reservingFollowUps: 1))
                queue.enqueueReserved(messages[1])
            }
            #expect(await queue.flush(timeout: .seconds(20)))

            try await harness.server.stop()
            for index in 10..<60 {
                let messages = generation(index)
                expected += messages
                #expect(queue.enqueue(messages[0], reservingFollowUps: 1), "the queue has room: nothing is refused")
                try await Task.sleep(for: .milliseconds(20))
                queue.enqueueReserved(messages[1])
            }
            // The writes are waiting and being retried, not lost.
            try await eventually("a write is retried", timeout: .seconds(30)) { queue.counters.retries > 0 }
            #expect(queue.counters.pending > 0)

            try await harness.server.restart()
            #expect(await queue.flush(timeout: .seconds(60)), "pending: \(queue.counters.pending)")

            #expect(try await harness.integer("SELECT count(*) FROM messages") == Int64(expected.count))
            #expect(try await harness.integer("SELECT count(DISTINCT id) FROM messages") == Int64(expected.count))
            let tokens = expected.filter { $0.role == .assistant }.reduce(0) { $0 + ($1.promptTokens ?? 0) + ($1.completionTokens ?? 0) }
            #expect(try await harness.integer("SELECT sum(tokens_used)::int8 FROM user_quotas") == Int64(tokens))
            #expect(queue.counters.written == expected.count)
            #expect(queue.counters.refusedFull == 0)
        }
    }

    @Test func aCrashedServerComesBackWithEverythingCommitted() async throws {
        try await PostgresHarness.with(operationTimeout: .seconds(2)) { harness in
            let conversation = UUID()
            try await harness.storage.appendMessages(exchange(user: "alice", conversation: conversation, at: Date()))
            await harness.server.kill()
            await #expect(throws: StorageError.self) {
                try await harness.storage.conversationOwner(conversation)
            }
            try await harness.server.restart()
            // The pool reconnects by itself; give it a moment after recovery.
            var owner: String?
            var lastError: (any Error)?
            for _ in 0..<50 where owner == nil {
                do {
                    owner = try await harness.storage.conversationOwner(conversation)
                } catch {
                    lastError = error
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            #expect(owner == "alice", "last error: \(String(describing: lastError)); server log: \(harness.server.logTail())")
        }
    }

    @Test func operationsFailWithShutDownAfterShutdown() async throws {
        try await PostgresHarness.with { harness in
            await harness.storage.shutdown()
            await #expect(throws: StorageError.shutDown) {
                try await harness.storage.conversationOwner(UUID())
            }
        }
    }
}

extension PostgresHarness {
    static let partitionCount = """
        SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'messages'::regclass
        """

    func partitionExists(_ name: String) async throws -> Bool {
        try await self.integer(Self.partitionCount + " AND c.relname = '\(name)'") == 1
    }

    /// The partition a message row physically lives in.
    func partitionOf(_ id: UUID) async throws -> String? {
        try await self.text("SELECT tableoid::regclass::text FROM messages WHERE id = \(id)")
    }
}
