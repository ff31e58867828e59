import Foundation
@testable import Sessions
import Storage
import Testing

/// The journal's entries: a message survives the round trip through Redis exactly (the same
/// id and microsecond, so a second write is recognised), and an entry that is not what this
/// code writes (Redis is outside input) is refused rather than guessed at.
@Suite struct RedisWriteJournalTests {
    @Test func aMessageRoundTripsWithTheSameKey() throws {
        let message = NewMessage(
            conversationID: UUID(), userExternalID: "grace", role: .assistant, content: "a \"quoted\"\nanswer ✓",
            finishReason: "stop", promptTokens: 12, completionTokens: 200, model: "m",
            createdAt: Date(timeIntervalSince1970: 1_796_000_000.123457), conversationTitle: "t")
        let decoded = try #require(RedisWriteJournal.decode(RedisWriteJournal.encode(message)))
        #expect(RedisWriteJournal.field(decoded) == RedisWriteJournal.field(message))
        #expect(decoded.content == message.content && decoded.conversationID == message.conversationID && decoded.role == .assistant)
        #expect(decoded.finishReason == "stop" && decoded.promptTokens == 12 && decoded.completionTokens == 200)
        #expect(decoded.model == "m" && decoded.conversationTitle == "t" && decoded.userExternalID == "grace")
        let user = NewMessage(conversationID: UUID(), userExternalID: "u", role: .user, content: "")
        let plain = try #require(RedisWriteJournal.decode(RedisWriteJournal.encode(user)))
        #expect(plain.finishReason == nil && plain.promptTokens == nil && RedisWriteJournal.field(plain) == RedisWriteJournal.field(user))
    }

    @Test func entriesThatAreNotOursAreRefused() {
        let valid: [String: Any] = [
            "id": UUID().uuidString, "conversation": UUID().uuidString, "user": "u", "role": "user", "content": "c",
            "at": 1_796_000_000_000_000,
        ]
        func entry(_ change: (inout [String: Any]) -> Void) -> String {
            var object = valid
            change(&object)
            return String(decoding: try! JSONSerialization.data(withJSONObject: object), as: UTF8.self)
        }
        #expect(RedisWriteJournal.decode(entry { _ in }) != nil)
        for hostile in [
            "", "not json", "[]", "{}",
            entry { $0["id"] = "nope" }, entry { $0["conversation"] = 7 }, entry { $0["user"] = "" },
            entry { $0["role"] = "root" }, entry { $0["content"] = nil }, entry { $0["at"] = -1 },
            entry { $0["at"] = 1e300 }, entry { $0["at"] = 1.5 }, entry { $0["at"] = true }, entry { $0["at"] = "now" },
            entry { $0["prompt_tokens"] = -3 }, entry { $0["completion_tokens"] = 1e20 }, entry { $0["completion_tokens"] = false },
        ] {
            #expect(RedisWriteJournal.decode(hostile) == nil, "\(hostile)")
        }
    }
}
