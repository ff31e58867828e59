import Foundation
import NIOCore
import NIOHTTP1
import Policy
import SluiceProtocol
import WSServer

/// Who may connect and as whom: authentication when keys are configured, otherwise the
/// development stand-in (`?user=` / `X-Sluice-User`, or the shared anonymous user).
public struct ChatPolicy: Sendable {
    /// nil or not enabled: authentication is off.
    public var authenticator: Authenticator?
    /// A connection whose token expires gets `error` `unauthorized` and Close 1008 at expiry.
    public var closeOnExpiry: Bool = true

    public init(authenticator: Authenticator? = nil, closeOnExpiry: Bool = true) {
        self.authenticator = authenticator
        self.closeOnExpiry = closeOnExpiry
    }

    public static let open = ChatPolicy()

    public var authenticates: Bool { self.authenticator?.isEnabled == true }

    /// The identity a request speaks for (nil: the anonymous development user).
    func identify(_ head: HTTPRequestHead) -> Result<Identity?, AuthenticationFailure> {
        if let authenticator = self.authenticator, authenticator.isEnabled {
            return authenticator.authenticate(head).map(Optional.some)
        }
        return .success(UserIdentity.user(from: head).map { Identity(userID: $0, method: .development) })
    }

    /// 401 with the protocol's error object as its JSON body and an RFC 6750 challenge.
    static func refusal(_ failure: AuthenticationFailure) -> HTTPRefusal {
        var body = ByteBuffer()
        ServerMessageEncoder.error(code: .unauthorized, message: failure.message, into: &body)
        return HTTPRefusal(status: .unauthorized, body: String(buffer: body), headers: ["WWW-Authenticate": failure.challenge])
    }
}
