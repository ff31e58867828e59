import Foundation
import Inference
import Logging
import Metrics
import SluiceProtocol
import Storage
import Synchronization

/// Where conversations are kept beyond this process: nowhere (`none`: context lives in memory
/// and, with Redis, in its cache, and is forgotten), or a `ConversationStorage` (PostgreSQL or
/// SQLite) written through a `WriteBehindQueue`. The storage is held once per part, each as the
/// narrow protocol its users call (all the same storage, or all nil).
public struct Persistence: Sendable {
    /// Context and history reads (`ConversationHistory`); messages are written through `queue`.
    let conversations: (any ConversationStore)?
    /// Quota reads and due resets (`QuotaGuard`).
    let quotas: (any QuotaStore)?
    /// Where generations record their tool runs.
    let archive: (any ExecutionArchive)?
    /// Statement counts (`/v1/stats`).
    package let lifecycle: (any StorageLifecycle)?
    package let queue: WriteBehindQueue?
    /// Writes the usage of generations that store no message (the OpenAI-compatible front door).
    let usage: UsageRecorder?

    init(storage: (any ConversationStorage)?, queue: WriteBehindQueue?, usage: UsageRecorder? = nil) {
        self.conversations = storage
        self.quotas = storage
        self.archive = storage
        self.lifecycle = storage
        self.queue = queue
        self.usage = usage
    }

    public static let none = Persistence(storage: nil, queue: nil)

    /// `usage` defaults to a recorder on `storage` (give your own to `drain()` it at shutdown).
    public static func storage(_ storage: any ConversationStorage, queue: WriteBehindQueue, usage: UsageRecorder? = nil) -> Persistence {
        Persistence(
            storage: storage, queue: queue, usage: usage ?? UsageRecorder(storage: storage, logger: Logger(label: "sluice.storage.usage")))
    }

    public var isEnabled: Bool { self.conversations != nil }
}

/// A conversation ready to take a new user message.
struct ResolvedConversation: Sendable {
    let id: UUID
    /// The canonical (lowercase) form: cache keys and what clients see.
    let key: String
    /// The context, oldest first, within the budget.
    let messages: [ChatMessage]
    let isNew: Bool
    /// False for an ephemeral conversation (the OpenAI door's): nothing of it is stored.
    var isKept = true

    static func new() -> ResolvedConversation {
        let id = UUID()
        return ResolvedConversation(id: id, key: id.uuidString.lowercased(), messages: [], isNew: true)
    }
}

enum ConversationLookup: Sendable {
    case found(ResolvedConversation)
    /// Unknown, not a UUID, or another user's (the same answer, so ids cannot be probed).
    case notFound
    /// The cache missed and the storage cannot be read now: retry later.
    case unavailable(String)
}

/// Why a history read failed (each maps to one wire error).
package enum HistoryFailure: Error, Sendable, Equatable {
    case invalid(String)
    case notFound
    case unavailable(String)
    /// Persistence is off: there is no history to read.
    case notKept
}

/// The conversations of the chat layer: context for each new message (from a cache when it can,
/// from the storage when it must), the two writes per generation, and the history reads.
///
/// Caches, in order: with Redis, the shared `conv:{id}:m` list (every instance sees every write);
/// on a single node, this process's `ConversationMemory`. Both are written through on every
/// message, not invalidated: the storage lags behind the write-behind queue, so a reader sent
/// to it after an invalidation could miss the newest messages. A miss reads the storage, adds
/// this instance's messages still queued for it, and fills the cache.
package final class ConversationHistory: Sendable {
    let memory: ConversationMemory
    package let persistence: Persistence
    /// The cache the instances share (Redis; nil: one node).
    private let sharedCache: (any ConversationCache)?
    let contextMaxCharacters: Int
    /// How long a history read waits for this instance's queued writes (read your writes).
    let readYourWritesTimeout: Duration
    private let logger: Logger

    private let hits = Atomic<Int>(0)
    private let misses = Atomic<Int>(0)
    private let hitCounter = Counter(label: "sluice_conversation_cache_lookups_total", dimensions: [("result", "hit")])
    private let missCounter = Counter(label: "sluice_conversation_cache_lookups_total", dimensions: [("result", "miss")])
    private let hitRatioGauge = Gauge(label: "sluice_conversation_cache_hit_ratio")
    private let readLatency = Timer(label: "sluice_storage_read_seconds")
    private let readFailures = Counter(label: "sluice_storage_read_failures_total")

    /// Times a storage read and counts its failure.
    private func timedRead<T>(_ read: () async throws(StorageError) -> T) async throws(StorageError) -> T {
        let started = ContinuousClock.now
        do {
            let value = try await read()
            self.readLatency.recordNanoseconds(Int64((ContinuousClock.now - started) / .nanoseconds(1)))
            return value
        } catch {
            self.readFailures.increment()
            throw error
        }
    }

    /// The anonymous user: connections that name no user share it (authentication comes with
    /// the policy issue).
    package static let anonymous = "anonymous"

    init(
        memory: ConversationMemory, persistence: Persistence, sharedCache: (any ConversationCache)?, contextMaxCharacters: Int,
        readYourWritesTimeout: Duration = .seconds(2), logger: Logger
    ) {
        self.memory = memory
        self.persistence = persistence
        self.sharedCache = sharedCache
        self.contextMaxCharacters = contextMaxCharacters
        self.readYourWritesTimeout = readYourWritesTimeout
        self.logger = logger
    }

    /// Context lookups answered by a cache, and those that read the storage.
    package var cacheCounts: (hits: Int, misses: Int) { (self.hits.load(ordering: .relaxed), self.misses.load(ordering: .relaxed)) }

    private func countLookup(hit: Bool) {
        let hits = hit ? self.hits.add(1, ordering: .relaxed).newValue : self.hits.load(ordering: .relaxed)
        let misses = hit ? self.misses.load(ordering: .relaxed) : self.misses.add(1, ordering: .relaxed).newValue
        (hit ? self.hitCounter : self.missCounter).increment()
        self.hitRatioGauge.record(Double(hits) / Double(max(1, hits + misses)))
    }

    // MARK: Context

    /// What can be answered at once: a new conversation, a malformed id, or a hit in this
    /// process's memory (single node). `nil`: call `lookup`.
    func lookupWithoutWaiting(_ requested: String?, user: String) -> ConversationLookup? {
        guard let requested else { return .found(.new()) }
        guard let id = UUID(uuidString: requested) else { return .notFound }
        let key = id.uuidString.lowercased()
        // With Redis the shared cache is the reference: another instance may have added to it.
        guard self.sharedCache == nil else { return nil }
        if let cached = self.memory.context(of: key) {
            self.countLookup(hit: true)
            guard cached.owner == user else { return .notFound }
            return .found(ResolvedConversation(id: id, key: key, messages: cached.messages, isNew: false))
        }
        return self.persistence.isEnabled ? nil : .notFound
    }

    func lookup(_ requested: String?, user: String) async -> ConversationLookup {
        if let answer = self.lookupWithoutWaiting(requested, user: user) { return answer }
        guard let requested, let id = UUID(uuidString: requested) else { return .notFound }
        let key = id.uuidString.lowercased()
        var sharedCacheFailed = false
        if let sharedCache = self.sharedCache {
            switch await sharedCache.conversationContext(key) {
            case .success(let cached?):
                self.countLookup(hit: true)
                self.memory.load(key, owner: cached.owner, messages: cached.messages)
                return Self.owned(cached, by: user, id: id, key: key)
            case .success(nil):
                break
            case .failure:
                sharedCacheFailed = true
            }
        }
        // Redis down (or no storage): this instance's own copy, if it has one.
        if sharedCacheFailed || !self.persistence.isEnabled, let local = self.memory.context(of: key) {
            self.countLookup(hit: true)
            return Self.owned(local, by: user, id: id, key: key)
        }
        guard let storage = self.persistence.conversations, let queue = self.persistence.queue else {
            return sharedCacheFailed ? .unavailable("conversation store unreachable") : .notFound
        }
        self.countLookup(hit: false)
        do {
            // Taken before the read: a batch written meanwhile is in both, and merged by id.
            let pending = queue.pendingMessages(conversationID: id)
            guard let owner = try await self.timedRead({ () throws(StorageError) in try await storage.conversationOwner(id) })
                ?? pending.first?.userExternalID else { return .notFound }
            guard owner == user else { return .notFound }
            let stored = try await self.timedRead { () throws(StorageError) in
                try await storage.context(conversationID: id, maxCharacters: self.contextMaxCharacters)
            }
            let storedIDs = Set(stored.map(\.id))
            var messages = stored.map { ChatMessage(role: ChatMessage.Role($0.role), content: $0.content) }
            messages += pending.filter { !storedIDs.contains($0.id) }.map { ChatMessage(role: ChatMessage.Role($0.role), content: $0.content) }
            messages = Self.trimmed(messages, toCharacters: self.contextMaxCharacters)
            self.memory.load(key, owner: owner, messages: messages)
            self.sharedCache?.fillConversation(key, owner: owner, messages: messages)
            return .found(ResolvedConversation(id: id, key: key, messages: messages, isNew: false))
        } catch {
            self.logger.warning("conversation context unreadable", metadata: ["sluice.conversation": "\(key)", "sluice.error": "\(error)"])
            return .unavailable("conversation storage unreachable")
        }
    }

    private static func owned(_ cached: CachedConversation, by user: String, id: UUID, key: String) -> ConversationLookup {
        guard cached.owner == user else { return .notFound }
        return .found(ResolvedConversation(id: id, key: key, messages: cached.messages, isNew: false))
    }

    /// The newest messages within `limit` Unicode scalars (as the storage counts), at least one.
    static func trimmed(_ messages: [ChatMessage], toCharacters limit: Int) -> [ChatMessage] {
        var total = 0
        var start = messages.count
        while start > 0 {
            let size = messages[start - 1].content.unicodeScalars.count
            if total + size > limit && start < messages.count { break }
            total += size
            start -= 1
        }
        return Array(messages[start...])
    }

    /// Whether the user may see the conversation (for `conversation.subscribe`), without
    /// counting as a context lookup or loading anything.
    func isVisible(_ conversationID: String, to user: String) async -> ConversationLookup {
        guard let id = UUID(uuidString: conversationID) else { return .notFound }
        let key = id.uuidString.lowercased()
        let found = ResolvedConversation(id: id, key: key, messages: [], isNew: false)
        if let owner = self.memory.owner(of: key) { return owner == user ? .found(found) : .notFound }
        var sharedCacheFailed = false
        if let sharedCache = self.sharedCache {
            switch await sharedCache.conversationContext(key) {
            case .success(let cached?): return cached.owner == user ? .found(found) : .notFound
            case .success(nil): break
            case .failure: sharedCacheFailed = true
            }
        }
        guard let storage = self.persistence.conversations, let queue = self.persistence.queue else {
            return sharedCacheFailed ? .unavailable("conversation store unreachable") : .notFound
        }
        do {
            let owner = try await storage.conversationOwner(id) ?? queue.pendingMessages(conversationID: id).first?.userExternalID
            return owner == user ? .found(found) : .notFound
        } catch {
            return .unavailable("conversation storage unreachable")
        }
    }

    // MARK: Writes (two per generation)

    /// The user message, when its generation starts. Holds room in the write queue for the
    /// answer too; `false` (nothing recorded) when the queue is full: refuse the generation
    /// with a retryable error rather than lose history.
    func recordUserMessage(_ content: String, in conversation: ResolvedConversation, user: String, model: String?) -> Bool {
        if let queue = self.persistence.queue {
            let message = NewMessage(
                conversationID: conversation.id, userExternalID: user, role: .user, content: content, model: model,
                conversationTitle: conversation.isNew ? Self.title(from: content) : nil)
            guard queue.enqueue(message, reservingFollowUps: 1) else { return false }
        }
        let message = ChatMessage(role: .user, content: content)
        if conversation.isNew {
            self.memory.create(id: conversation.key, owner: user)
            self.memory.append(message, to: conversation.key)
            self.sharedCache?.createConversation(conversation.key, owner: user, first: message)
        } else {
            if self.memory.exists(conversation.key) {
                self.memory.append(message, to: conversation.key)
            } else {
                self.memory.load(conversation.key, owner: user, messages: conversation.messages + [message])
            }
            self.sharedCache?.appendMessage(message, toConversation: conversation.key)
        }
        return true
    }

    /// The answer, once, when its generation ends (whatever the reason, with its partial text).
    func recordAssistantMessage(
        _ content: String, conversationID: UUID, key: String, user: String, finishReason: String,
        promptTokens: Int, completionTokens: Int, model: String
    ) {
        self.persistence.queue?.enqueueReserved(NewMessage(
            conversationID: conversationID, userExternalID: user, role: .assistant, content: content,
            finishReason: finishReason, promptTokens: promptTokens, completionTokens: completionTokens, model: model))
        let message = ChatMessage(role: .assistant, content: content)
        self.memory.append(message, to: key)
        self.sharedCache?.appendMessage(message, toConversation: key)
    }

    /// The generation never started (the upstream refused it): no answer will come.
    func releaseAnswerReservation() {
        self.persistence.queue?.cancelReservation()
    }

    /// A conversation's title: the start of its first message, on one line.
    static func title(from content: String) -> String {
        let line = content.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        return trimmed.count > 80 ? String(trimmed.prefix(80)) + "…" : trimmed
    }

    // MARK: History reads

    static let defaultPageSize = 20

    package func listConversations(user: String, page: ClientMessage.HistoryPage) async -> Result<(ConversationPage, [ConversationListing]), HistoryFailure> {
        guard let storage = self.persistence.conversations, let queue = self.persistence.queue else { return .failure(.notKept) }
        var cursor: ConversationCursor?
        if let before = page.before {
            guard let parsed = ConversationCursor(token: before) else { return .failure(.invalid("before is not a cursor from a previous page")) }
            cursor = parsed
        }
        _ = await queue.waitForEarlierWrites(timeout: self.readYourWritesTimeout)
        do {
            let limit = min(page.limit ?? Self.defaultPageSize, storagePageLimit)
            let result = try await self.timedRead { () throws(StorageError) in
                try await storage.listConversations(userExternalID: user, before: cursor, limit: limit)
            }
            let listings = result.conversations.map {
                ConversationListing(
                    id: $0.id.uuidString.lowercased(), title: $0.title, createdAtMicroseconds: $0.createdAtMicroseconds,
                    updatedAtMicroseconds: $0.updatedAtMicroseconds)
            }
            return .success((result, listings))
        } catch {
            return .failure(.unavailable("conversation storage unreachable"))
        }
    }

    package func messages(conversationID: String, user: String, page: ClientMessage.HistoryPage) async -> Result<(MessagePage, [MessageListing]), HistoryFailure> {
        guard let storage = self.persistence.conversations, let queue = self.persistence.queue else { return .failure(.notKept) }
        guard let id = UUID(uuidString: conversationID) else { return .failure(.notFound) }
        var cursor: MessageCursor?
        if let before = page.before {
            guard let parsed = MessageCursor(token: before) else { return .failure(.invalid("before is not a cursor from a previous page")) }
            cursor = parsed
        }
        _ = await queue.waitForEarlierWrites(timeout: self.readYourWritesTimeout)
        do {
            let limit = min(page.limit ?? Self.defaultPageSize, storagePageLimit)
            guard let result = try await self.timedRead({ () throws(StorageError) in
                try await storage.messages(conversationID: id, userExternalID: user, before: cursor, limit: limit)
            }) else { return .failure(.notFound) }
            let listings = result.messages.map {
                MessageListing(
                    id: $0.id.uuidString.lowercased(), role: $0.role.rawValue, content: $0.content, finishReason: $0.finishReason,
                    promptTokens: $0.promptTokens, completionTokens: $0.completionTokens, model: $0.model,
                    createdAtMicroseconds: $0.createdAtMicroseconds)
            }
            return .success((result, listings))
        } catch {
            return .failure(.unavailable("conversation storage unreachable"))
        }
    }
}

extension ChatMessage.Role {
    init(_ role: MessageRole) {
        switch role {
        case .user: self = .user
        case .assistant: self = .assistant
        case .system: self = .system
        case .tool: self = .tool
        }
    }
}

extension HistoryFailure {
    /// The `error` a client gets: code, message, and `retry_after_ms` when retrying may help.
    package func wireError(conversationID: String?) -> (ErrorCode, String, Int64?) {
        switch self {
        case .invalid(let message): return (.invalidMessage, message, nil)
        case .notFound: return (.notFound, "unknown conversation \(conversationID ?? "")", nil)
        case .unavailable(let reason): return (.unavailable, reason, 1000)
        case .notKept: return (.unavailable, "history is not kept: persistence is off (storage.database_url: memory)", nil)
        }
    }
}
