import Foundation
import Logging
import NIOCore
@testable import Policy
import RedisClient
import Testing

/// Limit arithmetic on outside values (a client's `max_tokens`, usage an upstream reported,
/// Redis replies) saturates: extreme inputs give a refusal or a bounded answer, never a trap.
@Suite struct LimitArithmeticTests {
    static let logger = Logger(label: "test")

    static func limiter(_ configure: (inout GatewayLimits) -> Void) -> GenerationLimiter {
        var limits = GatewayLimits()
        configure(&limits)
        return GenerationLimiter(limits: limits, limiter: RateLimiter(redis: nil, logger: Self.logger))
    }

    /// The issue's headline: 10,000 tokens a minute and a `max_tokens` near 2^63 used to trap
    /// (the retry-after Double → Int64, and `promptTokens + maxTokens`).
    @Test(arguments: [Int.max, 9_223_372_036_854_774_784, 1 << 62])
    func aHugeMaxTokensGetsAGrantCutToTheBudget(maxTokens: Int) async throws {
        let limiter = Self.limiter { $0.tokensPerMinutePerUser = 10_000 }
        let grant = try await limiter.admit(user: "u", address: "a", promptTokens: 5, maxTokens: maxTokens).get()
        #expect(grant.maxTokens == 9_995 && grant.cutByBudget)
        #expect((1...Saturating.maximumRetryAfterMs).contains(grant.budgetRetryAfterMs))
        // The next one has nothing left: refused with a bounded wait.
        guard case .failure(let refusal) = await limiter.admit(user: "u", address: "a", promptTokens: .max, maxTokens: .max) else {
            Issue.record("admitted without a budget")
            return
        }
        #expect((1...Saturating.maximumRetryAfterMs).contains(refusal.retryAfterMs))
    }

    @Test func settlingExtremeUsageNeitherTrapsNorCorruptsTheBucket() async throws {
        let limiter = Self.limiter { $0.tokensPerMinutePerUser = 1_000 }
        let grant = try await limiter.admit(user: "u", address: "a", promptTokens: 10, maxTokens: 100).get()
        limiter.settle(grant, usedTokens: .min)  // counts as nothing used: all 110 come back
        let next = try await limiter.admit(user: "u", address: "a", promptTokens: 10, maxTokens: 990).get()
        #expect(next.maxTokens == 990 && !next.cutByBudget)
        limiter.settle(next, usedTokens: .max)  // an overdraft, taken in the background
        // What that overdraft does: take as much as there is, however much is asked.
        let buckets = RateLimiter(redis: nil, logger: Self.logger)
        #expect(buckets.takeLocally("k", limit: RateLimit(perMinute: 60), wanted: .max, minimum: 0) == .allowed(granted: 60))
        #expect(buckets.takeLocally("k", limit: RateLimit(perMinute: 60), wanted: .max, minimum: .max).isAllowed == false)
    }

    @Test func connectionRatesNearIntMaxDoNotOverflow() {
        let limiter = Self.limiter { $0.connectionsPerSecondPerIP = .max }
        #expect(limiter.admitConnection(from: "198.51.100.1") == nil)
    }

    @Test func bucketsAnswerBoundedWaitsForImpossibleRequests() {
        let now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var bucket = TokenBucket(capacity: 10, ratePerSecond: 1e-9, now: now)
        #expect(bucket.take(wanted: 1e30, minimum: 1e30, now: now) == .limited(retryAfterMs: Saturating.maximumRetryAfterMs))
        var stopped = TokenBucket(capacity: 10, ratePerSecond: 0, now: now)
        #expect(stopped.take(wanted: 1e30, minimum: 11, now: now) == .limited(retryAfterMs: 3_600_000))
        #expect(stopped.take(wanted: 1e30, minimum: 1, now: now) == .allowed(granted: 10))
        #expect(Saturating.retryAfterMs(seconds: .nan) == Saturating.maximumRetryAfterMs)
        #expect(Saturating.retryAfterMs(seconds: .infinity) == Saturating.maximumRetryAfterMs)
        #expect(Saturating.retryAfterMs(seconds: -5) == 0 && Saturating.retryAfterMs(seconds: 0.0011) == 2)
        #expect(Saturating.int(roundingDown: 1e300) == .max && Saturating.int(roundingDown: -.infinity) == .min)
    }

    /// What the Redis script answers is checked like any outside value: an answer no script
    /// could give (a bucket index out of range, a grant above the request) is not a decision,
    /// and the limiter decides in process instead.
    @Test func redisRepliesOutOfRangeAreNotDecisions() {
        let takes = [
            RateLimiter.Take(key: "r", limit: RateLimit(perMinute: 60), wanted: 1, minimum: 1, shared: false),
            RateLimiter.Take(key: "t", limit: RateLimit(perMinute: 600), wanted: 50, minimum: 11, shared: true),
        ]
        func reply(_ values: [Int]) -> RESPValue { .array(values.map { .integer($0) }) }
        #expect(RateLimiter.decision(reply([1, 50, 0]), for: takes) == .allowed(granted: 50))
        #expect(RateLimiter.decision(reply([0, 2, 1500]), for: takes) == .limited(index: 1, retryAfterMs: 1500))
        #expect(RateLimiter.decision(reply([0, 1, .max]), for: takes) == .limited(index: 0, retryAfterMs: Saturating.maximumRetryAfterMs))
        for bad in [[1, 51, 0], [1, -1, 0], [1, .max, 0], [0, 0, 10], [0, 3, 10], [0, .min, 10], [0, 1, 0], [0, 1, -5], [2, 1, 1]] {
            #expect(RateLimiter.decision(reply(bad), for: takes) == nil, "\(bad)")
        }
        #expect(RateLimiter.decision(.array([.integer(1), .bulkString(ByteBuffer(string: "1e30")), .integer(0)]), for: takes) == nil)
        #expect(RateLimiter.decision(reply([0, 1, 5]), for: []) == nil)
    }
}
