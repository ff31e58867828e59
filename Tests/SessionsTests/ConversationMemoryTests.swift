import Inference
@testable import Sessions
import Testing

@Suite struct ConversationMemoryTests {
    @Test func forgetsTheLeastRecentlyUsed() {
        let memory = ConversationMemory(maxConversations: 3)
        for id in ["a", "b", "c"] { memory.create(id: id, owner: "u") }
        _ = memory.context(of: "a")  // a is now newer than b and c
        memory.create(id: "d", owner: "u")
        #expect(!memory.exists("b"))
        #expect(memory.exists("a") && memory.exists("c") && memory.exists("d"))
        _ = memory.context(of: "c")
        memory.create(id: "e", owner: "u")
        #expect(!memory.exists("a"))
        #expect(memory.exists("c") && memory.exists("d") && memory.exists("e"))
    }

    @Test func useQueueStaysBoundedUnderManyUses() {
        let memory = ConversationMemory(maxConversations: 100)
        for index in 0..<100 { memory.create(id: "c\(index)", owner: "u") }
        for round in 0..<50_000 { _ = memory.context(of: "c\(round % 7)") }
        #expect(memory.queuedUses <= 2 * 100 + 1024 + 1)
        // The conversations used over and over survive a wave of new ones; the others go.
        for index in 0..<93 { memory.create(id: "new\(index)", owner: "u") }
        #expect((0..<7).allSatisfy { memory.exists("c\($0)") })
        #expect(!(7..<100).contains { memory.exists("c\($0)") })
    }

    @Test func keepsTheNewestMessagesWithinTheBudget() {
        let memory = ConversationMemory(maxConversations: 10, maxContextCharacters: 10)
        memory.create(id: "x", owner: "u")
        memory.append(ChatMessage(role: .user, content: "12345"), to: "x")
        memory.append(ChatMessage(role: .assistant, content: "67890"), to: "x")
        memory.append(ChatMessage(role: .user, content: "abc"), to: "x")
        #expect(memory.context(of: "x")?.messages.map(\.content) == ["67890", "abc"])
        #expect(memory.context(of: "unknown") == nil)
    }
}
