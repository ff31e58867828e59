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

/// How generations reach other instances: not at all (one node, the embedded default), or
/// through Redis.
public struct FanOut: Sendable {
    let broker: any Broker

    public static let singleNode = FanOut(broker: LocalBroker())

    /// Through the Redis of `redis` (URL with credentials, TLS, deadlines and bounds).
    public static func redis(
        _ redis: RedisConfiguration, instanceID: String, configuration: RedisBrokerConfiguration = .init(), eventLoop: any EventLoop, logger: Logger
    ) -> FanOut {
        FanOut(broker: RedisBroker(redis: redis, instanceID: instanceID, configuration: configuration, eventLoop: eventLoop, logger: logger))
    }

    public static func redis(
        url: RedisURL, instanceID: String, configuration: RedisBrokerConfiguration = .init(), eventLoop: any EventLoop, logger: Logger
    ) -> FanOut {
        Self.redis(RedisConfiguration(url: url), instanceID: instanceID, configuration: configuration, eventLoop: eventLoop, logger: logger)
    }

    /// Whether the shared part works now (Redis reachable); always true for one node.
    public var isHealthy: Bool { self.broker.isHealthy }
    public var isShared: Bool { self.broker.isShared }
    public func shutdown() async { await self.broker.shutdown() }
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
    let configuration: ChatConfiguration
    let router: InferenceRouter
    let history: ConversationHistory
    let hub: GenerationHub
    let metrics: ChatMetrics
    let broker: any Broker
    let presence = LocalPresence()
    let logger: Logger
    /// Spans per generation (a no-op unless tracing is configured).
    let tracer: any Tracer
    /// Authentication and rate limits.
    let policy: ChatPolicy
    /// Token quotas (with storage only).
    let quotas: QuotaGuard
    /// The job queue (with Redis only).
    let jobs: JobsGateway?
    /// Tools offered to the model (empty: none).
    let tools: ToolRegistry

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
        self.broker = fanOut.broker
        // A cancel from another instance for one of ours.
        // A generation whose shared copy missed writes is published again from here.
        self.broker.setLocalGenerations { generationID in hub.lookup(generationID) }
        // Queued messages survive this process: another instance writes them if it dies.
        if let queue = persistence.queue { self.broker.attachWriteQueue(queue) }
        self.broker.setCancelHandler { generationID in
            guard case .running(let loop, let generation)? = hub.lookup(generationID)?.state else { return }
            loop.execute { generation.value.cancel() }
        }
        self.history = ConversationHistory(
            memory: conversations, persistence: persistence, broker: fanOut.broker,
            contextMaxCharacters: configuration.contextMaxCharacters, logger: logger)
        self.logger = logger
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
    func traceParent(_ headers: HTTPHeaders) -> InstrumentationContext {
        var context = InstrumentationContext.topLevel
        self.tracer.extract(headers, into: &context, using: HTTPHeadersExtractor())
        return context
    }

    /// Whether the shared part (Redis) works now; always true for a single node.
    public var isSharedHealthy: Bool { self.broker.isHealthy }

    /// Context lookups answered by a cache (Redis, or this process's memory) and those that read
    /// the storage, since start.
    public var conversationCacheCounts: (hits: Int, misses: Int) { self.history.cacheCounts }

    /// After the server drained its connections: with a shared broker, generations were handed
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
    func presence(of user: String) async -> Result<[PresenceEntry], BrokerError> {
        let local = self.presence.sessions(of: user).map { PresenceEntry(instanceID: self.configuration.instanceID, sessionID: $0) }
        guard self.broker.isShared else { return .success(local) }
        return await self.broker.presence(of: user).map { Array(Set($0 + local)) }
    }

    /// The model announced in `session.ready`: the default upstream's.
    var defaultModel: String { self.router.defaultUpstream.engine.defaultModel }

    /// Authentication happens here, before the 101: a missing or bad credential is a 401 with a
    /// JSON body, never an upgraded socket.
    public func admit(_ request: UpgradeRequest) -> UpgradeAdmission {
        let address = self.policy.limiter.limits.clientAddress(request.head, peer: request.remoteAddress)
        if let refusal = self.policy.limiter.admitConnection(from: address) {
            return .refuse(ChatPolicy.refusal(refusal))
        }
        switch self.policy.identify(request.head) {
        case .success(let identity):
            return .admit(ChatPolicy.Admitted(identity: identity, address: address))
        case .failure(let failure):
            self.logger.notice("upgrade refused: not authenticated", metadata: ["sluice.reason": "\(failure.message)"])
            return .refuse(ChatPolicy.refusal(failure))
        }
    }

    public func makeDelegate(for connection: WebSocketConnectionInfo) -> any WebSocketConnectionDelegate {
        ChatSession(
            application: self, eventLoop: connection.eventLoop, admitted: connection.admission as? ChatPolicy.Admitted,
            trace: self.traceParent(connection.requestHead.headers))
    }
}

extension ChatApplication {
    /// Finds the conversation a `chat.send` continues (or makes a new one) and calls `completion`
    /// on `eventLoop`: at once when a cache answers, after a Redis or storage read otherwise.
    func resolveConversation(
        _ send: ClientMessage.ChatSend, user: String, on eventLoop: any EventLoop,
        completion: @escaping @Sendable (ConversationLookup) -> Void
    ) {
        if let answer = self.history.lookupWithoutWaiting(send.conversationID, user: user) {
            completion(answer)
            return
        }
        let history = self.history
        Task {
            let answer = await history.lookup(send.conversationID, user: user)
            eventLoop.execute { completion(answer) }
        }
    }

    /// Records the user message and prepares the generation in the resolved conversation;
    /// `startUpstream()` then starts it, and `generation.started` goes out once the upstream
    /// accepted the request. Fails (sending nothing) for an unknown model or a full write queue.
    /// The rate limits for a generation in `conversation` (requests, then tokens: the context
    /// plus up to `max_tokens`); `completion` runs on `eventLoop`. No limits: at once.
    func admitGeneration(
        _ send: ClientMessage.ChatSend, in conversation: ResolvedConversation, user: String, address: String,
        on eventLoop: any EventLoop, _ completion: @escaping (Result<Admission, AdmissionRefusal>) -> Void
    ) {
        let done = NIOLoopBound(completion, eventLoop: eventLoop)
        self.moderate(send.content, user: user, on: eventLoop) { [self] moderated in
            switch moderated {
            case .failure(let refusal):
                done.value(.failure(refusal))
            case .success(let content):
                self.admit(
                    user: user, address: address,
                    context: conversation.messages + [ChatMessage(role: .user, content: content)],
                    maxTokens: send.maxTokens ?? self.configuration.defaultMaxTokens, on: eventLoop
                ) { result in
                    done.value(result.map { var admission = $0; admission.content = content; return admission })
                }
            }
        }
    }

    /// The input filter (rules, injection markers), then the moderation service if configured.
    /// Success: the text to use (markers stripped); on `eventLoop`.
    func moderate(_ text: String, user: String, on eventLoop: any EventLoop, _ completion: @escaping (Result<String, AdmissionRefusal>) -> Void) {
        let rejected = AdmissionRefusal(code: .contentRejected, message: "the message was refused by the content policy", retryAfterMs: nil)
        let cleaned: String
        switch self.policy.inputFilter.check(text) {
        case .rejected(let rule):
            self.logger.notice("input refused", metadata: ["sluice.user": "\(user)", "sluice.rule": "\(rule)"])
            self.metrics.contentRejected.increment()
            completion(.failure(rejected))
            return
        case .allowed(let text):
            cleaned = text
        }
        guard let moderation = self.policy.moderation else {
            completion(.success(cleaned))
            return
        }
        let failOpen = self.policy.moderationFailOpen
        let logger = self.logger
        let counter = self.metrics.contentRejected
        let completion = NIOLoopBound(completion, eventLoop: eventLoop)
        moderation.check(cleaned, on: eventLoop).hop(to: eventLoop).whenComplete { result in
            let completion = completion.value
            switch result {
            case .success(let verdict) where verdict.flagged:
                logger.notice("input flagged by the moderation service", metadata: [
                    "sluice.user": "\(user)", "sluice.categories": "\(verdict.categories.joined(separator: ","))"])
                counter.increment()
                completion(.failure(rejected))
            case .success:
                completion(.success(cleaned))
            case .failure(let error):
                logger.warning("moderation service failed", metadata: ["sluice.error": "\(error)", "sluice.fail_open": "\(failOpen)"])
                completion(failOpen ? .success(cleaned)
                    : .failure(AdmissionRefusal(code: .unavailable, message: "the moderation service is unavailable; retry shortly", retryAfterMs: 1000)))
            }
        }
    }

    /// Rate limits, then the quota, for a generation with this context.
    func admit(
        user: String, address: String, context: [ChatMessage], maxTokens: Int,
        on eventLoop: any EventLoop, _ completion: @escaping (Result<Admission, AdmissionRefusal>) -> Void
    ) {
        let limiter = self.policy.limiter
        guard limiter.limits.limitsGenerations || self.history.persistence.isEnabled else {
            completion(.success(Admission(grant: .unlimited(maxTokens: maxTokens), quotaReserved: 0)))
            return
        }
        let prompt = Self.promptEstimate(context)
        let done = NIOLoopBound(completion, eventLoop: eventLoop)
        let quotas = self.quotas
        Task {
            let result: Result<Admission, AdmissionRefusal>
            switch await limiter.admit(user: user, address: address, promptTokens: prompt, maxTokens: maxTokens) {
            case .failure(let refusal):
                result = .failure(AdmissionRefusal(code: .rateLimited, message: refusal.message, retryAfterMs: refusal.retryAfterMs))
            case .success(let grant):
                switch await quotas.admit(user: user, promptTokens: prompt, grant: grant) {
                case .failure(let refusal):
                    limiter.settle(grant, usedTokens: 0)
                    result = .failure(AdmissionRefusal(code: .quotaExceeded, message: refusal.message, retryAfterMs: refusal.retryAfterMs))
                case .success(let (limited, reserved)):
                    result = .success(Admission(grant: limited, quotaReserved: reserved))
                }
            }
            eventLoop.execute { done.value(result) }
        }
    }

    /// What a generation may use (rate limits and quota), and what to give back at its end.
    struct Admission: Sendable {
        var grant: GenerationGrant
        var quotaReserved: Int
        /// The user's message as it goes upstream and into history (injection markers stripped).
        var content: String?
    }

    /// Why a generation may not start: `rate_limited` or `quota_exceeded`.
    struct AdmissionRefusal: Error, Sendable {
        var code: ErrorCode
        var message: String
        var retryAfterMs: Int64?
    }

    /// Gives back what an admitted generation did not use (or everything, if it never ran).
    func settle(_ admission: Admission, user: String, usedTokens: Int) {
        self.policy.limiter.settle(admission.grant, usedTokens: usedTokens)
        self.quotas.release(user: user, reserved: admission.quotaReserved)
    }

    /// Settles a generation whose usage no stored message carries (the OpenAI-compatible front
    /// door): its tokens go to the storage as a usage record (`UsageRecorder`, off the event
    /// loop, retried), and stay reserved in the quota until that record is stored or given up.
    func settle(_ admission: Admission, user: String, usedTokens: Int, recordingAs generationID: String) {
        if let recorder = self.history.persistence.usage, usedTokens > 0 {
            let quotas = self.quotas
            // Held before the admission's reservation goes: never uncounted in between.
            let held = quotas.hold(user: user, tokens: usedTokens)
            let record = UsageRecord(id: generationID, userExternalID: user, tokens: usedTokens)
            if !recorder.record(record, settled: { quotas.release(user: user, reserved: held) }) {
                quotas.release(user: user, reserved: held)
            }
        }
        self.settle(admission, user: user, usedTokens: usedTokens)
    }

    /// Tokens of a context, estimated (4 bytes a token plus a few per message), for limits and
    /// for usage when the upstream reports none.
    static func promptEstimate(_ messages: [ChatMessage]) -> Int {
        messages.reduce(0) { $0.addingSaturating($1.content.utf8.count / 4 + 4) }
    }

    func beginGeneration(
        _ send: ClientMessage.ChatSend, in conversation: ResolvedConversation, user: String, output: any ChatOutput,
        sessionID: String, trace parent: InstrumentationContext, admission: Admission, on eventLoop: any EventLoop
    ) -> Result<ChatGeneration, ProtocolViolation> {
        let grant = admission.grant
        let route: InferenceRouter.Route
        switch self.router.route(model: send.model, prompt: send.content) {
        case .success(let found): route = found
        case .failure(let unknown):
            self.settle(admission, user: user, usedTokens: 0)
            return .failure(ProtocolViolation(.notFound, unknown.message, requestID: send.requestID))
        }
        let model = route.model ?? route.upstream.engine.defaultModel
        let content = admission.content ?? send.content
        guard self.history.recordUserMessage(content, in: conversation, user: user, model: model) else {
            self.settle(admission, user: user, usedTokens: 0)
            return .failure(ProtocolViolation(
                .overloaded, "the history write queue is full (is the database down?); retry shortly", requestID: send.requestID))
        }
        let context = conversation.messages + [ChatMessage(role: .user, content: content)]
        var request = GenerationRequest(
            messages: context, model: route.model, maxTokens: grant.maxTokens, temperature: send.temperature)
        request.user = user
        if !self.tools.isEmpty { request.tools = self.tools.definitions(only: send.tools) }
        let generationID = Identifier.make("gen_")
        let startedAt = NIODeadline.now()
        let trace = GenerationTrace(
            tracer: self.tracer, parent: parent, model: model, upstream: route.upstream.name, generationID: generationID,
            conversationID: conversation.key, requestID: send.requestID, request: request, startedAt: startedAt)
        request.traceHeaders = trace.propagationHeaders(self.tracer)
        let generation = ChatGeneration(
            id: generationID, startedAt: startedAt, trace: trace, conversation: conversation, user: user, requestID: send.requestID,
            model: model, promptEstimate: Self.promptEstimate(context), grant: grant,
            settle: { [self] used in self.settle(admission, user: user, usedTokens: used) },
            output: output, engine: route.upstream.engine, request: request, eventLoop: eventLoop,
            history: self.history, hub: self.hub, broker: self.broker, ownerSessionID: sessionID,
            metrics: self.metrics.upstream(route.upstream.name), tools: request.tools.isEmpty ? nil : self.tools, logger: self.logger)
        return .success(generation)
    }

    /// The wire error for a conversation that could not be resolved.
    static func violation(for lookup: ConversationLookup, conversationID: String?, requestID: String?) -> (ProtocolViolation, retryAfterMs: Int64?)? {
        switch lookup {
        case .found: return nil
        case .notFound:
            return (ProtocolViolation(.notFound, "unknown conversation \(conversationID ?? "")", requestID: requestID), nil)
        case .unavailable(let reason):
            return (ProtocolViolation(.unavailable, reason, requestID: requestID), 1000)
        }
    }
}

/// Random identifiers such as `gen_3f9c…`: 64 random bits in hex.
enum Identifier {
    static func make(_ prefix: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next()
        let hex = String(value, radix: 16)
        return prefix + String(repeating: "0", count: 16 - hex.count) + hex
    }
}
