import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// Rate limits on the real binary: two instances sharing one Redis, so a user's limit holds
/// whichever instance the requests reach.
@Suite struct RateLimitProcessTests {
    /// `generation.done`, or the `error` that refused the request.
    static func outcome(_ client: JSONWebSocketClient) async throws -> [String: Any] {
        while true {
            let message = try await client.next(timeout: .seconds(10))
            if ["generation.done", "error"].contains(message["type"] as? String) { return message }
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func limitsHoldAcrossInstancesAndStopGenerationsAtTheBudget() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer { redis in
            let environment = [
                "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "2000",
                "SLUICE_SIMULATOR_ANSWER_TOKENS": "300",
                "SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_USER": "5",
                "SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_USER": "200",
                "SLUICE_LIMITS_MESSAGES_PER_SECOND_PER_CONNECTION": "20",
                "SLUICE_LIMITS_CONNECTIONS_PER_SECOND_PER_IP": "20",
            ]
            try await SluiceProcess.withProcesses(count: 2, arguments: ["--redis-url", redis.url], environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
                // 1. Five requests a minute for ann, over both instances together.
                var clients: [JSONWebSocketClient] = []
                for process in processes {
                    let client = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=ann")
                    _ = try await client.next()
                    clients.append(client)
                }
                var accepted = 0
                var refusals: [[String: Any]] = []
                for attempt in 0..<10 {
                    try await clients[attempt % 2].send(["type": "chat.send", "content": "hi \(attempt)", "max_tokens": 3])
                    let outcome = try await Self.outcome(clients[attempt % 2])
                    if outcome["type"] as? String == "generation.done" { accepted += 1 } else { refusals.append(outcome) }
                }
                #expect((5...6).contains(accepted), "accepted \(accepted) of 10 with a limit of 5 a minute")
                #expect(refusals.allSatisfy { $0["code"] as? String == "rate_limited" && ($0["retry_after_ms"] as? Int ?? 0) > 0 }, "\(refusals)")
                // Over HTTP too: 429 with Retry-After.
                let sse = try await SluiceProcess.runCommand(
                    ["-s", "-i", "--max-time", "5", "-X", "POST", "-H", "X-Sluice-User: ann", "-d", #"{"content":"via http","max_tokens":2}"#,
                     "http://127.0.0.1:\(processes[1].port)/v1/chat/stream"],
                    executable: "/usr/bin/curl", timeout: .seconds(10))
                #expect(sse.output.hasPrefix("HTTP/1.1 429"), "\(sse.output)")
                #expect(sse.output.lowercased().contains("retry-after:"), "\(sse.output)")
                #expect(sse.output.contains(#""code":"rate_limited""#), "\(sse.output)")

                // 2. 200 tokens a minute for tia: the second answer stops where the budget ends.
                let tia = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?user=tia")
                _ = try await tia.next()
                try await tia.send(["type": "chat.send", "content": "first", "max_tokens": 150])
                let first = try await Self.outcome(tia)
                #expect(first["finish_reason"] as? String == "length" && first["seq"] as? Int == 150, "\(first)")
                let tiaElsewhere = try await JSONWebSocketClient.connect(port: processes[1].port, group: group, query: "?user=tia")
                _ = try await tiaElsewhere.next()
                try await tiaElsewhere.send(["type": "chat.send", "content": "second", "max_tokens": 150])
                let second = try await Self.outcome(tiaElsewhere)
                let cutAt = second["seq"] as? Int ?? -1
                #expect(second["type"] as? String == "generation.done" && second["finish_reason"] as? String == "length", "\(second)")
                #expect(cutAt > 0 && cutAt < 60, "cut at \(cutAt) tokens, with about 45 of 200 left")
                let usage = second["usage"] as? [String: Any]
                #expect(usage?["completion_tokens"] as? Int == cutAt)
                let cutNotice = try await tiaElsewhere.next()
                #expect(cutNotice["type"] as? String == "error" && cutNotice["code"] as? String == "rate_limited", "\(cutNotice)")
                #expect(cutNotice["generation_id"] as? String == second["generation_id"] as? String)
                // Nothing left: refused before anything is generated.
                try await tia.send(["type": "chat.send", "content": "third", "max_tokens": 150])
                let third = try await Self.outcome(tia)
                #expect(third["type"] as? String == "error" && third["code"] as? String == "rate_limited", "\(third)")

                // 3. Another user is untouched.
                let bob = try await JSONWebSocketClient.connect(port: processes[1].port, group: group, query: "?user=bob")
                _ = try await bob.next()
                try await bob.send(["type": "chat.send", "content": "me too", "max_tokens": 3])
                #expect(try await Self.outcome(bob)["type"] as? String == "generation.done")

                // 4. A flood of tiny messages: dropped with rate_limited, then Close 1008.
                let flooder = try await JSONWebSocketClient.connect(port: processes[1].port, group: group, query: "?user=flo")
                _ = try await flooder.next()
                // One write, so the frames arrive together whatever the machine's speed (no refill between them).
                var burst: [UInt8] = []
                for index in 0..<1_000 { burst += TestFrames.text(#"{"type":"ping","id":"\#(index)"}"#) }
                try await flooder.raw.send(burst)
                var sawRateLimited = false
                var closeCode: UInt16?
                do {
                    while true {
                        let message = try await flooder.next(timeout: .seconds(10))
                        if message["type"] as? String == "error", message["code"] as? String == "rate_limited" { sawRateLimited = true }
                    }
                } catch let closed as JSONWebSocketClient.Closed {
                    closeCode = closed.code
                }
                #expect(sawRateLimited && closeCode == 1008)
                // Others on the same instance kept going.
                try await bob.send(["type": "ping", "id": "still here"])
                #expect(try await bob.until(type: "pong")["id"] as? String == "still here")

                // 5. New connections per second from one address: a burst past 20 gets 429.
                // 80 at once: even if handling them takes a second, at most 20 + 20 fit.
                let port0 = processes[0].port
                let answers = try await withThrowingTaskGroup(of: RawHTTPResponse.self) { tasks in
                    for _ in 0..<80 {
                        tasks.addTask {
                            let raw = try await RawClient.connect(port: port0, group: group)
                            defer { Task { await raw.close() } }
                            return try await raw.handshake(path: "/v1/ws?user=burst", extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1")]).response
                        }
                    }
                    var answers: [RawHTTPResponse] = []
                    for try await answer in tasks { answers.append(answer) }
                    return answers
                }
                let statuses = answers.map(\.status)
                for response in answers where response.status == 429 {
                    #expect(response.headers.contains { $0.name.lowercased() == "retry-after" })
                }
                #expect(statuses.contains(429) && statuses.contains(101), "\(statuses)")
                // 6. Rejections are counted by scope and limit at /metrics.
                let samples = MetricsProcessTests.parse(try await processes[1].adminGet(path: "/metrics").body)
                #expect((samples[#"sluice_rate_limited_total{scope="connection",limit="messages"}"#] ?? 0) > 0, "\(samples.keys.filter { $0.contains("rate") })")
                #expect((samples[#"sluice_rate_limited_total{scope="user",limit="requests"}"#] ?? 0) >= 1)
                let first0 = MetricsProcessTests.parse(try await processes[0].adminGet(path: "/metrics").body)
                #expect((first0[#"sluice_rate_limited_total{scope="ip",limit="connections"}"#] ?? 0) >= 1)
                for client in clients + [tia, tiaElsewhere, bob] { await client.close() }
            }
        }
    }
}
