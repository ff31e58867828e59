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
}
