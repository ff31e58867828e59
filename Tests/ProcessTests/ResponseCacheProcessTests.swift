import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// The response cache on the real binary with Redis and a real HTTP upstream: a second
/// identical deterministic request is answered from Redis, the upstream never asked.
@Suite struct ResponseCacheProcessTests {
    static func chat(_ client: JSONWebSocketClient, _ content: String, temperature: Double?) async throws -> (text: String, seqs: [Int], done: [String: Any]) {
        var message: [String: Any] = ["type": "chat.send", "content": content, "max_tokens": 20]
        if let temperature { message["temperature"] = temperature }
        try await client.send(message)
        var events: [[String: Any]] = []
        let done = try await client.until(type: "generation.done", collecting: &events, timeout: .seconds(10))
        let deltas = events.filter { $0["type"] as? String == "generation.delta" }
        return (deltas.compactMap { $0["text"] as? String }.joined(), deltas.compactMap { $0["seq"] as? Int }, done)
    }

    /// An upstream that answers "answer to <the last message>" with usage.
    static func echoingUpstream() async throws -> FakeUpstream {
        try await FakeUpstream.start { request in
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            let last = messages.last?["content"] as? String ?? ""
            return [
                .write(FakeUpstream.head()), .write(FakeUpstream.delta("answer ")), .write(FakeUpstream.delta("to ")),
                .write(FakeUpstream.delta(last)),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#)),
                .write("data: [DONE]\n\n"), .close,
            ]
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func aSecondIdenticalDeterministicRequestIsServedFromTheCache() async throws {
        let upstream = try await Self.echoingUpstream()
        defer { Task { await upstream.stop() } }
        try await RedisServerProcess.withServer { redis in
            let arguments = ["--upstream", "http://127.0.0.1:\(upstream.port)", "--model", "m", "--redis-url", redis.url]
            // A lookup slower than the timeout is a miss; a loaded test machine must not turn a hit into one.
            try await SluiceProcess.withProcesses(count: 2, arguments: arguments, environment: ["SLUICE_CACHE_LOOKUP_TIMEOUT": "10s"]) { (processes: [SluiceProcess]) async throws -> Void in
                let group = MultiThreadedEventLoopGroup.singleton
                let first = try await JSONWebSocketClient.connect(port: processes[0].port, group: group)
                _ = try await first.next()
                let fresh = try await Self.chat(first, "the question", temperature: 0)
                #expect(fresh.text == "answer to the question" && fresh.done["cached"] == nil)
                #expect(upstream.requests.count == 1)
                // The same request, on the other instance: from Redis, same chunks, same seqs.
                let second = try await JSONWebSocketClient.connect(port: processes[1].port, group: group)
                _ = try await second.next()
                let again = try await Self.chat(second, "the question", temperature: 0)
                #expect(again.text == fresh.text && again.seqs == fresh.seqs && again.seqs == [1, 2, 3])
                #expect(again.done["cached"] as? Bool == true && again.done["finish_reason"] as? String == "stop")
                #expect((again.done["usage"] as? [String: Any])?["completion_tokens"] as? Int == 3)
                #expect(upstream.requests.count == 1, "the upstream was asked again")
                // Not deterministic (no temperature, or 0.7): always the upstream.
                _ = try await Self.chat(second, "the question", temperature: nil)
                _ = try await Self.chat(second, "the question", temperature: 0.7)
                #expect(upstream.requests.count == 3)
                // A different question is a miss.
                let other = try await Self.chat(first, "another question", temperature: 0)
                #expect(other.text == "answer to another question" && other.done["cached"] == nil)
                #expect(upstream.requests.count == 4)
                let samples = MetricsProcessTests.parse(try await processes[1].adminGet(path: "/metrics").body)
                #expect(samples[#"sluice_response_cache_lookups_total{result="hit"}"#] == 1)
                #expect(samples[#"sluice_response_cache_lookups_total{result="not_cacheable"}"#] == 2)
                await first.close()
                await second.close()
            }
        }
    }

    /// A cached answer may carry what the user's earlier messages told the model: it is replayed
    /// to the same user only, unless the operator declares all users one tenant.
    @Test(.timeLimit(.minutes(15)))
    func anAnswerIsNotReplayedToAnotherUserUnlessTheyShareATenant() async throws {
        let upstream = try await Self.echoingUpstream()
        defer { Task { await upstream.stop() } }
        try await RedisServerProcess.withServer { redis in
            let arguments = ["--upstream", "http://127.0.0.1:\(upstream.port)", "--model", "m", "--redis-url", redis.url]
            let group = MultiThreadedEventLoopGroup.singleton
            try await SluiceProcess.withProcesses(count: 1, arguments: arguments, environment: ["SLUICE_CACHE_LOOKUP_TIMEOUT": "10s"]) { (processes: [SluiceProcess]) async throws -> Void in
                let alice = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?user=alice")
                _ = try await alice.next()
                let bob = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?user=bob")
                _ = try await bob.next()
                let first = try await Self.chat(alice, "the question", temperature: 0)
                #expect(first.done["cached"] == nil && upstream.requests.count == 1)
                let other = try await Self.chat(bob, "the question", temperature: 0)
                #expect(other.done["cached"] == nil, "alice's answer was replayed to bob")
                #expect(upstream.requests.count == 2)
                let again = try await Self.chat(alice, "the question", temperature: 0)
                #expect(again.done["cached"] as? Bool == true && upstream.requests.count == 2)
                await alice.close()
                await bob.close()
            }
            // One tenant: everyone shares (a new process; the cache in Redis stays).
            try await SluiceProcess.withProcesses(
                count: 1, arguments: arguments, environment: ["SLUICE_CACHE_LOOKUP_TIMEOUT": "10s", "SLUICE_CACHE_TENANT": "acme"]
            ) { (processes: [SluiceProcess]) async throws -> Void in
                let carol = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?user=carol")
                _ = try await carol.next()
                let dave = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?user=dave")
                _ = try await dave.next()
                let before = upstream.requests.count
                _ = try await Self.chat(carol, "a shared question", temperature: 0)
                let shared = try await Self.chat(dave, "a shared question", temperature: 0)
                #expect(shared.done["cached"] as? Bool == true)
                #expect(upstream.requests.count == before + 1)
                await carol.close()
                await dave.close()
            }
        }
    }
}
