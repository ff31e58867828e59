import Foundation
import NIOPosix
import Storage
@testable import SluiceTestSupport
import Testing

/// Tool calling end to end with the real binary: a scripted OpenAI-compatible upstream asks for
/// tools, Sluice runs them (a webhook tool served on loopback, the built-in calculator), tells
/// the client, logs them in `tool_executions`, and continues the generation with the results.
@Suite(.serialized) struct ToolCallingProcessTests {
    static func event(_ object: [String: Any]) -> String {
        let data = try! JSONSerialization.data(withJSONObject: object)
        return FakeUpstream.event(String(decoding: data, as: UTF8.self))
    }

    static func toolCall(_ index: Int, id: String, name: String, arguments: String) -> String {
        Self.event(["choices": [["index": 0, "delta": ["tool_calls": [
            ["index": index, "id": id, "type": "function", "function": ["name": name, "arguments": arguments]],
        ]], "finish_reason": NSNull()]]])
    }

    /// First turn: three calls (two of the slow webhook, one calculator that fails); with the
    /// results in the request: an answer.
    static func script(_ request: FakeUpstream.Request) -> [FakeUpstream.Step] {
        let messages = request.json?["messages"] as? [[String: Any]] ?? []
        if messages.contains(where: { $0["role"] as? String == "tool" }) {
            return [
                .write(FakeUpstream.head()),
                .write(FakeUpstream.delta("The answer ")),
                .write(FakeUpstream.delta("is 42.")),
                .write(Self.event(["choices": [["index": 0, "delta": [:], "finish_reason": "stop"]],
                                   "usage": ["prompt_tokens": 50, "completion_tokens": 2]])),
                .write(FakeUpstream.event("[DONE]")),
                .close,
            ]
        }
        if request.json?["tools"] == nil {
            return [.write(FakeUpstream.head()), .write(FakeUpstream.delta("no tools here")), .write(FakeUpstream.event("[DONE]")), .close]
        }
        return [
            .write(FakeUpstream.head()),
            .write(Self.toolCall(0, id: "call_1", name: "slow_lookup", arguments: #"{"city":"#)),
            .write(Self.toolCall(0, id: "call_1", name: "", arguments: #""Paris"}"#)),
            .write(Self.toolCall(1, id: "call_2", name: "slow_lookup", arguments: #"{"city":"Lyon"}"#)),
            .write(Self.toolCall(2, id: "call_3", name: "calculator", arguments: #"{"expression":"1/0"}"#)),
            .write(Self.event(["choices": [["index": 0, "delta": [:], "finish_reason": "tool_calls"]],
                               "usage": ["prompt_tokens": 30, "completion_tokens": 20]])),
            .write(FakeUpstream.event("[DONE]")),
            .close,
        ]
    }

    @Test(.timeLimit(.minutes(15)))
    func toolCallsOfOneTurnRunConcurrentlyAreShownToTheClientLoggedAndFedBack() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let upstream = try await FakeUpstream.start(script: Self.script)
        // Holds each lookup until both are in flight: both answered "together" proves they overlapped.
        let lookup = try await BarrierHTTPServer.start(parties: 2)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-tools-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = directory.appendingPathComponent("sluice.db").path
        let config = directory.appendingPathComponent("sluice.yaml")
        try """
        tools:
          enabled: [slow_lookup, calculator]
          timeout: 10s
          webhooks:
            - name: slow_lookup
              description: Looks up a city
              parameters: '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
              url: http://127.0.0.1:\(lookup.port)/lookup
        """.write(to: config, atomically: true, encoding: .utf8)
        try await SluiceProcess.withProcesses(
            count: 1,
            arguments: ["--config", config.path, "--upstream", "http://127.0.0.1:\(upstream.port)", "--model", "fake",
                        "--database-url", "sqlite://\(database)"]
        ) { processes in
            let client = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?user=tess")
            _ = try await client.next()
            try await client.send(["type": "chat.send", "content": "Weather in Paris and Lyon, and 1/0?"])
            var messages: [[String: Any]] = []
            let done = try await client.until(type: "generation.done", collecting: &messages, timeout: .seconds(30))
            let types = messages.compactMap { $0["type"] as? String }
            #expect(types.first == "generation.started")
            let calls = messages.filter { $0["type"] as? String == "tool.call" }
            let results = messages.filter { $0["type"] as? String == "tool.result" }
            #expect(calls.compactMap { $0["call_id"] as? String } == ["call_1", "call_2", "call_3"])
            #expect(calls.first?["arguments"] as? String == #"{"city":"Paris"}"#)
            #expect(results.count == 3)
            let byID = Dictionary(uniqueKeysWithValues: results.compactMap { result in (result["call_id"] as? String).map { ($0, result) } })
            for id in ["call_1", "call_2"] {
                #expect(byID[id]?["status"] as? String == "ok")
                #expect((byID[id]?["output"] as? String)?.contains(#""together":true"#) == true, "\(id) ran alone: \(byID[id] ?? [:])")
            }
            // A failing tool is a result with an error, and the generation goes on.
            #expect(byID["call_3"]?["status"] as? String == "error")
            #expect((byID["call_3"]?["output"] as? String)?.contains("division by zero") == true)
            // Events come in order: calls, then results, then the continued answer.
            let lastResult = try #require(types.lastIndex(of: "tool.result"))
            let firstDelta = try #require(types.firstIndex(of: "generation.delta"))
            #expect(try #require(types.lastIndex(of: "tool.call")) < types.firstIndex(of: "tool.result")!)
            #expect(lastResult < firstDelta)
            let text = messages.filter { $0["type"] as? String == "generation.delta" }.compactMap { $0["text"] as? String }.joined()
            #expect(text == "The answer is 42.")
            #expect(done["finish_reason"] as? String == "stop")
            let usage = try #require(done["usage"] as? [String: Any])
            #expect(usage["completion_tokens"] as? Int == 22, "both turns' completion tokens: \(usage)")

            // The second upstream request carried the call turn and the three results.
            #expect(upstream.requests.count == 2)
            let second = try #require(upstream.requests.last?.json)
            let sent = try #require(second["messages"] as? [[String: Any]])
            let assistant = try #require(sent.first { $0["role"] as? String == "assistant" && $0["tool_calls"] != nil })
            #expect((assistant["tool_calls"] as? [[String: Any]])?.count == 3)
            let toolMessages = sent.filter { $0["role"] as? String == "tool" }
            #expect(toolMessages.compactMap { $0["tool_call_id"] as? String } == ["call_1", "call_2", "call_3"])
            #expect(lookup.bodies.sorted() == [#"{"city":"Lyon"}"#, #"{"city":"Paris"}"#])

            // Logged in tool_executions.
            let generationID = try #require(done["generation_id"] as? String)
            let storage = try await SQLiteStorage.open(path: database)
            var logged: [ToolExecutionRecord] = []
            let deadline = ContinuousClock.now + .seconds(10)
            while logged.count < 3 && ContinuousClock.now < deadline {
                logged = try await storage.toolExecutions(generationID: generationID)
                if logged.count < 3 { try await Task.sleep(for: .milliseconds(50)) }
            }
            await storage.shutdown()
            #expect(logged.count == 3)
            #expect(Set(logged.map(\.toolName)) == ["slow_lookup", "calculator"])
            #expect(logged.allSatisfy { $0.userExternalID == "tess" && $0.durationMs >= 0 })
            #expect(logged.first { $0.callID == "call_3" }?.status == "error")
            #expect(logged.first { $0.callID == "call_1" }?.input == #"{"city":"Paris"}"#)

            // A client can turn tools off for a message.
            try await client.send(["type": "chat.send", "content": "plain please", "tools": []])
            var plain: [[String: Any]] = []
            _ = try await client.until(type: "generation.done", collecting: &plain, timeout: .seconds(30))
            #expect(plain.contains { $0["type"] as? String == "tool.call" } == false)
            #expect(upstream.requests.last?.json?["tools"] == nil)
            await client.close()
        }
        await lookup.stop()
        await upstream.stop()
    }
}
