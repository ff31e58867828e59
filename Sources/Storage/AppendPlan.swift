import Foundation

/// A batch of `NewMessage`s prepared for either database: conversations grouped (one row each,
/// so an upsert never touches a row twice), duplicates dropped, text made storable.
struct AppendPlan: Sendable {
    struct Conversation: Sendable, Encodable {
        var id: UUID
        var userExternalID: String
        var title: String?
        var firstMicroseconds: Int64
        var lastMicroseconds: Int64

        enum CodingKeys: String, CodingKey {
            case id
            case userExternalID = "user_external_id"
            case title
            case firstMicroseconds = "first_us"
            case lastMicroseconds = "last_us"
        }
    }

    struct Message: Sendable, Encodable {
        var id: UUID
        var conversationID: UUID
        var role: MessageRole
        var content: String
        var finishReason: String?
        var promptTokens: Int?
        var completionTokens: Int?
        var model: String?
        var createdMicroseconds: Int64

        enum CodingKeys: String, CodingKey {
            case id
            case conversationID = "conversation_id"
            case role
            case content
            case finishReason = "finish_reason"
            case promptTokens = "prompt_tokens"
            case completionTokens = "completion_tokens"
            case model
            case createdMicroseconds = "created_us"
        }
    }

    var conversations: [Conversation] = []
    var messages: [Message] = []
    /// Messages whose conversation was claimed by another user earlier in the same batch.
    var rejectedInBatch = 0
    /// The same (id, createdAt) twice in the batch.
    var duplicatesInBatch = 0

    init(_ batch: [NewMessage]) {
        var conversationIndex: [UUID: Int] = [:]
        var seen = Set<MessageKey>()
        for message in batch {
            let micros = message.createdAt.microsecondsSince1970
            guard seen.insert(MessageKey(id: message.id, microseconds: micros)).inserted else {
                self.duplicatesInBatch += 1
                continue
            }
            let user = Self.storable(message.userExternalID)
            if let index = conversationIndex[message.conversationID] {
                guard self.conversations[index].userExternalID == user else {
                    self.rejectedInBatch += 1
                    continue
                }
                self.conversations[index].firstMicroseconds = min(self.conversations[index].firstMicroseconds, micros)
                self.conversations[index].lastMicroseconds = max(self.conversations[index].lastMicroseconds, micros)
                if self.conversations[index].title == nil {
                    self.conversations[index].title = message.conversationTitle.map(Self.storable)
                }
            } else {
                conversationIndex[message.conversationID] = self.conversations.count
                self.conversations.append(Conversation(
                    id: message.conversationID, userExternalID: user,
                    title: message.conversationTitle.map(Self.storable),
                    firstMicroseconds: micros, lastMicroseconds: micros
                ))
            }
            self.messages.append(Message(
                id: message.id, conversationID: message.conversationID, role: message.role,
                content: Self.storable(message.content),
                finishReason: message.finishReason.map(Self.storable),
                promptTokens: message.promptTokens, completionTokens: message.completionTokens,
                model: message.model.map(Self.storable), createdMicroseconds: micros
            ))
        }
    }

    /// The months the messages fall in (for creating missing partitions).
    var months: [PartitionMonth] {
        Array(Set(self.messages.map { PartitionMonth(containingMicroseconds: $0.createdMicroseconds) })).sorted()
    }

    func conversationsJSON() throws(StorageError) -> String { try Self.json(self.conversations) }
    func messagesJSON() throws(StorageError) -> String { try Self.json(self.messages) }

    private static func json(_ value: some Encodable) throws(StorageError) -> String {
        do {
            return String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
        } catch {
            throw StorageError.unexpectedRow("could not encode the batch: \(error)")
        }
    }

    /// PostgreSQL text cannot hold U+0000 (a write that could never succeed would block the
    /// write-behind queue forever), so it becomes U+FFFD, in both databases alike.
    static func storable(_ text: String) -> String {
        guard text.unicodeScalars.contains("\u{0}") else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { $0 == "\u{0}" ? "\u{FFFD}" : $0 }))
    }

    private struct MessageKey: Hashable {
        var id: UUID
        var microseconds: Int64
    }
}
