import Foundation
import HTTPAPI
import Inference
import Jobs
import Logging
import NIOCore
import NIOPosix
import Policy
import RedisClient
import ServiceLifecycle
import Sessions
import Storage
import Telemetry
import Tools
import Tracing
import WSServer

/// `sluice serve`: wires the configured application onto the WebSocket server and runs it as a
/// service group that drains on SIGTERM/SIGINT.
public enum SluiceServer {
    public static func run(configuration: SluiceConfiguration) async throws {
        SecretScrubber.register(configuration)
        LogOutput.bootstrap(configuration.logFormat)
        var logger = Logger(label: "sluice")
        logger.logLevel = Logger.Level(rawValue: configuration.logLevel) ?? .info
        // Before any listener or client exists: room for server.max_connections descriptors.
        DescriptorLimit.raise(maxConnections: configuration.server.maxConnections, logger: logger)
        // Resident memory that follows server.memory_budget (freed large buffers go back).
        AllocatorTuning.fixMmapThreshold(logger: logger)
        // First: metric handles are bound to the backend when they are made.
        let registry = MetricsExport.bootstrap()
        let application: any WebSocketApplication
        var httpRoutes: [any HTTPRouteProvider] = []
        // The loops outlive the server's drain: handed-off generations run on them.
        let threads = configuration.server.eventLoopThreads > 0 ? configuration.server.eventLoopThreads : System.coreCount
        let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        var fanOut = FanOut.singleNode
        var chatApplication: ChatApplication?
        var opened: OpenedStorage?
        var serverConfiguration = configuration.server
        // The per-address connection cap resolves clients like the rate limits do.
        serverConfiguration.forwardedForHops = configuration.limits.forwardedForHops
        // One byte budget for the server's buffers and the chat layer's answers.
        let memoryBudget = MemoryBudget(limit: configuration.server.memoryBudget)
        var rateLimitRedis: RedisClient?
        var pools: [ReplicaPool] = []
        var jobsRedis: RedisClient?
        var jobsGateway: JobsGateway?
        var jobServices: [ServiceGroupConfiguration.ServiceConfiguration] = []
        let instanceID = configuration.instanceID ?? Self.generatedInstanceID()
        var exporter: OTLPExporter?
        if let endpoint = configuration.tracing.otlpEndpoint {
            var settings = OTLPExporter.Configuration(endpoint: endpoint)
            settings.serviceName = configuration.tracing.serviceName
            settings.serviceInstanceID = instanceID
            settings.headers = (try? configuration.tracing.parsedHeaders.get()) ?? [:]
            exporter = try OTLPExporter(configuration: settings, eventLoopGroup: eventLoopGroup, logger: logger)
            logger.notice("traces exported over OTLP/HTTP", metadata: [
                "sluice.endpoint": "\(Redaction.url(endpoint))", "sluice.sample_ratio": "\(configuration.tracing.sampleRatio)"])
        }
        let tracer: any Tracer = exporter.map { OTLPTracer(exporter: $0, sampleRatio: configuration.tracing.sampleRatio) } ?? NoOpTracer()
        if configuration.echo {
            application = EchoApplication()
            logger.notice("echo mode: /v1/ws echoes every message")
        } else {
            var chat = configuration.chat
            chat.instanceID = instanceID
            chat.quotaPeriod = configuration.quotas.period
            chat.heartbeatMs = configuration.server.heartbeatInterval.nanoseconds / 1_000_000
            let (madeRouter, madePools) = try await Self.makeRouter(configuration, logger: logger)
            var router = madeRouter
            pools = madePools
            let redisConfiguration = try Self.redisConfiguration(configuration, logger: logger)
            // One Redis connection for the limits and the response cache (not the fan-out's).
            if let redisConfiguration, configuration.limits.limitsGenerations || configuration.cache.enabled {
                rateLimitRedis = RedisClient(configuration: redisConfiguration, eventLoop: eventLoopGroup.next(), logger: logger)
            }
            if let redis = rateLimitRedis, configuration.cache.enabled {
                router = InferenceRouter(
                    upstreams: router.upstreams.map { upstream in
                        .init(name: upstream.name, engine: ResponseCachingEngine(
                            wrapping: upstream.engine, upstream: upstream.name, redis: redis,
                            keyPrefix: configuration.redis.broker.keyPrefix, settings: configuration.cache.response))
                    },
                    auto: router.auto)
                logger.notice("response cache on (deterministic requests)", metadata: [
                    "sluice.ttl": "\(configuration.cache.response.ttl.nanoseconds / 1_000_000_000)s"])
            }
            if let redisConfiguration {
                fanOut = .redis(
                    redisConfiguration, instanceID: chat.instanceID, configuration: configuration.redis.broker,
                    // On the server's own loops: with one thread, publishing needs no thread hop.
                    eventLoop: eventLoopGroup.next(), logger: logger)
                // The URL's description masks the password.
                logger.notice("fan-out through Redis", metadata: ["sluice.redis": "\(redisConfiguration.url)", "sluice.instance": "\(chat.instanceID)"])
            } else {
                logger.notice("single node (no Redis configured)", metadata: ["sluice.instance": "\(chat.instanceID)"])
            }
            opened = try await OpenedStorage.open(configuration.storage, eventLoopGroup: eventLoopGroup, logger: logger)
            if let opened {
                logger.notice("conversations stored", metadata: ["sluice.storage": "\(opened.description)"])
            } else {
                logger.notice("conversations not stored (storage.database_url: memory)")
            }
            let limiter = GenerationLimiter(
                limits: configuration.limits,
                limiter: RateLimiter(
                    redis: configuration.limits.limitsGenerations ? rateLimitRedis : nil, keyPrefix: configuration.redis.broker.keyPrefix,
                    logger: logger))
            let policy = try await Self.makePolicy(configuration, limiter: limiter, logger: logger)
            let tools = try Self.makeTools(configuration.tools, eventLoopGroup: eventLoopGroup, logger: logger)
            if let redisConfiguration {
                let redis = RedisClient(configuration: redisConfiguration, eventLoop: eventLoopGroup.next(), logger: logger)
                jobsRedis = redis
                let queue = Self.makeJobQueue(configuration, redis: redis, logger: logger)
                let handlers = Self.makeJobHandlers(configuration, router: router, eventLoopGroup: eventLoopGroup)
                let archive = opened.map { StorageJobArchive(storage: $0.storage) }
                jobsGateway = JobsGateway(queue: queue, handlers: handlers, archive: archive, eventLoop: eventLoopGroup.next(), logger: logger)
                jobServices.append(.init(service: JobQueueMonitor(queue: queue)))
                if configuration.jobs.workersInServe > 0 {
                    var settings = JobWorkerConfiguration(workerID: instanceID)
                    settings.concurrency = configuration.jobs.workersInServe
                    settings.shutdownGrace = configuration.jobs.shutdownGrace
                    jobServices.append(.init(service: JobWorker(queue: queue, handlers: handlers, archive: archive, configuration: settings, logger: logger)))
                    jobServices.append(.init(service: JobScheduler(queue: queue, schedules: configuration.jobs.schedules, logger: logger)))
                }
                logger.notice("job queue on Redis Streams", metadata: [
                    "sluice.kinds": "\(handlers.kinds.joined(separator: ","))", "sluice.workers_in_serve": "\(configuration.jobs.workersInServe)"])
            } else {
                logger.notice("jobs off (they need redis.url)")
            }
            let chatApp = ChatApplication(
                configuration: chat, router: router,
                conversations: ConversationMemory(maxContextCharacters: chat.contextMaxCharacters), fanOut: fanOut,
                persistence: opened?.persistence ?? .none, tracer: tracer, policy: policy, jobs: jobsGateway, tools: tools,
                memoryBudget: memoryBudget, logger: logger)
            chatApplication = chatApp
            application = chatApp
            httpRoutes = [ChatStreamRoutes(application: chatApp), OpenAIRoutes(application: chatApp)]
            // Hand-off: clients are told to reconnect at once; their generations stream on
            // through Redis from here until they end.
            if fanOut.isShared { serverConfiguration.drain.gracePeriod = .zero }
        }
        let redisGates = fanOut.isShared && configuration.redis.readyRequiresRedis
        let migrated = opened?.migrated
        let readiness: (@Sendable () -> String?)? = { [fanOut] in
            if let migrated, !migrated.isDone { return "storage schema not ready (database unreachable?)" }
            if redisGates && !fanOut.isHealthy { return "redis unreachable" }
            return nil
        }
        // Without authentication any page could use the gateway through its visitor's browser:
        // then only loopback pages may, unless server.allowed_origins says otherwise.
        serverConfiguration.defaultOrigins = configuration.auth.isEnabled ? .any : .loopbackOnly
        let server = try WebSocketServer(
            configuration: serverConfiguration, application: application, httpRoutes: RouteList(providers: httpRoutes),
            eventLoopGroup: eventLoopGroup, readiness: readiness, memoryBudget: memoryBudget, logger: logger)
        let admin = try await Self.startAdminListener(
            configuration,
            routes: [MetricsRoute(registry: registry, beforeScrape: { memoryBudget.recordMetrics() })]
                + (chatApplication.map { [AdminRoutes(application: $0)] } ?? []),
            publicServer: server, readiness: readiness, eventLoopGroup: eventLoopGroup, logger: logger)
        // Started in this order, stopped in the reverse: the server drains first, then handed-off
        // generations finish, then the queue and the usage records write what is left, then the
        // storage closes.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        // Redis closes after everything else has stopped: the drain's hand-off, the write
        // journal (the queue's flush) and /ready (fan-out health) use it to the end. Closed in
        // this order: fan-out, limits and cache, job events, job queue.
        if let jobsRedis { services.append(.init(service: jobsRedis)) }
        if let jobsGateway { services.append(.init(service: jobsGateway)) }
        if let rateLimitRedis { services.append(.init(service: rateLimitRedis)) }
        services.append(.init(service: fanOut))
        // Stopped (nearly) last of all: /metrics and /ready keep answering through the whole drain.
        if let admin { services.append(.init(service: admin)) }
        // Stopped (nearly) last: spans of generations that end during the drain still go out.
        if let exporter { services.append(.init(service: exporter)) }
        if let opened {
            services.append(.init(service: StorageService(opened: opened, quotas: configuration.quotas, logger: logger)))
            services.append(.init(service: StorageWritesService(queue: opened.queue, usage: opened.usage)))
        }
        if let chatApplication {
            services.append(.init(service: GenerationDrainService(
                application: chatApplication, handoffDeadline: configuration.redis.handoffDeadline, shared: fanOut.isShared)))
        }
        if pools.contains(where: { $0.hasHealthChecks }) {
            services.append(.init(service: HealthCheckService(
                pools: pools, interval: configuration.upstream.healthCheckInterval, eventLoopGroup: eventLoopGroup)))
        }
        // Workers stop before the storage closes (they archive finished jobs).
        services.append(contentsOf: jobServices)
        services.append(.init(service: server))
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        var failure: (any Error)?
        do {
            try await group.run()
        } catch {
            failure = error
        }
        try? await eventLoopGroup.shutdownGracefully()
        if let failure { throw failure }
    }

    /// The admin listener (`admin:`), bound now so that a taken port fails the start-up and the
    /// address is logged (`admin listener`, `sluice.admin_port`) before anything else listens.
    /// The same HTTP machinery as the public listener, without a WebSocket endpoint; its `/ready`
    /// follows the public listener's (503 while that drains).
    static func startAdminListener(
        _ configuration: SluiceConfiguration, routes: [any HTTPRouteProvider], publicServer: WebSocketServer,
        readiness: (@Sendable () -> String?)?, eventLoopGroup: any EventLoopGroup, logger: Logger
    ) async throws -> WebSocketServer? {
        guard configuration.admin.enabled else {
            logger.notice("admin listener off (admin.enabled: false): /metrics and /v1/stats are served nowhere")
            return nil
        }
        var settings = WebSocketServerConfiguration()
        settings.host = configuration.admin.host
        settings.port = configuration.admin.port
        settings.handshakeTimeout = configuration.server.handshakeTimeout
        settings.maxConnections = 64
        // Operators' tools send no Origin; a web page (whatever server.allowed_origins says) is
        // not one of them.
        settings.defaultOrigins = .loopbackOnly
        settings.drain.gracePeriod = .zero
        settings.drain.deadline = .seconds(5)
        // Its own (default) memory budget: a public listener at its limit must not starve /metrics.
        var adminLogger = logger
        adminLogger[metadataKey: "sluice.listener"] = "admin"
        let server = try WebSocketServer(
            configuration: settings, application: NoWebSocketApplication(), httpRoutes: RouteList(providers: routes),
            eventLoopGroup: eventLoopGroup,
            readiness: { publicServer.isDraining ? "draining" : readiness?() },
            logger: adminLogger)
        let address = try await server.start()
        logger.notice("admin listener", metadata: [
            "sluice.address": "\(address)", "sluice.admin_port": "\(address.port ?? 0)",
            "sluice.routes": "/metrics /v1/stats /v1/presence?user= /health /ready",
        ])
        if !Self.isLoopback(configuration.admin.host) {
            logger.notice("the admin listener is not on loopback: keep its port off the internet (it has no authentication)",
                          metadata: ["sluice.admin_host": "\(configuration.admin.host)"])
        }
        return server
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// Authentication from the `auth:` settings (key files are read now), or the development
    /// stand-in when nothing is configured, which is said loudly.
    static func makePolicy(_ configuration: SluiceConfiguration, limiter: GenerationLimiter, logger: Logger) async throws -> ChatPolicy {
        var policy = try await Self.makeAuthenticationPolicy(configuration, limiter: limiter, logger: logger)
        let moderation = configuration.moderation
        policy.inputFilter = try InputFilter(rules: moderation.rules, injectionMarkers: moderation.injectionMarkers, injectionAction: moderation.injectionAction)
        if let endpoint = moderation.endpoint, let url = URL(string: endpoint) {
            var client = ModerationClient.Configuration(baseURL: url, apiKey: moderation.apiKey, model: moderation.model)
            client.timeout = moderation.timeout
            policy.moderation = try ModerationClient(configuration: client)
            policy.moderationFailOpen = moderation.failOpen
        }
        logger.notice("input checks", metadata: [
            "sluice.rules": "\(moderation.rules.count)", "sluice.injection_markers": "\(moderation.injectionMarkers.count) (\(moderation.injectionAction.rawValue))",
            "sluice.moderation_service": "\(moderation.endpoint.map(Redaction.url) ?? "none")",
        ])
        return policy
    }

    static func makeAuthenticationPolicy(_ configuration: SluiceConfiguration, limiter: GenerationLimiter, logger: Logger) async throws -> ChatPolicy {
        let limits = configuration.limits
        logger.notice("limits", metadata: [
            "sluice.requests_per_minute": "user \(limits.requestsPerMinutePerUser), ip \(limits.requestsPerMinutePerIP)",
            "sluice.tokens_per_minute": "user \(limits.tokensPerMinutePerUser), ip \(limits.tokensPerMinutePerIP)",
            "sluice.connections_per_second_per_ip": "\(limits.connectionsPerSecondPerIP)",
            "sluice.messages_per_second_per_connection": "\(limits.messagesPerSecondPerConnection)",
            "sluice.shared": "\(configuration.redis.url != nil && limits.limitsGenerations)",
        ])
        let settings = configuration.auth
        guard settings.isEnabled else {
            logger.warning("authentication is OFF (no auth keys configured): clients name themselves with ?user= or X-Sluice-User; configure --jwt-secret-file (or SLUICE_JWT_SECRET) or auth.keys for production")
            return ChatPolicy(authenticator: nil, limiter: limiter)
        }
        var authentication = Authenticator.Configuration()
        if let secret = try settings.resolvedJWTSecret() {
            SecretScrubber.register([secret])
            authentication.keys.append(JWTKeySpec(algorithm: "HS256", material: .secret(secret)))
        }
        for key in settings.keys {
            let material: JWTKeySpec.Material
            if let secret = key.secret {
                material = .secret(secret)
            } else if let pem = key.publicKey {
                material = .publicKeyPEM(pem)
            } else {
                let path = key.publicKeyFile ?? ""
                guard let pem = try? String(contentsOfFile: path, encoding: .utf8) else {
                    throw Authenticator.SetupError(description: "auth.keys: cannot read public_key_file \(path)")
                }
                material = .publicKeyPEM(pem)
            }
            authentication.keys.append(JWTKeySpec(kid: key.kid, algorithm: key.algorithm, material: material))
        }
        if let path = settings.jwksFile {
            guard let json = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw Authenticator.SetupError(description: "auth.jwks_file: cannot read \(path)")
            }
            authentication.jwksJSON = json
        }
        authentication.apiKeys = settings.apiKeys.compactMap(APIKeySpec.init(entry:))
        authentication.leeway = TimeInterval(settings.leeway.nanoseconds) / 1_000_000_000
        authentication.issuer = settings.issuer
        authentication.audience = settings.audience
        authentication.queryParameter = settings.queryParameter
        authentication.requireExpiry = settings.requireExpiry
        let authenticator = try await Authenticator.make(authentication)
        logger.notice("authentication on", metadata: [
            "sluice.jwt_keys": "\(authentication.keys.count)", "sluice.jwks": "\(settings.jwksFile ?? "none")",
            "sluice.api_keys": "\(authentication.apiKeys.count)",
        ])
        return ChatPolicy(authenticator: authenticator, closeOnExpiry: settings.closeOnExpiry, limiter: limiter)
    }

    /// The configured upstreams: the named list, or the single `upstream`.
    static func makeRouter(_ configuration: SluiceConfiguration, logger: Logger) async throws -> (InferenceRouter, [ReplicaPool]) {
        var circuit = CircuitBreaker.Settings()
        circuit.failureThreshold = configuration.upstream.circuitFailureThreshold
        circuit.openDuration = configuration.upstream.circuitOpenDuration
        guard !configuration.upstreams.isEmpty else {
            let upstream = configuration.upstream
            let engine = try await Self.makeEngine(
                NamedUpstream(name: "default", kind: upstream.kind, baseURL: upstream.baseURL, model: upstream.model, apiKey: upstream.apiKey),
                configuration, logger: logger)
            // One replica: no failover, but its failures are still counted and fail fast while its circuit is open.
            let pool = ReplicaPool(name: "default", replicas: [ReplicaSpec(name: "default", engine: engine)], circuit: circuit, logger: logger)
            return (InferenceRouter(single: pool), [pool])
        }
        // Entries sharing a pool name are replicas of one model; pools keep the list's order.
        var order: [String] = []
        var replicas: [String: [ReplicaSpec]] = [:]
        for named in configuration.upstreams {
            let engine = try await Self.makeEngine(named, configuration, logger: logger)
            let healthURL = named.healthPath.flatMap { path in named.baseURL.flatMap { URL(string: $0) }?.appendingPathComponent(String(path.dropFirst())) }
            if replicas[named.poolName] == nil { order.append(named.poolName) }
            replicas[named.poolName, default: []].append(
                ReplicaSpec(name: named.name, engine: engine, healthURL: healthURL, maxConcurrency: named.maxConcurrency))
        }
        let pools = order.map { ReplicaPool(name: $0, replicas: replicas[$0]!, circuit: circuit, logger: logger) }
        logger.notice("upstream pools", metadata: [
            "sluice.pools": "\(pools.map { "\($0.name) [\($0.replicaNames.joined(separator: ", "))]" }.joined(separator: "; "))",
            "sluice.default": "\(pools[0].name)",
        ])
        return (InferenceRouter(upstreams: pools.map { .init(name: $0.name, engine: $0) }, auto: configuration.autoRouting), pools)
    }

    /// One upstream's engine. An OpenAI-compatible server without a configured model is asked
    /// for its model list now, so the first client already sees the real name.
    static func makeEngine(_ upstream: NamedUpstream, _ configuration: SluiceConfiguration, logger: Logger) async throws -> any InferenceEngine {
        let timeouts = UpstreamTimeouts(
            connect: configuration.upstream.connectTimeout, timeToFirstToken: configuration.upstream.firstTokenTimeout,
            betweenTokens: configuration.upstream.betweenTokensTimeout)
        let name: Logger.MetadataValue = "\(upstream.name)"
        switch upstream.kind {
        case .sim:
            let engine = SimulatorEngine(configuration: configuration.simulator)
            logger.notice("upstream: built-in simulator (not a model)", metadata: ["sluice.upstream": name, "sluice.model": "\(engine.defaultModel)"])
            return engine
        case .openai:
            guard let url = URL(string: upstream.baseURL ?? "") else { throw UpstreamConfigurationError.invalidBaseURL(Redaction.url(upstream.baseURL ?? "")) }
            let engine = try OpenAICompatibleEngine(configuration: .init(
                baseURL: url, model: upstream.model, apiKey: upstream.apiKey, timeouts: timeouts))
            if upstream.model == nil {
                do {
                    let model = try await engine.discoverModel(on: MultiThreadedEventLoopGroup.singleton.next()).get()
                    logger.notice("upstream model discovered", metadata: ["sluice.upstream": name, "sluice.model": "\(model)"])
                } catch {
                    logger.warning("upstream model discovery failed; will retry on the first request",
                                   metadata: ["sluice.upstream": name, "sluice.error": "\(error)"])
                }
            }
            logger.notice("upstream: OpenAI-compatible", metadata: [
                "sluice.upstream": name, "sluice.url": "\(Redaction.url(url.absoluteString))", "sluice.model": "\(engine.defaultModel)"])
            return engine
        case .triton:
            guard let url = URL(string: upstream.baseURL ?? "") else { throw UpstreamConfigurationError.invalidBaseURL(Redaction.url(upstream.baseURL ?? "")) }
            let engine = try TritonEngine(configuration: .init(
                baseURL: url, model: upstream.model ?? "ensemble", apiKey: upstream.apiKey, timeouts: timeouts))
            logger.notice("upstream: Triton generate_stream", metadata: [
                "sluice.upstream": name, "sluice.url": "\(Redaction.url(url.absoluteString))", "sluice.model": "\(engine.defaultModel)"])
            return engine
        }
    }

    /// The tools of `tools.enabled`, built-in or webhooks.
    static func makeTools(_ settings: ToolSettings, eventLoopGroup: any EventLoopGroup, logger: Logger) throws -> ToolRegistry {
        var registry = ToolRegistry()
        for name in settings.enabled {
            switch name {
            case "current_time": try registry.register(CurrentTimeTool(), timeout: settings.timeout)
            case "calculator": try registry.register(CalculatorTool(), timeout: settings.timeout)
            case "http_get":
                try registry.register(
                    HTTPGetTool(
                        allowedHosts: settings.httpGetAllowedHosts, allowedNetworks: settings.httpGetAllowedNetworks, timeout: settings.timeout,
                        eventLoopGroup: eventLoopGroup),
                    timeout: settings.timeout)
            default:
                guard let hook = settings.webhooks.first(where: { $0.name == name }), let url = URL(string: hook.url) else { continue }
                let timeout = hook.timeout ?? settings.timeout
                try registry.register(
                    WebhookTool(name: hook.name, description: hook.description, parameters: hook.parameters, url: url,
                                timeout: timeout, eventLoopGroup: eventLoopGroup),
                    timeout: timeout)
            }
        }
        if !registry.isEmpty {
            logger.notice("tools offered to the model", metadata: ["sluice.tools": "\(registry.names.joined(separator: ", "))"])
        }
        return registry
    }

    /// The Redis client settings from `redis.*` (nil without `redis.url`); warns when TLS
    /// certificates are not verified.
    static func redisConfiguration(_ configuration: SluiceConfiguration, logger: Logger) throws -> RedisConfiguration? {
        guard let redis = try configuration.redis.clientConfiguration() else { return nil }
        if redis.url.usesTLS && !redis.tls.verifiesCertificates {
            logger.warning("redis.tls.verify is false: the Redis server's certificate is not checked, so anyone on the network path can pose as it")
        }
        return redis
    }

    static func makeJobQueue(_ configuration: SluiceConfiguration, redis: RedisClient, logger: Logger) -> JobQueue {
        var settings = configuration.jobs.queue
        settings.keyPrefix = configuration.redis.broker.keyPrefix
        return JobQueue(redis: redis, configuration: settings, logger: logger)
    }

    /// The job kinds every gateway and worker knows.
    static func makeJobHandlers(_ configuration: SluiceConfiguration, router: InferenceRouter, eventLoopGroup: any EventLoopGroup) -> JobHandlers {
        JobHandlers([
            EchoJob(), DemoJob(),
            ReportJob(router: router, eventLoopGroup: eventLoopGroup, parallelSections: configuration.jobs.reportParallelSections),
        ])
    }

    /// `hostname-pid`: unique per process on a host, readable in logs.
    static func generatedInstanceID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
    }
}

/// `sluice token` and `sluice hash-key`: credentials for development and for the `auth:` settings.
public enum Credentials {
    public static func developmentToken(secret: String, subject: String, expiresIn seconds: Int) async throws -> String {
        try await DevelopmentToken.mint(secret: secret, subject: subject, expiresIn: TimeInterval(seconds))
    }

    /// What goes after `user:` in `auth.api_keys`.
    public static func apiKeyHash(_ key: String) -> String { APIKeySpec.hash(key) }
}

/// Checks the pools' replicas with a `health_path` until shutdown.
struct HealthCheckService: Service {
    let pools: [ReplicaPool]
    let interval: TimeAmount
    let eventLoopGroup: any EventLoopGroup

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            for pool in self.pools where pool.hasHealthChecks {
                group.addTask { await pool.runHealthChecks(every: self.interval, on: self.eventLoopGroup) }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }
}
