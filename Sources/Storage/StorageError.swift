/// Why a storage operation failed.
public enum StorageError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The database could not be reached or the connection broke (server down or restarting,
    /// pool giving up on connecting, operation timed out). Worth retrying later.
    case unavailable(String)
    /// The database refused the statement. `sqlState` is PostgreSQL's five-character code, or
    /// `SQLITE_<reason>` (sqlite-nio's name, e.g. `SQLITE_busy`) for SQLite. Some are transient (see `isRetryable`).
    case rejected(sqlState: String?, message: String)
    /// A row came back in a shape this code does not expect (schema changed under it).
    case unexpectedRow(String)
    /// `shutdown()` was called.
    case shutDown

    /// Whether the same operation may succeed if tried again unchanged.
    public var isRetryable: Bool {
        switch self {
        case .unavailable: return true
        case .shutDown, .unexpectedRow: return false
        case .rejected(let sqlState, _):
            guard let sqlState else { return false }
            // 08 connection, 40 serialization/deadlock, 53 resources, 57P0x shutdown/starting,
            // 23505 unique violation (two instances creating the same user at once), SQLite busy/locked.
            return sqlState.hasPrefix("08") || sqlState.hasPrefix("40") || sqlState.hasPrefix("53")
                || sqlState.hasPrefix("57P0") || sqlState == "23505"
                || sqlState.hasPrefix("SQLITE_busy") || sqlState.hasPrefix("SQLITE_locked")
        }
    }

    public var description: String {
        switch self {
        case .unavailable(let reason): "database unavailable: \(reason)"
        case .rejected(let sqlState, let message): "database error\(sqlState.map { " \($0)" } ?? ""): \(message)"
        case .unexpectedRow(let reason): "unexpected row from the database: \(reason)"
        case .shutDown: "the storage was shut down"
        }
    }
}
