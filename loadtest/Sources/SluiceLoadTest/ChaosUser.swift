import Foundation
import NIOCore
import SluiceProtocol
import NIOWebSocket

/// Settings of the `chaos` scenario.
struct ChaosSettings: Sendable {
    /// Share of answers a user drops on purpose in the middle (then reconnects and resumes), so
    /// that some clients always follow a generation owned by another instance.
    var dropFraction: Double = 0
    /// Turns in one conversation before the user starts a new one.
    var turnsPerConversation = 4
    /// After `--duration`, how long users may wait for the answers they have in flight to end;
    /// a generation still without a terminal event then is counted as never ended.
    var endTimeout: TimeAmount = .seconds(120)
    /// Each think time is `--think-time` × a random factor in 1 ± this.
    var thinkJitter = 0.5
}

/// Everything one request and its generation did, as the client saw it. Touched only on its
/// user's event loop.
final class ChaosRecord {
    enum Outcome: String {
        /// `chat.send` went out; nothing came back yet.
        case pending
        /// `generation.started` arrived: a generation.
        case started
        /// An `error` with the request's id: no generation (overloaded, unavailable, …).
        case refused
        /// The connection went away before `generation.started`: its fate is unknown to the client.
        case cutBeforeStart = "cut_before_start"
        /// Still pending when the run's end bound passed.
        case neverAnswered = "never_answered"
    }

    let user: Int
    let requestID: String
    let prompt: String
    /// The conversation the request continued (nil: a new one).
    let requestedConversationID: String?
    let sentAt: Double
    var outcome = Outcome.pending
    var refusalCode: String?
    var conversationID: String?
    var generationID: String?
    var startedAt: Double?
    var endedAt: Double?
    /// The deltas' `text` fields as received (JSON string contents, escapes kept), concatenated
    /// in arrival order.
    var text = ""
    /// The highest seq received.
    var lastSeq: Int64 = 0
    /// Seqs skipped (a delta starting past `lastSeq + 1`), and seqs received twice.
    var missing: Int64 = 0
    var repeated: Int64 = 0
    var deltaMessages = 0
    /// Deltas that came after the generation's first terminal event.
    var lateDeltas = 0
    /// Every terminal event: `generation.done`, or an `error` naming the generation.
    var terminals: [[String: Any]] = []
    /// `generation.resume` sent, and those answered `unavailable` (sent again later).
    var resumes = 0
    var resumeRetries = 0
    /// Connections dropped on purpose, and lost otherwise, while it streamed.
    var drops = 0
    var cuts = 0
    /// Instances whose connection delivered `generation.started` for it (in order).
    var instances: [String] = []
    /// Drop the connection once this seq has arrived (once).
    var dropAfterSeq: Int64?

    init(user: Int, requestID: String, prompt: String, requestedConversationID: String?, sentAt: Double) {
        self.user = user
        self.requestID = requestID
        self.prompt = prompt
        self.requestedConversationID = requestedConversationID
        self.sentAt = sentAt
    }

    var isGeneration: Bool { self.generationID != nil }

    /// `done` with `stop` or `length` as its only terminal event.
    var completed: Bool {
        self.terminals.count == 1 && self.terminals[0]["type"] as? String == "done"
            && ["stop", "length"].contains(self.terminals[0]["finish_reason"] as? String ?? "")
    }

    /// Applies one delta covering `firstSeq...seq`.
    func delta(firstSeq: Int64, seq: Int64, text: Substring) {
        self.deltaMessages += 1
        if !self.terminals.isEmpty { self.lateDeltas += 1 }
        if seq <= self.lastSeq {
            self.repeated += max(0, seq - firstSeq + 1)
            return
        }
        if firstSeq <= self.lastSeq {
            self.repeated += self.lastSeq - firstSeq + 1
        } else if firstSeq > self.lastSeq + 1 {
            self.missing += firstSeq - self.lastSeq - 1
        }
        self.text += text
        self.lastSeq = seq
    }

    var json: [String: Any] {
        var object: [String: Any] = [
            "user": self.user, "request_id": self.requestID, "prompt": self.prompt, "sent_at": self.sentAt,
            "outcome": self.outcome.rawValue, "text_json": self.text, "last_seq": self.lastSeq, "missing": self.missing,
            "repeated": self.repeated, "delta_messages": self.deltaMessages, "late_deltas": self.lateDeltas,
            "terminals": self.terminals, "resumes": self.resumes, "resume_retries": self.resumeRetries, "drops": self.drops,
            "cuts": self.cuts, "instances": self.instances, "completed": self.completed,
        ]
        if let value = self.requestedConversationID { object["requested_conversation_id"] = value }
        if let value = self.refusalCode { object["refusal_code"] = value }
        if let value = self.conversationID { object["conversation_id"] = value }
        if let value = self.generationID { object["generation_id"] = value }
        if let value = self.startedAt { object["started_at"] = value }
        if let value = self.endedAt { object["ended_at"] = value }
        return object
    }
}

/// One event loop's records and counters (merged at the end).
final class ChaosLog {
    var records: [ChaosRecord] = []
    var connections = 0
    var connectFailures = 0
    var unplannedDisconnects = 0
    /// Messages about no request or generation of the user's (should not happen).
    var stray: [String: Int] = [:]
    /// Users still waiting at the end bound.
    var gaveUp = 0
}

/// The chaos scenario's user: one conversation at a time (a few turns, then a new one), one
/// request at a time, each with a unique `request_id` and a prompt naming it (so the stored
/// user message can be found). On any lost connection it reconnects and resumes the answer in
/// progress after the last seq it has; it records exactly what arrived for every generation.
final class ChaosUser: WebSocketUser {
    let index: Int
    let loop: any EventLoop
    let run: Run
    let log: ChaosLog
    private var channel: (any Channel)?
    /// Counts connections, so a timer set for one does nothing on the next.
    private var connectionNumber = 0
    private var finished = false
    private var conversationID: String?
    private var turns = 0
    private var requests = 0
    /// The request still waiting for `generation.started`.
    private var pending: ChaosRecord?
    /// The generation streaming now (started, no terminal event yet).
    private var current: ChaosRecord?
    /// The connection was closed on purpose: resume on the next one without counting a cut.
    private var droppedOnPurpose = false
    /// Every generation of this user by id, so a late or second terminal event is attributed.
    private var byGeneration: [String: ChaosRecord] = [:]

    init(index: Int, loop: any EventLoop, run: Run, log: ChaosLog) {
        self.index = index
        self.loop = loop
        self.run = run
        self.log = log
    }

    private var now: Double { Double((NIODeadline.now() - self.run.startedAt).nanoseconds) / 1e9 }

    func start() {
        let delay = self.run.users > 1 ? TimeAmount.nanoseconds(self.run.rampUp.nanoseconds * Int64(self.index) / Int64(self.run.users)) : .zero
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        self.loop.scheduleTask(in: delay) { bound.value.connect() }
        self.loop.scheduleTask(deadline: self.run.endAt + self.run.chaos.endTimeout) { bound.value.giveUp() }
    }

    // MARK: Connection

    private func connect() {
        guard !self.finished else { return }
        if self.run.timeIsUp && self.current == nil {
            self.finish()
            return
        }
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        // Each user its own (development-mode) identity: its conversations are its own.
        WebSocketDial.connect(self.run.target(), on: self.loop, user: self, headers: [("X-Sluice-User", "chaos-\(self.index)")]) {
            bound.value.log.connectFailures += 1
            bound.eventLoop.scheduleTask(in: .milliseconds(100)) { bound.value.connect() }
        }
    }

    func connected(_ channel: any Channel) {
        self.channel = channel
        self.connectionNumber += 1
        self.log.connections += 1
    }

    func disconnected() {
        self.channel = nil
        guard !self.finished else { return }
        if let pending = self.pending {
            pending.outcome = .cutBeforeStart
            self.pending = nil
        }
        if let current = self.current, !self.droppedOnPurpose { current.cuts += 1 }
        if !self.droppedOnPurpose { self.log.unplannedDisconnects += 1 }
        self.droppedOnPurpose = false
        // Spread the reconnections of a dead instance's users a little.
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        self.loop.scheduleTask(in: .milliseconds(Int64.random(in: 20...250))) { bound.value.connect() }
    }

    private func finish() {
        guard !self.finished else { return }
        self.finished = true
        if let channel = self.channel {
            var data = channel.allocator.buffer(capacity: 2)
            data.write(webSocketErrorCode: .normalClosure)
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data), promise: nil)
            channel.close(promise: nil)
        }
        self.run.userFinished()
    }

    /// The end bound: whatever is still open stays without a terminal event.
    private func giveUp() {
        guard !self.finished else { return }
        if let pending = self.pending {
            pending.outcome = .neverAnswered
            self.pending = nil
        }
        self.log.gaveUp += 1
        self.finish()
    }

    /// A `sluice.v1` message, encoded (and escaped) by `SluiceProtocol`, as the server decodes it.
    private func send(_ message: ClientMessage) {
        guard let channel = self.channel else { return }
        var buffer = channel.allocator.buffer(capacity: 128)
        ClientMessageEncoder.encode(message, into: &buffer)
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: buffer), promise: nil)
    }

    // MARK: Requests

    /// The next request after a think time (or `delay`), or the end once time is up.
    private func next(after delay: TimeAmount? = nil) {
        guard !self.finished, self.current == nil, self.pending == nil else { return }
        if self.run.timeIsUp {
            self.finish()
            return
        }
        let think = self.run.thinkTime.nanoseconds
        let jitter = self.run.chaos.thinkJitter
        let wait = delay ?? .nanoseconds(Int64(Double(think) * Double.random(in: max(0, 1 - jitter)...(1 + jitter))))
        let connection = self.connectionNumber
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        self.loop.scheduleTask(in: wait) {
            let user = bound.value
            guard user.connectionNumber == connection, user.channel != nil else { return }  // the next session.ready sends it
            user.sendRequest()
        }
    }

    private func sendRequest() {
        guard !self.finished, self.current == nil, self.pending == nil, self.channel != nil else { return }
        if self.run.timeIsUp {
            self.finish()
            return
        }
        self.requests += 1
        if self.turns >= self.run.chaos.turnsPerConversation {
            self.conversationID = nil
            self.turns = 0
        }
        let requestID = "u\(self.index)-r\(self.requests)"
        let prompt = "\(self.run.prompt) [\(requestID)]"
        let record = ChaosRecord(user: self.index, requestID: requestID, prompt: prompt, requestedConversationID: self.conversationID, sentAt: self.now)
        if Double.random(in: 0..<1) < self.run.chaos.dropFraction {
            record.dropAfterSeq = Int64.random(in: 1...Int64(max(1, (self.run.maxTokens ?? 100) * 3 / 4)))
        }
        self.log.records.append(record)
        self.pending = record
        self.send(.chatSend(.init(content: prompt, requestID: requestID, conversationID: self.conversationID, maxTokens: self.run.maxTokens)))
    }

    private func sendResume() {
        guard let current = self.current, let generationID = current.generationID, self.channel != nil else { return }
        current.resumes += 1
        self.send(.generationResume(generationID: generationID, afterSeq: current.lastSeq))
    }

    // MARK: Messages

    func received(_ payload: ByteBuffer, now: NIODeadline) {
        let fields = ServerMessageScanner(payload)
        switch fields.type {
        case "session.ready":
            let instance = fields.string("instance_id").map(String.init) ?? "?"
            self.currentInstance = instance
            if self.current != nil {
                self.sendResume()
            } else {
                self.next()
            }
        case "generation.started":
            self.started(fields)
        case "generation.delta":
            self.delta(fields)
        case "generation.done":
            guard let generationID = fields.string("generation_id").map(String.init), let record = self.byGeneration[generationID] else {
                self.log.stray["generation.done", default: 0] += 1
                return
            }
            var terminal: [String: Any] = ["type": "done", "at": self.now]
            if let reason = fields.string("finish_reason") { terminal["finish_reason"] = String(reason) }
            if let seq = fields.integer("seq") { terminal["seq"] = seq }
            if let code = fields.string("code") { terminal["code"] = String(code) }
            self.terminal(terminal, for: record)
        case "error":
            self.error(fields)
        default:
            break
        }
    }

    /// The instance of the connection now (from `session.ready`).
    private var currentInstance = "?"

    private func started(_ fields: ServerMessageScanner) {
        guard let generationID = fields.string("generation_id").map(String.init) else { return }
        if let pending = self.pending, fields.string("request_id").map(String.init) == pending.requestID {
            pending.outcome = .started
            pending.generationID = generationID
            pending.conversationID = fields.string("conversation_id").map(String.init)
            pending.startedAt = self.now
            pending.instances.append(self.currentInstance)
            self.pending = nil
            self.current = pending
            self.byGeneration[generationID] = pending
            self.conversationID = pending.conversationID
            self.turns += 1
        } else if let current = self.current, current.generationID == generationID {
            current.instances.append(self.currentInstance)  // a resume starts with it again
        } else {
            self.log.stray["generation.started", default: 0] += 1
        }
    }

    private func delta(_ fields: ServerMessageScanner) {
        guard let generationID = fields.string("generation_id").map(String.init), let record = self.byGeneration[generationID],
              let seq = fields.integer("seq")
        else {
            self.log.stray["generation.delta", default: 0] += 1
            return
        }
        record.delta(firstSeq: fields.integer("first_seq") ?? seq, seq: seq, text: fields.string("text") ?? "")
        if record === self.current, let dropAt = record.dropAfterSeq, record.lastSeq >= dropAt {
            record.dropAfterSeq = nil
            record.drops += 1
            self.droppedOnPurpose = true
            self.channel?.close(promise: nil)
        }
    }

    private func error(_ fields: ServerMessageScanner) {
        let code = fields.string("code").map(String.init) ?? "unknown"
        if let generationID = fields.string("generation_id").map(String.init), let record = self.byGeneration[generationID] {
            if record === self.current, code == "unavailable" {
                // The shared store is unreachable for now (Redis restarting): ask again.
                record.resumeRetries += 1
                let wait = TimeAmount.milliseconds(fields.integer("retry_after_ms") ?? 1000)
                let connection = self.connectionNumber
                let bound = NIOLoopBound(self, eventLoop: self.loop)
                let awaited = NIOLoopBound(record, eventLoop: self.loop)
                self.loop.scheduleTask(in: wait) {
                    let user = bound.value
                    guard user.connectionNumber == connection, user.current === awaited.value else { return }
                    user.sendResume()
                }
                return
            }
            self.terminal(["type": "error", "code": code, "at": self.now], for: record)
            return
        }
        if let requestID = fields.string("request_id").map(String.init), let pending = self.pending, pending.requestID == requestID {
            pending.outcome = .refused
            pending.refusalCode = code
            self.pending = nil
            // The conversation is gone (never stored, cache expired): start a new one.
            if code == "not_found" {
                self.conversationID = nil
                self.turns = 0
            }
            self.next(after: fields.integer("retry_after_ms").map { .milliseconds($0) })
            return
        }
        self.log.stray["error:" + code, default: 0] += 1
    }

    private func terminal(_ terminal: [String: Any], for record: ChaosRecord) {
        record.terminals.append(terminal)
        guard record === self.current else { return }  // a second one, counted
        record.endedAt = self.now
        self.current = nil
        self.next()
    }
}

@available(*, unavailable)
extension ChaosUser: Sendable {}

@available(*, unavailable)
extension ChaosRecord: Sendable {}

@available(*, unavailable)
extension ChaosLog: Sendable {}

/// The client-side figures of a chaos run, from every record.
struct ChaosSummary: Sendable {
    var requests = 0
    var generations = 0
    var refused: [String: Int] = [:]
    var cutBeforeStart = 0
    var neverAnswered = 0
    var completed = 0
    var completedResumed = 0
    var resumes = 0
    var drops = 0
    var cuts = 0
    var endings: [String: Int] = [:]
    var missingInCompleted: Int64 = 0
    var repeatedInCompleted: Int64 = 0
    var missingAll: Int64 = 0
    var repeatedAll: Int64 = 0
    var doneSeqMismatches = 0
    var withoutTerminal = 0
    var withSeveralTerminals = 0
    var lateDeltas = 0
    var deltas: Int64 = 0
    var connections = 0
    var connectFailures = 0
    var unplannedDisconnects = 0
    var stray: [String: Int] = [:]
    var gaveUp = 0

    init() {}

    /// Adds one loop's records (on that loop).
    mutating func add(_ log: ChaosLog) {
        self.connections += log.connections
        self.connectFailures += log.connectFailures
        self.unplannedDisconnects += log.unplannedDisconnects
        self.stray.merge(log.stray, uniquingKeysWith: +)
        self.gaveUp += log.gaveUp
        for record in log.records {
            self.requests += 1
            switch record.outcome {
            case .refused: self.refused[record.refusalCode ?? "?", default: 0] += 1
            case .cutBeforeStart: self.cutBeforeStart += 1
            case .neverAnswered: self.neverAnswered += 1
            case .pending, .started: break
            }
            guard record.isGeneration else { continue }
            self.generations += 1
            self.resumes += record.resumes
            self.drops += record.drops
            self.cuts += record.cuts
            self.lateDeltas += record.lateDeltas
            self.deltas += record.lastSeq
            self.missingAll += record.missing
            self.repeatedAll += record.repeated
            if record.terminals.isEmpty { self.withoutTerminal += 1 }
            if record.terminals.count > 1 { self.withSeveralTerminals += 1 }
            if let first = record.terminals.first {
                let kind = first["type"] as? String == "done"
                    ? "done:" + (first["finish_reason"] as? String ?? "?") + ((first["code"] as? String).map { ":" + $0 } ?? "")
                    : "error:" + (first["code"] as? String ?? "?")
                self.endings[kind, default: 0] += 1
            } else {
                self.endings["none", default: 0] += 1
            }
            if record.completed {
                self.completed += 1
                if record.resumes > 0 { self.completedResumed += 1 }
                self.missingInCompleted += record.missing
                self.repeatedInCompleted += record.repeated
                if record.terminals[0]["seq"] as? Int64 != record.lastSeq { self.doneSeqMismatches += 1 }
            }
        }
    }

    func merged(_ other: ChaosSummary) -> ChaosSummary {
        var result = self
        result.requests += other.requests
        result.generations += other.generations
        result.refused.merge(other.refused, uniquingKeysWith: +)
        result.cutBeforeStart += other.cutBeforeStart
        result.neverAnswered += other.neverAnswered
        result.completed += other.completed
        result.completedResumed += other.completedResumed
        result.resumes += other.resumes
        result.drops += other.drops
        result.cuts += other.cuts
        result.endings.merge(other.endings, uniquingKeysWith: +)
        result.missingInCompleted += other.missingInCompleted
        result.repeatedInCompleted += other.repeatedInCompleted
        result.missingAll += other.missingAll
        result.repeatedAll += other.repeatedAll
        result.doneSeqMismatches += other.doneSeqMismatches
        result.withoutTerminal += other.withoutTerminal
        result.withSeveralTerminals += other.withSeveralTerminals
        result.lateDeltas += other.lateDeltas
        result.deltas += other.deltas
        result.connections += other.connections
        result.connectFailures += other.connectFailures
        result.unplannedDisconnects += other.unplannedDisconnects
        result.stray.merge(other.stray, uniquingKeysWith: +)
        result.gaveUp += other.gaveUp
        return result
    }

    /// The figures that must be zero.
    var violations: Int64 {
        self.missingInCompleted + self.repeatedInCompleted + Int64(self.doneSeqMismatches + self.withoutTerminal + self.withSeveralTerminals)
    }

    var json: [String: Any] {
        [
            "requests": self.requests, "generations": self.generations, "refused": self.refused, "cut_before_start": self.cutBeforeStart,
            "never_answered": self.neverAnswered, "completed": self.completed, "completed_resumed": self.completedResumed,
            "resumes": self.resumes, "planned_drops": self.drops, "cuts": self.cuts, "endings": self.endings,
            "missing_in_completed": self.missingInCompleted, "repeated_in_completed": self.repeatedInCompleted,
            "missing_all": self.missingAll, "repeated_all": self.repeatedAll, "done_seq_mismatches": self.doneSeqMismatches,
            "without_terminal": self.withoutTerminal, "several_terminals": self.withSeveralTerminals, "late_deltas": self.lateDeltas,
            "deltas": self.deltas, "connections": self.connections, "connect_failures": self.connectFailures,
            "unplanned_disconnects": self.unplannedDisconnects, "stray": self.stray, "gave_up": self.gaveUp,
            "violations": self.violations,
        ]
    }

    func table() -> String {
        func sorted(_ counts: [String: Int]) -> String {
            counts.isEmpty ? "none" : counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        }
        return """
            requests \(self.requests): generations \(self.generations), refused \(self.refused.values.reduce(0, +)) (\(sorted(self.refused))), \
            cut before generation.started \(self.cutBeforeStart), never answered \(self.neverAnswered)
            answers completed \(self.completed), of which resumed \(self.completedResumed); resumes sent \(self.resumes) \
            (planned drops \(self.drops), connections lost mid-answer \(self.cuts))
            endings: \(sorted(self.endings))
            among completed: missing seqs \(self.missingInCompleted), repeated seqs \(self.repeatedInCompleted), done.seq ≠ last seq \(self.doneSeqMismatches)
            generations without a terminal event \(self.withoutTerminal), with more than one \(self.withSeveralTerminals); late deltas \(self.lateDeltas)
            all generations: missing seqs \(self.missingAll), repeated seqs \(self.repeatedAll); deltas \(self.deltas)
            connections \(self.connections) (failed attempts \(self.connectFailures)), unplanned disconnects \(self.unplannedDisconnects), \
            stray messages \(sorted(self.stray)), users cut off at the end bound \(self.gaveUp)
            """
    }
}
