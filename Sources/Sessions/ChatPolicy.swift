import Foundation
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

    public init(authenticator: Authenticator? = nil, closeOnExpiry: Bool = true, limiter: GenerationLimiter? = nil) {
        self.authenticator = authenticator
        self.closeOnExpiry = closeOnExpiry
        self.limiter = limiter ?? GenerationLimiter(
            limits: GatewayLimits(), limiter: RateLimiter(redis: nil, logger: Logger(label: "sluice.limits")))
    }

    /// What `admit` hands a new connection.
    struct Admitted: Sendable {
        var identity: Identity?
        /// The client's address (for per-address limits).
        var address: String
    }

    /// 429 with `Retry-After` (whole seconds, at least 1) and the protocol's error object.
    static func refusal(_ refusal: LimitRefusal) -> HTTPRefusal {
        Self.tooManyRequests(code: .rateLimited, message: refusal.message, retryAfterMs: refusal.retryAfterMs)
    }

    /// 429 for `rate_limited` and `quota_exceeded`, with `Retry-After` when it is known.
    static func tooManyRequests(code: ErrorCode, message: String, retryAfterMs: Int64?) -> HTTPRefusal {
        var body = ByteBuffer()
        ServerMessageEncoder.error(code: code, message: message, retryAfterMs: retryAfterMs, into: &body)
        return HTTPRefusal(status: .tooManyRequests, body: String(buffer: body),
                           headers: retryAfterMs.map { ["Retry-After": String(max(1, ($0 + 999) / 1000))] } ?? [:])
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
