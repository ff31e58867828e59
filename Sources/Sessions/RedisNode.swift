import Logging
import NIOCore
import RedisClient
import Storage
import Synchronization

/// This instance in a deployment that shares Redis: one `RedisLink` (a command connection and
/// one subscriber), and the three jobs done over it (the generation fan-out, the conversation
/// cache, the presence directory) plus the write-behind queue's journal when there is storage.
/// It keeps the beat they share: liveness refreshed every `livenessInterval` and as soon as a
/// connection is up, what Redis missed written again, followed owners checked.
final class RedisNode: Sendable {
    let link: RedisLink
    let generations: RedisGenerationFanOut
    let conversations: RedisConversationCache
    let presence: RedisPresenceDirectory
    /// The write-behind queue's journal here, when this instance stores conversations.
    private let journal = Mutex<RedisWriteJournal?>(nil)
    private let livenessTask = Mutex<RepeatedTask?>(nil)
    private let ticks = Atomic<Int>(0)
    private let logger: Logger

    init(redis: RedisConfiguration, instanceID: String, configuration: RedisBrokerConfiguration, eventLoop: any EventLoop, logger: Logger) {
        self.logger = logger
        let resync = Mutex<RedisNode?>(nil)
        // Liveness is refreshed as soon as a connection is up, not only on the next tick.
        let link = RedisLink(
            redis: redis, instanceID: instanceID, configuration: configuration, eventLoop: eventLoop, logger: logger,
            onConnected: { resync.withLock { $0 }?.connected() },
            onResubscribed: { resync.withLock { $0 }?.generations.resynchronize() })
        self.link = link
        self.generations = RedisGenerationFanOut(link: link, logger: logger)
        self.conversations = RedisConversationCache(link: link)
        self.presence = RedisPresenceDirectory(link: link)
        resync.withLock { $0 = self }
        let task = eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: configuration.livenessInterval) { [weak self] _ in
            self?.livenessTick()
        }
        self.livenessTask.withLock { $0 = task }
    }

    var isHealthy: Bool { self.link.isHealthy }

    /// Journals what `queue` holds in Redis until it is written, so that another instance
    /// writes it if this one dies (and this one writes what dead ones left).
    func attachWriteQueue(_ queue: WriteBehindQueue) {
        let journal = RedisWriteJournal(link: self.link, queue: queue, logger: self.logger)
        self.journal.withLock { $0 = journal }
        queue.setJournal(journal)
    }

    /// This instance's write journal (nil without storage).
    var writeJournal: RedisWriteJournal? { self.journal.withLock { $0 } }

    private func connected() {
        self.link.refreshLiveness()
        self.writeAgainWhatWasMissed()
        self.writeJournal?.reconnected()
    }

    /// Refreshes this instance's liveness, writes again what Redis missed, keeps the journal
    /// listed (adopting dead ones' every few seconds), and lets the fan-out check on followed
    /// generations.
    private func livenessTick() {
        self.link.refreshLiveness()
        self.writeAgainWhatWasMissed()
        if let journal = self.writeJournal {
            // Journals of dead instances are looked for every few seconds, not every tick.
            journal.tick(adopt: self.ticks.add(1, ordering: .relaxed).newValue % 5 == 0)
        }
        self.generations.livenessTick()
    }

    private func writeAgainWhatWasMissed() {
        guard self.link.client.isConnected else { return }
        self.writeJournal?.rebuildIfMissed()
        self.generations.republishMissed()
    }

    func shutdown() async {
        self.livenessTask.withLock { $0 }?.cancel()
        let journal = self.journal.withLock { journal -> RedisWriteJournal? in
            defer { journal = nil }
            return journal
        }
        journal?.detach()
        await self.link.shutdown()
    }
}
