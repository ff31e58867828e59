import Foundation
import Inference
import Logging
import NIOCore
import Policy
import SluiceProtocol
import Storage
import Tools
import Tracing

/// What a front door asks to generate, in its terms turned into the pipeline's.
package struct GenerationOrder: Sendable {
    package enum Conversation: Sendable {
        /// `sluice.v1` (WebSocket, SSE): continue the stored conversation (nil: a new one) with
        /// this user message; both turns are kept.
        case stored(conversationID: String?, content: String)
        /// The OpenAI-compatible door: the request carries the whole context, and nothing is
        /// kept as a conversation (the usage is recorded on its own).
        case ephemeral(messages: [ChatMessage])
    }

    package var conversation: Conversation
    package var requestID: String?
    /// nil: the router's default (or `auto`).
    package var model: String?
    /// nil: `chat.default_max_tokens`.
    package var maxTokens: Int?
    package var temperature: Double?
    /// Which gateway tools to offer by name (nil: all of them).
    package var gatewayTools: [String]?
    /// The client's own tools: offered instead of the gateway's, and their calls go back to the
    /// client (`tool_calls`), which runs them and sends the results in its next request.
    package var clientTools: [ToolDefinition] = []
    package var toolChoice: ToolChoice?
    /// The generation's id starts with this (`chatcmpl-` for the OpenAI door, whose clients see it).
    package var idPrefix = "gen_"

    package init(
        conversation: Conversation, requestID: String? = nil, model: String? = nil, maxTokens: Int? = nil, temperature: Double? = nil,
        gatewayTools: [String]? = nil, clientTools: [ToolDefinition] = [], toolChoice: ToolChoice? = nil, idPrefix: String = "gen_"
    ) {
        self.conversation = conversation
        self.requestID = requestID
        self.model = model
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.gatewayTools = gatewayTools
        self.clientTools = clientTools
        self.toolChoice = toolChoice
        self.idPrefix = idPrefix
    }
}

/// Who asks, as the front door identified them.
package struct GenerationCaller: Sendable {
    /// The user whose conversation and limits it is (the anonymous user without authentication).
    package var user: String
    /// The client's address, for per-address limits.
    package var address: String
    /// The connection or request it came on (logs, the hub's owner).
    package var sessionID: String
    /// The trace it continues (the client's `traceparent`), else a new one.
    package var trace: InstrumentationContext

    package init(user: String, address: String, sessionID: String, trace: InstrumentationContext) {
        self.user = user
        self.address = address
        self.sessionID = sessionID
        self.trace = trace
    }
}

/// Why a generation did not start, as one typed error every front door maps to its wire:
/// `not_found` (conversation or model), `unavailable`, `content_rejected`, `rate_limited`,
/// `quota_exceeded`, `overloaded`, or the upstream's refusal.
package struct GenerationRefusal: Error, Sendable, Equatable {
    package var code: ErrorCode
    package var message: String
    package var retryAfterMs: Int64?
    package var requestID: String?
}

/// What a front door says when the pipeline is about to make the generation (after the checks,
/// which may have waited on Redis or the storage).
package enum GenerationStartCheck: Equatable {
    case ready
    /// The client left meanwhile: what was reserved goes back, nothing is sent.
    case gone
    case refused(GenerationRefusal)
}

/// The front door's side of starting: where the pipeline's outcome goes.
package protocol GenerationRequester: GenerationOutput {
    /// Asked once the checks passed, right before the generation is made.
    func readyToStart(_ order: GenerationOrder) -> GenerationStartCheck
    /// The generation is made; its upstream request starts right after this returns.
    func generationStarting(_ generation: ChatGeneration)
    /// It did not start (nothing was reserved, or what was is given back).
    func generationRefused(_ refusal: GenerationRefusal)
}

extension GenerationRequester {
    package func readyToStart(_ order: GenerationOrder) -> GenerationStartCheck { self.isConnected ? .ready : .gone }
}

/// What a generation may use (rate limits and quota), and what to give back at its end.
struct GenerationAdmission: Sendable {
    var grant: GenerationGrant
    var quotaReserved: Int
}

/// The one pipeline every front door uses: it resolves the conversation, admits (the input
/// filter and moderation, rate limits, the quota), routes, records the user's message, prepares
/// tools and the trace, and starts the generation with the front door as its output, or tells
/// the front door why not. The steps that wait (Redis, the storage, the moderation service)
/// answer on the caller's event loop, where the generation then runs.
package struct GenerationStarter: Sendable {
    let configuration: ChatConfiguration
    let router: InferenceRouter
    let history: ConversationHistory
    let hub: GenerationHub
    let fanOut: any GenerationFanOut
    let metrics: ChatMetrics
    let policy: ChatPolicy
    let quotas: QuotaGuard
    let tools: ToolRegistry
    let tracer: any Tracer
    let logger: Logger

    /// Starts `order` for `caller`, with `output` as the generation's output; on `eventLoop`
    /// (the output's), where every answer to `output` is given.
    package func start(_ order: GenerationOrder, for caller: GenerationCaller, output: any GenerationRequester, on eventLoop: any EventLoop) {
        eventLoop.preconditionInEventLoop()
        let requester = NIOLoopBound(output, eventLoop: eventLoop)
        self.resolve(order, user: caller.user, on: eventLoop) { [self] lookup in
            switch lookup {
            case .failure(let refusal):
                requester.value.generationRefused(refusal)
            case .success(let conversation):
                self.admit(order, in: conversation, caller: caller, on: eventLoop) { result in
                    switch result {
                    case .failure(let refusal):
                        requester.value.generationRefused(refusal)
                    case .success(let (admission, context)):
                        self.begin(order, in: conversation, context: context, caller: caller, admission: admission,
                                   output: requester.value, on: eventLoop)
                    }
                }
            }
        }
    }

    // MARK: The conversation

    /// The stored conversation the order continues (or a new one), from a cache at once or after
    /// a Redis or storage read; an ephemeral one at once. `completion` runs on `eventLoop`.
    private func resolve(
        _ order: GenerationOrder, user: String, on eventLoop: any EventLoop,
        completion: @escaping @Sendable (Result<ResolvedConversation, GenerationRefusal>) -> Void
    ) {
        guard case .stored(let conversationID, _) = order.conversation else {
            completion(.success(.ephemeral()))
            return
        }
        let requestID = order.requestID
        let answer: @Sendable (ConversationLookup) -> Void = { lookup in
            switch lookup {
            case .found(let conversation):
                completion(.success(conversation))
            case .notFound:
                completion(.failure(GenerationRefusal(code: .notFound, message: "unknown conversation \(conversationID ?? "")", requestID: requestID)))
            case .unavailable(let reason):
                completion(.failure(GenerationRefusal(code: .unavailable, message: reason, retryAfterMs: 1000, requestID: requestID)))
            }
        }
        if let found = self.history.lookupWithoutWaiting(conversationID, user: user) {
            answer(found)
            return
        }
        let history = self.history
        Task {
            let found = await history.lookup(conversationID, user: user)
            eventLoop.execute { answer(found) }
        }
    }

    // MARK: Admission

    /// The input checks, then the rate limits and the quota for the whole context plus up to
    /// `max_tokens`. Success: what was reserved, and the context as it goes upstream (the stored
    /// part, then the order's messages with input markers stripped). `completion` runs on `eventLoop`.
    private func admit(
        _ order: GenerationOrder, in conversation: ResolvedConversation, caller: GenerationCaller, on eventLoop: any EventLoop,
        _ completion: @escaping (Result<(GenerationAdmission, context: [ChatMessage]), GenerationRefusal>) -> Void
    ) {
        let done = NIOLoopBound(completion, eventLoop: eventLoop)
        let requestID = order.requestID
        let maxTokens = order.maxTokens ?? self.configuration.defaultMaxTokens
        switch self.checkInput(order, in: conversation, user: caller.user) {
        case .failure(let refusal):
            completion(.failure(refusal.with(requestID: requestID)))
        case .success(let (context, moderated)):
            let admit: @Sendable () -> Void = { [self] in
                self.admit(user: caller.user, address: caller.address, context: context, maxTokens: maxTokens, on: eventLoop) { result in
                    done.value(result.map { ($0, context) }.mapError { $0.with(requestID: requestID) })
                }
            }
            guard let moderated else {
                admit()
                return
            }
            self.moderate(moderated, user: caller.user, on: eventLoop) { result in
                switch result {
                case .failure(let refusal): done.value(.failure(refusal.with(requestID: requestID)))
                case .success: admit()
                }
            }
        }
    }

    /// Every user message the order adds through the input filter (rules, injection markers
    /// stripped): the context to send, and the text for the moderation service if there is one
    /// (the newest user message).
    private func checkInput(
        _ order: GenerationOrder, in conversation: ResolvedConversation, user: String
    ) -> Result<([ChatMessage], moderated: String?), GenerationRefusal> {
        var added: [ChatMessage]
        switch order.conversation {
        case .stored(_, let content): added = [ChatMessage(role: .user, content: content)]
        case .ephemeral(let messages): added = messages
        }
        for index in added.indices where added[index].role == .user {
            switch self.policy.inputFilter.check(added[index].content) {
            case .rejected(let rule):
                self.logger.notice("input refused", metadata: ["sluice.user": "\(user)", "sluice.rule": "\(rule)"])
                self.metrics.contentRejected.increment()
                return .failure(Self.contentRejected)
            case .allowed(let cleaned):
                added[index].content = cleaned
            }
        }
        let moderated = self.policy.moderation == nil ? nil : added.last(where: { $0.role == .user })?.content
        return .success((conversation.messages + added, moderated))
    }

    static let contentRejected = GenerationRefusal(code: .contentRejected, message: "the message was refused by the content policy")

    /// The moderation service's verdict on `text`, on `eventLoop`.
    private func moderate(_ text: String, user: String, on eventLoop: any EventLoop, _ completion: @escaping (Result<Void, GenerationRefusal>) -> Void) {
        guard let moderation = self.policy.moderation else {
            completion(.success(()))
            return
        }
        let failOpen = self.policy.moderationFailOpen
        let logger = self.logger
        let counter = self.metrics.contentRejected
        let completion = NIOLoopBound(completion, eventLoop: eventLoop)
        moderation.check(text, on: eventLoop).hop(to: eventLoop).whenComplete { result in
            let completion = completion.value
            switch result {
            case .success(let verdict) where verdict.flagged:
                logger.notice("input flagged by the moderation service", metadata: [
                    "sluice.user": "\(user)", "sluice.categories": "\(verdict.categories.joined(separator: ","))"])
                counter.increment()
                completion(.failure(Self.contentRejected))
            case .success:
                completion(.success(()))
            case .failure(let error):
                logger.warning("moderation service failed", metadata: ["sluice.error": "\(error)", "sluice.fail_open": "\(failOpen)"])
                completion(failOpen ? .success(())
                    : .failure(GenerationRefusal(code: .unavailable, message: "the moderation service is unavailable; retry shortly", retryAfterMs: 1000)))
            }
        }
    }

    /// Rate limits, then the quota, for a generation with this context.
    func admit(
        user: String, address: String, context: [ChatMessage], maxTokens: Int,
        on eventLoop: any EventLoop, _ completion: @escaping (Result<GenerationAdmission, GenerationRefusal>) -> Void
    ) {
        let limiter = self.policy.limiter
        guard limiter.limits.limitsGenerations || self.history.persistence.isEnabled else {
            completion(.success(GenerationAdmission(grant: .unlimited(maxTokens: maxTokens), quotaReserved: 0)))
            return
        }
        let prompt = Self.promptEstimate(context)
        let done = NIOLoopBound(completion, eventLoop: eventLoop)
        let quotas = self.quotas
        Task {
            let result: Result<GenerationAdmission, GenerationRefusal>
            switch await limiter.admit(user: user, address: address, promptTokens: prompt, maxTokens: maxTokens) {
            case .failure(let refusal):
                result = .failure(GenerationRefusal(code: .rateLimited, message: refusal.message, retryAfterMs: refusal.retryAfterMs))
            case .success(let grant):
                switch await quotas.admit(user: user, promptTokens: prompt, grant: grant) {
                case .failure(let refusal):
                    limiter.settle(grant, usedTokens: 0)
                    result = .failure(GenerationRefusal(code: .quotaExceeded, message: refusal.message, retryAfterMs: refusal.retryAfterMs))
                case .success(let (limited, reserved)):
                    result = .success(GenerationAdmission(grant: limited, quotaReserved: reserved))
                }
            }
            eventLoop.execute { done.value(result) }
        }
    }

    /// Gives back what an admitted generation did not use (or everything, if it never ran).
    func settle(_ admission: GenerationAdmission, user: String, usedTokens: Int) {
        self.policy.limiter.settle(admission.grant, usedTokens: usedTokens)
        self.quotas.release(user: user, reserved: admission.quotaReserved)
    }

    /// Settles a generation whose usage no stored message carries (an ephemeral conversation):
    /// its tokens go to the storage as a usage record (`UsageRecorder`, off the event loop,
    /// retried), and stay reserved in the quota until that record is stored or given up.
    func settle(_ admission: GenerationAdmission, user: String, usedTokens: Int, recordingAs generationID: String) {
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

    // MARK: The generation

    /// Routes, records the user's message, and starts the generation if the front door still
    /// wants it; whatever fails gives the admission back.
    private func begin(
        _ order: GenerationOrder, in conversation: ResolvedConversation, context: [ChatMessage], caller: GenerationCaller,
        admission: GenerationAdmission, output: any GenerationRequester, on eventLoop: any EventLoop
    ) {
        // The newest user message: what the router's `auto` classifies, and what a stored conversation records.
        let prompt = context.last(where: { $0.role == .user })?.content ?? ""
        let user = caller.user
        switch output.readyToStart(order) {
        case .ready:
            break
        case .gone:
            self.settle(admission, user: user, usedTokens: 0)
            return
        case .refused(let refusal):
            self.settle(admission, user: user, usedTokens: 0)
            output.generationRefused(refusal)
            return
        }
        let route: InferenceRouter.Route
        switch self.router.route(model: order.model, prompt: prompt) {
        case .success(let found): route = found
        case .failure(let unknown):
            self.settle(admission, user: user, usedTokens: 0)
            output.generationRefused(GenerationRefusal(code: .notFound, message: unknown.message, requestID: order.requestID))
            return
        }
        let model = route.model ?? route.upstream.engine.defaultModel
        if conversation.isKept, !self.history.recordUserMessage(prompt, in: conversation, user: user, model: model)
        {
            self.settle(admission, user: user, usedTokens: 0)
            output.generationRefused(GenerationRefusal(
                code: .overloaded, message: "the history write queue is full (is the database down?); retry shortly",
                retryAfterMs: 1000, requestID: order.requestID))
            return
        }
        var request = GenerationRequest(messages: context, model: route.model, maxTokens: admission.grant.maxTokens, temperature: order.temperature)
        request.user = user
        request.toolChoice = order.toolChoice
        let toolMode: GenerationStateMachine.ToolMode
        if !order.clientTools.isEmpty {
            request.tools = order.clientTools
            toolMode = .client
        } else if !self.tools.isEmpty {
            request.tools = self.tools.definitions(only: order.gatewayTools)
            toolMode = request.tools.isEmpty ? .none : .gateway
        } else {
            toolMode = .none
        }
        let generationID = Identifier.make(order.idPrefix)
        let startedAt = NIODeadline.now()
        let trace = GenerationTrace(
            tracer: self.tracer, parent: caller.trace, model: model, upstream: route.upstream.name, generationID: generationID,
            conversationID: conversation.key, requestID: order.requestID, request: request, startedAt: startedAt)
        request.traceHeaders = trace.propagationHeaders(self.tracer)
        let kept = conversation.isKept
        let generation = ChatGeneration(
            id: generationID, startedAt: startedAt, trace: trace, conversation: conversation, user: user, requestID: order.requestID,
            model: model, promptEstimate: Self.promptEstimate(context), grant: admission.grant,
            settle: { [self] used in
                if kept {
                    self.settle(admission, user: user, usedTokens: used)
                } else {
                    self.settle(admission, user: user, usedTokens: used, recordingAs: generationID)
                }
            },
            output: output, engine: route.upstream.engine, request: request, eventLoop: eventLoop,
            history: self.history, hub: self.hub, fanOut: self.fanOut, ownerSessionID: caller.sessionID,
            metrics: self.metrics.upstream(route.upstream.name), toolMode: toolMode,
            tools: toolMode == .gateway ? self.tools : nil, logger: self.logger)
        output.generationStarting(generation)
        generation.startUpstream()
    }
}

extension GenerationRefusal {
    init(code: ErrorCode, message: String, retryAfterMs: Int64? = nil) {
        self.init(code: code, message: message, retryAfterMs: retryAfterMs, requestID: nil)
    }

    func with(requestID: String?) -> GenerationRefusal {
        var refusal = self
        refusal.requestID = requestID
        return refusal
    }
}

extension ResolvedConversation {
    /// A conversation for one request only: a fresh id (for the hub, traces, tool logs), never stored.
    static func ephemeral() -> ResolvedConversation {
        let id = UUID()
        return ResolvedConversation(id: id, key: id.uuidString.lowercased(), messages: [], isNew: true, isKept: false)
    }
}

/// Random identifiers such as `gen_3f9c…`: 64 random bits in hex.
package enum Identifier {
    package static func make(_ prefix: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next()
        let hex = String(value, radix: 16)
        return prefix + String(repeating: "0", count: 16 - hex.count) + hex
    }
}
