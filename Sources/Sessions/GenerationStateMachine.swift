import Foundation
import Inference
import Policy
import SluiceProtocol
import Tools

/// The rules of one generation, without I/O: seq numbering, the bounds that cut an answer,
/// merging for a client that is behind, tool rounds, usage, and exactly one terminal event.
/// `ChatGeneration` feeds it the upstream's events and carries out what it returns. Each token
/// costs one call that returns a `TokenAction` (no array, no allocation); each upstream read one
/// that returns a `ReadAction`; rarer events return `[Action]`, in the order to carry them out.
package struct GenerationStateMachine {
    /// What bounds this generation (from its `GenerationGrant` and request).
    struct Limits: Equatable {
        /// Tokens (chunks) it may produce: the client's `max_tokens`, or less when a budget cut it.
        var maxTokens: Int
        /// `GenerationRequest.maxAnswerBytes(forTokens: maxTokens)`.
        var maxAnswerBytes: Int
        /// Which budget set `maxTokens` below the client's, if one did.
        var budgetCut: GenerationGrant.Cut?
        /// When that budget has room again.
        var budgetRetryAfterMs: Int64 = 0
        /// The gateway's count of the prompt, for when the upstream reports none.
        var promptEstimate: Int
        /// Whose tools are offered, so who runs the model's tool calls.
        var tools: ToolMode = .none
        /// Rounds of tool calls per generation; then the model's answer ends it.
        var maxToolRounds = 4
        /// The generation is also published to other instances (Redis).
        var publishesToBroker = false
    }

    /// Whose tools the model is offered.
    enum ToolMode: Equatable {
        case none
        /// The gateway's (`ToolRegistry`): it runs the calls and sends the results upstream in
        /// the next request, up to `maxToolRounds` rounds.
        case gateway
        /// The client's own (OpenAI `tools`): the calls go to the client and the generation ends
        /// with `tool_calls`; the client sends the results in its next request.
        case client
    }

    enum Phase: Equatable {
        /// Made; no upstream request yet.
        case idle
        /// An upstream request is out (the first one, or the next after tool results).
        case upstream
        /// The model's tool calls are running; their results then go upstream in a new request.
        case runningTools([ToolCall])
        /// Ended with `generation.done`.
        case ended(GenerationEnd)
        /// The upstream refused before anything was announced: the client gets an `error` instead.
        case failedToStart
    }

    /// Why the rest of the upstream's text is dropped; the generation ends at the end of the read.
    enum Cut: Equatable {
        /// `max_tokens` or the byte bound: ends with `length`.
        case length
        /// The memory budget had no room for more of the answer: ends with `overloaded`.
        case memory
    }

    /// A pair of seqs: the text after `after`, up to and with `upTo`.
    struct SeqRange: Equatable {
        var after: Int64
        var upTo: Int64
    }

    /// What a generation that stopped short of the client's `max_tokens` because of a budget
    /// adds after its `generation.done`.
    package struct BudgetNotice: Equatable {
        package var code: ErrorCode
        package var message: String
        package var retryAfterMs: Int64?
    }

    /// How to carry out the end (`ChatGeneration` does it in a fixed order: publish the last
    /// batch, record the answer, publish the end, write what is held, `done`, the notice, flush,
    /// followers, then hand the answer to the hub or give its memory back).
    struct EndDetails: Equatable {
        /// It was announced: the hub keeps the answer and the broker hears the end.
        var announced: Bool
        /// Publish seqs after this one first (nil: nothing new for the broker).
        var publishBatchAfter: Int64?
        var publishEnd: Bool
        /// Text still held for the owner's client, written before `done`.
        var held: DeltaMerger.PendingDelta?
        var cached: Bool
        var budgetNotice: BudgetNotice?
        /// Followers get the text after this seq with the end.
        var followersAfter: Int64
    }

    /// For each piece of text (the per-token path).
    enum TokenAction: Equatable {
        /// Dropped: the generation ended, or is cut (this text is past a bound, or an earlier one was).
        case drop
        /// The text is seq `seq`. Announce first when `announce`; `firstToken` for the
        /// time-to-first-token; write it directly when `writeDirectly`, else `hold` it (after
        /// older held text). A direct write the client cannot take is also handed to `hold`.
        case accept(seq: Int64, announce: Bool, firstToken: Bool, writeDirectly: Bool)
    }

    /// At the end of each upstream read.
    enum ReadAction: Equatable {
        /// Write what is held (when given), flush, then hand new seqs to followers and the broker.
        case deliver(held: DeltaMerger.PendingDelta?, followers: SeqRange?, broker: SeqRange?)
        /// A cut ends the generation.
        case end([Action])
    }

    enum Action: Equatable {
        /// Send the (next) request upstream.
        case startUpstream
        /// Register with the hub, tell the broker, send `generation.started`.
        case announce
        /// A cancel was asked for (its latency is measured from here).
        case cancelRequested
        case cancelUpstream
        case cancelTools
        /// Write the delta merged while the client was behind (if it is still connected).
        case writeHeld(DeltaMerger.PendingDelta)
        /// `tool.call` for each, then flush.
        case writeToolCalls([ToolCall])
        /// Calls of the client's own tools, for the client to run (the end follows).
        case handToolCallsToClient([ToolCall])
        /// Run them off the event loop; `toolsFinished` follows.
        case runTools([ToolCall])
        /// `tool.result` for each, then flush.
        case writeToolResults([ToolRun])
        /// `tool_executions` and a log line for each.
        case recordToolRuns([ToolRun])
        /// The next request: the model's turn (the answer's text from this byte offset, and
        /// its calls), then the results.
        case continueWithToolResults(assistantTextFrom: Int, calls: [ToolCall], runs: [ToolRun])
        /// The memory budget cut a generation (metric and log).
        case countOverBudget
        case logToolRoundsExhausted(rounds: Int)
        /// Nothing was announced: give back what was reserved, and the client gets an `error`.
        case failedToStart(InferenceError)
        case end(GenerationEnd, EndDetails)
    }

    let limits: Limits
    private(set) var phase: Phase = .idle
    /// `generation.started` went out (the upstream accepted, a token came, a cancel or a tool
    /// round needed it).
    private(set) var announced = false
    private(set) var cut: Cut?
    /// Last seq given to a piece of text.
    private(set) var seq: Int64 = 0
    /// UTF-8 bytes of the answer so far (all turns).
    private(set) var answerBytes = 0
    private var cached = false
    /// The owner's client's deltas.
    private var merger = DeltaMerger()
    private var upstreamUsage: (prompt: Int, completion: Int)?
    /// Calls the upstream asked for in the current turn (run when it finishes).
    private var pendingToolCalls: [ToolCall] = []
    private(set) var toolRounds = 0
    /// Where the current turn's text starts in the answer (bytes).
    private var turnStart = 0
    /// Completion tokens the upstream reported for earlier turns.
    private var earlierTurnsCompletion = 0
    /// Last seq handed to followers (they get one merged update per upstream read).
    private(set) var followersSeq: Int64 = 0
    /// Last seq handed to the broker.
    private(set) var brokerSeq: Int64 = 0

    init(limits: Limits) {
        self.limits = limits
    }

    /// Stands in for a machine moved out for an event (see `ChatGeneration.update`).
    static let vacant = GenerationStateMachine(limits: Limits(maxTokens: 0, maxAnswerBytes: 0, promptEstimate: 0))

    var isEnded: Bool {
        switch self.phase {
        case .ended, .failedToStart: return true
        case .idle, .upstream, .runningTools: return false
        }
    }

    /// How it ended, once it has (with `generation.done`).
    var end: GenerationEnd? {
        if case .ended(let end) = self.phase { return end }
        return nil
    }

    /// Bytes held back for the owner's client (charged to the memory budget with the answer).
    var heldBytes: Int { self.merger.heldBytes }

    // MARK: Upstream events

    /// The first upstream request (nil once ended, e.g. cancelled before it started).
    mutating func start() -> Action? {
        guard case .idle = self.phase else { return nil }
        self.phase = .upstream
        return .startUpstream
    }

    /// The upstream accepted the request.
    mutating func upstreamConnected() -> Action? {
        guard !self.announced, !self.isEnded else { return nil }
        self.announced = true
        return .announce
    }

    /// The answer is replayed from the response cache (`done.cached`).
    mutating func wasCached() {
        self.cached = true
    }

    /// A piece of text of `byteCount` UTF-8 bytes. Past `max_tokens` or the byte bound, the text
    /// is dropped and the generation ends with `length` at the end of the read; a budget-reduced
    /// `max_tokens` is reached by the token that hits it (never overshot: a chunk is a token for
    /// the OpenAI-compatible servers, which were asked for at most this many). Only arithmetic,
    /// no call: the runner's exclusive access to the machine stays cheap on the per-token path.
    @inline(__always)
    mutating func produced(byteCount: Int) -> TokenAction {
        guard case .upstream = self.phase, self.cut == nil else { return .drop }
        if self.seq >= Int64(self.limits.maxTokens) || self.answerBytes.addingSaturating(byteCount) > self.limits.maxAnswerBytes {
            self.cut = .length
            return .drop
        }
        let announce = !self.announced
        self.announced = true
        let seq = self.seq + 1
        self.seq = seq
        self.answerBytes += byteCount
        if self.limits.budgetCut != nil && seq >= Int64(self.limits.maxTokens) { self.cut = .length }
        let writeDirectly = self.merger.mayWriteDirectly
        if writeDirectly { self.merger.wrote(through: seq) }
        return .accept(seq: seq, announce: announce, firstToken: seq == 1, writeDirectly: writeDirectly)
    }

    /// Seq `seq` is held for the owner's client: it is behind (`accept` said not to write it
    /// directly, or the direct write was refused while it is connected). Everything after it is
    /// held too until it is written.
    mutating func hold(_ text: Substring, seq: Int64) {
        self.merger.hold(firstSeq: seq, lastSeq: seq, text: text)
    }

    /// The memory budget has no room for more of the answer: it ends with `overloaded` at the
    /// end of the read (before a `length` cut of the same read).
    mutating func memoryExhausted() {
        guard !self.isEnded else { return }
        self.cut = .memory
    }

    mutating func usageReported(prompt: Int, completion: Int) {
        self.upstreamUsage = (prompt, completion)
    }

    mutating func toolCallsRequested(_ calls: [ToolCall]) {
        self.pendingToolCalls = calls
    }

    /// An upstream read is over: a cut ends the generation; otherwise what is held goes out if
    /// the client can take it, and followers and the broker get the new seqs.
    mutating func endOfRead(connected: Bool, writable: Bool, hasFollowers: Bool) -> ReadAction {
        if !self.isEnded, let cut = self.cut {
            var actions = self.stopWork()
            switch cut {
            case .memory:
                actions.append(.countOverBudget)
                actions.append(self.end(.error, GenerationError(code: .overloaded, message: "the server's memory budget is exhausted; retry shortly")))
            case .length:
                actions.append(self.end(.length, nil))
            }
            return .end(actions)
        }
        let held = connected && writable ? self.merger.takePending() : nil
        var followers: SeqRange?
        if hasFollowers && self.seq > self.followersSeq {
            followers = SeqRange(after: self.followersSeq, upTo: self.seq)
            self.followersSeq = self.seq
        }
        var broker: SeqRange?
        if self.limits.publishesToBroker && self.announced && self.seq > self.brokerSeq {
            broker = SeqRange(after: self.brokerSeq, upTo: self.seq)
            self.brokerSeq = self.seq
        }
        return .deliver(held: held, followers: followers, broker: broker)
    }

    /// The upstream finished this turn: its tool calls start a round (unless the rounds are
    /// used up, or the answer was cut), else the generation ends with the upstream's reason.
    mutating func upstreamFinished(_ reason: FinishReason) -> [Action] {
        guard case .upstream = self.phase else { return [] }
        let calls = self.pendingToolCalls
        self.pendingToolCalls = []
        if !calls.isEmpty, self.cut == nil, self.limits.tools == .client {
            var actions: [Action] = []
            if !self.announced {
                self.announced = true
                actions.append(.announce)
            }
            if let held = self.merger.takePending() { actions.append(.writeHeld(held)) }
            actions.append(.handToolCallsToClient(calls))
            actions.append(self.end(.toolCalls, nil))
            return actions
        }
        if !calls.isEmpty, self.cut == nil, self.limits.tools == .gateway {
            guard self.toolRounds < self.limits.maxToolRounds else {
                return [.logToolRoundsExhausted(rounds: self.toolRounds), self.end(reason, nil)]
            }
            self.phase = .runningTools(calls)
            var actions: [Action] = []
            if !self.announced {
                self.announced = true
                actions.append(.announce)
            }
            if let held = self.merger.takePending() { actions.append(.writeHeld(held)) }
            actions.append(.writeToolCalls(calls))
            actions.append(.runTools(calls))
            return actions
        }
        return [self.end(reason, nil)]
    }

    /// The round's tools ran: their results go to the client and upstream in a new request.
    mutating func toolsFinished(_ runs: [ToolRun]) -> [Action] {
        guard case .runningTools(let calls) = self.phase else { return [] }
        self.toolRounds += 1
        let turnStart = self.turnStart
        self.turnStart = self.answerBytes
        // Each turn reports its own completion tokens; the generation's usage is their sum.
        self.earlierTurnsCompletion = self.earlierTurnsCompletion.addingSaturating(self.upstreamUsage?.completion ?? 0)
        self.upstreamUsage = nil
        self.phase = .upstream
        return [
            .writeToolResults(runs), .recordToolRuns(runs),
            .continueWithToolResults(assistantTextFrom: turnStart, calls: calls, runs: runs), .startUpstream,
        ]
    }

    /// The upstream failed: before the announcement nothing was generated (the client gets an
    /// `error` and nothing is charged); after it, the generation ends with that error.
    mutating func upstreamFailed(_ error: InferenceError) -> [Action] {
        guard case .upstream = self.phase else { return [] }
        guard self.announced else {
            self.phase = .failedToStart
            return [.failedToStart(error)]
        }
        return [self.end(.error, GenerationError(code: error.code, message: error.message))]
    }

    // MARK: Requests from elsewhere

    /// The client (or a drain, or a disconnect) cancels: still a generation to the client, so
    /// it is announced if it was not, then it ends with `cancelled`.
    mutating func cancel() -> [Action] {
        guard !self.isEnded else { return [] }
        var actions: [Action] = [.cancelRequested]
        if !self.announced {
            self.announced = true
            actions.append(.announce)
        }
        actions += self.stopWork()
        actions.append(self.end(.cancelled, nil))
        return actions
    }

    /// The instance stops before the generation ended (a drain's deadline): it ends with
    /// `owner_lost`, like an owner that died.
    mutating func abandon() -> [Action] {
        guard !self.isEnded else { return [] }
        var actions = self.stopWork()
        actions.append(self.end(.error, GenerationError(code: .ownerLost, message: "the instance running this generation shut down")))
        return actions
    }

    /// The owner's client can take more (call only while it is connected): what is held goes out.
    mutating func outputWritable() -> Action? {
        self.merger.takePending().map { .writeHeld($0) }
    }

    /// A follower attaches (it is then sent everything up to `seq` itself): the followers
    /// already there first get what they have not had, if anything.
    mutating func followerAttaching(othersWaiting: Bool) -> SeqRange? {
        defer { self.followersSeq = self.seq }
        guard othersWaiting, self.seq > self.followersSeq else { return nil }
        return SeqRange(after: self.followersSeq, upTo: self.seq)
    }

    /// The broker lost writes: everything is published again (up to the returned seq), if it
    /// is published at all.
    mutating func republishing() -> Int64? {
        guard self.limits.publishesToBroker, self.announced else { return nil }
        self.brokerSeq = self.seq
        return self.seq
    }

    // MARK: Ending

    private func stopWork() -> [Action] {
        switch self.phase {
        case .upstream: return [.cancelUpstream]
        case .runningTools: return [.cancelTools]
        case .idle, .ended, .failedToStart: return []
        }
    }

    /// The one terminal event. Usage is always present: the upstream's counts when it sent
    /// them (summed over the turns), else counted here; a cancelled stream never gets the
    /// upstream's final count, so then the delivered seqs count unless they agree.
    private mutating func end(_ reason: FinishReason, _ error: GenerationError?) -> Action {
        let usage: Usage
        if let upstream = self.upstreamUsage,
           reason != .cancelled || upstream.completion.addingSaturating(self.earlierTurnsCompletion) == self.seq {
            usage = Usage(promptTokens: upstream.prompt, completionTokens: upstream.completion.addingSaturating(self.earlierTurnsCompletion), source: .upstream)
        } else {
            usage = Usage(promptTokens: self.upstreamUsage?.prompt ?? self.limits.promptEstimate, completionTokens: Int(self.seq), source: .gateway)
        }
        let end = GenerationEnd(seq: self.seq, finishReason: reason, usage: usage, error: error)
        self.phase = .ended(end)
        let published = self.limits.publishesToBroker && self.announced
        let details = EndDetails(
            announced: self.announced,
            publishBatchAfter: published && self.seq > self.brokerSeq ? self.brokerSeq : nil,
            publishEnd: published,
            held: self.merger.takePending(),
            cached: self.cached,
            budgetNotice: reason == .length ? self.budgetNotice() : nil,
            followersAfter: self.followersSeq)
        if published { self.brokerSeq = self.seq }
        self.followersSeq = self.seq
        return .end(end, details)
    }

    /// Why it stopped short of the client's `max_tokens`, and when a full one fits again.
    private func budgetNotice() -> BudgetNotice? {
        guard let cut = self.limits.budgetCut else { return nil }
        let retryAfterMs = self.limits.budgetRetryAfterMs > 0 ? self.limits.budgetRetryAfterMs : nil
        switch cut {
        case .tokensPerMinute:
            return BudgetNotice(
                code: .rateLimited, message: "stopped at \(self.limits.maxTokens) tokens: the tokens-per-minute budget is used up",
                retryAfterMs: retryAfterMs)
        case .quota(let resetAt):
            return BudgetNotice(
                code: .quotaExceeded,
                message: "stopped at \(self.limits.maxTokens) tokens: the token quota is used up" + (resetAt.map { " until \(QuotaGuard.rfc3339($0))" } ?? ""),
                retryAfterMs: retryAfterMs)
        }
    }
}
