import Foundation
import Logging
import NIOCore
import RedisClient

/// Settings of the job queue, shared by the gateway (submit, cancel, status) and the workers.
public struct JobQueueConfiguration: Sendable, Equatable {
    /// Prefix of every key and channel (the same as the fan-out's, so one Redis serves both).
    public var keyPrefix: String = "sluice:"
    /// A running job whose worker has not been heard from for this long is taken over by
    /// another worker (XAUTOCLAIM); live workers renew their claim every `heartbeatInterval`.
    public var visibilityTimeout: TimeAmount = .seconds(30)
    public var heartbeatInterval: TimeAmount = .milliseconds(500)
    /// Attempts per job (a reclaimed run counts as one), unless the submission says otherwise.
    public var maxAttempts: Int = 3
    /// Backoff before retry n: `retryBackoff * 2^(n-1)`, at most `maxRetryBackoff`, ±20% jitter.
    public var retryBackoff: TimeAmount = .seconds(1)
    public var maxRetryBackoff: TimeAmount = .seconds(60)
    /// How long a finished job stays in Redis (after it is archived in the database).
    public var retention: TimeAmount = .hours(24 * 7)
    /// Submissions with the same `idempotency_key` (per user) within this time give the same job.
    public var idempotencyWindow: TimeAmount = .hours(24)
    /// Largest input accepted (bytes of JSON).
    public var maxInputBytes: Int = 256 * 1024
    /// Results up to this size ride inline in `job.done` and `GET /v1/jobs/{id}`.
    public var inlineResultLimit: Int = 16 * 1024

    public init() {}
}

/// Why the queue could not do something.
public struct JobQueueError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// Redis is unreachable (retry later).
        case unavailable
        case invalidInput
    }

    public var kind: Kind
    public var message: String
    public var description: String { self.message }

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
}

/// What a client asks for.
public struct JobSubmission: Sendable {
    public var kind: String
    /// JSON text.
    public var input: String
    public var priority: JobPriority
    public var maxAttempts: Int?
    /// Same key (per user, within `idempotencyWindow`): the same job, not a second one.
    public var idempotencyKey: String?
    public var schedule: String?
    /// Model tokens one run may spend (its handler's `tokenBudget`): reserved in the submitter's
    /// quota until the job ends (`reservedTokens(user:)`).
    public var tokenBudget: Int

    public init(
        kind: String, input: String, priority: JobPriority = .normal, maxAttempts: Int? = nil, idempotencyKey: String? = nil,
        tokenBudget: Int = 0
    ) {
        self.kind = kind
        self.input = input
        self.priority = priority
        self.maxAttempts = maxAttempts
        self.idempotencyKey = idempotencyKey
        self.tokenBudget = max(0, tokenBudget)
    }
}

/// The outcome of `cancel`.
public enum JobCancelOutcome: Sendable, Equatable {
    /// It had not started: it is `CANCELLED` now and will never run.
    case cancelled(JobRecord)
    /// It is running: its worker stops it within a heartbeat and marks it `CANCELLED`.
    case requested(JobRecord)
    /// It had already ended.
    case alreadyEnded(JobRecord)
    case notFound
}

/// Counts for `/metrics` and `sluice jobs`.
public struct JobQueueStats: Sendable, Equatable {
    /// Per priority: entries waiting for a worker, and entries a worker holds now.
    public var waiting: [JobPriority: Int] = [:]
    public var running: [JobPriority: Int] = [:]
    /// Jobs waiting for a retry's backoff.
    public var delayed = 0
    /// Worker processes heard from within the last `liveWindow`.
    public var workersAlive = 0
    /// Cluster-wide totals since the queue was created.
    public var succeeded = 0, failed = 0, retried = 0, cancelled = 0, reclaimed = 0
}

/// The durable job queue on Redis Streams (one stream per priority, consumer group `workers`).
///
/// Keys (under `keyPrefix`):
/// - `jobs:stream:{priority}`: entries `job=<id>`; an entry is deleted when its job leaves the
///   stream (done, failed, retrying, cancelled), so a stream holds only waiting and running jobs;
/// - `job:{id}`: the job's hash (state, input, progress, result, attempts, ...);
///   `job:{id}:steps` the results of its recorded steps; `job:{id}:runs` how often each ran;
/// - `jobs:delayed`: jobs waiting for a retry (sorted by due time);
/// - `jobs:index`: recent job ids by creation time (for listing), capped at 100,000;
///   `jobs:user:{user}` the same per user, capped at 1,000;
/// - `jobs:unarchived`: finished jobs not yet written to the database;
/// - `jobs:reserved:{user}`: the token budgets of the user's jobs that may still spend (an entry
///   is dropped once its job ended, when the sum is next read);
/// - `jobs:workers`: worker processes by last heartbeat; `jobs:stats`: counters;
/// - channel `jobs:events`: `user\n{job.progress|job.done}` for the gateways.
///
/// Every state change is one Lua script, so two workers (a slow one and the one that reclaimed
/// its job) cannot both move a job: the first to finish wins, the other's result is dropped.
public final class JobQueue: Sendable {
    public static let group = "workers"
    public let redis: RedisClient
    public let configuration: JobQueueConfiguration
    let logger: Logger

    public init(redis: RedisClient, configuration: JobQueueConfiguration, logger: Logger) {
        self.redis = redis
        self.configuration = configuration
        self.logger = logger
    }

    // MARK: Keys

    func key(_ suffix: String) -> String { self.configuration.keyPrefix + suffix }
    func jobKey(_ id: String) -> String { self.key("job:\(id)") }
    func stepsKey(_ id: String) -> String { self.key("job:\(id):steps") }
    func runsKey(_ id: String) -> String { self.key("job:\(id):runs") }
    public func streamKey(_ priority: JobPriority) -> String { self.key("jobs:stream:\(priority.rawValue)") }
    var delayedKey: String { self.key("jobs:delayed") }
    var indexKey: String { self.key("jobs:index") }
    func userIndexKey(_ user: String) -> String { self.key("jobs:user:\(user)") }
    var statsKey: String { self.key("jobs:stats") }
    var workersKey: String { self.key("jobs:workers") }
    var unarchivedKey: String { self.key("jobs:unarchived") }
    public var eventsChannel: String { self.key("jobs:events") }
    func idempotencyKey(user: String, key: String) -> String { self.key("jobs:idem:\(user):\(key)") }
    func reservedKey(_ user: String) -> String { self.key("jobs:reserved:\(user)") }

    // MARK: Set-up

    /// Creates the consumer group on every stream (idempotent). Needed again after Redis lost
    /// its data; workers call it whenever Redis answers NOGROUP.
    public func ensureGroups() async throws {
        for priority in JobPriority.allCases {
            do {
                _ = try await self.redis.send(RedisCommand("XGROUP", "CREATE", self.streamKey(priority), Self.group, "0", "MKSTREAM"))
            } catch RedisClientError.server(let message) where message.hasPrefix("BUSYGROUP") {
                continue
            }
        }
    }

    // MARK: Gateway side

    /// Queues a job and returns it (`created` false: an earlier submission with the same
    /// idempotency key, returned instead).
    public func submit(_ submission: JobSubmission, user: String) async throws(JobQueueError) -> (JobRecord, created: Bool) {
        guard submission.input.utf8.count <= self.configuration.maxInputBytes else {
            throw JobQueueError(.invalidInput, "input exceeds \(self.configuration.maxInputBytes) bytes")
        }
        let id = "job_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        let now = nowMicroseconds()
        let maxAttempts = max(1, min(submission.maxAttempts ?? self.configuration.maxAttempts, 100))
        let idempotency = submission.idempotencyKey.map { self.idempotencyKey(user: user, key: $0) }
        let reply: RESPValue
        do {
            reply = try await Self.submitScript.run(
                on: self.redis,
                keys: [self.jobKey(id), self.streamKey(submission.priority), self.indexKey, idempotency ?? self.key("jobs:idem:-"),
                       self.userIndexKey(user), self.reservedKey(user)],
                arguments: [
                    id, submission.kind, user, submission.priority.rawValue, submission.input, maxAttempts, String(now), Int(now / 1000),
                    idempotency == nil ? "0" : "1", Int(self.configuration.idempotencyWindow.nanoseconds / 1_000_000_000),
                    submission.schedule ?? "", submission.tokenBudget,
                ])
        } catch RedisClientError.server(let message) where message.contains("NOGROUP") {
            throw JobQueueError(.unavailable, "the job queue is not set up: \(message)")
        } catch {
            throw JobQueueError(.unavailable, "the job queue is unavailable (\(error)); retry shortly")
        }
        guard let parts = reply.array, parts.count == 2, let created = parts[0].int, let jobID = parts[1].string else {
            throw JobQueueError(.unavailable, "unexpected reply from the job queue: \(reply)")
        }
        if created == 1 {
            var record = JobRecord(
                id: id, kind: submission.kind, user: user, priority: submission.priority, state: .pending,
                input: submission.input, maxAttempts: maxAttempts, createdAt: now)
            record.schedule = submission.schedule
            record.tokenBudget = submission.tokenBudget
            return (record, true)
        }
        guard let existing = try await self.get(jobID) else {
            throw JobQueueError(.unavailable, "the job with this idempotency key is gone; retry")
        }
        return (existing, false)
    }

    /// The token budgets of `user`'s jobs that have not ended: what their quota must keep free
    /// for them. Budgets of jobs that ended (or left Redis) are dropped on the way.
    public func reservedTokens(user: String) async throws(JobQueueError) -> Int {
        do {
            let reply = try await Self.reservedScript.run(
                on: self.redis, keys: [self.reservedKey(user)], arguments: [self.key("job:")])
            return max(0, reply.int ?? 0)
        } catch {
            throw JobQueueError(.unavailable, "the job queue is unavailable (\(error)); retry shortly")
        }
    }

    /// The job as Redis holds it (nil once it left Redis: ask the archive).
    public func get(_ id: String) async throws(JobQueueError) -> JobRecord? {
        guard Self.isValidID(id) else { return nil }
        do {
            let hash = try await self.redis.hgetall(self.jobKey(id))
            return JobRecord(hash: hash)
        } catch {
            throw JobQueueError(.unavailable, "the job queue is unavailable (\(error)); retry shortly")
        }
    }

    /// `user` nil: an administrator (any job).
    public func cancel(_ id: String, user: String?) async throws(JobQueueError) -> JobCancelOutcome {
        guard Self.isValidID(id) else { return .notFound }
        let reply: RESPValue
        do {
            reply = try await Self.cancelScript.run(
                on: self.redis, keys: [self.jobKey(id), self.delayedKey, self.statsKey, self.unarchivedKey],
                arguments: [String(nowMicroseconds()), id, user ?? ""])
        } catch {
            throw JobQueueError(.unavailable, "the job queue is unavailable (\(error)); retry shortly")
        }
        let (status, record) = Self.statusAndRecord(reply)
        guard let record else { return .notFound }
        switch status {
        case "cancelled":
            self.publish(user: record.user, JobEvent.done(record, inlineResultLimit: self.configuration.inlineResultLimit))
            return .cancelled(record)
        case "requested": return .requested(record)
        default: return .alreadyEnded(record)
        }
    }

    /// Puts a `FAILED` or `CANCELLED` job back in its stream with fresh attempts (admin).
    /// False when it is not in Redis or not finished unsuccessfully.
    public func retry(_ id: String) async throws(JobQueueError) -> Bool {
        guard Self.isValidID(id) else { return false }
        do {
            let reply = try await Self.retryScript.run(
                on: self.redis, keys: [self.jobKey(id), self.unarchivedKey], arguments: [id, self.key("jobs:stream:")])
            return reply.int == 1
        } catch {
            throw JobQueueError(.unavailable, "the job queue is unavailable (\(error)); retry shortly")
        }
    }

    /// The most recent jobs still in Redis, newest first: everyone's (the last 100,000
    /// submitted), or one user's (their last 1,000). A state filter looks at 4 × `limit` ids.
    public func list(limit: Int, user: String? = nil, state: JobState? = nil) async throws(JobQueueError) -> [JobRecord] {
        do {
            let index = user.map { self.userIndexKey($0) } ?? self.indexKey
            let scan = state == nil ? limit : limit * 4
            let ids = try await self.redis.send(RedisCommand("ZREVRANGE", index, 0, max(0, min(scan, 40_000) - 1))).array?.compactMap(\.string) ?? []
            let replies = await self.redis.send(pipeline: ids.map { RedisCommand("HGETALL", self.jobKey($0)) })
            var records: [JobRecord] = []
            for reply in replies {
                guard case .success(let value) = reply, let record = JobRecord(hash: Self.hash(value)) else { continue }
                if let user, record.user != user { continue }
                if let state, record.state != state { continue }
                records.append(record)
                if records.count == limit { break }
            }
            return records
        } catch {
            throw JobQueueError(.unavailable, "the job queue is unavailable (\(error)); retry shortly")
        }
    }

    public func stats(liveWindow: TimeAmount = .seconds(10)) async throws -> JobQueueStats {
        var stats = JobQueueStats()
        var commands: [RedisCommand] = []
        for priority in JobPriority.allCases {
            commands.append(RedisCommand("XLEN", self.streamKey(priority)))
            commands.append(RedisCommand("XPENDING", self.streamKey(priority), Self.group))
        }
        let nowMs = Int(nowMicroseconds() / 1000)
        commands.append(RedisCommand("ZCARD", self.delayedKey))
        commands.append(RedisCommand("ZCOUNT", self.workersKey, nowMs - Int(liveWindow.nanoseconds / 1_000_000), "+inf"))
        commands.append(RedisCommand("HGETALL", self.statsKey))
        let replies = await self.redis.send(pipeline: commands)
        func value(_ index: Int) throws -> RESPValue { try replies[index].get() }
        for (index, priority) in JobPriority.allCases.enumerated() {
            let length = try value(index * 2).int ?? 0
            // XPENDING of a stream whose group is missing fails: count it as nothing held.
            let pending = (try? value(index * 2 + 1))?.array?.first?.int ?? 0
            stats.running[priority] = pending
            stats.waiting[priority] = max(0, length - pending)
        }
        let base = JobPriority.allCases.count * 2
        stats.delayed = try value(base).int ?? 0
        stats.workersAlive = try value(base + 1).int ?? 0
        let counters = Self.hash(try value(base + 2))
        func counter(_ name: String) -> Int { counters[name].flatMap { Int(String(buffer: $0)) } ?? 0 }
        stats.succeeded = counter("succeeded")
        stats.failed = counter("failed")
        stats.retried = counter("retried")
        stats.cancelled = counter("cancelled")
        stats.reclaimed = counter("reclaimed")
        return stats
    }

    // MARK: Events

    /// Fire and forget: a lost event is recovered by `GET /v1/jobs/{id}`.
    func publish(user: String, _ json: String) {
        let payload = JobEvent.channelPayload(user: user, json)
        self.redis.send(RedisCommand("PUBLISH", self.eventsChannel, payload)).whenFailure { [logger] error in
            logger.debug("job event not published", metadata: ["sluice.error": "\(error)"])
        }
    }

    // MARK: Helpers

    /// Ids are ours (`job_` and 32 hex digits); anything else is not looked up at all.
    static func isValidID(_ id: String) -> Bool {
        id.utf8.count == 36 && id.hasPrefix("job_") && id.utf8.dropFirst(4).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    static func hash(_ reply: RESPValue) -> [String: ByteBuffer] {
        guard let flat = reply.array else { return [:] }
        var result: [String: ByteBuffer] = [:]
        var index = 0
        while index + 1 < flat.count {
            if let name = flat[index].string, let value = flat[index + 1].buffer { result[name] = value }
            index += 2
        }
        return result
    }

    /// Scripts answer `{status, HGETALL}` or `{status}`.
    static func statusAndRecord(_ reply: RESPValue) -> (String, JobRecord?) {
        guard let parts = reply.array, let status = parts.first?.string else { return ("", nil) }
        let record = parts.count > 1 ? JobRecord(hash: Self.hash(parts[1])) : nil
        return (status, record)
    }

    // MARK: Scripts (the queue's state machine; each runs atomically)

    /// KEYS: job, stream, index, idempotency, the user's index, the user's reserved budgets.
    /// ARGV: id, kind, user, priority, input, max attempts, created µs, created ms, has
    /// idempotency, its ttl s, schedule, token budget.
    static let submitScript = RedisScript("""
        if ARGV[9] == '1' then
          local existing = redis.call('GET', KEYS[4])
          if existing then return {0, existing} end
          redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[10]))
        end
        redis.call('HSET', KEYS[1], 'id', ARGV[1], 'kind', ARGV[2], 'user', ARGV[3], 'priority', ARGV[4],
          'state', 'PENDING', 'input', ARGV[5], 'attempts', 0, 'max_attempts', ARGV[6], 'created_us', ARGV[7],
          'schedule', ARGV[11], 'token_budget', ARGV[12])
        if tonumber(ARGV[12]) > 0 then redis.call('HSET', KEYS[6], ARGV[1], ARGV[12]) end
        redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
        redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1])
        redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -100001)
        redis.call('ZADD', KEYS[5], ARGV[8], ARGV[1])
        redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -1001)
        return {1, ARGV[1]}
        """)

    /// The sum of a user's reservations whose jobs still may run; the others are removed.
    /// KEYS: the user's reserved budgets. ARGV: job key prefix.
    static let reservedScript = RedisScript("""
        local entries = redis.call('HGETALL', KEYS[1])
        local sum = 0
        for i = 1, #entries, 2 do
          local state = redis.call('HGET', ARGV[1] .. entries[i], 'state')
          if state == 'PENDING' or state == 'RUNNING' then
            sum = sum + (tonumber(entries[i + 1]) or 0)
          else
            redis.call('HDEL', KEYS[1], entries[i])
          end
        end
        return sum
        """)

    /// KEYS: job, stream, stats, unarchived. ARGV: entry, worker, now µs, id.
    /// {'run', hash} | {'skip'} | {'cancelled', hash} | {'failed', hash}
    static let startScript = RedisScript("""
        local state = redis.call('HGET', KEYS[1], 'state')
        if state ~= 'PENDING' and state ~= 'RUNNING' then
          redis.call('XACK', KEYS[2], 'workers', ARGV[1])
          redis.call('XDEL', KEYS[2], ARGV[1])
          return {'skip'}
        end
        local f = redis.call('HMGET', KEYS[1], 'cancel', 'attempts', 'max_attempts')
        if f[1] == '1' then
          redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'finished_us', ARGV[3])
          redis.call('XACK', KEYS[2], 'workers', ARGV[1])
          redis.call('XDEL', KEYS[2], ARGV[1])
          redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
          redis.call('SADD', KEYS[4], ARGV[4])
          return {'cancelled', redis.call('HGETALL', KEYS[1])}
        end
        local attempts = tonumber(f[2] or '0') + 1
        local maximum = tonumber(f[3] or '1')
        if state == 'RUNNING' then redis.call('HINCRBY', KEYS[3], 'reclaimed', 1) end
        if attempts > maximum then
          redis.call('HSET', KEYS[1], 'state', 'FAILED', 'finished_us', ARGV[3],
            'error', 'gave up after ' .. maximum .. ' attempts (the last one lost its worker)')
          redis.call('XACK', KEYS[2], 'workers', ARGV[1])
          redis.call('XDEL', KEYS[2], ARGV[1])
          redis.call('HINCRBY', KEYS[3], 'failed', 1)
          redis.call('SADD', KEYS[4], ARGV[4])
          return {'failed', redis.call('HGETALL', KEYS[1])}
        end
        redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'attempts', attempts, 'worker', ARGV[2], 'entry', ARGV[1])
        redis.call('HSETNX', KEYS[1], 'started_us', ARGV[3])
        return {'run', redis.call('HGETALL', KEYS[1])}
        """)

    /// Renews a running job's claim and reports a cancel request. KEYS: stream, job.
    /// ARGV: entry, consumer. 0: no longer ours; 1: ours; 2: ours, cancel requested.
    static let heartbeatScript = RedisScript("""
        local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[1], ARGV[1], 1)
        if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
        redis.call('XCLAIM', KEYS[1], 'workers', ARGV[2], 0, ARGV[1], 'JUSTID')
        if redis.call('HGET', KEYS[2], 'cancel') == '1' then return 2 end
        return 1
        """)

    /// KEYS: job, stream, stats, unarchived. ARGV: entry, result, result type, now µs, id.
    static let completeScript = RedisScript("""
        local state = redis.call('HGET', KEYS[1], 'state')
        redis.call('XACK', KEYS[2], 'workers', ARGV[1])
        redis.call('XDEL', KEYS[2], ARGV[1])
        if state ~= 'RUNNING' then return {'skip'} end
        redis.call('HSET', KEYS[1], 'state', 'SUCCEEDED', 'result', ARGV[2], 'result_type', ARGV[3], 'finished_us', ARGV[4])
        redis.call('HDEL', KEYS[1], 'error')
        redis.call('HINCRBY', KEYS[3], 'succeeded', 1)
        redis.call('SADD', KEYS[4], ARGV[5])
        return {'ok', redis.call('HGETALL', KEYS[1])}
        """)

    /// KEYS: job, stream, stats, unarchived, delayed. ARGV: entry, error, now µs, due ms,
    /// permanent (1/0), id. {'failed', hash} | {'retry', hash} | {'skip'}
    static let failScript = RedisScript("""
        local state = redis.call('HGET', KEYS[1], 'state')
        redis.call('XACK', KEYS[2], 'workers', ARGV[1])
        redis.call('XDEL', KEYS[2], ARGV[1])
        if state ~= 'RUNNING' then return {'skip'} end
        local f = redis.call('HMGET', KEYS[1], 'attempts', 'max_attempts', 'cancel')
        if ARGV[5] == '1' or tonumber(f[1]) >= tonumber(f[2]) or f[3] == '1' then
          redis.call('HSET', KEYS[1], 'state', 'FAILED', 'error', ARGV[2], 'finished_us', ARGV[3])
          redis.call('HINCRBY', KEYS[3], 'failed', 1)
          redis.call('SADD', KEYS[4], ARGV[6])
          return {'failed', redis.call('HGETALL', KEYS[1])}
        end
        redis.call('HSET', KEYS[1], 'state', 'PENDING', 'error', ARGV[2], 'retry_at_ms', ARGV[4])
        redis.call('ZADD', KEYS[5], ARGV[4], ARGV[6])
        redis.call('HINCRBY', KEYS[3], 'retried', 1)
        return {'retry', redis.call('HGETALL', KEYS[1])}
        """)

    /// The worker stopped a job because its cancel was requested.
    /// KEYS: job, stream, stats, unarchived. ARGV: entry, now µs, id.
    static let cancelledScript = RedisScript("""
        local state = redis.call('HGET', KEYS[1], 'state')
        redis.call('XACK', KEYS[2], 'workers', ARGV[1])
        redis.call('XDEL', KEYS[2], ARGV[1])
        if state ~= 'RUNNING' then return {'skip'} end
        redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'finished_us', ARGV[2])
        redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
        redis.call('SADD', KEYS[4], ARGV[3])
        return {'ok', redis.call('HGETALL', KEYS[1])}
        """)

    /// KEYS: job, delayed, stats, unarchived. ARGV: now µs, id, user ('' = any).
    static let cancelScript = RedisScript("""
        local f = redis.call('HMGET', KEYS[1], 'state', 'user')
        if not f[1] then return {'notfound'} end
        if ARGV[3] ~= '' and f[2] ~= ARGV[3] then return {'notfound'} end
        if f[1] == 'PENDING' then
          redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'finished_us', ARGV[1], 'cancel', '1')
          redis.call('ZREM', KEYS[2], ARGV[2])
          redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
          redis.call('SADD', KEYS[4], ARGV[2])
          return {'cancelled', redis.call('HGETALL', KEYS[1])}
        end
        if f[1] == 'RUNNING' then
          redis.call('HSET', KEYS[1], 'cancel', '1')
          return {'requested', redis.call('HGETALL', KEYS[1])}
        end
        return {'ended', redis.call('HGETALL', KEYS[1])}
        """)

    /// KEYS: job, unarchived. ARGV: id, stream key prefix. 1 when re-queued.
    static let retryScript = RedisScript("""
        local f = redis.call('HMGET', KEYS[1], 'state', 'priority')
        if f[1] ~= 'FAILED' and f[1] ~= 'CANCELLED' then return 0 end
        redis.call('HSET', KEYS[1], 'state', 'PENDING', 'attempts', 0)
        redis.call('HDEL', KEYS[1], 'cancel', 'error', 'finished_us', 'started_us', 'result', 'result_type', 'current', 'total', 'message', 'retry_at_ms')
        redis.call('PERSIST', KEYS[1])
        redis.call('SREM', KEYS[2], ARGV[1])
        redis.call('XADD', ARGV[2] .. f[2], '*', 'job', ARGV[1])
        return 1
        """)

    /// Moves retries whose backoff is over back into their streams. KEYS: delayed.
    /// ARGV: now ms, key prefix.
    static let promoteScript = RedisScript("""
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
        for _, id in ipairs(due) do
          redis.call('ZREM', KEYS[1], id)
          local f = redis.call('HMGET', ARGV[2] .. 'job:' .. id, 'state', 'priority')
          if f[1] == 'PENDING' then
            redis.call('XADD', ARGV[2] .. 'jobs:stream:' .. f[2], '*', 'job', id)
          end
        end
        return #due
        """)
}
