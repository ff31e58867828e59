import Foundation
import RedisClient

/// One kind of job (`report`, `demo`, ...): what a worker runs for it.
public protocol JobHandler: Sendable {
    var kind: String { get }
    /// Checks a submission's input (a JSONSerialization value) before it is queued, so a bad
    /// one is refused at once rather than failing on a worker. nil: fine; else why not.
    func validate(input: Any) -> String?
    /// Runs one attempt. Throw `JobFailure` to say whether another attempt may help (any other
    /// error counts as retryable); `CancellationError` when cancelled.
    func run(_ context: JobContext) async throws -> JobOutput
    /// The most model tokens (prompts and answers of every call) one run of a valid `input` can
    /// spend: what is taken from the submitter's rate limits and reserved in their quota at
    /// submission. 0 for kinds that call no model.
    func tokenBudget(input: Any) -> Int
}

extension JobHandler {
    public func tokenBudget(input: Any) -> Int { 0 }
}

/// A finished job's result.
public struct JobOutput: Sendable {
    public var body: String
    /// `application/json`, `text/markdown; charset=utf-8`, ...
    public var contentType: String

    public init(body: String, contentType: String = "application/json") {
        self.body = body
        self.contentType = contentType
    }
}

/// A failed attempt, and whether another may succeed.
public struct JobFailure: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var retryable: Bool
    public var description: String { self.message }

    public init(_ message: String, retryable: Bool = true) {
        self.message = message
        self.retryable = retryable
    }
}

/// The kinds a worker (and a gateway, for validation) knows.
public struct JobHandlers: Sendable {
    private var byKind: [String: any JobHandler] = [:]

    public init(_ handlers: [any JobHandler] = []) {
        for handler in handlers { self.byKind[handler.kind] = handler }
    }

    public subscript(kind kind: String) -> (any JobHandler)? { self.byKind[kind] }
    public var kinds: [String] { self.byKind.keys.sorted() }
}

/// What a running job can do: read its input, report progress, record steps.
public final class JobContext: Sendable {
    public let id: String
    public let kind: String
    public let user: String
    /// 1 for the first attempt.
    public let attempt: Int
    /// The input as JSON text.
    public let input: String
    private let queue: JobQueue
    private let record: JobRecord

    init(record: JobRecord, queue: JobQueue) {
        self.id = record.id
        self.kind = record.kind
        self.user = record.user
        self.attempt = record.attempts
        self.input = record.input
        self.record = record
        self.queue = queue
    }

    /// The input parsed (a JSON object), `[:]` when it is not one.
    public var inputObject: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(self.input.utf8))) as? [String: Any] ?? [:]
    }

    /// Records progress and pushes `job.progress` to the submitter's connections. Failures to
    /// reach Redis are ignored (progress is advisory; the result is not).
    public func progress(current: Int, total: Int?, message: String?) async {
        var fields: [any RedisArgumentConvertible] = [self.queue.jobKey(self.id), "current", current, "message", message ?? ""]
        if let total { fields += ["total", total] }
        _ = try? await self.queue.redis.send(RedisCommand("HSET", arguments: fields)).get()
        var record = self.record
        record.state = .running
        record.progress = JobProgress(current: current, total: total, message: message)
        self.queue.publish(user: self.user, JobEvent.progress(record))
    }

    /// Counts model tokens this attempt spent (added to the submitter's quota when the job is
    /// archived). Call it inside a `step` body, so a step replayed from its record is not
    /// counted again; a body that ran twice (its worker died before the record) spent twice.
    public func recordUsage(tokens: Int) async throws {
        guard tokens > 0 else { return }
        _ = try await self.queue.redis.send(RedisCommand("HINCRBY", self.queue.jobKey(self.id), "tokens_used", tokens)).get()
    }

    /// Runs `body` once per job: its result is recorded under `name`, and a later attempt (a
    /// retry, or another worker after this one died) gets the recorded result without running
    /// it again. `body` receives an idempotency key (`{job}:{step}`) to hand to any outside
    /// system it changes, which covers the window between its effect and the record.
    public func step(_ name: String, _ body: (_ idempotencyKey: String) async throws -> String) async throws -> String {
        let stepsKey = self.queue.stepsKey(self.id)
        if let recorded = try await self.queue.redis.send(RedisCommand("HGET", stepsKey, name)).get().string {
            return recorded
        }
        // Counted before running, so a test (or an operator) can see what ran how often.
        _ = try await self.queue.redis.send(RedisCommand("HINCRBY", self.queue.runsKey(self.id), name, 1)).get()
        try Task.checkCancellation()
        let result = try await body("\(self.id):\(name)")
        // HSETNX: if two workers raced on this step, the first record stands and both use it.
        let stored = try await self.queue.redis.send(RedisCommand("HSETNX", stepsKey, name, result)).get()
        if stored.int == 0, let first = try await self.queue.redis.send(RedisCommand("HGET", stepsKey, name)).get().string {
            return first
        }
        return result
    }

    /// How many times each step's body ran (`job:{id}:runs`).
    public func stepRuns() async throws -> [String: Int] {
        let hash = JobQueue.hash(try await self.queue.redis.send(RedisCommand("HGETALL", self.queue.runsKey(self.id))).get())
        return hash.compactMapValues { Int(String(buffer: $0)) }
    }
}
