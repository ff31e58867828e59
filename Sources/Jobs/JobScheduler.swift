import Foundation
import Logging
import Metrics
import NIOCore
import RedisClient
import ServiceLifecycle

/// A job submitted on a schedule (the seed's Celery Beat): every `interval`, or at the minutes
/// a cron expression names.
public struct JobSchedule: Sendable, Equatable {
    public enum Timing: Sendable, Equatable {
        /// Periods aligned to the Unix epoch (`every: 1h` runs at the top of each hour).
        case every(TimeAmount)
        case cron(CronSchedule)
    }

    public var name: String
    public var timing: Timing
    public var kind: String
    /// JSON text.
    public var input: String
    public var priority: JobPriority
    /// Whose job it is (its events go to this user's connections).
    public var user: String

    public init(name: String, timing: Timing, kind: String, input: String = "{}", priority: JobPriority = .normal, user: String = "scheduler") {
        self.name = name
        self.timing = timing
        self.kind = kind
        self.input = input
        self.priority = priority
        self.user = user
    }

    /// The period `date` falls in (nil: a cron minute that does not match), and how long to
    /// remember that it ran.
    func slot(at date: Date) -> (slot: Int64, keep: Int)? {
        switch self.timing {
        case .every(let interval):
            let seconds = max(1, Double(interval.nanoseconds) / 1e9)
            return (Int64((date.timeIntervalSince1970 / seconds).rounded(.down)), max(120, Int(seconds * 2)))
        case .cron(let cron):
            guard cron.matches(date) else { return nil }
            return (Int64((date.timeIntervalSince1970 / 60).rounded(.down)), 180)
        }
    }
}

/// Runs in every worker; for each schedule and period exactly one worker wins `SET NX` on the
/// period's key and submits the job, so N workers still run it once per period.
public struct JobScheduler: Service {
    let queue: JobQueue
    let schedules: [JobSchedule]
    let logger: Logger

    public init(queue: JobQueue, schedules: [JobSchedule], logger: Logger) {
        self.queue = queue
        self.schedules = schedules
        self.logger = logger
    }

    public func run() async throws {
        guard !self.schedules.isEmpty else {
            // A service that returns ends the group: stay until shutdown.
            try? await gracefulShutdown()
            return
        }
        self.logger.notice("job schedules", metadata: ["sluice.schedules": "\(self.schedules.map(\.name).joined(separator: ", "))"])
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            await self.tick(now: Date())
            // Wake near the start of the next second, so a period is caught early.
            let fraction = Date().timeIntervalSince1970.truncatingRemainder(dividingBy: 1)
            try? await Task.sleep(nanoseconds: UInt64((1 - fraction) * 1e9) + 5_000_000)
        }
    }

    /// Submits what is due at `now`, once per period across all workers. Returns the names it submitted.
    @discardableResult
    public func tick(now: Date) async -> [String] {
        var submitted: [String] = []
        for schedule in self.schedules {
            guard let (slot, keep) = schedule.slot(at: now) else { continue }
            let key = self.queue.key("jobs:sched:\(schedule.name):\(slot)")
            guard let won = try? await self.queue.redis.set(key, to: "1", condition: .ifNotExists, expiration: .seconds(keep)), won else { continue }
            var submission = JobSubmission(kind: schedule.kind, input: schedule.input, priority: schedule.priority,
                                           idempotencyKey: "schedule:\(schedule.name):\(slot)")
            submission.schedule = schedule.name
            do {
                let (record, _) = try await self.queue.submit(submission, user: schedule.user)
                submitted.append(schedule.name)
                self.logger.info("scheduled job submitted", metadata: ["sluice.schedule": "\(schedule.name)", "sluice.job": "\(record.id)"])
            } catch {
                // Let another worker (or the next tick) try this period again.
                _ = try? await self.queue.redis.del(key)
                self.logger.warning("scheduled job not submitted", metadata: ["sluice.schedule": "\(schedule.name)", "sluice.error": "\(error)"])
            }
        }
        return submitted
    }
}

/// Reads the queue's counts every few seconds into gauges, for `/metrics` on gateways and
/// workers alike: `sluice_job_queue_depth{priority,state}`, `sluice_job_queue_delayed`,
/// `sluice_job_workers_alive` and the cluster-wide `sluice_jobs_cluster{outcome}` totals.
public struct JobQueueMonitor: Service {
    let queue: JobQueue
    let interval: TimeAmount

    public init(queue: JobQueue, interval: TimeAmount = .seconds(5)) {
        self.queue = queue
        self.interval = interval
    }

    public func run() async throws {
        var depth: [String: Gauge] = [:]
        for priority in JobPriority.allCases {
            for state in ["waiting", "running"] {
                depth["\(priority.rawValue)/\(state)"] = Gauge(label: "sluice_job_queue_depth", dimensions: [("priority", priority.rawValue), ("state", state)])
            }
        }
        let delayed = Gauge(label: "sluice_job_queue_delayed")
        let workers = Gauge(label: "sluice_job_workers_alive")
        let up = Gauge(label: "sluice_job_queue_up")
        let outcomes = ["succeeded", "failed", "retried", "cancelled", "reclaimed"].map { ($0, Gauge(label: "sluice_jobs_cluster", dimensions: [("outcome", $0)])) }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if let stats = try? await self.queue.stats() {
                up.record(1)
                for priority in JobPriority.allCases {
                    depth["\(priority.rawValue)/waiting"]?.record(stats.waiting[priority] ?? 0)
                    depth["\(priority.rawValue)/running"]?.record(stats.running[priority] ?? 0)
                }
                delayed.record(stats.delayed)
                workers.record(stats.workersAlive)
                let values = ["succeeded": stats.succeeded, "failed": stats.failed, "retried": stats.retried,
                              "cancelled": stats.cancelled, "reclaimed": stats.reclaimed]
                for (name, gauge) in outcomes { gauge.record(values[name] ?? 0) }
            } else {
                up.record(0)
            }
            try? await Task.sleep(nanoseconds: UInt64(self.interval.nanoseconds))
        }
    }
}
