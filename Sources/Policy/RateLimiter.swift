import Crypto
import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import RedisClient

/// A per-minute limit: `perMinute` on average, with bursts up to `burst` (default: a minute's worth).
public struct RateLimit: Sendable, Equatable {
    public var perMinute: Int
    public var burst: Int

    public init(perMinute: Int, burst: Int? = nil) {
        self.perMinute = perMinute
        self.burst = burst ?? perMinute
    }

    var capacity: Double { Double(max(1, self.burst)) }
    var ratePerSecond: Double { Double(self.perMinute) / 60 }
}

/// Token buckets shared by every instance through Redis: one Lua script per decision, so the
/// read-refill-take is atomic and the instances' clocks do not matter (Redis's `TIME` is the
/// clock). When Redis is not configured, or a call fails, the bucket is kept in this process
/// instead: the limit then holds per instance (a cluster of N lets up to N times through while
/// Redis is down) and the service goes on. Buckets in memory are bounded in number.
public final class RateLimiter: Sendable {
    private let redis: (any RedisCommandExecutor)?
    private let keyPrefix: String
    private let logger: Logger
    private let local = NIOLockedValueBox(LocalBuckets())
    private let fallbacks = Counter(label: "sluice_rate_limiter_fallbacks_total")
    /// Most keys kept in memory; past it, full buckets are forgotten (and if none are, the oldest).
    static let maximumLocalKeys = 100_000

    struct LocalBuckets {
        var buckets: [String: TokenBucket] = [:]
    }

    public init(redis: (any RedisCommandExecutor)?, keyPrefix: String = "sluice:", logger: Logger) {
        self.redis = redis
        self.keyPrefix = keyPrefix + "rl:"
        self.logger = logger
    }

    /// Takes between `minimum` and `wanted` from the bucket `key` (all or nothing when equal).
    public func take(_ key: String, limit: RateLimit, wanted: Int, minimum: Int) async -> RateLimitDecision {
        Self.single(await self.takeAll([Take(key: key, limit: limit, wanted: wanted, minimum: minimum, shared: true)]))
    }

    private static func single(_ decision: TakeAllDecision) -> RateLimitDecision {
        switch decision {
        case .allowed(let granted): return .allowed(granted: granted)
        case .limited(_, let retryAfterMs): return .limited(retryAfterMs: retryAfterMs)
        }
    }

    /// One bucket of a `takeAll`.
    public struct Take: Sendable {
        public var key: String
        public var limit: RateLimit
        public var wanted: Int
        public var minimum: Int
        /// Shared buckets all take the same amount: the most every one of them can give.
        public var shared: Bool

        public init(key: String, limit: RateLimit, wanted: Int, minimum: Int, shared: Bool) {
            self.key = key
            self.limit = limit
            self.wanted = wanted
            self.minimum = minimum
            self.shared = shared
        }
    }

    public enum TakeAllDecision: Sendable, Equatable {
        /// Every bucket gave: the others `wanted`, the shared ones `granted` each.
        case allowed(granted: Int)
        /// Bucket `index` had not even its `minimum`; nothing was taken from any.
        case limited(index: Int, retryAfterMs: Int64)
    }

    /// Several buckets in one decision, all or nothing: one Redis round trip (one script) for
    /// a request's user and address limits, rather than one per bucket.
    public func takeAll(_ takes: [Take]) async -> TakeAllDecision {
        guard !takes.isEmpty else { return .allowed(granted: 0) }
        if let redis = self.redis {
            do {
                return try await self.takeAllFromRedis(redis, takes)
            } catch {
                self.fallbacks.increment()
                self.logger.debug("rate limit decided in process (Redis failed)", metadata: ["sluice.error": "\(error)"])
            }
        }
        return self.takeAllLocally(takes)
    }

    func takeAllLocally(_ takes: [Take], now: NIODeadline = .now()) -> TakeAllDecision {
        self.local.withLockedValue { local in
            if local.buckets.count + takes.count > Self.maximumLocalKeys { Self.evict(&local, now: now) }
            var buckets = takes.map { local.buckets[$0.key] ?? TokenBucket(capacity: $0.limit.capacity, ratePerSecond: $0.limit.ratePerSecond, now: now) }
            // Look first (a take of 0 refills without taking), then take.
            var shared = Int.max
            for (index, take) in takes.enumerated() {
                _ = buckets[index].take(wanted: 0, minimum: 0, now: now)
                let tokens = buckets[index].tokens
                guard tokens >= Double(take.minimum) else {
                    let missing = Double(take.minimum) - tokens
                    let wait = take.limit.ratePerSecond > 0 ? missing / take.limit.ratePerSecond : 3600
                    return .limited(index: index, retryAfterMs: Saturating.retryAfterMs(seconds: wait))
                }
                if take.shared { shared = min(shared, min(take.wanted, Saturating.int(roundingDown: tokens))) }
            }
            for (index, take) in takes.enumerated() {
                let amount = take.shared ? shared : take.wanted
                _ = buckets[index].take(Double(amount), now: now)
                local.buckets[take.key] = buckets[index]
            }
            return .allowed(granted: shared == Int.max ? 0 : shared)
        }
    }

    private func takeAllFromRedis(_ redis: any RedisCommandExecutor, _ takes: [Take]) async throws -> TakeAllDecision {
        let keys = takes.map { self.keyPrefix + $0.key }
        var arguments: [String] = []
        for take in takes {
            arguments += [String(take.limit.capacity), String(take.limit.ratePerSecond / 1000), String(take.wanted), String(take.minimum), take.shared ? "1" : "0"]
        }
        let reply = try await Self.takeAll.run(on: redis, keys: keys, arguments: arguments)
        guard let decision = Self.decision(reply, for: takes) else {
            throw RateLimiterError(description: "unexpected reply \(reply)")
        }
        return decision
    }

    /// The script's reply, range-checked: a grant no bucket could give, a bucket that is not
    /// one of `takes`, or a wait that is not positive is not a decision (the caller falls back
    /// to the in-process buckets, as for any Redis failure).
    static func decision(_ reply: RESPValue, for takes: [Take]) -> TakeAllDecision? {
        guard !takes.isEmpty, let values = reply.array, values.count == 3, let allowed = values[0].int, let second = values[1].int,
              let third = values[2].int else { return nil }
        switch allowed {
        case 1:
            let most = takes.filter(\.shared).map { max(0, $0.wanted) }.max() ?? 0
            guard (0...most).contains(second) else { return nil }
            return .allowed(granted: second)
        case 0:
            guard (1...takes.count).contains(second), third > 0 else { return nil }
            return .limited(index: second - 1, retryAfterMs: min(Int64(third), Saturating.maximumRetryAfterMs))
        default:
            return nil
        }
    }

    /// KEYS: the buckets; ARGV: five per bucket (capacity, tokens per ms, wanted, minimum, shared).
    /// Returns {1, shared grant, 0} or {0, the 1-based bucket that refused, ms until it would not}.
    static let takeAllScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local n = #KEYS
        local tokens = {}
        local shared = -1
        for i = 1, n do
          local base = (i - 1) * 5
          local capacity = tonumber(ARGV[base + 1])
          local rate = tonumber(ARGV[base + 2])
          local wanted = tonumber(ARGV[base + 3])
          local minimum = tonumber(ARGV[base + 4])
          local state = redis.call('HMGET', KEYS[i], 'tokens', 'at')
          local level = tonumber(state[1]) or capacity
          local at = tonumber(state[2]) or now
          if now > at then level = math.min(capacity, level + (now - at) * rate) end
          if level < minimum then
            local wait = 3600000
            if rate > 0 then wait = math.ceil((minimum - level) / rate) end
            return {0, i, wait}
          end
          tokens[i] = level
          if ARGV[base + 5] == '1' then
            local can = math.min(wanted, math.floor(level))
            if shared < 0 or can < shared then shared = can end
          end
        end
        for i = 1, n do
          local base = (i - 1) * 5
          local capacity = tonumber(ARGV[base + 1])
          local rate = tonumber(ARGV[base + 2])
          local amount = tonumber(ARGV[base + 3])
          if ARGV[base + 5] == '1' then amount = shared end
          redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - amount), 'at', tostring(now))
          local ttl = 60000
          if rate > 0 then ttl = math.ceil(capacity / rate) + 1000 end
          redis.call('PEXPIRE', KEYS[i], ttl)
        end
        if shared < 0 then shared = 0 end
        return {1, shared, 0}
        """

    static let takeAll = RedisScript(takeAllScript)

    /// Gives back what a reservation did not use (fire and forget).
    public func refund(_ key: String, limit: RateLimit, amount: Int) {
        guard amount > 0 else { return }
        if let redis = self.redis {
            let command = RedisCommand("EVAL", arguments: [Self.refundScript, "1", self.keyPrefix + key, String(limit.capacity), String(amount)])
            redis.send(command).whenFailure { _ in self.refundLocally(key, limit: limit, amount: amount) }
            return
        }
        self.refundLocally(key, limit: limit, amount: amount)
    }

    // MARK: In process

    /// The in-process bucket only (connection-level limits, which need no cluster view).
    public func takeLocally(_ key: String, limit: RateLimit, wanted: Int, minimum: Int, now: NIODeadline = .now()) -> RateLimitDecision {
        Self.single(self.takeAllLocally([Take(key: key, limit: limit, wanted: wanted, minimum: minimum, shared: true)], now: now))
    }

    private func refundLocally(_ key: String, limit: RateLimit, amount: Int) {
        self.local.withLockedValue { local in
            local.buckets[key]?.give(Double(amount))
        }
    }

    var localKeyCount: Int { self.local.withLockedValue { $0.buckets.count } }

    private static func evict(_ local: inout LocalBuckets, now: NIODeadline) {
        let before = local.buckets.count
        local.buckets = local.buckets.filter { !$0.value.isFull(now: now) }
        // All busy: drop a tenth, arbitrarily (a forgotten bucket starts full: lenient, bounded).
        if local.buckets.count >= before {
            for key in local.buckets.keys.prefix(max(1, before / 10)) { local.buckets[key] = nil }
        }
    }

    // MARK: Redis

    struct RateLimiterError: Error, CustomStringConvertible {
        var description: String
    }

    /// KEYS[1] the bucket; ARGV capacity, amount. Only an existing bucket gets tokens back.
    static let refundScript = """
        local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
        if tokens == nil then return 0 end
        redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(tonumber(ARGV[1]), tokens + tonumber(ARGV[2]))))
        return 1
        """
}
