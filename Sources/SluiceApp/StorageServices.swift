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
    let description: String
    /// Set once the schema is migrated (`/ready` waits for it).
    let migrated: MigrationState

    var persistence: Persistence { .storage(self.storage, queue: self.queue) }

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
            storage = PostgresStorage(
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
        return OpenedStorage(storage: storage, queue: queue, description: description, migrated: migrated)
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
    let logger: Logger

    func run() async throws {
        let storage = self.opened.storage
        await withTaskGroup(of: Void.self) { group in
            if !self.opened.migrated.isDone {
                group.addTask { await self.migrateUntilDone() }
            }
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
            let storage = PostgresStorage(
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
    private static func migrate(_ storage: any ConversationStorage) async throws {
        do {
            try await storage.migrate()
        } catch {
            await storage.shutdown()
            throw error
        }
        await storage.shutdown()
    }
}
