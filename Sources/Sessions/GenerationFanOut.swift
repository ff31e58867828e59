import Inference
import NIOCore

/// The cross-instance side of generations. Generations of this instance are found in its
/// `GenerationHub`; the fan-out reaches the others. `LocalGenerationFanOut` is the embedded
/// single-node default (there are no others); `RedisGenerationFanOut` fans out through Redis.
///
/// Owner-side calls come from the generation's event loop once per upstream read, never per
/// token, and must not block: failures are counted and dropped (local streaming goes on).
protocol GenerationFanOut: Sendable {
    /// False for a single node: nothing to publish, nobody else to ask.
    var isShared: Bool { get }

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
    /// Called when a cancel for one of this instance's generations arrives from elsewhere.
    func setCancelHandler(_ handler: @escaping @Sendable (String) -> Void)

    // Followers of generations owned by other instances.
    /// `.notFound` also when the generation is `user`'s not (never leaks that it exists).
    func follow(generationID: String, user: String, afterSeq: Int64, endOnly: Bool, follower: GenerationFollower) async -> FollowOutcome
    func unfollow(generationID: String, follower: GenerationFollower)
    func cancel(generationID: String, user: String) async -> CancelOutcome
    /// Starts telling `watcher` about generations started in the conversation on other
    /// instances, and returns those running there now.
    func watch(conversationID: String, watcher: ConversationWatcher) async -> Result<[String], BrokerError>
    func unwatch(conversationID: String, watcher: ConversationWatcher)
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

/// The shared store (Redis) did not answer, or answered nonsense.
package struct BrokerError: Error, Sendable, Equatable {
    package var message: String
}

/// The embedded default: one node, so there is nothing to publish and nobody else to ask.
struct LocalGenerationFanOut: GenerationFanOut {
    var isShared: Bool { false }
    func publishStarted(_ info: GenerationInfo, user: String) {}
    func publishBatch(_ info: GenerationInfo, _ update: FollowUpdate) {}
    func publishEnd(_ info: GenerationInfo, _ end: GenerationEnd) {}
    func republish(_ info: GenerationInfo, user: String, whole: FollowUpdate, end: GenerationEnd?) {}
    func setLocalGenerations(_ lookup: @escaping @Sendable (String) -> GenerationHub.Entry?) {}
    func setCancelHandler(_ handler: @escaping @Sendable (String) -> Void) {}
    func follow(generationID: String, user: String, afterSeq: Int64, endOnly: Bool, follower: GenerationFollower) async -> FollowOutcome { .notFound }
    func unfollow(generationID: String, follower: GenerationFollower) {}
    func cancel(generationID: String, user: String) async -> CancelOutcome { .notFound }
    func watch(conversationID: String, watcher: ConversationWatcher) async -> Result<[String], BrokerError> { .success([]) }
    func unwatch(conversationID: String, watcher: ConversationWatcher) {}
}
