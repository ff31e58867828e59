import Inference
import Synchronization

/// Conversations kept in process memory: this instance's cache of recent contexts, in front of
/// the storage (and the only copy when persistence is off). Bounded: at most `maxConversations` (the least recently used is forgotten) and, per
/// conversation, the newest messages within `maxContextCharacters` (counted as UTF-8 bytes:
/// O(1) per message, where counting Characters walks every grapheme of every answer).
public final class ConversationMemory: Sendable {
    struct Conversation {
        var owner: String
        var messages: [ChatMessage] = []
        var lastUsed: UInt64 = 0
    }

    private struct State {
        var conversations: [String: Conversation] = [:]
        var clock: UInt64 = 0
        /// Every use in order, with the clock at that use. Evicting walks it from the front and
        /// skips uses that a later one superseded: least-recently-used in O(1) amortized, where
        /// searching the dictionary for the oldest cost O(n) per new conversation.
        var uses: [(id: String, stamp: UInt64)] = []
        var usesStart = 0

        mutating func touch(_ id: String) -> UInt64 {
            self.clock += 1
            self.uses.append((id, self.clock))
            return self.clock
        }

        mutating func evict(downTo limit: Int) {
            while self.conversations.count > limit, self.usesStart < self.uses.count {
                let use = self.uses[self.usesStart]
                self.usesStart += 1
                if self.conversations[use.id]?.lastUsed == use.stamp {
                    self.conversations.removeValue(forKey: use.id)
                }
            }
            // Bound the queue: once it holds mostly consumed or superseded uses, rebuild it
            // from the live conversations (O(n log n), paid once per O(n) uses).
            if self.uses.count - self.usesStart > 2 * self.conversations.count + 1024 || self.usesStart > self.uses.count / 2 {
                self.uses = self.conversations.map { ($0.key, $0.value.lastUsed) }.sorted { $0.stamp < $1.stamp }
                self.usesStart = 0
            }
        }
    }

    private let state = Mutex(State())
    public let maxConversations: Int
    public let maxContextCharacters: Int

    public init(maxConversations: Int = 10_000, maxContextCharacters: Int = 16_000) {
        self.maxConversations = maxConversations
        self.maxContextCharacters = maxContextCharacters
    }

    public func create(id: String, owner: String) {
        self.state.withLock { state in
            state.conversations[id] = Conversation(owner: owner, lastUsed: state.touch(id))
            state.evict(downTo: self.maxConversations)
        }
    }

    /// Uses queued for eviction (live and superseded); bounded by the live count plus a slack.
    var queuedUses: Int { self.state.withLock { $0.uses.count - $0.usesStart } }

    /// Takes a conversation kept elsewhere (another instance made it), replacing what is here.
    public func load(_ id: String, owner: String, messages: [ChatMessage]) {
        self.state.withLock { state in
            state.conversations[id] = Conversation(owner: owner, lastUsed: state.touch(id))
            state.evict(downTo: self.maxConversations)
        }
        for message in messages { self.append(message, to: id) }
    }

    public func exists(_ id: String) -> Bool {
        self.state.withLock { $0.conversations[id] != nil }
    }

    /// The context to send upstream (the newest messages within the budget) and whose it is.
    func context(of id: String) -> CachedConversation? {
        self.state.withLock { state in
            guard state.conversations[id] != nil else { return nil }
            let stamp = state.touch(id)
            state.conversations[id]!.lastUsed = stamp
            state.evict(downTo: self.maxConversations)
            let conversation = state.conversations[id]!
            return CachedConversation(owner: conversation.owner, messages: conversation.messages)
        }
    }

    /// The conversation's owner, if it is held here (does not count as a use).
    func owner(of id: String) -> String? {
        self.state.withLock { $0.conversations[id]?.owner }
    }

    public func append(_ message: ChatMessage, to id: String) {
        self.state.withLock { state in
            guard var conversation = state.conversations[id] else { return }
            conversation.messages.append(message)
            var total = conversation.messages.reduce(0) { $0 + $1.content.utf8.count }
            while total > self.maxContextCharacters, conversation.messages.count > 1 {
                total -= conversation.messages.removeFirst().content.utf8.count
            }
            state.conversations[id] = conversation
        }
    }
}
