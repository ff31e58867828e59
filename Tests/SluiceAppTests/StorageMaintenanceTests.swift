import Foundation
import Logging
import Sessions
@testable import SluiceApp
import Storage
import Testing

/// What `StorageService` does every `quotas.reset_check_interval` besides resets.
@Suite struct StorageMaintenanceTests {
    /// Usage records only make a retried write count once, so the periodic pass deletes those
    /// past `UsageRecord.retention` (the table stays bounded): writing an old one again counts
    /// again, a recent one still counts once.
    @Test func theQuotaPassDeletesUsageRecordsPastTheirRetention() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-maintenance-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let logger = Logger(label: "test.maintenance")
        let storage = try await SQLiteStorage.open(path: directory.appendingPathComponent("sluice.db").path, logger: logger)
        try await storage.migrate()
        let opened = OpenedStorage(
            storage: storage, queue: WriteBehindQueue(storage: storage), usage: UsageRecorder(storage: storage, logger: logger),
            description: "sqlite", migrated: MigrationState())
        let now = Date()
        let old = UsageRecord(id: "chatcmpl-old", userExternalID: "olga", tokens: 5, createdAt: now.addingTimeInterval(-UsageRecord.retention - 1))
        let recent = UsageRecord(id: "chatcmpl-recent", userExternalID: "olga", tokens: 7, createdAt: now.addingTimeInterval(-3600))
        #expect(try await storage.recordUsage([old, recent]) == 2)
        await StorageService(opened: opened, quotas: QuotaSettings(), logger: logger).maintainQuotas(now: now)
        #expect(try await storage.recordUsage([old, recent]) == 1)
        #expect(try await storage.quota(userExternalID: "olga")?.tokensUsed == 17)
        await storage.shutdown()
    }
}
