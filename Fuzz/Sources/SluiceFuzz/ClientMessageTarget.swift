import Foundation
import NIOCore
import SluiceProtocol

/// `ClientMessageDecoder` (the `sluice.v1` client messages, and the `POST /v1/chat/stream` body)
/// on any text frame: a refusal carries one of the decoder's wire codes; an accepted message
/// respects the limits the decoder promises, and re-encoded as JSON decodes to itself.
///
/// Input: [content limit choice] text...
enum ClientMessageTarget {
    static let limits = [8, 64, 1024, 65536]
    static let refusalCodes: Set<ErrorCode> = [.invalidMessage, .unknownType, .tooLarge]

    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let maxContentBytes = Self.limits[Int(input.byte() & 3)]
        let text = ByteBuffer(bytes: input.rest())

        switch ClientMessageDecoder.decode(text, maxContentBytes: maxContentBytes) {
        case .failure(let violation):
            require(Self.refusalCodes.contains(violation.code), "refused with \(violation.code)")
        case .success(let message):
            Self.checkLimits(message, maxContentBytes: maxContentBytes)
            let encoded = Self.encode(message)
            switch ClientMessageDecoder.decode(ByteBuffer(bytes: encoded), maxContentBytes: maxContentBytes) {
            case .success(let again):
                require(again == message, "\(message) re-encoded decodes as \(again)")
            case .failure(let violation):
                fatalError("\(message) re-encoded is refused: \(violation)")
            }
        }

        switch ClientMessageDecoder.decodeChatRequest(text, maxContentBytes: maxContentBytes) {
        case .failure(let violation):
            require(Self.refusalCodes.contains(violation.code), "chat request refused with \(violation.code)")
        case .success(let send):
            Self.checkLimits(.chatSend(send), maxContentBytes: maxContentBytes)
        }
    }

    static func checkLimits(_ message: ClientMessage, maxContentBytes: Int) {
        switch message {
        case .chatSend(let send):
            require(send.content.utf8.count <= maxContentBytes, "content over the limit accepted")
            if let maxTokens = send.maxTokens { require(maxTokens >= 1, "max_tokens \(maxTokens) accepted") }
            if let temperature = send.temperature { require((0...2).contains(temperature), "temperature \(temperature) accepted") }
            if let tools = send.tools { require(tools.count <= 64, "\(tools.count) tools accepted") }
        case .generationResume(_, let afterSeq):
            require(afterSeq >= 0, "after_seq \(afterSeq) accepted")
        case .conversationList(let page), .conversationHistory(_, let page):
            if let limit = page.limit { require(limit >= 1, "limit \(limit) accepted") }
        case .jobSubmit(let job):
            require(job.input.utf8.count <= maxContentBytes, "job input over the limit accepted")
            if let attempts = job.maxAttempts { require((1...100).contains(attempts), "max_attempts \(attempts) accepted") }
        default:
            break
        }
    }

    /// The message as a client would write it.
    static func encode(_ message: ClientMessage) -> [UInt8] {
        var object: [String: Any] = [:]
        func page(_ page: ClientMessage.HistoryPage) {
            object["before"] = page.before
            object["limit"] = page.limit
            object["request_id"] = page.requestID
        }
        switch message {
        case .chatSend(let send):
            object = ["type": "chat.send", "content": send.content]
            object["request_id"] = send.requestID
            object["conversation_id"] = send.conversationID
            object["model"] = send.model
            object["max_tokens"] = send.maxTokens
            object["temperature"] = send.temperature
            object["tools"] = send.tools
        case .generationCancel(let id):
            object = ["type": "generation.cancel", "generation_id": id]
        case .generationResume(let id, let afterSeq):
            object = ["type": "generation.resume", "generation_id": id, "after_seq": afterSeq]
        case .conversationSubscribe(let id):
            object = ["type": "conversation.subscribe", "conversation_id": id]
        case .conversationUnsubscribe(let id):
            object = ["type": "conversation.unsubscribe", "conversation_id": id]
        case .conversationList(let history):
            object = ["type": "conversation.list"]
            page(history)
        case .conversationHistory(let id, let history):
            object = ["type": "conversation.history", "conversation_id": id]
            page(history)
        case .ping(let id):
            object = ["type": "ping"]
            object["id"] = id
        case .jobSubmit(let job):
            object = ["type": "job.submit", "kind": job.kind]
            object["input"] = try? JSONSerialization.jsonObject(with: Data(job.input.utf8), options: [.fragmentsAllowed])
            object["priority"] = job.priority
            object["idempotency_key"] = job.idempotencyKey
            object["max_attempts"] = job.maxAttempts
            object["request_id"] = job.requestID
        case .jobCancel(let id, let requestID):
            object = ["type": "job.cancel", "job_id": id]
            object["request_id"] = requestID
        case .jobGet(let id, let requestID):
            object = ["type": "job.get", "job_id": id]
            object["request_id"] = requestID
        }
        guard let data = try? JSONSerialization.data(withJSONObject: object) else {
            fatalError("cannot encode \(message) as JSON")
        }
        return Array(data)
    }
}
