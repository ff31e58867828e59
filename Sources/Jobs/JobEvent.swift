import NIOCore
import SluiceProtocol

/// The live job messages of `sluice.v1` (`job.progress`, `job.done`), built by whoever changed
/// the job and published once on the queue's event channel; every gateway instance forwards
/// them verbatim to the submitter's connections. The channel payload is `user\n{json}`, so a
/// gateway routes without parsing the JSON.
public enum JobEvent {
    public static func progress(_ record: JobRecord, retryInMs: Int64? = nil) -> String {
        var buffer = ByteBuffer()
        JobMessageEncoder.progress(
            jobID: record.id, kind: record.kind, state: record.state.rawValue, attempt: record.attempts,
            progress: record.progress.map { .init(current: $0.current, total: $0.total, message: $0.message) },
            retryInMs: retryInMs, error: record.error, into: &buffer)
        return String(buffer: buffer)
    }

    public static func done(_ record: JobRecord, inlineResultLimit: Int) -> String {
        let succeeded = record.state == .succeeded
        var buffer = ByteBuffer()
        JobMessageEncoder.done(
            jobID: record.id, kind: record.kind, state: record.state.rawValue, attempts: record.attempts,
            error: succeeded ? nil : record.error,
            resultURL: succeeded ? "/v1/jobs/\(record.id)/result" : nil,
            result: succeeded ? record.result.flatMap { $0.utf8.count <= inlineResultLimit ? $0 : nil } : nil,
            into: &buffer)
        return String(buffer: buffer)
    }

    public static func accepted(_ record: JobRecord, requestID: String?, deduplicated: Bool) -> String {
        var buffer = ByteBuffer()
        JobMessageEncoder.accepted(
            jobID: record.id, kind: record.kind, state: record.state.rawValue, priority: record.priority.rawValue,
            deduplicated: deduplicated, requestID: requestID, into: &buffer)
        return String(buffer: buffer)
    }

    /// `user\n{json}` as published on the channel.
    static func channelPayload(user: String, _ json: String) -> String { user + "\n" + json }

    /// Splits a channel payload into the user and the client message.
    public static func route(_ payload: String) -> (user: String, message: Substring)? {
        guard let newline = payload.firstIndex(of: "\n") else { return nil }
        return (String(payload[..<newline]), payload[payload.index(after: newline)...])
    }
}
