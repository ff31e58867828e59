import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// The real `sluice serve` with `--otlp-endpoint`, in front of a real HTTP upstream, exporting to
/// `scripts/otlp-collector.py`, which decodes every request with the official OTLP protobuf
/// definitions (so a field the specification does not have fails the test). A client's
/// `traceparent` is continued, the upstream request carries the generation span's context, and
/// the span holds the upstream timings, the usage and the outcome.
@Suite struct TracingProcessTests {
    static func spans(_ path: String) -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    @Test(.timeLimit(.minutes(15)))
    func generationSpansReachACollectorAndContinueTheClientsTrace() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-otlp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let spansPath = directory.appendingPathComponent("spans.jsonl").path
        let script = NginxDeploymentTests.repository.appendingPathComponent("scripts/otlp-collector.py").path
        let logPath = directory.appendingPathComponent("collector.log").path
        var collector = SpawnedChild(pid: try ChildSpawn.spawn(
            "/usr/bin/env",
            arguments: ["/usr/bin/env", "python3", script, "--port", "0", "--out", spansPath, "--max-seconds", "120"],
            output: logPath, newProcessGroup: true))
        defer {
            _ = kill(-collector.pid, SIGKILL)
            collector.reap()
        }
        // It binds port 0 and prints the port it got: "otlp-collector: listening on 127.0.0.1:<port>".
        var collectorPort = 0
        try await PersistenceProcessTests.eventually("the collector listens", timeout: .seconds(30)) {
            guard collector.isRunning() else {
                throw SluiceProcessError(description: "otlp-collector.py exited (is opentelemetry-proto installed?): "
                    + ((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""))
            }
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            guard let match = log.firstMatch(of: /listening on [0-9.]+:(\d+)/), let port = Int(match.1) else { return false }
            collectorPort = port
            return true
        }

        // "fail" gets a 500 before any token; anything else a two-delta answer.
        let upstream = try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            if (messages.last?["content"] as? String)?.contains("fail") == true {
                return [.write("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), .close]
            }
            return [
                .write(FakeUpstream.head()), .write(FakeUpstream.delta("hello ")), .write(FakeUpstream.delta("there")),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#)),
                .write("data: [DONE]\n\n"), .close,
            ]
        }
        defer { Task { await upstream.stop() } }

        let arguments = [
            "--upstream", "http://127.0.0.1:\(upstream.port)", "--model", "echo-model",
            "--otlp-endpoint", "http://127.0.0.1:\(collectorPort)", "--instance-id", "gw-traced",
        ]
        let environment = ["SLUICE_TRACING_HEADERS": "X-Collector-Key=secret"]
        try await SluiceProcess.withProcesses(count: 1, arguments: arguments, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let group = MultiThreadedEventLoopGroup.singleton
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
            let clientSpanID = "00f067aa0ba902b7"
            let traced = try await JSONWebSocketClient.connect(
                port: processes[0].port, group: group, headers: [("traceparent", "00-\(traceID)-\(clientSpanID)-01")])
            _ = try await traced.next()
            try await traced.send(["type": "chat.send", "content": "hi"])
            let started = try await traced.until(type: "generation.started")
            let generationID = try #require(started["generation_id"] as? String)
            #expect(try await traced.until(type: "generation.done")["finish_reason"] as? String == "stop")

            let plain = try await JSONWebSocketClient.connect(port: processes[0].port, group: group)
            _ = try await plain.next()
            try await plain.send(["type": "chat.send", "content": "please fail"])
            #expect(try await plain.until(type: "error")["code"] as? String == "upstream_error")

            try await PersistenceProcessTests.eventually("both spans exported", timeout: .seconds(30)) {
                Self.spans(spansPath).count >= 2
            }
            let spans = Self.spans(spansPath)
            #expect(spans.count == 2)
            let answered = try #require(spans.first { ($0["attributes"] as? [String: Any])?["sluice.generation.id"] as? String == generationID })
            let failed = try #require(spans.first { $0["status"].flatMap { ($0 as? [String: Any])?["code"] as? Int } == 2 })

            // The client's trace continues: same trace, the client's span as parent.
            #expect(answered["trace_id"] as? String == traceID)
            #expect(answered["parent_span_id"] as? String == clientSpanID)
            #expect(answered["name"] as? String == "chat echo-model")
            #expect(answered["kind"] as? Int == 3)  // SPAN_KIND_CLIENT
            let attributes = try #require(answered["attributes"] as? [String: Any])
            #expect(attributes["gen_ai.operation.name"] as? String == "chat")
            #expect(attributes["gen_ai.request.model"] as? String == "echo-model")
            #expect(attributes["gen_ai.response.finish_reasons"] as? [String] == ["stop"])
            #expect(attributes["gen_ai.usage.input_tokens"] as? Int == 7)
            #expect(attributes["gen_ai.usage.output_tokens"] as? Int == 2)
            #expect(attributes["sluice.upstream"] as? String == "default")
            #expect(attributes["sluice.deltas"] as? Int == 2)
            #expect(attributes["sluice.time_to_first_token_ms"] as? Double != nil)
            #expect(attributes["sluice.upstream.accept_ms"] as? Double != nil)
            #expect(answered["events"] as? [String] == ["upstream.accepted", "first_token"])
            let start = try #require(answered["start"] as? Int)
            let end = try #require(answered["end"] as? Int)
            #expect(end > start)
            let resource = try #require(answered["resource"] as? [String: Any])
            #expect(resource["service.name"] as? String == "sluice")
            #expect(resource["service.instance.id"] as? String == "gw-traced")
            #expect((answered["headers"] as? [String: Any])?["x-collector-key"] as? String == "secret")

            // The upstream was told which span called it.
            let spanID = try #require(answered["span_id"] as? String)
            let first = try #require(upstream.requests.first)
            #expect(first.headers.first(name: "traceparent") == "00-\(traceID)-\(spanID)-01")

            // A generation refused before its first token: an error span in a new trace.
            #expect(failed["trace_id"] as? String != traceID)
            #expect(failed["parent_span_id"] as? String == "")
            #expect((failed["attributes"] as? [String: Any])?["error.type"] as? String == "upstream_error")
            #expect(upstream.requests.count == 2)
        }
    }
}
