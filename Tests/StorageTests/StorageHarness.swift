import Foundation
import Logging
import PostgresNIO
import SQLiteNIO
import Testing
@testable import SluiceTestSupport
@testable import Storage

/// A migrated storage plus a side door for checking what is really in the tables.
protocol StorageHarness: Sendable {
    var name: String { get }
    var storage: any ConversationStorage { get }
    /// Runs a query that returns one integer (a count) on a separate connection.
    func integer(_ sql: String) async throws -> Int64
}

struct SQLiteHarness: StorageHarness {
    let name = "sqlite"
    let storage: any ConversationStorage
    let probe: SQLiteConnection

    func integer(_ sql: String) async throws -> Int64 {
        let rows = try await self.probe.query(sql)
        return Int64(rows.first?.columns.first?.data.integer ?? -1)
    }

    /// A fresh file database in a temporary directory (removed afterwards), migrated.
    static func with(_ body: (SQLiteHarness) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("sluice-sqlite-\(UUID().uuidString)", isDirectory: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("nested/sluice.sqlite").path
        let storage = try await SQLiteStorage.open(path: path, logger: testLogger)
        try await storage.migrate()
        let probe = try await SQLiteConnection.open(storage: .file(path: path))
        do {
            try await body(SQLiteHarness(storage: storage, probe: probe))
        } catch {
            try? await probe.close()
            await storage.shutdown()
            throw error
        }
        try? await probe.close()
        await storage.shutdown()
    }
}

struct PostgresHarness: StorageHarness {
    let name = "postgres"
    let server: PostgresServerProcess
    let postgres: PostgresStorage
    let probe: PostgresClient
    var storage: any ConversationStorage { self.postgres }

    func integer(_ sql: String) async throws -> Int64 {
        let rows = try await self.probe.query(PostgresQuery(unsafeSQL: sql))
        for try await value in rows.decode(Int64.self) { return value }
        return -1
    }

    func text(_ query: PostgresQuery) async throws -> String? {
        let rows = try await self.probe.query(query)
        for try await value in rows.decode(String?.self) { return value }
        return nil
    }

    /// A fresh PostgreSQL server with a running, migrated `PostgresStorage` (and a probe client).
    static func with(
        operationTimeout: Duration = .seconds(5),
        _ body: (PostgresHarness) async throws -> Void
    ) async throws {
        try await PostgresServerProcess.withServer { server in
            let url = try PostgresURL(server.url)
            let storage = try PostgresStorage(
                configuration: .init(url: url, connectTimeout: .seconds(2), operationTimeout: operationTimeout),
                logger: testLogger
            )
            let probe = PostgresClient(configuration: .init(
                host: url.host, port: url.port, username: url.username, password: url.password,
                database: url.database, tls: .disable
            ))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await storage.run() }
                group.addTask { await probe.run() }
                defer { group.cancelAll() }
                try await storage.migrate()
                try await body(PostgresHarness(server: server, postgres: storage, probe: probe))
            }
        }
    }
}

/// Quiet unless SLUICE_STORAGE_TEST_LOG names a level (`debug` shows the pool's reconnects and
/// the queue's retries).
let testLogger: Logger = {
    var logger = Logger(label: "test.storage")
    logger.logLevel = ProcessInfo.processInfo.environment["SLUICE_STORAGE_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
    return logger
}()

/// The two implementations, for parameterised tests.
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    var testDescription: String { self.rawValue }

    /// Runs `body` with a fresh, migrated storage of this kind.
    func with(_ body: (any StorageHarness) async throws -> Void) async throws {
        switch self {
        case .sqlite: try await SQLiteHarness.with { try await body($0) }
        case .postgres: try await PostgresHarness.with { try await body($0) }
        }
    }
}

/// `2031-01-31T23:59:59.999Z`-style instants, UTC.
func utc(_ year: Int, _ month: Int, _ day: Int, _ hour: Int = 0, _ minute: Int = 0, _ second: Int = 0, milliseconds: Int = 0) -> Date {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: "UTC")!
    let base = calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute, second: second))!
    return base.addingTimeInterval(Double(milliseconds) / 1000)
}

/// A user message, then (optionally) its assistant answer with usage, one second apart.
func exchange(
    user: String, conversation: UUID, at time: Date, text: String = "hello", title: String? = nil,
    answer: String? = "hi there", promptTokens: Int = 7, completionTokens: Int = 3
) -> [NewMessage] {
    var messages = [NewMessage(
        conversationID: conversation, userExternalID: user, role: .user, content: text,
        createdAt: time, conversationTitle: title
    )]
    if let answer {
        messages.append(NewMessage(
            conversationID: conversation, userExternalID: user, role: .assistant, content: answer,
            finishReason: "stop", promptTokens: promptTokens, completionTokens: completionTokens,
            model: "sluice-simulator", createdAt: time.addingTimeInterval(1)
        ))
    }
    return messages
}
