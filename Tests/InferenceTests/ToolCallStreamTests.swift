import Foundation
import NIOCore
import NIOPosix
import SluiceProtocol
import SluiceTestSupport
import Testing

@testable import Inference

/// OpenAI tool calling on the wire: `tools` and tool turns in the request, `delta.tool_calls`
/// pieces in the stream (as vLLM and llama.cpp send them: id and name first, arguments after).
@Suite struct ToolCallStreamTests {
    static func toolDelta(index: Int, id: String? = nil, name: String? = nil, arguments: String) -> String {
        var call: [String: Any] = ["index": index, "function": ["arguments": arguments]]
        if let id { call["id"] = id; call["type"] = "function" }
        if let name { call["function"] = ["name": name, "arguments": arguments] }
        let chunk: [String: Any] = ["choices": [["index": 0, "delta": ["tool_calls": [call]], "finish_reason": NSNull()]]]
        let data = try! JSONSerialization.data(withJSONObject: chunk)
        return FakeUpstream.event(String(decoding: data, as: UTF8.self))
    }

    @Test func toolCallPiecesAreAssembledAndDeliveredBeforeTheEnd() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [
                .write(FakeUpstream.head()),
                .write(Self.toolDelta(index: 0, id: "call_a", name: "calculator", arguments: "")),
                .write(Self.toolDelta(index: 1, id: "call_b", name: "current_time", arguments: "{\"time")),
                .write(Self.toolDelta(index: 0, arguments: "{\"expression\":")),
                .write(Self.toolDelta(index: 0, arguments: "\"6*7\"}")),
                .write(Self.toolDelta(index: 1, arguments: "zone\":\"UTC\"}")),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)),
                .write(FakeUpstream.event("[DONE]")),
                .close,
            ]
        }
        defer { Task { await upstream.stop() } }
        let engine = try OpenAICompatibleEngineTests.engine(port: upstream.port)
        var request = GenerationRequest(messages: [ChatMessage(role: .user, content: "what is 6*7, and the time?")], maxTokens: 64)
        request.tools = [
            ToolDefinition(name: "calculator", description: "math", parameters: #"{"type":"object","properties":{"expression":{"type":"string"}}}"#),
            ToolDefinition(name: "current_time", description: "clock", parameters: #"{"type":"object"}"#),
        ]
        let completion = try await engine.complete(request, on: MultiThreadedEventLoopGroup.singleton.next())
        #expect(completion.toolCalls == [
            ToolCall(id: "call_a", name: "calculator", arguments: #"{"expression":"6*7"}"#),
            ToolCall(id: "call_b", name: "current_time", arguments: #"{"timezone":"UTC"}"#),
        ])
        #expect(completion.text.isEmpty)
        // The request offered the tools in OpenAI's shape.
        let body = try #require(upstream.requests.first?.json)
        let tools = try #require(body["tools"] as? [[String: Any]])
        #expect(tools.count == 2)
        #expect(tools[0]["type"] as? String == "function")
        let function = try #require(tools[0]["function"] as? [String: Any])
        #expect(function["name"] as? String == "calculator")
        #expect((function["parameters"] as? [String: Any])?["type"] as? String == "object")
    }

    @Test func aToolTurnIsSentBackWithTheCallsAndTheResults() throws {
        var request = GenerationRequest(messages: [ChatMessage(role: .user, content: "6*7?")], maxTokens: 16)
        request.messages.append(ChatMessage(role: .assistant, content: "", toolCalls: [ToolCall(id: "call_a", name: "calculator", arguments: #"{"expression":"6*7"}"#)]))
        request.messages.append(ChatMessage(role: .tool, content: "42", toolCallID: "call_a"))
        let body = OpenAICompatibleEngine.requestBody(request, model: "m")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any])
        let messages = try #require(object["messages"] as? [[String: Any]])
        #expect(messages.count == 3)
        let calls = try #require(messages[1]["tool_calls"] as? [[String: Any]])
        #expect(calls.first?["id"] as? String == "call_a")
        #expect((calls.first?["function"] as? [String: Any])?["arguments"] as? String == #"{"expression":"6*7"}"#)
        #expect(messages[2]["role"] as? String == "tool")
        #expect(messages[2]["tool_call_id"] as? String == "call_a")
        #expect(messages[2]["content"] as? String == "42")
        #expect(object["tools"] == nil)
    }

    @Test func toolChoiceIsSentAsOpenAIWritesIt() throws {
        var request = GenerationRequest(messages: [ChatMessage(role: .user, content: "?")], maxTokens: 16)
        request.tools = [ToolDefinition(name: "get_weather", description: "", parameters: #"{"type":"object"}"#)]
        func choice(_ value: ToolChoice?) throws -> Any? {
            request.toolChoice = value
            let body = OpenAICompatibleEngine.requestBody(request, model: "m")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any])
            return object["tool_choice"]
        }
        #expect(try choice(nil) == nil)
        #expect(try choice(ToolChoice.none) as? String == "none")
        #expect(try choice(.auto) as? String == "auto")
        #expect(try choice(.required) as? String == "required")
        let function = try #require(try choice(.function(#"we"ird"#)) as? [String: Any])
        #expect(function["type"] as? String == "function")
        #expect((function["function"] as? [String: Any])?["name"] as? String == #"we"ird"#)
    }

    @Test func tooManyToolCallsEndTheGenerationWithAnError() {
        var decoder = OpenAIStreamDecoder()
        var failure: InferenceError?
        for index in 0...OpenAIStreamDecoder.maximumToolCalls {
            let text = Self.toolDelta(index: index, id: "c\(index)", name: "f", arguments: "{}")
            let data = text.dropFirst("data: ".count).trimmingCharacters(in: .whitespacesAndNewlines)
            let output = decoder.decode(SSEEvent(data: data))
            if case .fail(let error)? = output.end { failure = error }
        }
        #expect(failure?.message.contains("more than") == true)
    }
}
