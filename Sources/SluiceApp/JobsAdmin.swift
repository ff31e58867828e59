import Foundation
import Jobs
import Logging
import NIOCore
import NIOPosix
import RedisClient
import Storage

/// `sluice jobs ls|show|retry|cancel`: the queue from the terminal (the seed's Flower). Talks
/// to Redis directly (and to the database for jobs that already left Redis).
public enum JobsAdmin {
    public enum Command: Sendable {
        case list(state: String?, user: String?, limit: Int)
        case show(String)
        case retry(String)
        case cancel(String)
    }

    public static func run(_ command: Command, configuration: SluiceConfiguration, output: @Sendable (String) -> Void = { print($0) }) async throws {
        var logger = Logger(label: "sluice.jobs")
        logger.logLevel = .error
        guard let redisConfiguration = try SluiceServer.redisConfiguration(configuration, logger: logger) else {
            throw WorkerSetupError(description: "the job queue lives in Redis: give --redis-url (or SLUICE_REDIS_URL)")
        }
        try await Self.withRedis(redisConfiguration, logger: logger) { redis in
            try await Self.perform(command, redis: redis, redisConfiguration: redisConfiguration, configuration: configuration, logger: logger, output: output)
        }
    }

    /// A client for `body` only, closed (and awaited) when it returns or throws.
    static func withRedis<T>(
        _ redisConfiguration: RedisConfiguration, logger: Logger, _ body: (RedisClient) async throws -> T
    ) async throws -> T {
        let redis = RedisClient(configuration: redisConfiguration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: logger)
        do {
            let result = try await body(redis)
            await redis.shutdown()
            return result
        } catch {
            await redis.shutdown()
            throw error
        }
    }

    private static func perform(
        _ command: Command, redis: RedisClient, redisConfiguration: RedisConfiguration, configuration: SluiceConfiguration,
        logger: Logger, output: @Sendable (String) -> Void
    ) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while !redis.isConnected {
            guard ContinuousClock.now < deadline else { throw WorkerSetupError(description: "Redis at \(redisConfiguration.url) does not answer") }
            try await Task.sleep(for: .milliseconds(20))
        }
        let queue = SluiceServer.makeJobQueue(configuration, redis: redis, logger: logger)
        switch command {
        case .list(let stateName, let user, let limit):
            var state: JobState?
            if let stateName {
                guard let parsed = JobState(rawValue: stateName.uppercased()) else {
                    throw WorkerSetupError(description: "state must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                state = parsed
            }
            let stats = try await queue.stats()
            let depth = JobPriority.allCases.map { "\($0.rawValue) \(stats.waiting[$0] ?? 0) waiting/\(stats.running[$0] ?? 0) running" }
            output("queue: \(depth.joined(separator: ", ")); \(stats.delayed) waiting to retry; workers alive: \(stats.workersAlive)")
            output("totals: \(stats.succeeded) succeeded, \(stats.failed) failed, \(stats.retried) retries, \(stats.cancelled) cancelled, \(stats.reclaimed) reclaimed")
            let records = try await queue.list(limit: limit, user: user, state: state)
            output(Self.row(["JOB", "KIND", "STATE", "PRI", "TRIES", "PROGRESS", "USER", "CREATED"]))
            for record in records {
                let progress = record.progress.map { "\($0.current)/\($0.total.map(String.init) ?? "?")" } ?? "-"
                let created = JobRecord.iso8601(record.createdAt)
                output(Self.row([record.id, record.kind, record.state.rawValue, record.priority.rawValue,
                                 "\(record.attempts)/\(record.maxAttempts)", progress, record.user, created]))
            }
        case .show(let id):
            var record = try await queue.get(id)
            // The archive, when there is one: never create an empty SQLite file just to look.
            var archived = true
            if case .sqlite(let path) = try configuration.storage.backend, !FileManager.default.fileExists(atPath: path) { archived = false }
            if record == nil, archived,
               let opened = try await OpenedStorage.open(configuration.storage, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger) {
                record = try? await StorageJobArchive(storage: opened.storage).archivedJob(id)
                await opened.storage.shutdown()
            }
            guard let record else { throw WorkerSetupError(description: "no job \(id)") }
            // The API's JSON, indented for a terminal.
            let object = try JSONSerialization.jsonObject(with: Data(record.json(inlineResultLimit: 4096).utf8))
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            output(String(decoding: data, as: UTF8.self))
        case .retry(let id):
            guard try await queue.retry(id) else {
                throw WorkerSetupError(description: "job \(id) is not FAILED or CANCELLED in Redis (only those can be retried)")
            }
            output("\(id): queued again")
        case .cancel(let id):
            switch try await queue.cancel(id, user: nil) {
            case .cancelled: output("\(id): cancelled (it had not started)")
            case .requested: output("\(id): cancel requested (its worker stops it within a heartbeat)")
            case .alreadyEnded(let record): output("\(id): already \(record.state.rawValue)")
            case .notFound: throw WorkerSetupError(description: "no job \(id)")
            }
        }
    }

    static func row(_ columns: [String]) -> String {
        let widths = [36, 8, 10, 7, 6, 9, 14, 24]
        return zip(columns, widths).map { column, width in
            column.count >= width ? column : column + String(repeating: " ", count: width - column.count)
        }.joined(separator: " ")
    }
}
