import Inference
import Logging
import NIOCore
import RedisClient
import SluiceProtocol
import Synchronization

/// Fans generations out through Redis. Per generation, the owner (the instance calling the
/// upstream) keeps:
///
/// - `gen:{id}` a hash: owner, conversation, request id, model, state, and the end once done;
/// - `gen:{id}:s` a stream, one entry per upstream read with id `0-{lastSeq}` (the end is
///   `1-0`), bounded by `streamMaxEntries`, expiring `retentionAfterDone` after the end;
/// - channel `g:{id}`: the same encoded events, live;
/// - `conv:{id}:run` the conversation's running generations and channel `c:{id}` announcing
///   each generation started in it;
/// - channel `ctl:{instance}` for cancels (and, through `RedisLink`, the liveness key
///   `inst:{instance}` by which followers elsewhere tell that the owner died).
///
/// A follower elsewhere subscribes to `g:{id}` first, then reads the stream after its seq, then
/// takes live events; the session drops seqs it already has (every update carries its token
/// boundaries), so the seam has neither a gap nor a repeat. Each event is written to the stream
/// before it is published, in one pipeline, so what a new subscriber misses is in the stream.
///
/// Redis may miss some of an owner's writes (down, restarting, a dropped connection): every
/// command is tagged with its generation, and a generation any of whose commands failed is
/// published again whole (hash, stream replaced by one entry, live events) once Redis answers.
/// Followers take updates only in order (`FollowGate`): one past a gap waits for that republish
/// or a re-read of the stream, and the end waits for the text before it.
final class RedisGenerationFanOut: GenerationFanOut {
    private let link: RedisLink
    private let logger: Logger
    private let state = Mutex(State())
    private let cancelHandler = Mutex<(@Sendable (String) -> Void)?>(nil)
    /// This instance's generations, for republishing one whose shared copy missed writes.
    private let localGenerations = Mutex<(@Sendable (String) -> GenerationHub.Entry?)?>(nil)
    /// This instance's generations with a command Redis did not take: republish them.
    private let missed = MissedWrites()

    private struct State {
        var remote: [String: RemoteGeneration] = [:]
        var watchers: [String: [ConversationWatcher]] = [:]
        var republished = 0
    }

    /// A generation owned elsewhere that local sessions follow.
    private struct RemoteGeneration {
        var owner: String
        /// The owner's incarnation when it started the generation (nil: recorded by an older
        /// version, any incarnation counts).
        var ownerIncarnation: String?
        /// The highest seq seen (for the end of `endOnly` followers when the owner is lost).
        var lastSeq: Int64 = 0
        var ended = false
        var missedLiveness = 0
        var followers: [RemoteFollower] = []
        /// A re-read of the stream is on its way (a follower saw a gap).
        var rereading = false
    }

    private struct RemoteFollower {
        let follower: GenerationFollower
        let endOnly: Bool
        /// Until its replay went out, live updates wait here (then go through the gate:
        /// duplicates are dropped there and by the session).
        var buffered: [FollowUpdate]? = []
        var gate = FollowGate(after: 0)
        /// The owner was found dead before its replay went out: end it after the replay.
        var ownerLost = false
    }

    init(link: RedisLink, logger: Logger) {
        self.link = link
        self.logger = logger
        let control = link.key("ctl:\(link.instanceID)")
        _ = link.subscriber.subscribe(control) { [weak self] message in self?.controlMessage(message) }
    }

    var isShared: Bool { true }

    func setCancelHandler(_ handler: @escaping @Sendable (String) -> Void) {
        self.cancelHandler.withLock { $0 = handler }
    }

    func setLocalGenerations(_ lookup: @escaping @Sendable (String) -> GenerationHub.Entry?) {
        self.localGenerations.withLock { $0 = lookup }
    }

    // MARK: Owner side

    func publishStarted(_ info: GenerationInfo, user: String) {
        var event = ByteBuffer()
        GenerationWire.encodeStarted(info, owner: self.link.instanceID, into: &event)
        let generation = self.link.key("gen:\(info.generationID)")
        self.link.fire([
            self.generationFields(info, user: user, startedEvent: event, endEvent: nil),
            RedisCommand("PEXPIRE", generation, self.link.milliseconds(self.link.configuration.runningTTL)),
            RedisCommand("SADD", self.link.key("conv:\(info.conversationID):run"), info.generationID),
            RedisCommand("PEXPIRE", self.link.key("conv:\(info.conversationID):run"), self.link.milliseconds(self.link.configuration.runningTTL)),
            RedisCommand("PUBLISH", self.link.key("c:\(info.conversationID)"), event),
        ], tag: self.missed.tag(info.generationID))
    }

    /// `HSET gen:{id}` with everything a follower elsewhere needs (and the end, once there is one).
    private func generationFields(_ info: GenerationInfo, user: String, startedEvent: ByteBuffer, endEvent: ByteBuffer?) -> RedisCommand {
        var fields = RedisCommand("HSET", self.link.key("gen:\(info.generationID)"), "owner", self.link.instanceID, "incarnation", self.link.incarnation,
                                  "conversation", info.conversationID, "model", info.model, "state", endEvent == nil ? "running" : "done",
                                  "started", startedEvent, "user", user)
        if let requestID = info.requestID { fields.append(contentsOf: ["request", requestID]) }
        if let endEvent { fields.append(contentsOf: ["end", endEvent]) }
        return fields
    }

    func publishBatch(_ info: GenerationInfo, _ update: FollowUpdate) {
        var event = ByteBuffer()
        GenerationWire.encodeBatch(update, into: &event)
        let stream = self.link.key("gen:\(info.generationID):s")
        var add = RedisCommand("XADD", stream, "MAXLEN", "~", self.link.configuration.streamMaxEntries)
        add.append(contentsOf: ["0-\(update.lastSeq)", "e", event])
        var commands = [add, RedisCommand("PUBLISH", self.link.key("g:\(info.generationID)"), event)]
        if update.firstSeq == 1 {
            commands.append(RedisCommand("PEXPIRE", stream, self.link.milliseconds(self.link.configuration.runningTTL)))
        }
        self.link.fire(commands, tag: self.missed.tag(info.generationID))
    }

    func publishEnd(_ info: GenerationInfo, _ end: GenerationEnd) {
        var event = ByteBuffer()
        GenerationWire.encodeEnd(end, into: &event)
        let generation = self.link.key("gen:\(info.generationID)")
        let stream = generation + ":s"
        let retention = self.link.milliseconds(self.link.configuration.retentionAfterDone)
        var add = RedisCommand("XADD", stream, "MAXLEN", "~", self.link.configuration.streamMaxEntries)
        add.append(contentsOf: ["1-0", "e", event])
        self.link.fire([
            add,
            RedisCommand("PUBLISH", self.link.key("g:\(info.generationID)"), event),
            RedisCommand("HSET", generation, "state", "done", "end", event),
            RedisCommand("PEXPIRE", generation, retention),
            RedisCommand("PEXPIRE", stream, retention),
            RedisCommand("SREM", self.link.key("conv:\(info.conversationID):run"), info.generationID),
        ], tag: self.missed.tag(info.generationID))
    }

    /// The generation's whole shared copy again, after Redis missed some of it: the hash, the
    /// stream replaced at once by one entry with every seq (and the end), the same live events
    /// (followers drop what they have), and the conversation's running set.
    func republish(_ info: GenerationInfo, user: String, whole: FollowUpdate, end: GenerationEnd?) {
        var started = ByteBuffer()
        GenerationWire.encodeStarted(info, owner: self.link.instanceID, into: &started)
        var batch = ByteBuffer()
        if whole.hasText { GenerationWire.encodeBatch(whole, into: &batch) }
        var endEvent: ByteBuffer?
        if let end {
            var event = ByteBuffer()
            GenerationWire.encodeEnd(end, into: &event)
            endEvent = event
        }
        let generation = self.link.key("gen:\(info.generationID)")
        let ttl = self.link.milliseconds(end == nil ? self.link.configuration.runningTTL : self.link.configuration.retentionAfterDone)
        let running = self.link.key("conv:\(info.conversationID):run")
        // DEL and the new entries in one script: a reader sees the old stream or the new one.
        let replace = """
            redis.call('DEL', KEYS[1])
            if ARGV[1] ~= '' then redis.call('XADD', KEYS[1], ARGV[1], 'e', ARGV[2]) end
            if ARGV[3] ~= '' then redis.call('XADD', KEYS[1], '1-0', 'e', ARGV[3]) end
            redis.call('PEXPIRE', KEYS[1], ARGV[4])
            return 1
            """
        var commands = [
            self.generationFields(info, user: user, startedEvent: started, endEvent: endEvent),
            RedisCommand("PEXPIRE", generation, ttl),
            RedisCommand("EVAL", replace, 1, generation + ":s", whole.hasText ? "0-\(whole.lastSeq)" : "", batch,
                         endEvent ?? ByteBuffer(), ttl),
        ]
        if whole.hasText { commands.append(RedisCommand("PUBLISH", self.link.key("g:\(info.generationID)"), batch)) }
        if let endEvent {
            commands.append(RedisCommand("PUBLISH", self.link.key("g:\(info.generationID)"), endEvent))
            commands.append(RedisCommand("SREM", running, info.generationID))
        } else {
            commands += [
                RedisCommand("SADD", running, info.generationID),
                RedisCommand("PEXPIRE", running, self.link.milliseconds(self.link.configuration.runningTTL)),
                RedisCommand("PUBLISH", self.link.key("c:\(info.conversationID)"), started),
            ]
        }
        self.state.withLock { $0.republished += 1 }
        self.link.fire(commands, tag: self.missed.tag(info.generationID))
    }

    /// Generations published again after Redis missed some of their writes.
    var republishedGenerations: Int { self.state.withLock { $0.republished } }

    /// Asks each generation Redis missed writes of to publish itself again, once Redis answers:
    /// a running one on its own event loop (after what it already queued, before what it
    /// publishes next), an ended one from the hub. One no longer in the hub is gone anyway.
    func republishMissed() {
        guard self.link.client.isConnected, let lookup = self.localGenerations.withLock({ $0 }) else { return }
        for generationID in self.missed.take() {
            guard let entry = lookup(generationID) else { continue }
            switch entry.state {
            case .running(let loop, let generation):
                loop.execute { generation.value.republishToBroker() }
            case .finished(let finished):
                let whole = TokenLog.update(text: finished.text, tokenEnds: finished.tokenEnds, after: 0,
                                            upTo: Int64(finished.tokenEnds.count), started: nil, end: nil)
                self.republish(finished.info, user: entry.user, whole: whole, end: finished.end)
            }
        }
    }

    // MARK: Conversations watched

    func watch(conversationID: String, watcher: ConversationWatcher) async -> Result<[String], BrokerError> {
        let first = self.state.withLock { state in
            state.watchers[conversationID, default: []].append(watcher)
            return state.watchers[conversationID]!.count == 1
        }
        do {
            if first {
                try await self.link.subscriber.subscribe(self.link.key("c:\(conversationID)")) { [weak self] message in
                    self?.conversationMessage(message, conversationID: conversationID)
                }
            }
            let running = try await self.link.client.send(RedisCommand("SMEMBERS", self.link.key("conv:\(conversationID):run")))
            return .success((running.array ?? []).compactMap(\.string))
        } catch {
            self.unwatch(conversationID: conversationID, watcher: watcher)
            return .failure(BrokerError(message: "\(error)"))
        }
    }

    func unwatch(conversationID: String, watcher: ConversationWatcher) {
        let last = self.state.withLock { state -> Bool in
            state.watchers[conversationID]?.removeAll { $0 === watcher }
            guard state.watchers[conversationID]?.isEmpty ?? false else { return false }
            state.watchers[conversationID] = nil
            return true
        }
        if last { _ = self.link.subscriber.unsubscribe(self.link.key("c:\(conversationID)")) }
    }

    private func conversationMessage(_ message: RedisPubSubMessage, conversationID: String) {
        guard case .started(let info, let owner)? = GenerationWire.decode(message.payload) else { return }
        // This instance's own generations reach its watchers through the hub.
        guard owner != self.link.instanceID else { return }
        let watchers = self.state.withLock { $0.watchers[conversationID] ?? [] }
        for watcher in watchers { watcher.generationStarted(info.generationID) }
    }

    // MARK: Following generations owned elsewhere

    func follow(generationID: String, user: String, afterSeq: Int64, endOnly: Bool, follower: GenerationFollower) async -> FollowOutcome {
        do {
            // A generation that already ended needs no subscription when its stream is whole.
            let first = try await self.link.client.send(RedisCommand("HGETALL", self.link.key("gen:\(generationID)")))
            guard !Self.fields(first).isEmpty else { return .notFound }
            // Someone else's generation does not exist, as far as this user can tell.
            guard Self.fields(first)["user"].map({ String(buffer: $0) }) == user else { return .notFound }
            if Self.fields(first)["state"].map({ String(buffer: $0) }) == "done" {
                switch try await self.history(generationID, afterSeq: afterSeq, endOnly: endOnly, fields: Self.fields(first)) {
                case .failure(let outcome):
                    return outcome
                case .success(let replay) where replay.update.end != nil:
                    follower.send(replay.update)
                    return .following
                case .success:
                    break  // a part is missing until the owner publishes it again: follow it live
                }
            }
        } catch {
            return .unavailable
        }
        let channel = self.link.key("g:\(generationID)")
        let first = self.state.withLock { state -> Bool in
            let first = state.remote[generationID] == nil
            state.remote[generationID, default: RemoteGeneration(owner: "")].followers.append(RemoteFollower(follower: follower, endOnly: endOnly))
            return first
        }
        do {
            // Subscribe before reading history: anything published after this is seen live,
            // anything before is already in the stream.
            if first {
                try await self.link.subscriber.subscribe(channel) { [weak self] message in self?.generationMessage(message, generationID: generationID) }
            }
            let hash = try await self.link.client.send(RedisCommand("HGETALL", self.link.key("gen:\(generationID)")))
            switch try await self.history(generationID, afterSeq: afterSeq, endOnly: endOnly, fields: Self.fields(hash)) {
            case .failure(let outcome):
                self.removeFollower(follower, generationID: generationID)
                return outcome
            case .success(let replay):
                self.link.subscriber.eventLoop.execute {
                    self.startLive(follower, generationID: generationID, afterSeq: afterSeq, replay: replay)
                }
                return .following
            }
        } catch {
            self.removeFollower(follower, generationID: generationID)
            return .unavailable
        }
    }

    private struct Replay {
        var owner: String
        var ownerIncarnation: String?
        /// `generation.started`, then the text after `afterSeq` up to the first part missing (if
        /// one is), then the end when all of the text before it is there.
        var update: FollowUpdate
    }

    private enum History {
        case success(Replay)
        case failure(FollowOutcome)
    }

    /// `generation.started` and everything after `afterSeq` from the stream (and the end when
    /// there is one), or why not.
    private func history(
        _ generationID: String, afterSeq: Int64, endOnly: Bool, fields: [String: ByteBuffer]
    ) async throws -> History {
        guard let owner = fields["owner"].map({ String(buffer: $0) }), let startedBytes = fields["started"],
              case .started(let info, _)? = GenerationWire.decode(startedBytes)
        else { return .failure(.notFound) }
        let incarnation = fields["incarnation"].map { String(buffer: $0) }
        let storedEnd = fields["end"].flatMap { bytes -> GenerationEnd? in
            if case .end(let end)? = GenerationWire.decode(bytes) { return end }
            return nil
        }
        var replay = FollowUpdate(started: endOnly ? nil : info, firstSeq: afterSeq + 1, lastSeq: afterSeq, text: "", end: nil)
        if endOnly {
            replay.end = storedEnd
            return .success(Replay(owner: owner, ownerIncarnation: incarnation, update: replay))
        }
        let stream = self.link.key("gen:\(generationID):s")
        let entries = try await self.link.client.xrange(stream, start: "0-\(afterSeq + 1)", end: "+")
        var batches: [FollowUpdate] = []
        var streamEnd: GenerationEnd?
        for entry in entries {
            guard let bytes = entry.fields.first(where: { $0.name == "e" })?.value else { continue }
            switch GenerationWire.decode(bytes) {
            case .batch(let firstSeq, let lastSeq, let ends, let text)?:
                batches.append(FollowUpdate(started: nil, firstSeq: firstSeq, lastSeq: lastSeq, text: text, tokenEnds: ends, end: nil))
            case .end(let end)?:
                streamEnd = end
            default:
                continue
            }
        }
        let end = streamEnd ?? storedEnd
        // Text after `afterSeq` that the stream no longer starts with: trimmed by its bound (a
        // resume_gap), or never written because Redis missed the owner's writes (then the
        // owner publishes it again soon, and the follow waits for it).
        let firstHeld = batches.first?.firstSeq ?? (end.map { $0.seq + 1 } ?? afterSeq + 1)
        if firstHeld > afterSeq + 1 {
            let length = try await self.link.client.send(RedisCommand("XLEN", stream)).int ?? 0
            if length >= self.link.configuration.streamMaxEntries { return .failure(.gap(earliestSeq: firstHeld)) }
        }
        for batch in batches {
            guard batch.firstSeq <= replay.lastSeq + 1 else { break }  // a part missing: wait for it
            let fresh = batch.dropping(through: replay.lastSeq)
            guard fresh.hasText else { continue }
            replay.text += fresh.text
            let base = Int32(clamping: replay.text.utf8.count - fresh.text.utf8.count)
            replay.tokenEnds += fresh.tokenEnds.map { $0 + base }
            replay.lastSeq = fresh.lastSeq
        }
        replay.firstSeq = afterSeq + 1
        if let end, end.seq <= replay.lastSeq { replay.end = end }
        return .success(Replay(owner: owner, ownerIncarnation: incarnation, update: replay))
    }

    /// On the subscriber's loop (where live events arrive): the replay, then what waited, then
    /// live, each through the follower's gate.
    private func startLive(_ follower: GenerationFollower, generationID: String, afterSeq: Int64, replay: Replay) {
        let (updates, ended, gap) = self.state.withLock { state -> ([FollowUpdate], Bool, Bool) in
            guard var remote = state.remote[generationID],
                  let index = remote.followers.firstIndex(where: { $0.follower === follower })
            else { return ([], false, false) }  // unfollowed meanwhile
            remote.owner = replay.owner
            remote.ownerIncarnation = replay.ownerIncarnation
            remote.lastSeq = max(remote.lastSeq, replay.update.lastSeq)
            var entry = remote.followers[index]
            entry.gate = FollowGate(after: afterSeq)
            var updates: [FollowUpdate] = []
            for update in [replay.update] + (entry.buffered ?? []) {
                if let passed = Self.pass(update, through: &entry) { updates.append(passed) }
            }
            if entry.ownerLost, let end = Self.ownerLostEnd(&entry, highest: remote.lastSeq) { updates.append(end) }
            entry.buffered = nil
            remote.followers[index] = entry
            state.remote[generationID] = remote
            return (updates, entry.gate.ended, entry.gate.hasGap)
        }
        for update in updates { follower.send(update) }
        // A dead owner is found by the liveness check, which also covers this follower now.
        if ended { self.removeFollower(follower, generationID: generationID) }
        if gap { self.reread(generationID) }
    }

    /// What of `update` goes to this follower now: an `endOnly` one (a canceller) takes only
    /// the end; the others take what their gate lets through.
    private static func pass(_ update: FollowUpdate, through follower: inout RemoteFollower) -> FollowUpdate? {
        guard follower.endOnly else { return follower.gate.pass(update) }
        guard let end = update.end, !follower.gate.ended else { return nil }
        follower.gate = FollowGate(after: end.seq)
        _ = follower.gate.pass(.endOnly(end))
        return .endOnly(end)
    }

    func unfollow(generationID: String, follower: GenerationFollower) {
        self.removeFollower(follower, generationID: generationID)
    }

    private func removeFollower(_ follower: GenerationFollower, generationID: String) {
        let last = self.state.withLock { state -> Bool in
            state.remote[generationID]?.followers.removeAll { $0.follower === follower }
            guard state.remote[generationID]?.followers.isEmpty ?? false else { return false }
            state.remote[generationID] = nil
            return true
        }
        if last { _ = self.link.subscriber.unsubscribe(self.link.key("g:\(generationID)")) }
    }

    private func generationMessage(_ message: RedisPubSubMessage, generationID: String) {
        guard let event = GenerationWire.decode(message.payload) else { return }
        self.deliver(event, generationID: generationID)
    }

    /// A live (or re-read) event: to each follower through its gate; a follower that ended is
    /// let go; a gap asks for a re-read of the stream.
    private func deliver(_ event: GenerationWire.Event, generationID: String) {
        guard let update = Self.update(for: event) else { return }
        let (sends, finished, gap) = self.state.withLock { state -> ([(GenerationFollower, FollowUpdate)], [GenerationFollower], Bool) in
            guard var remote = state.remote[generationID] else { return ([], [], false) }
            if update.hasText { remote.lastSeq = max(remote.lastSeq, update.lastSeq) }
            if let end = update.end { remote.lastSeq = max(remote.lastSeq, end.seq) }
            var sends: [(GenerationFollower, FollowUpdate)] = []
            var finished: [GenerationFollower] = []
            var gap = false
            for index in remote.followers.indices {
                if remote.followers[index].buffered != nil {
                    remote.followers[index].buffered!.append(update)
                    continue
                }
                if let passed = Self.pass(update, through: &remote.followers[index]) {
                    sends.append((remote.followers[index].follower, passed))
                }
                if remote.followers[index].gate.ended { finished.append(remote.followers[index].follower) }
                gap = gap || remote.followers[index].gate.hasGap
            }
            remote.ended = remote.ended || !finished.isEmpty && finished.count == remote.followers.count
            state.remote[generationID] = remote
            return (sends, finished, gap)
        }
        for (follower, update) in sends { follower.send(update) }
        for follower in finished { self.removeFollower(follower, generationID: generationID) }
        if gap { self.reread(generationID) }
    }

    private static func update(for event: GenerationWire.Event) -> FollowUpdate? {
        switch event {
        case .batch(let firstSeq, let lastSeq, let ends, let text):
            return FollowUpdate(started: nil, firstSeq: firstSeq, lastSeq: lastSeq, text: text, tokenEnds: ends, end: nil)
        case .end(let end):
            return .endOnly(end)
        case .started:
            return nil
        }
    }

    /// Reads a followed generation's stream again after the lowest seq its followers have (a
    /// gap: an update came past what they have), and delivers it through their gates. One at a
    /// time per generation; while the gap lasts (the owner has not published it again yet) the
    /// liveness tick asks again.
    private func reread(_ generationID: String) {
        let after = self.state.withLock { state -> Int64? in
            guard var remote = state.remote[generationID], !remote.rereading else { return nil }
            let live = remote.followers.filter { $0.buffered == nil && !$0.gate.ended }
            guard let lowest = live.map(\.gate.deliveredSeq).min() else { return nil }
            remote.rereading = true
            state.remote[generationID] = remote
            return lowest
        }
        guard let after else { return }
        Task {
            let entries = try? await self.link.client.xrange(self.link.key("gen:\(generationID):s"), start: "0-\(after + 1)", end: "+")
            let events = (entries ?? []).compactMap { entry in
                entry.fields.first(where: { $0.name == "e" }).flatMap { GenerationWire.decode($0.value) }
            }
            self.link.subscriber.eventLoop.execute {
                self.state.withLock { $0.remote[generationID]?.rereading = false }
                for event in events { self.deliver(event, generationID: generationID) }
            }
        }
    }

    /// Followed generations whose followers wait on a gap (for the liveness tick).
    private var generationsWithGaps: [String] {
        self.state.withLock { state in
            state.remote.filter { $0.value.followers.contains { $0.buffered == nil && $0.gate.hasGap } }.map(\.key)
        }
    }

    /// After Redis came back: events published meanwhile were lost on the channels, so each
    /// followed generation is read again from the stream after what its followers have.
    func resynchronize() {
        let followed = self.state.withLock { state in Array(state.remote.keys) }
        for generationID in followed {
            self.state.withLock { $0.remote[generationID]?.rereading = false }
            self.reread(generationID)
        }
    }

    // MARK: Cancel from anywhere

    func cancel(generationID: String, user: String) async -> CancelOutcome {
        do {
            let reply = try await self.link.client.send(RedisCommand("HMGET", self.link.key("gen:\(generationID)"), "owner", "state", "user"))
            guard let values = reply.array, values.count == 3, let owner = values[0].string, values[2].string == user else { return .notFound }
            if values[1].string == "done" { return .alreadyEnded }
            _ = try await self.link.client.send(RedisCommand("PUBLISH", self.link.key("ctl:\(owner)"), "cancel\n" + generationID))
            return .sent
        } catch {
            return .unavailable
        }
    }

    private func controlMessage(_ message: RedisPubSubMessage) {
        guard let text = message.payload.getString(at: message.payload.readerIndex, length: message.payload.readableBytes),
              text.hasPrefix("cancel\n")
        else { return }
        let generationID = String(text.dropFirst("cancel\n".count))
        self.cancelHandler.withLock { $0 }?(generationID)
    }

    // MARK: Owners' liveness

    /// Every liveness tick: asks again for the parts followers wait on, and checks the owners
    /// of followed generations: one found missing twice in a row is dead (once could be a key
    /// that is being refreshed late).
    func livenessTick() {
        for generationID in self.generationsWithGaps { self.reread(generationID) }
        struct Owner: Hashable {
            var instance: String
            var incarnation: String?
        }
        let owners = self.state.withLock { state in
            Set(state.remote.values.filter { !$0.ended && !$0.owner.isEmpty }.map { Owner(instance: $0.owner, incarnation: $0.ownerIncarnation) })
        }
        for owner in owners {
            Task {
                guard let alive = try? await self.link.isAlive(owner.instance, incarnation: owner.incarnation) else { return }  // Redis down: no verdict
                let lost = self.state.withLock { state -> [String] in
                    var lost: [String] = []
                    for (id, var remote) in state.remote
                    where remote.owner == owner.instance && remote.ownerIncarnation == owner.incarnation && !remote.ended {
                        remote.missedLiveness = alive ? 0 : remote.missedLiveness + 1
                        state.remote[id] = remote
                        if remote.missedLiveness >= 2 { lost.append(id) }
                    }
                    return lost
                }
                guard !lost.isEmpty else { return }
                self.link.subscriber.eventLoop.execute {
                    for generationID in lost { self.ownerLost(generationID) }
                }
            }
        }
    }

    /// The owner died without ending the generation: each follower gets `done` with
    /// `owner_lost` at the last seq it has (what it received stays resumable from the stream).
    private func ownerLost(_ generationID: String) {
        let sends = self.state.withLock { state -> [(GenerationFollower, FollowUpdate)] in
            guard var remote = state.remote[generationID] else { return [] }
            let highest = remote.lastSeq
            var sends: [(GenerationFollower, FollowUpdate)] = []
            for index in remote.followers.indices {
                guard remote.followers[index].buffered == nil else {
                    remote.followers[index].ownerLost = true  // ended after its replay
                    continue
                }
                if let end = Self.ownerLostEnd(&remote.followers[index], highest: highest) { sends.append((remote.followers[index].follower, end)) }
            }
            remote.ended = true
            state.remote[generationID] = remote
            return sends
        }
        guard !sends.isEmpty else { return }
        self.logger.warning("owner lost", metadata: ["sluice.generation": "\(generationID)"])
        for (follower, end) in sends {
            follower.send(end)
            self.removeFollower(follower, generationID: generationID)
        }
    }

    /// `done` with `owner_lost`, at the last seq the follower has (an `endOnly` one: the highest seen).
    private static func ownerLostEnd(_ follower: inout RemoteFollower, highest: Int64) -> FollowUpdate? {
        let endOnly = follower.endOnly
        return follower.gate.ownerLost { delivered in
            let seq = endOnly ? highest : delivered
            return GenerationEnd(
                seq: seq, finishReason: .error, usage: Usage(promptTokens: 0, completionTokens: Int(seq), source: .gateway),
                error: GenerationError(code: .ownerLost, message: "the instance running this generation went away"))
        }
    }

    private static func fields(_ reply: RESPValue) -> [String: ByteBuffer] {
        guard let items = reply.array, items.count % 2 == 0 else { return [:] }
        var fields: [String: ByteBuffer] = [:]
        for index in stride(from: 0, to: items.count, by: 2) {
            if let name = items[index].string, let value = items[index + 1].buffer { fields[name] = value }
        }
        return fields
    }
}