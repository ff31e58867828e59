import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The embedded database's files are readable by their owner only: a directory Sluice creates is
/// 0700, the database and its `-wal`/`-shm` siblings 0600, set with chmod so the umask cannot
/// widen them.
enum PrivateFiles {
    static let directoryMode: mode_t = 0o700
    static let fileMode: mode_t = 0o600

    /// Creates what is missing of `databasePath`'s directory (the last level 0700) and the
    /// database file itself (0600, empty: SQLite takes an empty file as a new database), and
    /// tightens an existing database file and its siblings to 0600.
    static func prepare(databasePath path: String, logger: Logger) throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
        let fileManager = FileManager.default
        var isDirectory: ObjCBool = false
        if fileManager.fileExists(atPath: directory.path, isDirectory: &isDirectory) {
            if let mode = Self.mode(of: directory.path), mode & 0o077 != 0 {
                logger.warning("the data directory can be entered by other users; conversations are in files only the owner can read", metadata: [
                    "sluice.directory": "\(directory.path)", "sluice.mode": "\(String(mode & 0o777, radix: 8))",
                ])
            }
        } else {
            try fileManager.createDirectory(at: directory.deletingLastPathComponent(), withIntermediateDirectories: true)
            if mkdir(directory.path, Self.directoryMode) != 0 && errno != EEXIST {
                throw PrivateFilesError(path: directory.path, operation: "mkdir", code: errno)
            }
            try Self.chmod(directory.path, Self.directoryMode)
        }
        // Created here, not by SQLite: its mode would be 0644 less the umask.
        let descriptor = systemOpen(path, O_RDWR | O_CREAT | O_CLOEXEC, Self.fileMode)
        guard descriptor >= 0 else { throw PrivateFilesError(path: path, operation: "open", code: errno) }
        close(descriptor)
        for file in [path, path + "-wal", path + "-shm"] {
            guard let mode = Self.mode(of: file), mode & 0o777 != Self.fileMode else { continue }
            try Self.chmod(file, Self.fileMode)
            if mode & 0o077 != 0 {
                logger.notice("database file was readable by other users; now 0600", metadata: [
                    "sluice.file": "\(file)", "sluice.mode": "\(String(mode & 0o777, radix: 8))",
                ])
            }
        }
    }

    /// The permission bits of `path`, nil if it does not exist.
    static func mode(of path: String) -> mode_t? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mode & 0o7777
    }

    private static func chmod(_ path: String, _ mode: mode_t) throws {
        guard systemChmod(path, mode) == 0 else { throw PrivateFilesError(path: path, operation: "chmod", code: errno) }
    }
}

struct PrivateFilesError: Error, CustomStringConvertible {
    var path: String
    var operation: String
    var code: Int32

    var description: String { "\(self.operation) \(self.path): \(String(cString: strerror(self.code)))" }
}

private func systemOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 {
    #if canImport(Glibc)
    Glibc.open(path, flags, mode)
    #else
    Darwin.open(path, flags, mode)
    #endif
}

private func systemChmod(_ path: String, _ mode: mode_t) -> Int32 {
    #if canImport(Glibc)
    Glibc.chmod(path, mode)
    #else
    Darwin.chmod(path, mode)
    #endif
}
