import Foundation
import Testing
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// The embedded database is readable by its owner only: directory 0700, database and its
/// `-wal`/`-shm` 0600 (`sluice migrate` under umask 000 is in `SecretsProcessTests`).
@Suite struct SQLiteFilesTests {
    static func mode(_ path: String) -> mode_t? { PrivateFiles.mode(of: path).map { $0 & 0o777 } }

    @Test func aNewDatabaseIsPrivate() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-files-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let directory = root.appendingPathComponent("data").path
        let path = directory + "/sluice.db"
        let storage = try await SQLiteStorage.open(path: path, logger: testLogger)
        try await storage.migrate()
        try await storage.appendMessages(exchange(user: "alice", conversation: UUID(), at: Date()))
        // While it is open (WAL mode), all four.
        #expect(Self.mode(directory) == 0o700)
        for file in [path, path + "-wal", path + "-shm"] {
            #expect(FileManager.default.fileExists(atPath: file), "\(file)")
            #expect(Self.mode(file) == 0o600, "\(file): \(String(Self.mode(file) ?? 0, radix: 8))")
        }
        await storage.shutdown()
    }

    @Test func existingFilesAreTightenedButAnExistingDirectoryIsLeftAlone() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-files-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        _ = chmod(directory.path, 0o755)
        let path = directory.appendingPathComponent("sluice.db").path
        // A database from before, world-readable, with its WAL.
        let first = try await SQLiteStorage.open(path: path, logger: testLogger)
        try await first.migrate()
        await first.shutdown()
        _ = chmod(path, 0o644)
        #expect(FileManager.default.createFile(atPath: path + "-wal", contents: nil, attributes: [.posixPermissions: 0o666]))

        let storage = try await SQLiteStorage.open(path: path, logger: testLogger)
        try await storage.migrate()
        #expect(Self.mode(path) == 0o600)
        #expect(Self.mode(path + "-wal") == 0o600)
        #expect(Self.mode(directory.path) == 0o755, "a directory it did not create keeps its mode")
        await storage.shutdown()
    }
}
