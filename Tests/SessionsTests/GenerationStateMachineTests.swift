import Foundation
import Inference
import Policy
@testable import Sessions
import SluiceProtocol
import Testing
@testable import Tools

extension GenerationStateMachine {
    /// A piece of text arrives, and is held if the machine says so (as `ChatGeneration` does).
    fileprivate mutating func take(_ text: Substring) -> TokenAction {
        let action = self.produced(byteCount: text.utf8.count)
        if case .accept(let seq, _, _, false) = action { self.hold(text, seq: seq) }
        return action
    }
}

/// The rules of a generation, event by event, without sockets: what `ChatGeneration` is told
/// to do for each upstream event and each request from elsewhere.
@Suite struct GenerationStateMachineTests {
    typealias Machine = GenerationStateMachine
    typealias Action = GenerationStateMachine.Action
    typealias Pending = DeltaMerger.PendingDelta

    static func limits(
        maxTokens: Int = 100, maxAnswerBytes: Int = 10_000, cut: GenerationGrant.Cut? = nil, retryAfterMs: Int64 = 0,
        tools: Bool = false, clientTools: Bool = false, shared: Bool = false
    ) -> Machine.Limits {
        Machine.Limits(
            maxTokens: maxTokens, maxAnswerBytes: maxAnswerBytes, budgetCut: cut, budgetRetryAfterMs: retryAfterMs,
            promptEstimate: 7, tools: clientTools ? .client : (tools ? .gateway : .none), publishesToBroker: shared)
    }

    /// A machine whose upstream accepted the request.
    static func streaming(_ limits: Machine.Limits = Self.limits()) -> Machine {
        var machine = Machine(limits: limits)
        _ = machine.start()
        _ = machine.upstreamConnected()
        return machine
    }

    static func end(
        seq: Int64, _ reason: FinishReason, prompt: Int = 7, completion: Int? = nil, source: Usage.Source = .gateway,
        error: GenerationError? = nil
    ) -> GenerationEnd {
        GenerationEnd(
            seq: seq, finishReason: reason, usage: Usage(promptTokens: prompt, completionTokens: completion ?? Int(seq), source: source),
            error: error)
    }

    static func details(
        announced: Bool = true, publishBatchAfter: Int64? = nil, publishEnd: Bool = false, held: Pending? = nil, cached: Bool = false,
        notice: Machine.BudgetNotice? = nil, followersAfter: Int64 = 0
    ) -> Machine.EndDetails {
        Machine.EndDetails(
            announced: announced, publishBatchAfter: publishBatchAfter, publishEnd: publishEnd, held: held, cached: cached,
            budgetNotice: notice, followersAfter: followersAfter)
    }

    static func direct(_ seq: Int64, announce: Bool = false) -> Machine.TokenAction {
        .accept(seq: seq, announce: announce, firstToken: seq == 1, writeDirectly: true)
    }

    static func merged(_ seq: Int64) -> Machine.TokenAction {
        .accept(seq: seq, announce: false, firstToken: seq == 1, writeDirectly: false)
    }

    static let deliverNothing = Machine.ReadAction.deliver(held: nil, followers: nil, broker: nil)

    static func run(_ call: ToolCall) -> ToolRun {
        ToolRun(call: call, status: .ok, output: "out-\(call.id)", durationMs: 3, startedAt: 0)
    }

    /// How many terminal events (`end` or `failedToStart`) a list of actions holds.
    static func terminals(_ actions: [Action]) -> Int {
        actions.filter {
            switch $0 {
            case .end, .failedToStart: return true
            default: return false
            }
        }.count
    }

    static func terminals(_ read: Machine.ReadAction) -> Int {
        if case .end(let actions) = read { return Self.terminals(actions) }
        return 0
    }

    // MARK: Seqs and the announcement

    @Test func seqsAreContiguousAndTheAnnouncementGoesOutOnce() {
        var machine = Machine(limits: Self.limits())
        #expect(machine.start() == .startUpstream)
        #expect(machine.start() == nil)
        #expect(machine.upstreamConnected() == .announce)
        #expect(machine.upstreamConnected() == nil)
        #expect(machine.take("a") == Self.direct(1))
        #expect(machine.take("bc") == Self.direct(2))
        #expect(machine.take("d") == Self.direct(3))
        #expect(machine.seq == 3)
        #expect(machine.answerBytes == 4)
    }

    @Test func aFirstTokenBeforeTheUpstreamSaidItAcceptedAnnouncesIt() {
        var machine = Machine(limits: Self.limits())
        _ = machine.start()
        #expect(machine.take("a") == Self.direct(1, announce: true))
        #expect(machine.upstreamConnected() == nil)
        #expect(machine.take("b") == Self.direct(2))
    }

    @Test func nothingIsAnnouncedOnceItEnded() {
        var machine = Machine(limits: Self.limits())
        _ = machine.start()
        #expect(machine.upstreamFailed(InferenceError(.unavailable, "refused")) == [.failedToStart(InferenceError(.unavailable, "refused"))])
        #expect(machine.upstreamConnected() == nil)
        #expect(machine.take("a") == .drop)
    }

    // MARK: Cuts

    @Test func maxTokensCutsOnTheExactTokenPastIt() {
        var machine = Self.streaming(Self.limits(maxTokens: 2))
        #expect(machine.take("a") == Self.direct(1))
        #expect(machine.take("b") == Self.direct(2))
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false) == Self.deliverNothing)
        #expect(machine.take("c") == .drop)  // the third token passes max_tokens
        #expect(machine.take("d") == .drop)
        #expect(machine.seq == 2)
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false)
            == .end([.cancelUpstream, .end(Self.end(seq: 2, .length), Self.details(followersAfter: 0))]))
        #expect(machine.end == Self.end(seq: 2, .length))
    }

    @Test func theByteBoundCutsOnTheChunkThatPassesIt() {
        var machine = Self.streaming(Self.limits(maxAnswerBytes: 5))
        #expect(machine.take("abc") == Self.direct(1))
        #expect(machine.take("de") == Self.direct(2))  // exactly 5 bytes: still in
        #expect(machine.take("f") == .drop)
        #expect(machine.take("") == .drop)  // everything after a cut is dropped
        #expect(machine.answerBytes == 5)
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false)
            == .end([.cancelUpstream, .end(Self.end(seq: 2, .length), Self.details())]))
    }

    @Test func aBudgetCutEndsOnTheTokenThatReachesItWithANotice() {
        var machine = Self.streaming(Self.limits(maxTokens: 2, cut: .tokensPerMinute, retryAfterMs: 1500))
        #expect(machine.take("a") == Self.direct(1))
        #expect(machine.take("b") == Self.direct(2))  // reaches the budget: kept, and ends the answer
        #expect(machine.cut == .length)
        #expect(machine.take("c") == .drop)
        let notice = Machine.BudgetNotice(
            code: .rateLimited, message: "stopped at 2 tokens: the tokens-per-minute budget is used up", retryAfterMs: 1500)
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false)
            == .end([.cancelUpstream, .end(Self.end(seq: 2, .length), Self.details(notice: notice))]))
    }

    @Test func theBudgetNoticeComesOnlyWithLengthAndABudgetCut() {
        // A budget cut, but the upstream stopped first: no notice.
        var stopped = Self.streaming(Self.limits(maxTokens: 5, cut: .tokensPerMinute))
        _ = stopped.take("a")
        #expect(stopped.upstreamFinished(.stop) == [.end(Self.end(seq: 1, .stop), Self.details())])
        // `length` from the client's own max_tokens: no notice.
        var uncut = Self.streaming(Self.limits(maxTokens: 1))
        _ = uncut.take("a")
        #expect(uncut.upstreamFinished(.length) == [.end(Self.end(seq: 1, .length), Self.details())])
        // The upstream's own `length` at a quota-reduced max_tokens: the notice says until when;
        // no retry_after_ms when the budget said none.
        let reset = Date(timeIntervalSince1970: 1_700_000_000)
        var quota = Self.streaming(Self.limits(maxTokens: 3, cut: .quota(resetAt: reset)))
        _ = quota.take("a")
        let notice = Machine.BudgetNotice(
            code: .quotaExceeded, message: "stopped at 3 tokens: the token quota is used up until 2023-11-14T22:13:20Z", retryAfterMs: nil)
        #expect(quota.upstreamFinished(.length) == [.end(Self.end(seq: 1, .length), Self.details(notice: notice))])
        // A budget cut that ends in a cancel: no notice.
        var cancelled = Self.streaming(Self.limits(maxTokens: 3, cut: .tokensPerMinute))
        #expect(cancelled.cancel() == [.cancelRequested, .cancelUpstream, .end(Self.end(seq: 0, .cancelled), Self.details())])
    }

    @Test func anExhaustedMemoryBudgetEndsOverloadedBeforeLength() {
        // The token that reaches a budget-reduced max_tokens is also the one the memory budget
        // cannot hold: both cuts in one read, and `overloaded` wins.
        var machine = Self.streaming(Self.limits(maxTokens: 2, cut: .tokensPerMinute))
        #expect(machine.take("a") == Self.direct(1))
        #expect(machine.take("b") == Self.direct(2))
        machine.memoryExhausted()
        #expect(machine.cut == .memory)
        #expect(machine.take("c") == .drop)
        let overloaded = GenerationError(code: .overloaded, message: "the server's memory budget is exhausted; retry shortly")
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false)
            == .end([.cancelUpstream, .countOverBudget, .end(Self.end(seq: 2, .error, error: overloaded), Self.details())]))
    }

    @Test func anExhaustedMemoryBudgetDropsTheRestOfTheRead() {
        var machine = Self.streaming()
        #expect(machine.take("a") == Self.direct(1))
        machine.memoryExhausted()
        #expect(machine.take("b") == .drop)
        guard case .end(let actions) = machine.endOfRead(connected: false, writable: false, hasFollowers: false) else {
            Issue.record("the read did not end the generation")
            return
        }
        #expect(actions.first == .cancelUpstream)
        #expect(actions.dropFirst().first == .countOverBudget)
        #expect(machine.end?.seq == 1)
    }

    // MARK: Exactly one terminal event

    @Test func cancelAfterTheEndIsANoOp() {
        var machine = Self.streaming()
        _ = machine.take("a")
        #expect(machine.upstreamFinished(.stop) == [.end(Self.end(seq: 1, .stop), Self.details())])
        #expect(machine.cancel() == [])
        #expect(machine.abandon() == [])
        #expect(machine.upstreamFinished(.stop) == [])
        #expect(machine.upstreamFailed(InferenceError(.timeout, "late")) == [])
        #expect(machine.toolsFinished([]) == [])
        #expect(machine.take("late") == .drop)
        #expect(machine.end == Self.end(seq: 1, .stop))
    }

    @Test func aCancelBeforeTheUpstreamAnsweredIsStillAnAnnouncedGeneration() {
        var machine = Machine(limits: Self.limits())
        _ = machine.start()
        #expect(machine.cancel() == [.cancelRequested, .announce, .cancelUpstream, .end(Self.end(seq: 0, .cancelled), Self.details())])
        #expect(machine.start() == nil)
    }

    @Test func aCancelBeforeTheRequestWentOutStartsNothing() {
        var machine = Machine(limits: Self.limits())
        #expect(machine.cancel() == [.cancelRequested, .announce, .end(Self.end(seq: 0, .cancelled), Self.details())])
        #expect(machine.start() == nil)
    }

    @Test func aFailureBeforeTheAnnouncementIsAFailureToStart() {
        var machine = Machine(limits: Self.limits())
        _ = machine.start()
        let error = InferenceError(.upstreamError(status: 503), "busy")
        #expect(machine.upstreamFailed(error) == [.failedToStart(error)])
        #expect(machine.phase == .failedToStart)
        #expect(machine.isEnded)
        #expect(machine.end == nil)  // no generation.done
        #expect(machine.cancel() == [])
        #expect(machine.abandon() == [])
    }

    @Test func aFailureAfterTheAnnouncementEndsWithTheError() {
        var machine = Self.streaming()
        _ = machine.take("a")
        let error = InferenceError(.timeout, "no next token in time")
        #expect(machine.upstreamFailed(error)
            == [.end(Self.end(seq: 1, .error, error: GenerationError(code: .upstreamTimeout, message: "no next token in time")), Self.details())])
        #expect(machine.upstreamFailed(error) == [])
    }

    @Test func abandonEndsWithOwnerLostAndStopsTheUpstream() {
        var machine = Machine(limits: Self.limits(shared: true))
        _ = machine.start()
        let ownerLost = GenerationError(code: .ownerLost, message: "the instance running this generation shut down")
        // Never announced: nothing to publish, and the hub gets nothing to keep.
        #expect(machine.abandon() == [.cancelUpstream, .end(Self.end(seq: 0, .error, error: ownerLost), Self.details(announced: false))])
    }

    /// Every order of the events that can end a generation, announced or not: one terminal.
    @Test func exactlyOneTerminalEventInEveryPath() {
        let error = InferenceError(.unavailable, "gone")
        let events: [(String, (inout Machine) -> Int)] = [
            ("finish", { Self.terminals($0.upstreamFinished(.stop)) }),
            ("fail", { Self.terminals($0.upstreamFailed(error)) }),
            ("cancel", { Self.terminals($0.cancel()) }),
            ("abandon", { Self.terminals($0.abandon()) }),
            ("memory", { machine in
                machine.memoryExhausted()
                return Self.terminals(machine.endOfRead(connected: true, writable: true, hasFollowers: true))
            }),
            ("length", { machine in
                _ = machine.take("past max_tokens")
                return Self.terminals(machine.endOfRead(connected: true, writable: true, hasFollowers: true))
            }),
            ("tools", { machine in
                machine.toolCallsRequested([ToolCall(id: "c", name: "clock", arguments: "{}")])
                return Self.terminals(machine.upstreamFinished(.stop)) + Self.terminals(machine.toolsFinished([]))
            }),
        ]
        for announced in [false, true] {
            for first in events.indices {
                for second in events.indices {
                    for third in events.indices {
                        var machine = Machine(limits: Self.limits(maxTokens: 1, tools: true))
                        _ = machine.start()
                        if announced { _ = machine.take("a") }
                        var count = 0
                        for index in [first, second, third] { count += events[index].1(&machine) }
                        count += Self.terminals(machine.cancel())
                        let path = "\([first, second, third].map { events[$0].0 }) announced: \(announced)"
                        #expect(count == 1, "\(path)")
                        #expect(machine.isEnded, "\(path)")
                    }
                }
            }
        }
    }

    // MARK: Usage and tool rounds

    /// Two tool rounds, then the answer: five tokens in three turns; `upstreamUsage` is what the
    /// upstream reported in each turn.
    static func threeTurns(upstreamUsage: [(prompt: Int, completion: Int)?], cancelAtTheEnd: Bool = false) -> [Action] {
        var machine = Self.streaming(Self.limits(tools: true))
        let texts: [[Substring]] = [["a", "b"], ["c"], ["de", "f"]]
        var last: [Action] = []
        for (turn, text) in texts.enumerated() {
            for piece in text { _ = machine.take(piece) }
            if let usage = upstreamUsage[turn] { machine.usageReported(prompt: usage.prompt, completion: usage.completion) }
            _ = machine.endOfRead(connected: true, writable: true, hasFollowers: false)
            if turn < 2 {
                let call = ToolCall(id: "call\(turn)", name: "clock", arguments: "{}")
                machine.toolCallsRequested([call])
                #expect(machine.upstreamFinished(.stop) == [.writeToolCalls([call]), .runTools([call])])
                let from = turn == 0 ? 0 : 2
                #expect(machine.toolsFinished([Self.run(call)]) == [
                    .writeToolResults([Self.run(call)]), .recordToolRuns([Self.run(call)]),
                    .continueWithToolResults(assistantTextFrom: from, calls: [call], runs: [Self.run(call)]), .startUpstream,
                ])
            } else {
                last = cancelAtTheEnd ? machine.cancel() : machine.upstreamFinished(.stop)
            }
        }
        #expect(machine.toolRounds == 2)
        return last
    }

    @Test func usageSumsTheUpstreamsCountsOverTwoToolRounds() {
        #expect(Self.threeTurns(upstreamUsage: [(10, 2), (15, 1), (20, 2)])
            == [.end(Self.end(seq: 5, .stop, prompt: 20, completion: 5, source: .upstream), Self.details())])
    }

    @Test func usageWithoutUpstreamCountsIsTheDeliveredSeqs() {
        #expect(Self.threeTurns(upstreamUsage: [nil, nil, nil]) == [.end(Self.end(seq: 5, .stop), Self.details())])
        // The last turn reported nothing: the gateway counts, with no prompt count to use.
        #expect(Self.threeTurns(upstreamUsage: [(10, 2), (15, 1), nil]) == [.end(Self.end(seq: 5, .stop), Self.details())])
    }

    @Test func aCancelledGenerationKeepsTheUpstreamsCountOnlyWhenItMatchesTheDeliveredSeqs() {
        #expect(Self.threeTurns(upstreamUsage: [(10, 2), (15, 1), (20, 2)], cancelAtTheEnd: true)
            == [.cancelRequested, .cancelUpstream, .end(Self.end(seq: 5, .cancelled, prompt: 20, completion: 5, source: .upstream), Self.details())])
        // 2 + 1 + 9 reported, 5 delivered: the delivered count, with the upstream's prompt count.
        #expect(Self.threeTurns(upstreamUsage: [(10, 2), (15, 1), (20, 9)], cancelAtTheEnd: true)
            == [.cancelRequested, .cancelUpstream, .end(Self.end(seq: 5, .cancelled, prompt: 20), Self.details())])
    }

    @Test func theFifthToolRoundEndsWithTheUpstreamsReason() {
        var machine = Self.streaming(Self.limits(tools: true))
        let call = ToolCall(id: "c", name: "clock", arguments: "{}")
        for round in 1...4 {
            machine.toolCallsRequested([call])
            #expect(machine.upstreamFinished(.stop) == [.writeToolCalls([call]), .runTools([call])], "round \(round)")
            #expect(machine.toolsFinished([Self.run(call)]).last == .startUpstream)
        }
        _ = machine.take("a")
        machine.toolCallsRequested([call])
        #expect(machine.upstreamFinished(.stop) == [.logToolRoundsExhausted(rounds: 4), .end(Self.end(seq: 1, .stop), Self.details())])
    }

    @Test func toolCallsAreNotRunWhenNoToolsAreOffered() {
        var machine = Self.streaming()
        machine.toolCallsRequested([ToolCall(id: "c", name: "clock", arguments: "{}")])
        #expect(machine.upstreamFinished(.stop) == [.end(Self.end(seq: 0, .stop), Self.details())])
    }

    @Test func aToolRoundAnnouncesAndWritesWhatIsHeldFirst() {
        let call = ToolCall(id: "c", name: "clock", arguments: "{}")
        // Tool calls with no text and no word from the upstream yet: still announced first.
        var silent = Machine(limits: Self.limits(tools: true))
        _ = silent.start()
        silent.toolCallsRequested([call])
        #expect(silent.upstreamFinished(.stop) == [.announce, .writeToolCalls([call]), .runTools([call])])
        // Text held for a client that is behind goes out before the calls.
        var behind = Self.streaming(Self.limits(tools: true))
        _ = behind.take("a")
        behind.hold("a", seq: 1)
        #expect(behind.take("b") == Self.merged(2))
        behind.toolCallsRequested([call])
        #expect(behind.upstreamFinished(.stop)
            == [.writeHeld(Pending(firstSeq: 1, lastSeq: 2, text: "ab")), .writeToolCalls([call]), .runTools([call])])
    }

    @Test func theClientsToolCallsGoToTheClientAndEndTheGenerationWithToolCalls() {
        let calls = [ToolCall(id: "a", name: "lookup", arguments: #"{"q":1}"#), ToolCall(id: "b", name: "clock", arguments: "{}")]
        var machine = Self.streaming(Self.limits(clientTools: true))
        #expect(machine.take("x") == Self.direct(1))
        machine.toolCallsRequested(calls)
        machine.usageReported(prompt: 9, completion: 1)
        #expect(machine.upstreamFinished(.stop)
            == [.handToolCallsToClient(calls), .end(Self.end(seq: 1, .toolCalls, prompt: 9, completion: 1, source: .upstream), Self.details())])
        // Nothing runs here, so there is no round and nothing more to do.
        #expect(machine.toolRounds == 0)
        #expect(machine.toolsFinished([Self.run(calls[0])]) == [])
        #expect(machine.cancel() == [])
        // Calls with no text and no word from the upstream yet: announced first; held text goes out before them.
        var silent = Machine(limits: Self.limits(clientTools: true))
        _ = silent.start()
        silent.toolCallsRequested(calls)
        #expect(silent.upstreamFinished(.stop) == [.announce, .handToolCallsToClient(calls), .end(Self.end(seq: 0, .toolCalls), Self.details())])
        var behind = Self.streaming(Self.limits(clientTools: true))
        _ = behind.take("a")
        behind.hold("a", seq: 1)
        behind.toolCallsRequested(calls)
        #expect(behind.upstreamFinished(.stop)
            == [.writeHeld(Pending(firstSeq: 1, lastSeq: 1, text: "a")), .handToolCallsToClient(calls), .end(Self.end(seq: 1, .toolCalls), Self.details())])
    }

    @Test func aCutAnswerDoesNotHandOverTheClientsToolCalls() {
        var machine = Self.streaming(Self.limits(maxTokens: 1, clientTools: true))
        #expect(machine.take("a") == Self.direct(1))
        #expect(machine.take("b") == .drop)
        machine.toolCallsRequested([ToolCall(id: "a", name: "lookup", arguments: "{}")])
        guard case .end(let actions) = machine.endOfRead(connected: true, writable: true, hasFollowers: false) else {
            Issue.record("a cut ends the generation at the end of the read")
            return
        }
        #expect(!actions.contains { if case .handToolCallsToClient = $0 { true } else { false } })
        #expect(actions.last == .end(Self.end(seq: 1, .length), Self.details()))
    }

    @Test func aCancelWhileToolsRunStopsThemAndTheirResultsAreDropped() {
        var machine = Self.streaming(Self.limits(tools: true))
        let call = ToolCall(id: "c", name: "clock", arguments: "{}")
        machine.toolCallsRequested([call])
        _ = machine.upstreamFinished(.stop)
        #expect(machine.cancel() == [.cancelRequested, .cancelTools, .end(Self.end(seq: 0, .cancelled), Self.details())])
        #expect(machine.toolsFinished([Self.run(call)]) == [])
    }

    // MARK: Merging for a client that is behind

    @Test func aClientThatIsBehindGetsOneMergedDeltaWhenItCanTakeIt() {
        var machine = Self.streaming()
        #expect(machine.take("a") == Self.direct(1))
        machine.hold("a", seq: 1)  // the client could not take it
        #expect(machine.take("b") == Self.merged(2))
        #expect(machine.take("c") == Self.merged(3))
        #expect(machine.heldBytes == 3)
        // Not writable at the end of the read: still held.
        #expect(machine.endOfRead(connected: true, writable: false, hasFollowers: false) == Self.deliverNothing)
        // Writable at the end of the next read: one delta.
        #expect(machine.take("d") == Self.merged(4))
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false)
            == .deliver(held: Pending(firstSeq: 1, lastSeq: 4, text: "abcd"), followers: nil, broker: nil))
        #expect(machine.heldBytes == 0)
        #expect(machine.take("e") == Self.direct(5))
    }

    @Test func whatIsHeldGoesOutWhenTheClientBecomesWritable() {
        var machine = Self.streaming()
        _ = machine.take("a")
        _ = machine.take("b")
        machine.hold("b", seq: 2)
        #expect(machine.outputWritable() == .writeHeld(Pending(firstSeq: 2, lastSeq: 2, text: "b")))
        #expect(machine.outputWritable() == nil)
        #expect(machine.take("c") == Self.direct(3))
    }

    @Test func whatIsHeldGoesOutBeforeDone() {
        var machine = Self.streaming()
        _ = machine.take("a")
        machine.hold("a", seq: 1)
        _ = machine.take("b")
        // A client that went away keeps nothing new held; what was held stays for the end.
        #expect(machine.endOfRead(connected: false, writable: false, hasFollowers: false) == Self.deliverNothing)
        #expect(machine.upstreamFinished(.stop)
            == [.end(Self.end(seq: 2, .stop), Self.details(held: Pending(firstSeq: 1, lastSeq: 2, text: "ab")))])
    }

    // MARK: Followers, the broker, the cache

    @Test func followersAndTheBrokerGetEachNewRangeOnce() {
        var machine = Machine(limits: Self.limits(shared: true))
        _ = machine.start()
        // Not announced yet: nothing for the broker (and no seqs either).
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: true) == Self.deliverNothing)
        _ = machine.take("a")
        _ = machine.take("b")
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: true)
            == .deliver(held: nil, followers: Machine.SeqRange(after: 0, upTo: 2), broker: Machine.SeqRange(after: 0, upTo: 2)))
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: true) == Self.deliverNothing)
        _ = machine.take("c")
        // Without followers their seq stays; a follower that attaches is sent up to here itself.
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false)
            == .deliver(held: nil, followers: nil, broker: Machine.SeqRange(after: 2, upTo: 3)))
        #expect(machine.followerAttaching(othersWaiting: false) == nil)
        #expect(machine.followersSeq == 3)
        _ = machine.take("d")
        // A second follower: the first one is brought up to date first.
        #expect(machine.followerAttaching(othersWaiting: true) == Machine.SeqRange(after: 3, upTo: 4))
        _ = machine.take("e")
        #expect(machine.upstreamFinished(.stop)
            == [.end(Self.end(seq: 5, .stop), Self.details(publishBatchAfter: 3, publishEnd: true, followersAfter: 4))])
    }

    @Test func republishingStartsTheBrokerOverFromTheWholeAnswer() {
        var machine = Self.streaming(Self.limits(shared: true))
        _ = machine.take("a")
        _ = machine.take("b")
        #expect(machine.republishing() == 2)
        #expect(machine.endOfRead(connected: true, writable: true, hasFollowers: false) == Self.deliverNothing)
        var local = Self.streaming()
        _ = local.take("a")
        #expect(local.republishing() == nil)
    }

    @Test func aCachedAnswerSaysSoInItsDone() {
        var machine = Machine(limits: Self.limits())
        _ = machine.start()
        machine.wasCached()
        #expect(machine.upstreamConnected() == .announce)
        _ = machine.take("a")
        #expect(machine.upstreamFinished(.stop) == [.end(Self.end(seq: 1, .stop), Self.details(cached: true))])
    }
}
