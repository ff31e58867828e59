import Foundation

/// Everything a storage backend does: PostgreSQL (`PostgresStorage`) or an embedded SQLite file
/// (`SQLiteStorage`), with the same semantics. Only the code that opens a storage holds all of
/// it; everyone else holds the one part they use, so that a caller's type says what it touches
/// and a test fake writes only that:
/// - `ConversationStore`: conversations and their messages (the chat path, the history reads);
/// - `QuotaStore`: token quotas and the usage records that feed them;
/// - `ExecutionArchive`: what ran, kept after the fact (finished jobs, tool runs);
/// - `StorageLifecycle`: the schema, partitions, statement counts and closing.
///
/// Every method fails only with `StorageError`. Page sizes (`limit`) are clamped to
/// 1...`storagePageLimit`.
public typealias ConversationStorage = ConversationStore & QuotaStore & ExecutionArchive & StorageLifecycle

/// Conversations and their messages. Writes should go through a `WriteBehindQueue`, never one
/// per token.
public protocol ConversationStore: Sendable {
    /// Stores a batch in one statement (PostgreSQL) or one transaction (SQLite): the user row (by
    /// external id) and the conversation row when missing, the messages, `conversations.updated_at`,
    /// and the usage of newly stored assistant messages in `user_quotas.tokens_used`.
    ///
    /// Idempotent by message id and creation time: storing the same batch again (a retry after
    /// a lost reply) adds no row and counts no usage twice. A message for a conversation owned by
    /// another user is not stored (`AppendResult.rejected`).
    @discardableResult
    func appendMessages(_ batch: [NewMessage]) async throws(StorageError) -> AppendResult

    /// The user's conversations, most recently updated first, `limit` at a time. Pass the previous
    /// page's `next` as `before` for the following page. An unknown user has no conversations.
    func listConversations(
        userExternalID: String,
        before: ConversationCursor?,
        limit: Int
    ) async throws(StorageError) -> ConversationPage

    /// A conversation's messages, newest first, `limit` at a time. `nil` when the conversation does
    /// not exist or, when `userExternalID` is given, belongs to someone else (answer not_found
    /// either way, so ids cannot be probed).
    func messages(
        conversationID: UUID,
        userExternalID: String?,
        before: MessageCursor?,
        limit: Int
    ) async throws(StorageError) -> MessagePage?

    /// The newest messages of a conversation whose contents add up to at most `maxCharacters`
    /// (Unicode scalars, as the databases count them), oldest first: what goes upstream as
    /// context. It stops at the first message that does not fit, so the result is contiguous.
    /// Ownership is not checked here (see `conversationOwner`).
    func context(conversationID: UUID, maxCharacters: Int) async throws(StorageError) -> [StoredMessage]

    /// The external id of the conversation's user, or `nil` if there is no such conversation.
    func conversationOwner(_ conversationID: UUID) async throws(StorageError) -> String?
}

/// Token quotas (`user_quotas`) and the usage records of generations that store no message.
/// (A stored assistant message counts its own usage: see `ConversationStore.appendMessages`.)
public protocol QuotaStore: Sendable {
    /// The user's `user_quotas` row, or nil when there is none (no limit, nothing used).
    func quota(userExternalID: String) async throws(StorageError) -> QuotaRecord?

    /// Sets a user's token limit (nil: none) and next reset (nil: never), creating the user and
    /// the row when missing; `resetUsage` also sets `tokens_used` back to 0.
    func setQuota(userExternalID: String, limit: Int?, resetAt: Date?, resetUsage: Bool) async throws(StorageError)

    /// Every quota whose `reset_at` is due: `tokens_used` back to 0 and `reset_at` moved on by
    /// whole `period`s past `now`. Returns how many were reset.
    @discardableResult
    func resetDueQuotas(now: Date, period: TimeInterval) async throws(StorageError) -> Int

    /// Adds the usage of generations that store no message (the OpenAI-compatible front door) to
    /// their users' `user_quotas.tokens_used`, creating the user and quota rows when missing, and
    /// keeps each record (`usage_records`) so that writing it again (a retry after a lost reply)
    /// adds nothing: one statement (PostgreSQL) or one transaction (SQLite). The same id twice in
    /// a batch counts once; `tokens_used` stops at the largest integer. Returns how many records
    /// were new.
    @discardableResult
    func recordUsage(_ records: [UsageRecord]) async throws(StorageError) -> Int

    /// Deletes at most `limit` usage records created before `cutoff`, oldest first: they only
    /// stop a retried write from counting twice (see `UsageRecord.retention`). Returns how many.
    @discardableResult
    func deleteUsageRecords(before cutoff: Date, limit: Int) async throws(StorageError) -> Int
}

/// What ran, kept after the fact and read back by id: finished jobs (`jobs`) and the tool calls
/// of generations (`tool_executions`). Written once per run; a retried write changes nothing
/// (or, for a job, replaces the row).
public protocol ExecutionArchive: Sendable {
    /// Inserts or replaces a finished job (`jobs`): a retried job archives again.
    func archiveJob(_ job: ArchivedJob) async throws(StorageError)

    /// The archived job, nil when there is none.
    func archivedJob(id: String) async throws(StorageError) -> ArchivedJob?

    /// Appends tool runs to `tool_executions` (ids make a retried write a no-op).
    func recordToolExecutions(_ records: [ToolExecutionRecord]) async throws(StorageError)

    /// A generation's tool runs, oldest first.
    func toolExecutions(generationID: String) async throws(StorageError) -> [ToolExecutionRecord]
}

/// What the code that opened a storage does with it besides reading and writing data: create or
/// upgrade the schema, add partitions, count statements, close it.
public protocol StorageLifecycle: Sendable {
    /// Creates or upgrades the schema (versioned, each migration in its own transaction; safe
    /// to run again and from several instances at once), then creates the message partitions
    /// for the current month and the configured months ahead.
    func migrate() async throws(StorageError)

    /// Creates the monthly `messages` partitions from the month containing `start` (UTC) through
    /// `monthsAhead` months later, those missing only. A no-op where there are no partitions (SQLite).
    func ensurePartitions(from start: Date, monthsAhead: Int) async throws(StorageError)

    /// Statements executed so far (for benchmarks and metrics).
    var metrics: StorageMetrics { get }

    /// Closes the connections. Calls after this fail with `StorageError.shutDown`.
    func shutdown() async
}

extension QuotaStore {
    /// Deletes the usage records older than `UsageRecord.retention` before `now`, `batch` at a time
    /// (short statements, no long lock), at most `maxBatches` batches per call (the rest next
    /// time). Returns how many were deleted.
    @discardableResult
    public func pruneUsageRecords(now: Date = Date(), batch: Int = 10_000, maxBatches: Int = 100) async throws(StorageError) -> Int {
        let cutoff = now.addingTimeInterval(-UsageRecord.retention)
        let batch = max(1, batch)
        var deleted = 0
        for _ in 0..<max(1, maxBatches) {
            let count = try await self.deleteUsageRecords(before: cutoff, limit: batch)
            deleted = deleted.addingReportingOverflow(count).overflow ? Int.max : deleted + count
            guard count >= batch else { break }
        }
        return deleted
    }
}

/// The largest page `listConversations` and `messages` return.
public let storagePageLimit = 500

public enum MessageRole: String, Sendable, Hashable, CaseIterable, Codable {
    case user
    case assistant
    case system
    case tool
}

/// A message to store.
public struct NewMessage: Sendable, Hashable {
    /// With `createdAt`, what makes a write idempotent: keep both when retrying.
    public var id: UUID
    public var conversationID: UUID
    /// The user's id as the gateway knows it (from authentication); the `users` row is created
    /// on first use.
    public var userExternalID: String
    public var role: MessageRole
    public var content: String
    public var finishReason: String?
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var model: String?
    /// Stored with microsecond precision.
    public var createdAt: Date
    /// Used when this message creates the conversation (or its title is still empty).
    public var conversationTitle: String?

    public init(
        id: UUID = UUID(),
        conversationID: UUID,
        userExternalID: String,
        role: MessageRole,
        content: String,
        finishReason: String? = nil,
        promptTokens: Int? = nil,
        completionTokens: Int? = nil,
        model: String? = nil,
        createdAt: Date = Date(),
        conversationTitle: String? = nil
    ) {
        self.id = id
        self.conversationID = conversationID
        self.userExternalID = userExternalID
        self.role = role
        self.content = content
        self.finishReason = finishReason
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.model = model
        self.createdAt = createdAt
        self.conversationTitle = conversationTitle
    }
}

/// A message as stored.
public struct StoredMessage: Sendable, Hashable, Identifiable {
    public var id: UUID
    public var conversationID: UUID
    public var role: MessageRole
    public var content: String
    public var finishReason: String?
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var model: String?
    /// Microseconds since 1970, exactly as stored (the cursor compares these, not `Date`s).
    public var createdAtMicroseconds: Int64

    public var createdAt: Date { Date(microsecondsSince1970: self.createdAtMicroseconds) }
    /// The cursor that continues a newest-first listing after this message.
    public var cursor: MessageCursor { MessageCursor(createdAtMicroseconds: self.createdAtMicroseconds, id: self.id) }

    public init(
        id: UUID, conversationID: UUID, role: MessageRole, content: String,
        finishReason: String?, promptTokens: Int?, completionTokens: Int?, model: String?,
        createdAtMicroseconds: Int64
    ) {
        self.id = id
        self.conversationID = conversationID
        self.role = role
        self.content = content
        self.finishReason = finishReason
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.model = model
        self.createdAtMicroseconds = createdAtMicroseconds
    }
}

public struct ConversationSummary: Sendable, Hashable, Identifiable {
    public var id: UUID
    public var title: String?
    public var createdAtMicroseconds: Int64
    public var updatedAtMicroseconds: Int64

    public var createdAt: Date { Date(microsecondsSince1970: self.createdAtMicroseconds) }
    public var updatedAt: Date { Date(microsecondsSince1970: self.updatedAtMicroseconds) }
    public var cursor: ConversationCursor {
        ConversationCursor(updatedAtMicroseconds: self.updatedAtMicroseconds, id: self.id)
    }

    public init(id: UUID, title: String?, createdAtMicroseconds: Int64, updatedAtMicroseconds: Int64) {
        self.id = id
        self.title = title
        self.createdAtMicroseconds = createdAtMicroseconds
        self.updatedAtMicroseconds = updatedAtMicroseconds
    }
}

/// Where a conversation listing continues: strictly before (`updated_at`, `id`).
/// A conversation updated while a client pages moves to the front, so it can be seen twice or
/// (if it was not yet reached) not at all in that walk; every other one is seen exactly once.
public struct ConversationCursor: Sendable, Hashable {
    public var updatedAtMicroseconds: Int64
    public var id: UUID

    public init(updatedAtMicroseconds: Int64, id: UUID) {
        self.updatedAtMicroseconds = updatedAtMicroseconds
        self.id = id
    }

    /// An opaque string for APIs (`<microseconds>_<uuid>`).
    public var token: String { "\(self.updatedAtMicroseconds)_\(self.id.uuidString.lowercased())" }

    /// Parses `token`; `nil` for anything else (answer invalid_message).
    public init?(token: String) {
        guard let (time, id) = parseCursorToken(token) else { return nil }
        self.init(updatedAtMicroseconds: time, id: id)
    }
}

/// Where a newest-first message listing continues: strictly before (`created_at`, `id`).
public struct MessageCursor: Sendable, Hashable {
    public var createdAtMicroseconds: Int64
    public var id: UUID

    public init(createdAtMicroseconds: Int64, id: UUID) {
        self.createdAtMicroseconds = createdAtMicroseconds
        self.id = id
    }

    /// An opaque string for APIs (`<microseconds>_<uuid>`).
    public var token: String { "\(self.createdAtMicroseconds)_\(self.id.uuidString.lowercased())" }

    public init?(token: String) {
        guard let (time, id) = parseCursorToken(token) else { return nil }
        self.init(createdAtMicroseconds: time, id: id)
    }
}

private func parseCursorToken(_ token: String) -> (Int64, UUID)? {
    let parts = token.split(separator: "_", omittingEmptySubsequences: false)
    guard parts.count == 2, let time = Int64(parts[0]), let id = UUID(uuidString: String(parts[1])) else { return nil }
    return (time, id)
}

public struct ConversationPage: Sendable, Hashable {
    public var conversations: [ConversationSummary]
    /// `nil` on the last page.
    public var next: ConversationCursor?

    public init(conversations: [ConversationSummary], next: ConversationCursor?) {
        self.conversations = conversations
        self.next = next
    }
}

public struct MessagePage: Sendable, Hashable {
    /// Newest first.
    public var messages: [StoredMessage]
    /// `nil` on the last page.
    public var next: MessageCursor?

    public init(messages: [StoredMessage], next: MessageCursor?) {
        self.messages = messages
        self.next = next
    }
}

/// What `appendMessages` did with a batch.
public struct AppendResult: Sendable, Hashable {
    /// Messages stored now.
    public var inserted: Int
    /// Messages that were already stored (a retried batch).
    public var alreadyStored: Int
    /// Messages not stored because their conversation belongs to another user.
    public var rejected: Int

    public init(inserted: Int = 0, alreadyStored: Int = 0, rejected: Int = 0) {
        self.inserted = inserted
        self.alreadyStored = alreadyStored
        self.rejected = rejected
    }
}

/// Statements sent to the database since the storage was created. A write statement modifies
/// data (DDL included); a write transaction is one atomic unit of writes (a single PostgreSQL
/// statement runs as its own transaction; a SQLite batch is `BEGIN` … `COMMIT`, not counted
/// as statements themselves).
public struct StorageMetrics: Sendable, Hashable {
    public var readStatements = 0
    public var writeStatements = 0
    public var writeTransactions = 0

    public init(readStatements: Int = 0, writeStatements: Int = 0, writeTransactions: Int = 0) {
        self.readStatements = readStatements
        self.writeStatements = writeStatements
        self.writeTransactions = writeTransactions
    }

    /// `self - earlier`, for counting what one operation cost.
    public func since(_ earlier: StorageMetrics) -> StorageMetrics {
        StorageMetrics(
            readStatements: self.readStatements - earlier.readStatements,
            writeStatements: self.writeStatements - earlier.writeStatements,
            writeTransactions: self.writeTransactions - earlier.writeTransactions
        )
    }
}

extension Date {
    /// Microsecond precision is what both databases keep; rounding (not truncating) makes
    /// `Date` → microseconds → `Date` → microseconds stable.
    init(microsecondsSince1970 microseconds: Int64) {
        self.init(timeIntervalSince1970: Double(microseconds) / 1_000_000)
    }

    var microsecondsSince1970: Int64 {
        Int64((self.timeIntervalSince1970 * 1_000_000).rounded())
    }
}

/// A row of `user_quotas`.
public struct QuotaRecord: Sendable, Equatable {
    public var tokensUsed: Int
    public var tokensLimit: Int?
    public var resetAt: Date?

    public init(tokensUsed: Int, tokensLimit: Int?, resetAt: Date?) {
        self.tokensUsed = tokensUsed
        self.tokensLimit = tokensLimit
        self.resetAt = resetAt
    }
}
