import NIOCore
import NIOHTTP1
import Sessions
import WSServer

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
