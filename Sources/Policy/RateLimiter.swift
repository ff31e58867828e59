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
        if let redis = self.redis {
            do {
                return try await self.takeFromRedis(redis, key, limit: limit, wanted: wanted, minimum: minimum)
            } catch {
                self.fallbacks.increment()
                self.logger.debug("rate limit decided in process (Redis failed)", metadata: ["sluice.error": "\(error)"])
            }
        }
        return self.takeLocally(key, limit: limit, wanted: wanted, minimum: minimum)
    }

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
        self.local.withLockedValue { local in
            if local.buckets.count >= Self.maximumLocalKeys, local.buckets[key] == nil { Self.evict(&local, now: now) }
            var bucket = local.buckets[key] ?? TokenBucket(capacity: limit.capacity, ratePerSecond: limit.ratePerSecond, now: now)
            let decision = bucket.take(wanted: Double(wanted), minimum: Double(minimum), now: now)
            local.buckets[key] = bucket
            return decision
        }
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

    private func takeFromRedis(
        _ redis: any RedisCommandExecutor, _ key: String, limit: RateLimit, wanted: Int, minimum: Int
    ) async throws -> RateLimitDecision {
        let arguments = [
            "1", self.keyPrefix + key, String(limit.capacity), String(limit.ratePerSecond / 1000), String(wanted), String(minimum),
        ]
        var reply: RESPValue
        do {
            reply = try await redis.send(RedisCommand("EVALSHA", arguments: [Self.takeScriptSHA] + arguments)).get()
        } catch RedisClientError.server(let message) where message.hasPrefix("NOSCRIPT") {
            // First use on this Redis (or after SCRIPT FLUSH): send the script itself once.
            reply = try await redis.send(RedisCommand("EVAL", arguments: [Self.takeScript] + arguments)).get()
        }
        guard let values = reply.array, values.count == 2, let granted = values[0].int, let wait = values[1].int else {
            throw RateLimiterError(description: "unexpected reply \(reply)")
        }
        return granted > 0 || (minimum == 0 && wait == 0) ? .allowed(granted: granted) : .limited(retryAfterMs: Int64(max(1, wait)))
    }

    struct RateLimiterError: Error, CustomStringConvertible {
        var description: String
    }

    /// KEYS[1] the bucket; ARGV capacity, tokens per millisecond, wanted, minimum.
    /// Returns {granted, 0} or {0, milliseconds until `minimum` would be there}.
    static let takeScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local capacity = tonumber(ARGV[1])
        local rate = tonumber(ARGV[2])
        local wanted = tonumber(ARGV[3])
        local minimum = tonumber(ARGV[4])
        local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
        local tokens = tonumber(state[1]) or capacity
        local at = tonumber(state[2]) or now
        if now > at then tokens = math.min(capacity, tokens + (now - at) * rate) end
        local granted = 0
        local wait = 0
        if tokens >= minimum then
          granted = math.min(wanted, math.floor(tokens))
          tokens = tokens - granted
        else
          if rate > 0 then wait = math.ceil((minimum - tokens) / rate) else wait = 3600000 end
        end
        redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
        local ttl = 60000
        if rate > 0 then ttl = math.ceil(capacity / rate) + 1000 end
        redis.call('PEXPIRE', KEYS[1], ttl)
        return {granted, wait}
        """

    static let takeScriptSHA: String = Insecure.SHA1.hash(data: Data(takeScript.utf8)).map { String(format: "%02x", $0) }.joined()

    /// KEYS[1] the bucket; ARGV capacity, amount. Only an existing bucket gets tokens back.
    static let refundScript = """
        local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
        if tokens == nil then return 0 end
        redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(tonumber(ARGV[1]), tokens + tonumber(ARGV[2]))))
        return 1
        """
}
