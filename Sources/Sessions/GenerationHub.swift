import Inference
import NIOCore
import SluiceProtocol
import Synchronization
import WSServer

/// What a client needs to show a generation it did not start (`generation.started`).
struct GenerationInfo: Sendable, Equatable {
    var generationID: String
    var conversationID: String
    var requestID: String?
    var model: String
}

/// How a generation ended (`generation.done`).
package struct GenerationEnd: Sendable, Equatable {
    package var seq: Int64
    package var finishReason: FinishReason
    package var usage: Usage
    package var error: GenerationError?
}

package struct GenerationError: Sendable, Equatable {
    package var code: ErrorCode
    package var message: String
}

/// A piece of a generation for a follower: optionally `generation.started`, then the text of
/// seqs `firstSeq...lastSeq` merged (empty when `lastSeq < firstSeq`), then optionally the end.
struct FollowUpdate: Sendable, Equatable {
    var started: GenerationInfo?
    var firstSeq: Int64
    var lastSeq: Int64
    var text: String
    /// Where each seq's text ends in `text` (UTF-8 offsets), so an overlap can be cut exactly.
    var tokenEnds: [Int32] = []
    var end: GenerationEnd?

    var hasText: Bool { self.lastSeq >= self.firstSeq }

    static func endOnly(_ end: GenerationEnd) -> FollowUpdate {
        FollowUpdate(started: nil, firstSeq: 1, lastSeq: 0, text: "", end: end)
    }

    /// The same update without seqs `...seq` (already delivered).
    func dropping(through seq: Int64) -> FollowUpdate {
        guard self.hasText, seq >= self.firstSeq else { return self }
        var copy = self
        copy.firstSeq = seq + 1
        guard seq < self.lastSeq else {
            copy.text = ""
            copy.tokenEnds = []
            return copy
        }
        let dropCount = Int(seq - self.firstSeq + 1)
        let cut = Int(self.tokenEnds[dropCount - 1])
        copy.text = String(decoding: self.text.utf8.dropFirst(cut), as: UTF8.self)
        copy.tokenEnds = self.tokenEnds.dropFirst(dropCount).map { $0 - Int32(cut) }
        return copy
    }
}

/// A session's handle for following a generation that runs elsewhere (another connection, on
/// any event loop). The owner calls `send` on its own loop; delivery hops to the follower's.
final class GenerationFollower: Sendable {
    let eventLoop: any EventLoop
    private let deliver: @Sendable (FollowUpdate) -> Void

    init(eventLoop: any EventLoop, deliver: @escaping @Sendable (FollowUpdate) -> Void) {
        self.eventLoop = eventLoop
        self.deliver = deliver
    }

    func send(_ update: FollowUpdate) {
        if self.eventLoop.inEventLoop {
            self.deliver(update)
        } else {
            let deliver = self.deliver
            self.eventLoop.execute { deliver(update) }
        }
    }
}

/// Watches a conversation: told about every generation that starts in it.
final class ConversationWatcher: Sendable {
    /// The watching session, so its own generations are not announced back to it.
    let sessionID: String
    let eventLoop: any EventLoop
    private let notify: @Sendable (String) -> Void

    init(sessionID: String, eventLoop: any EventLoop, notify: @escaping @Sendable (String) -> Void) {
        self.sessionID = sessionID
        self.eventLoop = eventLoop
        self.notify = notify
    }

    /// A generation started in the watched conversation (on this instance or another).
    func generationStarted(_ generationID: String) {
        let notify = self.notify
        self.eventLoop.execute { notify(generationID) }
    }
}

/// This instance's generations, running and lately ended, by id and by conversation: what
/// `generation.resume`, `generation.cancel` from another connection and `conversation.subscribe`
/// look up. Ended generations stay (with their whole text) for `retention`, at most
/// `maxRetained` of them, so a client that reconnects can still resume.
///
/// Their bytes are charged to the process-wide `MemoryBudget`, and they are the first thing
/// given back when it is tight: a reservation that does not fit evicts the oldest retained
/// answers first. An answer the budget cannot hold at all is not retained (resuming it then
/// finds nothing here; the stored conversation still has it).
final class GenerationHub: Sendable {
    struct Entry: Sendable {
        let generationID: String
        let conversationID: String
        /// Whose it is: only this user may resume or cancel it (anyone else gets `not_found`).
        let user: String
        /// The session that started it (followers of the conversation other than it are told).
        let ownerSessionID: String
        var state: EntryState
    }

    enum EntryState: Sendable {
        /// Attach followers and cancel on its event loop.
        case running(eventLoop: any EventLoop, generation: NIOLoopBound<ChatGeneration>)
        /// Its whole text, for resuming without a hop.
        case finished(FinishedGeneration)
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var running: [String: Set<String>] = [:]  // conversation → running generation ids
        var runningCount = 0
        var watchers: [String: [ConversationWatcher]] = [:]  // conversation → watchers
        /// Ended generations, oldest first, with the bytes each holds of the budget.
        var ended: [(id: String, at: NIODeadline, bytes: Int)] = []
        var endedStart = 0
        var retainedBytes = 0
    }

    private let state = Mutex(State())
    let retention: TimeAmount
    let maxRetained: Int
    /// Bytes held for clients, process-wide: running answers (`ChatGeneration`) and retained ones.
    let budget: MemoryBudget

    /// Running generations and the conversations they are in, as gauges.
    private let metrics: ChatMetrics?

    /// Bookkeeping of one retained answer beyond its text and seq offsets (entry, ids, end).
    static let retainedOverhead = 512

    init(retention: TimeAmount = .minutes(5), maxRetained: Int = 10_000, metrics: ChatMetrics? = nil, budget: MemoryBudget = .unlimited()) {
        self.retention = retention
        self.maxRetained = maxRetained
        self.metrics = metrics
        self.budget = budget
        budget.addReclaimer { [weak self] wanted in self?.reclaim(wanted) ?? 0 }
    }

    private func recordRunning(_ generations: Int, _ conversations: Int) {
        guard let metrics = self.metrics else { return }
        metrics.activeGenerations.record(generations)
        metrics.activeConversations.record(conversations)
    }

    func register(_ entry: Entry) {
        let (watchers, generations, conversations) = self.state.withLock { state in
            state.entries[entry.generationID] = entry
            if state.running[entry.conversationID, default: []].insert(entry.generationID).inserted { state.runningCount += 1 }
            let watchers = (state.watchers[entry.conversationID] ?? []).filter { $0.sessionID != entry.ownerSessionID }
            return (watchers, state.runningCount, state.running.count)
        }
        self.recordRunning(generations, conversations)
        for watcher in watchers { watcher.generationStarted(entry.generationID) }
    }

    /// A generation ended: kept for resuming if the budget holds it. `charged` is what the
    /// running generation held of the budget (as `.generation`), handed over to the hub.
    func generationFinished(_ finished: FinishedGeneration, charged: Int = 0) {
        let now = NIODeadline.now()
        let generationID = finished.info.generationID
        let conversationID = finished.info.conversationID
        // What keeping it costs; taken from what the running answer held, the rest reserved
        // now (outside the lock: reserving may ask this hub to evict older answers).
        let cost = Self.retainedOverhead + finished.text.count + finished.tokenEnds.count * MemoryLayout<Int32>.size
        let keep = self.maxRetained > 0 && (cost <= charged || self.budget.reserve(cost - charged, for: .retainedGeneration))
        if charged > cost {
            self.budget.release(charged - cost, for: .generation)
        }
        if keep {
            self.budget.move(min(charged, cost), from: .generation, to: .retainedGeneration)
        } else {
            self.budget.release(min(charged, cost), for: .generation)
            self.metrics?.retainedNotKept.increment()
        }
        let (generations, conversations) = self.state.withLock { state in
            if keep && state.entries[generationID] != nil {
                state.entries[generationID]?.state = .finished(finished)
                state.ended.append((generationID, now, cost))
                state.retainedBytes += cost
            } else {
                state.entries[generationID] = nil
                if keep { self.budget.release(cost, for: .retainedGeneration) }
            }
            if state.running[conversationID]?.remove(generationID) != nil { state.runningCount -= 1 }
            if state.running[conversationID]?.isEmpty == true { state.running[conversationID] = nil }
            self.evict(&state, now: now)
            return (state.runningCount, state.running.count)
        }
        self.recordRunning(generations, conversations)
    }

    func lookup(_ generationID: String) -> Entry? {
        let now = NIODeadline.now()
        return self.state.withLock { state in
            self.evict(&state, now: now)
            return state.entries[generationID]
        }
    }

    /// A running generation ended because the budget could not hold its answer.
    func countOverBudget() { self.metrics?.overBudget.increment() }

    /// Bytes the retained answers hold now.
    var retainedBytes: Int { self.state.withLock { $0.retainedBytes } }

    /// The budget is tight: forgets the oldest retained answers until `wanted` bytes are
    /// freed or none is left; returns what was freed.
    func reclaim(_ wanted: Int) -> Int {
        let (freed, forgotten) = self.state.withLock { state -> (Int, Int) in
            var freed = 0
            var forgotten = 0
            while freed < wanted, state.endedStart < state.ended.count {
                freed += self.forgetOldest(&state)
                forgotten += 1
            }
            Self.compact(&state)
            return (freed, forgotten)
        }
        if forgotten > 0 { self.metrics?.retainedEvicted.increment(by: forgotten) }
        return freed
    }

    /// Starts watching; returns the generations running in the conversation now (not the
    /// watcher's own), which the watcher follows from their start.
    func watch(_ conversationID: String, _ watcher: ConversationWatcher) -> [Entry] {
        self.state.withLock { state in
            state.watchers[conversationID, default: []].append(watcher)
            return (state.running[conversationID] ?? []).compactMap { state.entries[$0] }
                .filter { $0.ownerSessionID != watcher.sessionID }
        }
    }

    func unwatch(_ conversationID: String, _ watcher: ConversationWatcher) {
        self.state.withLock { state in
            state.watchers[conversationID]?.removeAll { $0 === watcher }
            if state.watchers[conversationID]?.isEmpty == true { state.watchers[conversationID] = nil }
        }
    }

    /// Generations of this instance still running.
    var running: [Entry] {
        self.state.withLock { state in state.running.values.flatMap { $0 }.compactMap { state.entries[$0] } }
    }

    var counts: (entries: Int, watchedConversations: Int) {
        self.state.withLock { ($0.entries.count, $0.watchers.count) }
    }

    /// Forgets ended generations past their retention or beyond the count bound (oldest first).
    private func evict(_ state: inout State, now: NIODeadline) {
        while state.endedStart < state.ended.count {
            let oldest = state.ended[state.endedStart]
            let retained = state.ended.count - state.endedStart
            guard retained > self.maxRetained || oldest.at + self.retention <= now else { break }
            self.forgetOldest(&state)
        }
        Self.compact(&state)
    }

    /// Forgets the oldest retained answer and gives its bytes back; returns them.
    @discardableResult
    private func forgetOldest(_ state: inout State) -> Int {
        let oldest = state.ended[state.endedStart]
        state.entries[oldest.id] = nil
        state.endedStart += 1
        state.retainedBytes -= oldest.bytes
        self.budget.release(oldest.bytes, for: .retainedGeneration)
        return oldest.bytes
    }

    private static func compact(_ state: inout State) {
        if state.endedStart > 1024 && state.endedStart > state.ended.count / 2 {
            state.ended.removeFirst(state.endedStart)
            state.endedStart = 0
        }
    }
}

/// A generation that ended, kept for `generation.resume`: its text with the byte offset where
/// each seq ends, so any `after_seq` can be replayed as one merged delta.
struct FinishedGeneration: Sendable {
    var info: GenerationInfo
    var text: [UInt8]
    /// `tokenEnds[i]` is where seq `i + 1` ends in `text`.
    var tokenEnds: [Int32]
    var end: GenerationEnd

    /// Everything after `afterSeq`, with `generation.started` first and the end last.
    func replay(after afterSeq: Int64) -> FollowUpdate {
        TokenLog.update(text: self.text, tokenEnds: self.tokenEnds, after: afterSeq, upTo: Int64(self.tokenEnds.count),
                        started: self.info, end: self.end)
    }
}

enum TokenLog {
    /// The text of seqs `afterSeq + 1 ... lastSeq`, merged.
    static func update(
        text: some Collection<UInt8>, tokenEnds: [Int32], after afterSeq: Int64, upTo lastSeq: Int64,
        started: GenerationInfo?, end: GenerationEnd?
    ) -> FollowUpdate {
        let from = max(0, min(afterSeq, lastSeq))
        let startOffset = from == 0 ? 0 : Int(tokenEnds[Int(from) - 1])
        let endOffset = lastSeq == 0 ? 0 : Int(tokenEnds[Int(lastSeq) - 1])
        let slice = text.dropFirst(startOffset).prefix(endOffset - startOffset)
        let ends = from < lastSeq ? tokenEnds[Int(from)..<Int(lastSeq)].map { $0 - Int32(startOffset) } : []
        return FollowUpdate(started: started, firstSeq: from + 1, lastSeq: lastSeq, text: String(decoding: slice, as: UTF8.self),
                            tokenEnds: ends, end: end)
    }
}
