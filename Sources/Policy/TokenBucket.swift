import NIOCore

/// A token bucket: `capacity` tokens at most, refilled at `ratePerSecond`. Pure state, so the
/// same rules serve the in-process limiter, the per-connection message limit and the tests;
/// the Redis limiter runs the same arithmetic in a Lua script.
public struct TokenBucket: Sendable, Equatable {
    public let capacity: Double
    public let ratePerSecond: Double
    public private(set) var tokens: Double
    private var updated: NIODeadline

    public init(capacity: Double, ratePerSecond: Double, now: NIODeadline = .now()) {
        self.capacity = capacity
        self.ratePerSecond = ratePerSecond
        self.tokens = capacity
        self.updated = now
    }

    private mutating func refill(_ now: NIODeadline) {
        guard now > self.updated else { return }
        let seconds = Double((now - self.updated).nanoseconds) / 1_000_000_000
        self.tokens = min(self.capacity, self.tokens + seconds * self.ratePerSecond)
        self.updated = now
    }

    /// Takes between `minimum` and `wanted` tokens (as many as there are, rounded down); if not
    /// even `minimum` is there, takes none and says how long until there would be.
    public mutating func take(wanted: Double, minimum: Double, now: NIODeadline = .now()) -> RateLimitDecision {
        self.refill(now)
        guard self.tokens >= minimum else {
            let missing = minimum - self.tokens
            let wait = self.ratePerSecond > 0 ? missing / self.ratePerSecond : 3600
            return .limited(retryAfterMs: Saturating.retryAfterMs(seconds: wait))
        }
        let granted = max(0, min(wanted, self.tokens.rounded(.down)))
        self.tokens -= granted
        return .allowed(granted: Saturating.int(roundingDown: granted))
    }

    /// All or nothing: `cost` tokens.
    public mutating func take(_ cost: Double, now: NIODeadline = .now()) -> RateLimitDecision {
        self.take(wanted: cost, minimum: cost, now: now)
    }

    /// Returns tokens that were taken but not used (up to the capacity).
    public mutating func give(_ amount: Double, now: NIODeadline = .now()) {
        self.refill(now)
        self.tokens = min(self.capacity, self.tokens + amount)
    }

    /// Full again: nothing to remember about this key.
    public func isFull(now: NIODeadline) -> Bool {
        let seconds = Double((now - self.updated).nanoseconds) / 1_000_000_000
        return self.tokens + seconds * self.ratePerSecond >= self.capacity
    }
}

public enum RateLimitDecision: Sendable, Equatable {
    case allowed(granted: Int)
    case limited(retryAfterMs: Int64)

    public var isAllowed: Bool {
        if case .allowed = self { return true }
        return false
    }
}
