import Foundation
import NIOCore

/// A `sluice.v1` message from a client.
public enum ClientMessage: Equatable, Sendable {
    case chatSend(ChatSend)
    case generationCancel(generationID: String)
    /// Replays a generation's deltas after `afterSeq`, then follows it live, to its `done`.
    case generationResume(generationID: String, afterSeq: Int64)
    /// Watch a conversation's generations (a second tab): running ones from their start, then live.
    case conversationSubscribe(conversationID: String)
    case conversationUnsubscribe(conversationID: String)
    /// The user's conversations, most recently updated first (`conversation.list`).
    case conversationList(HistoryPage)
    /// A conversation's stored messages, newest first (`conversation.history`).
    case conversationHistory(conversationID: String, page: HistoryPage)
    case ping(id: String?)
    /// Queues a job (`job.submit`); answered by `job.accepted`, then `job.progress`/`job.done`.
    case jobSubmit(JobSubmit)
    /// `job.cancel`
    case jobCancel(jobID: String, requestID: String?)
    /// `job.get`: the job's current record (`job.status`).
    case jobGet(jobID: String, requestID: String?)

    public struct JobSubmit: Equatable, Sendable {
        public var kind: String
        /// The `input` value, re-encoded as JSON text.
        public var input: String
        /// `high`, `normal` or `low`.
        public var priority: String?
        public var idempotencyKey: String?
        public var maxAttempts: Int?
        public var requestID: String?

        public init(kind: String, input: String, priority: String? = nil, idempotencyKey: String? = nil, maxAttempts: Int? = nil, requestID: String? = nil) {
            self.kind = kind
            self.input = input
            self.priority = priority
            self.idempotencyKey = idempotencyKey
            self.maxAttempts = maxAttempts
            self.requestID = requestID
        }
    }

    /// Which page of a history listing: `before` is the previous page's `next` cursor.
    public struct HistoryPage: Equatable, Sendable {
        public var before: String?
        public var limit: Int?
        public var requestID: String?

        public init(before: String? = nil, limit: Int? = nil, requestID: String? = nil) {
            self.before = before
            self.limit = limit
            self.requestID = requestID
        }
    }

    public struct ChatSend: Equatable, Sendable {
        public var content: String
        public var requestID: String?
        public var conversationID: String?
        public var model: String?
        public var maxTokens: Int?
        public var temperature: Double?
        /// Which of the configured tools the model may call (nil: all; empty: none).
        public var tools: [String]?

        public init(content: String, requestID: String? = nil, conversationID: String? = nil,
                    model: String? = nil, maxTokens: Int? = nil, temperature: Double? = nil, tools: [String]? = nil) {
            self.tools = tools
            self.content = content
            self.requestID = requestID
            self.conversationID = conversationID
            self.model = model
            self.maxTokens = maxTokens
            self.temperature = temperature
        }
    }
}

/// Why a client message was refused; `code` is the wire `error.code`.
public struct ProtocolViolation: Error, Equatable, Sendable {
    public var code: ErrorCode
    public var message: String
    /// The request id, when it could be read, so the client can match the error.
    public var requestID: String?

    public init(_ code: ErrorCode, _ message: String, requestID: String? = nil) {
        self.code = code
        self.message = message
        self.requestID = requestID
    }
}

/// Wire error codes (`error.code`).
public enum ErrorCode: String, Sendable {
    case invalidMessage = "invalid_message"
    case unknownType = "unknown_type"
    case notFound = "not_found"
    case tooLarge = "too_large"
    case overloaded = "overloaded"
    case upstreamUnavailable = "upstream_unavailable"
    case upstreamError = "upstream_error"
    case upstreamTimeout = "upstream_timeout"
    /// `generation.resume` asked for deltas the bounded history no longer holds.
    case resumeGap = "resume_gap"
    /// The instance running a generation went away without finishing it.
    case ownerLost = "owner_lost"
    /// A cross-instance feature is down for now (Redis unreachable); retry later.
    case unavailable = "unavailable"
    /// No valid credential, or it expired (the connection is then closed with 1008).
    case unauthorized = "unauthorized"
    /// Over a request or token rate limit; `retry_after_ms` says when to try again.
    case rateLimited = "rate_limited"
    /// The user's token quota is used up until its reset.
    case quotaExceeded = "quota_exceeded"
    /// The input was refused by the moderation rules or service (it is not stored or sent).
    case contentRejected = "content_rejected"
}

public enum ClientMessageDecoder {
    /// Parses one text frame. A frame whose first non-blank character is `{` must be a JSON
    /// object; any other text is a plain-text `chat.send` (so `wscat` can chat).
    public static func decode(_ text: ByteBuffer, maxContentBytes: Int) -> Result<ClientMessage, ProtocolViolation> {
        let bytes = text.readableBytesView
        guard let first = bytes.firstIndex(where: { !Self.isBlank($0) }) else {
            return .failure(.init(.invalidMessage, "empty message"))
        }
        guard bytes[first] == UInt8(ascii: "{") else {
            let content = String(buffer: text).trimmingCharacters(in: .whitespacesAndNewlines)
            guard content.utf8.count <= maxContentBytes else {
                return .failure(.init(.tooLarge, "content exceeds \(maxContentBytes) bytes"))
            }
            return .success(.chatSend(.init(content: content)))
        }
        let object: [String: Any]
        do {
            let parsed = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
            guard let dictionary = parsed as? [String: Any] else {
                return .failure(.init(.invalidMessage, "expected a JSON object"))
            }
            object = dictionary
        } catch {
            return .failure(.init(.invalidMessage, "not valid JSON"))
        }
        var fields = Fields(object: object)
        do {
            let requestID = try fields.optionalString("request_id")
            fields.requestID = requestID
            guard let type = try fields.optionalString("type") else {
                throw ProtocolViolation(.invalidMessage, "missing field \"type\"")
            }
            switch type {
            case "chat.send":
                let content = try fields.requiredString("content")
                guard content.utf8.count <= maxContentBytes else {
                    throw ProtocolViolation(.tooLarge, "content exceeds \(maxContentBytes) bytes")
                }
                let maxTokens = try fields.optionalInt("max_tokens")
                if let maxTokens, maxTokens < 1 { throw ProtocolViolation(.invalidMessage, "max_tokens must be at least 1") }
                let temperature = try fields.optionalDouble("temperature")
                if let temperature, !(0...2).contains(temperature) {
                    throw ProtocolViolation(.invalidMessage, "temperature must be between 0 and 2")
                }
                return .success(.chatSend(.init(
                    content: content, requestID: requestID,
                    conversationID: try fields.optionalString("conversation_id"),
                    model: try fields.optionalString("model"),
                    maxTokens: maxTokens, temperature: temperature, tools: try fields.optionalStringArray("tools"))))
            case "job.submit":
                let kind = try fields.requiredString("kind")
                let input = fields.object["input"] ?? [String: Any]()
                guard JSONSerialization.isValidJSONObject([input]),
                      let data = try? JSONSerialization.data(withJSONObject: input, options: [.fragmentsAllowed, .sortedKeys]) else {
                    throw ProtocolViolation(.invalidMessage, "field \"input\" must be JSON")
                }
                guard data.count <= maxContentBytes else {
                    throw ProtocolViolation(.tooLarge, "input exceeds \(maxContentBytes) bytes")
                }
                let maxAttempts = try fields.optionalInt("max_attempts")
                if let maxAttempts, !(1...100).contains(maxAttempts) {
                    throw ProtocolViolation(.invalidMessage, "max_attempts must be from 1 to 100")
                }
                return .success(.jobSubmit(.init(
                    kind: kind, input: String(decoding: data, as: UTF8.self), priority: try fields.optionalString("priority"),
                    idempotencyKey: try fields.optionalString("idempotency_key"), maxAttempts: maxAttempts, requestID: requestID)))
            case "job.cancel":
                return .success(.jobCancel(jobID: try fields.requiredString("job_id"), requestID: requestID))
            case "job.get":
                return .success(.jobGet(jobID: try fields.requiredString("job_id"), requestID: requestID))
            case "generation.cancel":
                return .success(.generationCancel(generationID: try fields.requiredString("generation_id")))
            case "generation.resume":
                let afterSeq = try fields.optionalInt("after_seq") ?? 0
                guard afterSeq >= 0 else { throw ProtocolViolation(.invalidMessage, "after_seq must not be negative") }
                return .success(.generationResume(generationID: try fields.requiredString("generation_id"), afterSeq: Int64(afterSeq)))
            case "conversation.subscribe":
                return .success(.conversationSubscribe(conversationID: try fields.requiredString("conversation_id")))
            case "conversation.unsubscribe":
                return .success(.conversationUnsubscribe(conversationID: try fields.requiredString("conversation_id")))
            case "conversation.list":
                return .success(.conversationList(try fields.historyPage()))
            case "conversation.history":
                let conversationID = try fields.requiredString("conversation_id")
                return .success(.conversationHistory(conversationID: conversationID, page: try fields.historyPage()))
            case "ping":
                return .success(.ping(id: try fields.optionalString("id")))
            default:
                throw ProtocolViolation(.unknownType, "unknown message type \"\(type)\"")
            }
        } catch let violation as ProtocolViolation {
            var violation = violation
            violation.requestID = violation.requestID ?? fields.requestID
            return .failure(violation)
        } catch {
            return .failure(.init(.invalidMessage, "\(error)", requestID: fields.requestID))
        }
    }

    /// Parses an HTTP chat request body (`POST /v1/chat/stream`): a JSON object with the fields
    /// of `chat.send`; `type` may be left out.
    public static func decodeChatRequest(_ body: ByteBuffer, maxContentBytes: Int) -> Result<ClientMessage.ChatSend, ProtocolViolation> {
        let bytes = body.readableBytesView
        guard let first = bytes.firstIndex(where: { !Self.isBlank($0) }), bytes[first] == UInt8(ascii: "{") else {
            return .failure(.init(.invalidMessage, "the body must be a JSON object"))
        }
        var withType = ByteBuffer()
        if let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any], object["type"] == nil {
            // Insert the type so the WebSocket decoder's rules apply unchanged.
            withType.writeString(#"{"type":"chat.send","#)
            withType.writeBytes(bytes[(first + 1)...])
            if object.isEmpty { withType = ByteBuffer(string: #"{"type":"chat.send"}"#) }
        } else {
            withType = body
        }
        switch Self.decode(withType, maxContentBytes: maxContentBytes) {
        case .success(.chatSend(let send)): return .success(send)
        case .success: return .failure(.init(.invalidMessage, "only chat.send is accepted here"))
        case .failure(let violation): return .failure(violation)
        }
    }

    private static func isBlank(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    /// Typed field access with errors that name the field.
    private struct Fields {
        let object: [String: Any]
        var requestID: String?

        init(object: [String: Any]) { self.object = object }

        func optionalString(_ name: String) throws -> String? {
            guard let value = self.object[name], !(value is NSNull) else { return nil }
            guard let string = value as? String else {
                throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be a string")
            }
            return string
        }

        func requiredString(_ name: String) throws -> String {
            guard let string = try self.optionalString(name) else {
                throw ProtocolViolation(.invalidMessage, "missing field \"\(name)\"")
            }
            return string
        }

        func optionalStringArray(_ name: String) throws -> [String]? {
            guard let value = self.object[name], !(value is NSNull) else { return nil }
            guard let array = value as? [Any], array.count <= 64, let strings = array as? [String] else {
                throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be an array of strings")
            }
            return strings
        }

        func optionalInt(_ name: String) throws -> Int? {
            guard let value = self.object[name], !(value is NSNull) else { return nil }
            // JSONSerialization gives NSNumber; refuse booleans and fractions.
            guard let number = value as? NSNumber, !Self.isBool(number), let int = Int(exactly: number.doubleValue) else {
                throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be an integer")
            }
            return int
        }

        func historyPage() throws -> ClientMessage.HistoryPage {
            let limit = try self.optionalInt("limit")
            if let limit, limit < 1 { throw ProtocolViolation(.invalidMessage, "limit must be at least 1") }
            return ClientMessage.HistoryPage(before: try self.optionalString("before"), limit: limit, requestID: self.requestID)
        }

        func optionalDouble(_ name: String) throws -> Double? {
            guard let value = self.object[name], !(value is NSNull) else { return nil }
            guard let number = value as? NSNumber, !Self.isBool(number) else {
                throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be a number")
            }
            return number.doubleValue
        }

        static func isBool(_ number: NSNumber) -> Bool {
            String(cString: number.objCType) == "c"
        }
    }
}
