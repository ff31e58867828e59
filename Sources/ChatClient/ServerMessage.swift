import Foundation

/// The server→client `sluice.v1` messages, as far as the chat client needs them. Decoded with
/// JSONSerialization so unknown fields (and unknown types) from newer servers are ignored.
enum ServerMessage: Equatable, Sendable {
    struct ErrorInfo: Equatable, Sendable {
        var code: String
        var message: String
    }

    case sessionReady(instanceID: String, model: String?, heartbeatMs: Int?)
    case generationStarted(generationID: String, conversationID: String, requestID: String?)
    case generationDelta(generationID: String, seq: Int, text: String)
    case generationDone(generationID: String, finishReason: String, completionTokens: Int?, error: ErrorInfo?)
    case error(code: String, message: String, requestID: String?, generationID: String?)
    case pong
    /// A well-formed message of a type this client does not know.
    case unknown(type: String)

    /// `nil` when the text is not a JSON object with the fields its type requires.
    init?(json: String) {
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(json.utf8)),
              let object = parsed as? [String: Any],
              let type = object["type"] as? String else { return nil }
        let string = { (key: String) in object[key] as? String }
        let int = { (key: String) in (object[key] as? NSNumber)?.intValue }
        switch type {
        case "session.ready":
            guard let instanceID = string("instance_id") else { return nil }
            self = .sessionReady(instanceID: instanceID, model: string("model"), heartbeatMs: int("heartbeat_ms"))
        case "generation.started":
            guard let generationID = string("generation_id"), let conversationID = string("conversation_id") else { return nil }
            self = .generationStarted(generationID: generationID, conversationID: conversationID, requestID: string("request_id"))
        case "generation.delta":
            guard let generationID = string("generation_id"), let seq = int("seq"), let text = string("text") else { return nil }
            self = .generationDelta(generationID: generationID, seq: seq, text: text)
        case "generation.done":
            guard let generationID = string("generation_id"), let finishReason = string("finish_reason") else { return nil }
            let usage = object["usage"] as? [String: Any]
            let completionTokens = (usage?["completion_tokens"] as? NSNumber)?.intValue
            var error: ErrorInfo?
            if let details = object["error"] as? [String: Any] {
                error = ErrorInfo(code: details["code"] as? String ?? "error", message: details["message"] as? String ?? "")
            }
            self = .generationDone(generationID: generationID, finishReason: finishReason, completionTokens: completionTokens, error: error)
        case "error":
            self = .error(
                code: string("code") ?? "error", message: string("message") ?? "",
                requestID: string("request_id"), generationID: string("generation_id"))
        case "pong":
            self = .pong
        default:
            self = .unknown(type: type)
        }
    }
}
