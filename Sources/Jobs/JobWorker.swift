import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import RedisClient
import ServiceLifecycle

/// Where finished jobs are kept once they leave Redis (the `jobs` table).
public protocol JobArchive: Sendable {
    func archive(_ record: JobRecord) async throws
    func archivedJob(_ id: String) async throws -> JobRecord?
}

public struct JobWorkerConfiguration: Sendable, Equatable {
    /// Jobs this process runs at once.
    public var concurrency: Int = 4
    /// This process's name among the workers (consumer names are `{workerID}/{slot}`).
    public var workerID: String
    /// On SIGTERM: running jobs get this long to finish; then they are left to be reclaimed.
    public var shutdownGrace: TimeAmount = .seconds(30)
    /// How long a blocking read waits before it looks again (bounds the shutdown delay).
    public var blockInterval: TimeAmount = .seconds(1)

    public init(workerID: String) {
        self.workerID = workerID
    }
}

/// A worker process's job runner: `concurrency` slots, each claiming from the streams (high
/// first), renewing its claim while the job runs, and moving the job to its next state. Also
/// promotes retries whose backoff is over, archives finished jobs, and announces itself.
public final class JobWorker: Service, Sendable {
    let queue: JobQueue
    let handlers: JobHandlers
    let archive: (any JobArchive)?
    let configuration: JobWorkerConfiguration
    let logger: Logger
    let metrics = JobMetrics()
    private let state = NIOLockedValueBox(RunState())

    private struct RunState {
        var stopping = false
        /// After the grace period: running jobs are abandoned (left for reclaiming).
        var abandoning = false
        var running: [String: Task<JobOutput, any Error>] = [:]
    }

    public init(queue: JobQueue, handlers: JobHandlers, archive: (any JobArchive)?, configuration: JobWorkerConfiguration, logger: Logger) {
        self.queue = queue
        self.handlers = handlers
        self.archive = archive
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        self.logger.notice("job worker starting", metadata: [
            "sluice.worker": "\(self.configuration.workerID)", "sluice.concurrency": "\(self.configuration.concurrency)",
            "sluice.kinds": "\(self.handlers.kinds.joined(separator: ","))"])
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for slot in 0..<max(1, self.configuration.concurrency) {
                    group.addTask { await self.slotLoop(slot) }
                }
                group.addTask { await self.maintenanceLoop() }
                await group.waitForAll()
            }
        } onGracefulShutdown: {
            self.state.withLockedValue { $0.stopping = true }
            let grace = self.configuration.shutdownGrace
            Task {
                try? await Task.sleep(nanoseconds: UInt64(max(0, grace.nanoseconds)))
                let running = self.state.withLockedValue { state in
                    state.abandoning = true
                    return Array(state.running.values)
                }
                for task in running { task.cancel() }
            }
        }
        self.logger.notice("job worker stopped", metadata: ["sluice.worker": "\(self.configuration.workerID)"])
    }

    private var isStopping: Bool { self.state.withLockedValue { $0.stopping } }

    // MARK: Claiming

    private func slotLoop(_ slot: Int) async {
        let consumer = "\(self.configuration.workerID)/\(slot)"
        var connection: RedisConnection?
        var lastReclaimCheck = NIODeadline.uptimeNanoseconds(0)
        var failures = 0
        while !self.isStopping && !Task.isCancelled {
            do {
                if connection == nil || connection?.isActive == false {
                    connection = try await self.queue.redis.makeDedicatedConnection()
                }
                var claimed: (JobPriority, RedisStreamEntry)?
                // Reclaiming is checked every half visibility timeout, not on every claim.
                if NIODeadline.now() - lastReclaimCheck > TimeAmount.nanoseconds(self.queue.configuration.visibilityTimeout.nanoseconds / 2) {
                    lastReclaimCheck = .now()
                    claimed = try await self.reclaim(consumer: consumer, on: connection!)
                }
                if claimed == nil { claimed = try await self.claim(consumer: consumer, on: connection!) }
                failures = 0
                guard let (priority, entry) = claimed else { continue }
                await self.execute(entry, priority: priority, consumer: consumer)
            } catch {
                failures += 1
                if case RedisClientError.server(let message) = error, message.contains("NOGROUP") {
                    try? await self.queue.ensureGroups()
                } else if failures == 1 || failures % 30 == 0 {
                    self.logger.warning("job worker cannot reach Redis; retrying", metadata: ["sluice.error": "\(error)", "sluice.slot": "\(slot)"])
                }
                connection?.close().whenComplete { _ in }
                connection = nil
                try? await Task.sleep(nanoseconds: UInt64(min(2_000, 50 * (1 << min(failures, 6)))) * 1_000_000)
            }
        }
        connection?.close().whenComplete { _ in }
    }

    /// A job whose worker stopped renewing its claim, oldest first, highest priority first.
    private func reclaim(consumer: String, on connection: RedisConnection) async throws -> (JobPriority, RedisStreamEntry)? {
        let idle = Int(self.queue.configuration.visibilityTimeout.nanoseconds / 1_000_000)
        for priority in JobPriority.allCases {
            let entries = try await connection.xautoclaim(
                self.queue.streamKey(priority), group: JobQueue.group, consumer: consumer, minIdleMilliseconds: idle, count: 1)
            if let entry = entries.first {
                self.metrics.reclaims.increment()
                self.logger.notice("reclaimed a job from a silent worker", metadata: ["sluice.entry": "\(entry.id)", "sluice.priority": "\(priority)"])
                return (priority, entry)
            }
        }
        return nil
    }

    /// The next new entry: a non-blocking look at each stream in priority order, then a short
    /// blocking read on all of them.
    private func claim(consumer: String, on connection: RedisConnection) async throws -> (JobPriority, RedisStreamEntry)? {
        for priority in JobPriority.allCases {
            let streams = try await connection.xreadgroup(
                group: JobQueue.group, consumer: consumer, [(self.queue.streamKey(priority), ">")], count: 1)
            if let entry = streams.first?.entries.first { return (priority, entry) }
        }
        let block = Int(self.configuration.blockInterval.nanoseconds / 1_000_000)
        let streams = try await connection.xreadgroup(
            group: JobQueue.group, consumer: consumer, JobPriority.allCases.map { (self.queue.streamKey($0), ">") },
            count: 1, blockMilliseconds: block)
        for stream in streams {
            guard let entry = stream.entries.first, let priority = JobPriority.allCases.first(where: { self.queue.streamKey($0) == stream.key }) else { continue }
            return (priority, entry)
        }
        return nil
    }

    // MARK: Running one job

    private func execute(_ entry: RedisStreamEntry, priority: JobPriority, consumer: String) async {
        guard let id = entry[field: "job"].map({ String(buffer: $0) }) else { return }
        let queue = self.queue
        let stream = queue.streamKey(priority)
        let keys = [queue.jobKey(id), stream, queue.statsKey, queue.unarchivedKey]
        let started: RESPValue
        do {
            started = try await JobQueue.startScript.run(
                on: queue.redis, keys: keys, arguments: [entry.id, consumer, String(nowMicroseconds()), id])
        } catch {
            // Not started: the entry stays pending and is reclaimed after the visibility timeout.
            self.logger.warning("could not start a job", metadata: ["sluice.job": "\(id)", "sluice.error": "\(error)"])
            return
        }
        let (status, startedRecord) = JobQueue.statusAndRecord(started)
        guard status == "run", let record = startedRecord else {
            if let record = startedRecord, record.state.isTerminal { await self.finished(record) }
            return
        }
        guard let handler = self.handlers[kind: record.kind] else {
            await self.fail(record, entry: entry.id, stream: stream, JobFailure("unknown job kind \"\(record.kind)\"", retryable: false))
            return
        }
        self.metrics.waited(kind: record.kind, since: record.createdAt, attempt: record.attempts)
        self.logger.info("job started", metadata: [
            "sluice.job": "\(id)", "sluice.kind": "\(record.kind)", "sluice.attempt": "\(record.attempts)/\(record.maxAttempts)"])
        let context = JobContext(record: record, queue: queue)
        let task = Task { try await handler.run(context) }
        let registered = self.state.withLockedValue { state -> Bool in
            guard !state.abandoning else { return false }
            state.running[id] = task
            return true
        }
        if !registered { task.cancel() }
        await context.progress(current: 0, total: nil, message: "started (attempt \(record.attempts))")
        // Renews the claim and watches for a cancel request while the job runs.
        let watch = Task { [heartbeat = queue.configuration.heartbeatInterval] () -> (cancelRequested: Bool, lost: Bool) in
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(heartbeat.nanoseconds))
                if Task.isCancelled { break }
                guard let answer = try? await JobQueue.heartbeatScript.run(
                    on: queue.redis, keys: [stream, queue.jobKey(id)], arguments: [entry.id, consumer]).int else { continue }
                if answer == 2 { task.cancel(); return (true, false) }
                if answer == 0 { return (false, true) }
            }
            return (false, false)
        }
        let startedAt = NIODeadline.now()
        let result = await task.result
        watch.cancel()
        let (cancelRequested, lost) = await watch.value
        let abandoned = self.state.withLockedValue { state in
            state.running[id] = nil
            return state.abandoning
        }
        self.metrics.ran(kind: record.kind, for: NIODeadline.now() - startedAt)
        if lost {
            self.logger.warning("another worker took this job over while it ran here (claim not renewed in time); the first to finish records the result", metadata: ["sluice.job": "\(id)"])
        }
        switch result {
        case .success(let output):
            do {
                let reply = try await JobQueue.completeScript.run(
                    on: queue.redis, keys: keys, arguments: [entry.id, output.body, output.contentType, String(nowMicroseconds()), id])
                if case ("ok", let done?) = JobQueue.statusAndRecord(reply) { await self.finished(done) }
            } catch {
                // Unrecorded: the entry stays pending, another attempt will run after the timeout.
                self.logger.error("could not record a job's result", metadata: ["sluice.job": "\(id)", "sluice.error": "\(error)"])
            }
        case .failure(let error):
            if abandoned && !cancelRequested {
                self.logger.notice("job abandoned at shutdown; another worker will take it over", metadata: ["sluice.job": "\(id)"])
                return
            }
            if cancelRequested {
                do {
                    let reply = try await JobQueue.cancelledScript.run(
                        on: queue.redis, keys: keys, arguments: [entry.id, String(nowMicroseconds()), id])
                    if case ("ok", let done?) = JobQueue.statusAndRecord(reply) { await self.finished(done) }
                } catch {
                    self.logger.error("could not record a job's cancellation", metadata: ["sluice.job": "\(id)", "sluice.error": "\(error)"])
                }
                return
            }
            let failure = (error as? JobFailure) ?? JobFailure("\(error)", retryable: true)
            await self.fail(record, entry: entry.id, stream: stream, failure)
        }
    }

    private func fail(_ record: JobRecord, entry: String, stream: String, _ failure: JobFailure) async {
        let queue = self.queue
        let backoff = Self.backoff(attempt: record.attempts, base: queue.configuration.retryBackoff, maximum: queue.configuration.maxRetryBackoff)
        let due = Int(nowMicroseconds() / 1000) + Int(backoff.nanoseconds / 1_000_000)
        do {
            let reply = try await JobQueue.failScript.run(
                on: queue.redis, keys: [queue.jobKey(record.id), stream, queue.statsKey, queue.unarchivedKey, queue.delayedKey],
                arguments: [entry, failure.message, String(nowMicroseconds()), due, failure.retryable ? "0" : "1", record.id])
            let (status, updated) = JobQueue.statusAndRecord(reply)
            guard let updated else { return }
            if status == "retry" {
                self.metrics.retried(kind: record.kind)
                self.logger.notice("job attempt failed; retrying", metadata: [
                    "sluice.job": "\(record.id)", "sluice.attempt": "\(record.attempts)", "sluice.error": "\(failure.message)",
                    "sluice.backoff_ms": "\(backoff.nanoseconds / 1_000_000)"])
                queue.publish(user: updated.user, JobEvent.progress(updated, retryInMs: backoff.nanoseconds / 1_000_000))
            } else if status == "failed" {
                await self.finished(updated)
            }
        } catch {
            self.logger.error("could not record a job's failure", metadata: ["sluice.job": "\(record.id)", "sluice.error": "\(error)"])
        }
    }

    /// `base · 2^(attempt-1)`, capped, with ±20% jitter so retries of a burst spread out.
    static func backoff(attempt: Int, base: TimeAmount, maximum: TimeAmount) -> TimeAmount {
        let exponent = min(max(attempt - 1, 0), 20)
        let raw = min(Double(base.nanoseconds) * pow(2, Double(exponent)), Double(maximum.nanoseconds))
        return .nanoseconds(Int64(raw * Double.random(in: 0.8...1.2)))
    }

    /// A job reached its final state: tell the submitter, count it, archive it.
    private func finished(_ record: JobRecord) async {
        self.queue.publish(user: record.user, JobEvent.done(record, inlineResultLimit: self.queue.configuration.inlineResultLimit))
        self.metrics.finished(record)
        self.logger.info("job finished", metadata: [
            "sluice.job": "\(record.id)", "sluice.kind": "\(record.kind)", "sluice.state": "\(record.state.rawValue)",
            "sluice.attempts": "\(record.attempts)"])
        await self.archive(record)
    }

    // MARK: Maintenance

    private func maintenanceLoop() async {
        var tick = 0
        while !self.isStopping && !Task.isCancelled {
            try? await Task.sleep(nanoseconds: 250_000_000)
            tick += 1
            _ = try? await JobQueue.promoteScript.run(
                on: self.queue.redis, keys: [self.queue.delayedKey], arguments: [Int(nowMicroseconds() / 1000), self.queue.configuration.keyPrefix])
            if tick % 8 == 0 {
                let nowMs = Int(nowMicroseconds() / 1000)
                _ = await self.queue.redis.send(pipeline: [
                    RedisCommand("ZADD", self.queue.workersKey, nowMs, self.configuration.workerID),
                    RedisCommand("ZREMRANGEBYSCORE", self.queue.workersKey, "-inf", nowMs - 3_600_000),
                ])
                await self.sweepUnarchived()
            }
        }
        _ = try? await self.queue.redis.send(RedisCommand("ZREM", self.queue.workersKey, self.configuration.workerID)).get()
    }

    /// Finished jobs not yet archived (the database was down, or a gateway cancelled them).
    private func sweepUnarchived() async {
        guard let ids = try? await self.queue.redis.send(RedisCommand("SRANDMEMBER", self.queue.unarchivedKey, 20)).get().array else { return }
        for id in ids.compactMap(\.string) {
            let found: JobRecord?
            do { found = try await self.queue.get(id) } catch { return }
            guard let record = found, record.state.isTerminal else {
                // Gone from Redis (or re-queued by `retry`): nothing to archive.
                _ = try? await self.queue.redis.send(RedisCommand("SREM", self.queue.unarchivedKey, id)).get()
                continue
            }
            await self.archive(record)
        }
    }

    /// Writes the job to the database, then lets Redis forget it after the retention time.
    private func archive(_ record: JobRecord) async {
        if let archive = self.archive {
            do {
                try await archive.archive(record)
            } catch {
                self.logger.warning("job not archived yet (database unreachable?); will retry", metadata: [
                    "sluice.job": "\(record.id)", "sluice.error": "\(error)"])
                return
            }
        }
        let retention = Int(self.queue.configuration.retention.nanoseconds / 1_000_000_000)
        _ = await self.queue.redis.send(pipeline: [
            RedisCommand("SREM", self.queue.unarchivedKey, record.id),
            RedisCommand("EXPIRE", self.queue.jobKey(record.id), retention),
            RedisCommand("EXPIRE", self.queue.stepsKey(record.id), retention),
            RedisCommand("EXPIRE", self.queue.runsKey(record.id), retention),
        ])
    }
}

/// The workers' metrics (`sluice_job_*`); labels are bounded (kinds come from the handlers).
final class JobMetrics: Sendable {
    let reclaims = Counter(label: "sluice_job_reclaims_total")
    private let counters = NIOLockedValueBox([String: Counter]())
    private let timers = NIOLockedValueBox([String: Timer]())

    func finished(_ record: JobRecord) {
        self.counter("sluice_jobs_finished_total", [("kind", record.kind), ("state", record.state.rawValue.lowercased())]).increment()
        if let finishedAt = record.finishedAt {
            self.timer("sluice_job_latency_seconds", [("kind", record.kind), ("state", record.state.rawValue.lowercased())])
                .recordNanoseconds(max(0, finishedAt - record.createdAt) * 1000)
        }
    }

    func retried(kind: String) {
        self.counter("sluice_job_retries_total", [("kind", kind)]).increment()
    }

    /// Queue wait of a first attempt (created → started).
    func waited(kind: String, since createdAt: Int64, attempt: Int) {
        guard attempt == 1 else { return }
        self.timer("sluice_job_queue_wait_seconds", [("kind", kind)]).recordNanoseconds(max(0, nowMicroseconds() - createdAt) * 1000)
    }

    func ran(kind: String, for duration: TimeAmount) {
        self.timer("sluice_job_attempt_seconds", [("kind", kind)]).recordNanoseconds(duration.nanoseconds)
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        Self.cached(self.counters, label, dimensions) { Counter(label: label, dimensions: dimensions) }
    }

    private func timer(_ label: String, _ dimensions: [(String, String)]) -> Timer {
        Self.cached(self.timers, label, dimensions) { Timer(label: label, dimensions: dimensions) }
    }

    /// One handle per label and dimension values, made on first use.
    private static func cached<Handle>(
        _ box: NIOLockedValueBox<[String: Handle]>, _ label: String, _ dimensions: [(String, String)], make: () -> Handle
    ) -> Handle {
        let key = label + dimensions.map { "|\($0.1)" }.joined()
        return box.withLockedValue { handles in
            if let handle = handles[key] { return handle }
            let handle = make()
            handles[key] = handle
            return handle
        }
    }
}
