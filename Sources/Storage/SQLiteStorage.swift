import Foundation
import Logging
import NIOConcurrencyHelpers
import SQLiteNIO

/// `ConversationStorage` in an embedded SQLite file (sqlite-nio, which brings its own SQLite and
/// runs every call on NIO's thread pool, never on an event loop): the default when no database
/// URL is given. Same tables and semantics as PostgreSQL, minus partitions; JSON columns are TEXT,
/// UUIDs lowercase TEXT, timestamps INTEGER microseconds since 1970.
///
/// One connection, one operation at a time (a `SerialGate`): SQLite has a single writer anyway,
/// and the write-behind queue batches. No `run()` is needed.
public final class SQLiteStorage: ConversationStorage {
    public let path: String
    private let connection: SQLiteConnection
    private let logger: Logger
    private let gate = SerialGate()
    private let counters = NIOLockedValueBox(StorageMetrics())
    private let isShutDown = NIOLockedValueBox(false)

    private init(path: String, connection: SQLiteConnection, logger: Logger) {
        self.path = path
        self.connection = connection
        self.logger = logger
    }

    /// Opens (creating it and its directory if needed) the database at `path`; `":memory:"` for
    /// a private in-memory database (tests).
    ///
    /// Conversations are private: a directory it creates is 0700 and the database file 0600
    /// (SQLite gives its `-wal` and `-shm` files the database's mode), whatever the umask. An
    /// existing database (and `-wal`/`-shm`) readable by others is tightened to 0600; an existing
    /// directory is left as it is (it may be shared, `.` for instance) with a warning when others
    /// may enter it.
    public static func open(
        path: String,
        logger: Logger = Logger(label: "sluice.storage.sqlite")
    ) async throws(StorageError) -> SQLiteStorage {
        let inMemory = path == ":memory:"
        do {
            if !inMemory {
                try PrivateFiles.prepare(databasePath: path, logger: logger)
            }
            let connection = try await SQLiteConnection.open(storage: inMemory ? .memory : .file(path: path), logger: logger)
            do {
                // WAL: readers (other tools) do not block the writer; NORMAL is durable across
                // process crashes, and a power loss can only lose the last transactions.
                if !inMemory { _ = try await connection.query("PRAGMA journal_mode = WAL") }
                _ = try await connection.query("PRAGMA synchronous = NORMAL")
                _ = try await connection.query("PRAGMA foreign_keys = ON")
            } catch {
                try? await connection.close()
                throw error
            }
            return SQLiteStorage(path: path, connection: connection, logger: logger)
        } catch {
            throw Self.storageError(error)
        }
    }

    public var metrics: StorageMetrics { self.counters.withLockedValue { $0 } }

    public func shutdown() async {
        let wasShutDown = self.isShutDown.withLockedValue { state in
            defer { state = true }
            return state
        }
        guard !wasShutDown else { return }
        // Waits for the operation in progress, if any.
        await self.gate.acquire()
        try? await self.connection.close()
        await self.gate.release()
    }

    // MARK: Schema

    public func migrate() async throws(StorageError) {
        try await self.exclusive { () throws(StorageError) in
            _ = try await self.run(SQLiteSchema.createMigrationsTable, write: true)
            for migration in SQLiteSchema.migrations {
                try await self.transaction { () throws(StorageError) in
                    let applied = try await self.run("SELECT 1 FROM schema_migrations WHERE version = ?", [.integer(.init(migration.version))])
                    guard applied.isEmpty else { return }
                    for statement in migration.statements {
                        _ = try await self.run(statement, write: true)
                    }
                    _ = try await self.run(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                        [.integer(.init(migration.version)), .integer(.init(Date().microsecondsSince1970))], write: true
                    )
                    self.logger.info("applied schema migration", metadata: ["version": "\(migration.version)"])
                }
            }
        }
    }

    /// SQLite has no partitions: nothing to do.
    public func ensurePartitions(from start: Date, monthsAhead: Int) async throws(StorageError) {}

    // MARK: Writes

    @discardableResult
    public func appendMessages(_ batch: [NewMessage]) async throws(StorageError) -> AppendResult {
        let plan = AppendPlan(batch)
        var result = AppendResult(alreadyStored: plan.duplicatesInBatch, rejected: plan.rejectedInBatch)
        guard !plan.messages.isEmpty else { return result }
        let now = Date().microsecondsSince1970

        try await self.exclusive { () throws(StorageError) in
            try await self.transaction { () throws(StorageError) in
                // A few multi-row statements per batch, not one per message: each statement is a
                // round trip to sqlite-nio's thread, which is what a batch's cost was made of.
                var rejected = 0
                for users in Array(Set(plan.conversations.map(\.userExternalID))).chunked(Self.rowsPerStatement) {
                    _ = try await self.run(
                        "INSERT INTO users (id, external_id, created_at) VALUES \(Self.placeholders(rows: users.count, columns: 3)) "
                            + "ON CONFLICT (external_id) DO NOTHING",
                        users.flatMap { [.text(UUID().lowercased), .text($0), .integer(.init(now))] }, write: true
                    )
                }
                // Conversations this batch may write to (new, or already this user's).
                var accepted: [UUID: String] = [:]
                let owners = Dictionary(plan.conversations.map { ($0.id, $0.userExternalID) }, uniquingKeysWith: { first, _ in first })
                for conversations in plan.conversations.chunked(Self.rowsPerStatement) {
                    // `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the INSERT.
                    let rows = try await self.run(
                        """
                        INSERT INTO conversations (id, user_id, title, created_at, updated_at)
                        SELECT v.column1, u.id, v.column2, v.column3, v.column4
                        FROM (VALUES \(Self.placeholders(rows: conversations.count, columns: 5))) AS v
                        JOIN users u ON u.external_id = v.column5 WHERE true
                        ON CONFLICT (id) DO UPDATE
                            SET updated_at = max(conversations.updated_at, excluded.updated_at),
                                title = coalesce(conversations.title, excluded.title)
                            WHERE conversations.user_id = excluded.user_id
                        RETURNING id
                        """,
                        conversations.flatMap { conversation -> [SQLiteData] in
                            [.text(conversation.id.lowercased), conversation.title.map(SQLiteData.text) ?? .null,
                             .integer(.init(conversation.firstMicroseconds)), .integer(.init(conversation.lastMicroseconds)),
                             .text(conversation.userExternalID)]
                        },
                        write: true
                    )
                    for row in rows {
                        let id = try row.uuid("id")
                        accepted[id] = owners[id]
                    }
                }
                var writable: [AppendPlan.Message] = []
                for message in plan.messages {
                    if accepted[message.conversationID] == nil { rejected += 1 } else { writable.append(message) }
                }
                var insertedIDs = Set<UUID>()
                for messages in writable.chunked(Self.rowsPerStatement) {
                    let rows = try await self.run(
                        """
                        INSERT INTO messages (id, conversation_id, role, content, finish_reason,
                                              prompt_tokens, completion_tokens, model, created_at)
                        VALUES \(Self.placeholders(rows: messages.count, columns: 9))
                        ON CONFLICT (id, created_at) DO NOTHING
                        RETURNING id
                        """,
                        messages.flatMap { message -> [SQLiteData] in
                            [.text(message.id.lowercased), .text(message.conversationID.lowercased), .text(message.role.rawValue),
                             .text(message.content), message.finishReason.map(SQLiteData.text) ?? .null,
                             message.promptTokens.map { .integer(.init($0)) } ?? .null,
                             message.completionTokens.map { .integer(.init($0)) } ?? .null,
                             message.model.map(SQLiteData.text) ?? .null, .integer(.init(message.createdMicroseconds))]
                        },
                        write: true
                    )
                    for row in rows { insertedIDs.insert(try row.uuid("id")) }
                }
                let inserted = insertedIDs.count
                var usage: [String: Int] = [:]
                for message in writable where message.role == .assistant && insertedIDs.contains(message.id) {
                    guard let user = accepted[message.conversationID] else { continue }
                    usage[user, default: 0] += (message.promptTokens ?? 0) + (message.completionTokens ?? 0)
                }
                for users in Array(usage).chunked(Self.rowsPerStatement) {
                    _ = try await self.run(
                        """
                        INSERT INTO user_quotas (user_id, tokens_used)
                        SELECT u.id, v.column2 FROM (VALUES \(Self.placeholders(rows: users.count, columns: 2))) AS v
                        JOIN users u ON u.external_id = v.column1 WHERE true
                        ON CONFLICT (user_id) DO UPDATE SET tokens_used = user_quotas.tokens_used + excluded.tokens_used
                        """,
                        users.flatMap { [.text($0.key), .integer(.init($0.value))] }, write: true
                    )
                }
                result.inserted = inserted
                result.rejected += rejected
                result.alreadyStored += plan.messages.count - inserted - rejected
            }
        }
        return result
    }

    /// Rows per multi-row statement: 500 × 9 columns stays far below SQLite's 32,766 variables.
    static let rowsPerStatement = 500

    /// `(?, ?, ?), (?, ?, ?)` for `rows` rows of `columns` values.
    static func placeholders(rows: Int, columns: Int) -> String {
        let row = "(" + Array(repeating: "?", count: columns).joined(separator: ", ") + ")"
        return Array(repeating: row, count: rows).joined(separator: ", ")
    }

    // MARK: Reads

    public func listConversations(
        userExternalID: String,
        before: ConversationCursor?,
        limit: Int
    ) async throws(StorageError) -> ConversationPage {
        let limit = clampedLimit(limit)
        var binds: [SQLiteData] = [.text(userExternalID)]
        var condition = ""
        if let before {
            condition = "AND (c.updated_at, c.id) < (?, ?)"
            binds += [.integer(.init(before.updatedAtMicroseconds)), .text(before.id.lowercased)]
        }
        binds.append(.integer(.init(limit + 1)))
        let rows = try await self.exclusive { () throws(StorageError) in
            try await self.run(
                """
                SELECT c.id, c.title, c.created_at, c.updated_at FROM conversations c JOIN users u ON u.id = c.user_id
                WHERE u.external_id = ? \(condition)
                ORDER BY c.updated_at DESC, c.id DESC LIMIT ?
                """,
                binds
            )
        }
        var summaries: [ConversationSummary] = []
        for row in rows {
            summaries.append(ConversationSummary(
                id: try row.uuid("id"), title: row.column("title")?.string,
                createdAtMicroseconds: try row.int64("created_at"), updatedAtMicroseconds: try row.int64("updated_at")
            ))
        }
        return page(summaries, limit: limit, cursor: \.cursor) { ConversationPage(conversations: $0, next: $1) }
    }

    public func messages(
        conversationID: UUID,
        userExternalID: String?,
        before: MessageCursor?,
        limit: Int
    ) async throws(StorageError) -> MessagePage? {
        let limit = clampedLimit(limit)
        var binds: [SQLiteData] = [.text(conversationID.lowercased)]
        var condition = ""
        if let before {
            condition = "AND (created_at, id) < (?, ?)"
            binds += [.integer(.init(before.createdAtMicroseconds)), .text(before.id.lowercased)]
        }
        binds.append(.integer(.init(limit + 1)))
        let found: [SQLiteRow]? = try await self.exclusive { () throws(StorageError) in
            let owner = try await self.owner(conversationID)
            guard let owner, userExternalID == nil || userExternalID == owner else { return nil }
            return try await self.run(
                """
                SELECT \(SQLiteSchema.messageColumns) FROM messages WHERE conversation_id = ? \(condition)
                ORDER BY created_at DESC, id DESC LIMIT ?
                """,
                binds
            )
        }
        guard let found else { return nil }
        let messages = try found.map { row throws(StorageError) in try row.storedMessage() }
        return page(messages, limit: limit, cursor: \.cursor) { MessagePage(messages: $0, next: $1) }
    }

    public func context(conversationID: UUID, maxCharacters: Int) async throws(StorageError) -> [StoredMessage] {
        guard maxCharacters > 0 else { return [] }
        let rows = try await self.exclusive { () throws(StorageError) in
            try await self.run(
                """
                SELECT \(SQLiteSchema.messageColumns) FROM (
                    SELECT *, sum(length(content)) OVER (ORDER BY created_at DESC, id DESC
                                                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
                    FROM (SELECT * FROM messages WHERE conversation_id = ?
                          ORDER BY created_at DESC, id DESC LIMIT \(contextMessageLimit))
                )
                WHERE running <= ?
                ORDER BY created_at, id
                """,
                [.text(conversationID.lowercased), .integer(.init(maxCharacters))]
            )
        }
        return try rows.map { row throws(StorageError) in try row.storedMessage() }
    }

    public func conversationOwner(_ conversationID: UUID) async throws(StorageError) -> String? {
        try await self.exclusive { () throws(StorageError) in try await self.owner(conversationID) }
    }

    private func owner(_ conversationID: UUID) async throws(StorageError) -> String? {
        let rows = try await self.run(
            "SELECT u.external_id FROM conversations c JOIN users u ON u.id = c.user_id WHERE c.id = ?",
            [.text(conversationID.lowercased)]
        )
        return rows.first?.column("external_id")?.string
    }

    // MARK: Quotas (times in microseconds since 1970, as every SQLite timestamp here)

    public func quota(userExternalID: String) async throws(StorageError) -> QuotaRecord? {
        try await self.exclusive { () throws(StorageError) in
            let rows = try await self.run(
                "SELECT q.tokens_used, q.tokens_limit, q.reset_at FROM user_quotas q JOIN users u ON u.id = q.user_id WHERE u.external_id = ?",
                [.text(userExternalID)])
            guard let row = rows.first else { return nil }
            return QuotaRecord(
                tokensUsed: row.column("tokens_used")?.integer ?? 0, tokensLimit: row.column("tokens_limit")?.integer,
                resetAt: row.column("reset_at")?.integer.map { Date(timeIntervalSince1970: Double($0) / 1_000_000) })
        }
    }

    public func setQuota(userExternalID: String, limit: Int?, resetAt: Date?, resetUsage: Bool) async throws(StorageError) {
        try await self.exclusive { () throws(StorageError) in
            let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
            _ = try await self.run(
                "INSERT INTO users (id, external_id, created_at) VALUES (?, ?, ?) ON CONFLICT (external_id) DO NOTHING",
                [.text(UUID().lowercased), .text(userExternalID), .integer(.init(now))], write: true)
            let reset: SQLiteData = resetAt.map { .integer(Int(($0.timeIntervalSince1970 * 1_000_000).rounded())) } ?? .null
            _ = try await self.run(
                "INSERT INTO user_quotas (user_id, tokens_limit, reset_at) SELECT id, ?, ? FROM users WHERE external_id = ? "
                    + "ON CONFLICT (user_id) DO UPDATE SET tokens_limit = excluded.tokens_limit, reset_at = excluded.reset_at, "
                    + "tokens_used = CASE WHEN ? THEN 0 ELSE user_quotas.tokens_used END",
                [limit.map { .integer($0) } ?? .null, reset, .text(userExternalID), .integer(resetUsage ? 1 : 0)], write: true)
        }
    }

    public func archiveJob(_ job: ArchivedJob) async throws(StorageError) {
        func optional(_ text: String?) -> SQLiteData { text.map { .text($0) } ?? .null }
        func optional(_ value: Int64?) -> SQLiteData { value.map { .integer(Int($0)) } ?? .null }
        try await self.exclusive { () throws(StorageError) in
            try await self.transaction { () throws(StorageError) in
                _ = try await self.run(
                    "INSERT INTO jobs (id, kind, user_external_id, priority, state, input, result, result_type, error, attempts, max_attempts, "
                        + "schedule, created_at, started_at, finished_at, tokens_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        + "ON CONFLICT (id) DO UPDATE SET state = excluded.state, result = excluded.result, result_type = excluded.result_type, "
                        + "error = excluded.error, attempts = excluded.attempts, max_attempts = excluded.max_attempts, "
                        + "started_at = excluded.started_at, finished_at = excluded.finished_at, "
                        + "tokens_used = max(jobs.tokens_used, excluded.tokens_used)",
                    [.text(job.id), .text(job.kind), .text(job.userExternalID), .text(job.priority), .text(job.state), .text(job.input),
                     optional(job.result), optional(job.resultType), optional(job.error), .integer(job.attempts), .integer(job.maxAttempts),
                     optional(job.schedule), .integer(Int(job.createdAt)), optional(job.startedAt), optional(job.finishedAt),
                     .integer(max(0, job.tokensUsed))],
                    write: true)
                // What it spent and was not counted yet goes to the submitter's quota, once.
                let rows = try await self.run("SELECT tokens_used, tokens_counted FROM jobs WHERE id = ?", [.text(job.id)])
                let used = rows.first?.column("tokens_used")?.integer ?? 0
                let counted = rows.first?.column("tokens_counted")?.integer ?? 0
                guard used > counted else { return }
                let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
                _ = try await self.run(
                    "INSERT INTO users (id, external_id, created_at) VALUES (?, ?, ?) ON CONFLICT (external_id) DO NOTHING",
                    [.text(UUID().lowercased), .text(job.userExternalID), .integer(.init(now))], write: true)
                _ = try await self.run(
                    "INSERT INTO user_quotas (user_id, tokens_used) SELECT id, ? FROM users WHERE external_id = ? "
                        + "ON CONFLICT (user_id) DO UPDATE SET tokens_used = user_quotas.tokens_used + excluded.tokens_used",
                    [.integer(used - counted), .text(job.userExternalID)], write: true)
                _ = try await self.run("UPDATE jobs SET tokens_counted = ? WHERE id = ?", [.integer(used), .text(job.id)], write: true)
            }
        }
    }

    public func archivedJob(id: String) async throws(StorageError) -> ArchivedJob? {
        try await self.exclusive { () throws(StorageError) in
            let rows = try await self.run("SELECT * FROM jobs WHERE id = ?", [.text(id)])
            guard let row = rows.first else { return nil }
            var job = ArchivedJob(
                id: row.column("id")?.string ?? id, kind: row.column("kind")?.string ?? "",
                userExternalID: row.column("user_external_id")?.string ?? "", priority: row.column("priority")?.string ?? "normal",
                state: row.column("state")?.string ?? "", input: row.column("input")?.string ?? "null",
                attempts: row.column("attempts")?.integer ?? 0, maxAttempts: row.column("max_attempts")?.integer ?? 0,
                createdAt: Int64(row.column("created_at")?.integer ?? 0))
            job.result = row.column("result")?.string
            job.resultType = row.column("result_type")?.string
            job.error = row.column("error")?.string
            job.schedule = row.column("schedule")?.string
            job.startedAt = row.column("started_at")?.integer.map(Int64.init)
            job.finishedAt = row.column("finished_at")?.integer.map(Int64.init)
            job.tokensUsed = row.column("tokens_used")?.integer ?? 0
            return job
        }
    }

    public func recordToolExecutions(_ records: [ToolExecutionRecord]) async throws(StorageError) {
        guard !records.isEmpty else { return }
        try await self.exclusive { () throws(StorageError) in
            for record in records {
                _ = try await self.run(
                    "INSERT INTO tool_executions (id, message_id, generation_id, conversation_id, user_external_id, call_id, tool_name, "
                        + "input, output, duration_ms, status, created_at) VALUES (?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    [.text(record.id.lowercased), .text(record.generationID), record.conversationID.map { .text($0.lowercased) } ?? .null,
                     .text(record.userExternalID), .text(record.callID), .text(record.toolName), .text(record.input), .text(record.output),
                     .integer(record.durationMs), .text(record.status), .integer(Int(record.createdAt))],
                    write: true)
            }
        }
    }

    public func toolExecutions(generationID: String) async throws(StorageError) -> [ToolExecutionRecord] {
        try await self.exclusive { () throws(StorageError) in
            let rows = try await self.run(
                "SELECT * FROM tool_executions WHERE generation_id = ? ORDER BY created_at, id", [.text(generationID)])
            return rows.map { row in
                ToolExecutionRecord(
                    id: row.column("id")?.string.flatMap(UUID.init(uuidString:)) ?? UUID(), generationID: generationID,
                    conversationID: row.column("conversation_id")?.string.flatMap(UUID.init(uuidString:)),
                    userExternalID: row.column("user_external_id")?.string ?? "", callID: row.column("call_id")?.string ?? "",
                    toolName: row.column("tool_name")?.string ?? "", input: row.column("input")?.string ?? "",
                    output: row.column("output")?.string ?? "", status: row.column("status")?.string ?? "",
                    durationMs: row.column("duration_ms")?.integer ?? 0, createdAt: Int64(row.column("created_at")?.integer ?? 0))
            }
        }
    }

    public func resetDueQuotas(now: Date, period: TimeInterval) async throws(StorageError) -> Int {
        try await self.exclusive { () throws(StorageError) in
            let nowMicros = Int(now.timeIntervalSince1970 * 1_000_000)
            let periodMicros = max(1, Int(period * 1_000_000))
            let rows = try await self.run(
                "UPDATE user_quotas SET tokens_used = 0, reset_at = reset_at + ? * ((? - reset_at) / ? + 1) WHERE reset_at <= ? RETURNING user_id",
                [.integer(periodMicros), .integer(nowMicros), .integer(periodMicros), .integer(nowMicros)], write: true)
            return rows.count
        }
    }

    // MARK: Usage records

    @discardableResult
    public func recordUsage(_ records: [UsageRecord]) async throws(StorageError) -> Int {
        let plan = UsagePlan(records)
        guard !plan.rows.isEmpty else { return 0 }
        let now = Date().microsecondsSince1970
        return try await self.exclusive { () throws(StorageError) in
            var inserted = Set<String>()
            try await self.transaction { () throws(StorageError) in
                for users in Array(Set(plan.rows.map(\.userExternalID))).chunked(Self.rowsPerStatement) {
                    _ = try await self.run(
                        "INSERT INTO users (id, external_id, created_at) VALUES \(Self.placeholders(rows: users.count, columns: 3)) "
                            + "ON CONFLICT (external_id) DO NOTHING",
                        users.flatMap { [.text(UUID().lowercased), .text($0), .integer(.init(now))] }, write: true
                    )
                }
                // Only the records not stored yet come back: only they are counted.
                for rows in plan.rows.chunked(Self.rowsPerStatement) {
                    let stored = try await self.run(
                        """
                        INSERT INTO usage_records (id, user_id, tokens, created_at)
                        SELECT v.column1, u.id, v.column2, v.column3
                        FROM (VALUES \(Self.placeholders(rows: rows.count, columns: 4))) AS v
                        JOIN users u ON u.external_id = v.column4 WHERE true
                        ON CONFLICT (id) DO NOTHING
                        RETURNING id
                        """,
                        rows.flatMap { row -> [SQLiteData] in
                            [.text(row.id), .integer(Int(row.tokens)), .integer(Int(row.createdMicroseconds)), .text(row.userExternalID)]
                        },
                        write: true
                    )
                    for row in stored {
                        if let id = row.column("id")?.string { inserted.insert(id) }
                    }
                }
                var usage: [String: Int64] = [:]
                for row in plan.rows where inserted.contains(row.id) {
                    usage[row.userExternalID] = UsagePlan.adding(usage[row.userExternalID] ?? 0, row.tokens)
                }
                for users in Array(usage).chunked(Self.rowsPerStatement) {
                    // Stops at the largest integer (SQLite would turn an overflowing sum into a float).
                    _ = try await self.run(
                        """
                        INSERT INTO user_quotas (user_id, tokens_used)
                        SELECT u.id, v.column2 FROM (VALUES \(Self.placeholders(rows: users.count, columns: 2))) AS v
                        JOIN users u ON u.external_id = v.column1 WHERE true
                        ON CONFLICT (user_id) DO UPDATE SET tokens_used = CASE
                            WHEN user_quotas.tokens_used > 9223372036854775807 - excluded.tokens_used THEN 9223372036854775807
                            ELSE user_quotas.tokens_used + excluded.tokens_used END
                        """,
                        users.flatMap { [.text($0.key), .integer(Int($0.value))] }, write: true
                    )
                }
            }
            return inserted.count
        }
    }

    @discardableResult
    public func deleteUsageRecords(before cutoff: Date, limit: Int) async throws(StorageError) -> Int {
        try await self.exclusive { () throws(StorageError) in
            let deleted = try await self.run(
                "DELETE FROM usage_records WHERE id IN (SELECT id FROM usage_records WHERE created_at < ? ORDER BY created_at LIMIT ?) RETURNING id",
                [.integer(Int(cutoff.microsecondsSince1970)), .integer(max(1, limit))], write: true)
            return deleted.count
        }
    }

    // MARK: Plumbing

    /// Runs `body` holding the connection.
    private func exclusive<T>(_ body: () async throws(StorageError) -> T) async throws(StorageError) -> T {
        if self.isShutDown.withLockedValue({ $0 }) { throw StorageError.shutDown }
        await self.gate.acquire()
        do throws(StorageError) {
            if self.isShutDown.withLockedValue({ $0 }) { throw StorageError.shutDown }
            let result = try await body()
            await self.gate.release()
            return result
        } catch {
            await self.gate.release()
            throw error
        }
    }

    /// `BEGIN IMMEDIATE` … `COMMIT` around `body` (rolled back if it throws), counted as one
    /// write transaction. Call inside `exclusive`.
    private func transaction(_ body: () async throws(StorageError) -> Void) async throws(StorageError) {
        _ = try await self.run("BEGIN IMMEDIATE", counted: false)
        do {
            try await body()
            _ = try await self.run("COMMIT", counted: false)
            self.counters.withLockedValue { $0.writeTransactions += 1 }
        } catch {
            _ = try? await self.run("ROLLBACK", counted: false)
            throw error
        }
    }

    private func run(
        _ sql: String, _ binds: [SQLiteData] = [], write: Bool = false, counted: Bool = true
    ) async throws(StorageError) -> [SQLiteRow] {
        do {
            let rows = try await self.connection.query(sql, binds)
            if counted {
                self.counters.withLockedValue {
                    if write { $0.writeStatements += 1 } else { $0.readStatements += 1 }
                }
            }
            return rows
        } catch {
            throw Self.storageError(error)
        }
    }

    private static func storageError(_ error: any Error) -> StorageError {
        switch error {
        case let error as StorageError: return error
        case let error as SQLiteError: return .rejected(sqlState: "SQLITE_\(error.reason)", message: error.message)
        default: return .unavailable("\(error)")
        }
    }
}

extension UUID {
    /// How UUIDs are stored in SQLite (PostgreSQL prints them the same way).
    fileprivate var lowercased: String { self.uuidString.lowercased() }
}

extension SQLiteRow {
    fileprivate func int64(_ name: String) throws(StorageError) -> Int64 {
        guard let value = self.column(name)?.integer else { throw StorageError.unexpectedRow("\(name) is not an integer") }
        return Int64(value)
    }

    fileprivate func uuid(_ name: String) throws(StorageError) -> UUID {
        guard let text = self.column(name)?.string, let id = UUID(uuidString: text) else {
            throw StorageError.unexpectedRow("\(name) is not a UUID")
        }
        return id
    }

    fileprivate func optionalInt(_ name: String) -> Int? {
        self.column(name)?.integer.map { Int($0) }
    }

    /// A row of `SQLiteSchema.messageColumns`.
    fileprivate func storedMessage() throws(StorageError) -> StoredMessage {
        guard let roleText = self.column("role")?.string, let role = MessageRole(rawValue: roleText) else {
            throw StorageError.unexpectedRow("unknown message role")
        }
        guard let content = self.column("content")?.string else { throw StorageError.unexpectedRow("content is not text") }
        return StoredMessage(
            id: try self.uuid("id"), conversationID: try self.uuid("conversation_id"), role: role, content: content,
            finishReason: self.column("finish_reason")?.string, promptTokens: self.optionalInt("prompt_tokens"),
            completionTokens: self.optionalInt("completion_tokens"), model: self.column("model")?.string,
            createdAtMicroseconds: try self.int64("created_at")
        )
    }
}

extension Array {
    fileprivate func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: self.count, by: size).map { self[$0..<Swift.min($0 + size, self.count)] }
    }
}
