import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// Jobs obey the same rate limits and quotas as chat (issue 15): a submission is a request, its
/// token budget is taken from the tokens-per-minute limits and reserved in the quota until the
/// job ends, and what it spent is counted in the submitter's quota when it is archived.
@Suite(.serialized) struct JobLimitsProcessTests {
    static func post(_ gateway: SluiceProcess, user: String, _ body: [String: Any]) async throws -> (status: Int, object: [String: Any], raw: String) {
        let data = try JSONSerialization.data(withJSONObject: body)
        let (status, answer) = try await gateway.httpRequest(
            "POST", path: "/v1/jobs", headers: ["X-Sluice-User": user], body: String(decoding: data, as: UTF8.self))
        let object = (try? JSONSerialization.jsonObject(with: Data(answer.utf8))) as? [String: Any] ?? [:]
        return (status, object, answer)
    }

    /// A report of `sections` sections of up to `maxTokens` tokens: its budget is the plan plus
    /// every section, each with its prompt (ReportJob.tokenBudget).
    static func report(sections: Int, maxTokens: Int) -> [String: Any] {
        ["kind": "report", "input": ["prompt": "Locks and weirs", "sections": sections, "max_tokens": maxTokens]]
    }

    @Test(.timeLimit(.minutes(15)))
    func jobSubmissionsAreRequestsAndTheirTokenBudgetsComeFromTheTokenLimits() async throws {
        try await RedisServerProcess.withServer { redis in
            let environment = [
                "SLUICE_REDIS_URL": redis.url, "SLUICE_STORAGE_DATABASE_URL": "memory",
                "SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_USER": "3", "SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_USER": "3000",
            ]
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let gateway = gateways[0]
                // Bigger than the per-minute limit could ever allow: refused outright, no request spent.
                let huge = try await Self.post(gateway, user: "ivy", Self.report(sections: 12, maxTokens: 4096))
                #expect(huge.status == 400 && huge.object["code"] as? String == "invalid_message", "\(huge.raw)")
                #expect((huge.object["message"] as? String)?.contains("3000 tokens per minute") == true, "\(huge.raw)")
                // About 2,300 tokens: fits once.
                let first = try await Self.post(gateway, user: "ivy", Self.report(sections: 2, maxTokens: 1000))
                #expect(first.status == 202, "\(first.raw)")
                #expect((first.object["usage"] as? [String: Any])?["token_budget"] as? Int ?? 0 > 2000, "\(first.raw)")
                let second = try await Self.post(gateway, user: "ivy", Self.report(sections: 2, maxTokens: 1000))
                #expect(second.status == 429 && second.object["code"] as? String == "rate_limited", "\(second.raw)")
                #expect((second.object["retry_after_ms"] as? Int ?? 0) > 0, "\(second.raw)")
                // A job that calls no model still counts as a request: two more fit, then no more.
                #expect(try await Self.post(gateway, user: "ivy", ["kind": "echo", "input": ["n": 1]]).status == 202)
                #expect(try await Self.post(gateway, user: "ivy", ["kind": "echo", "input": ["n": 2]]).status == 202)
                let fourth = try await Self.post(gateway, user: "ivy", ["kind": "echo", "input": ["n": 3]])
                #expect(fourth.status == 429 && (fourth.object["message"] as? String)?.contains("requests per minute") == true, "\(fourth.raw)")
                // Over WebSocket the same rules give the protocol's error; another user is not affected.
                let client = try await JSONWebSocketClient.connect(port: gateway.port, group: MultiThreadedEventLoopGroup.singleton, query: "?user=ivy")
                _ = try await client.next()
                try await client.send(["type": "job.submit", "kind": "echo", "input": [:] as [String: Any], "request_id": "j1"])
                let refused = try await client.until(type: "error")
                #expect(refused["code"] as? String == "rate_limited" && refused["request_id"] as? String == "j1", "\(refused)")
                await client.close()
                #expect(try await Self.post(gateway, user: "jay", Self.report(sections: 2, maxTokens: 1000)).status == 202)
            }
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func aJobsBudgetIsReservedInTheQuotaAndWhatItSpentIsCountedOnce() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-joblimits-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = "sqlite://" + directory.appendingPathComponent("sluice.db").path
        let set = try await SluiceProcess.runCommand(["quota", "set", "quinn", "--limit", "3000", "--database-url", database])
        #expect(set.status == 0, "\(set.output)")
        try await RedisServerProcess.withServer { redis in
            let environment = [
                "SLUICE_REDIS_URL": redis.url, "SLUICE_STORAGE_DATABASE_URL": database,
                "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "0",
                "SLUICE_SIMULATOR_ANSWER_TOKENS": "5000",
            ]
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let gateway = gateways[0]
                // No worker yet: the job waits, its ~2,300 tokens reserved.
                let first = try await Self.post(gateway, user: "quinn", Self.report(sections: 2, maxTokens: 1000))
                #expect(first.status == 202, "\(first.raw)")
                let id = try #require(first.object["job_id"] as? String)
                let budget = try #require((first.object["usage"] as? [String: Any])?["token_budget"] as? Int)
                let second = try await Self.post(gateway, user: "quinn", Self.report(sections: 2, maxTokens: 1000))
                #expect(second.status == 429 && second.object["code"] as? String == "quota_exceeded", "\(second.raw)")
                #expect((second.object["message"] as? String)?.contains("\(3000 - budget) of the 3000-token quota are left") == true, "\(second.raw)")
                // A chat meanwhile gets only what the job left free.
                let client = try await JSONWebSocketClient.connect(port: gateway.port, group: MultiThreadedEventLoopGroup.singleton, query: "?user=quinn")
                _ = try await client.next()
                try await client.send(["type": "chat.send", "content": "hi", "max_tokens": 2000])
                let done = try await client.until(type: "generation.done", timeout: .seconds(20))
                let answered = done["seq"] as? Int ?? 0
                #expect(done["finish_reason"] as? String == "length" && answered > 0 && answered < 3000 - budget, "\(done)")
                await client.close()

                // A worker runs the job; what it spent reaches the quota once it is archived.
                try await JobsProcessTests.withWorkers(1, environment: environment) { _ in
                    let record = try await JobsProcessTests.waitFor(gateway, id, user: "quinn", timeout: .seconds(60)) {
                        JobsProcessTests.state($0) == "SUCCEEDED"
                    }
                    let spent = try #require((record["usage"] as? [String: Any])?["tokens_used"] as? Int)
                    #expect(spent > 0 && spent <= budget, "\(record)")
                    try await PersistenceProcessTests.eventually("the job's usage is in the quota") {
                        let shown = try await SluiceProcess.runCommand(["quota", "show", "quinn", "--database-url", database])
                        return (QuotaProcessTests.used(shown.output) ?? 0) >= spent + answered
                    }
                    // The reservation ended with the job: with the limit raised to leave room for one
                    // more such job (but not for two), it is accepted.
                    let shown = try await SluiceProcess.runCommand(["quota", "show", "quinn", "--database-url", database])
                    let used = try #require(QuotaProcessTests.used(shown.output))
                    #expect(used <= spent + answered + 16, "counted more than once: \(shown.output)")
                    let raised = used + budget + budget / 2
                    #expect(try await SluiceProcess.runCommand(["quota", "set", "quinn", "--limit", "\(raised)", "--database-url", database]).status == 0)
                    let third = try await Self.post(gateway, user: "quinn", Self.report(sections: 2, maxTokens: 1000))
                    #expect(third.status == 202, "\(third.raw) (used \(used) of \(raised))")
                }
            }
        }
    }
}
