import Foundation
import Testing
@testable import Storage

/// The same expectations of both implementations: SQLite (a temporary file) and a real
/// PostgreSQL started by the test (initdb into a temporary directory, random port).
/// Serialised so that at most one PostgreSQL server of this suite runs at a time.
@Suite(.serialized) struct StorageBehaviourTests {
    @Test(arguments: Backend.allCases)
    func jobsAreArchivedAndReplacedOnARetry(_ backend: Backend) async throws {
        try await backend.with { harness in
            var job = ArchivedJob(
                id: "job_0123456789abcdef0123456789abcdef", kind: "report", userExternalID: "alice", priority: "high",
                state: "FAILED", input: #"{"prompt":"rivers"}"#, attempts: 3, maxAttempts: 3, createdAt: 1_800_000_000_000_000)
            job.error = "upstream: refused"
            job.startedAt = 1_800_000_001_000_000
            job.finishedAt = 1_800_000_002_000_000
            try await harness.storage.archiveJob(job)
            #expect(try Self.sameJob(try await harness.storage.archivedJob(id: job.id), job))
            // Retried by an operator and archived again: the row is replaced, not duplicated.
            job.state = "SUCCEEDED"
            job.error = nil
            job.result = "# Rivers"
            job.resultType = "text/markdown; charset=utf-8"
            job.attempts = 1
            try await harness.storage.archiveJob(job)
            #expect(try Self.sameJob(try await harness.storage.archivedJob(id: job.id), job))
            #expect(try await harness.integer("SELECT count(*) FROM jobs") == 1)
            #expect(try await harness.storage.archivedJob(id: "job_missing") == nil)
        }
    }

    /// A job's spent tokens reach its submitter's quota when it is archived, once: archiving the
    /// same record again adds nothing, a later run of the job (an operator's retry) adds only
    /// what it spent on top.
    @Test(arguments: Backend.allCases)
    func aJobsTokensAreAddedToItsSubmittersQuotaOnce(_ backend: Backend) async throws {
        try await backend.with { harness in
            try await harness.storage.setQuota(userExternalID: "quincy", limit: 10_000, resetAt: nil, resetUsage: false)
            var job = ArchivedJob(
                id: "job_00000000000000000000000000000001", kind: "report", userExternalID: "quincy", priority: "normal",
                state: "SUCCEEDED", input: "{}", attempts: 1, maxAttempts: 3, createdAt: 1_800_000_000_000_000)
            job.tokensUsed = 1_234
            try await harness.storage.archiveJob(job)
            #expect(try await harness.storage.quota(userExternalID: "quincy")?.tokensUsed == 1_234)
            try await harness.storage.archiveJob(job)
            #expect(try await harness.storage.quota(userExternalID: "quincy")?.tokensUsed == 1_234, "counted twice")
            #expect(try await harness.storage.archivedJob(id: job.id)?.tokensUsed == 1_234)
            job.tokensUsed = 2_000
            try await harness.storage.archiveJob(job)
            #expect(try await harness.storage.quota(userExternalID: "quincy")?.tokensUsed == 2_000)
            // A user with no quota row yet gets one carrying the usage (a limit set later applies to it).
            var other = job
            other.id = "job_00000000000000000000000000000002"
            other.userExternalID = "rhea"
            other.tokensUsed = 77
            try await harness.storage.archiveJob(other)
            #expect(try await harness.storage.quota(userExternalID: "rhea")?.tokensUsed == 77)
            // Archived again with a stale (lower) count: nothing is taken back or added.
            other.tokensUsed = 10
            try await harness.storage.archiveJob(other)
            #expect(try await harness.storage.quota(userExternalID: "rhea")?.tokensUsed == 77)
            #expect(try await harness.storage.archivedJob(id: other.id)?.tokensUsed == 77)
        }
    }

    /// Equal, with the input compared as JSON (PostgreSQL's jsonb normalises its spacing).
    static func sameJob(_ stored: ArchivedJob?, _ expected: ArchivedJob) throws -> Bool {
        guard var stored else { return false }
        let parse = { (text: String) in try JSONSerialization.jsonObject(with: Data(text.utf8)) as? NSDictionary }
        guard try parse(stored.input) == parse(expected.input) else { return false }
        stored.input = expected.input
        return stored == expected
    }

    @Test(arguments: Backend.allCases)
    func toolRunsAreLoggedOncePerID(_ backend: Backend) async throws {
        try await backend.with { harness in
            let conversation = UUID()
            let records = [
                ToolExecutionRecord(generationID: "gen_1", conversationID: conversation, userExternalID: "tess", callID: "call_1",
                                    toolName: "calculator", input: #"{"expression":"6*7"}"#, output: "42", status: "ok",
                                    durationMs: 1, createdAt: 1_800_000_000_000_000),
                ToolExecutionRecord(generationID: "gen_1", conversationID: conversation, userExternalID: "tess", callID: "call_2",
                                    toolName: "lookup", input: "{not json", output: #"{"error":"invalid arguments"}"#,
                                    status: "invalid_arguments", durationMs: 0, createdAt: 1_800_000_000_000_001),
            ]
            try await harness.storage.recordToolExecutions(records)
            try await harness.storage.recordToolExecutions(records)  // a retried write
            let logged = try await harness.storage.toolExecutions(generationID: "gen_1")
            #expect(logged.map(\.callID) == ["call_1", "call_2"])
            #expect(logged[0].output == "42" && logged[0].toolName == "calculator" && logged[0].conversationID == conversation)
            #expect(logged[1].input == "{not json" && logged[1].status == "invalid_arguments")
            let arguments = try await harness.storage.toolExecutions(generationID: "gen_1")[0].input
            #expect(try JSONSerialization.jsonObject(with: Data(arguments.utf8)) as? [String: String] == ["expression": "6*7"])
            #expect(try await harness.storage.toolExecutions(generationID: "gen_2").isEmpty)
        }
    }

    @Test(arguments: Backend.allCases)
    func migrationsRunFromEmptyAndAgain(_ backend: Backend) async throws {
        try await backend.with { harness in
            // The harness migrated an empty database once; twice more changes nothing.
            try await harness.storage.migrate()
            try await harness.storage.migrate()
            // Four migrations: the conversation tables, then jobs and the tool_executions columns,
            // then the jobs' token columns, then usage_records.
            #expect(try await harness.integer("SELECT count(*) FROM schema_migrations") == 4)
            for table in ["users", "conversations", "messages", "tool_executions", "user_quotas", "jobs", "usage_records"] {
                #expect(try await harness.integer("SELECT count(*) FROM \(table)") == 0, "\(table)")
            }
            // And it still works after the re-runs.
            try await harness.storage.appendMessages(exchange(user: "u", conversation: UUID(), at: Date()))
            #expect(try await harness.integer("SELECT count(*) FROM messages") == 2)
        }
    }

    @Test(arguments: Backend.allCases)
    func storesAGenerationWithUsage(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            let conversation = UUID()
            let start = Date()
            let batch = exchange(user: "alice", conversation: conversation, at: start, text: "what is 2+2?",
                                 title: "Arithmetic", answer: "4", promptTokens: 12, completionTokens: 1)
            let first = try await storage.appendMessages(batch)
            #expect(first == AppendResult(inserted: 2))

            // A retried batch (reply lost) stores nothing twice and counts no usage twice.
            let again = try await storage.appendMessages(batch)
            #expect(again == AppendResult(inserted: 0, alreadyStored: 2))
            #expect(try await harness.integer("SELECT count(*) FROM messages") == 2)
            #expect(try await harness.integer("SELECT count(*) FROM users") == 1)
            #expect(try await harness.integer("SELECT tokens_used FROM user_quotas") == 13)

            let page = try #require(try await storage.messages(conversationID: conversation, userExternalID: "alice", before: nil, limit: 10))
            #expect(page.messages.map(\.content) == ["4", "what is 2+2?"])
            #expect(page.next == nil)
            let answer = page.messages[0]
            #expect(answer.role == .assistant && answer.finishReason == "stop" && answer.model == "sluice-simulator")
            #expect(answer.promptTokens == 12 && answer.completionTokens == 1)
            #expect(answer.createdAtMicroseconds == batch[1].createdAt.microsecondsSince1970)

            let list = try await storage.listConversations(userExternalID: "alice", before: nil, limit: 10)
            #expect(list.conversations.map(\.id) == [conversation])
            #expect(list.conversations.first?.title == "Arithmetic")
            #expect(list.conversations.first?.createdAtMicroseconds == start.microsecondsSince1970)
            #expect(list.conversations.first?.updatedAtMicroseconds == batch[1].createdAt.microsecondsSince1970)

            // A later message moves updated_at forward; an older retry does not move it back.
            let later = exchange(user: "alice", conversation: conversation, at: start.addingTimeInterval(60), answer: nil)
            try await storage.appendMessages(later)
            try await storage.appendMessages(batch)
            let updated = try await storage.listConversations(userExternalID: "alice", before: nil, limit: 10)
            #expect(updated.conversations.first?.updatedAtMicroseconds == later[0].createdAt.microsecondsSince1970)
            #expect(try await storage.conversationOwner(conversation) == "alice")
            #expect(try await storage.conversationOwner(UUID()) == nil)
        }
    }

    @Test(arguments: Backend.allCases)
    func conversationPagesHaveNoGapsAndNoDuplicates(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            let base = utc(2026, 3, 1, 12)
            var expected: [UUID] = []
            var batch: [NewMessage] = []
            // 23 conversations; 6 of them share one timestamp, so ties are broken by id.
            for index in 0..<23 {
                let conversation = UUID()
                expected.append(conversation)
                let time = index < 6 ? base : base.addingTimeInterval(Double(index) * 10)
                batch += exchange(user: "alice", conversation: conversation, at: time, answer: nil)
            }
            // Someone else's conversations never show up.
            batch += exchange(user: "bob", conversation: UUID(), at: base.addingTimeInterval(5))
            try await storage.appendMessages(batch)

            var seen: [ConversationSummary] = []
            var cursor: ConversationCursor?
            var pages = 0
            repeat {
                let page = try await storage.listConversations(userExternalID: "alice", before: cursor, limit: 5)
                #expect(page.conversations.count <= 5)
                seen += page.conversations
                // The cursor survives being passed around as a token.
                cursor = try page.next.map { try #require(ConversationCursor(token: $0.token)) }
                pages += 1
            } while cursor != nil && pages < 20
            #expect(pages == 5)
            #expect(seen.count == 23)
            #expect(Set(seen.map(\.id)) == Set(expected))
            let keys = seen.map { ($0.updatedAtMicroseconds, $0.id.uuidString.lowercased()) }
            #expect(zip(keys, keys.dropFirst()).allSatisfy { $0 > $1 }, "strictly newest first")
            #expect(try await storage.listConversations(userExternalID: "nobody", before: nil, limit: 5).conversations.isEmpty)
        }
    }

    @Test(arguments: Backend.allCases)
    func messagePagesHaveNoGapsAndNoDuplicates(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            let conversation = UUID()
            let base = utc(2026, 5, 10, 8)
            var written: [NewMessage] = []
            for index in 0..<37 {
                // Every third message shares the previous one's timestamp.
                let time = base.addingTimeInterval(Double(index - index / 3))
                written.append(NewMessage(
                    conversationID: conversation, userExternalID: "alice", role: index.isMultiple(of: 2) ? .user : .assistant,
                    content: "message \(index)", createdAt: time
                ))
            }
            // In several batches, as the queue would.
            for chunk in stride(from: 0, to: written.count, by: 10) {
                try await storage.appendMessages(Array(written[chunk..<min(chunk + 10, written.count)]))
            }

            var seen: [StoredMessage] = []
            var cursor: MessageCursor?
            var pages = 0
            repeat {
                let page = try #require(try await storage.messages(conversationID: conversation, userExternalID: "alice", before: cursor, limit: 10))
                seen += page.messages
                cursor = try page.next.map { try #require(MessageCursor(token: $0.token)) }
                pages += 1
            } while cursor != nil && pages < 20
            #expect(pages == 4)
            #expect(seen.count == 37)
            #expect(Set(seen.map(\.id)) == Set(written.map(\.id)))
            let keys = seen.map { ($0.createdAtMicroseconds, $0.id.uuidString.lowercased()) }
            #expect(zip(keys, keys.dropFirst()).allSatisfy { $0 > $1 }, "strictly newest first")

            // A page past the end is empty, not nil: the conversation exists.
            let last = try #require(seen.last)
            let beyond = try await storage.messages(conversationID: conversation, userExternalID: "alice", before: last.cursor, limit: 10)
            #expect(beyond?.messages.isEmpty == true && beyond?.next == nil)
        }
    }

    @Test(arguments: Backend.allCases)
    func usersOnlySeeTheirOwnConversations(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            let alices = UUID()
            try await storage.appendMessages(exchange(user: "alice", conversation: alices, at: Date(), text: "secret"))

            #expect(try await storage.messages(conversationID: alices, userExternalID: "bob", before: nil, limit: 10) == nil)
            #expect(try await storage.messages(conversationID: UUID(), userExternalID: "alice", before: nil, limit: 10) == nil)
            #expect(try await storage.listConversations(userExternalID: "bob", before: nil, limit: 10).conversations.isEmpty)
            #expect(try await storage.messages(conversationID: alices, userExternalID: "alice", before: nil, limit: 10)?.messages.count == 2)
            // Without a user (an internal caller), ownership is not checked.
            #expect(try await storage.messages(conversationID: alices, userExternalID: nil, before: nil, limit: 10)?.messages.count == 2)

            // Bob cannot write into Alice's conversation, not even in a batch that also creates his own.
            let bobs = UUID()
            let intrusion = NewMessage(conversationID: alices, userExternalID: "bob", role: .user, content: "mine now")
            let result = try await storage.appendMessages([intrusion] + exchange(user: "bob", conversation: bobs, at: Date()))
            #expect(result == AppendResult(inserted: 2, rejected: 1))
            #expect(try await storage.conversationOwner(alices) == "alice")
            let alicePage = try await storage.messages(conversationID: alices, userExternalID: "alice", before: nil, limit: 10)
            #expect(alicePage?.messages.contains { $0.content == "mine now" } == false)
            #expect(try await storage.listConversations(userExternalID: "bob", before: nil, limit: 10).conversations.map(\.id) == [bobs])
            // Bob's usage is counted, Alice's unchanged.
            #expect(try await harness.integer("SELECT CAST(sum(tokens_used) AS bigint) FROM user_quotas") == 20)
        }
    }

    @Test(arguments: Backend.allCases)
    func contextKeepsTheNewestMessagesWithinTheBudget(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            let conversation = UUID()
            let base = Date()
            // 10, 20, 30 and 40 characters, oldest first; the last is 40 two-byte characters.
            let contents = [String(repeating: "a", count: 10), String(repeating: "b", count: 20),
                            String(repeating: "c", count: 30), String(repeating: "é", count: 40)]
            try await storage.appendMessages(contents.enumerated().map { index, content in
                NewMessage(conversationID: conversation, userExternalID: "alice", role: index.isMultiple(of: 2) ? .user : .assistant,
                           content: content, createdAt: base.addingTimeInterval(Double(index)))
            })
            func lengths(_ budget: Int) async throws -> [Int] {
                try await storage.context(conversationID: conversation, maxCharacters: budget).map(\.content.unicodeScalars.count)
            }
            #expect(try await lengths(1000) == [10, 20, 30, 40])
            #expect(try await lengths(100) == [10, 20, 30, 40])
            #expect(try await lengths(99) == [20, 30, 40])
            #expect(try await lengths(70) == [30, 40])
            #expect(try await lengths(69) == [40])
            #expect(try await lengths(39) == [])
            #expect(try await lengths(0) == [])
            #expect(try await storage.context(conversationID: UUID(), maxCharacters: 100).isEmpty)
            let roles = try await storage.context(conversationID: conversation, maxCharacters: 100).map(\.role)
            #expect(roles == [.user, .assistant, .user, .assistant])
        }
    }

    @Test(arguments: Backend.allCases)
    func textThatADatabaseCannotHoldIsStoredNotRetriedForever(_ backend: Backend) async throws {
        try await backend.with { harness in
            let conversation = UUID()
            try await harness.storage.appendMessages([
                NewMessage(conversationID: conversation, userExternalID: "nul\u{0}user", role: .user, content: "a\u{0}b 👍🏽"),
            ])
            let page = try await harness.storage.messages(conversationID: conversation, userExternalID: "nul\u{FFFD}user", before: nil, limit: 1)
            #expect(page?.messages.first?.content == "a\u{FFFD}b 👍🏽")
        }
    }

    /// The issue's benchmark: database statements per generation through the write-behind
    /// queue. Aim: at most 2 writes (the user message at the start, the assistant's at the end).
    @Test(arguments: Backend.allCases)
    func atMostTwoWritesPerGeneration(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            let queue = WriteBehindQueue(storage: storage, logger: testLogger)
            let runner = Task { await queue.run() }
            defer { runner.cancel() }

            // One generation at a time: the worst case for batching.
            let before = storage.metrics
            let generations = 20
            for index in 0..<generations {
                let messages = exchange(user: "alice", conversation: UUID(), at: Date().addingTimeInterval(Double(index)))
                #expect(queue.enqueue(messages[0], reservingFollowUps: 1))
                #expect(await queue.flush(timeout: .seconds(10)))
                queue.enqueueReserved(messages[1])
                #expect(await queue.flush(timeout: .seconds(10)))
            }
            let sequential = storage.metrics.since(before)

            // Many generations at once: their writes share batches.
            let concurrentStart = storage.metrics
            for index in 0..<generations {
                let messages = exchange(user: "user\(index % 4)", conversation: UUID(), at: Date())
                #expect(queue.enqueue(messages[0], reservingFollowUps: 1))
                queue.enqueueReserved(messages[1])
            }
            #expect(await queue.flush(timeout: .seconds(10)))
            let concurrent = storage.metrics.since(concurrentStart)

            // A write is one statement on PostgreSQL, one transaction of a few statements on SQLite.
            let perGeneration = backend == .postgres ? sequential.writeStatements : sequential.writeTransactions
            print("storage benchmark [\(harness.name)]: \(generations) generations one at a time: "
                + "\(sequential.writeStatements) write statements, \(sequential.writeTransactions) write transactions, "
                + "\(sequential.readStatements) reads; \(generations) at once: \(concurrent.writeStatements) write statements, "
                + "\(concurrent.writeTransactions) write transactions")
            #expect(perGeneration <= 2 * generations)
            #expect(sequential.readStatements == 0)
            #expect(concurrent.writeTransactions < generations)
            let stored = try await harness.integer("SELECT count(*) FROM messages")
            #expect(stored == Int64(4 * generations))
            #expect(queue.counters.written == 4 * generations && queue.counters.retries == 0)
        }
    }
}

@Suite struct QuotaStorageTests {
    /// Usage of generations that store no message (the OpenAI front door): added to
    /// `tokens_used` once per record id, whatever the retries; rows and sums within range.
    @Test(arguments: Backend.allCases)
    func usageRecordsCountOnce(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            try await storage.setQuota(userExternalID: "quinn", limit: 1_000, resetAt: nil, resetUsage: false)
            let first = UsageRecord(id: "chatcmpl-0000000000000001", userExternalID: "quinn", tokens: 40)
            let second = UsageRecord(id: "chatcmpl-0000000000000002", userExternalID: "quinn", tokens: 30)
            #expect(try await storage.recordUsage([first, second]) == 2)
            #expect(try await storage.quota(userExternalID: "quinn")?.tokensUsed == 70)
            // The same records again (a retry after a lost reply): nothing is added.
            #expect(try await storage.recordUsage([first, second]) == 0)
            #expect(try await storage.recordUsage([second]) == 0)
            #expect(try await storage.quota(userExternalID: "quinn")?.tokensUsed == 70, "counted twice")
            // The same id twice in one batch counts once; a known one beside a new one adds only the new.
            let third = UsageRecord(id: "chatcmpl-0000000000000003", userExternalID: "quinn", tokens: 5)
            #expect(try await storage.recordUsage([third, third, first]) == 1)
            #expect(try await storage.quota(userExternalID: "quinn")?.tokensUsed == 75)
            #expect(try await storage.quota(userExternalID: "quinn")?.tokensLimit == 1_000)
            // Someone who never chatted and has no quota row gets both (a limit set later applies to it).
            #expect(try await storage.recordUsage([UsageRecord(id: "chatcmpl-r", userExternalID: "rhea", tokens: 9)]) == 1)
            let rhea = try #require(try await storage.quota(userExternalID: "rhea"))
            #expect(rhea.tokensUsed == 9 && rhea.tokensLimit == nil)
            // Out-of-range counts: negative is 0, and the sum stops at the largest integer.
            #expect(try await storage.recordUsage([UsageRecord(id: "chatcmpl-negative", userExternalID: "quinn", tokens: -50)]) == 1)
            #expect(try await storage.quota(userExternalID: "quinn")?.tokensUsed == 75)
            let huge = [
                UsageRecord(id: "chatcmpl-huge-1", userExternalID: "sam", tokens: .max),
                UsageRecord(id: "chatcmpl-huge-2", userExternalID: "sam", tokens: .max),
            ]
            #expect(try await storage.recordUsage(huge) == 2)
            #expect(try await storage.recordUsage([UsageRecord(id: "chatcmpl-huge-3", userExternalID: "sam", tokens: 10)]) == 1)
            #expect(try await storage.quota(userExternalID: "sam")?.tokensUsed == .max)
            #expect(try await harness.integer("SELECT count(*) FROM usage_records") == 8)
            #expect(try await storage.recordUsage([]) == 0)
        }
    }

    /// Records older than `UsageRecord.retention` are deleted in batches; the usage they added stays.
    @Test(arguments: Backend.allCases)
    func oldUsageRecordsAreDeleted(_ backend: Backend) async throws {
        try await backend.with { (harness: any StorageHarness) async throws -> Void in
            let storage = harness.storage
            let now = Date()
            let old = now.addingTimeInterval(-UsageRecord.retention - 60)
            let records = [
                UsageRecord(id: "chatcmpl-old-1", userExternalID: "olga", tokens: 1, createdAt: old),
                UsageRecord(id: "chatcmpl-old-2", userExternalID: "olga", tokens: 2, createdAt: old.addingTimeInterval(1)),
                UsageRecord(id: "chatcmpl-old-3", userExternalID: "olga", tokens: 3, createdAt: old.addingTimeInterval(2)),
                UsageRecord(id: "chatcmpl-new", userExternalID: "olga", tokens: 4, createdAt: now.addingTimeInterval(-UsageRecord.retention + 60)),
            ]
            #expect(try await storage.recordUsage(records) == 4)
            // Two at a time: two batches, the second one short.
            #expect(try await storage.pruneUsageRecords(now: now, batch: 2) == 3)
            #expect(try await harness.integer("SELECT count(*) FROM usage_records") == 1)
            #expect(try await storage.pruneUsageRecords(now: now, batch: 2) == 0)
            #expect(try await storage.quota(userExternalID: "olga")?.tokensUsed == 10)
            // The newer one still guards against a retry.
            #expect(try await storage.recordUsage([records[3]]) == 0)
            // At most maxBatches per call: the rest is left for the next.
            var later: [UsageRecord] = []
            for index in 1...3 { later.append(UsageRecord(id: "chatcmpl-later-\(index)", userExternalID: "olga", tokens: 1, createdAt: old)) }
            #expect(try await storage.recordUsage(later) == 3)
            #expect(try await storage.pruneUsageRecords(now: now, batch: 1, maxBatches: 2) == 2)
            #expect(try await harness.integer("SELECT count(*) FROM usage_records") == 2)
        }
    }

    @Test(arguments: Backend.allCases)
    func quotasAreSetReadCountedAndReset(_ backend: Backend) async throws {
        try await backend.with { harness in
            let storage = harness.storage
            #expect(try await storage.quota(userExternalID: "quinn") == nil)
            // Setting a quota for a user who never chatted creates the user.
            let resetAt = Date(timeIntervalSince1970: 1_900_000_000)
            try await storage.setQuota(userExternalID: "quinn", limit: 1_000, resetAt: resetAt, resetUsage: false)
            var record = try #require(try await storage.quota(userExternalID: "quinn"))
            #expect(record.tokensUsed == 0 && record.tokensLimit == 1_000)
            #expect(abs((record.resetAt?.timeIntervalSince1970 ?? 0) - resetAt.timeIntervalSince1970) < 0.001)
            // Usage stored with answers counts against it.
            _ = try await storage.appendMessages(exchange(
                user: "quinn", conversation: UUID(), at: Date(), text: "q", title: "t", answer: "a", promptTokens: 30, completionTokens: 12))
            record = try #require(try await storage.quota(userExternalID: "quinn"))
            #expect(record.tokensUsed == 42)
            // Changing the limit keeps the usage unless asked.
            try await storage.setQuota(userExternalID: "quinn", limit: 500, resetAt: resetAt, resetUsage: false)
            #expect(try await storage.quota(userExternalID: "quinn")?.tokensUsed == 42)
            // A reset that is due zeroes the usage and moves reset_at past now by whole periods.
            let past = Date().addingTimeInterval(-250)
            try await storage.setQuota(userExternalID: "quinn", limit: 500, resetAt: past, resetUsage: false)
            try await storage.setQuota(userExternalID: "other", limit: 10, resetAt: resetAt, resetUsage: false)
            let now = Date()
            #expect(try await storage.resetDueQuotas(now: now, period: 100) == 1)
            record = try #require(try await storage.quota(userExternalID: "quinn"))
            #expect(record.tokensUsed == 0)
            let next = try #require(record.resetAt)
            #expect(next > now && next <= now.addingTimeInterval(100.001), "\(next) after \(now)")
            let offset = next.timeIntervalSince(past).truncatingRemainder(dividingBy: 100)
            #expect(min(offset, 100 - offset) < 0.01, "moved by whole periods: \(offset)")
            // Nothing more is due.
            #expect(try await storage.resetDueQuotas(now: now, period: 100) == 0)
            try await storage.setQuota(userExternalID: "quinn", limit: nil, resetAt: nil, resetUsage: true)
            record = try #require(try await storage.quota(userExternalID: "quinn"))
            #expect(record.tokensLimit == nil && record.resetAt == nil && record.tokensUsed == 0)
        }
    }
}
