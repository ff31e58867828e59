import Foundation
import Inference
import NIOCore
import Sessions
import SluiceProtocol
@testable import SluiceTestSupport
import Testing

/// Generations followed from other connections of the same instance: resume after a
/// disconnect, a second tab watching a conversation, cancel from another connection.
@Suite struct FollowTests {
    typealias Harness = ChatSessionTests.Harness
    typealias Client = ChatSessionTests.ChatClient

    /// Text of the deltas in `messages`, checking seqs are contiguous from `after + 1`.
    static func text(of messages: [[String: Any]], after: Int) -> (text: String, lastSeq: Int) {
        let deltas = DeltaText(of: messages, after: after)
        #expect(deltas.gaps.isEmpty, "\(deltas.gaps.joined(separator: "; "))")
        return (deltas.text, deltas.lastSeq)
    }

    static func ready(_ harness: Harness) async throws -> Client {
        let client = try await harness.connect()
        #expect(try await client.next()["type"] as? String == "session.ready")
        return client
    }

    @Test func resumeAfterADisconnectContinuesWithoutGapOrRepeat() async throws {
        try await Harness.run(simulator: { $0.tokensPerSecond = 400; $0.answerTokens = 300 }) { harness in
            let expected = SimulatorEngine.tokens(for: "resume me", seed: 0, count: 300).joined()
            let first = try await Self.ready(harness)
            try await first.send(["type": "chat.send", "content": "resume me"])
            let started = try await first.next()
            let generationID = try #require(started["generation_id"] as? String)
            var seen: [[String: Any]] = []
            while Self.text(of: seen, after: 0).lastSeq < 20 { seen.append(try await first.next()) }
            let (head, lastSeq) = Self.text(of: seen, after: 0)
            await first.raw.close()

            let second = try await Self.ready(harness)
            try await second.send(["type": "generation.resume", "generation_id": generationID, "after_seq": lastSeq])
            let again = try await second.next()
            #expect(again["type"] as? String == "generation.started")
            #expect(again["generation_id"] as? String == generationID)
            #expect(again["conversation_id"] as? String == started["conversation_id"] as? String)
            var rest: [[String: Any]] = []
            let done = try await second.until("generation.done", &rest)
            let (tail, finalSeq) = Self.text(of: rest, after: lastSeq)
            #expect(head + tail == expected)
            #expect(finalSeq == 300 && done["seq"] as? Int == 300 && done["finish_reason"] as? String == "stop")
        }
    }

    @Test func resumingAFinishedGenerationReplaysItAndEnds() async throws {
        try await Harness.run(simulator: { $0.answerTokens = 30 }) { harness in
            let client = try await Self.ready(harness)
            try await client.send(["type": "chat.send", "content": "finished"])
            let generationID = try #require(try await client.next()["generation_id"] as? String)
            var all: [[String: Any]] = []
            _ = try await client.until("generation.done", &all)
            let other = try await Self.ready(harness)
            for afterSeq in [0, 12, 30, 99] {
                try await other.send(["type": "generation.resume", "generation_id": generationID, "after_seq": afterSeq])
                #expect(try await other.next()["type"] as? String == "generation.started")
                var replay: [[String: Any]] = []
                let done = try await other.until("generation.done", &replay)
                let expected = SimulatorEngine.tokens(for: "finished", seed: 0, count: 30).dropFirst(min(afterSeq, 30)).joined()
                #expect(Self.text(of: replay, after: afterSeq).text == expected, "after_seq \(afterSeq)")
                #expect(done["seq"] as? Int == 30)
            }
            try await other.send(["type": "generation.resume", "generation_id": "gen_unknown"])
            let error = try await other.next()
            #expect(error["code"] as? String == "not_found" && error["generation_id"] as? String == "gen_unknown")
        }
    }

    @Test func aSecondTabSeesTheSameAnswersLive() async throws {
        // 40 tokens/s: the third answer must still be running when the third tab subscribes,
        // even on a loaded machine (a finished answer is history and is not replayed).
        try await Harness.run(simulator: { $0.tokensPerSecond = 40; $0.answerTokens = 60 }) { harness in
            let first = try await Self.ready(harness)
            try await first.send(["type": "chat.send", "content": "start a conversation", "max_tokens": 2])
            let conversationID = try #require(try await first.next()["conversation_id"] as? String)
            var ignored: [[String: Any]] = []
            _ = try await first.until("generation.done", &ignored)

            let second = try await Self.ready(harness)
            try await second.send(["type": "conversation.subscribe", "conversation_id": conversationID])
            let subscribed = try await second.next()
            #expect(subscribed["type"] as? String == "conversation.subscribed" && subscribed["conversation_id"] as? String == conversationID)

            try await first.send(["type": "chat.send", "content": "and now?", "conversation_id": conversationID])
            var firstMessages: [[String: Any]] = []
            let firstDone = try await first.until("generation.done", &firstMessages)
            var secondMessages: [[String: Any]] = []
            let secondDone = try await second.until("generation.done", &secondMessages)
            #expect(secondMessages.first?["type"] as? String == "generation.started")
            #expect(secondMessages.first?["generation_id"] as? String == firstDone["generation_id"] as? String)
            #expect(Self.text(of: secondMessages, after: 0).text == Self.text(of: firstMessages, after: 0).text)
            #expect(secondDone["seq"] as? Int == 60 && secondDone["usage"] != nil)

            // A generation already running when a tab subscribes is replayed from its start.
            try await first.send(["type": "chat.send", "content": "third", "conversation_id": conversationID])
            _ = try await first.next()  // started
            let third = try await Self.ready(harness)
            try await third.send(["type": "conversation.subscribe", "conversation_id": conversationID])
            #expect(try await third.next()["type"] as? String == "conversation.subscribed")
            var thirdMessages: [[String: Any]] = []
            _ = try await third.until("generation.done", &thirdMessages)
            #expect(Self.text(of: thirdMessages, after: 0).text == SimulatorEngine.tokens(for: "third", seed: 0, count: 60).joined())

            // The second tab, still subscribed, followed the third answer too.
            var secondThird: [[String: Any]] = []
            _ = try await second.until("generation.done", &secondThird)
            #expect(Self.text(of: secondThird, after: 0).text == SimulatorEngine.tokens(for: "third", seed: 0, count: 60).joined())
            try await second.send(["type": "conversation.unsubscribe", "conversation_id": conversationID])
            #expect(try await second.next()["type"] as? String == "conversation.unsubscribed")
            try await third.send(["type": "conversation.subscribe", "conversation_id": "conv_unknown"])
            let error = try await third.next()
            #expect(error["code"] as? String == "not_found" && error["conversation_id"] as? String == "conv_unknown")
        }
    }

    @Test func cancelFromAnotherConnectionStopsItAndBothGetDone() async throws {
        try await Harness.run(simulator: { $0.tokensPerSecond = 100; $0.answerTokens = 5000 }) { harness in
            let owner = try await Self.ready(harness)
            try await owner.send(["type": "chat.send", "content": "long"])
            let generationID = try #require(try await owner.next()["generation_id"] as? String)
            _ = try await owner.next()  // a delta
            let other = try await Self.ready(harness)
            try await other.send(["type": "generation.cancel", "generation_id": generationID])
            let otherDone = try await other.next()
            #expect(otherDone["type"] as? String == "generation.done" && otherDone["finish_reason"] as? String == "cancelled")
            var ownerMessages: [[String: Any]] = []
            let ownerDone = try await owner.until("generation.done", &ownerMessages)
            #expect(ownerDone["finish_reason"] as? String == "cancelled")
            #expect(ownerDone["seq"] as? Int == otherDone["seq"] as? Int)
            // A second cancel of the ended generation is a no-op.
            try await other.send(["type": "generation.cancel", "generation_id": generationID])
            try await other.send(["type": "ping", "id": "p"])
            #expect(try await other.next()["type"] as? String == "pong")
        }
    }

    @Test func randomDisconnectsAndResumesRebuildTheExactText() async throws {
        // 2 s of generation: time for many reconnects even on a loaded machine.
        try await Harness.run(simulator: { $0.tokensPerSecond = 1000; $0.answerTokens = 2000 }) { harness in
            let expected = SimulatorEngine.tokens(for: "cycles", seed: 0, count: 2000).joined()
            var generator = SystemRandomNumberGenerator()
            var client = try await Self.ready(harness)
            try await client.send(["type": "chat.send", "content": "cycles", "max_tokens": 2000])
            let generationID = try #require(try await client.next()["generation_id"] as? String)
            var text = ""
            var lastSeq = 0
            var cycles = 0
            while true {
                var messages: [[String: Any]] = []
                let stopAfter = Int.random(in: 1...40, using: &generator)
                var done = false
                while messages.count < stopAfter {
                    let message = try await client.next()
                    if message["type"] as? String == "generation.done" { done = true; break }
                    messages.append(message)
                }
                let part = Self.text(of: messages, after: lastSeq)
                text += part.text
                lastSeq = part.lastSeq
                if done { break }
                await client.raw.close()
                cycles += 1
                client = try await Self.ready(harness)
                try await client.send(["type": "generation.resume", "generation_id": generationID, "after_seq": lastSeq])
                #expect(try await client.next()["type"] as? String == "generation.started")
            }
            #expect(text == expected)
            #expect(lastSeq == 2000)
            // The resume path ran several times (how many depends on the machine's speed).
            #expect(cycles >= 5, "\(cycles) reconnects")
        }
    }
}
