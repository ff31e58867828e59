import Foundation
import NIOCore
import SluiceProtocol

/// `ClientMessageDecoder` on any text: the `sluice.v1` client messages, the `POST /v1/chat/stream`
/// and `POST /v1/jobs` bodies, and the history query parameters. A refusal carries one of the
/// decoder's wire codes; an accepted message respects every bound of `RequestLimits`, and
/// re-encoded as JSON decodes to itself.
///
/// Input: [limits choice] text... (bits 0-1: content limit; bits 2-3: max_tokens limit)
enum ClientMessageTarget {
    static let contentLimits = [8, 64, 1024, RequestLimits.defaultMaxContentBytes]
    static let tokenLimits = [1, 100, RequestLimits.defaultMaxTokensLimit, Int.max]
    static let refusalCodes: Set<ErrorCode> = [.invalidMessage, .unknownType, .tooLarge]

    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let choice = Int(input.byte())
        let limits = RequestLimits(maxContentBytes: Self.contentLimits[choice & 3], maxTokensLimit: Self.tokenLimits[(choice >> 2) & 3])
        let bytes = input.rest()
        let text = ByteBuffer(bytes: bytes)

        switch ClientMessageDecoder.decode(text, limits: limits) {
        case .failure(let violation):
            require(Self.refusalCodes.contains(violation.code), "refused with \(violation.code)")
        case .success(let message):
            Self.checkLimits(message, limits: limits)
            let encoded = Self.encode(message)
            switch ClientMessageDecoder.decode(ByteBuffer(bytes: encoded), limits: limits) {
            case .success(let again):
                require(again == message, "\(message) re-encoded decodes as \(again)")
            case .failure(let violation):
                fatalError("\(message) re-encoded is refused: \(violation)")
            }
        }

        switch ClientMessageDecoder.decodeChatRequest(text, limits: limits) {
        case .failure(let violation):
            require(Self.refusalCodes.contains(violation.code), "chat request refused with \(violation.code)")
        case .success(let send):
            Self.checkLimits(.chatSend(send), limits: limits)
        }
        switch ClientMessageDecoder.decodeJobRequest(text, limits: limits) {
        case .failure(let violation):
            require(Self.refusalCodes.contains(violation.code), "job request refused with \(violation.code)")
        case .success(let job):
            Self.checkLimits(.jobSubmit(job), limits: limits)
        }

        // The history routes' query parameters: `limit=<text>&before=<text>` cut at the first NUL.
        let query = String(decoding: bytes, as: UTF8.self).split(separator: "\0", maxSplits: 1, omittingEmptySubsequences: false)
        let limitText = query.first.map(String.init), beforeText = query.count > 1 ? String(query[1]) : nil
        switch ClientMessageDecoder.historyPage(limit: limitText, before: beforeText) {
        case .failure(let violation):
            require(violation.code == .invalidMessage, "query refused with \(violation.code)")
        case .success(let page):
            Self.checkLimits(.conversationList(page), limits: limits)
        }
    }

    static func checkLimits(_ message: ClientMessage, limits: RequestLimits) {
        switch message {
        case .chatSend(let send):
            require(send.content.utf8.count <= limits.maxContentBytes, "content over the limit accepted")
            if let maxTokens = send.maxTokens {
                require(limits.maxTokensRange.contains(Int64(maxTokens)), "max_tokens \(maxTokens) accepted with a limit of \(limits.maxTokensLimit)")
            }
            if let temperature = send.temperature {
                require(temperature.isFinite && RequestLimits.temperatureRange.contains(temperature), "temperature \(temperature) accepted")
            }
            if let tools = send.tools { require(tools.count <= 64, "\(tools.count) tools accepted") }
        case .generationResume(_, let afterSeq):
            require(RequestLimits.afterSeqRange.contains(afterSeq), "after_seq \(afterSeq) accepted")
        case .conversationList(let page), .conversationHistory(_, let page):
            if let limit = page.limit { require(RequestLimits.historyPageLimitRange.contains(Int64(limit)), "limit \(limit) accepted") }
            if let before = page.before { require(RequestLimits.isPlausibleCursor(before), "cursor \(before.debugDescription) accepted") }
        case .jobSubmit(let job):
            require(job.input.utf8.count <= limits.maxContentBytes, "job input over the limit accepted")
            require(job.kind.utf8.count <= RequestLimits.maxJobKindBytes, "a job kind of \(job.kind.utf8.count) bytes accepted")
            require((job.priority?.utf8.count ?? 0) <= RequestLimits.maxPriorityBytes, "a long priority accepted")
            require((job.idempotencyKey?.utf8.count ?? 0) <= RequestLimits.maxIdempotencyKeyBytes, "a long idempotency key accepted")
            if let attempts = job.maxAttempts {
                require(RequestLimits.maxAttemptsRange.contains(Int64(attempts)), "max_attempts \(attempts) accepted")
            }
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
