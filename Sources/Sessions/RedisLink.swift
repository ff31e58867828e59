import Logging
import Metrics
import NIOCore
import RedisClient
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

/// This instance's two connections to the shared Redis (commands, and one subscriber for every
/// channel), the key names, and its liveness key `inst:{instance}` (a short TTL, holding this
/// process's incarnation: a random token, so a process started again under the same id is
/// another owner). The generation fan-out, the conversation cache, the presence directory and
/// the write journal all go through it (`RedisNode` wires them).
final class RedisLink: Sendable {
    let instanceID: String
    let configuration: RedisBrokerConfiguration
    let client: RedisClient
    let subscriber: RedisSubscriber
    /// This process's value of `inst:{instanceID}`, recorded with each generation it owns.
    let incarnation: String
    private let outgoing = Mutex(Outgoing())
    private let dropped = Atomic<Int>(0)

    /// Redis round trips (one pipeline per event-loop tick, and reads) and failed ones.
    let redisLatency = Timer(label: "sluice_redis_command_seconds")
    let redisErrors = Counter(label: "sluice_redis_errors_total")

    /// `onConnected`: the command connection is (again) up; `onResubscribed`: the subscriber
    /// is, and events published meanwhile were lost on the channels.
    init(
        redis: RedisConfiguration, instanceID: String, configuration: RedisBrokerConfiguration, eventLoop: any EventLoop, logger: Logger,
        onConnected: @escaping @Sendable () -> Void, onResubscribed: @escaping @Sendable () -> Void
    ) {
        self.instanceID = instanceID
        self.incarnation = Identifier.make("inc_")
        self.configuration = configuration
        self.client = RedisClient(configuration: redis, eventLoop: eventLoop, logger: logger, onStateChange: { state in
            guard state == .connected else { return }
            onConnected()
        })
        self.subscriber = RedisSubscriber(configuration: redis, eventLoop: eventLoop, logger: logger, onResubscribed: onResubscribed)
    }

    var isHealthy: Bool { self.client.isConnected && self.subscriber.isConnected }

    func key(_ suffix: String) -> String { self.configuration.keyPrefix + suffix }
    func milliseconds(_ amount: TimeAmount) -> Int { Int(amount.nanoseconds / 1_000_000) }

    /// Sends without waiting. Commands fired during one event-loop tick (from every generation)
    /// leave in one pipeline: one write instead of one per upstream read, in the order they were
    /// fired. A failed command with a `tag` (Redis down, a reply too late) is recorded in the tag's
    /// `MissedWrites`, for its writer to write again whole; others only lose their effect.
    func fire(_ commands: [RedisCommand], tag: MissedWrites.Tag? = nil) {
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

    private func flushOutgoing() {
        let (commands, tags) = self.outgoing.withLock { outgoing -> ([RedisCommand], [MissedWrites.Tag?]) in
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
            for (index, outcome) in outcomes.enumerated() {
                guard case .failure = outcome else { continue }
                failed += 1
                if let tag = tags[index] { tag.writes.insert(tag.name) }
            }
            guard failed > 0 else {
                self.redisLatency.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
                return
            }
            self.redisErrors.increment()
            self.dropped.add(failed, ordering: .relaxed)
        }
    }

    private struct Outgoing {
        var commands: [RedisCommand] = []
        /// Where each command's failure is recorded (nil: nowhere).
        var tags: [MissedWrites.Tag?] = []
        var flushScheduled = false
    }

    /// Fired commands Redis did not take.
    var droppedEvents: Int { self.dropped.load(ordering: .relaxed) }

    // MARK: Liveness

    func refreshLiveness() {
        self.fire([RedisCommand("SET", self.key("inst:\(self.instanceID)"), self.incarnation, "PX", self.milliseconds(self.configuration.ownerTTL))])
    }

    /// Whether `owner` is alive, and still the process that recorded `incarnation` (nil: any).
    func isAlive(_ owner: String, incarnation: String?) async throws -> Bool {
        let value = try await self.client.send(RedisCommand("GET", self.key("inst:\(owner)"))).string
        guard let incarnation else { return value != nil }
        return value == incarnation
    }

    /// Removes the liveness key at once rather than after the TTL (followers elsewhere see
    /// owner_lost sooner; only if it is still this incarnation's: a successor under the same id
    /// may have taken it), then closes both connections.
    func shutdown() async {
        _ = try? await self.client.send(RedisCommand(
            "EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1, self.key("inst:\(self.instanceID)"), self.incarnation))
        await self.subscriber.shutdown()
        await self.client.shutdown()
    }
}

/// The tags (a generation id, say) of fired commands Redis did not take: what their writer must
/// write again once Redis answers.
final class MissedWrites: Sendable {
    /// What a fired command's failure marks: `name` in `writes`.
    struct Tag: Sendable {
        let writes: MissedWrites
        let name: String
    }

    private let names = Mutex<Set<String>>([])

    func tag(_ name: String) -> Tag { Tag(writes: self, name: name) }

    func insert(_ name: String) {
        self.names.withLock { _ = $0.insert(name) }
    }

    /// What was missed since the last call.
    func take() -> Set<String> {
        self.names.withLock { names in
            defer { names = [] }
            return names
        }
    }
}
