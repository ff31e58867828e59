import Foundation

/// The live job messages of `sluice.v1` (`job.progress`, `job.done`), built by whoever changed
/// the job and published once on the queue's event channel; every gateway instance forwards
/// them verbatim to the submitter's connections. The channel payload is `user\n{json}`, so a
/// gateway routes without parsing the JSON.
public enum JobEvent {
    public static func progress(_ record: JobRecord, retryInMs: Int64? = nil) -> String {
        var object: [String: Any] = [
            "type": "job.progress", "job_id": record.id, "kind": record.kind, "state": record.state.rawValue,
            "attempt": record.attempts,
        ]
        if let progress = record.progress {
            var value: [String: Any] = ["current": progress.current]
            if let total = progress.total { value["total"] = total }
            if let message = progress.message { value["message"] = message }
            object["progress"] = value
        }
        if let retryInMs { object["retry_in_ms"] = retryInMs }
        if let error = record.error { object["error"] = error }
        return Self.encode(object)
    }

    public static func done(_ record: JobRecord, inlineResultLimit: Int) -> String {
        var object: [String: Any] = [
            "type": "job.done", "job_id": record.id, "kind": record.kind, "state": record.state.rawValue,
            "attempts": record.attempts,
        ]
        if let error = record.error, record.state != .succeeded { object["error"] = error }
        if record.state == .succeeded {
            object["result_url"] = "/v1/jobs/\(record.id)/result"
            if let result = record.result, result.utf8.count <= inlineResultLimit { object["result"] = result }
        }
        return Self.encode(object)
    }

    public static func accepted(_ record: JobRecord, requestID: String?, deduplicated: Bool) -> String {
        var object: [String: Any] = [
            "type": "job.accepted", "job_id": record.id, "kind": record.kind, "state": record.state.rawValue,
            "priority": record.priority.rawValue, "deduplicated": deduplicated,
        ]
        if let requestID { object["request_id"] = requestID }
        return Self.encode(object)
    }

    /// `user\n{json}` as published on the channel.
    static func channelPayload(user: String, _ json: String) -> String { user + "\n" + json }

    /// Splits a channel payload into the user and the client message.
    public static func route(_ payload: String) -> (user: String, message: Substring)? {
        guard let newline = payload.firstIndex(of: "\n") else { return nil }
        return (String(payload[..<newline]), payload[payload.index(after: newline)...])
    }

    static func encode(_ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
