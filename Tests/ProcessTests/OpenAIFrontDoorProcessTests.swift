import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// The official `openai` Python package (PyPI) against the real binary's
/// `/v1/chat/completions` and `/v1/models`, with authentication on and a real HTTP upstream.
@Suite struct OpenAIFrontDoorProcessTests {
    @Test(.timeLimit(.minutes(15)))
    func theOpenAIPythonPackageStreamsAChatThroughTheGateway() async throws {
        let upstream = try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            let last = messages.last?["content"] as? String ?? ""
            return [
                .write(FakeUpstream.head()), .write(FakeUpstream.delta("re: ")), .write(FakeUpstream.delta(last)),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#)),
                .write("data: [DONE]\n\n"), .close,
            ]
        }
        defer { Task { await upstream.stop() } }
        let environment = [
            "SLUICE_JWT_SECRET": AuthProcessTests.secret,
            "SLUICE_UPSTREAMS": #"[{name: echo, kind: openai, base_url: "http://127.0.0.1:\#(upstream.port)", model: echo-model}, {name: demo, kind: sim}]"#,
        ]
        let arguments: [String] = []
        try await SluiceProcess.withProcesses(count: 1, arguments: arguments, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let script = NginxDeploymentTests.repository.appendingPathComponent("scripts/openai-sdk-check.py").path
            let run = try await SluiceProcess.runCommand(
                [script, "--base-url", "http://127.0.0.1:\(processes[0].port)/v1", "--api-key", AuthProcessTests.token(sub: "sdk-user"),
                 "--model", "echo"],
                executable: "/usr/bin/env", timeout: .seconds(60))
            let runOutput = run.output
            #expect(run.status == 0, "\(runOutput)")
            let line = try #require(runOutput.split(separator: "\n").last { $0.hasPrefix("{") }, "\(runOutput)")
            let result = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(result["models"] as? [String] == ["auto", "demo", "echo"])
            let stream = try #require(result["stream"] as? [String: Any])
            #expect(stream["text"] as? String == "re: stream please" && stream["chunks"] as? Int == 2, "\(stream)")
            #expect(stream["finish_reason"] as? String == "stop" && stream["ids"] as? Int == 1)
            #expect((stream["usage"] as? [String: Any])?["completion_tokens"] as? Int == 2)
            let plain = try #require(result["plain"] as? [String: Any])
            #expect(plain["text"] as? String == "re: no stream" && plain["role"] as? String == "assistant", "\(plain)")
            #expect(plain["object"] as? String == "chat.completion" && plain["finish_reason"] as? String == "stop")
            #expect((plain["usage"] as? [String: Any])?["total_tokens"] as? Int == 11)
            #expect((result["bad_key"] as? [String: Any])?["status"] as? Int == 401, "\(String(describing: result["bad_key"]))")
            #expect((result["unknown_model"] as? [String: Any])?["code"] as? String == "model_not_found")
            // The upstream got the whole context, system message included, and max_tokens.
            let first = try #require(upstream.requests.first?.json)
            let sent = (first["messages"] as? [[String: Any]])?.map { "\($0["role"] as? String ?? ""):\($0["content"] as? String ?? "")" }
            #expect(sent == ["system:Be brief.", "user:stream please"])
            #expect(first["max_tokens"] as? Int == 50)
        }
    }

    /// The client's own tools pass through both ways, as OpenAI's API does it: offered upstream
    /// with the client's `tool_choice`; the model's call comes back as streamed `tool_calls`
    /// deltas and as a whole message (`finish_reason: tool_calls`); the client's next request
    /// carries the assistant's call and the tool's result, and the upstream gets both.
    @Test(.timeLimit(.minutes(15)))
    func theClientsToolsPassThroughBothWays() async throws {
        let upstream = try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            if let result = messages.last(where: { $0["role"] as? String == "tool" })?["content"] as? String {
                return [.write(FakeUpstream.head()), .write(FakeUpstream.delta("It is ")), .write(FakeUpstream.delta(result)),
                        .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)), .write("data: [DONE]\n\n"), .close]
            }
            return [
                .write(FakeUpstream.head()),
                .write(ToolCallingProcessTests.toolCall(0, id: "call_w", name: "get_weather", arguments: #"{"city":"#)),
                .write(ToolCallingProcessTests.toolCall(0, id: "call_w", name: "", arguments: #""Paris"}"#)),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)),
                .write("data: [DONE]\n\n"), .close,
            ]
        }
        defer { Task { await upstream.stop() } }
        let environment = [
            "SLUICE_JWT_SECRET": AuthProcessTests.secret,
            "SLUICE_UPSTREAMS": #"[{name: echo, kind: openai, base_url: "http://127.0.0.1:\#(upstream.port)", model: echo-model}]"#,
        ]
        try await SluiceProcess.withProcesses(count: 1, arguments: [], environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let script = NginxDeploymentTests.repository.appendingPathComponent("scripts/openai-sdk-check.py").path
            let run = try await SluiceProcess.runCommand(
                [script, "--base-url", "http://127.0.0.1:\(processes[0].port)/v1", "--api-key", AuthProcessTests.token(sub: "sdk-user"),
                 "--model", "echo", "--tools"],
                executable: "/usr/bin/env", timeout: .seconds(60))
            let runOutput = run.output
            #expect(run.status == 0, "\(runOutput)")
            let line = try #require(runOutput.split(separator: "\n").last { $0.hasPrefix("{") }, "\(runOutput)")
            let result = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let call: [String: String] = ["id": "call_w", "name": "get_weather", "arguments": #"{"city":"Paris"}"#]
            let streamed = try #require(result["tools_stream"] as? [String: Any], "\(result)")
            #expect(streamed["calls"] as? [[String: String]] == [call], "\(streamed)")
            #expect(streamed["finish_reason"] as? String == "tool_calls")
            let plain = try #require(result["tools_plain"] as? [String: Any], "\(result)")
            #expect(plain["calls"] as? [[String: String]] == [call], "\(plain)")
            #expect(plain["content"] is NSNull && plain["finish_reason"] as? String == "tool_calls", "\(plain)")
            let answer = try #require(result["tools_answer"] as? [String: Any], "\(result)")
            #expect(answer["text"] as? String == "It is sunny, 21 C" && answer["finish_reason"] as? String == "stop", "\(answer)")
            // Upstream: the client's tool and tool_choice as sent; then its call and the result in the context.
            // (The script's earlier checks, without tools, come first.)
            let requests = upstream.requests.compactMap(\.json).filter { $0["tools"] != nil }
            #expect(requests.count == 3, "\(upstream.requests.compactMap(\.json))")
            let first = try #require(requests.first)
            let tools = first["tools"] as? [[String: Any]]
            #expect((tools?.first?["function"] as? [String: Any])?["name"] as? String == "get_weather", "\(first)")
            #expect(first["tool_choice"] as? String == "auto", "\(first)")
            let last = try #require(requests.last?["messages"] as? [[String: Any]])
            #expect(last.map { $0["role"] as? String ?? "" } == ["user", "assistant", "tool"], "\(last)")
            let assistantCalls = last[1]["tool_calls"] as? [[String: Any]]
            #expect(assistantCalls?.first?["id"] as? String == "call_w" && last[2]["tool_call_id"] as? String == "call_w", "\(last)")
        }
    }
}
