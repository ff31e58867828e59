import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Policy
import SluiceProtocol
import Storage

/// Token quotas (`user_quotas`): checked before a generation starts and enforced during it.
///
/// A user with a `tokens_limit` may start a generation only while the limit is above what is
/// used (stored), what this instance's running generations have reserved, and the new prompt;
/// the generation may then produce at most what is left, and is stopped there. Stored usage is
/// read after this instance's queued writes went out, so an answer that just ended counts.
/// Usage is added when a generation ends: by the write-behind queue, with the answer; for the
/// OpenAI-compatible front door, which stores no answer, by the `UsageRecorder`, and until that
/// record is stored its tokens stay reserved here (`hold`), so a burst of requests cannot outrun
/// the write.
final class QuotaGuard: Sendable {
    /// nil: no storage, no quotas.
    private let quotas: (any QuotaStore)?
    /// Stored usage is read after this instance's queued answers are written.
    private let queue: WriteBehindQueue?
    private let logger: Logger
    /// Tokens reserved by generations running on this instance, per user.
    private let reserved = NIOLockedValueBox<[String: Int]>([:])
    /// Users found without a limit, and until when that answer is trusted: most users have no
    /// quota, and this spares them a read per message. A limit set meanwhile applies within
    /// `unlimitedTTL`.
    private let unlimited = NIOLockedValueBox<[String: NIODeadline]>([:])
    static let unlimitedTTL: TimeAmount = .seconds(30)

    private let period: TimeInterval
    /// Tokens the user's queued and running jobs may still spend (reserved across every
    /// instance and worker, in Redis); nil without a job queue.
    private let jobReservations: (@Sendable (String) async -> Int)?

    init(
        quotas: (any QuotaStore)?, queue: WriteBehindQueue?, period: TimeAmount, jobReservations: (@Sendable (String) async -> Int)? = nil,
        logger: Logger
    ) {
        self.quotas = quotas
        self.queue = queue
        self.period = TimeInterval(period.nanoseconds) / 1_000_000_000
        self.jobReservations = jobReservations
        self.logger = logger
    }

    convenience init(persistence: Persistence, period: TimeAmount, jobReservations: (@Sendable (String) async -> Int)? = nil, logger: Logger) {
        self.init(quotas: persistence.quotas, queue: persistence.queue, period: period, jobReservations: jobReservations, logger: logger)
    }

    struct Refusal: Error {
        var message: String
        var retryAfterMs: Int64?
    }

    /// What a user may still spend: their limit less what is stored as used, what this
    /// instance's generations reserved and what their jobs reserved. nil: no limit (or the
    /// storage cannot tell now: chats go on, quotas catch up).
    private struct Standing {
        var limit: Int
        var remaining: Int
        var resetAt: Date?
        var retryAfterMs: Int64?
    }

    /// A quota read slower than this counts as the storage being down: the chat goes on
    /// unchecked rather than waiting (the storage's own timeout is 10 s).
    static let readTimeout: Duration = .seconds(1)
    /// After a failed read, quotas are not read for this long: during a database outage every
    /// chat would otherwise wait `readTimeout` first.
    static let outageBackoff: TimeAmount = .seconds(5)
    /// Until when quota reads are skipped (the storage failed lately).
    private let outageUntil = NIOLockedValueBox<NIODeadline?>(nil)

    private func standing(of user: String) async -> Standing? {
        guard let storage = self.quotas else { return nil }
        let checkedAt = NIODeadline.now()
        if let until = self.unlimited.withLockedValue({ $0[user] }), until > checkedAt { return nil }
        if let until = self.outageUntil.withLockedValue({ $0 }), until > checkedAt { return nil }
        func read() async throws -> QuotaRecord? {
            try await PostgresStorage.withDeadline(Self.readTimeout) { try await storage.quota(userExternalID: user) }
        }
        var record: QuotaRecord?
        do {
            record = try await read()
            guard record?.tokensLimit != nil else {
                self.unlimited.withLockedValue { unlimited in
                    if unlimited.count >= 100_000 { unlimited.removeAll() }
                    unlimited[user] = checkedAt + Self.unlimitedTTL
                }
                return nil
            }
            if let queue = self.queue, await queue.waitForEarlierWrites(timeout: .seconds(2)) {
                record = try await read()
            }
            // A reset that is due is applied now, before this generation's usage is added (the
            // periodic reset would otherwise zero that too).
            if let resetAt = record?.resetAt, resetAt <= Date() {
                let period = self.period
                _ = try await PostgresStorage.withDeadline(Self.readTimeout) { try await storage.resetDueQuotas(now: Date(), period: period) }
                record = try await read()
            }
        } catch {
            // The database is down: chats go on (history is queued too); quotas catch up after.
            let first = self.outageUntil.withLockedValue { until in
                defer { until = NIODeadline.now() + Self.outageBackoff }
                return until == nil || until! <= checkedAt
            }
            if first {
                self.logger.warning("quotas not checked for now (storage unavailable)", metadata: [
                    "sluice.user": "\(user)", "sluice.error": "\(error)", "sluice.retry_in_ms": "\(Self.outageBackoff.nanoseconds / 1_000_000)"])
            }
            return nil
        }
        guard let record, let limit = record.tokensLimit else { return nil }
        let reservedHere = self.reserved.withLockedValue { $0[user] ?? 0 }
        let reservedByJobs = await self.jobReservations?(user) ?? 0
        let taken = max(0, record.tokensUsed).addingSaturating(reservedHere).addingSaturating(reservedByJobs)
        let remaining = limit > taken ? limit - taken : 0
        // A reset further than a year away is as good as never for a retry hint.
        let retryAfterMs = record.resetAt.map { Int64(saturating: min(max(0, $0.timeIntervalSince(Date())), 365 * 86_400) * 1000) }
        return Standing(limit: limit, remaining: remaining, resetAt: record.resetAt, retryAfterMs: retryAfterMs)
    }

    private func usedUp(_ standing: Standing) -> Refusal {
        let until = standing.resetAt.map { " until \(Self.rfc3339($0))" } ?? ""
        return Refusal(message: "token quota of \(standing.limit) used up\(until)", retryAfterMs: standing.retryAfterMs)
    }

    /// The grant, limited to what the quota leaves, and the tokens reserved for it (settle them).
    func admit(user: String, promptTokens: Int, grant: GenerationGrant) async -> Result<(GenerationGrant, reserved: Int), Refusal> {
        guard let standing = await self.standing(of: user) else { return .success((grant, 0)) }
        guard standing.remaining > promptTokens else { return .failure(self.usedUp(standing)) }
        var limited = grant
        limited.limit(to: standing.remaining - promptTokens, cut: .quota(resetAt: standing.resetAt), retryAfterMs: standing.retryAfterMs ?? 0)
        let reservation = promptTokens.addingSaturating(limited.maxTokens)
        self.reserved.withLockedValue { $0[user] = ($0[user] ?? 0).addingSaturating(reservation) }
        return .success((limited, reservation))
    }

    /// A job that may spend `tokens`: its whole budget must be left (a job is not cut short
    /// like a generation). Its reservation then lives with the job in the queue.
    func admitJob(user: String, tokens: Int) async -> Result<Void, Refusal> {
        guard tokens > 0, let standing = await self.standing(of: user) else { return .success(()) }
        guard standing.remaining > 0 else { return .failure(self.usedUp(standing)) }
        guard standing.remaining >= tokens else {
            return .failure(Refusal(
                message: "this job may use up to \(tokens) tokens and \(standing.remaining) of the \(standing.limit)-token quota are left; "
                    + "ask for less (fewer sections, a smaller max_tokens) or wait for the reset",
                retryAfterMs: standing.retryAfterMs))
        }
        return .success(())
    }

    /// Keeps `tokens` counted against `user`'s quota on this instance until they are released
    /// (`release(user:reserved:)` with the returned amount): usage on its way to the storage.
    func hold(user: String, tokens: Int) -> Int {
        guard tokens > 0 else { return 0 }
        self.reserved.withLockedValue { $0[user] = ($0[user] ?? 0).addingSaturating(tokens) }
        return tokens
    }

    /// The tokens `user` has reserved on this instance (running generations, usage on its way).
    func reservedTokens(user: String) -> Int {
        self.reserved.withLockedValue { $0[user] ?? 0 }
    }

    /// The generation ended: its reservation is released (its usage is stored with its answer).
    func release(user: String, reserved: Int) {
        guard reserved > 0 else { return }
        self.reserved.withLockedValue { reservations in
            let current = reservations[user] ?? 0
            reservations[user] = current > reserved ? current - reserved : nil
        }
    }

    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}
