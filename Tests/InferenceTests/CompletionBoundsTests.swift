import Foundation
import Inference
import NIOPosix
import SluiceTestSupport
import Testing

/// `complete` (jobs' model calls) keeps at most what it asked for, whatever the upstream sends.
@Suite struct CompletionBoundsTests {
    @Test func anAnswerPastMaxTokensOrPastTheByteBoundIsCutAndTheUpstreamClosed() async throws {
        let upstream = try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            let huge = (messages.last?["content"] as? String) == "huge"
            return [
                .write(FakeUpstream.head()),
                .write(huge ? FakeUpstream.delta(String(repeating: "y", count: 200 * 1024)) : String(repeating: FakeUpstream.delta("a"), count: 500)),
                .hang,
            ]
        }
        defer { Task { await upstream.stop() } }
        let engine = try OpenAICompatibleEngineTests.engine(port: upstream.port)
        let request = GenerationRequest(messages: [ChatMessage(role: .user, content: "more")], maxTokens: 20)
        // The upstream never ends its stream: only the cut can finish this.
        let completion = try await engine.complete(request, on: MultiThreadedEventLoopGroup.singleton.next())
        #expect(completion.text == String(repeating: "a", count: 20) && completion.finishReason == .length)
        let huge = GenerationRequest(messages: [ChatMessage(role: .user, content: "huge")], maxTokens: 20)
        let cut = try await engine.complete(huge, on: MultiThreadedEventLoopGroup.singleton.next())
        #expect(cut.text.isEmpty && cut.finishReason == .length)
        #expect(GenerationRequest.maxAnswerBytes(forTokens: 20) == 64 * 1024)
        #expect(GenerationRequest.maxAnswerBytes(forTokens: 10_000) == 640_000)
        #expect(GenerationRequest.maxAnswerBytes(forTokens: Int.max) == Int.max)
    }
}
