import Inference
import Synchronization

/// Conversations kept in process memory, for context until the persistence issue stores them.
/// Bounded: at most `maxConversations` (the least recently used is forgotten) and, per
/// conversation, the newest messages within `maxContextCharacters`.
public final class ConversationMemory: Sendable {
    struct Conversation {
        var messages: [ChatMessage] = []
        var lastUsed: UInt64 = 0
    }

    private struct State {
        var conversations: [String: Conversation] = [:]
        var clock: UInt64 = 0
    }

    private let state = Mutex(State())
    public let maxConversations: Int
    public let maxContextCharacters: Int

    public init(maxConversations: Int = 10_000, maxContextCharacters: Int = 16_000) {
        self.maxConversations = maxConversations
        self.maxContextCharacters = maxContextCharacters
    }

    public func create(id: String) {
        self.state.withLock { state in
            state.clock += 1
            state.conversations[id] = Conversation(lastUsed: state.clock)
            if state.conversations.count > self.maxConversations,
               let oldest = state.conversations.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key
            {
                state.conversations.removeValue(forKey: oldest)
            }
        }
    }

    public func exists(_ id: String) -> Bool {
        self.state.withLock { $0.conversations[id] != nil }
    }

    /// The context to send upstream: the stored messages, newest kept within the budget.
    public func context(of id: String) -> [ChatMessage]? {
        self.state.withLock { state in
            guard var conversation = state.conversations[id] else { return nil }
            state.clock += 1
            conversation.lastUsed = state.clock
            state.conversations[id] = conversation
            return conversation.messages
        }
    }

    public func append(_ message: ChatMessage, to id: String) {
        self.state.withLock { state in
            guard var conversation = state.conversations[id] else { return }
            conversation.messages.append(message)
            var total = conversation.messages.reduce(0) { $0 + $1.content.count }
            while total > self.maxContextCharacters, conversation.messages.count > 1 {
                total -= conversation.messages.removeFirst().content.count
            }
            state.conversations[id] = conversation
        }
    }
}
