import Foundation
import Logging
import RedisClient
import Storage
import Synchronization

/// The write-behind queue's journal in Redis: every message the queue accepts is recorded in
/// `wq:{instance}:{incarnation}` (a hash, one field per message) until the storage took it, so a
/// process killed with messages queued (a `kill -9`, an OOM kill, during a database outage:
/// everything since it began) loses none of them. Each instance looks at the journals listed in
/// `wq` every few seconds and takes over those of dead incarnations: a script moves their
/// messages into its own journal and removes them there in one step (only one taker wins), and
/// its queue writes them. Writing a message the dead one had written already stores nothing
/// twice (the storage ignores an (id, created_at) it has), so a taker needs no certainty.
///
/// Commands go out through the link's pipeline; when one fails (Redis unreachable, a reply
/// too late) the journal is made again from the queue once Redis answers, so it neither misses
/// a message nor keeps one already written.
final class RedisWriteJournal: WriteJournal, Sendable {
    /// Strong: the node drops its journal (and the queue this one) at shutdown.
    private let link: RedisLink
    /// A journal command Redis did not take (the entry may be missing, or stale).
    private let missed = MissedWrites()
    private let queue: WriteBehindQueue
    private let logger: Logger
    /// This incarnation's journal, and the set listing every journal.
    let key: String
    private let registry: String
    private let taken = Atomic<Int>(0)

    init(link: RedisLink, queue: WriteBehindQueue, logger: Logger) {
        self.link = link
        self.queue = queue
        self.logger = logger
        self.key = link.key("wq:\(link.instanceID):\(link.incarnation)")
        self.registry = link.key("wq")
    }

    /// Messages taken over from dead instances' journals.
    var messagesTaken: Int { self.taken.load(ordering: .relaxed) }

    // MARK: WriteJournal

    func recorded(_ messages: [NewMessage]) {
        var command = RedisCommand("HSET", self.key)
        for message in messages {
            command.append(Self.field(message))
            command.append(Self.encode(message))
        }
        self.link.fire([command], tag: self.missed.tag(Self.tag))
    }

    func written(_ messages: [NewMessage]) {
        var command = RedisCommand("HDEL", self.key)
        for message in messages { command.append(Self.field(message)) }
        self.link.fire([command], tag: self.missed.tag(Self.tag))
    }

    /// Exactly `messages` from now on (DEL, then HSETs of at most 500 fields each, in order
    /// with every other journal command).
    func replace(with messages: [NewMessage]) {
        var commands = [RedisCommand("DEL", self.key)]
        var start = 0
        while start < messages.count {
            var command = RedisCommand("HSET", self.key)
            for message in messages[start..<min(messages.count, start + 500)] {
                command.append(Self.field(message))
                command.append(Self.encode(message))
            }
            commands.append(command)
            start += 500
        }
        self.link.fire(commands, tag: self.missed.tag(Self.tag))
    }

    // MARK: Upkeep

    /// Every liveness tick: keep this journal listed (and expiring, should every instance go);
    /// with `adopt`, take over the journals of dead incarnations.
    func tick(adopt: Bool) {
        self.link.fire([
            RedisCommand("SADD", self.registry, self.key),
            RedisCommand("PEXPIRE", self.key, self.link.milliseconds(.hours(24))),
            RedisCommand("PEXPIRE", self.registry, self.link.milliseconds(.hours(24))),
        ], tag: self.missed.tag(Self.tag))
        if adopt { Task { await self.adoptDeadJournals() } }
    }

    /// The node is shutting down: the queue stops recording here. What it writes from now on
    /// stays journaled, and is written again (harmlessly) by whoever takes the journal over.
    func detach() {
        self.queue.setJournal(nil)
    }

    /// Redis is back (it may have lost data, or missed records and removals meanwhile): the
    /// journal becomes exactly what the queue holds.
    func reconnected() {
        self.rebuild()
    }

    /// A journal command failed (the entry may be missing, or stale): make it exactly the queue.
    func rebuild() {
        self.queue.rebuildJournal()
    }

    /// Rebuilds when a journal command failed since the last call.
    func rebuildIfMissed() {
        if !self.missed.take().isEmpty { self.rebuild() }
    }

    /// The tag of the journal's commands in `missed`.
    private static let tag = "journal"

    /// Moves the messages of every journal whose incarnation is gone into this one, and queues them.
    func adoptDeadJournals() async {
        do {
            let members = try await self.link.client.send(RedisCommand("SMEMBERS", self.registry)).array?.compactMap(\.string) ?? []
            for member in members where member != self.key {
                guard let (instance, incarnation) = self.owner(of: member) else { continue }
                guard try await !self.link.isAlive(instance, incarnation: incarnation) else { continue }
                let reply = try await self.link.client.send(RedisCommand(
                    "EVAL", Self.takeOver, 3, member, self.key, self.registry, self.link.milliseconds(.hours(24))))
                let values = reply.array ?? []
                var messages: [NewMessage] = []
                var unreadable = 0
                for index in stride(from: 1, to: values.count, by: 2) {
                    if let text = values[index].string, let message = Self.decode(text) {
                        messages.append(message)
                    } else {
                        unreadable += 1
                    }
                }
                if unreadable > 0 {
                    self.logger.error("journal entries that cannot be read were dropped", metadata: ["sluice.count": "\(unreadable)"])
                }
                guard !messages.isEmpty else { continue }
                self.taken.add(messages.count, ordering: .relaxed)
                self.logger.warning("took over the unwritten messages of a dead instance", metadata: [
                    "sluice.instance": "\(instance)", "sluice.count": "\(messages.count)"])
                // Oldest first, as they were queued.
                self.queue.enqueueRecovered(messages.sorted { $0.createdAt < $1.createdAt })
            }
        } catch {
            // Redis unreachable: the next round tries again.
        }
    }

    /// `{prefix}wq:{instance}:{incarnation}` → its instance and incarnation (the incarnation has
    /// no colon; an instance id may).
    private func owner(of member: String) -> (String, String)? {
        let prefix = self.link.key("wq:")
        guard member.hasPrefix(prefix), let colon = member.lastIndex(of: ":") else { return nil }
        let instance = member[member.index(member.startIndex, offsetBy: prefix.count)..<colon]
        let incarnation = member[member.index(after: colon)...]
        guard !instance.isEmpty, !incarnation.isEmpty else { return nil }
        return (String(instance), String(incarnation))
    }

    /// KEYS: the dead journal, this one, the registry. Copies field by field (no unpack: a
    /// journal can hold many thousands), deletes the dead one and its listing, returns what it held.
    static let takeOver = """
        local entries = redis.call('HGETALL', KEYS[1])
        for i = 1, #entries, 2 do redis.call('HSET', KEYS[2], entries[i], entries[i + 1]) end
        if #entries > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
        redis.call('DEL', KEYS[1])
        redis.call('SREM', KEYS[3], KEYS[1])
        return entries
        """

    // MARK: Encoding

    /// One field per message: what makes a write idempotent.
    static func field(_ message: NewMessage) -> String {
        message.id.uuidString.lowercased() + "_" + String(Self.microseconds(message.createdAt))
    }

    static func encode(_ message: NewMessage) -> String {
        var object: [String: Any] = [
            "id": message.id.uuidString.lowercased(), "conversation": message.conversationID.uuidString.lowercased(),
            "user": message.userExternalID, "role": message.role.rawValue, "content": message.content,
            "at": Self.microseconds(message.createdAt),
        ]
        if let value = message.finishReason { object["finish_reason"] = value }
        if let value = message.promptTokens { object["prompt_tokens"] = value }
        if let value = message.completionTokens { object["completion_tokens"] = value }
        if let value = message.model { object["model"] = value }
        if let value = message.conversationTitle { object["title"] = value }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// A journal entry back into a message; nil when anything is missing or out of range (the
    /// entry came from Redis: outside input).
    static func decode(_ text: String) -> NewMessage? {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any],
              let id = (object["id"] as? String).flatMap(UUID.init(uuidString:)),
              let conversation = (object["conversation"] as? String).flatMap(UUID.init(uuidString:)),
              let user = object["user"] as? String, !user.isEmpty,
              let role = (object["role"] as? String).flatMap(MessageRole.init(rawValue:)),
              let content = object["content"] as? String,
              let at = Self.integer(object["at"]), at >= 0, at <= 253_402_300_799_000_000  // through the year 9999
        else { return nil }
        let promptTokens = object["prompt_tokens"].map(Self.integer)
        let completionTokens = object["completion_tokens"].map(Self.integer)
        // Present but not an integer in range: unreadable rather than silently changed.
        if promptTokens == .some(nil) || completionTokens == .some(nil) { return nil }
        if let value = promptTokens ?? nil, value < 0 { return nil }
        if let value = completionTokens ?? nil, value < 0 { return nil }
        return NewMessage(
            id: id, conversationID: conversation, userExternalID: user, role: role, content: content,
            finishReason: object["finish_reason"] as? String, promptTokens: promptTokens ?? nil, completionTokens: completionTokens ?? nil,
            model: object["model"] as? String, createdAt: Date(timeIntervalSince1970: Double(at) / 1_000_000), conversationTitle: object["title"] as? String)
    }

    /// A JSON number that is an exact integer (not a boolean, which is an NSNumber too, nor a
    /// fraction), within what a double holds exactly.
    private static func integer(_ value: Any?) -> Int? {
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c" else { return nil }
        let double = number.doubleValue
        guard double.isFinite, double.rounded(.towardZero) == double, abs(double) < 9_007_199_254_740_992 else { return nil }
        return Int(double)
    }

    /// Microseconds since 1970, rounded, as the storage keeps them (so the round trip through
    /// the journal gives the same (id, created_at) key).
    static func microseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
    }
}
