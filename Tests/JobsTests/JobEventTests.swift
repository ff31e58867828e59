import Foundation
@testable import Jobs
import NIOCore
import SluiceProtocol
import Testing

/// The live `job.*` messages (now written by SluiceProtocol's `JobMessageEncoder`) carry every
/// field a client reads, as valid JSON whatever the strings hold.
@Suite struct JobEventTests {
    static let hostile = "q\"b\\s\nl\u{00}\u{1F} \u{2028} é"

    static func record(state: JobState) -> JobRecord {
        var record = JobRecord(
            id: "job_1", kind: Self.hostile, user: "alice", priority: .high, state: state, input: #"{"prompt":"x"}"#,
            attempts: 2, maxAttempts: 3, createdAt: 1_000_000)
        record.progress = JobProgress(current: 3, total: 5, message: Self.hostile)
        record.error = Self.hostile
        record.result = "# Report " + Self.hostile
        return record
    }

    static func object(_ json: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any], "\(json)")
    }

    @Test func progressCarriesTheProgressTheRetryAndTheError() throws {
        let object = try Self.object(JobEvent.progress(Self.record(state: .pending), retryInMs: 1500))
        #expect(object["type"] as? String == "job.progress" && object["job_id"] as? String == "job_1")
        #expect(object["kind"] as? String == Self.hostile && object["state"] as? String == JobState.pending.rawValue)
        #expect(object["attempt"] as? Int == 2 && object["retry_in_ms"] as? Int == 1500 && object["error"] as? String == Self.hostile)
        let progress = try #require(object["progress"] as? [String: Any])
        #expect(progress["current"] as? Int == 3 && progress["total"] as? Int == 5 && progress["message"] as? String == Self.hostile)

        var bare = Self.record(state: .running)
        bare.progress = nil
        bare.error = nil
        let minimal = try Self.object(JobEvent.progress(bare))
        #expect(minimal["progress"] == nil && minimal["retry_in_ms"] == nil && minimal["error"] == nil)
    }

    @Test func doneInlinesASmallResultOfASucceededJobOnly() throws {
        let succeeded = try Self.object(JobEvent.done(Self.record(state: .succeeded), inlineResultLimit: 1000))
        #expect(succeeded["type"] as? String == "job.done" && succeeded["attempts"] as? Int == 2 && succeeded["error"] == nil)
        #expect(succeeded["result_url"] as? String == "/v1/jobs/job_1/result" && succeeded["result"] as? String == "# Report " + Self.hostile)

        let large = try Self.object(JobEvent.done(Self.record(state: .succeeded), inlineResultLimit: 3))
        #expect(large["result"] == nil && large["result_url"] as? String == "/v1/jobs/job_1/result")

        let failed = try Self.object(JobEvent.done(Self.record(state: .failed), inlineResultLimit: 1000))
        #expect(failed["error"] as? String == Self.hostile && failed["result"] == nil && failed["result_url"] == nil)
    }

    @Test func acceptedSaysWhetherItWasDeduplicated() throws {
        let object = try Self.object(JobEvent.accepted(Self.record(state: .pending), requestID: Self.hostile, deduplicated: true))
        #expect(object["type"] as? String == "job.accepted" && object["priority"] as? String == "high")
        #expect(object["deduplicated"] as? Bool == true && object["request_id"] as? String == Self.hostile)
        let fresh = try Self.object(JobEvent.accepted(Self.record(state: .pending), requestID: nil, deduplicated: false))
        #expect(fresh["deduplicated"] as? Bool == false && fresh["request_id"] == nil)
    }

    /// The job object (`GET /v1/jobs/{id}`, `job.status`, the list): the input as JSON, times
    /// in RFC 3339 with milliseconds, usage and the result only where they apply.
    @Test func theJobObjectCarriesEveryField() throws {
        var record = Self.record(state: .succeeded)
        record.startedAt = 1_500_999
        record.finishedAt = 86_400_000_000 + 2_250_000
        record.schedule = "daily"
        record.tokenBudget = 100
        record.tokensUsed = 7
        let object = try Self.object(record.json())
        #expect(object["job_id"] as? String == "job_1" && object["user"] as? String == "alice" && object["kind"] as? String == Self.hostile)
        #expect(object["state"] as? String == "SUCCEEDED" && object["attempts"] as? Int == 2 && object["max_attempts"] as? Int == 3)
        #expect((object["input"] as? [String: Any])?["prompt"] as? String == "x")
        #expect(object["created_at"] as? String == "1970-01-01T00:00:01.000Z" && object["started_at"] as? String == "1970-01-01T00:00:01.500Z")
        #expect(object["finished_at"] as? String == "1970-01-02T00:00:02.250Z" && object["schedule"] as? String == "daily")
        #expect((object["usage"] as? [String: Any])?["tokens_used"] as? Int == 7 && object["error"] as? String == Self.hostile)
        #expect((object["progress"] as? [String: Any])?["message"] as? String == Self.hostile)
        #expect(object["result"] as? String == "# Report " + Self.hostile && object["result_url"] as? String == "/v1/jobs/job_1/result")

        var plain = JobRecord(id: "j", kind: "k", user: "u", priority: .low, state: .pending, input: "not json {", maxAttempts: 1, createdAt: 0)
        plain.result = "never shown while pending"
        let minimal = try Self.object(plain.json())
        #expect(minimal["input"] as? String == "not json {" && minimal["usage"] == nil && minimal["result"] == nil && minimal["started_at"] == nil)
    }

    @Test func statusAndListWrapTheJobObject() throws {
        let snapshot = Self.record(state: .failed).snapshot()
        var status = ByteBuffer()
        JobMessageEncoder.status(snapshot, requestID: Self.hostile, into: &status)
        let message = try Self.object(String(buffer: status))
        #expect(message["type"] as? String == "job.status" && message["request_id"] as? String == Self.hostile)
        #expect((message["job"] as? [String: Any])?["error"] as? String == Self.hostile)

        var list = ByteBuffer()
        JobMessageEncoder.list([snapshot, snapshot], into: &list)
        #expect((try Self.object(String(buffer: list))["jobs"] as? [[String: Any]])?.count == 2)
        var empty = ByteBuffer()
        JobMessageEncoder.list([], into: &empty)
        #expect((try Self.object(String(buffer: empty))["jobs"] as? [Any])?.isEmpty == true)
    }
}
