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
public enum ErrorCode: String, Sendable, CaseIterable {
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


/// Decodes `sluice.v1` client messages. A pure function of the bytes and the limits: sizes are
/// checked on the bytes before anything is copied, trimmed or parsed, and every field is
/// type- and range-checked here (`RequestLimits`), so nothing further on sees an unchecked value.
public enum ClientMessageDecoder {
    /// `decode(_:limits:)` with the default `max_tokens` limit.
    public static func decode(_ text: ByteBuffer, maxContentBytes: Int) -> Result<ClientMessage, ProtocolViolation> {
        Self.decode(text, limits: RequestLimits(maxContentBytes: maxContentBytes))
    }

    /// Parses one text frame. A frame whose first non-blank character is `{` must be a JSON
    /// object; any other text is a plain-text `chat.send` (so `wscat` can chat).
    ///
    /// Size before work: plain text is measured between its first and last non-blank bytes and
    /// refused (`too_large`) before a `String` is made; a JSON message longer than
    /// `limits.maxJSONMessageBytes` is refused before it is parsed.
    public static func decode(_ text: ByteBuffer, limits: RequestLimits) -> Result<ClientMessage, ProtocolViolation> {
        let bytes = text.readableBytesView
        guard let first = bytes.firstIndex(where: { !Self.isBlank($0) }) else {
            return .failure(.init(.invalidMessage, "empty message"))
        }
        guard bytes[first] == UInt8(ascii: "{") else {
            return Self.decodePlainText(bytes, first: first, limits: limits)
        }
        switch Self.parseObject(bytes, maxBytes: limits.maxJSONMessageBytes, limits: limits) {
        case .failure(let violation): return .failure(violation)
        case .success(let object): return Self.decode(object: object, defaultType: nil, limits: limits)
        }
    }

    /// Parses an HTTP chat request body (`POST /v1/chat/stream`): a JSON object with the fields
    /// of `chat.send`; `type` may be left out.
    public static func decodeChatRequest(_ body: ByteBuffer, maxContentBytes: Int) -> Result<ClientMessage.ChatSend, ProtocolViolation> {
        Self.decodeChatRequest(body, limits: RequestLimits(maxContentBytes: maxContentBytes))
    }

    /// Parses an HTTP chat request body (`POST /v1/chat/stream`): a JSON object with the fields
    /// of `chat.send`; `type` may be left out.
    public static func decodeChatRequest(_ body: ByteBuffer, limits: RequestLimits) -> Result<ClientMessage.ChatSend, ProtocolViolation> {
        switch Self.decodeBody(body, defaultType: "chat.send", limits: limits) {
        case .success(.chatSend(let send)): return .success(send)
        case .success: return .failure(.init(.invalidMessage, "only chat.send is accepted here"))
        case .failure(let violation): return .failure(violation)
        }
    }

    /// Parses a `POST /v1/jobs` body: the fields of `job.submit`; `type` may be left out (the
    /// top level decides: an `input` may have a `type` of its own).
    public static func decodeJobRequest(_ body: ByteBuffer, limits: RequestLimits) -> Result<ClientMessage.JobSubmit, ProtocolViolation> {
        switch Self.decodeBody(body, defaultType: "job.submit", limits: limits) {
        case .success(.jobSubmit(let submit)): return .success(submit)
        case .success: return .failure(.init(.invalidMessage, "the body must be a job: {\"kind\": …, \"input\": …}"))
        case .failure(let violation): return .failure(violation)
        }
    }

    private static func decodeBody(_ body: ByteBuffer, defaultType: String, limits: RequestLimits) -> Result<ClientMessage, ProtocolViolation> {
        let bytes = body.readableBytesView
        guard let first = bytes.firstIndex(where: { !Self.isBlank($0) }), bytes[first] == UInt8(ascii: "{") else {
            return .failure(.init(.invalidMessage, "the body must be a JSON object"))
        }
        switch Self.parseObject(bytes, maxBytes: limits.maxJSONMessageBytes, limits: limits) {
        case .failure(let violation): return .failure(violation)
        case .success(let object): return Self.decode(object: object, defaultType: defaultType, limits: limits)
        }
    }

    /// Plain text: the trimmed text's size is known from its first and last non-blank bytes,
    /// so an oversized message costs two scans and no copy.
    private static func decodePlainText(_ bytes: ByteBufferView, first: ByteBufferView.Index, limits: RequestLimits) -> Result<ClientMessage, ProtocolViolation> {
        let last = bytes.lastIndex(where: { !Self.isBlank($0) }) ?? first
        guard last - first + 1 <= limits.maxContentBytes else {
            return .failure(.init(.tooLarge, "content exceeds \(limits.maxContentBytes) bytes"))
        }
        // Bounded now; the trim also takes Unicode white space off (no-break spaces and the like).
        let content = String(decoding: bytes[first...last], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        // Invalid UTF-8 (possible over HTTP; WebSocket text is validated) grows when repaired.
        guard content.utf8.count <= limits.maxContentBytes else {
            return .failure(.init(.tooLarge, "content exceeds \(limits.maxContentBytes) bytes"))
        }
        return .success(.chatSend(.init(content: content)))
    }

    /// A JSON object of at most `maxBytes`, checked before parsing.
    private static func parseObject(_ bytes: ByteBufferView, maxBytes: Int, limits: RequestLimits) -> Result<[String: Any], ProtocolViolation> {
        guard bytes.count <= maxBytes else {
            return .failure(.init(.tooLarge, "message exceeds \(maxBytes) bytes (content is limited to \(limits.maxContentBytes) bytes)"))
        }
        do {
            let parsed = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
            guard let dictionary = parsed as? [String: Any] else {
                return .failure(.init(.invalidMessage, "expected a JSON object"))
            }
            return .success(dictionary)
        } catch {
            return .failure(.init(.invalidMessage, "not valid JSON"))
        }
    }

    /// The field rules of every message type.
    private static func decode(object: [String: Any], defaultType: String?, limits: RequestLimits) -> Result<ClientMessage, ProtocolViolation> {
        var fields = JSONFields(object: object)
        do throws(ProtocolViolation) {
            let requestID = try fields.optionalString("request_id")
            fields.requestID = requestID
            guard let type = try fields.optionalString("type") ?? defaultType else {
                throw ProtocolViolation(.invalidMessage, "missing field \"type\"")
            }
            switch type {
            case "chat.send":
                let content = try fields.requiredString("content")
                guard content.utf8.count <= limits.maxContentBytes else {
                    throw ProtocolViolation(.tooLarge, "content exceeds \(limits.maxContentBytes) bytes")
                }
                let maxTokens = try fields.optionalInteger(
                    "max_tokens", in: limits.maxTokensRange, rangeMessage: Self.maxTokensMessage("max_tokens", limits))
                let temperature = try fields.optionalNumber("temperature", in: RequestLimits.temperatureRange)
                return .success(.chatSend(.init(
                    content: content, requestID: requestID,
                    conversationID: try fields.optionalString("conversation_id"),
                    model: try fields.optionalString("model"),
                    maxTokens: maxTokens.map { Int($0) }, temperature: temperature, tools: try fields.optionalStringArray("tools"))))
            case "job.submit":
                let kind = try fields.requiredString("kind", maxBytes: RequestLimits.maxJobKindBytes)
                let input = fields.object["input"] ?? [String: Any]()
                guard JSONSerialization.isValidJSONObject([input]),
                      let data = try? JSONSerialization.data(withJSONObject: input, options: [.fragmentsAllowed, .sortedKeys]) else {
                    throw ProtocolViolation(.invalidMessage, "field \"input\" must be JSON")
                }
                guard data.count <= limits.maxContentBytes else {
                    throw ProtocolViolation(.tooLarge, "input exceeds \(limits.maxContentBytes) bytes")
                }
                let maxAttempts = try fields.optionalInteger("max_attempts", in: RequestLimits.maxAttemptsRange)
                return .success(.jobSubmit(.init(
                    kind: kind, input: String(decoding: data, as: UTF8.self),
                    priority: try fields.optionalString("priority", maxBytes: RequestLimits.maxPriorityBytes),
                    idempotencyKey: try fields.optionalString("idempotency_key", maxBytes: RequestLimits.maxIdempotencyKeyBytes),
                    maxAttempts: maxAttempts.map { Int($0) }, requestID: requestID)))
            case "job.cancel":
                return .success(.jobCancel(jobID: try fields.requiredString("job_id"), requestID: requestID))
            case "job.get":
                return .success(.jobGet(jobID: try fields.requiredString("job_id"), requestID: requestID))
            case "generation.cancel":
                return .success(.generationCancel(generationID: try fields.requiredString("generation_id")))
            case "generation.resume":
                let afterSeq = try fields.optionalInteger("after_seq", in: RequestLimits.afterSeqRange) ?? 0
                return .success(.generationResume(generationID: try fields.requiredString("generation_id"), afterSeq: afterSeq))
            case "conversation.subscribe":
                return .success(.conversationSubscribe(conversationID: try fields.requiredString("conversation_id")))
            case "conversation.unsubscribe":
                return .success(.conversationUnsubscribe(conversationID: try fields.requiredString("conversation_id")))
            case "conversation.list":
                return .success(.conversationList(try Self.historyPage(fields)))
            case "conversation.history":
                let conversationID = try fields.requiredString("conversation_id")
                return .success(.conversationHistory(conversationID: conversationID, page: try Self.historyPage(fields)))
            case "ping":
                return .success(.ping(id: try fields.optionalString("id")))
            default:
                throw ProtocolViolation(.unknownType, "unknown message type \"\(type)\"")
            }
        } catch {
            var violation = error
            violation.requestID = violation.requestID ?? fields.requestID
            return .failure(violation)
        }
    }

    /// The refusal of a `max_tokens` outside 1...limit names the limit.
    static func maxTokensMessage(_ name: String, _ limits: RequestLimits) -> String {
        "\(name) must be an integer from 1 to \(limits.maxTokensRange.upperBound) (this gateway's limit)"
    }

    private static func historyPage(_ fields: JSONFields) throws(ProtocolViolation) -> ClientMessage.HistoryPage {
        let limit = try fields.optionalInteger("limit", in: RequestLimits.historyPageLimitRange)
        let before = try fields.optionalString("before")
        if let before { try Self.checkCursor(before) }
        return ClientMessage.HistoryPage(before: before, limit: limit.map { Int($0) }, requestID: fields.requestID)
    }

    /// A `before` cursor (from a message or a query parameter) that cannot be one is refused here.
    public static func checkCursor(_ before: String) throws(ProtocolViolation) {
        guard RequestLimits.isPlausibleCursor(before) else {
            throw ProtocolViolation(.invalidMessage, "before is not a cursor from a previous page")
        }
    }

    /// A history page from HTTP query parameters (`?limit=&before=`), with the same rules as
    /// `conversation.list` / `conversation.history`.
    public static func historyPage(limit: String?, before: String?) -> Result<ClientMessage.HistoryPage, ProtocolViolation> {
        var page = ClientMessage.HistoryPage()
        if let limit {
            let range = RequestLimits.historyPageLimitRange
            guard let value = Self.queryInteger(limit), range.contains(value) else {
                return .failure(.init(.invalidMessage, "limit must be an integer from \(range.lowerBound) to \(range.upperBound)"))
            }
            page.limit = Int(value)
        }
        if let before {
            do { try Self.checkCursor(before) } catch { return .failure(error) }
            page.before = before
        }
        return .success(page)
    }

    /// A decimal integer query parameter: ASCII digits only (no sign, no spaces), at most 18 of
    /// them, so the value always fits.
    public static func queryInteger(_ text: String) -> Int64? {
        let bytes = text.utf8
        guard (1...18).contains(bytes.count), bytes.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
        return Int64(text)
    }

    static func isBlank(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}
