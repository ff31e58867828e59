import Foundation
import Jobs
import Logging
import NIOCore
import NIOPosix
import RedisClient
import ServiceLifecycle
import WSServer

/// `sluice worker`: runs jobs from the queue (and the configured schedules) with the same
/// upstreams as the gateway. Scale out by starting more, anywhere that reaches Redis. Serves
/// `/health`, `/ready` and `/metrics` on `server.port`; WebSocket upgrades are refused.
public enum SluiceWorker {
    public static func run(configuration: SluiceConfiguration, concurrency: Int?) async throws {
        SecretScrubber.register(configuration)
        LogOutput.bootstrap(configuration.logFormat)
        var logger = Logger(label: "sluice.worker")
        logger.logLevel = Logger.Level(rawValue: configuration.logLevel) ?? .info
        let registry = MetricsExport.bootstrap()
        guard let redisConfiguration = try SluiceServer.redisConfiguration(configuration, logger: logger) else {
            throw WorkerSetupError(description: "sluice worker needs redis.url (--redis-url or SLUICE_REDIS_URL): the job queue lives in Redis")
        }
        let threads = configuration.server.eventLoopThreads > 0 ? configuration.server.eventLoopThreads : System.coreCount
        let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let workerID = configuration.instanceID ?? SluiceServer.generatedInstanceID()
        let (router, pools) = try await SluiceServer.makeRouter(configuration, logger: logger)
        let redis = RedisClient(configuration: redisConfiguration, eventLoop: eventLoopGroup.next(), logger: logger)
        let opened = try await OpenedStorage.open(configuration.storage, eventLoopGroup: eventLoopGroup, logger: logger)
        let queue = SluiceServer.makeJobQueue(configuration, redis: redis, logger: logger)
        let handlers = SluiceServer.makeJobHandlers(configuration, router: router, eventLoopGroup: eventLoopGroup)
        var settings = JobWorkerConfiguration(workerID: workerID)
        settings.concurrency = concurrency ?? configuration.jobs.workerConcurrency
        settings.shutdownGrace = configuration.jobs.shutdownGrace
        let worker = JobWorker(
            queue: queue, handlers: handlers, archive: opened.map { StorageJobArchive(storage: $0.storage) },
            configuration: settings, logger: logger)
        let readiness: @Sendable () -> String? = {
            if let migrated = opened?.migrated, !migrated.isDone { return "storage schema not ready (database unreachable?)" }
            return redis.isConnected ? nil : "redis unreachable"
        }
        var serverSettings = configuration.server
        serverSettings.drain.gracePeriod = .zero
        let server = try WebSocketServer(
            configuration: serverSettings, application: NoWebSocketApplication(), httpRoutes: RouteList(providers: [MetricsRoute(registry: registry)]),
            eventLoopGroup: eventLoopGroup, readiness: readiness, logger: logger)
        // First, so stopped last: the queue, the worker and the scheduler use it to the end.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: redis)]
        if let opened {
            services.append(.init(service: StorageService(opened: opened, quotas: configuration.quotas, logger: logger)))
        }
        if pools.contains(where: { $0.hasHealthChecks }) {
            services.append(.init(service: HealthCheckService(
                pools: pools, interval: configuration.upstream.healthCheckInterval, eventLoopGroup: eventLoopGroup)))
        }
        services.append(.init(service: JobQueueMonitor(queue: queue)))
        services.append(.init(service: JobScheduler(queue: queue, schedules: configuration.jobs.schedules, logger: logger)))
        services.append(.init(service: worker))
        services.append(.init(service: server))
        try await queue.ensureGroupsWhenReachable(logger: logger)
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        var failure: (any Error)?
        do {
            try await group.run()
        } catch {
            failure = error
        }
        try? await eventLoopGroup.shutdownGracefully()
        if let failure { throw failure }
    }
}

struct WorkerSetupError: Error, CustomStringConvertible {
    var description: String
}

/// A listener that speaks HTTP only: a worker's (health and metrics) and the admin listener.
struct NoWebSocketApplication: WebSocketApplication {
    func admit(_ request: UpgradeRequest) -> UpgradeAdmission {
        .refuse(HTTPRefusal(status: .notFound, body: #"{"type":"error","code":"not_found","message":"no WebSocket endpoint on this listener"}"#))
    }

    func makeDelegate(for connection: WebSocketConnectionInfo) -> any WebSocketConnectionDelegate {
        EchoApplication().makeDelegate(for: connection)
    }
}

extension JobQueue {
    /// Creates the consumer groups, waiting (a few seconds at most) for Redis to answer; a
    /// worker that starts before Redis creates them later, on its first NOGROUP.
    func ensureGroupsWhenReachable(logger: Logger) async throws {
        for attempt in 1...20 {
            do {
                try await self.ensureGroups()
                return
            } catch {
                if attempt == 1 { logger.notice("waiting for Redis to create the job queue's groups", metadata: ["sluice.error": "\(error)"]) }
                try await Task.sleep(nanoseconds: 250_000_000)
            }
        }
    }
}
