import Foundation
import Inference
import Logging
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
    /// Rate limits (requests and tokens per user and address, connections per address,
    /// messages per connection).
    public var limiter: GenerationLimiter

    /// Rules and injection markers checked on user input.
    public var inputFilter: InputFilter
    /// An OpenAI-compatible moderation service asked after the rules pass.
    public var moderation: ModerationClient?
    /// When the moderation service fails: let the input through (true) or refuse it as `unavailable`.
    public var moderationFailOpen: Bool

    public init(
        authenticator: Authenticator? = nil, closeOnExpiry: Bool = true, limiter: GenerationLimiter? = nil,
        inputFilter: InputFilter = .none, moderation: ModerationClient? = nil, moderationFailOpen: Bool = true
    ) {
        self.authenticator = authenticator
        self.closeOnExpiry = closeOnExpiry
        self.inputFilter = inputFilter
        self.moderation = moderation
        self.moderationFailOpen = moderationFailOpen
        self.limiter = limiter ?? GenerationLimiter(
            limits: GatewayLimits(), limiter: RateLimiter(redis: nil, logger: Logger(label: "sluice.limits")))
    }

    /// Who calls: what `admitCaller` hands a WebSocket connection or an HTTP route.
    package struct Admitted: Sendable {
        package var identity: Identity?
        /// The client's address (for per-address limits).
        package var address: String
        /// Whose conversations and limits: the authenticated user, the development stand-in, or the anonymous user.
        package var user: String { self.identity?.userID ?? ConversationHistory.anonymous }
    }

    /// Why a caller was turned away before anything else.
    package enum CallerRefusal: Error, Sendable {
        case connectionRate(LimitRefusal)
        case credential(AuthenticationFailure)

        /// In the protocol's shape: 429 with `Retry-After`, or 401 with `WWW-Authenticate`.
        package var httpRefusal: HTTPRefusal {
            switch self {
            case .connectionRate(let refusal): ChatPolicy.refusal(refusal)
            case .credential(let failure): ChatPolicy.refusal(failure)
            }
        }
    }

    /// Every public entry's first step, in one place so each gets the same: the per-address rate
    /// of new connections for the entries that open something long-lived (a WebSocket, a streamed
    /// generation: `countsAsConnection`), then the credential.
    package func admitCaller(_ head: HTTPRequestHead, peer: SocketAddress?, countsAsConnection: Bool) -> Result<Admitted, CallerRefusal> {
        let address = self.limiter.limits.clientAddress(head, peer: peer)
        if countsAsConnection, let refusal = self.limiter.admitConnection(from: address) {
            return .failure(.connectionRate(refusal))
        }
        return self.identify(head).map { Admitted(identity: $0, address: address) }.mapError { .credential($0) }
    }

    /// 429 with `Retry-After` (whole seconds, at least 1) and the protocol's error object.
    package static func refusal(_ refusal: LimitRefusal) -> HTTPRefusal {
        Self.refusal(code: .rateLimited, message: refusal.message, retryAfterMs: refusal.retryAfterMs)
    }

    /// A refusal (`rate_limited`, `quota_exceeded`: 429; `content_rejected`: 400; `unavailable`:
    /// 503; `ErrorCode.httpStatus`) with the protocol's error object as its body and
    /// `Retry-After` when it is known.
    package static func refusal(code: ErrorCode, message: String, retryAfterMs: Int64?) -> HTTPRefusal {
        var body = ByteBuffer()
        ServerMessageEncoder.error(code: code, message: message, retryAfterMs: retryAfterMs, into: &body)
        return HTTPRefusal(status: HTTPResponseStatus(code), body: String(buffer: body),
                           headers: retryAfterMs.map { ["Retry-After": RetryAfter.headerValue(milliseconds: $0)] } ?? [:])
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
    package static func refusal(_ failure: AuthenticationFailure) -> HTTPRefusal {
        var body = ByteBuffer()
        ServerMessageEncoder.error(code: .unauthorized, message: failure.message, into: &body)
        return HTTPRefusal(status: .unauthorized, body: String(buffer: body), headers: ["WWW-Authenticate": failure.challenge])
    }
}
