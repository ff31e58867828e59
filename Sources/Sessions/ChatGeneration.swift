import Foundation
import Logging
import Inference
import NIOCore
import Policy
import SluiceProtocol
import Storage
import Tools
import WSServer

/// Where a generation's messages go: a WebSocket session or an SSE response.
protocol ChatOutput: AnyObject {
    /// False once the client is gone (its messages are then dropped; the generation goes on).
    var isConnected: Bool { get }
    /// False while the client is behind.
    var isWritable: Bool { get }
    /// Queues one message encoded by `encode` (without flushing).
    func writeMessage(_ encode: (inout ByteBuffer) -> Void)
    /// Queues one message only if the client is connected and keeping up, and says whether it
    /// did: the per-delta path, one call instead of three.
    func writeMessageIfWritable(_ encode: (inout ByteBuffer) -> Void) -> Bool
    func flush()
    /// The generation sent its `generation.done` (or ended while the client was gone).
    func generationEnded(_ generation: ChatGeneration)
    /// The upstream failed before accepting the request: nothing was generated, so the client
    /// gets an `error` (with `retry_after_ms` when retrying may help) instead of a generation.
    func generationFailedToStart(_ generation: ChatGeneration, error: InferenceError)
}

/// One generation as the client sees it: contiguous `seq`s, deltas merged while the client is
/// behind (with `first_seq`), exactly one `generation.done` with usage that is always present.
final class ChatGeneration: GenerationSink {
    let id: String
    let conversationID: String
    private let conversationUUID: UUID
    /// Whose conversation it is (the answer is stored under this user).
    private let user: String
    let requestID: String?
    let model: String
    /// Strong on purpose: a generation outlives its connection (it may be resumed); the
    /// output ↔ generation cycle ends when the generation ends.
    private let output: any ChatOutput
    private var handle: (any GenerationHandle)?
    private var ended = false
    /// `generation.started` was sent (the upstream accepted the request).
    private var announced = false
    /// The answer is replayed from the response cache.
    private var cached = false

    /// Last seq assigned to a chunk.
    private var seq: Int64 = 0
    /// Chunks not yet written because the connection was not writable: merged into one delta.
    private var pendingText = ""
    private var pendingFirstSeq: Int64?
    /// UTF-8 bytes of `pendingText`.
    private var pendingBytes = 0
    /// What the answer (the resume log) and the held-back text hold of the memory budget;
    /// handed to the hub with the answer when it ends.
    private var charge = MemoryCharge(.generation)
    /// The memory budget had no room for more of the answer: it ends with `overloaded` at the
    /// end of this read.
    private var overBudget = false
    /// The whole answer so far, for the conversation (bytes: appending is cheaper than to a String).
    private var answerBytes = ByteBuffer()
    var answer: String { String(buffer: self.answerBytes) }
    /// `{"type":"generation.delta","generation_id":"…","seq":` encoded once per generation.
    private let deltaPrefix: ByteBuffer
    private var upstreamUsage: (prompt: Int, completion: Int)?
    private let promptEstimate: Int
    /// What the rate limits let it use; settled (unused tokens given back) at the end.
    private let grant: GenerationGrant
    /// Gives back what the limits and the quota reserved and this generation did not use.
    private let settle: (_ usedTokens: Int) -> Void
    /// The answer reached its `max_tokens` (the client's, or less when a budget cut it) or its
    /// byte bound: the rest of the upstream's text is dropped and the generation ends with
    /// `length` at the end of this read (with an error saying which budget, if one did).
    private var budgetReached = false
    /// `GenerationRequest.maxAnswerBytes` for this generation's `max_tokens`.
    private let maxAnswerBytes: Int

    private let engine: any InferenceEngine
    /// Grows by an assistant turn and the tool results each time the model calls tools.
    private var request: GenerationRequest
    private let eventLoop: any EventLoop
    /// The tools offered (`request.tools`) and their runner; nil when none are.
    private let tools: ToolRegistry?
    /// Calls the upstream asked for in the current turn (run when it finishes).
    private var pendingToolCalls: [ToolCall] = []
    private var toolRounds = 0
    /// Rounds of tool calls per generation; then the model must answer.
    static let maximumToolRounds = 4
    private var toolTask: Task<Void, Never>?
    /// Where the current turn's text starts in `answerBytes`.
    private var turnStart = 0
    private var earlierTurnsCompletion = 0
    private let history: ConversationHistory
    /// Timings and outcomes, per upstream (one clock read per upstream read, none per token).
    private let metrics: ChatMetrics.Upstream
    private let startedAt: NIODeadline
    private let trace: GenerationTrace
    private let logger: Logger

    /// The generation's, conversation's, session's and request's ids, for every line about it
    /// (built only when a line is actually logged: swift-log takes metadata as an autoclosure).
    private func ids(_ extra: Logger.Metadata) -> Logger.Metadata {
        var metadata: Logger.Metadata = [
            "sluice.generation": "\(self.id)", "sluice.conversation": "\(self.conversationID)",
            "sluice.session": "\(self.ownerSessionID)",
        ]
        if let requestID = self.requestID { metadata["sluice.request"] = "\(requestID)" }
        return metadata.merging(extra) { _, new in new }
    }
    private var lastReadAt: NIODeadline?
    private var cancelRequestedAt: NIODeadline?

    /// Where other connections find it (resume, cancel, conversation watchers).
    private let hub: GenerationHub
    /// Other instances (Redis), when shared: one publish per upstream read.
    private let broker: any Broker
    private let publishesToBroker: Bool
    /// Last seq handed to the broker.
    private var brokerSeq: Int64 = 0
    private let ownerSessionID: String
    /// `tokenEnds[i]`: where seq `i + 1` ends in `answerBytes`, so any seq can be replayed.
    private var tokenEnds: [Int32] = []
    /// Sessions following it from elsewhere; `endOnly` ones (a canceller) get just the end.
    private var followers: [(follower: GenerationFollower, endOnly: Bool)] = []
    /// Last seq handed to followers (they get one merged update per upstream read).
    private var followersSeq: Int64 = 0
    private var finalEnd: GenerationEnd?

    init(
        id: String, startedAt: NIODeadline, trace: GenerationTrace, conversation: ResolvedConversation, user: String, requestID: String?, model: String, promptEstimate: Int,
        grant: GenerationGrant, settle: @escaping (_ usedTokens: Int) -> Void,
        output: any ChatOutput, engine: any InferenceEngine, request: GenerationRequest, eventLoop: any EventLoop,
        history: ConversationHistory,
        hub: GenerationHub, broker: any Broker, ownerSessionID: String, metrics: ChatMetrics.Upstream, tools: ToolRegistry? = nil,
        logger: Logger
    ) {
        self.tools = tools
        self.metrics = metrics
        self.grant = grant
        self.maxAnswerBytes = GenerationRequest.maxAnswerBytes(forTokens: grant.maxTokens)
        self.settle = settle
        self.startedAt = startedAt
        self.trace = trace
        self.logger = logger
        self.hub = hub
        self.broker = broker
        self.publishesToBroker = broker.isShared
        self.ownerSessionID = ownerSessionID
        self.engine = engine
        self.request = request
        self.eventLoop = eventLoop
        self.history = history
        self.user = user
        self.conversationUUID = conversation.id
        self.id = id
        self.conversationID = conversation.key
        self.requestID = requestID
        self.model = model
        self.promptEstimate = promptEstimate
        self.output = output
        var prefix = ByteBuffer()
        ServerMessageEncoder.generationDeltaPrefix(generationID: id, into: &prefix)
        self.deltaPrefix = prefix
    }

    /// Starts the upstream request on the output's event loop (chunks arrive with no hop).
    func startUpstream() {
        guard !self.ended else { return }
        let handle = self.engine.startGeneration(self.request, on: self.eventLoop, sink: self)
        if self.ended { handle.cancel() } else { self.handle = handle }
    }

    func cancel() {
        guard !self.ended else { return }
        self.cancelRequestedAt = .now()
        self.trace.cancelRequested()
        // Cancelled before the upstream answered (drain, disconnect): still a generation to the client.
        self.announce()
        self.handle?.cancel()
        self.handle = nil
        self.toolTask?.cancel()
        self.toolTask = nil
        self.end(.cancelled, error: nil)
    }

    // MARK: GenerationSink

    func generationWasCached() {
        self.cached = true
    }

    func generationDidConnect() {
        self.metrics.upstreamRequest(status: "ok")
        self.trace.upstreamAccepted()
        self.logger.debug("generation started", metadata: self.ids(["sluice.model": "\(self.model)"]))
        self.announce()
    }

    var info: GenerationInfo {
        GenerationInfo(generationID: self.id, conversationID: self.conversationID, requestID: self.requestID, model: self.model)
    }

    /// Sends `generation.started` once, and from then on other connections can find it.
    private func announce() {
        guard !self.announced, !self.ended else { return }
        self.announced = true
        self.hub.register(GenerationHub.Entry(
            generationID: self.id, conversationID: self.conversationID, user: self.user, ownerSessionID: self.ownerSessionID,
            state: .running(eventLoop: self.eventLoop, generation: NIOLoopBound(self, eventLoop: self.eventLoop))))
        if self.publishesToBroker { self.broker.publishStarted(self.info, user: self.user) }
        guard self.output.isConnected else { return }
        self.output.writeMessage { buffer in
            ServerMessageEncoder.generationStarted(
                generationID: self.id, conversationID: self.conversationID, requestID: self.requestID,
                model: self.model, into: &buffer)
        }
        self.output.flush()
    }

    func generationDidProduce(_ text: Substring) {
        guard !self.ended, !self.budgetReached, !self.overBudget else { return }
        // An upstream that goes past max_tokens, or past the byte bound, is cut: this text is
        // dropped and the generation ends with `length` at the end of the read.
        if self.seq >= Int64(self.grant.maxTokens) || self.answerBytes.readableBytes.addingSaturating(text.utf8.count) > self.maxAnswerBytes {
            self.budgetReached = true
            return
        }
        if !self.announced { self.announce() }
        if self.seq == 0 {
            self.metrics.timeToFirstToken.recordInterval(since: self.startedAt)
            self.trace.firstToken()
        }
        let seq = self.seq + 1
        self.seq = seq
        if text.utf8.withContiguousStorageIfAvailable({ self.answerBytes.writeBytes($0) }) == nil {
            self.answerBytes.writeSubstring(text)
        }
        self.tokenEnds.append(Int32(truncatingIfNeeded: self.answerBytes.writerIndex))
        self.chargeAnswer()
        // Counted here, not after the stream: the budget is never overshot (a chunk is a token
        // for the OpenAI-compatible servers; the upstream was also asked for at most this many).
        if self.grant.cutByBudget && seq >= Int64(self.grant.maxTokens) { self.budgetReached = true }
        if self.pendingFirstSeq == nil {
            let prefix = self.deltaPrefix
            let written = self.output.writeMessageIfWritable { buffer in
                ServerMessageEncoder.generationDelta(prefix: prefix, seq: seq, firstSeq: nil, text: text.utf8, into: &buffer)
            }
            if written { return }
            // Not connected: nothing to hold back (the answer is kept above).
            guard self.output.isConnected else { return }
            self.pendingFirstSeq = seq
        }
        self.pendingText += text
        self.pendingBytes += text.utf8.count
        self.chargeAnswer()
    }

    /// Keeps the budget's charge at least what the answer and the held-back text take (in
    /// 16 KiB steps: one reservation per step, not per token). No room: `overBudget`.
    private func chargeAnswer() {
        let held = self.answerBytes.capacity + self.tokenEnds.capacity * MemoryLayout<Int32>.size + self.pendingBytes
        guard held > self.charge.held else { return }
        if !self.charge.grow(to: held, granule: 16 * 1024, in: self.hub.budget) { self.overBudget = true }
    }

    func generationDidReportUsage(promptTokens: Int, completionTokens: Int) {
        self.upstreamUsage = (promptTokens, completionTokens)
    }

    func generationDidEndBatch() {
        if self.overBudget && !self.ended {
            self.handle?.cancel()
            self.handle = nil
            self.hub.countOverBudget()
            self.logger.warning("generation ended: the memory budget is exhausted", metadata: self.ids([
                "sluice.budget_used": "\(self.hub.budget.used)", "sluice.budget_limit": "\(self.hub.budget.limit)"]))
            self.end(.error, failure: GenerationError(code: .overloaded, message: "the server's memory budget is exhausted; retry shortly"))
            return
        }
        if self.budgetReached && !self.ended {
            self.handle?.cancel()
            self.handle = nil
            self.end(.length, failure: nil)
            return
        }
        let now = NIODeadline.now()
        if let last = self.lastReadAt { self.metrics.readGap.recordNanoseconds((now - last).nanoseconds) }
        self.lastReadAt = now
        // The owner's own client first; followers here and elsewhere after.
        if self.output.isConnected {
            if self.output.isWritable { self.writePending() }
            self.output.flush()
        }
        if !self.followers.isEmpty { self.notifyFollowers(end: nil) }
        if self.publishesToBroker { self.publishBatch() }
    }

    func generationDidRequestToolCalls(_ calls: [ToolCall]) {
        self.pendingToolCalls = calls
    }

    func generationDidFinish(_ reason: FinishReason) {
        self.handle = nil
        let calls = self.pendingToolCalls
        self.pendingToolCalls = []
        if !calls.isEmpty, !self.ended, !self.budgetReached, let tools = self.tools {
            guard self.toolRounds < Self.maximumToolRounds else {
                self.logger.notice("tool rounds exhausted; ending the generation", metadata: self.ids(["sluice.rounds": "\(self.toolRounds)"]))
                self.end(reason, error: nil)
                return
            }
            self.runTools(calls, tools)
            return
        }
        self.end(reason, error: nil)
    }

    // MARK: Tools

    /// Runs one turn's calls in parallel off the event loop, then continues upstream with their
    /// results. The client sees `tool.call` for each call now and `tool.result` for each result.
    private func runTools(_ calls: [ToolCall], _ tools: ToolRegistry) {
        self.announce()
        self.writePending()
        if self.output.isConnected {
            for call in calls {
                self.output.writeMessage { buffer in
                    ServerMessageEncoder.toolCall(generationID: self.id, callID: call.id, name: call.name, arguments: call.arguments, into: &buffer)
                }
            }
            self.output.flush()
        }
        let me = NIOLoopBound(self, eventLoop: self.eventLoop)
        let eventLoop = self.eventLoop
        self.toolTask = Task {
            let runs = await tools.runAll(calls)
            eventLoop.execute { me.value.toolsFinished(calls, runs) }
        }
    }

    private func toolsFinished(_ calls: [ToolCall], _ runs: [ToolRun]) {
        self.toolTask = nil
        guard !self.ended else { return }
        self.toolRounds += 1
        if self.output.isConnected {
            for run in runs {
                self.output.writeMessage { buffer in
                    ServerMessageEncoder.toolResult(
                        generationID: self.id, callID: run.call.id, name: run.call.name, status: run.status.rawValue,
                        output: run.output, durationMs: run.durationMs, into: &buffer)
                }
            }
            self.output.flush()
        }
        self.logToolRuns(runs)
        // The next turn: the model's call turn (with any text it wrote first), then the results.
        let turnText = String(decoding: self.answerBytes.readableBytesView.dropFirst(self.turnStart), as: UTF8.self)
        self.request.messages.append(ChatMessage(role: .assistant, content: turnText, toolCalls: calls))
        for run in runs {
            self.request.messages.append(ChatMessage(role: .tool, content: run.output, toolCallID: run.call.id))
        }
        self.turnStart = self.answerBytes.writerIndex
        // Each turn reports its own completion tokens; the generation's usage is their sum.
        self.earlierTurnsCompletion = self.earlierTurnsCompletion.addingSaturating(self.upstreamUsage?.completion ?? 0)
        self.upstreamUsage = nil
        self.startUpstream()
    }

    /// `tool_executions`, written off the event loop (a failed write is logged, not retried).
    private func logToolRuns(_ runs: [ToolRun]) {
        let records = runs.map { run in
            ToolExecutionRecord(
                generationID: self.id, conversationID: self.conversationUUID, userExternalID: self.user, callID: run.call.id,
                toolName: run.call.name, input: run.call.arguments, output: run.output, status: run.status.rawValue,
                durationMs: run.durationMs, createdAt: run.startedAt)
        }
        for run in runs {
            self.logger.info("tool ran", metadata: self.ids([
                "sluice.tool": "\(run.call.name)", "sluice.status": "\(run.status.rawValue)", "sluice.duration_ms": "\(run.durationMs)"]))
        }
        guard let storage = self.history.persistence.storage else { return }
        let logger = self.logger
        Task {
            do {
                try await storage.recordToolExecutions(records)
            } catch {
                logger.warning("tool executions not recorded", metadata: ["sluice.error": "\(error)"])
            }
        }
    }

    func generationDidFail(_ error: InferenceError) {
        self.handle = nil
        guard self.announced else {
            guard !self.ended else { return }
            self.ended = true
            self.metrics.upstreamRequest(status: error.code.rawValue)
            self.metrics.request(status: error.code.rawValue)
            self.logger.notice("upstream refused the generation", metadata: self.ids([
                "sluice.error": "\(error.code.rawValue)", "sluice.message": "\(error.message)",
            ]))
            self.history.releaseAnswerReservation()
            self.charge.releaseAll(to: self.hub.budget)
            self.settle(0)
            self.trace.failedToStart(error)
            self.output.generationFailedToStart(self, error: error)
            return
        }
        self.end(.error, error: error)
    }

    /// Whether retrying the same request may help: connection and timeout failures, overload
    /// and server errors; not a 4xx such as an unknown model.
    static func retryAfterMs(for error: InferenceError) -> Int64? {
        switch error.kind {
        case .unavailable, .timeout, .overloaded: return 1000
        case .upstreamError(let status):
            guard let status else { return 1000 }
            return status == 429 || status >= 500 ? 1000 : nil
        }
    }

    // MARK: Output

    /// Writes the merged delta of chunks that waited for the client.
    func writePending() {
        guard let firstSeq = self.pendingFirstSeq, self.output.isConnected else { return }
        let seq = self.seq
        let text = self.pendingText
        let prefix = self.deltaPrefix
        self.output.writeMessage { buffer in
            ServerMessageEncoder.generationDelta(prefix: prefix, seq: seq, firstSeq: firstSeq, text: Substring(text).utf8, into: &buffer)
        }
        self.pendingFirstSeq = nil
        self.pendingText = ""
        self.pendingBytes = 0
    }

    private func end(_ reason: FinishReason, error: InferenceError?) {
        self.end(reason, failure: error.map { GenerationError(code: $0.code, message: $0.message) })
    }

    /// The instance stops before the generation ended (a drain's deadline): it ends with
    /// `owner_lost`, like an owner that died, and its upstream request is closed.
    func abandon() {
        guard !self.ended else { return }
        self.handle?.cancel()
        self.handle = nil
        self.end(.error, failure: GenerationError(code: .ownerLost, message: "the instance running this generation shut down"))
    }

    private func end(_ reason: FinishReason, failure error: GenerationError?) {
        guard !self.ended else { return }
        self.ended = true
        // Usage is always present: the upstream's counts when it sent them, else counted here.
        // A cancelled stream never gets the upstream's final count, so count what was delivered.
        let usage: Usage
        if let upstream = self.upstreamUsage, reason != .cancelled || upstream.completion.addingSaturating(self.earlierTurnsCompletion) == self.seq {
            usage = Usage(promptTokens: upstream.prompt, completionTokens: upstream.completion.addingSaturating(self.earlierTurnsCompletion), source: .upstream)
        } else {
            usage = Usage(promptTokens: self.upstreamUsage?.prompt ?? self.promptEstimate, completionTokens: Int(self.seq), source: .gateway)
        }
        let end = GenerationEnd(seq: self.seq, finishReason: reason, usage: usage, error: error)
        self.finalEnd = end
        self.metrics.latency.recordInterval(since: self.startedAt)
        self.trace.ended(end, model: self.model)
        self.settle(usage.totalTokens)
        self.logger.debug("generation ended", metadata: self.ids([
            "sluice.finish_reason": "\(reason.rawValue)", "sluice.seq": "\(self.seq)",
            "sluice.duration_ms": "\((NIODeadline.now() - self.startedAt).nanoseconds / 1_000_000)",
            "sluice.error": "\(error?.code.rawValue ?? "")",
        ]))
        self.metrics.request(status: error?.code.rawValue ?? reason.rawValue)
        if let cancelRequestedAt = self.cancelRequestedAt, reason == .cancelled {
            self.metrics.cancelled(latency: NIODeadline.now() - cancelRequestedAt)
        }
        // The shared copy first (the answer into the conversation, the end into the stream), so
        // a client that reacts to `done` at once on another instance finds both there.
        if self.publishesToBroker && self.announced { self.publishBatch() }
        // Stored once, whatever the reason (a cancel keeps its partial text), with the usage.
        self.history.recordAssistantMessage(
            self.answer, conversationID: self.conversationUUID, key: self.conversationID, user: self.user,
            finishReason: reason.rawValue, promptTokens: usage.promptTokens, completionTokens: usage.completionTokens,
            model: self.model)
        if self.publishesToBroker && self.announced { self.broker.publishEnd(self.info, end) }
        if self.output.isConnected {
            self.writePending()
            let seq = self.seq
            self.output.writeMessage { buffer in
                ServerMessageEncoder.generationDone(
                    generationID: self.id, seq: seq, finishReason: reason, usage: usage,
                    error: error.map { ($0.code, $0.message) }, cached: self.cached, into: &buffer)
            }
            if reason == .length, let cut = self.grant.cut {
                // Why it stopped short of the client's max_tokens, and when a full one fits again.
                let retryAfterMs = self.grant.budgetRetryAfterMs
                let (code, message): (ErrorCode, String)
                switch cut {
                case .tokensPerMinute:
                    (code, message) = (.rateLimited, "stopped at \(self.grant.maxTokens) tokens: the tokens-per-minute budget is used up")
                case .quota(let resetAt):
                    (code, message) = (.quotaExceeded, "stopped at \(self.grant.maxTokens) tokens: the token quota is used up"
                        + (resetAt.map { " until \(QuotaGuard.rfc3339($0))" } ?? ""))
                }
                self.output.writeMessage { buffer in
                    ServerMessageEncoder.error(
                        code: code, message: message, generationID: self.id, retryAfterMs: retryAfterMs > 0 ? retryAfterMs : nil, into: &buffer)
                }
            }
            self.output.flush()
        }
        self.notifyFollowers(end: end)
        self.followers = []
        if self.announced {
            self.hub.generationFinished(
                FinishedGeneration(info: self.info, text: Array(self.answerBytes.readableBytesView), tokenEnds: self.tokenEnds, end: end),
                charged: self.charge.transfer())
        } else {
            self.charge.releaseAll(to: self.hub.budget)
        }
        self.output.generationEnded(self)
    }

    // MARK: Followers (other connections, on any event loop)

    /// Adds a follower: it gets `generation.started` and the text after `afterSeq` at once, then
    /// every later batch, then the end. All on this loop, so the replay and the live part meet
    /// without a gap or an overlap. `endOnly` (a canceller elsewhere) gets only the end.
    func attach(_ follower: GenerationFollower, afterSeq: Int64, endOnly: Bool) {
        self.eventLoop.preconditionInEventLoop()
        if !self.followers.isEmpty { self.notifyFollowers(end: nil) }
        self.followersSeq = self.seq
        if let end = self.finalEnd {
            follower.send(endOnly
                ? .endOnly(end)
                : TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: afterSeq,
                                  upTo: self.seq, started: self.info, end: end))
            return
        }
        if !endOnly {
            follower.send(TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: afterSeq,
                                          upTo: self.seq, started: self.info, end: nil))
        }
        self.followers.append((follower, endOnly))
    }

    func detach(_ follower: GenerationFollower) {
        self.followers.removeAll { $0.follower === follower }
    }

    /// The shared copy missed writes (Redis was unreachable): everything again, whole, after
    /// what this generation already queued for it and before what it publishes next.
    func republishToBroker() {
        guard self.publishesToBroker, self.announced else { return }
        let whole = TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: 0,
                                    upTo: self.seq, started: nil, end: nil)
        self.brokerSeq = self.seq
        self.broker.republish(self.info, user: self.user, whole: whole, end: self.finalEnd)
    }

    /// What arrived since the last publish, as one event for other instances.
    private func publishBatch() {
        guard self.seq > self.brokerSeq, self.announced else { return }
        let update = TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: self.brokerSeq,
                                     upTo: self.seq, started: nil, end: nil)
        self.brokerSeq = self.seq
        self.broker.publishBatch(self.info, update)
    }

    /// One merged update per follower with what arrived since the last one (and the end).
    private func notifyFollowers(end: GenerationEnd?) {
        guard !self.followers.isEmpty, self.seq > self.followersSeq || end != nil else { return }
        let update = TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: self.followersSeq,
                                     upTo: self.seq, started: nil, end: end)
        self.followersSeq = self.seq
        for (follower, endOnly) in self.followers {
            if endOnly {
                if let end { follower.send(.endOnly(end)) }
            } else {
                follower.send(update)
            }
        }
    }
}

@available(*, unavailable)
extension ChatGeneration: Sendable {}
