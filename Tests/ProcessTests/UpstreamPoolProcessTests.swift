import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// A pool of two replicas configured like an operator would (`upstreams:` with a shared
/// `pool`), the first refusing connections: clients never see it, its circuit opens, and
/// `/metrics` shows both.
@Suite struct UpstreamPoolProcessTests {
    @Test(.timeLimit(.minutes(15)))
    func aDeadReplicaIsInvisibleToClientsAndItsCircuitOpens() async throws {
        let good = try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            return [
                .write(FakeUpstream.head()), .write(FakeUpstream.delta("re: \(messages.last?["content"] as? String ?? "")")),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)), .write("data: [DONE]\n\n"), .close,
            ]
        }
        defer { Task { await good.stop() } }
        let deadPort = try SluiceProcess.deadPort()
        defer { withExtendedLifetime(deadPort) {} }
        let dead = deadPort.port
        let upstreams = """
            [{name: a, pool: chat, kind: openai, base_url: "http://127.0.0.1:\(dead)", model: small-model},
             {name: b, pool: chat, kind: openai, base_url: "http://127.0.0.1:\(good.port)", model: small-model, max_concurrency: 8}]
            """
        let environment = ["SLUICE_UPSTREAMS": upstreams, "SLUICE_UPSTREAM_CIRCUIT_FAILURE_THRESHOLD": "2"]
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let client = try await JSONWebSocketClient.connect(port: processes[0].port, group: MultiThreadedEventLoopGroup.singleton)
            _ = try await client.next()
            for turn in 0..<4 {
                try await client.send(["type": "chat.send", "content": "turn \(turn)", "model": "chat"])
                var events: [[String: Any]] = []
                let done = try await client.until(type: "generation.done", collecting: &events, timeout: .seconds(10))
                #expect(done["finish_reason"] as? String == "stop", "\(done)")
                #expect(!events.contains { $0["type"] as? String == "error" }, "\(events)")
                let started = events.first { $0["type"] as? String == "generation.started" }
                #expect(started?["model"] as? String == "small-model")
                #expect(events.compactMap { $0["text"] as? String }.joined() == "re: turn \(turn)")
            }
            #expect(good.requests.count == 4)
            let samples = MetricsProcessTests.parse(try await processes[0].adminGet(path: "/metrics").body)
            #expect(samples[#"sluice_upstream_circuit_state{pool="chat",replica="a"}"#] == 2, "\(samples.keys.filter { $0.contains("upstream") })")
            #expect(samples[#"sluice_upstream_circuit_state{pool="chat",replica="b"}"#] == 0)
            #expect(samples[#"sluice_upstream_replica_requests_total{pool="chat",replica="a",status="upstream_unavailable"}"#] == 2)
            #expect(samples[#"sluice_upstream_replica_requests_total{pool="chat",replica="b",status="ok"}"#] == 4)
            #expect(samples[#"sluice_upstream_outstanding{pool="chat",replica="b"}"#] == 0)
            #expect(samples[#"llm_requests_total{model="chat",status="stop"}"#] == 4)
            await client.close()
        }
    }
}
