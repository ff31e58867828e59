import Foundation
import NIOCore
import SluiceProtocol

/// Where a job is in its life: `PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED`. A job
/// waiting for a retry is `PENDING` again (with `error` saying why the last attempt failed).
public enum JobState: String, Sendable, CaseIterable {
    case pending = "PENDING"
    case running = "RUNNING"
    case succeeded = "SUCCEEDED"
    case failed = "FAILED"
    case cancelled = "CANCELLED"

    public var isTerminal: Bool {
        switch self {
        case .succeeded, .failed, .cancelled: true
        case .pending, .running: false
        }
    }
}

/// Which stream a job waits in. Workers always take from a higher one first.
public enum JobPriority: String, Sendable, CaseIterable, Comparable {
    case high, normal, low

    public static func < (lhs: JobPriority, rhs: JobPriority) -> Bool {
        // high sorts first.
        Self.allCases.firstIndex(of: lhs)! < Self.allCases.firstIndex(of: rhs)!
    }
}

/// What a worker last reported.
public struct JobProgress: Sendable, Equatable {
    public var current: Int
    public var total: Int?
    public var message: String?

    public init(current: Int, total: Int? = nil, message: String? = nil) {
        self.current = current
        self.total = total
        self.message = message
    }
}

/// One job as the queue (a Redis hash) or the archive (the `jobs` table) holds it.
public struct JobRecord: Sendable, Equatable {
    public var id: String
    public var kind: String
    public var user: String
    public var priority: JobPriority
    public var state: JobState
    /// The input as the client sent it (JSON text).
    public var input: String
    /// Attempts started so far (a reclaimed run counts as one).
    public var attempts: Int
    public var maxAttempts: Int
    /// Microseconds since 1970.
    public var createdAt: Int64
    public var startedAt: Int64?
    public var finishedAt: Int64?
    public var progress: JobProgress?
    /// The result (JSON or Markdown text, per kind); only for `SUCCEEDED`.
    public var result: String?
    public var resultType: String?
    /// Why the last attempt failed (kept while a retry waits; final for `FAILED`).
    public var error: String?
    /// The schedule that made it, for scheduled jobs.
    public var schedule: String?
    /// Model tokens it may spend (reserved in the submitter's quota) and has spent so far.
    public var tokenBudget = 0
    public var tokensUsed = 0

    public init(
        id: String, kind: String, user: String, priority: JobPriority, state: JobState, input: String,
        attempts: Int = 0, maxAttempts: Int, createdAt: Int64
    ) {
        self.id = id
        self.kind = kind
        self.user = user
        self.priority = priority
        self.state = state
        self.input = input
        self.attempts = attempts
        self.maxAttempts = maxAttempts
        self.createdAt = createdAt
    }

    /// From the fields of `HGETALL job:{id}`; nil when a required one is missing.
    public init?(hash: [String: ByteBuffer]) {
        func text(_ name: String) -> String? { hash[name].map { String(buffer: $0) } }
        func int(_ name: String) -> Int64? { text(name).flatMap { Int64($0) } }
        guard let id = text("id"), let kind = text("kind"), let user = text("user"),
              let priority = text("priority").flatMap(JobPriority.init(rawValue:)),
              let state = text("state").flatMap(JobState.init(rawValue:)),
              let created = int("created_us")
        else { return nil }
        self.init(
            id: id, kind: kind, user: user, priority: priority, state: state, input: text("input") ?? "null",
            attempts: Int(int("attempts") ?? 0), maxAttempts: Int(int("max_attempts") ?? 1), createdAt: created)
        self.startedAt = int("started_us")
        self.finishedAt = int("finished_us")
        if let current = int("current") {
            self.progress = JobProgress(current: Int(current), total: int("total").map(Int.init), message: text("message").flatMap { $0.isEmpty ? nil : $0 })
        }
        self.result = text("result")
        self.resultType = text("result_type")
        self.error = text("error").flatMap { $0.isEmpty ? nil : $0 }
        self.schedule = text("schedule").flatMap { $0.isEmpty ? nil : $0 }
        self.tokenBudget = int("token_budget").map { Int(clamping: max(0, $0)) } ?? 0
        self.tokensUsed = int("tokens_used").map { Int(clamping: max(0, $0)) } ?? 0
    }

    /// The public shape (`GET /v1/jobs/{id}`, `job.status`, `sluice jobs show`), as
    /// SluiceProtocol writes it. The result is included up to `inlineResultLimit` bytes;
    /// `result_url` always names where to download it.
    public func snapshot(inlineResultLimit: Int = 16 * 1024) -> JobMessageEncoder.Job {
        let succeeded = self.state == .succeeded
        return JobMessageEncoder.Job(
            jobID: self.id, kind: self.kind, user: self.user, priority: self.priority.rawValue, state: self.state.rawValue,
            input: self.input, attempts: self.attempts, maxAttempts: self.maxAttempts, createdAt: self.createdAt,
            startedAt: self.startedAt, finishedAt: self.finishedAt,
            progress: self.progress.map { .init(current: $0.current, total: $0.total, message: $0.message) },
            error: self.error, schedule: self.schedule, tokenBudget: self.tokenBudget, tokensUsed: self.tokensUsed,
            resultURL: succeeded ? "/v1/jobs/\(self.id)/result" : nil,
            result: succeeded ? self.result.flatMap { $0.utf8.count <= inlineResultLimit ? $0 : nil } : nil)
    }

    public func json(inlineResultLimit: Int = 16 * 1024) -> String {
        var buffer = ByteBuffer()
        JobMessageEncoder.job(self.snapshot(inlineResultLimit: inlineResultLimit), into: &buffer)
        return String(buffer: buffer)
    }

    public static func iso8601(_ microseconds: Int64) -> String {
        let date = Date(timeIntervalSince1970: TimeInterval(microseconds) / 1_000_000)
        return Date.ISO8601FormatStyle(includingFractionalSeconds: true).format(date)
    }
}

/// Microseconds since 1970, now.
func nowMicroseconds() -> Int64 {
    Int64(Date().timeIntervalSince1970 * 1_000_000)
}
