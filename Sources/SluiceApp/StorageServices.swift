import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Sessions
import Storage
import Synchronization

/// The configured storage, opened: the backend, its write-behind queue, and the services that
/// run them. Nothing at all for `storage.database_url: memory`.
struct OpenedStorage: Sendable {
    let storage: any ConversationStorage
    let queue: WriteBehindQueue
    /// The OpenAI-compatible front door's usage, on its way to `user_quotas`.
    let usage: UsageRecorder
    let description: String
    /// Set once the schema is migrated (`/ready` waits for it).
    let migrated: MigrationState

    var persistence: Persistence { .storage(self.storage, queue: self.queue, usage: self.usage) }

    /// Opens the storage `settings` select, or `nil` for `memory`. SQLite is migrated here (a
    /// local file: failing means the operator must act, so start-up fails); PostgreSQL is
    /// migrated by `StorageService` in the background, retried until the database answers, so
    /// a gateway started before its database comes up by itself.
    static func open(_ settings: StorageSettings, eventLoopGroup: any EventLoopGroup, logger: Logger) async throws -> OpenedStorage? {
        let storage: any ConversationStorage
        let description: String
        let migrated = MigrationState()
        switch try settings.backend {
        case .memory:
            return nil
        case .sqlite(let path):
            let sqlite = try await SQLiteStorage.open(path: path, logger: logger)
            try await sqlite.migrate()
            migrated.markDone()
            storage = sqlite
            description = "sqlite \(path)"
        case .postgres(let url):
            let parsed = try PostgresURL(url)
            // PostgresNIO logs every failed connection attempt at info: a line a second while the
            // database is down. The storage and the queue say it once, at warning.
            var postgresLogger = logger
            postgresLogger.logLevel = max(logger.logLevel, .warning)
            storage = try PostgresStorage(
                configuration: .init(
                    url: parsed, maximumConnections: settings.maxConnections, partitionMonthsAhead: settings.partitionMonthsAhead),
                eventLoopGroup: eventLoopGroup, logger: postgresLogger)
            description = "postgres \(parsed)"
        }
        let queue = WriteBehindQueue(
            storage: storage,
            configuration: .init(
                capacity: settings.queueCapacity, batchSize: settings.batchSize,
                drainTimeout: .nanoseconds(settings.drainTimeout.nanoseconds)),
            logger: logger)
        let usage = UsageRecorder(
            storage: storage, configuration: .init(drainTimeout: .nanoseconds(settings.drainTimeout.nanoseconds)), logger: logger)
        return OpenedStorage(storage: storage, queue: queue, usage: usage, description: description, migrated: migrated)
    }
}

final class MigrationState: Sendable {
    private let done = Atomic<Bool>(false)
    var isDone: Bool { self.done.load(ordering: .acquiring) }
    func markDone() { self.done.store(true, ordering: .releasing) }
}

/// Runs the storage (PostgreSQL's pool and partition maintenance), migrates it if that is still
/// to do (retrying with backoff while the database is unreachable), and closes it once the
/// services after it (the write queue) have stopped. First in the service group, so last to stop.
struct StorageService: Service {
    let opened: OpenedStorage
    let quotas: QuotaSettings
    let logger: Logger

    func run() async throws {
        let storage = self.opened.storage
        await withTaskGroup(of: Void.self) { group in
            if !self.opened.migrated.isDone {
                group.addTask { await self.migrateUntilDone() }
            }
            group.addTask { await self.resetQuotasWhenDue() }
            // The storage's run (or, for SQLite, the wait for shutdown) is what ends the service.
            if let postgres = storage as? PostgresStorage {
                await postgres.run()
            } else {
                try? await gracefulShutdown()
            }
            group.cancelAll()
        }
        await storage.shutdown()
    }

    /// Every `quotas.reset_check_interval`, `maintainQuotas()`.
    private func resetQuotasWhenDue() async {
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: UInt64(self.quotas.resetCheckInterval.nanoseconds))
            guard self.opened.migrated.isDone, !Task.isCancelled else { continue }
            await self.maintainQuotas()
        }
    }

    /// Sets quotas whose `reset_at` passed back to 0, and deletes usage records older than
    /// `UsageRecord.retention` (48 h; they only make a retried write count once). On every
    /// instance: both are idempotent, the first one to run them does the work.
    func maintainQuotas(now: Date = Date()) async {
        let period = TimeInterval(self.quotas.period.nanoseconds) / 1_000_000_000
        do {
            let reset = try await self.opened.storage.resetDueQuotas(now: now, period: period)
            if reset > 0 { self.logger.notice("token quotas reset", metadata: ["sluice.quotas": "\(reset)"]) }
        } catch {
            self.logger.debug("quota reset skipped", metadata: ["sluice.error": "\(error)"])
        }
        do {
            let deleted = try await self.opened.storage.pruneUsageRecords(now: now)
            if deleted > 0 { self.logger.debug("old usage records deleted", metadata: ["sluice.records": "\(deleted)"]) }
        } catch {
            self.logger.debug("usage record cleanup skipped", metadata: ["sluice.error": "\(error)"])
        }
    }

    private func migrateUntilDone() async {
        var backoff: Duration = .milliseconds(250)
        var attempts = 0
        while !Task.isCancelled {
            do {
                try await self.opened.storage.migrate()
                self.opened.migrated.markDone()
                self.logger.notice("storage ready", metadata: ["sluice.storage": "\(self.opened.description)"])
                return
            } catch {
                attempts += 1
                if attempts == 1 || attempts % 20 == 0 {
                    self.logger.warning("storage migration failed; retrying", metadata: [
                        "sluice.storage": "\(self.opened.description)", "sluice.error": "\(error)", "sluice.attempts": "\(attempts)",
                    ])
                }
            }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }
}

/// The write-behind queue and the usage recorder (the OpenAI front door's usage), stopped
/// together: on graceful shutdown both write what they hold at the same time, so the one
/// `storage.drain_timeout` bounds both (the shutdown budget in deploy/ counts it once).
struct StorageWritesService: Service {
    let queue: WriteBehindQueue
    let usage: UsageRecorder

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.queue.run() }
            group.addTask {
                try? await gracefulShutdown()
                await self.usage.drain()
            }
            await group.waitForAll()
        }
    }
}

/// After the server has drained, lets handed-off generations finish (with Redis) so that their
/// answers reach the write queue before it stops. Between the queue and the server in the group.
struct GenerationDrainService: Service {
    let application: ChatApplication
    let handoffDeadline: TimeAmount
    let shared: Bool

    func run() async throws {
        try? await gracefulShutdown()
        if self.shared {
            await self.application.finishGenerations(deadline: self.handoffDeadline)
        }
    }
}

/// `sluice migrate`: creates or upgrades the schema of the configured database, then exits.
public enum StorageMigration {
    /// `timeout` bounds the wait for the database (PostgreSQL: connecting included).
    public static func run(configuration: SluiceConfiguration, timeout: Duration = .seconds(60)) async throws {
        let logger = Logger(label: "sluice.migrate")
        switch try configuration.storage.backend {
        case .memory:
            print("storage.database_url is memory: nothing to migrate")
        case .sqlite(let path):
            try await Self.migrate(try await SQLiteStorage.open(path: path, logger: logger))
            print("migrated sqlite \(path)")
        case .postgres(let url):
            let parsed = try PostgresURL(url)
            let storage = try PostgresStorage(
                configuration: .init(
                    url: parsed, maximumConnections: 1, connectTimeout: min(timeout, .seconds(5)), migrationTimeout: timeout,
                    partitionMonthsAhead: configuration.storage.partitionMonthsAhead),
                logger: logger)
            // PostgreSQL's pool works only while `run()` does.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await storage.run() }
                try await Self.migrate(storage)
                try await group.waitForAll()
            }
            print("migrated postgres \(parsed)")
        }
    }

    /// Migrates, then shuts the storage down whether or not that worked.
    private static func migrate(_ storage: any StorageLifecycle) async throws {
        do {
            try await storage.migrate()
        } catch {
            await storage.shutdown()
            throw error
        }
        await storage.shutdown()
    }
}

/// `sluice quota set|show`: a user's token quota, straight in the database every instance reads.
public enum QuotaAdmin {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Sets the limit (nil: none) and the next reset (nil: `quotas.period` from now; a past or
    /// explicit time is kept as given), optionally zeroing what was used. Prints the result.
    public static func set(
        configuration: SluiceConfiguration, user: String, limit: Int?, resetAt: Date?, noReset: Bool, resetUsage: Bool,
        timeout: Duration = .seconds(30)
    ) async throws {
        let period = TimeInterval(configuration.quotas.period.nanoseconds) / 1_000_000_000
        let next: Date? = noReset ? nil : (resetAt ?? Date().addingTimeInterval(period))
        try await self.withStorage(configuration, timeout: timeout) { storage in
            try await storage.setQuota(userExternalID: user, limit: limit, resetAt: next, resetUsage: resetUsage)
            print(Self.describe(user, try await storage.quota(userExternalID: user)))
        }
    }

    public static func show(configuration: SluiceConfiguration, user: String, timeout: Duration = .seconds(30)) async throws {
        try await self.withStorage(configuration, timeout: timeout) { storage in
            print(Self.describe(user, try await storage.quota(userExternalID: user)))
        }
    }

    /// `user=… used=… limit=… reset_at=…` (one line, easy to read and to parse).
    static func describe(_ user: String, _ record: QuotaRecord?) -> String {
        guard let record else { return "user=\(user) used=0 limit=none reset_at=none" }
        let reset = record.resetAt.map { QuotaAdmin.rfc3339($0) } ?? "none"
        return "user=\(user) used=\(record.tokensUsed) limit=\(record.tokensLimit.map(String.init) ?? "none") reset_at=\(reset)"
    }

    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    /// Opens (and migrates) the configured storage, runs `body`, closes it.
    static func withStorage(
        _ configuration: SluiceConfiguration, timeout: Duration, _ body: @escaping @Sendable (any QuotaStore) async throws -> Void
    ) async throws {
        let logger = Logger(label: "sluice.quota")
        switch try configuration.storage.backend {
        case .memory:
            throw Failure(description: "storage.database_url is memory: there are no quotas to set")
        case .sqlite(let path):
            let storage = try await SQLiteStorage.open(path: path, logger: logger)
            do {
                try await storage.migrate()
                try await body(storage)
            } catch {
                await storage.shutdown()
                throw error
            }
            await storage.shutdown()
        case .postgres(let url):
            let storage = try PostgresStorage(
                configuration: .init(
                    url: try PostgresURL(url), maximumConnections: 1, connectTimeout: min(timeout, .seconds(5)), migrationTimeout: timeout,
                    partitionMonthsAhead: configuration.storage.partitionMonthsAhead),
                logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await storage.run() }
                do {
                    try await storage.migrate()
                    try await body(storage)
                } catch {
                    await storage.shutdown()
                    throw error
                }
                await storage.shutdown()
                try await group.waitForAll()
            }
        }
    }
}
