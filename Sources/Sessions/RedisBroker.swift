import Inference
import Logging
import Metrics
import NIOCore
import RedisClient
import SluiceProtocol
import Storage
import Synchronization

/// Settings of the Redis fan-out.
public struct RedisBrokerConfiguration: Sendable, Equatable {
    /// Prefix of every key and channel, so several deployments can share one Redis.
    public var keyPrefix: String = "sluice:"
    /// Entries kept per generation stream (one entry per upstream read, often several tokens).
    public var streamMaxEntries: Int = 10_000
    /// How long a generation stays resumable after it ended.
    public var retentionAfterDone: TimeAmount = .minutes(5)
    /// Upper bound on a running generation's keys, in case its owner dies and never ends it.
    public var runningTTL: TimeAmount = .hours(2)
    /// An instance counts as dead once its liveness key is this old.
    public var ownerTTL: TimeAmount = .seconds(3)
    /// How often liveness is refreshed and followed owners are checked.
    public var livenessInterval: TimeAmount = .seconds(1)
    /// Conversation context kept in Redis: the newest messages, for this long after last use.
    public var conversationMaxMessages: Int = 100
    public var conversationTTL: TimeAmount = .minutes(30)

    public init() {}
}

/// Fans generations out through Redis. Per generation, the owner (the instance calling the
/// upstream) keeps:
///
/// - `gen:{id}` a hash: owner, conversation, request id, model, state, and the end once done;
/// - `gen:{id}:s` a stream, one entry per upstream read with id `0-{lastSeq}` (the end is
///   `1-0`), bounded by `streamMaxEntries`, expiring `retentionAfterDone` after the end;
/// - channel `g:{id}`: the same encoded events, live;
/// - `conv:{id}:m` the conversation cache (its newest messages) and `conv:{id}:o` its owner,
///   both expiring `conversationTTL` after the last write; `conv:{id}:run` its running generations and
///   channel `c:{id}` announcing each generation started in it;
/// - `inst:{instance}` a liveness key with a short TTL holding this process's incarnation (a
///   random token: a process started again under the same id is another owner), and channel
///   `ctl:{instance}` for cancels.
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
final class RedisBroker: Broker {
    let instanceID: String
    let configuration: RedisBrokerConfiguration
    let client: RedisClient
    private let subscriber: RedisSubscriber
    private let logger: Logger
    private let state = Mutex(State())
    private let cancelHandler = Mutex<(@Sendable (String) -> Void)?>(nil)
    private let outgoing = Mutex(Outgoing())
    private let livenessTask = Mutex<RepeatedTask?>(nil)
    /// This process's value of `inst:{instanceID}`, recorded with each generation it owns.
    let incarnation: String
    /// This instance's generations, for republishing one whose shared copy missed writes.
    private let localGenerations = Mutex<(@Sendable (String) -> GenerationHub.Entry?)?>(nil)
    /// The write-behind queue's journal here, when this instance stores conversations.
    private let journal = Mutex<RedisWriteJournal?>(nil)
    private let ticks = Atomic<Int>(0)

    private struct State {
        var remote: [String: RemoteGeneration] = [:]
        var watchers: [String: [ConversationWatcher]] = [:]
        var droppedEvents = 0
        /// This instance's generations with a command Redis did not take: republish them.
        var dirty: Set<String> = []
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

    init(redis: RedisConfiguration, instanceID: String, configuration: RedisBrokerConfiguration, eventLoop: any EventLoop, logger: Logger) {
        self.instanceID = instanceID
        self.incarnation = Identifier.make("inc_")
        self.configuration = configuration
        self.logger = logger
        let resync = Mutex<RedisBroker?>(nil)
        // Liveness is refreshed as soon as a connection is up, not only on the next tick.
        self.client = RedisClient(configuration: redis, eventLoop: eventLoop, logger: logger, onStateChange: { state in
            guard state == .connected, let broker = resync.withLock({ $0 }) else { return }
            broker.refreshLiveness()
            broker.republishDirty()
            broker.journal.withLock { $0 }?.reconnected()
        })
        self.subscriber = RedisSubscriber(
            configuration: redis, eventLoop: eventLoop, logger: logger,
            onResubscribed: { resync.withLock { $0 }?.resynchronize() })
        resync.withLock { $0 = self }
        let control = self.key("ctl:\(instanceID)")
        _ = self.subscriber.subscribe(control) { [weak self] message in self?.controlMessage(message) }
        let task = eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: configuration.livenessInterval) { [weak self] _ in
            self?.livenessTick()
        }
        self.livenessTask.withLock { $0 = task }
    }

    var isShared: Bool { true }
    var isHealthy: Bool { self.client.isConnected && self.subscriber.isConnected }

    func setCancelHandler(_ handler: @escaping @Sendable (String) -> Void) {
        self.cancelHandler.withLock { $0 = handler }
    }

    func setLocalGenerations(_ lookup: @escaping @Sendable (String) -> GenerationHub.Entry?) {
        self.localGenerations.withLock { $0 = lookup }
    }

    func attachWriteQueue(_ queue: WriteBehindQueue) {
        let journal = RedisWriteJournal(broker: self, queue: queue, logger: self.logger)
        self.journal.withLock { $0 = journal }
        queue.setJournal(journal)
    }

    /// This instance's write journal (nil without storage).
    var writeJournal: RedisWriteJournal? { self.journal.withLock { $0 } }

    func shutdown() async {
        self.livenessTask.withLock { $0 }?.cancel()
        let journal = self.journal.withLock { journal -> RedisWriteJournal? in
            defer { journal = nil }
            return journal
        }
        journal?.detach()
        // Gone at once rather than after the TTL: followers elsewhere see owner_lost sooner. Only
        // if it is still this incarnation's (a successor under the same id may have taken it).
        _ = try? await self.client.send(RedisCommand(
            "EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1, self.key("inst:\(self.instanceID)"), self.incarnation))
        await self.subscriber.shutdown()
        await self.client.shutdown()
    }

    func key(_ suffix: String) -> String { self.configuration.keyPrefix + suffix }
    func milliseconds(_ amount: TimeAmount) -> Int { Int(amount.nanoseconds / 1_000_000) }

    // MARK: Owner side

    func publishStarted(_ info: GenerationInfo, user: String) {
        var event = ByteBuffer()
        GenerationWire.encodeStarted(info, owner: self.instanceID, into: &event)
        let generation = self.key("gen:\(info.generationID)")
        self.fire([
            self.generationFields(info, user: user, startedEvent: event, endEvent: nil),
            RedisCommand("PEXPIRE", generation, self.milliseconds(self.configuration.runningTTL)),
            RedisCommand("SADD", self.key("conv:\(info.conversationID):run"), info.generationID),
            RedisCommand("PEXPIRE", self.key("conv:\(info.conversationID):run"), self.milliseconds(self.configuration.runningTTL)),
            RedisCommand("PUBLISH", self.key("c:\(info.conversationID)"), event),
        ], tag: info.generationID)
    }

    /// `HSET gen:{id}` with everything a follower elsewhere needs (and the end, once there is one).
    private func generationFields(_ info: GenerationInfo, user: String, startedEvent: ByteBuffer, endEvent: ByteBuffer?) -> RedisCommand {
        var fields = RedisCommand("HSET", self.key("gen:\(info.generationID)"), "owner", self.instanceID, "incarnation", self.incarnation,
                                  "conversation", info.conversationID, "model", info.model, "state", endEvent == nil ? "running" : "done",
                                  "started", startedEvent, "user", user)
        if let requestID = info.requestID { fields.append(contentsOf: ["request", requestID]) }
        if let endEvent { fields.append(contentsOf: ["end", endEvent]) }
        return fields
    }

    func publishBatch(_ info: GenerationInfo, _ update: FollowUpdate) {
        var event = ByteBuffer()
        GenerationWire.encodeBatch(update, into: &event)
        let stream = self.key("gen:\(info.generationID):s")
        var add = RedisCommand("XADD", stream, "MAXLEN", "~", self.configuration.streamMaxEntries)
        add.append(contentsOf: ["0-\(update.lastSeq)", "e", event])
        var commands = [add, RedisCommand("PUBLISH", self.key("g:\(info.generationID)"), event)]
        if update.firstSeq == 1 {
            commands.append(RedisCommand("PEXPIRE", stream, self.milliseconds(self.configuration.runningTTL)))
        }
        self.fire(commands, tag: info.generationID)
    }

    func publishEnd(_ info: GenerationInfo, _ end: GenerationEnd) {
        var event = ByteBuffer()
        GenerationWire.encodeEnd(end, into: &event)
        let generation = self.key("gen:\(info.generationID)")
        let stream = generation + ":s"
        let retention = self.milliseconds(self.configuration.retentionAfterDone)
        var add = RedisCommand("XADD", stream, "MAXLEN", "~", self.configuration.streamMaxEntries)
        add.append(contentsOf: ["1-0", "e", event])
        self.fire([
            add,
            RedisCommand("PUBLISH", self.key("g:\(info.generationID)"), event),
            RedisCommand("HSET", generation, "state", "done", "end", event),
            RedisCommand("PEXPIRE", generation, retention),
            RedisCommand("PEXPIRE", stream, retention),
            RedisCommand("SREM", self.key("conv:\(info.conversationID):run"), info.generationID),
        ], tag: info.generationID)
    }

    /// The generation's whole shared copy again, after Redis missed some of it: the hash, the
    /// stream replaced at once by one entry with every seq (and the end), the same live events
    /// (followers drop what they have), and the conversation's running set.
    func republish(_ info: GenerationInfo, user: String, whole: FollowUpdate, end: GenerationEnd?) {
        var started = ByteBuffer()
        GenerationWire.encodeStarted(info, owner: self.instanceID, into: &started)
        var batch = ByteBuffer()
        if whole.hasText { GenerationWire.encodeBatch(whole, into: &batch) }
        var endEvent: ByteBuffer?
        if let end {
            var event = ByteBuffer()
            GenerationWire.encodeEnd(end, into: &event)
            endEvent = event
        }
        let generation = self.key("gen:\(info.generationID)")
        let ttl = self.milliseconds(end == nil ? self.configuration.runningTTL : self.configuration.retentionAfterDone)
        let running = self.key("conv:\(info.conversationID):run")
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
        if whole.hasText { commands.append(RedisCommand("PUBLISH", self.key("g:\(info.generationID)"), batch)) }
        if let endEvent {
            commands.append(RedisCommand("PUBLISH", self.key("g:\(info.generationID)"), endEvent))
            commands.append(RedisCommand("SREM", running, info.generationID))
        } else {
            commands += [
                RedisCommand("SADD", running, info.generationID),
                RedisCommand("PEXPIRE", running, self.milliseconds(self.configuration.runningTTL)),
                RedisCommand("PUBLISH", self.key("c:\(info.conversationID)"), started),
            ]
        }
        self.state.withLock { $0.republished += 1 }
        self.fire(commands, tag: info.generationID)
    }

    /// The tag of the write journal's commands (no generation id looks like it).
    static let journalTag = "journal"

    /// Generations published again after Redis missed some of their writes.
    var republishedGenerations: Int { self.state.withLock { $0.republished } }

    /// Asks each generation Redis missed writes of to publish itself again, once Redis answers:
    /// a running one on its own event loop (after what it already queued, before what it
    /// publishes next), an ended one from the hub. One no longer in the hub is gone anyway.
    private func republishDirty() {
        guard self.client.isConnected, let lookup = self.localGenerations.withLock({ $0 }) else { return }
        var dirty = self.state.withLock { state -> Set<String> in
            defer { state.dirty = [] }
            return state.dirty
        }
        if dirty.remove(Self.journalTag) != nil { self.journal.withLock { $0 }?.rebuild() }
        for generationID in dirty {
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

    func createConversation(_ conversationID: String, owner: String, first message: ChatMessage) {
        let list = self.key("conv:\(conversationID):m")
        let ttl = self.milliseconds(self.configuration.conversationTTL)
        self.fire([
            RedisCommand("DEL", list),
            RedisCommand("RPUSH", list, Self.cacheEntry(message)),
            RedisCommand("PEXPIRE", list, ttl),
            RedisCommand("SET", self.key("conv:\(conversationID):o"), owner, "PX", ttl),
        ])
    }

    /// RPUSHX, not RPUSH: appending to a cold cache would make a list holding only the newest
    /// messages, which a reader would take for the whole conversation.
    func appendMessage(_ message: ChatMessage, toConversation conversationID: String) {
        let list = self.key("conv:\(conversationID):m")
        let ttl = self.milliseconds(self.configuration.conversationTTL)
        self.fire([
            RedisCommand("RPUSHX", list, Self.cacheEntry(message)),
            RedisCommand("LTRIM", list, -self.configuration.conversationMaxMessages, -1),
            RedisCommand("PEXPIRE", list, ttl),
            RedisCommand("PEXPIRE", self.key("conv:\(conversationID):o"), ttl),
        ])
    }

    /// Fills only a cold cache, in one script so that two readers filling at once, or a reader
    /// racing a writer's `createConversation`, cannot interleave into a mixed list.
    func fillConversation(_ conversationID: String, owner: String, messages: [ChatMessage]) {
        guard !messages.isEmpty else { return }
        let script = """
            if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
            for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
            redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
            return 1
            """
        var arguments: [any RedisArgumentConvertible] = [
            script, 2, self.key("conv:\(conversationID):m"), self.key("conv:\(conversationID):o"),
            owner, self.milliseconds(self.configuration.conversationTTL),
        ]
        for message in messages.suffix(self.configuration.conversationMaxMessages) { arguments.append(Self.cacheEntry(message)) }
        self.fire([RedisCommand("EVAL", arguments: arguments)])
    }

    private static func cacheEntry(_ message: ChatMessage) -> String {
        message.role.rawValue + "\n" + message.content
    }

    /// Sends without waiting. Commands fired during one event-loop tick (from every generation)
    /// leave in one pipeline: one write instead of one per upstream read, in the order they were
    /// fired. A failed command with a `tag` (a generation id, or `journalTag`; Redis down, a
    /// reply too late) marks it for `republishDirty`; others only lose their effect.
    func fire(_ commands: [RedisCommand], tag: String? = nil) {
        let scheduleFlush = self.outgoing.withLock { outgoing -> Bool in
            outgoing.commands.append(contentsOf: commands)
            outgoing.tags.append(contentsOf: repeatElement(tag, count: commands.count))
            guard !outgoing.flushScheduled else { return false }
            outgoing.flushScheduled = true
            return true
        }
        if scheduleFlush {
            self.client.eventLoop.execute { self.flushOutgoing() }
        }
    }

    /// Redis round trips (one pipeline per event-loop tick, and reads) and failed ones.
    private let redisLatency = Timer(label: "sluice_redis_command_seconds")
    private let redisErrors = Counter(label: "sluice_redis_errors_total")

    private func flushOutgoing() {
        let (commands, tags) = self.outgoing.withLock { outgoing -> ([RedisCommand], [String?]) in
            outgoing.flushScheduled = false
            defer {
                outgoing.commands.removeAll(keepingCapacity: true)
                outgoing.tags.removeAll(keepingCapacity: true)
            }
            return (outgoing.commands, outgoing.tags)
        }
        guard !commands.isEmpty else { return }
        let results: [EventLoopFuture<RESPValue>] = self.client.send(pipeline: commands)
        let started = NIODeadline.now()
        // One callback per pipeline, not per command.
        EventLoopFuture.whenAllComplete(results, on: self.client.eventLoop).whenSuccess { [weak self] outcomes in
            guard let self else { return }
            var failed = 0
            var dirty: Set<String> = []
            for (index, outcome) in outcomes.enumerated() {
                guard case .failure = outcome else { continue }
                failed += 1
                if let generation = tags[index] { dirty.insert(generation) }
            }
            guard failed > 0 else {
                self.redisLatency.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
                return
            }
            self.redisErrors.increment()
            self.state.withLock { state in
                state.droppedEvents += failed
                state.dirty.formUnion(dirty)
            }
        }
    }

    private struct Outgoing {
        var commands: [RedisCommand] = []
        /// The generation of each command (nil: none).
        var tags: [String?] = []
        var flushScheduled = false
    }

    var droppedEvents: Int { self.state.withLock { $0.droppedEvents } }

    // MARK: Conversations

    func conversationContext(_ conversationID: String) async -> Result<CachedConversation?, BrokerError> {
        let started = NIODeadline.now()
        defer { self.redisLatency.recordNanoseconds((NIODeadline.now() - started).nanoseconds) }
        do {
            let replies = try await self.client.send(pipeline: [
                RedisCommand("GET", self.key("conv:\(conversationID):o")),
                RedisCommand("LRANGE", self.key("conv:\(conversationID):m"), 0, -1),
            ]).map { try $0.get() }
            guard replies.count == 2, let items = replies[1].array else { return .failure(BrokerError(message: "unexpected LRANGE reply")) }
            // Without its owner (expired apart, or written by an older version) it is not a hit.
            guard let owner = replies[0].string, !items.isEmpty else { return .success(nil) }
            let messages = items.compactMap { item -> ChatMessage? in
                guard let text = item.string, let newline = text.firstIndex(of: "\n"),
                      let role = ChatMessage.Role(rawValue: String(text[..<newline]))
                else { return nil }
                return ChatMessage(role: role, content: String(text[text.index(after: newline)...]))
            }
            return .success(CachedConversation(owner: owner, messages: messages))
        } catch {
            self.redisErrors.increment()
            return .failure(BrokerError(message: "\(error)"))
        }
    }

    func watch(conversationID: String, watcher: ConversationWatcher) async -> Result<[String], BrokerError> {
        let first = self.state.withLock { state in
            state.watchers[conversationID, default: []].append(watcher)
            return state.watchers[conversationID]!.count == 1
        }
        do {
            if first {
                try await self.subscriber.subscribe(self.key("c:\(conversationID)")) { [weak self] message in
                    self?.conversationMessage(message, conversationID: conversationID)
                }
            }
            let running = try await self.client.send(RedisCommand("SMEMBERS", self.key("conv:\(conversationID):run")))
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
        if last { _ = self.subscriber.unsubscribe(self.key("c:\(conversationID)")) }
    }

    private func conversationMessage(_ message: RedisPubSubMessage, conversationID: String) {
        guard case .started(let info, let owner)? = GenerationWire.decode(message.payload) else { return }
        // This instance's own generations reach its watchers through the hub.
        guard owner != self.instanceID else { return }
        let watchers = self.state.withLock { $0.watchers[conversationID] ?? [] }
        for watcher in watchers { watcher.generationStarted(info.generationID) }
    }

    // MARK: Following generations owned elsewhere

    func follow(generationID: String, user: String, afterSeq: Int64, endOnly: Bool, follower: GenerationFollower) async -> FollowOutcome {
        do {
            // A generation that already ended needs no subscription when its stream is whole.
            let first = try await self.client.send(RedisCommand("HGETALL", self.key("gen:\(generationID)")))
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
        let channel = self.key("g:\(generationID)")
        let first = self.state.withLock { state -> Bool in
            let first = state.remote[generationID] == nil
            state.remote[generationID, default: RemoteGeneration(owner: "")].followers.append(RemoteFollower(follower: follower, endOnly: endOnly))
            return first
        }
        do {
            // Subscribe before reading history: anything published after this is seen live,
            // anything before is already in the stream.
            if first {
                try await self.subscriber.subscribe(channel) { [weak self] message in self?.generationMessage(message, generationID: generationID) }
            }
            let hash = try await self.client.send(RedisCommand("HGETALL", self.key("gen:\(generationID)")))
            switch try await self.history(generationID, afterSeq: afterSeq, endOnly: endOnly, fields: Self.fields(hash)) {
            case .failure(let outcome):
                self.removeFollower(follower, generationID: generationID)
                return outcome
            case .success(let replay):
                self.subscriber.eventLoop.execute {
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
        let stream = self.key("gen:\(generationID):s")
        let entries = try await self.client.xrange(stream, start: "0-\(afterSeq + 1)", end: "+")
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
            let length = try await self.client.send(RedisCommand("XLEN", stream)).int ?? 0
            if length >= self.configuration.streamMaxEntries { return .failure(.gap(earliestSeq: firstHeld)) }
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
        if last { _ = self.subscriber.unsubscribe(self.key("g:\(generationID)")) }
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
            let entries = try? await self.client.xrange(self.key("gen:\(generationID):s"), start: "0-\(after + 1)", end: "+")
            let events = (entries ?? []).compactMap { entry in
                entry.fields.first(where: { $0.name == "e" }).flatMap { GenerationWire.decode($0.value) }
            }
            self.subscriber.eventLoop.execute {
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

    // MARK: Presence

    /// `user:{name}` holds `instance\nsession` members; members of instances whose liveness key
    /// expired are dropped when read, so a dead instance's connections vanish within `ownerTTL`.
    func presenceOpened(user: String, sessionID: String) {
        let key = self.key("user:\(user)")
        self.fire([
            RedisCommand("SADD", key, self.instanceID + "\n" + sessionID),
            // Only collects the garbage of instances gone for good: members of dead instances
            // are dropped when read, so this can be long.
            RedisCommand("PEXPIRE", key, self.milliseconds(.hours(24))),
        ])
    }

    func presenceClosed(user: String, sessionID: String) {
        self.fire([RedisCommand("SREM", self.key("user:\(user)"), self.instanceID + "\n" + sessionID)])
    }

    func presence(of user: String) async -> Result<[PresenceEntry], BrokerError> {
        do {
            let key = self.key("user:\(user)")
            let members = try await self.client.send(RedisCommand("SMEMBERS", key)).array?.compactMap(\.string) ?? []
            var entries: [PresenceEntry] = []
            var alive: [String: Bool] = [:]
            var stale: [String] = []
            for member in members {
                let parts = member.split(separator: "\n", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { continue }
                if alive[parts[0]] == nil { alive[parts[0]] = try await self.isAlive(parts[0], incarnation: nil) }
                if alive[parts[0]] == true {
                    entries.append(PresenceEntry(instanceID: parts[0], sessionID: parts[1]))
                } else {
                    stale.append(member)
                }
            }
            if !stale.isEmpty {
                var remove = RedisCommand("SREM", key)
                remove.append(contentsOf: stale)
                self.fire([remove])
            }
            return .success(entries)
        } catch {
            return .failure(BrokerError(message: "\(error)"))
        }
    }

    // MARK: Cancel from anywhere

    func cancel(generationID: String, user: String) async -> CancelOutcome {
        do {
            let reply = try await self.client.send(RedisCommand("HMGET", self.key("gen:\(generationID)"), "owner", "state", "user"))
            guard let values = reply.array, values.count == 3, let owner = values[0].string, values[2].string == user else { return .notFound }
            if values[1].string == "done" { return .alreadyEnded }
            _ = try await self.client.send(RedisCommand("PUBLISH", self.key("ctl:\(owner)"), "cancel\n" + generationID))
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

    // MARK: Liveness

    private func refreshLiveness() {
        self.fire([RedisCommand("SET", self.key("inst:\(self.instanceID)"), self.incarnation, "PX", self.milliseconds(self.configuration.ownerTTL))])
    }

    /// Refreshes this instance's liveness, republishes what Redis missed, asks again for the
    /// parts followers wait on, and checks the owners of followed generations: one found
    /// missing twice in a row is dead (once could be a key that is being refreshed late).
    private func livenessTick() {
        self.refreshLiveness()
        self.republishDirty()
        if let journal = self.journal.withLock({ $0 }) {
            // Journals of dead instances are looked for every few seconds, not every tick.
            journal.tick(adopt: self.ticks.add(1, ordering: .relaxed).newValue % 5 == 0)
        }
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
                guard let alive = try? await self.isAlive(owner.instance, incarnation: owner.incarnation) else { return }  // Redis down: no verdict
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
                self.subscriber.eventLoop.execute {
                    for generationID in lost { self.ownerLost(generationID) }
                }
            }
        }
    }

    /// Whether `owner` is alive, and still the process that recorded `incarnation` (nil: any).
    func isAlive(_ owner: String, incarnation: String?) async throws -> Bool {
        let value = try await self.client.send(RedisCommand("GET", self.key("inst:\(owner)"))).string
        guard let incarnation else { return value != nil }
        return value == incarnation
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
