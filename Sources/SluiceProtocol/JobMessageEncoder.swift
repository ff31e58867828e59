import Foundation
import NIOCore

/// Writes the live job messages of `sluice.v1` (`job.accepted`, `job.progress`, `job.done`)
/// with the same escaping as every other server message. Takes plain values, so the job queue
/// (`Jobs`) builds them without the protocol knowing its records.
public enum JobMessageEncoder {
    /// A job's progress as reported by its handler.
    public struct Progress: Equatable, Sendable {
        public var current: Int
        public var total: Int?
        public var message: String?

        public init(current: Int, total: Int? = nil, message: String? = nil) {
            self.current = current
            self.total = total
            self.message = message
        }
    }

    public static func accepted(
        jobID: String, kind: String, state: String, priority: String, deduplicated: Bool, requestID: String?, into buffer: inout ByteBuffer
    ) {
        Self.writeHead("job.accepted", jobID: jobID, kind: kind, state: state, into: &buffer)
        buffer.writeStaticString(#","priority":"#)
        buffer.writeJSONString(priority)
        buffer.writeStaticString(deduplicated ? #","deduplicated":true"# : #","deduplicated":false"#)
        if let requestID {
            buffer.writeStaticString(#","request_id":"#)
            buffer.writeJSONString(requestID)
        }
        buffer.writeStaticString("}")
    }

    public static func progress(
        jobID: String, kind: String, state: String, attempt: Int, progress: Progress?, retryInMs: Int64?, error: String?,
        into buffer: inout ByteBuffer
    ) {
        Self.writeHead("job.progress", jobID: jobID, kind: kind, state: state, into: &buffer)
        buffer.writeStaticString(#","attempt":"#)
        buffer.writeDecimal(Int64(attempt))
        if let progress { Self.writeProgress(progress, into: &buffer) }
        if let retryInMs {
            buffer.writeStaticString(#","retry_in_ms":"#)
            buffer.writeDecimal(retryInMs)
        }
        if let error {
            buffer.writeStaticString(#","error":"#)
            buffer.writeJSONString(error)
        }
        buffer.writeStaticString("}")
    }

    /// `resultURL` and `result` are given for a succeeded job (`result` only when small enough to
    /// inline), `error` for one that did not succeed.
    public static func done(
        jobID: String, kind: String, state: String, attempts: Int, error: String?, resultURL: String?, result: String?,
        into buffer: inout ByteBuffer
    ) {
        Self.writeHead("job.done", jobID: jobID, kind: kind, state: state, into: &buffer)
        buffer.writeStaticString(#","attempts":"#)
        buffer.writeDecimal(Int64(attempts))
        if let error {
            buffer.writeStaticString(#","error":"#)
            buffer.writeJSONString(error)
        }
        if let resultURL {
            buffer.writeStaticString(#","result_url":"#)
            buffer.writeJSONString(resultURL)
        }
        if let result {
            buffer.writeStaticString(#","result":"#)
            buffer.writeJSONString(result)
        }
        buffer.writeStaticString("}")
    }

    /// `,"progress":{…}`
    private static func writeProgress(_ progress: Progress, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#","progress":{"current":"#)
        buffer.writeDecimal(Int64(progress.current))
        if let total = progress.total {
            buffer.writeStaticString(#","total":"#)
            buffer.writeDecimal(Int64(total))
        }
        if let message = progress.message {
            buffer.writeStaticString(#","message":"#)
            buffer.writeJSONString(message)
        }
        buffer.writeStaticString("}")
    }

    private static func writeHead(_ type: StaticString, jobID: String, kind: String, state: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":""#)
        buffer.writeStaticString(type)
        buffer.writeStaticString(#"","job_id":"#)
        buffer.writeJSONString(jobID)
        buffer.writeStaticString(#","kind":"#)
        buffer.writeJSONString(kind)
        buffer.writeStaticString(#","state":"#)
        buffer.writeJSONString(state)
    }
}

extension JobMessageEncoder {
    /// A job as clients see it (`GET /v1/jobs/{id}`, `job.status`, the job list): what the
    /// protocol needs of a job record, not the record.
    public struct Job: Equatable, Sendable {
        public var jobID: String
        public var kind: String
        public var user: String
        public var priority: String
        public var state: String
        /// The input as the client sent it (JSON text); text that is not JSON is written as a string.
        public var input: String
        public var attempts: Int
        public var maxAttempts: Int
        /// Microseconds since 1970.
        public var createdAt: Int64
        public var startedAt: Int64?
        public var finishedAt: Int64?
        public var progress: Progress?
        public var error: String?
        public var schedule: String?
        /// Written (as `usage`) when either is above zero.
        public var tokenBudget: Int
        public var tokensUsed: Int
        public var resultURL: String?
        public var result: String?

        public init(
            jobID: String, kind: String, user: String, priority: String, state: String, input: String, attempts: Int, maxAttempts: Int,
            createdAt: Int64, startedAt: Int64? = nil, finishedAt: Int64? = nil, progress: Progress? = nil, error: String? = nil,
            schedule: String? = nil, tokenBudget: Int = 0, tokensUsed: Int = 0, resultURL: String? = nil, result: String? = nil
        ) {
            self.jobID = jobID
            self.kind = kind
            self.user = user
            self.priority = priority
            self.state = state
            self.input = input
            self.attempts = attempts
            self.maxAttempts = maxAttempts
            self.createdAt = createdAt
            self.startedAt = startedAt
            self.finishedAt = finishedAt
            self.progress = progress
            self.error = error
            self.schedule = schedule
            self.tokenBudget = tokenBudget
            self.tokensUsed = tokensUsed
            self.resultURL = resultURL
            self.result = result
        }
    }

    /// The job object alone (the body of `GET /v1/jobs/{id}`).
    public static func job(_ job: Job, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"job_id":"#)
        buffer.writeJSONString(job.jobID)
        buffer.writeStaticString(#","kind":"#)
        buffer.writeJSONString(job.kind)
        buffer.writeStaticString(#","user":"#)
        buffer.writeJSONString(job.user)
        buffer.writeStaticString(#","priority":"#)
        buffer.writeJSONString(job.priority)
        buffer.writeStaticString(#","state":"#)
        buffer.writeJSONString(job.state)
        buffer.writeStaticString(#","attempts":"#)
        buffer.writeDecimal(Int64(job.attempts))
        buffer.writeStaticString(#","max_attempts":"#)
        buffer.writeDecimal(Int64(job.maxAttempts))
        buffer.writeStaticString(#","created_at":"#)
        buffer.writeTimestamp(microseconds: job.createdAt, millisecondsOnly: true)
        buffer.writeStaticString(#","input":"#)
        Self.writeJSONText(job.input, into: &buffer)
        if let startedAt = job.startedAt {
            buffer.writeStaticString(#","started_at":"#)
            buffer.writeTimestamp(microseconds: startedAt, millisecondsOnly: true)
        }
        if let finishedAt = job.finishedAt {
            buffer.writeStaticString(#","finished_at":"#)
            buffer.writeTimestamp(microseconds: finishedAt, millisecondsOnly: true)
        }
        if let progress = job.progress { Self.writeProgress(progress, into: &buffer) }
        if let error = job.error {
            buffer.writeStaticString(#","error":"#)
            buffer.writeJSONString(error)
        }
        if let schedule = job.schedule {
            buffer.writeStaticString(#","schedule":"#)
            buffer.writeJSONString(schedule)
        }
        if job.tokenBudget > 0 || job.tokensUsed > 0 {
            buffer.writeStaticString(#","usage":{"token_budget":"#)
            buffer.writeDecimal(Int64(job.tokenBudget))
            buffer.writeStaticString(#","tokens_used":"#)
            buffer.writeDecimal(Int64(job.tokensUsed))
            buffer.writeStaticString("}")
        }
        if let resultURL = job.resultURL {
            buffer.writeStaticString(#","result_url":"#)
            buffer.writeJSONString(resultURL)
        }
        if let result = job.result {
            buffer.writeStaticString(#","result":"#)
            buffer.writeJSONString(result)
        }
        buffer.writeStaticString("}")
    }

    /// `{"type":"job.status","job":{…},"request_id":…}`
    public static func status(_ job: Job, requestID: String?, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"job.status","job":"#)
        Self.job(job, into: &buffer)
        if let requestID {
            buffer.writeStaticString(#","request_id":"#)
            buffer.writeJSONString(requestID)
        }
        buffer.writeStaticString("}")
    }

    /// `{"jobs":[…]}` (`GET /v1/jobs`).
    public static func list(_ jobs: [Job], into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"jobs":["#)
        for (index, job) in jobs.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            Self.job(job, into: &buffer)
        }
        buffer.writeStaticString("]}")
    }

    /// JSON text as it is when it parses, else as a JSON string: the message stays valid JSON.
    static func writeJSONText(_ text: String, into buffer: inout ByteBuffer) {
        if (try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])) != nil {
            buffer.writeString(text)
        } else {
            buffer.writeJSONString(text)
        }
    }
}
