import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// An upstream that ignores `max_tokens` (or sends one "token" of hundreds of KiB) cannot make
/// the gateway hold more than the answer it asked for: every front door cuts it at `max_tokens`
/// deltas, and at 64 bytes a token (at least 64 KiB), and ends the answer with `length`.
@Suite struct UpstreamOverrunProcessTests {
    @Test(.timeLimit(.minutes(15)))
    func anUpstreamThatIgnoresMaxTokensIsCutAtMaxTokensAndAtTheByteBound() async throws {
        let upstream = try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            let last = messages.last?["content"] as? String ?? ""
            var steps: [FakeUpstream.Step] = [.write(FakeUpstream.head())]
            if last.contains("huge") {
                // One delta of 256 KiB: past the byte bound of a 10-token answer on its own.
                steps.append(.write(FakeUpstream.delta(String(repeating: "x", count: 256 * 1024))))
            } else {
                // 300 deltas, whatever max_tokens said, in a few TCP writes.
                for _ in 0..<3 { steps.append(.write(String(repeating: FakeUpstream.delta("t "), count: 100))) }
            }
            steps.append(.write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)))
            steps.append(.write("data: [DONE]\n\n"))
            steps.append(.close)
            return steps
        }
        defer { Task { await upstream.stop() } }
        let environment = [
            "SLUICE_UPSTREAM_KIND": "openai", "SLUICE_UPSTREAM_BASE_URL": "http://127.0.0.1:\(upstream.port)", "SLUICE_UPSTREAM_MODEL": "m",
            "SLUICE_STORAGE_DATABASE_URL": "memory",
        ]
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let process = processes[0]
            let client = try await JSONWebSocketClient.connect(port: process.port, group: MultiThreadedEventLoopGroup.singleton)
            _ = try await client.next()
            // sluice.v1: ten deltas, then length.
            try await client.send(["type": "chat.send", "content": "count", "max_tokens": 10])
            var events: [[String: Any]] = []
            let done = try await client.until(type: "generation.done", collecting: &events, timeout: .seconds(20))
            let deltas = events.filter { $0["type"] as? String == "generation.delta" }
            #expect(done["seq"] as? Int == 10 && done["finish_reason"] as? String == "length", "\(done)")
            #expect(deltas.compactMap { $0["text"] as? String }.joined() == String(repeating: "t ", count: 10))
            // One enormous delta: dropped, the answer ends empty with length.
            try await client.send(["type": "chat.send", "content": "huge", "max_tokens": 10])
            let cut = try await client.until(type: "generation.done", timeout: .seconds(20))
            #expect(cut["seq"] as? Int == 0 && cut["finish_reason"] as? String == "length", "\(cut)")
            await client.close()

            // The OpenAI front door, whole answer and stream.
            let body = #"{"model":"default","max_tokens":10,"messages":[{"role":"user","content":"count"}]}"#
            let (status, answer) = try await process.httpRequest("POST", path: "/v1/chat/completions", body: body)
            #expect(status == 200, "\(answer)")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any])
            let choice = try #require((object["choices"] as? [[String: Any]])?.first)
            #expect((choice["message"] as? [String: Any])?["content"] as? String == String(repeating: "t ", count: 10), "\(answer)")
            #expect(choice["finish_reason"] as? String == "length")
            let streamBody = #"{"model":"default","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"count"}]}"#
            let (streamStatus, stream) = try await process.httpRequest("POST", path: "/v1/chat/completions", body: streamBody)
            #expect(streamStatus == 200)
            #expect(stream.components(separatedBy: #"{"content":"t "}"#).count - 1 == 10, "\(stream.prefix(2000))")
            // The SSE route too.
            let (sseStatus, sse) = try await process.httpRequest("POST", path: "/v1/chat/stream", body: #"{"content":"count","max_tokens":10}"#)
            #expect(sseStatus == 200 && sse.contains(#""seq":10,"#) && !sse.contains(#""seq":11,"#), "\(sse.suffix(500))")
            #expect(try await process.httpGet(path: "/health").status == 200)
        }
    }
}
