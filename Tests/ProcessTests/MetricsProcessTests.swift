import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// `GET /metrics` of the real `sluice serve` binary after a chat, a cancel, a resume and a
/// continued conversation: every metric is there, with the counts those actions imply.
@Suite struct MetricsProcessTests {
    /// `name{labels}` → value, from the Prometheus text format.
    static func parse(_ text: String) -> [String: Double] {
        var samples: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            samples[String(line[..<space])] = value
        }
        return samples
    }

    @Test(.timeLimit(.minutes(15)))
    func metricsCountChatsCancelsResumesAndTraffic() async throws {
        let environment = [
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "20ms",
            "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "100",
            "SLUICE_SIMULATOR_ANSWER_TOKENS": "60",
        ]
        let group = MultiThreadedEventLoopGroup.singleton
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--log-level", "debug"], environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            try await Self.exercise(processes[0], group: group)
        }
    }

    static func exercise(_ process: SluiceProcess, group: MultiThreadedEventLoopGroup) async throws {
        do {
            let client = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=mia")
            _ = try await client.next()

            // A chat to its end (length: max_tokens), and a second message in its conversation.
            try await client.send(["type": "chat.send", "content": "one", "max_tokens": 5])
            let started = try await client.until(type: "generation.started")
            let conversation = try #require(started["conversation_id"] as? String)
            #expect(try await client.until(type: "generation.done")["finish_reason"] as? String == "length")
            try await client.send(["type": "chat.send", "content": "two", "max_tokens": 5, "conversation_id": conversation])
            #expect(try await client.until(type: "generation.done")["finish_reason"] as? String == "length")

            // A cancel after the first delta.
            try await client.send(["type": "chat.send", "content": "three"])
            let cancelled = try #require(try await client.until(type: "generation.started")["generation_id"] as? String)
            _ = try await client.until(type: "generation.delta")
            try await client.send(["type": "generation.cancel", "generation_id": cancelled])
            #expect(try await client.until(type: "generation.done")["finish_reason"] as? String == "cancelled")

            // A disconnect mid-answer, then a resume on a new connection.
            try await client.send(["type": "chat.send", "content": "four", "max_tokens": 20])
            let resumed = try #require(try await client.until(type: "generation.started")["generation_id"] as? String)
            await client.close()
            let again = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=mia")
            _ = try await again.next()
            try await again.send(["type": "generation.resume", "generation_id": resumed, "after_seq": 0])
            #expect(try await again.until(type: "generation.done", timeout: .seconds(10))["finish_reason"] as? String == "length")

            // Gauges settle once the generations ended and the queue wrote everything.
            var samples: [String: Double] = [:]
            let deadline = ContinuousClock.now + .seconds(10)
            repeat {
                let (status, body) = try await process.adminGet(path: "/metrics")
                #expect(status == 200)
                samples = Self.parse(body)
                if samples["sluice_storage_queue_depth"] == 0 && samples["sluice_active_generations"] == 0 { break }
                try await Task.sleep(for: .milliseconds(50))
            } while ContinuousClock.now < deadline

            let expected: [String: Double] = [
                #"llm_requests_total{model="default",status="length"}"#: 3,
                #"llm_requests_total{model="default",status="cancelled"}"#: 1,
                #"llm_latency_seconds_count{model="default"}"#: 4,
                #"sluice_time_to_first_token_seconds_count{model="default"}"#: 4,
                #"sluice_upstream_requests_total{upstream="default",status="ok"}"#: 4,
                "sluice_cancels_total": 1,
                "sluice_cancel_latency_seconds_count": 1,
                "sluice_resumes_total": 1,
                "sluice_active_generations": 0,
                "active_conversations": 0,
                #"sluice_conversation_cache_lookups_total{result="hit"}"#: 1,
                "sluice_storage_queue_depth": 0,
                "sluice_ws_connections_opened_total": 2,
                "sluice_ws_connections_open": 1,
                #"sluice_ws_connections_closed_total{code="1000"}"#: 1,
            ]
            for (name, value) in expected {
                let shown = samples[name].map { "\($0)" } ?? "missing"
                #expect(samples[name] == value, "\(name): \(shown)")
            }
            // Rates that depend on timing: present and positive.
            for name in [
                #"sluice_inter_token_gap_seconds_count{model="default"}"#, "sluice_storage_write_seconds_count",
                #"sluice_ws_messages_total{direction="in"}"#, #"sluice_ws_messages_total{direction="out"}"#,
                #"sluice_ws_bytes_total{direction="in",stage="wire"}"#, #"sluice_ws_bytes_total{direction="out",stage="wire"}"#,
                #"sluice_ws_bytes_total{direction="out",stage="payload"}"#,
            ] {
                let shown = samples[name].map { "\($0)" } ?? "missing"
                #expect((samples[name] ?? 0) > 0, "\(name): \(shown)")
            }
            // Four chat.sends, a cancel, a resume (and nothing else) came in as messages.
            #expect(samples[#"sluice_ws_messages_total{direction="in"}"#] == 6)

            // Not a terminal, so `log_format: auto` wrote JSON: one object per line.
            let log = try String(contentsOf: process.logFile, encoding: .utf8)
            let lines = log.split(separator: "\n")
            #expect(lines.count >= 3)
            var ended: [[String: Any]] = []
            for line in lines {
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(object?["ts"] is String && object?["level"] is String && object?["msg"] is String, "\(line)")
                if object?["msg"] as? String == "generation ended", let object { ended.append(object) }
            }
            // Each generation's end is one line carrying its ids (at debug level).
            #expect(ended.count == 4)
            let cancelledLine = ended.first { $0["sluice.generation"] as? String == cancelled }
            #expect(cancelledLine?["sluice.finish_reason"] as? String == "cancelled")
            #expect((cancelledLine?["sluice.session"] as? String)?.hasPrefix("sess_") == true)
            #expect(ended.allSatisfy { UUID(uuidString: $0["sluice.conversation"] as? String ?? "") != nil })
        }
    }
}
