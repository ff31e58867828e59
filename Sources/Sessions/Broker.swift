import Inference
import NIOCore
import Storage

/// The cross-instance side of generations and conversations. Generations of this instance are
/// found in its `GenerationHub`; the broker reaches the others. `LocalBroker` is the embedded
/// single-node default (there are no others); `RedisBroker` fans out through Redis.
///
/// Owner-side calls come from the generation's event loop once per upstream read, never per
/// token, and must not block: failures are counted and dropped (local streaming goes on).
protocol Broker: Sendable {
    /// False for a single node: nothing to publish, nobody else to ask.
    var isShared: Bool { get }
    /// Whether the shared part works right now (false while Redis is unreachable).
    var isHealthy: Bool { get }

    // Owner side.
    /// `user` is recorded with it: only that user may follow or cancel it from elsewhere.
    func publishStarted(_ info: GenerationInfo, user: String)
    func publishBatch(_ info: GenerationInfo, _ update: FollowUpdate)
    func publishEnd(_ info: GenerationInfo, _ end: GenerationEnd)
    /// The generation's shared copy again, whole (`whole`: every seq so far), after the shared
    /// store missed some of its writes; `end` once it ended.
    func republish(_ info: GenerationInfo, user: String, whole: FollowUpdate, end: GenerationEnd?)
    /// Where this instance's generations are found when one must be published again (the hub).
    func setLocalGenerations(_ lookup: @escaping @Sendable (String) -> GenerationHub.Entry?)
    /// Journals what `queue` holds in the shared store until it is written, so that another
    /// instance writes it if this one dies (and this one writes what dead ones left).
    func attachWriteQueue(_ queue: WriteBehindQueue)

    // The conversation cache shared by the instances (Redis): context without a database read.
    /// Starts the cached copy of a conversation just made here (its first message).
    func createConversation(_ conversationID: String, owner: String, first message: ChatMessage)
    /// Adds to the cached copy, if there is one (a cold cache is filled by the next reader).
    func appendMessage(_ message: ChatMessage, toConversation conversationID: String)
    /// Caches what a reader loaded from storage, unless another instance cached it meanwhile.
    func fillConversation(_ conversationID: String, owner: String, messages: [ChatMessage])
    /// The cached copy, `nil` when not cached.
    func conversationContext(_ conversationID: String) async -> Result<CachedConversation?, BrokerError>

    // Followers of generations owned by other instances.
    /// `.notFound` also when the generation is `user`'s not (never leaks that it exists).
    func follow(generationID: String, user: String, afterSeq: Int64, endOnly: Bool, follower: GenerationFollower) async -> FollowOutcome
    func unfollow(generationID: String, follower: GenerationFollower)
    func cancel(generationID: String, user: String) async -> CancelOutcome
    /// Starts telling `watcher` about generations started in the conversation on other
    /// instances, and returns those running there now.
    func watch(conversationID: String, watcher: ConversationWatcher) async -> Result<[String], BrokerError>
    func unwatch(conversationID: String, watcher: ConversationWatcher)

    // Presence: which instance holds which user's connections.
    func presenceOpened(user: String, sessionID: String)
    func presenceClosed(user: String, sessionID: String)
    /// The user's connections on every live instance (this one's included).
    func presence(of user: String) async -> Result<[PresenceEntry], BrokerError>

    /// Called when a cancel for one of this instance's generations arrives from elsewhere.
    func setCancelHandler(_ handler: @escaping @Sendable (String) -> Void)
    func shutdown() async
}

enum FollowOutcome: Sendable, Equatable {
    /// The replay went out (or is on its way) and live updates follow.
    case following
    case notFound
    /// The bounded history no longer holds `after_seq + 1`; `earliestSeq` is the first still held.
    case gap(earliestSeq: Int64)
    case unavailable
}

enum CancelOutcome: Sendable, Equatable {
    case sent
    /// It had already ended: a cancel is a no-op.
    case alreadyEnded
    case notFound
    case unavailable
}

/// A conversation as the shared cache holds it.
struct CachedConversation: Sendable, Equatable {
    var owner: String
    var messages: [ChatMessage]
}

package struct BrokerError: Error, Sendable, Equatable {
    package var message: String
}

/// The embedded default: one node, so there is nothing to publish and nobody else to ask.
struct LocalBroker: Broker {
    var isShared: Bool { false }
    var isHealthy: Bool { true }
    /// `user` is recorded with it: only that user may follow or cancel it from elsewhere.
    func publishStarted(_ info: GenerationInfo, user: String) {}
    func publishBatch(_ info: GenerationInfo, _ update: FollowUpdate) {}
    func publishEnd(_ info: GenerationInfo, _ end: GenerationEnd) {}
    func republish(_ info: GenerationInfo, user: String, whole: FollowUpdate, end: GenerationEnd?) {}
    func setLocalGenerations(_ lookup: @escaping @Sendable (String) -> GenerationHub.Entry?) {}
    func attachWriteQueue(_ queue: WriteBehindQueue) {}
    func createConversation(_ conversationID: String, owner: String, first message: ChatMessage) {}
    func appendMessage(_ message: ChatMessage, toConversation conversationID: String) {}
    func fillConversation(_ conversationID: String, owner: String, messages: [ChatMessage]) {}
    func conversationContext(_ conversationID: String) async -> Result<CachedConversation?, BrokerError> { .success(nil) }
    func follow(generationID: String, user: String, afterSeq: Int64, endOnly: Bool, follower: GenerationFollower) async -> FollowOutcome { .notFound }
    func unfollow(generationID: String, follower: GenerationFollower) {}
    func cancel(generationID: String, user: String) async -> CancelOutcome { .notFound }
    func watch(conversationID: String, watcher: ConversationWatcher) async -> Result<[String], BrokerError> { .success([]) }
    func unwatch(conversationID: String, watcher: ConversationWatcher) {}
    func presenceOpened(user: String, sessionID: String) {}
    func presenceClosed(user: String, sessionID: String) {}
    func presence(of user: String) async -> Result<[PresenceEntry], BrokerError> { .success([]) }
    func setCancelHandler(_ handler: @escaping @Sendable (String) -> Void) {}
    func shutdown() async {}
}
