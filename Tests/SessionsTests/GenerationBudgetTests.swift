import Foundation
import HTTPAPI
import Inference
import Logging
import NIOHTTP1
import NIOCore
@testable import Sessions
@testable import SluiceTestSupport
import SluiceProtocol
import Testing
import WSServer

/// Answers against the process-wide memory budget: retained answers are the first bytes given
/// back, an answer the budget cannot hold is not retained, and a running answer that outgrows
/// the budget ends with `overloaded` instead of growing.
@Suite struct GenerationBudgetTests {
    static func finished(_ id: String, bytes: Int) -> FinishedGeneration {
        let info = GenerationInfo(generationID: id, conversationID: "c", requestID: nil, model: "m")
        let end = GenerationEnd(seq: 1, finishReason: .stop, usage: Usage(promptTokens: 1, completionTokens: 1, source: .gateway), error: nil)
        return FinishedGeneration(info: info, text: Array(repeating: 0x61, count: bytes), tokenEnds: [Int32(bytes)], end: end)
    }

    static func register(_ hub: GenerationHub, _ id: String) {
        hub.register(GenerationHub.Entry(
            generationID: id, conversationID: "c", user: "u", ownerSessionID: "s",
            state: .finished(Self.finished(id, bytes: 0))))
    }

    @Test func retainedAnswersAreChargedAndTheOldestGiveWayWhenTheBudgetIsTight() {
        let budget = MemoryBudget(limit: 10_000)
        let hub = GenerationHub(budget: budget)
        for id in ["g1", "g2", "g3"] {
            Self.register(hub, id)
            hub.generationFinished(Self.finished(id, bytes: 2000))
        }
        let each = GenerationHub.retainedOverhead + 2000 + 4
        #expect(budget.used(by: .retainedGeneration) == 3 * each)
        #expect(hub.retainedBytes == 3 * each)
        // A client message needs room: the oldest answers are forgotten first, just enough of them.
        #expect(budget.reserve(10_000 - each, for: .webSocketInbound))
        #expect(hub.lookup("g1") == nil)
        #expect(hub.lookup("g2") == nil)
        #expect(hub.lookup("g3") != nil)
        #expect(budget.used == 10_000 - each + each)
        budget.release(10_000 - each, for: .webSocketInbound)
        // Live traffic is never evicted for retained answers: a new answer that does not fit is not kept.
        #expect(budget.reserve(10_000 - each, for: .webSocketInbound))
        Self.register(hub, "g4")
        hub.generationFinished(Self.finished("g4", bytes: 5000))
        #expect(hub.lookup("g4") == nil)
        #expect(hub.lookup("g3") == nil)  // it went to make room, and still there was not enough
        #expect(budget.used == 10_000 - each)
    }

    @Test func theRunningAnswersChargeIsHandedOverAndTheRestGivenBack() {
        let budget = MemoryBudget(limit: 100_000)
        let hub = GenerationHub(budget: budget)
        // The running generation held 16 KiB (its buffer's capacity, in steps).
        #expect(budget.reserve(16_384, for: .generation))
        Self.register(hub, "g")
        hub.generationFinished(Self.finished("g", bytes: 3000), charged: 16_384)
        #expect(budget.used(by: .generation) == 0)
        #expect(budget.used(by: .retainedGeneration) == GenerationHub.retainedOverhead + 3000 + 4)
        #expect(budget.used == GenerationHub.retainedOverhead + 3000 + 4)
        // Past the retention bound (count 0 here): given back.
        let none = GenerationHub(maxRetained: 0, budget: budget)
        #expect(budget.reserve(1000, for: .generation))
        Self.register(none, "h")
        none.generationFinished(Self.finished("h", bytes: 500), charged: 1000)
        #expect(budget.used(by: .generation) == 0)
        #expect(none.lookup("h") == nil)
    }

    @Test func aRunningAnswerTheBudgetCannotHoldEndsWithOverloaded() async throws {
        try await HeavyTests.exclusively {
            try await ChatSessionTests.Harness.run(
                simulator: { $0.answerTokens = 200_000; $0.tokensPerSecond = 0 },
                chat: { $0.defaultMaxTokens = 200_000 },
                memoryBudget: MemoryBudget(limit: 256 * 1024)
            ) { harness in
                let client = try await harness.connect()
                #expect(try await client.next()["type"] as? String == "session.ready")
                try await client.send(["type": "chat.send", "content": "a very long answer please"])
                var collected: [[String: Any]] = []
                let done = try await client.until("generation.done", &collected)
                #expect(done["finish_reason"] as? String == "error")
                let error = try #require(done["error"] as? [String: Any])
                #expect(error["code"] as? String == "overloaded")
                #expect(collected.count > 1000)  // it streamed until the budget was reached
                // The connection and the session go on: a short answer fits.
                try await client.send(["type": "chat.send", "content": "now a short one", "max_tokens": 5])
                var more: [[String: Any]] = []
                let second = try await client.until("generation.done", &more)
                #expect(second["finish_reason"] as? String == "length")
                #expect(second["error"] == nil)
            }
        }
    }

    @Test func eachRouteDeclaresTheBodyItsDecoderTakes() {
        var configuration = ChatConfiguration(instanceID: "t")
        configuration.maxContentBytes = 10_000
        let application = ChatApplication(
            configuration: configuration, engine: SimulatorEngine(configuration: .init()), conversations: ConversationMemory(),
            logger: Logger(label: "test"))
        let limits = configuration.requestLimits
        func limit(_ method: HTTPMethod, _ uri: String) -> Int? {
            let head = HTTPRequestHead(version: .http1_1, method: method, uri: uri)
            let routes: [any HTTPRouteProvider] = [ChatStreamRoutes(application: application), OpenAIRoutes(application: application)]
            return routes.lazy.compactMap { $0.responder(for: head) }.first?.maxRequestBodyBytes
        }
        #expect(limit(.POST, "/v1/chat/stream") == limits.maxJSONMessageBytes)
        #expect(limit(.POST, "/v1/jobs") == limits.maxJSONMessageBytes)
        #expect(limit(.POST, "/v1/chat/completions") == limits.maxOpenAIBodyBytes)
        #expect(limits.maxOpenAIBodyBytes > limits.maxJSONMessageBytes)  // it carries the context
        #expect(limit(.GET, "/v1/jobs/job_1") == 0)
        #expect(limit(.GET, "/v1/models") == 0)
        #expect(limit(.GET, "/v1/presence?user=a") == 0)
        #expect(limit(.GET, "/v1/conversations") == 0)
    }
}
