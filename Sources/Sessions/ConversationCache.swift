import Inference

/// The conversation cache the instances share (Redis): context without a database read. One
/// node has none (`FanOut.conversations` is nil): `ConversationHistory` then caches in this
/// process's `ConversationMemory`.
///
/// Writes come from the generation path and must not block: failures are counted and dropped
/// (the next reader of a cold or stale cache reads the storage).
protocol ConversationCache: Sendable {
    /// Starts the cached copy of a conversation just made here (its first message).
    func createConversation(_ conversationID: String, owner: String, first message: ChatMessage)
    /// Adds to the cached copy, if there is one (a cold cache is filled by the next reader).
    func appendMessage(_ message: ChatMessage, toConversation conversationID: String)
    /// Caches what a reader loaded from storage, unless another instance cached it meanwhile.
    func fillConversation(_ conversationID: String, owner: String, messages: [ChatMessage])
    /// The cached copy, `nil` when not cached.
    func conversationContext(_ conversationID: String) async -> Result<CachedConversation?, BrokerError>
}

/// A conversation as the shared cache holds it.
struct CachedConversation: Sendable, Equatable {
    var owner: String
    var messages: [ChatMessage]
}
