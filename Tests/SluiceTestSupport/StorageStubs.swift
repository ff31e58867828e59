import Foundation
import Storage

// Storage fakes for tests that script one or two calls: conform to the stub protocol of each part
// the subject holds and write only the calls the test is about; the others do nothing and find
// nothing (an empty database that stores nothing).

public protocol StubConversationStore: ConversationStore {}

extension StubConversationStore {
    public func appendMessages(_ batch: [NewMessage]) async throws(StorageError) -> AppendResult { AppendResult() }
    public func listConversations(userExternalID: String, before: ConversationCursor?, limit: Int) async throws(StorageError) -> ConversationPage {
        ConversationPage(conversations: [], next: nil)
    }
    public func messages(conversationID: UUID, userExternalID: String?, before: MessageCursor?, limit: Int) async throws(StorageError) -> MessagePage? {
        nil
    }
    public func context(conversationID: UUID, maxCharacters: Int) async throws(StorageError) -> [StoredMessage] { [] }
    public func conversationOwner(_ conversationID: UUID) async throws(StorageError) -> String? { nil }
}

public protocol StubQuotaStore: QuotaStore {}

extension StubQuotaStore {
    public func quota(userExternalID: String) async throws(StorageError) -> QuotaRecord? { nil }
    public func setQuota(userExternalID: String, limit: Int?, resetAt: Date?, resetUsage: Bool) async throws(StorageError) {}
    public func resetDueQuotas(now: Date, period: TimeInterval) async throws(StorageError) -> Int { 0 }
    public func recordUsage(_ records: [UsageRecord]) async throws(StorageError) -> Int { 0 }
    public func deleteUsageRecords(before cutoff: Date, limit: Int) async throws(StorageError) -> Int { 0 }
}

public protocol StubExecutionArchive: ExecutionArchive {}

extension StubExecutionArchive {
    public func archiveJob(_ job: ArchivedJob) async throws(StorageError) {}
    public func archivedJob(id: String) async throws(StorageError) -> ArchivedJob? { nil }
    public func recordToolExecutions(_ records: [ToolExecutionRecord]) async throws(StorageError) {}
    public func toolExecutions(generationID: String) async throws(StorageError) -> [ToolExecutionRecord] { [] }
}

public protocol StubStorageLifecycle: StorageLifecycle {}

extension StubStorageLifecycle {
    public func migrate() async throws(StorageError) {}
    public func ensurePartitions(from start: Date, monthsAhead: Int) async throws(StorageError) {}
    public var metrics: StorageMetrics { StorageMetrics() }
    public func shutdown() async {}
}

/// A whole `ConversationStorage` (for a subject that takes one, such as `Persistence`).
public typealias StubStorage = StubConversationStore & StubQuotaStore & StubExecutionArchive & StubStorageLifecycle
