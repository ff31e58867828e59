import Foundation
import Logging
import Inference
import NIOCore
import Policy
import SluiceProtocol
import Storage
import Tools
import WSServer

/// One generation as the client sees it: contiguous `seq`s, deltas merged while the client is
/// behind (with `first_seq`), exactly one `generation.done` with usage that is always present.
package final class ChatGeneration: GenerationSink {
    package let id: String
    package let conversationID: String
    private let conversationUUID: UUID
    /// Whose conversation it is (the answer is stored under this user).
    private let user: String
    package let requestID: String?
    package let model: String
    /// Strong on purpose: a generation outlives its connection (it may be resumed); the
    /// output ↔ generation cycle ends when the generation ends.
    private let output: any GenerationOutput
    private var handle: (any GenerationHandle)?
    /// The rules: seqs, cuts, merging, tool rounds, usage, the one end. This class carries out
    /// what it returns.
    private var machine: GenerationStateMachine

    /// What the answer (the resume log) and the held-back text hold of the memory budget;
    /// handed to the hub with the answer when it ends.
    private var charge = MemoryCharge(.generation)
    /// The whole answer so far, for the conversation (bytes: appending is cheaper than to a String).
    private var answerBytes = ByteBuffer()
    package var answer: String { String(buffer: self.answerBytes) }
    package var answerByteCount: Int { self.answerBytes.readableBytes }
    /// `{"type":"generation.delta","generation_id":"…","seq":` encoded once per generation.
    package let deltaPrefix: ByteBuffer
    /// Whether the conversation is stored (not for the OpenAI door's ephemeral ones).
    private let keepsConversation: Bool
    /// Gives back what the limits and the quota reserved and this generation did not use.
    private let settle: (_ usedTokens: Int) -> Void

    private let engine: any InferenceEngine
    /// Grows by an assistant turn and the tool results each time the model calls tools.
    private var request: GenerationRequest
    private let eventLoop: any EventLoop
    /// The tools offered (`request.tools`) and their runner; nil when none are.
    private let tools: ToolRegistry?
    private var toolTask: Task<Void, Never>?
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
    private let fanOut: any GenerationFanOut
    private let publishesToBroker: Bool
    private let ownerSessionID: String
    /// `tokenEnds[i]`: where seq `i + 1` ends in `answerBytes`, so any seq can be replayed.
    private var tokenEnds: [Int32] = []
    /// Sessions following it from elsewhere; `endOnly` ones (a canceller) get just the end.
    private var followers: [(follower: GenerationFollower, endOnly: Bool)] = []

    init(
        id: String, startedAt: NIODeadline, trace: GenerationTrace, conversation: ResolvedConversation, user: String, requestID: String?, model: String, promptEstimate: Int,
        grant: GenerationGrant, settle: @escaping (_ usedTokens: Int) -> Void,
        output: any GenerationOutput, engine: any InferenceEngine, request: GenerationRequest, eventLoop: any EventLoop,
        history: ConversationHistory,
        hub: GenerationHub, fanOut: any GenerationFanOut, ownerSessionID: String, metrics: ChatMetrics.Upstream,
        toolMode: GenerationStateMachine.ToolMode = .none, tools: ToolRegistry? = nil, logger: Logger
    ) {
        self.tools = tools
        self.metrics = metrics
        self.keepsConversation = conversation.isKept
        self.machine = GenerationStateMachine(limits: GenerationStateMachine.Limits(
            maxTokens: grant.maxTokens, maxAnswerBytes: GenerationRequest.maxAnswerBytes(forTokens: grant.maxTokens),
            budgetCut: grant.cut, budgetRetryAfterMs: grant.budgetRetryAfterMs, promptEstimate: promptEstimate,
            tools: toolMode, publishesToBroker: fanOut.isShared))
        self.settle = settle
        self.startedAt = startedAt
        self.trace = trace
        self.logger = logger
        self.hub = hub
        self.fanOut = fanOut
        self.publishesToBroker = fanOut.isShared
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
        self.output = output
        var prefix = ByteBuffer()
        ServerMessageEncoder.generationDeltaPrefix(generationID: id, into: &prefix)
        self.deltaPrefix = prefix
    }

    /// Starts the upstream request on the output's event loop (chunks arrive with no hop).
    func startUpstream() {
        if let action = self.update({ $0.start() }) { self.perform(action) }
    }

    package func cancel() {
        self.perform(self.update { $0.cancel() })
    }

    /// The instance stops before the generation ended (a drain's deadline): it ends with
    /// `owner_lost`, like an owner that died, and its upstream request is closed.
    func abandon() {
        self.perform(self.update { $0.abandon() })
    }

    var info: GenerationInfo {
        GenerationInfo(generationID: self.id, conversationID: self.conversationID, requestID: self.requestID, model: self.model)
    }

    // MARK: GenerationSink

    package func generationWasCached() {
        self.update { $0.wasCached() }
    }

    package func generationDidConnect() {
        self.metrics.upstreamRequest(status: "ok")
        self.trace.upstreamAccepted()
        self.logger.debug("generation started", metadata: self.ids(["sluice.model": "\(self.model)"]))
        if let action = self.update({ $0.upstreamConnected() }) { self.perform(action) }
    }

    package func generationDidProduce(_ text: Substring) {
        guard case .accept(let seq, let announce, let firstToken, let writeDirectly) = self.machine.produced(byteCount: text.utf8.count) else {
            return
        }
        if announce { self.announce() }
        if firstToken {
            self.metrics.timeToFirstToken.recordInterval(since: self.startedAt)
            self.trace.firstToken()
        }
        if text.utf8.withContiguousStorageIfAvailable({ self.answerBytes.writeBytes($0) }) == nil {
            self.answerBytes.writeSubstring(text)
        }
        self.tokenEnds.append(Int32(truncatingIfNeeded: self.answerBytes.writerIndex))
        if writeDirectly {
            let written = self.output.writeDeltaIfWritable(self, seq: seq, text: text)
            // Behind but connected: held, with what follows, until it can take them. Not
            // connected: nothing to hold back (the answer is kept above).
            if !written && self.output.isConnected { self.update { $0.hold(text, seq: seq) } }
        } else {
            self.update { $0.hold(text, seq: seq) }
        }
        self.chargeAnswer()
    }

    /// Keeps the budget's charge at least what the answer and the held-back text take (in
    /// 16 KiB steps: one reservation per step, not per token). No room: the machine ends it.
    private func chargeAnswer() {
        let held = self.answerBytes.capacity + self.tokenEnds.capacity * MemoryLayout<Int32>.size + self.machine.heldBytes
        guard held > self.charge.held else { return }
        if !self.charge.grow(to: held, granule: 16 * 1024, in: self.hub.budget) { self.update { $0.memoryExhausted() } }
    }

    package func generationDidReportUsage(promptTokens: Int, completionTokens: Int) {
        self.update { $0.usageReported(prompt: promptTokens, completion: completionTokens) }
    }

    package func generationDidEndBatch() {
        let connected = self.output.isConnected
        let writable = connected && self.output.isWritable
        let hasFollowers = !self.followers.isEmpty
        switch self.update({ $0.endOfRead(connected: connected, writable: writable, hasFollowers: hasFollowers) }) {
        case .end(let actions):
            self.perform(actions)
        case .deliver(let held, let followers, let broker):
            let now = NIODeadline.now()
            if let last = self.lastReadAt { self.metrics.readGap.recordNanoseconds((now - last).nanoseconds) }
            self.lastReadAt = now
            // The owner's own client first; followers here and elsewhere after.
            if connected {
                if let held { self.write(held) }
                self.output.flush()
            }
            if let followers { self.notifyFollowers(followers, end: nil) }
            if let broker { self.publishBatch(broker) }
        }
    }

    package func generationDidRequestToolCalls(_ calls: [ToolCall]) {
        self.update { $0.toolCallsRequested(calls) }
    }

    package func generationDidFinish(_ reason: FinishReason) {
        self.handle = nil
        self.perform(self.update { $0.upstreamFinished(reason) })
    }

    package func generationDidFail(_ error: InferenceError) {
        self.handle = nil
        self.perform(self.update { $0.upstreamFailed(error) })
    }

    /// Whether retrying the same request may help: connection and timeout failures, overload
    /// and server errors; not a 4xx such as an unknown model.
    package static func retryAfterMs(for error: InferenceError) -> Int64? {
        switch error.kind {
        case .unavailable, .timeout, .overloaded: return 1000
        case .upstreamError(let status):
            guard let status else { return 1000 }
            return status == 429 || status >= 500 ? 1000 : nil
        }
    }

    // MARK: Output

    /// The client can take more: the delta merged while it was behind goes out (not flushed).
    func writePending() {
        guard self.output.isConnected, let action = self.update({ $0.outputWritable() }) else { return }
        self.perform(action)
    }

    /// A delta merged while the client was behind, if it is still there.
    private func write(_ held: DeltaMerger.PendingDelta) {
        guard self.output.isConnected else { return }
        self.output.writeHeldDelta(self, held)
    }

    // MARK: Carrying out the machine's actions

    /// Runs an event on the machine moved out of `self` (swapped, not copied: its buffers stay
    /// unique), so that no access to `self.machine` spans a call. The compiler then drops the
    /// dynamic exclusivity checks on it, the per-token `produced(byteCount:)` included.
    @inline(__always)
    private func update<Result>(_ event: (inout GenerationStateMachine) -> Result) -> Result {
        var machine = GenerationStateMachine.vacant
        swap(&machine, &self.machine)
        defer { swap(&machine, &self.machine) }
        return event(&machine)
    }

    private func perform(_ actions: [GenerationStateMachine.Action]) {
        for action in actions { self.perform(action) }
    }

    private func perform(_ action: GenerationStateMachine.Action) {
        switch action {
        case .startUpstream:
            let handle = self.engine.startGeneration(self.request, on: self.eventLoop, sink: self)
            // It may have ended while starting (an engine that fails at once).
            if self.machine.isEnded { handle.cancel() } else { self.handle = handle }
        case .announce:
            self.announce()
        case .cancelRequested:
            self.cancelRequestedAt = .now()
            self.trace.cancelRequested()
        case .cancelUpstream:
            self.handle?.cancel()
            self.handle = nil
        case .cancelTools:
            self.toolTask?.cancel()
            self.toolTask = nil
        case .writeHeld(let held):
            self.write(held)
        case .writeToolCalls(let calls):
            guard self.output.isConnected else { return }
            self.output.writeToolCalls(self, calls)
        case .handToolCallsToClient(let calls):
            self.logger.debug("tool calls handed to the client", metadata: self.ids(["sluice.tools": "\(calls.map(\.name))"]))
            guard self.output.isConnected else { return }
            self.output.writeClientToolCalls(self, calls)
        case .runTools(let calls):
            self.runTools(calls)
        case .writeToolResults(let runs):
            guard self.output.isConnected else { return }
            self.output.writeToolResults(self, runs)
        case .recordToolRuns(let runs):
            self.logToolRuns(runs)
        case .continueWithToolResults(let assistantTextFrom, let calls, let runs):
            // The next turn: the model's call turn (with any text it wrote first), then the results.
            let turnText = String(decoding: self.answerBytes.readableBytesView.dropFirst(assistantTextFrom), as: UTF8.self)
            self.request.messages.append(ChatMessage(role: .assistant, content: turnText, toolCalls: calls))
            for run in runs {
                self.request.messages.append(ChatMessage(role: .tool, content: run.output, toolCallID: run.call.id))
            }
        case .countOverBudget:
            self.hub.countOverBudget()
            self.logger.warning("generation ended: the memory budget is exhausted", metadata: self.ids([
                "sluice.budget_used": "\(self.hub.budget.used)", "sluice.budget_limit": "\(self.hub.budget.limit)"]))
        case .logToolRoundsExhausted(let rounds):
            self.logger.notice("tool rounds exhausted; ending the generation", metadata: self.ids(["sluice.rounds": "\(rounds)"]))
        case .failedToStart(let error):
            self.failedToStart(error)
        case .end(let end, let details):
            self.end(end, details)
        }
    }

    /// Sends `generation.started` once, and from then on other connections can find it.
    private func announce() {
        self.hub.register(GenerationHub.Entry(
            generationID: self.id, conversationID: self.conversationID, user: self.user, ownerSessionID: self.ownerSessionID,
            state: .running(eventLoop: self.eventLoop, generation: NIOLoopBound(self, eventLoop: self.eventLoop))))
        if self.publishesToBroker { self.fanOut.publishStarted(self.info, user: self.user) }
        guard self.output.isConnected else { return }
        self.output.writeStarted(self)
    }

    // MARK: Tools

    /// Runs one turn's calls in parallel off the event loop; the results go back to the machine
    /// on this loop.
    private func runTools(_ calls: [ToolCall]) {
        guard let tools = self.tools else { return }
        let me = NIOLoopBound(self, eventLoop: self.eventLoop)
        let eventLoop = self.eventLoop
        self.toolTask = Task {
            let runs = await tools.runAll(calls)
            eventLoop.execute { me.value.toolsFinished(runs) }
        }
    }

    private func toolsFinished(_ runs: [ToolRun]) {
        self.toolTask = nil
        self.perform(self.update { $0.toolsFinished(runs) })
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
        guard let storage = self.history.persistence.archive else { return }
        let logger = self.logger
        Task {
            do {
                try await storage.recordToolExecutions(records)
            } catch {
                logger.warning("tool executions not recorded", metadata: ["sluice.error": "\(error)"])
            }
        }
    }

    /// Nothing was announced (the upstream refused): nothing is kept or charged, and the client
    /// gets an `error` instead of a generation.
    private func failedToStart(_ error: InferenceError) {
        self.metrics.upstreamRequest(status: error.code.rawValue)
        self.metrics.request(status: error.code.rawValue)
        self.logger.notice("upstream refused the generation", metadata: self.ids([
            "sluice.error": "\(error.code.rawValue)", "sluice.message": "\(error.message)",
        ]))
        if self.keepsConversation { self.history.releaseAnswerReservation() }
        self.charge.releaseAll(to: self.hub.budget)
        self.settle(0)
        self.trace.failedToStart(error)
        self.output.generationFailedToStart(self, error: error)
    }

    /// The one `generation.done` (or, for a client that is gone, the end everywhere else).
    private func end(_ end: GenerationEnd, _ details: GenerationStateMachine.EndDetails) {
        let reason = end.finishReason
        let usage = end.usage
        self.metrics.latency.recordInterval(since: self.startedAt)
        self.trace.ended(end, model: self.model)
        self.settle(usage.totalTokens)
        self.logger.debug("generation ended", metadata: self.ids([
            "sluice.finish_reason": "\(reason.rawValue)", "sluice.seq": "\(end.seq)",
            "sluice.duration_ms": "\((NIODeadline.now() - self.startedAt).nanoseconds / 1_000_000)",
            "sluice.error": "\(end.error?.code.rawValue ?? "")",
        ]))
        self.metrics.request(status: end.error?.code.rawValue ?? reason.rawValue)
        if let cancelRequestedAt = self.cancelRequestedAt, reason == .cancelled {
            self.metrics.cancelled(latency: NIODeadline.now() - cancelRequestedAt)
        }
        // The shared copy first (the answer into the conversation, the end into the stream), so
        // a client that reacts to `done` at once on another instance finds both there.
        if let after = details.publishBatchAfter {
            self.publishBatch(GenerationStateMachine.SeqRange(after: after, upTo: end.seq))
        }
        // Stored once, whatever the reason (a cancel keeps its partial text), with the usage.
        if self.keepsConversation {
            self.history.recordAssistantMessage(
                self.answer, conversationID: self.conversationUUID, key: self.conversationID, user: self.user,
                finishReason: reason.rawValue, promptTokens: usage.promptTokens, completionTokens: usage.completionTokens,
                model: self.model)
        }
        if details.publishEnd { self.fanOut.publishEnd(self.info, end) }
        if self.output.isConnected {
            if let held = details.held { self.write(held) }
            self.output.writeDone(self, end, cached: details.cached, budgetNotice: details.budgetNotice)
            self.output.flush()
        }
        if !self.followers.isEmpty {
            self.notifyFollowers(GenerationStateMachine.SeqRange(after: details.followersAfter, upTo: end.seq), end: end)
        }
        self.followers = []
        if details.announced {
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
        let othersWaiting = !self.followers.isEmpty
        if let catchUp = self.update({ $0.followerAttaching(othersWaiting: othersWaiting) }) {
            self.notifyFollowers(catchUp, end: nil)
        }
        let seq = self.machine.seq
        if let end = self.machine.end {
            follower.send(endOnly
                ? .endOnly(end)
                : TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: afterSeq,
                                  upTo: seq, started: self.info, end: end))
            return
        }
        if !endOnly {
            follower.send(TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: afterSeq,
                                          upTo: seq, started: self.info, end: nil))
        }
        self.followers.append((follower, endOnly))
    }

    func detach(_ follower: GenerationFollower) {
        self.followers.removeAll { $0.follower === follower }
    }

    /// The shared copy missed writes (Redis was unreachable): everything again, whole, after
    /// what this generation already queued for it and before what it publishes next.
    func republishToBroker() {
        guard let seq = self.update({ $0.republishing() }) else { return }
        let whole = TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: 0,
                                    upTo: seq, started: nil, end: nil)
        self.fanOut.republish(self.info, user: self.user, whole: whole, end: self.machine.end)
    }

    /// What arrived since the last publish, as one event for other instances.
    private func publishBatch(_ range: GenerationStateMachine.SeqRange) {
        let update = TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: range.after,
                                     upTo: range.upTo, started: nil, end: nil)
        self.fanOut.publishBatch(self.info, update)
    }

    /// One merged update per follower with what arrived since the last one (and the end).
    private func notifyFollowers(_ range: GenerationStateMachine.SeqRange, end: GenerationEnd?) {
        let update = TokenLog.update(text: self.answerBytes.readableBytesView, tokenEnds: self.tokenEnds, after: range.after,
                                     upTo: range.upTo, started: nil, end: end)
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
