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
/// Usage is added when a generation ends (by the write-behind queue, with the answer).
final class QuotaGuard: Sendable {
    private let persistence: Persistence
    private let logger: Logger
    /// Tokens reserved by generations running on this instance, per user.
    private let reserved = NIOLockedValueBox<[String: Int]>([:])
    /// Users found without a limit, and until when that answer is trusted: most users have no
    /// quota, and this spares them a read per message. A limit set meanwhile applies within
    /// `unlimitedTTL`.
    private let unlimited = NIOLockedValueBox<[String: NIODeadline]>([:])
    static let unlimitedTTL: TimeAmount = .seconds(30)

    private let period: TimeInterval

    init(persistence: Persistence, period: TimeAmount, logger: Logger) {
        self.persistence = persistence
        self.period = TimeInterval(period.nanoseconds) / 1_000_000_000
        self.logger = logger
    }

    struct Refusal: Error {
        var message: String
        var retryAfterMs: Int64?
    }

    /// The grant, limited to what the quota leaves, and the tokens reserved for it (settle them).
    func admit(user: String, promptTokens: Int, grant: GenerationGrant) async -> Result<(GenerationGrant, reserved: Int), Refusal> {
        guard let storage = self.persistence.storage else { return .success((grant, 0)) }
        let checkedAt = NIODeadline.now()
        if let until = self.unlimited.withLockedValue({ $0[user] }), until > checkedAt { return .success((grant, 0)) }
        var record: QuotaRecord?
        do {
            record = try await storage.quota(userExternalID: user)
            guard record?.tokensLimit != nil else {
                self.unlimited.withLockedValue { unlimited in
                    if unlimited.count >= 100_000 { unlimited.removeAll() }
                    unlimited[user] = checkedAt + Self.unlimitedTTL
                }
                return .success((grant, 0))
            }
            if let queue = self.persistence.queue, await queue.waitForEarlierWrites(timeout: .seconds(2)) {
                record = try await storage.quota(userExternalID: user)
            }
            // A reset that is due is applied now, before this generation's usage is added (the
            // periodic reset would otherwise zero that too).
            if let resetAt = record?.resetAt, resetAt <= Date() {
                try await storage.resetDueQuotas(now: Date(), period: self.period)
                record = try await storage.quota(userExternalID: user)
            }
        } catch {
            // The database is down: chats go on (history is queued too); quotas catch up after.
            self.logger.warning("quota not checked (storage unavailable)", metadata: ["sluice.user": "\(user)", "sluice.error": "\(error)"])
            return .success((grant, 0))
        }
        guard let record, let limit = record.tokensLimit else { return .success((grant, 0)) }
        let now = Date()
        // Stored values and reservations are outside input here: the arithmetic saturates.
        let used = record.tokensUsed
        let reservedNow = self.reserved.withLockedValue { $0[user] ?? 0 }
        let remaining = limit.subtractingSaturating(used).subtractingSaturating(reservedNow)
        let retryAfterMs = record.resetAt.map { Int64(saturating: max(0, $0.timeIntervalSince(now)) * 1000) }
        guard remaining > promptTokens else {
            let until = record.resetAt.map { " until \(Self.rfc3339($0))" } ?? ""
            return .failure(Refusal(message: "token quota of \(limit) used up\(until)", retryAfterMs: retryAfterMs))
        }
        var limited = grant
        limited.limit(to: remaining.subtractingSaturating(promptTokens), cut: .quota(resetAt: record.resetAt), retryAfterMs: retryAfterMs ?? 0)
        let reservation = max(0, promptTokens).addingSaturating(max(0, limited.maxTokens))
        self.reserved.withLockedValue { $0[user, default: 0] = ($0[user] ?? 0).addingSaturating(reservation) }
        return .success((limited, reservation))
    }

    /// The generation ended: its reservation is released (its usage is stored with its answer).
    func release(user: String, reserved: Int) {
        guard reserved > 0 else { return }
        self.reserved.withLockedValue { reservations in
            let left = (reservations[user] ?? 0).subtractingSaturating(reserved)
            reservations[user] = left > 0 ? left : nil
        }
    }

    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}
