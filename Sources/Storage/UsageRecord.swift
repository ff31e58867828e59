import Foundation

/// Tokens spent by a generation whose usage no stored message carries (the OpenAI-compatible
/// front door is stateless: it stores no conversation). `recordUsage` adds them to the user's
/// `user_quotas.tokens_used` once per `id`.
public struct UsageRecord: Sendable, Hashable {
    /// What makes the write idempotent (the generation's id, `chatcmpl-…`): keep it when retrying.
    public var id: String
    /// The user's id as the gateway knows it; the `users` row is created on first use.
    public var userExternalID: String
    /// Prompt and completion tokens. Negative counts as 0.
    public var tokens: Int
    /// Stored with microsecond precision; the record is deleted `retention` after it.
    public var createdAt: Date

    /// How long a stored record is kept (48 h): only to make a retried write count once, so far
    /// longer than any writer retries (`UsageRecorder` gives up after 15 minutes). The usage it
    /// added stays in `tokens_used` when it goes.
    public static let retention: TimeInterval = 48 * 3600

    public init(id: String, userExternalID: String, tokens: Int, createdAt: Date = Date()) {
        self.id = id
        self.userExternalID = userExternalID
        self.tokens = tokens
        self.createdAt = createdAt
    }
}

/// A batch of `UsageRecord`s prepared for either database: the same id once (the first), tokens
/// at least 0, text made storable, and the per-user sums that cannot overflow.
struct UsagePlan: Sendable {
    struct Row: Sendable, Encodable {
        var id: String
        var userExternalID: String
        var tokens: Int64
        var createdMicroseconds: Int64

        enum CodingKeys: String, CodingKey {
            case id
            case userExternalID = "user_external_id"
            case tokens
            case createdMicroseconds = "created_us"
        }
    }

    var rows: [Row] = []

    init(_ records: [UsageRecord]) {
        var seen = Set<String>()
        for record in records {
            let id = AppendPlan.storable(record.id)
            guard seen.insert(id).inserted else { continue }
            self.rows.append(Row(
                id: id, userExternalID: AppendPlan.storable(record.userExternalID),
                tokens: Int64(clamping: max(0, record.tokens)), createdMicroseconds: record.createdAt.microsecondsSince1970))
        }
    }

    func json() throws(StorageError) -> String {
        do {
            return String(decoding: try JSONEncoder().encode(self.rows), as: UTF8.self)
        } catch {
            throw StorageError.unexpectedRow("could not encode the usage records: \(error)")
        }
    }

    /// `a + b` for non-negative token counts, at most `Int64.max`.
    static func adding(_ a: Int64, _ b: Int64) -> Int64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }
}
