import Foundation
import NIOCore
import Policy
import NIOHTTP1
import Synchronization
import WSServer

/// Who a connection belongs to. Until authentication exists (a later issue), the client names
/// itself with a `user` query parameter or an `X-Sluice-User` header: a development stand-in,
/// not a security boundary.
enum UserIdentity {
    static let header = "X-Sluice-User"

    static func user(from head: HTTPRequestHead) -> String? {
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
struct PresenceEntry: Sendable, Hashable, Comparable {
    var instanceID: String
    var sessionID: String

    static func < (lhs: PresenceEntry, rhs: PresenceEntry) -> Bool {
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

/// `GET /v1/presence`: a user's open connections on every instance, as
/// `{"user": …, "connections": [{"instance_id": …, "session_id": …}]}`. On the public listener the
/// caller's own (with authentication on, the token's `sub`; off, `?user=`); on the admin
/// listener (`AdminRoutes`) any user's, named by `?user=NAME`.
public struct PresenceRoutes: HTTPRouteProvider {
    public static let path = "/v1/presence"
    let application: ChatApplication

    public init(application: ChatApplication) {
        self.application = application
    }

    public func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard path == Self.path else { return nil }
        return PresenceResponder(application: self.application)
    }
}

final class PresenceResponder: HTTPRouteResponder {
    private let application: ChatApplication
    /// The admin listener's: `?user=` names anyone, no credential is asked for.
    private let anyUser: Bool

    init(application: ChatApplication, anyUser: Bool = false) {
        self.application = application
        self.anyUser = anyUser
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        guard head.method == .GET else {
            writer.respond(status: .methodNotAllowed, contentType: "application/json", body: ByteBuffer(string: #"{"error":"use GET"}"#))
            return
        }
        // With authentication on, a user sees only their own presence (the token's `sub`).
        let identified: String?
        if self.anyUser {
            identified = UserIdentity.user(from: head)
        } else {
            switch self.application.policy.admitCaller(head, peer: writer.remoteAddress, countsAsConnection: false) {
            case .failure(let refusal):
                writer.respond(refusal.httpRefusal)
                return
            case .success(let caller):
                identified = caller.identity?.userID
            }
        }
        guard let user = identified else {
            writer.respond(status: .badRequest, contentType: "application/json",
                           body: ByteBuffer(string: #"{"error":"give ?user=NAME (1 to 128 printable characters)"}"#))
            return
        }
        let application = self.application
        let loop = writer.eventLoop
        let respond = NIOLoopBound(writer, eventLoop: loop)
        let promise = loop.makePromise(of: Result<[PresenceEntry], BrokerError>.self)
        promise.completeWithTask { await application.presence(of: user) }
        promise.futureResult.whenSuccess { result in
            switch result {
            case .success(let entries):
                var body = ByteBuffer()
                body.writeStaticString(#"{"user":"#)
                body.writeJSONString(user)
                body.writeStaticString(#","connections":["#)
                for (index, entry) in entries.sorted().enumerated() {
                    if index > 0 { body.writeStaticString(",") }
                    body.writeStaticString(#"{"instance_id":"#)
                    body.writeJSONString(entry.instanceID)
                    body.writeStaticString(#","session_id":"#)
                    body.writeJSONString(entry.sessionID)
                    body.writeStaticString("}")
                }
                body.writeStaticString("]}")
                respond.value.respond(status: .ok, contentType: "application/json", body: body)
            case .failure:
                respond.value.respond(status: .serviceUnavailable, contentType: "application/json",
                                      body: ByteBuffer(string: #"{"error":"presence store unreachable"}"#))
            }
        }
    }

    func clientDisconnected() {}
}
