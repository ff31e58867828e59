import Foundation
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// The configured limits; 0 turns one off.
public struct GatewayLimits: Sendable, Equatable {
    public var requestsPerMinutePerUser: Int = 0
    public var tokensPerMinutePerUser: Int = 0
    public var requestsPerMinutePerIP: Int = 0
    public var tokensPerMinutePerIP: Int = 0
    /// New WebSocket connections (and HTTP chat requests) per second from one address.
    public var connectionsPerSecondPerIP: Int = 0
    /// Messages per second one connection may send (bursts of twice that).
    public var messagesPerSecondPerConnection: Int = 100
    /// 0: the peer address is the client. n: the n-th address from the right of
    /// `X-Forwarded-For` is (n proxies of ours in front, each appending the address it saw).
    public var forwardedForHops: Int = 0

    public init() {}

    public var limitsGenerations: Bool {
        self.requestsPerMinutePerUser > 0 || self.tokensPerMinutePerUser > 0 || self.requestsPerMinutePerIP > 0 || self.tokensPerMinutePerIP > 0
    }

    /// The client's address: the peer, or the configured hop of `X-Forwarded-For`.
    public func clientAddress(_ head: HTTPRequestHead, peer: SocketAddress?) -> String {
        let peerAddress = peer?.ipAddress ?? "unknown"
        guard self.forwardedForHops > 0 else { return peerAddress }
        let hops = head.headers[canonicalForm: "x-forwarded-for"].map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let index = hops.count - self.forwardedForHops
        return index >= 0 ? String(hops[index]) : peerAddress
    }
}

/// Why a request was refused by a limit.
public struct LimitRefusal: Error, Equatable, Sendable {
    public enum Scope: String, Sendable { case user, ip, connection }
    public enum Limit: String, Sendable { case requests, tokens, connections, messages }

    public var scope: Scope
    public var limit: Limit
    public var retryAfterMs: Int64
    public var message: String

    public init(scope: Scope, limit: Limit, retryAfterMs: Int64, message: String) {
        self.scope = scope
        self.limit = limit
        self.retryAfterMs = retryAfterMs
        self.message = message
    }
}

/// What a generation may use, reserved up front from the token buckets, and settled (unused
/// tokens given back) when it ends.
public struct GenerationGrant: Sendable {
    /// `max_tokens` to send upstream and to stop at: the request's, or less when a tokens-per-minute
    /// budget has less left.
    public var maxTokens: Int
    /// Which budget (not the client's `max_tokens`) set `maxTokens`, if one did.
    public var cut: Cut?
    /// When that budget has room again (for the error that follows a cut).
    public var budgetRetryAfterMs: Int64
    fileprivate var reservations: [(key: String, limit: RateLimit, tokens: Int)]

    public enum Cut: Sendable, Equatable {
        case tokensPerMinute
        /// The user's token quota; it resets at this time (nil: never).
        case quota(resetAt: Date?)
    }

    public var cutByBudget: Bool { self.cut != nil }

    public static func unlimited(maxTokens: Int) -> GenerationGrant {
        GenerationGrant(maxTokens: maxTokens, cut: nil, budgetRetryAfterMs: 0, reservations: [])
    }

    /// At most `tokens` more completion tokens, because of `cut`.
    public mutating func limit(to tokens: Int, cut: Cut, retryAfterMs: Int64) {
        guard tokens < self.maxTokens else { return }
        self.maxTokens = tokens
        self.cut = cut
        self.budgetRetryAfterMs = retryAfterMs
    }
}

/// Applies `GatewayLimits` with a `RateLimiter`: per user and per address, requests and tokens.
public final class GenerationLimiter: Sendable {
    public let limits: GatewayLimits
    private let limiter: RateLimiter
    private let rejections = NIOLockedValueBox<[String: Counter]>([:])

    public init(limits: GatewayLimits, limiter: RateLimiter) {
        self.limits = limits
        self.limiter = limiter
    }

    /// `sluice_rate_limited_total{scope,limit}`.
    public func countRejection(_ refusal: LimitRefusal) {
        let label = refusal.scope.rawValue + "/" + refusal.limit.rawValue
        self.rejections.withLockedValue { counters in
            if let counter = counters[label] { return counter }
            let counter = Counter(label: "sluice_rate_limited_total", dimensions: [("scope", refusal.scope.rawValue), ("limit", refusal.limit.rawValue)])
            counters[label] = counter
            return counter
        }.increment()
    }

    /// One request per limit, and the tokens: `promptTokens` plus up to `maxTokens`, at least
    /// `promptTokens + 1`, from every configured bucket at once (one Redis round trip; nothing
    /// is taken when one of them refuses).
    public func admit(user: String, address: String, promptTokens: Int, maxTokens: Int) async -> Result<GenerationGrant, LimitRefusal> {
        // Outside values (a client's max_tokens, a prompt's size): never negative, sums saturate.
        let promptTokens = max(0, promptTokens), maxTokens = max(0, maxTokens)
        let wanted = promptTokens.addingSaturating(maxTokens)
        var takes: [RateLimiter.Take] = []
        var describe: [(scope: LimitRefusal.Scope, limit: LimitRefusal.Limit, perMinute: Int)] = []
        let buckets: [(LimitRefusal.Scope, LimitRefusal.Limit, String, Int)] = [
            (.user, .requests, "u:\(user):req", self.limits.requestsPerMinutePerUser),
            (.ip, .requests, "ip:\(address):req", self.limits.requestsPerMinutePerIP),
            (.user, .tokens, "u:\(user):tok", self.limits.tokensPerMinutePerUser),
            (.ip, .tokens, "ip:\(address):tok", self.limits.tokensPerMinutePerIP),
        ]
        for (scope, kind, key, perMinute) in buckets where perMinute > 0 {
            let tokens = kind == .tokens
            takes.append(RateLimiter.Take(
                key: key, limit: RateLimit(perMinute: perMinute), wanted: tokens ? wanted : 1,
                minimum: tokens ? promptTokens.addingSaturating(1) : 1, shared: tokens))
            describe.append((scope, kind, perMinute))
        }
        var grant = GenerationGrant.unlimited(maxTokens: maxTokens)
        guard !takes.isEmpty else { return .success(grant) }
        switch await self.limiter.takeAll(takes) {
        case .limited(let index, let retryAfterMs):
            let (scope, kind, perMinute) = describe[index]
            let refusal = LimitRefusal(
                scope: scope, limit: kind, retryAfterMs: retryAfterMs,
                message: "over \(perMinute) \(kind == .tokens ? "tokens" : "requests") per minute for this \(scope == .user ? "user" : "address")")
            self.countRejection(refusal)
            return .failure(refusal)
        case .allowed(let granted):
            let tokenTakes = takes.filter(\.shared)
            if let tightest = tokenTakes.min(by: { $0.limit.ratePerSecond < $1.limit.ratePerSecond }) {
                // Roughly when the whole request would have fitted.
                grant.limit(to: max(0, granted.subtractingSaturating(promptTokens)), cut: .tokensPerMinute,
                            retryAfterMs: Saturating.retryAfterMs(seconds: Double(wanted.subtractingSaturating(granted)) / tightest.limit.ratePerSecond))
            }
            grant.reservations = tokenTakes.map { ($0.key, $0.limit, granted) }
            return .success(grant)
        }
    }

    /// The generation ended having used `usedTokens` (prompt + completion): what it reserved
    /// and did not use goes back; what it used beyond (a low prompt estimate) is taken.
    public func settle(_ grant: GenerationGrant, usedTokens: Int) {
        let usedTokens = max(0, usedTokens)
        for reservation in grant.reservations {
            let unused = reservation.tokens.subtractingSaturating(usedTokens)
            if unused > 0 {
                self.limiter.refund(reservation.key, limit: reservation.limit, amount: unused)
            } else if unused < 0 {
                let limiter = self.limiter
                let overdraft = 0.subtractingSaturating(unused)
                Task { _ = await limiter.take(reservation.key, limit: reservation.limit, wanted: overdraft, minimum: 0) }
            }
        }
    }

    /// A new connection (or HTTP chat request) from `address`, in process.
    public func admitConnection(from address: String) -> LimitRefusal? {
        let perSecond = self.limits.connectionsPerSecondPerIP
        guard perSecond > 0 else { return nil }
        let limit = RateLimit(perMinute: perSecond.multipliedSaturating(by: 60), burst: perSecond)
        guard case .limited(let retryAfterMs) = self.limiter.takeLocally("conn:\(address)", limit: limit, wanted: 1, minimum: 1) else {
            return nil
        }
        let refusal = LimitRefusal(scope: .ip, limit: .connections, retryAfterMs: retryAfterMs,
                                   message: "over \(perSecond) new connections per second from this address")
        self.countRejection(refusal)
        return refusal
    }
}
