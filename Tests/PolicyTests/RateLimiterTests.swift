import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
@testable import Policy
import RedisClient
@testable import SluiceTestSupport
import Testing

@Suite struct TokenBucketTests {
    @Test func takesRefillsAndSaysWhenToRetry() {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var bucket = TokenBucket(capacity: 3, ratePerSecond: 1, now: start)
        for _ in 0..<3 { #expect(bucket.take(1, now: start).isAllowed) }
        #expect(bucket.take(1, now: start) == .limited(retryAfterMs: 1000))
        // Half a second later, half a token: still 500 ms to wait.
        #expect(bucket.take(1, now: start + .milliseconds(500)) == .limited(retryAfterMs: 500))
        #expect(bucket.take(1, now: start + .seconds(1)).isAllowed)
        // Never above capacity, however long it waits.
        #expect(bucket.take(wanted: 10, minimum: 1, now: start + .seconds(100)) == .allowed(granted: 3))
    }

    @Test func reservationsTakeWhatIsThereAndGiveBackTheRest() {
        let now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var bucket = TokenBucket(capacity: 100, ratePerSecond: 0, now: now)
        #expect(bucket.take(wanted: 70, minimum: 10, now: now) == .allowed(granted: 70))
        #expect(bucket.take(wanted: 70, minimum: 10, now: now) == .allowed(granted: 30))
        #expect(!bucket.take(wanted: 70, minimum: 10, now: now).isAllowed)
        bucket.give(25, now: now)
        #expect(bucket.take(wanted: 70, minimum: 10, now: now) == .allowed(granted: 25))
        bucket.give(1000, now: now)
        #expect(bucket.tokens == 100)
    }
}

@Suite struct RateLimiterTests {
    static let logger = Logger(label: "test")

    @Test func inProcessBucketsStayBoundedInNumber() {
        let limiter = RateLimiter(redis: nil, logger: Self.logger)
        for index in 0..<(RateLimiter.maximumLocalKeys + 5_000) {
            _ = limiter.takeLocally("k\(index)", limit: RateLimit(perMinute: 60), wanted: 1, minimum: 1)
        }
        #expect(limiter.localKeyCount <= RateLimiter.maximumLocalKeys)
    }

    @Test(.timeLimit(.minutes(15)))
    func instancesShareOneBucketThroughRedisAndFallBackWhenItIsDown() async throws {
        try await RedisServerProcess.withServer { redis in
            let group = MultiThreadedEventLoopGroup.singleton
            let configuration = RedisConfiguration(url: try RedisURL(redis.url))
            let clients = (0..<2).map { _ in RedisClient(configuration: configuration, eventLoop: group.next(), logger: Self.logger) }
            defer { for client in clients { Task { await client.shutdown() } } }
            try await eventually("both clients connected") { clients.allSatisfy(\.isConnected) }
            // Two gateways, one limit of 5 a minute: 5 in all, whichever gateway is asked.
            let limiters = clients.map { RateLimiter(redis: $0, keyPrefix: "test:", logger: Self.logger) }
            var allowed = 0
            for attempt in 0..<10 {
                if await limiters[attempt % 2].take("u:ann:req", limit: RateLimit(perMinute: 5), wanted: 1, minimum: 1).isAllowed { allowed += 1 }
            }
            #expect(allowed == 5)
            let refused = await limiters[0].take("u:ann:req", limit: RateLimit(perMinute: 5), wanted: 1, minimum: 1)
            guard case .limited(let retryAfterMs) = refused else {
                Issue.record("a sixth request was allowed")
                return
            }
            #expect(retryAfterMs > 0 && retryAfterMs <= 12_000)  // one token every 12 s
            // Reservations and refunds: 100 tokens a minute.
            let tokens = RateLimit(perMinute: 100)
            #expect(await limiters[0].take("u:ann:tok", limit: tokens, wanted: 80, minimum: 10) == .allowed(granted: 80))
            #expect(await limiters[1].take("u:ann:tok", limit: tokens, wanted: 80, minimum: 10) == .allowed(granted: 20))
            limiters[1].refund("u:ann:tok", limit: tokens, amount: 50)
            try await eventually("the refund arrived") {
                await limiters[0].take("u:ann:tok", limit: tokens, wanted: 50, minimum: 50) == .allowed(granted: 50)
            }
            // Redis gone: decisions go on in process (this instance's own bucket), then back.
            try await redis.stop()
            #expect(await limiters[0].take("u:bo:req", limit: RateLimit(perMinute: 1), wanted: 1, minimum: 1).isAllowed)
            #expect(!(await limiters[0].take("u:bo:req", limit: RateLimit(perMinute: 1), wanted: 1, minimum: 1).isAllowed))
            try await redis.restart()
            try await eventually("reconnected", timeout: .seconds(20)) { clients[0].isConnected }
            // A fresh Redis has no script cached: EVALSHA's NOSCRIPT falls back to EVAL.
            #expect(await limiters[0].take("u:cy:req", limit: RateLimit(perMinute: 1), wanted: 1, minimum: 1).isAllowed)
            #expect(!(await limiters[1].take("u:cy:req", limit: RateLimit(perMinute: 1), wanted: 1, minimum: 1).isAllowed))
        }
    }

    /// `takeAll` in Redis and in process: all or nothing, and shared buckets give the same amount.
    @Test(.timeLimit(.minutes(15)))
    func severalBucketsAreOneAtomicDecision() async throws {
        try await RedisServerProcess.withServer { redis in
            let client = RedisClient(configuration: RedisConfiguration(url: try RedisURL(redis.url)), eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Self.logger)
            defer { Task { await client.shutdown() } }
            try await eventually("connected") { client.isConnected }
            for limiter in [RateLimiter(redis: client, keyPrefix: "all:", logger: Self.logger), RateLimiter(redis: nil, logger: Self.logger)] {
                let requests = RateLimit(perMinute: 2)
                let small = RateLimit(perMinute: 30), large = RateLimit(perMinute: 100)
                func takes(_ wanted: Int) -> [RateLimiter.Take] {
                    [RateLimiter.Take(key: "req", limit: requests, wanted: 1, minimum: 1, shared: false),
                     RateLimiter.Take(key: "tok-small", limit: small, wanted: wanted, minimum: 5, shared: true),
                     RateLimiter.Take(key: "tok-large", limit: large, wanted: wanted, minimum: 5, shared: true)]
                }
                // Both token buckets give what the smaller one has.
                #expect(await limiter.takeAll(takes(50)) == .allowed(granted: 30))
                // The small one is empty now: refused, and the request bucket keeps its token.
                guard case .limited(let index, let wait) = await limiter.takeAll(takes(50)) else {
                    Issue.record("an empty bucket allowed a take")
                    continue
                }
                #expect(index == 1 && wait > 0)
                let onlyRequests = [RateLimiter.Take(key: "req", limit: requests, wanted: 1, minimum: 1, shared: false)]
                #expect(await limiter.takeAll(onlyRequests) == .allowed(granted: 0))
                guard case .limited(0, _) = await limiter.takeAll(onlyRequests) else {
                    Issue.record("a third request of two a minute was allowed")
                    continue
                }
                // The large bucket lost only the shared 30, not the refused 50.
                let large70 = [RateLimiter.Take(key: "tok-large", limit: large, wanted: 100, minimum: 1, shared: true)]
                #expect(await limiter.takeAll(large70) == .allowed(granted: 70))
            }
        }
    }

    @Test func generationGrantsCutToTheBudgetAndSettle() async throws {
        var limits = GatewayLimits()
        limits.tokensPerMinutePerUser = 100
        let limiter = GenerationLimiter(limits: limits, limiter: RateLimiter(redis: nil, logger: Self.logger))
        // 20 prompt + 50 wanted: fits.
        let first = try await limiter.admit(user: "u", address: "a", promptTokens: 20, maxTokens: 50).get()
        #expect(first.maxTokens == 50 && !first.cutByBudget)
        // 30 left: 20 prompt + 10 completion at most.
        let second = try await limiter.admit(user: "u", address: "a", promptTokens: 20, maxTokens: 50).get()
        #expect(second.maxTokens == 10 && second.cutByBudget && second.budgetRetryAfterMs > 0)
        // Nothing left for even the prompt.
        guard case .failure(let refusal) = await limiter.admit(user: "u", address: "a", promptTokens: 20, maxTokens: 50) else {
            Issue.record("admitted without a budget")
            return
        }
        #expect(refusal.scope == .user && refusal.limit == .tokens && refusal.retryAfterMs > 0)
        // The first used 20 + 5: 45 come back.
        limiter.settle(first, usedTokens: 25)
        let third = try await limiter.admit(user: "u", address: "a", promptTokens: 20, maxTokens: 50).get()
        #expect(third.maxTokens == 25 && third.cutByBudget)
        // Another user is not affected.
        #expect(try await limiter.admit(user: "v", address: "a", promptTokens: 20, maxTokens: 50).get().maxTokens == 50)
    }

    @Test func clientAddressesComeFromThePeerOrTheConfiguredProxyHop() throws {
        var limits = GatewayLimits()
        let peer = try SocketAddress(ipAddress: "10.0.0.9", port: 4000)
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        head.headers.add(name: "X-Forwarded-For", value: "6.6.6.6, 203.0.113.7")
        #expect(limits.clientAddress(head, peer: peer) == "10.0.0.9")
        // One proxy of ours (it appended 203.0.113.7); what the client wrote before is not trusted.
        limits.forwardedForHops = 1
        #expect(limits.clientAddress(head, peer: peer) == "203.0.113.7")
        limits.forwardedForHops = 3
        #expect(limits.clientAddress(head, peer: peer) == "10.0.0.9")
    }
}
