import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import ServiceLifecycle

/// `ConversationStorage` on PostgreSQL through PostgresNIO's `PostgresClient` (a connection pool
/// on the given event loops; no thread ever blocks on the database).
///
/// **`run()` must be running** for any operation to proceed: it runs the client's pool and the
/// partition maintenance (every `maintenanceInterval`, `ensurePartitions` for the current month
/// and `partitionMonthsAhead` more). It is a swift-service-lifecycle `Service`: put it in the
/// app's `ServiceGroup` *before* the `WriteBehindQueue` that writes to it, so that on graceful
/// shutdown the queue drains first (services stop in reverse order). Outside a group, run it in
/// a task and end it with `shutdown()` (or by cancelling that task).
///
/// While PostgreSQL is down, operations wait for a connection up to `operationTimeout`, then
/// fail with `StorageError.unavailable`; the pool keeps reconnecting in the background.
public final class PostgresStorage: ConversationStorage, Service {
    public struct Configuration: Sendable {
        public var url: PostgresURL
        public var maximumConnections: Int
        public var connectTimeout: Duration
        /// The longest one operation (waiting for a connection included) may take.
        public var operationTimeout: Duration
        /// How long `migrate()` may take (it waits for other instances' migrations).
        public var migrationTimeout: Duration
        /// Partitions kept ready beyond the current month.
        public var partitionMonthsAhead: Int
        public var maintenanceInterval: Duration

        public init(
            url: PostgresURL,
            maximumConnections: Int = 8,
            connectTimeout: Duration = .seconds(5),
            operationTimeout: Duration = .seconds(10),
            migrationTimeout: Duration = .seconds(120),
            partitionMonthsAhead: Int = 3,
            maintenanceInterval: Duration = .seconds(6 * 3600)
        ) {
            self.url = url
            self.maximumConnections = maximumConnections
            self.connectTimeout = connectTimeout
            self.operationTimeout = operationTimeout
            self.migrationTimeout = migrationTimeout
            self.partitionMonthsAhead = partitionMonthsAhead
            self.maintenanceInterval = maintenanceInterval
        }
    }

    public let configuration: Configuration
    private let client: PostgresClient
    private let logger: Logger
    private let counters = NIOLockedValueBox(StorageMetrics())
    private let isShutDown = NIOLockedValueBox(false)
    private let stop = AsyncStream<Void>.makeStream()

    /// Throws when the URL's certificate files cannot be read (`sslrootcert`, `sslcert`, `sslkey`).
    public init(
        configuration: Configuration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "sluice.storage.postgres")
    ) throws(PostgresURLError) {
        self.configuration = configuration
        self.logger = logger
        let url = configuration.url
        var clientConfiguration = PostgresClient.Configuration(
            host: url.host, port: url.port, username: url.username, password: url.password,
            database: url.database, tls: try Self.tls(for: url)
        )
        clientConfiguration.options.maximumConnections = max(1, configuration.maximumConnections)
        clientConfiguration.options.connectTimeout = configuration.connectTimeout
        clientConfiguration.options.additionalStartupParameters = [("application_name", "sluice")]
        self.client = PostgresClient(configuration: clientConfiguration, eventLoopGroup: eventLoopGroup, backgroundLogger: logger)
    }

    /// libpq's meaning of the URL's TLS parameters (see `PostgresURL`). The certificate files are
    /// read now, so a missing or unreadable one fails at start-up, not at every connection attempt.
    /// The host name checked under `verify-full` is the URL's host (an IP address is checked
    /// against the certificate's IP addresses).
    static func tls(for url: PostgresURL) throws(PostgresURLError) -> PostgresClient.Configuration.TLS {
        guard url.tls != .disable else { return .disable }
        var tls = TLSConfiguration.makeClientConfiguration()
        switch url.verification {
        case .none: tls.certificateVerification = .none
        case .certificate: tls.certificateVerification = .noHostnameVerification
        case .full: tls.certificateVerification = .fullVerification
        }
        let describe = url.description
        func load<T>(_ parameter: String, _ path: String, _ read: () throws -> T) throws(PostgresURLError) -> T {
            do {
                return try read()
            } catch {
                throw PostgresURLError(describe, "\(parameter) \(path): cannot read it as PEM (\(error))")
            }
        }
        if let path = url.rootCertificatePath {
            tls.trustRoots = .certificates(try load("sslrootcert", path) { try NIOSSLCertificate.fromPEMFile(path) })
        }
        if let certificatePath = url.clientCertificatePath, let keyPath = url.clientKeyPath {
            let chain = try load("sslcert", certificatePath) { try NIOSSLCertificate.fromPEMFile(certificatePath) }
            let key = try load("sslkey", keyPath) { try NIOSSLPrivateKey(file: keyPath, format: .pem) }
            tls.certificateChain = chain.map { .certificate($0) }
            tls.privateKey = .privateKey(key)
        }
        switch url.tls {
        case .allow, .prefer: return .prefer(tls)
        case .disable, .require, .verifyCA, .verifyFull: return .require(tls)
        }
    }

    public var metrics: StorageMetrics { self.counters.withLockedValue { $0 } }

    // MARK: Lifecycle

    /// Runs the connection pool and the partition maintenance until `shutdown()`, a graceful
    /// shutdown of the surrounding `ServiceGroup`, or cancellation. Call it once.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.maintainPartitions() }
            group.addTask { for await _ in self.stop.stream {} }
            _ = await group.next()
            group.cancelAll()
        }
    }

    public func shutdown() async {
        self.isShutDown.withLockedValue { $0 = true }
        self.stop.continuation.finish()
    }

    /// `migrate()` creates the partitions at start; this keeps them ahead of the calendar for a
    /// long-running process. After a failure (database down) it tries again within a minute.
    private func maintainPartitions() async {
        var wait = self.configuration.maintenanceInterval
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: wait)
            } catch {
                return
            }
            do {
                try await self.ensurePartitions(from: Date(), monthsAhead: self.configuration.partitionMonthsAhead)
                wait = self.configuration.maintenanceInterval
            } catch {
                self.logger.warning("could not create message partitions ahead", metadata: ["error": "\(error)"])
                wait = min(self.configuration.maintenanceInterval, .seconds(60))
            }
        }
    }

    // MARK: Schema

    public func migrate() async throws(StorageError) {
        // A database that cannot be reached (down, a wrong password, a refused certificate) is
        // reported within the operation timeout, not after the migration's own (which allows
        // for waiting on another instance's migration).
        try await self.perform { _ = try await self.client.query("SELECT 1").collect() }
        try await self.perform(timeout: self.configuration.migrationTimeout) {
            for migration in PostgresSchema.migrations {
                try await self.client.withTransaction(logger: self.logger) { connection in
                    try await self.write(connection, "SELECT pg_advisory_xact_lock(\(PostgresSchema.migrationLockKey))")
                    try await self.write(connection, PostgresQuery(unsafeSQL: PostgresSchema.createMigrationsTable))
                    let applied = try await self.read(connection, "SELECT 1 FROM schema_migrations WHERE version = \(migration.version)")
                    guard applied.isEmpty else { return }
                    for statement in migration.statements {
                        try await self.write(connection, PostgresQuery(unsafeSQL: statement))
                    }
                    try await self.write(connection, "INSERT INTO schema_migrations (version) VALUES (\(migration.version))")
                    self.logger.info("applied schema migration", metadata: ["version": "\(migration.version)"])
                }
            }
        }
        // Last month too: a message stamped just before midnight may arrive just after.
        let lastMonth = Date().addingTimeInterval(-31 * 86400)
        try await self.ensurePartitions(from: lastMonth, monthsAhead: self.configuration.partitionMonthsAhead + 1)
    }

    public func ensurePartitions(from start: Date, monthsAhead: Int) async throws(StorageError) {
        try await self.ensurePartitions(PartitionMonth.range(from: start, monthsAhead: monthsAhead))
    }

    private func ensurePartitions(_ months: [PartitionMonth]) async throws(StorageError) {
        guard !months.isEmpty else { return }
        let sql = PostgresSchema.ensurePartitions(months)
        try await self.perform { try await self.write(nil, PostgresQuery(unsafeSQL: sql)) }
    }

    // MARK: Writes

    @discardableResult
    public func appendMessages(_ batch: [NewMessage]) async throws(StorageError) -> AppendResult {
        let plan = AppendPlan(batch)
        guard !plan.messages.isEmpty else {
            return AppendResult(alreadyStored: plan.duplicatesInBatch, rejected: plan.rejectedInBatch)
        }
        var binds = PostgresBindings(capacity: 2)
        binds.append(try plan.conversationsJSON())
        binds.append(try plan.messagesJSON())
        let query = PostgresQuery(unsafeSQL: PostgresSchema.appendBatch, binds: binds)

        let counts: (Int64, Int64, Int64, Int64)
        do {
            counts = try await self.appendRow(query)
        } catch .rejected(let sqlState, let message) where sqlState == "23514" && message.contains("no partition") {
            // A month without a partition (clock far ahead, or maintenance not run): create it
            // and try once more. The failed statement changed nothing.
            self.logger.notice("creating missing message partitions", metadata: ["months": "\(plan.months)"])
            try await self.ensurePartitions(plan.months)
            counts = try await self.appendRow(query)
        }
        let (inserted, rejected, unresolved, _) = counts
        if unresolved > 0 {
            // See PostgresSchema.appendBatch: a user row created concurrently elsewhere.
            throw StorageError.rejected(sqlState: "40001", message: "\(unresolved) message(s) for a user created concurrently; retry the batch")
        }
        let stored = plan.messages.count
        return AppendResult(
            inserted: Int(inserted),
            alreadyStored: stored - Int(inserted) - Int(rejected) + plan.duplicatesInBatch,
            rejected: Int(rejected) + plan.rejectedInBatch
        )
    }

    private func appendRow(_ query: PostgresQuery) async throws(StorageError) -> (Int64, Int64, Int64, Int64) {
        try await self.perform {
            let rows = try await self.client.query(query)
            self.count(write: true)
            for try await row in rows.decode((Int64, Int64, Int64, Int64).self) { return row }
            throw StorageError.unexpectedRow("the batch insert returned no row")
        }
    }

    // MARK: Reads

    public func listConversations(
        userExternalID: String,
        before: ConversationCursor?,
        limit: Int
    ) async throws(StorageError) -> ConversationPage {
        let limit = clampedLimit(limit)
        let columns = "c.id, c.title, \(PostgresSchema.microseconds("c.created_at")), \(PostgresSchema.microseconds("c.updated_at"))"
        var binds = PostgresBindings()
        binds.append(userExternalID)
        var condition = ""
        if let before {
            binds.append(before.updatedAtMicroseconds)
            binds.append(before.id)
            condition = "AND (c.updated_at, c.id) < (\(PostgresSchema.timestamp("$2")), $3)"
        }
        binds.append(limit + 1)
        let sql = """
            SELECT \(columns) FROM conversations c JOIN users u ON u.id = c.user_id
            WHERE u.external_id = $1 \(condition)
            ORDER BY c.updated_at DESC, c.id DESC LIMIT $\(binds.count)
            """
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        let summaries = try await self.perform {
            var summaries: [ConversationSummary] = []
            let rows = try await self.client.query(query)
            self.count(write: false)
            for try await (id, title, created, updated) in rows.decode((UUID, String?, Int64, Int64).self) {
                summaries.append(ConversationSummary(id: id, title: title, createdAtMicroseconds: created, updatedAtMicroseconds: updated))
            }
            return summaries
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
        var binds = PostgresBindings()
        binds.append(conversationID)
        var condition = ""
        if let before {
            binds.append(before.createdAtMicroseconds)
            binds.append(before.id)
            condition = "AND (created_at, id) < (\(PostgresSchema.timestamp("$2")), $3)"
        }
        binds.append(limit + 1)
        // One statement: no row means no such conversation; one row with NULL message columns
        // means a conversation without messages (on this page).
        let sql = """
            SELECT u.external_id, m.id, m.role, m.content, m.finish_reason, m.prompt_tokens,
                   m.completion_tokens, m.model, \(PostgresSchema.microseconds("m.created_at"))
            FROM conversations c JOIN users u ON u.id = c.user_id
            LEFT JOIN LATERAL (
                SELECT * FROM messages WHERE conversation_id = c.id \(condition)
                ORDER BY created_at DESC, id DESC LIMIT $\(binds.count)
            ) m ON true
            WHERE c.id = $1
            ORDER BY m.created_at DESC, m.id DESC
            """
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        let (owner, messages) = try await self.perform {
            var owner: String?
            var messages: [StoredMessage] = []
            let rows = try await self.client.query(query)
            self.count(write: false)
            for try await (externalID, id, role, content, finishReason, promptTokens, completionTokens, model, created)
                in rows.decode((String, UUID?, String?, String?, String?, Int?, Int?, String?, Int64?).self)
            {
                owner = externalID
                guard let id, let role, let content, let created else { continue }
                messages.append(try Self.message(
                    id: id, conversationID: conversationID, role: role, content: content, finishReason: finishReason,
                    promptTokens: promptTokens, completionTokens: completionTokens, model: model, created: created
                ))
            }
            return (owner, messages)
        }
        guard let owner, userExternalID == nil || userExternalID == owner else { return nil }
        return page(messages, limit: limit, cursor: \.cursor) { MessagePage(messages: $0, next: $1) }
    }

    public func context(conversationID: UUID, maxCharacters: Int) async throws(StorageError) -> [StoredMessage] {
        guard maxCharacters > 0 else { return [] }
        let query: PostgresQuery = """
            SELECT id, role, content, finish_reason, prompt_tokens, completion_tokens, model,
                   \(unescaped: PostgresSchema.microseconds("created_at"))
            FROM (
                SELECT *, sum(length(content)) OVER (ORDER BY created_at DESC, id DESC
                                                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
                FROM (SELECT * FROM messages WHERE conversation_id = \(conversationID)
                      ORDER BY created_at DESC, id DESC LIMIT \(contextMessageLimit)) newest
            ) t
            WHERE running <= \(Int64(maxCharacters))
            ORDER BY created_at, id
            """
        return try await self.perform {
            var messages: [StoredMessage] = []
            let rows = try await self.client.query(query)
            self.count(write: false)
            for try await (id, role, content, finishReason, promptTokens, completionTokens, model, created)
                in rows.decode((UUID, String, String, String?, Int?, Int?, String?, Int64).self)
            {
                messages.append(try Self.message(
                    id: id, conversationID: conversationID, role: role, content: content, finishReason: finishReason,
                    promptTokens: promptTokens, completionTokens: completionTokens, model: model, created: created
                ))
            }
            return messages
        }
    }

    public func conversationOwner(_ conversationID: UUID) async throws(StorageError) -> String? {
        let query: PostgresQuery = """
            SELECT u.external_id FROM conversations c JOIN users u ON u.id = c.user_id WHERE c.id = \(conversationID)
            """
        return try await self.perform {
            let rows = try await self.client.query(query)
            self.count(write: false)
            for try await owner in rows.decode(String.self) { return owner }
            return nil
        }
    }

    // MARK: Quotas

    public func quota(userExternalID: String) async throws(StorageError) -> QuotaRecord? {
        let query: PostgresQuery = """
            SELECT q.tokens_used, q.tokens_limit, q.reset_at FROM user_quotas q JOIN users u ON u.id = q.user_id
            WHERE u.external_id = \(userExternalID)
            """
        return try await self.perform {
            let rows = try await self.client.query(query)
            self.count(write: false)
            for try await (used, limit, resetAt) in rows.decode((Int64, Int64?, Date?).self) {
                return QuotaRecord(tokensUsed: Int(used), tokensLimit: limit.map(Int.init), resetAt: resetAt)
            }
            return nil
        }
    }

    public func setQuota(userExternalID: String, limit: Int?, resetAt: Date?, resetUsage: Bool) async throws(StorageError) {
        let limit64 = limit.map(Int64.init)
        let query: PostgresQuery = """
            WITH new_user AS (
                INSERT INTO users (external_id) VALUES (\(userExternalID)) ON CONFLICT (external_id) DO NOTHING RETURNING id
            ), the_user AS (
                SELECT id FROM new_user UNION ALL SELECT id FROM users WHERE external_id = \(userExternalID)
            )
            INSERT INTO user_quotas AS q (user_id, tokens_limit, reset_at)
            SELECT id, \(limit64), \(resetAt) FROM the_user LIMIT 1
            ON CONFLICT (user_id) DO UPDATE SET tokens_limit = EXCLUDED.tokens_limit, reset_at = EXCLUDED.reset_at,
                tokens_used = CASE WHEN \(resetUsage) THEN 0 ELSE q.tokens_used END
            """
        try await self.perform {
            _ = try await self.client.query(query).collect()
            self.count(write: true)
        }
    }

    public func archiveJob(_ job: ArchivedJob) async throws(StorageError) {
        func date(_ microseconds: Int64?) -> Date? { microseconds.map { Date(timeIntervalSince1970: Double($0) / 1_000_000) } }
        let created = date(job.createdAt) ?? Date(timeIntervalSince1970: 0)
        let tokensUsed = Int64(clamping: max(0, job.tokensUsed))
        let query: PostgresQuery = """
            INSERT INTO jobs AS j (id, kind, user_external_id, priority, state, input, result, result_type, error,
                                   attempts, max_attempts, schedule, created_at, started_at, finished_at, tokens_used)
            VALUES (\(job.id), \(job.kind), \(job.userExternalID), \(job.priority), \(job.state), \(job.input)::jsonb,
                    \(job.result), \(job.resultType), \(job.error), \(job.attempts), \(job.maxAttempts), \(job.schedule),
                    \(created), \(date(job.startedAt)), \(date(job.finishedAt)), \(tokensUsed))
            ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, result = EXCLUDED.result, result_type = EXCLUDED.result_type,
                error = EXCLUDED.error, attempts = EXCLUDED.attempts, max_attempts = EXCLUDED.max_attempts,
                started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
                tokens_used = GREATEST(j.tokens_used, EXCLUDED.tokens_used)
            """
        var counting = PostgresQuery(unsafeSQL: PostgresSchema.countJobUsage)
        counting.binds.append(job.id)
        let count = counting
        try await self.perform {
            try await self.client.withTransaction(logger: self.logger) { connection in
                try await self.write(connection, query)
                try await self.write(connection, count)
            }
        }
    }

    public func archivedJob(id: String) async throws(StorageError) -> ArchivedJob? {
        let query: PostgresQuery = """
            SELECT id, kind, user_external_id, priority, state, input::text, result, result_type, error,
                   attempts::int8, max_attempts::int8, schedule, created_at, started_at, finished_at, tokens_used
            FROM jobs WHERE id = \(id)
            """
        return try await self.perform {
            let rows = try await self.client.query(query)
            self.count(write: false)
            func micros(_ date: Date?) -> Int64? { date.map { Int64(($0.timeIntervalSince1970 * 1_000_000).rounded()) } }
            for try await (id, kind, user, priority, state, input, result, resultType, error, attempts, maxAttempts, schedule, created, started, finished, tokensUsed)
                in rows.decode((String, String, String, String, String, String?, String?, String?, String?, Int64, Int64, String?, Date, Date?, Date?, Int64).self) {
                var job = ArchivedJob(
                    id: id, kind: kind, userExternalID: user, priority: priority, state: state, input: input ?? "null",
                    attempts: Int(attempts), maxAttempts: Int(maxAttempts), createdAt: micros(created)!)
                job.result = result
                job.resultType = resultType
                job.error = error
                job.schedule = schedule
                job.startedAt = micros(started)
                job.finishedAt = micros(finished)
                job.tokensUsed = Int(tokensUsed)
                return job
            }
            return nil
        }
    }

    public func recordToolExecutions(_ records: [ToolExecutionRecord]) async throws(StorageError) {
        guard !records.isEmpty else { return }
        try await self.perform {
            for record in records {
                let created = Date(timeIntervalSince1970: Double(record.createdAt) / 1_000_000)
                let isJSON = record.inputIsJSON
                let query: PostgresQuery = """
                    INSERT INTO tool_executions (id, generation_id, conversation_id, user_external_id, call_id, tool_name,
                                                 input, output, duration_ms, status, created_at)
                    VALUES (\(record.id), \(record.generationID), \(record.conversationID), \(record.userExternalID), \(record.callID),
                            \(record.toolName), CASE WHEN \(isJSON) THEN \(record.input)::jsonb ELSE to_jsonb(\(record.input)::text) END,
                            to_jsonb(\(record.output)::text), \(record.durationMs), \(record.status), \(created))
                    ON CONFLICT (id) DO NOTHING
                    """
                _ = try await self.client.query(query).collect()
                self.count(write: true)
            }
        }
    }

    public func toolExecutions(generationID: String) async throws(StorageError) -> [ToolExecutionRecord] {
        let query: PostgresQuery = """
            SELECT id, generation_id, conversation_id, user_external_id, call_id, tool_name,
                   CASE WHEN jsonb_typeof(input) = 'string' THEN input #>> '{}' ELSE input::text END, output #>> '{}',
                   duration_ms::int8, status, created_at
            FROM tool_executions WHERE generation_id = \(generationID) ORDER BY created_at, id
            """
        return try await self.perform {
            let rows = try await self.client.query(query)
            self.count(write: false)
            var records: [ToolExecutionRecord] = []
            for try await (id, generation, conversation, user, call, tool, input, output, duration, status, created)
                in rows.decode((UUID, String, UUID?, String?, String?, String, String?, String?, Int64?, String, Date).self) {
                records.append(ToolExecutionRecord(
                    id: id, generationID: generation, conversationID: conversation, userExternalID: user ?? "", callID: call ?? "",
                    toolName: tool, input: input ?? "", output: output ?? "", status: status, durationMs: Int(duration ?? 0),
                    createdAt: Int64((created.timeIntervalSince1970 * 1_000_000).rounded())))
            }
            return records
        }
    }

    public func resetDueQuotas(now: Date, period: TimeInterval) async throws(StorageError) -> Int {
        let seconds = max(1, period)
        let query: PostgresQuery = """
            UPDATE user_quotas SET tokens_used = 0,
                reset_at = reset_at + make_interval(secs => \(seconds)) * (floor(extract(epoch FROM (\(now) - reset_at)) / \(seconds)) + 1)
            WHERE reset_at <= \(now)
            RETURNING user_id
            """
        return try await self.perform {
            let rows = try await self.client.query(query).collect()
            self.count(write: true)
            return rows.count
        }
    }

    // MARK: Usage records

    @discardableResult
    public func recordUsage(_ records: [UsageRecord]) async throws(StorageError) -> Int {
        let plan = UsagePlan(records)
        guard !plan.rows.isEmpty else { return 0 }
        var binds = PostgresBindings(capacity: 1)
        binds.append(try plan.json())
        let query = PostgresQuery(unsafeSQL: PostgresSchema.recordUsage, binds: binds)
        let (inserted, unresolved) = try await self.perform {
            let rows = try await self.client.query(query)
            self.count(write: true)
            for try await row in rows.decode((Int64, Int64).self) { return row }
            throw StorageError.unexpectedRow("the usage insert returned no row")
        }
        if unresolved > 0 {
            // As in appendMessages: a user row created concurrently elsewhere; the rest is stored.
            throw StorageError.rejected(sqlState: "40001", message: "\(unresolved) usage record(s) for a user created concurrently; retry them")
        }
        return Int(inserted)
    }

    @discardableResult
    public func deleteUsageRecords(before cutoff: Date, limit: Int) async throws(StorageError) -> Int {
        let limit = Int64(clamping: max(1, limit))
        let query: PostgresQuery = """
            WITH gone AS (
                DELETE FROM usage_records WHERE id IN (
                    SELECT id FROM usage_records WHERE created_at < \(cutoff) ORDER BY created_at LIMIT \(limit))
                RETURNING 1
            )
            SELECT count(*)::int8 FROM gone
            """
        return try await self.perform {
            let rows = try await self.client.query(query)
            self.count(write: true)
            for try await deleted in rows.decode(Int64.self) { return Int(deleted) }
            return 0
        }
    }

    // MARK: Plumbing

    private static func message(
        id: UUID, conversationID: UUID, role: String, content: String, finishReason: String?,
        promptTokens: Int?, completionTokens: Int?, model: String?, created: Int64
    ) throws(StorageError) -> StoredMessage {
        guard let role = MessageRole(rawValue: role) else { throw StorageError.unexpectedRow("unknown message role \"\(role)\"") }
        return StoredMessage(
            id: id, conversationID: conversationID, role: role, content: content, finishReason: finishReason,
            promptTokens: promptTokens, completionTokens: completionTokens, model: model, createdAtMicroseconds: created
        )
    }

    private func count(write: Bool) {
        self.counters.withLockedValue {
            if write {
                $0.writeStatements += 1
                $0.writeTransactions += 1
            } else {
                $0.readStatements += 1
            }
        }
    }

    /// A data-changing statement inside a transaction (`connection`) or on its own (pool).
    private func write(_ connection: PostgresConnection?, _ query: PostgresQuery) async throws {
        if let connection {
            try await connection.query(query, logger: self.logger)
            self.counters.withLockedValue { $0.writeStatements += 1 }
        } else {
            try await self.client.query(query)
            self.count(write: true)
        }
    }

    private func read(_ connection: PostgresConnection, _ query: PostgresQuery) async throws -> [PostgresRow] {
        let rows = try await connection.query(query, logger: self.logger).collect()
        self.count(write: false)
        return rows
    }

    /// Runs `body` with a deadline and maps every failure to `StorageError`. A statement already
    /// sent is not interrupted by the deadline (PostgresNIO cannot), only the wait for a connection is.
    private func perform<T: Sendable>(
        timeout: Duration? = nil,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws(StorageError) -> T {
        if self.isShutDown.withLockedValue({ $0 }) { throw StorageError.shutDown }
        let timeout = timeout ?? self.configuration.operationTimeout
        do {
            return try await Self.withDeadline(timeout, body)
        } catch {
            throw self.storageError(error)
        }
    }

    /// `body`'s result, or `StorageError.unavailable` once `timeout` has passed — also when
    /// `body` ignores cancellation (a request waiting for a pooled connection while the
    /// database is down may): a task group would wait for it, and the write-behind queue
    /// behind this call would stall with it. The body is cancelled and left to finish alone;
    /// everything run here is idempotent, so a retry is safe.
    public static func withDeadline<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let waiting = NIOLockedValueBox<CheckedContinuation<T, any Error>?>(nil)
        let timer = NIOLockedValueBox<Task<Void, Never>?>(nil)
        return try await withCheckedThrowingContinuation { continuation in
            waiting.withLockedValue { $0 = continuation }
            let work = Task {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                if let continuation = waiting.withLockedValue({ state in defer { state = nil }; return state }) {
                    timer.withLockedValue { $0 }?.cancel()
                    continuation.resume(with: result)
                }
            }
            let deadline = Task {
                try? await Task.sleep(for: timeout)
                guard !Task.isCancelled else { return }
                if let continuation = waiting.withLockedValue({ state in defer { state = nil }; return state }) {
                    work.cancel()
                    continuation.resume(throwing: StorageError.unavailable("no answer within \(timeout)"))
                }
            }
            timer.withLockedValue { $0 = deadline }
        }
    }

    private func storageError(_ error: any Error) -> StorageError {
        if self.isShutDown.withLockedValue({ $0 }) { return .shutDown }
        switch error {
        case let error as StorageError:
            return error
        case let error as PSQLError:
            if error.code == .server, let info = error.serverInfo {
                return .rejected(sqlState: info[.sqlState], message: info[.message] ?? "no message")
            }
            let cause = error.underlying.map { ": \($0)" } ?? ""
            return .unavailable("\(error.code)\(cause)")
        case let error as PostgresDecodingError:
            return .unexpectedRow("column \(error.columnName): \(error.code)")
        case is CancellationError:
            return .unavailable("cancelled")
        default:
            // ConnectionPoolError (connection attempts failing for long, pool shut down) and the like.
            return .unavailable("\(error)")
        }
    }
}

/// At most this many newest messages are considered for `context` (bounds the work on very
/// long conversations whatever the character budget).
let contextMessageLimit = 1000

func clampedLimit(_ limit: Int) -> Int {
    min(max(limit, 1), storagePageLimit)
}

/// The first `limit` of `rows` (fetched `limit + 1` to know whether more exist), with the
/// cursor of the last one kept when there are more.
func page<Row, Cursor, Page>(
    _ rows: [Row], limit: Int, cursor: (Row) -> Cursor, make: ([Row], Cursor?) -> Page
) -> Page {
    guard rows.count > limit else { return make(rows, nil) }
    let kept = Array(rows.prefix(limit))
    return make(kept, kept.last.map(cursor))
}
