import Foundation
import NIOCore
import Policy
import NIOHTTP1
import Synchronization
import WSServer

/// Who a connection belongs to. Until authentication exists (a later issue), the client names
/// itself with a `user` query parameter or an `X-Sluice-User` header: a development stand-in,
/// not a security boundary.
package enum UserIdentity {
    static let header = "X-Sluice-User"

    package static func user(from head: HTTPRequestHead) -> String? {
        if let value = head.headers.first(name: Self.header), let user = Self.valid(value) { return user }
        guard let query = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return nil }
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, parts[0] == "user" else { continue }
            return Self.valid(String(parts[1]).removingPercentEncoding ?? String(parts[1]))
        }
        return nil
    }

    /// 1 to 128 printable ASCII characters without spaces; anything else counts as no user.
    static func valid(_ text: String) -> String? {
        guard (1...128).contains(text.utf8.count), text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        return text
    }
}

/// One open connection of a user, somewhere.
package struct PresenceEntry: Sendable, Hashable, Comparable {
    package var instanceID: String
    package var sessionID: String

    package static func < (lhs: PresenceEntry, rhs: PresenceEntry) -> Bool {
        (lhs.instanceID, lhs.sessionID) < (rhs.instanceID, rhs.sessionID)
    }
}

/// This instance's connections by user (the single-node registry; Redis adds the others).
final class LocalPresence: Sendable {
    private let users = Mutex<[String: Set<String>]>([:])

    func opened(user: String, sessionID: String) {
        self.users.withLock { _ = $0[user, default: []].insert(sessionID) }
    }

    func closed(user: String, sessionID: String) {
        self.users.withLock { users in
            users[user]?.remove(sessionID)
            if users[user]?.isEmpty == true { users[user] = nil }
        }
    }

    func sessions(of user: String) -> [String] {
        self.users.withLock { Array($0[user] ?? []) }
    }
}
