import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// Token quotas on the real binary with PostgreSQL: set with `sluice quota set`, enforced before
/// and during generations, and reset at `reset_at`.
@Suite struct QuotaProcessTests {
    static func outcome(_ client: JSONWebSocketClient) async throws -> [String: Any] {
        while true {
            let message = try await client.next(timeout: .seconds(10))
            if ["generation.done", "error"].contains(message["type"] as? String) { return message }
        }
    }

    static func quota(_ arguments: [String], _ database: String) async throws -> String {
        // In the environment: a password on the command line is refused (ps shows it).
        let result = try await SluiceProcess.runCommand(["quota"] + arguments, environment: ["SLUICE_STORAGE_DATABASE_URL": database])
        #expect(result.status == 0, "\(result.output)")
        return result.output
    }

    /// `used=N` from `sluice quota show`.
    static func used(_ output: String) -> Int? {
        output.split(separator: " ").first { $0.hasPrefix("used=") }.flatMap { Int($0.dropFirst(5)) }
    }

    /// `POST /v1/chat/completions` with OpenAI's request shape, as `ann` (a JWT): the status,
    /// the parsed answer (the usage chunk's object when streamed), and the raw body.
    static func completion(
        _ gateway: SluiceProcess, stream: Bool, maxTokens: Int
    ) async throws -> (status: Int, json: [String: Any], body: String) {
        var request: [String: Any] = [
            "model": "default", "messages": [["role": "system", "content": "Be brief."], ["role": "user", "content": "hi"]],
            "max_tokens": maxTokens,
        ]
        if stream {
            request["stream"] = true
            request["stream_options"] = ["include_usage": true]
        }
        let body = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
        let response = try await gateway.httpRequest(
            "POST", path: "/v1/chat/completions", headers: ["Authorization": "Bearer \(AuthProcessTests.token(sub: "ann"))"], body: body)
        guard stream && response.status == 200 else {
            let json = (try? JSONSerialization.jsonObject(with: Data(response.body.utf8))) as? [String: Any] ?? [:]
            return (response.status, json, response.body)
        }
        // The chunk that carries `usage` (`stream_options.include_usage`), then `[DONE]`.
        let events = response.body.split(separator: "\n").filter { $0.hasPrefix("data: {") }
        let chunks = events.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.dropFirst(6).utf8))) as? [String: Any] }
        #expect(response.body.hasSuffix("data: [DONE]\n\n"), "\(response.body)")
        return (response.status, chunks.last { $0["usage"] is [String: Any] } ?? [:], response.body)
    }

    static func totalTokens(_ answer: [String: Any]) -> Int? {
        (answer["usage"] as? [String: Any])?["total_tokens"] as? Int
    }

    /// The OpenAI-compatible door stores no conversation, yet what it spends counts against the
    /// quota like a chat: each request's usage reaches `tokens_used` (once), and while it is on
    /// its way it stays reserved, so back-to-back requests cannot outrun the write.
    @Test(.timeLimit(.minutes(15)))
    func theOpenAIFrontDoorSpendsTheQuotaToo() async throws {
        try await PostgresServerProcess.withServer { postgres in
            _ = try await Self.quota(["set", "ann", "--limit", "100"], postgres.url)
            let environment = [
                "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "0",
                "SLUICE_SIMULATOR_ANSWER_TOKENS": "300", "SLUICE_STORAGE_DATABASE_URL": postgres.url,
                "SLUICE_JWT_SECRET": AuthProcessTests.secret,
            ]
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
                let gateway = processes[0]
                try await PersistenceProcessTests.eventually("/ready") { try await gateway.httpGet(path: "/ready").status == 200 }
                // 40 tokens each: the simulator counts 11 prompt tokens (words + 4 a message), then 29 deltas.
                let streamed = try await Self.completion(gateway, stream: true, maxTokens: 29)
                #expect(streamed.status == 200, "\(streamed.body)")
                let first = try #require(Self.totalTokens(streamed.json), "\(streamed.body)")
                let plain = try await Self.completion(gateway, stream: false, maxTokens: 29)
                #expect(plain.status == 200 && plain.json["object"] as? String == "chat.completion", "\(plain.body)")
                let second = try #require(Self.totalTokens(plain.json), "\(plain.body)")
                #expect(first + second < 100, "\(first) + \(second)")

                // What is left is less than asked for: the answer is cut there.
                let cut = try await Self.completion(gateway, stream: false, maxTokens: 29)
                #expect(cut.status == 200, "\(cut.body)")
                let third = try #require(Self.totalTokens(cut.json), "\(cut.body)")
                let choice = (cut.json["choices"] as? [[String: Any]])?.first
                let completion = (cut.json["usage"] as? [String: Any])?["completion_tokens"] as? Int ?? -1
                #expect(choice?["finish_reason"] as? String == "length" && completion > 0 && completion < 29, "\(cut.body)")
                #expect(first + second + third <= 100 + 8, "used \(first) + \(second) + \(third) of 100 (prompt estimates may differ by a few)")

                // Nothing left: refused before it starts, in OpenAI's shape, streamed or not.
                for stream in [true, false] {
                    let refused = try await Self.completion(gateway, stream: stream, maxTokens: 29)
                    let error = refused.json["error"] as? [String: Any]
                    #expect(refused.status == 429, "\(refused.body)")
                    #expect(error?["type"] as? String == "insufficient_quota" && error?["code"] as? String == "quota_exceeded", "\(refused.body)")
                }
                // The storage holds exactly what the answers reported.
                let reported = first + second + third
                try await PersistenceProcessTests.eventually("tokens_used is \(reported)") {
                    Self.used(try await Self.quota(["show", "ann"], postgres.url)) == reported
                }
                // SIGTERM: the queue and the usage recorder drain together, and the process exits.
                #expect(try await gateway.terminate(timeout: .seconds(20)) == .exited(0))
            }
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func aQuotaStopsAGenerationWhereItEndsAndResets() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await PostgresServerProcess.withServer { postgres in
            let set = try await Self.quota(["set", "ann", "--limit", "120"], postgres.url)
            #expect(set.contains("user=ann used=0 limit=120"), "\(set)")
            let environment = [
                "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "0",
                "SLUICE_SIMULATOR_ANSWER_TOKENS": "300", "SLUICE_QUOTAS_RESET_CHECK_INTERVAL": "500ms",
                "SLUICE_STORAGE_DATABASE_URL": postgres.url,
            ]
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
                let port = processes[0].port
                try await PersistenceProcessTests.eventually("/ready") { try await processes[0].httpGet(path: "/ready").status == 200 }
                let ann = try await JSONWebSocketClient.connect(port: port, group: group, query: "?user=ann")
                _ = try await ann.next()
                try await ann.send(["type": "chat.send", "content": "one", "max_tokens": 60])
                let first = try await Self.outcome(ann)
                #expect(first["finish_reason"] as? String == "length" && first["seq"] as? Int == 60, "\(first)")
                let firstUsage = first["usage"] as? [String: Any]
                let firstTotal = (firstUsage?["prompt_tokens"] as? Int ?? 0) + (firstUsage?["completion_tokens"] as? Int ?? 0)

                // The second asks for 100 but only what is left is generated, then quota_exceeded.
                try await ann.send(["type": "chat.send", "content": "two", "max_tokens": 100])
                let second = try await Self.outcome(ann)
                let cutAt = second["seq"] as? Int ?? -1
                #expect(second["type"] as? String == "generation.done" && second["finish_reason"] as? String == "length", "\(second)")
                let secondPrompt = (second["usage"] as? [String: Any])?["prompt_tokens"] as? Int ?? 0
                #expect(cutAt > 0 && cutAt < 100, "\(second)")
                #expect(firstTotal + secondPrompt + cutAt <= 120 + 8, "used \(firstTotal) then \(secondPrompt)+\(cutAt) of 120 (prompt estimates may differ by a few)")
                let notice = try await ann.next()
                #expect(notice["code"] as? String == "quota_exceeded" && notice["generation_id"] as? String == second["generation_id"] as? String, "\(notice)")

                // Nothing left: refused before it starts, with when it comes back.
                try await ann.send(["type": "chat.send", "content": "three", "max_tokens": 10])
                let third = try await Self.outcome(ann)
                #expect(third["type"] as? String == "error" && third["code"] as? String == "quota_exceeded", "\(third)")
                #expect((third["message"] as? String)?.contains("until") == true && (third["retry_after_ms"] as? Int ?? 0) > 0, "\(third)")
                try await PersistenceProcessTests.eventually("the usage is stored") {
                    (Self.used(try await Self.quota(["show", "ann"], postgres.url)) ?? 0) >= firstTotal + secondPrompt + cutAt
                }

                // Someone without a quota is not affected.
                let bob = try await JSONWebSocketClient.connect(port: port, group: group, query: "?user=bob")
                _ = try await bob.next()
                try await bob.send(["type": "chat.send", "content": "hi", "max_tokens": 200])
                #expect(try await Self.outcome(bob)["seq"] as? Int == 200)

                // The reset comes due: usage back to 0, reset_at a period later, ann chats again.
                let soon = ISO8601DateFormatter().string(from: Date().addingTimeInterval(1))
                _ = try await Self.quota(["set", "ann", "--limit", "120", "--reset-at", soon], postgres.url)
                try await PersistenceProcessTests.eventually("the periodic reset ran", timeout: .seconds(20)) {
                    let shown = try await Self.quota(["show", "ann"], postgres.url)
                    return Self.used(shown) == 0 && !shown.contains("reset_at=\(soon)")
                }
                try await ann.send(["type": "chat.send", "content": "four", "max_tokens": 60])
                let fourth = try await Self.outcome(ann)
                #expect(fourth["finish_reason"] as? String == "length" && fourth["seq"] as? Int == 60, "\(fourth)")
                await ann.close()
                await bob.close()
            }
        }
    }
}
