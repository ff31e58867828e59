import Inference
import Jobs
import Logging
import Tools
import Policy
import NIOHTTP1
import Tracing
import NIOCore
import RedisClient
import ServiceLifecycle
import SluiceProtocol
import Storage
import WSServer

/// Settings of the chat protocol.
public struct ChatConfiguration: Sendable, Equatable {
    /// This instance's name in `session.ready`.
    public var instanceID: String
    /// `max_tokens` sent upstream when the client gives none.
    public var defaultMaxTokens: Int = 1024
    /// Largest `content` accepted (bytes); bigger gets `too_large`.
    public var maxContentBytes: Int = RequestLimits.defaultMaxContentBytes
    /// The ceiling for a client's `max_tokens` / `max_completion_tokens` on every front door;
    /// above it the request is refused (`invalid_message`, HTTP 400) with a message naming it.
    public var maxTokensLimit: Int = RequestLimits.defaultMaxTokensLimit
    /// Generations one connection may run at once; beyond it `overloaded`.
    public var maxGenerationsPerConnection: Int = 4
    /// Cancel a connection's generations when it disconnects (default: let them finish).
    public var cancelOnDisconnect: Bool = false
    /// Heartbeat interval announced in `session.ready`.
    public var heartbeatMs: Int64 = 20_000
    /// How long an ended generation can still be resumed (`generation.resume`).
    public var resumeRetention: TimeAmount = .minutes(5)
    /// Ended generations kept for resuming at most (oldest forgotten first).
    public var maxRetainedGenerations: Int = 10_000
    /// The stored messages sent upstream with a new one: the newest within this many characters.
    public var contextMaxCharacters: Int = 16_000
    /// How far a token quota's `reset_at` moves at each reset (set from `quotas.period`).
    public var quotaPeriod: TimeAmount = .hours(24 * 30)

    public init(instanceID: String) {
        self.instanceID = instanceID
    }

    /// What the request decoders check client input against.
    public var requestLimits: RequestLimits {
        RequestLimits(maxContentBytes: self.maxContentBytes, maxTokensLimit: self.maxTokensLimit)
    }
}

/// How generations, the conversation cache and presence reach other instances: not at all (one
/// node, the embedded default), or through Redis.
public struct FanOut: Sendable {
    /// Generations of other instances, and this one's for them.
    let generations: any GenerationFanOut
    /// The conversation cache the instances share (nil: one node, `ConversationHistory` caches in memory).
    let conversations: (any ConversationCache)?
    /// Which instance holds which user's connections (nil: one node, `LocalPresence` knows them all).
    let presence: (any PresenceDirectory)?
    /// The Redis connections and liveness under the three (nil: one node).
    private let node: RedisNode?

    public static let singleNode = FanOut(generations: LocalGenerationFanOut(), conversations: nil, presence: nil, node: nil)

    /// Through the Redis of `redis` (URL with credentials, TLS, deadlines and bounds).
    public static func redis(
        _ redis: RedisConfiguration, instanceID: String, configuration: RedisBrokerConfiguration = .init(), eventLoop: any EventLoop, logger: Logger
    ) -> FanOut {
        let node = RedisNode(redis: redis, instanceID: instanceID, configuration: configuration, eventLoop: eventLoop, logger: logger)
        return FanOut(generations: node.generations, conversations: node.conversations, presence: node.presence, node: node)
    }

    public static func redis(
        url: RedisURL, instanceID: String, configuration: RedisBrokerConfiguration = .init(), eventLoop: any EventLoop, logger: Logger
    ) -> FanOut {
        Self.redis(RedisConfiguration(url: url), instanceID: instanceID, configuration: configuration, eventLoop: eventLoop, logger: logger)
    }

    /// Whether the shared part works now (Redis reachable); always true for one node.
    public var isHealthy: Bool { self.node?.isHealthy ?? true }
    public var isShared: Bool { self.generations.isShared }
    public func shutdown() async { await self.node?.shutdown() }

    /// Journals what `queue` holds in the shared store until it is written, so that another
    /// instance writes it if this one dies (and this one writes what dead ones left).
    func attachWriteQueue(_ queue: WriteBehindQueue) { self.node?.attachWriteQueue(queue) }
}

/// In the service group, the fan-out's Redis connections outlive everything put after it
/// (the drain, the write journal's flush): `run()` waits for graceful shutdown, then closes them.
extension FanOut: Service {
    public func run() async throws {
        try? await gracefulShutdown()
        await self.shutdown()
    }
}

/// The `sluice.v1` chat protocol on top of the WebSocket data plane.
public struct ChatApplication: WebSocketApplication {
    package let configuration: ChatConfiguration
    package let router: InferenceRouter
    package let history: ConversationHistory
    let hub: GenerationHub
    let metrics: ChatMetrics
    /// Generations of other instances, and this one's for them.
    let generationFanOut: any GenerationFanOut
    /// Where other instances learn of this one's connections (nil: one node).
    let sharedPresence: (any PresenceDirectory)?
    private let fanOut: FanOut
    let presence = LocalPresence()
    package let logger: Logger
    /// Spans per generation (a no-op unless tracing is configured).
    let tracer: any Tracer
    /// Authentication and rate limits.
    package let policy: ChatPolicy
    /// Token quotas (with storage only).
    let quotas: QuotaGuard
    /// The job queue (with Redis only).
    package let jobs: JobsGateway?
    /// Tools offered to the model (empty: none).
    let tools: ToolRegistry
    /// The one generation pipeline every front door starts generations through.
    package let starter: GenerationStarter

    public init(
        configuration: ChatConfiguration, router: InferenceRouter, conversations: ConversationMemory,
        fanOut: FanOut = .singleNode, persistence: Persistence = .none, tracer: any Tracer = NoOpTracer(),
        policy: ChatPolicy = .open, jobs: JobsGateway? = nil, tools: ToolRegistry = .empty, memoryBudget: MemoryBudget = .unlimited(),
        logger: Logger
    ) {
        self.jobs = jobs
        self.tools = tools
        self.tracer = tracer
        self.policy = policy
        var reservations: (@Sendable (String) async -> Int)?
        if let queue = jobs?.queue {
            reservations = { user in
                // Unreachable Redis: the jobs' reservations are not known now; chats go on.
                (try? await queue.reservedTokens(user: user)) ?? 0
            }
        }
        self.quotas = QuotaGuard(persistence: persistence, period: configuration.quotaPeriod, jobReservations: reservations, logger: logger)
        self.configuration = configuration
        self.router = router
        let metrics = ChatMetrics()
        self.metrics = metrics
        let hub = GenerationHub(
            retention: configuration.resumeRetention, maxRetained: configuration.maxRetainedGenerations, metrics: metrics, budget: memoryBudget)
        self.hub = hub
        self.fanOut = fanOut
        self.generationFanOut = fanOut.generations
        self.sharedPresence = fanOut.presence
        // A cancel from another instance for one of ours.
        // A generation whose shared copy missed writes is published again from here.
        fanOut.generations.setLocalGenerations { generationID in hub.lookup(generationID) }
        // Queued messages survive this process: another instance writes them if it dies.
        if let queue = persistence.queue { fanOut.attachWriteQueue(queue) }
        fanOut.generations.setCancelHandler { generationID in
            guard case .running(let loop, let generation)? = hub.lookup(generationID)?.state else { return }
            loop.execute { generation.value.cancel() }
        }
        self.history = ConversationHistory(
            memory: conversations, persistence: persistence, sharedCache: fanOut.conversations,
            contextMaxCharacters: configuration.contextMaxCharacters, logger: logger)
        self.logger = logger
        self.starter = GenerationStarter(
            configuration: configuration, router: router, history: self.history, hub: hub, fanOut: fanOut.generations, metrics: metrics,
            policy: policy, quotas: self.quotas, tools: tools, tracer: tracer, logger: logger)
    }

    /// One upstream for everything.
    public init(
        configuration: ChatConfiguration, engine: any InferenceEngine, conversations: ConversationMemory,
        persistence: Persistence = .none, logger: Logger
    ) {
        self.init(
            configuration: configuration, router: InferenceRouter(single: engine), conversations: conversations,
            persistence: persistence, logger: logger)
    }

    /// The trace a client's request continues (its `traceparent`), else a new one.
    package func traceParent(_ headers: HTTPHeaders) -> InstrumentationContext {
        var context = InstrumentationContext.topLevel
        self.tracer.extract(headers, into: &context, using: HTTPHeadersExtractor())
        return context
    }

    /// Whether the shared part (Redis) works now; always true for a single node.
    public var isSharedHealthy: Bool { self.fanOut.isHealthy }

    /// Context lookups answered by a cache (Redis, or this process's memory) and those that read
    /// the storage, since start.
    public var conversationCacheCounts: (hits: Int, misses: Int) { self.history.cacheCounts }

    /// After the server drained its connections: with a shared fan-out, generations were handed
    /// off (clients resume them on other instances through Redis), so wait for them to finish,
    /// up to `deadline`; whatever still runs then ends with `owner_lost`. Single node: the drain
    /// already cancelled them.
    public func finishGenerations(deadline: TimeAmount) async {
        let until = NIODeadline.now() + deadline
        var running = self.hub.running
        if !running.isEmpty {
            self.logger.notice("waiting for handed-off generations", metadata: ["sluice.generations": "\(running.count)"])
        }
        while !running.isEmpty && NIODeadline.now() < until {
            try? await Task.sleep(for: .milliseconds(50))
            running = self.hub.running
        }
        for entry in running {
            guard case .running(let loop, let generation) = entry.state else { continue }
            try? await loop.submit { generation.value.abandon() }.get()
        }
        if !running.isEmpty {
            self.logger.warning("generations cut off at the drain deadline", metadata: ["sluice.generations": "\(running.count)"])
        }
    }

    /// The user's open connections: this instance's, and with Redis every live instance's.
    package func presence(of user: String) async -> Result<[PresenceEntry], BrokerError> {
        let local = self.presence.sessions(of: user).map { PresenceEntry(instanceID: self.configuration.instanceID, sessionID: $0) }
        guard let shared = self.sharedPresence else { return .success(local) }
        return await shared.presence(of: user).map { Array(Set($0 + local)) }
    }

    /// The model announced in `session.ready`: the default upstream's.
    var defaultModel: String { self.router.defaultUpstream.engine.defaultModel }

    /// Authentication happens here, before the 101: a missing or bad credential is a 401 with a
    /// JSON body, never an upgraded socket.
    public func admit(_ request: UpgradeRequest) -> UpgradeAdmission {
        switch self.policy.admitCaller(request.head, peer: request.remoteAddress, countsAsConnection: true) {
        case .success(let admitted):
            return .admit(admitted)
        case .failure(let refusal):
            if case .credential(let failure) = refusal {
                self.logger.notice("upgrade refused: not authenticated", metadata: ["sluice.reason": "\(failure.message)"])
            }
            return .refuse(refusal.httpRefusal)
        }
    }

    public func makeDelegate(for connection: WebSocketConnectionInfo) -> any WebSocketConnectionDelegate {
        ChatSession(
            application: self, eventLoop: connection.eventLoop, admitted: connection.admission as? ChatPolicy.Admitted,
            trace: self.traceParent(connection.requestHead.headers))
    }
}
