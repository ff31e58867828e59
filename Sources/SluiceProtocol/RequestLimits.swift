/// The bounds the request decoders apply to what a client sends (every front door: `sluice.v1`
/// over WebSocket, `POST /v1/chat/stream`, `POST /v1/jobs`, `POST /v1/chat/completions`).
/// Anything outside them is refused when it is decoded (`invalid_message` / HTTP 400, or
/// `too_large` / 413 for sizes), so nothing further on computes with it.
public struct RequestLimits: Sendable, Equatable {
    /// Largest `content` (bytes, `chat.max_content_bytes`).
    public var maxContentBytes: Int
    /// Largest `max_tokens` / `max_completion_tokens` a client may ask for (`chat.max_tokens_limit`).
    public var maxTokensLimit: Int

    public static let defaultMaxContentBytes = 64 * 1024
    public static let defaultMaxTokensLimit = 32_768

    public init(maxContentBytes: Int = Self.defaultMaxContentBytes, maxTokensLimit: Int = Self.defaultMaxTokensLimit) {
        self.maxContentBytes = max(0, maxContentBytes)
        self.maxTokensLimit = max(1, maxTokensLimit)
    }

    /// What a JSON message may add around its content: field names, other fields, and the
    /// escaping of the content itself. Encoders that escape every non-ASCII character (Python's
    /// `json.dumps` by default) write a 3-byte character as 6 bytes and a 4-byte one as 12, so
    /// a message may be three times `maxContentBytes` plus 16 KiB; beyond that it is refused
    /// as `too_large` before it is parsed.
    public static let jsonOverheadBytes = 16 * 1024

    /// The largest `sluice.v1` JSON message (and `POST /v1/chat/stream` / `POST /v1/jobs` body).
    public var maxJSONMessageBytes: Int {
        self.maxContentBytes.multipliedSaturating(by: 3).addingSaturating(Self.jsonOverheadBytes)
    }

    /// The text of all `messages` of an OpenAI request together (eight contents' worth).
    public var maxMessagesBytes: Int { self.maxContentBytes.multipliedSaturating(by: 8) }

    /// The largest `POST /v1/chat/completions` body (same escaping allowance as above).
    public var maxOpenAIBodyBytes: Int {
        self.maxMessagesBytes.multipliedSaturating(by: 3).addingSaturating(Self.jsonOverheadBytes)
    }

    /// Valid `max_tokens` values.
    public var maxTokensRange: ClosedRange<Int64> { 1...Int64(max(1, self.maxTokensLimit)) }

    // Fixed field bounds (documented in docs/protocol.md).

    /// `temperature`: a finite number in this range.
    public static let temperatureRange: ClosedRange<Double> = 0...2
    /// `top_p` (OpenAI front door): a finite number in this range.
    public static let topPRange: ClosedRange<Double> = 0...1
    /// `after_seq`: the largest integer a JSON number carries exactly (2^53 - 1), so `after_seq + 1`
    /// can never overflow.
    public static let afterSeqRange: ClosedRange<Int64> = 0...9_007_199_254_740_991
    /// `limit` of a history page (the storage's page ceiling).
    public static let historyPageLimitRange: ClosedRange<Int64> = 1...500
    /// A `before` cursor (`<microseconds>_<uuid>`, 57 bytes when it comes from the server).
    public static let maxCursorBytes = 128
    /// `job.submit` `max_attempts`.
    public static let maxAttemptsRange: ClosedRange<Int64> = 1...100
    /// `job.submit` `kind` (a job kind's name).
    public static let maxJobKindBytes = 64
    /// `idempotency_key` (and the `Idempotency-Key` header of `POST /v1/jobs`).
    public static let maxIdempotencyKeyBytes = 255
    /// `priority`: one of `high`, `normal`, `low`; anything longer is refused unread.
    public static let maxPriorityBytes = 16
    /// Messages in one OpenAI request.
    public static let maxMessages = 2048
    /// Content parts in one OpenAI message.
    public static let maxContentParts = 256
    /// Tools in one OpenAI request (OpenAI's own limit).
    public static let maxTools = 128
    /// A tool's name: `^[a-zA-Z0-9_-]{1,64}$`, as OpenAI requires.
    public static let maxToolNameBytes = 64
    /// A tool's description.
    public static let maxToolDescriptionBytes = 16 * 1024
    /// A tool's parameters (its JSON schema, as compact JSON).
    public static let maxToolParametersBytes = 16 * 1024
    /// Tool calls in one assistant message (what the upstream side accepts too).
    public static let maxToolCallsPerMessage = 16
    /// A tool call's id (`tool_calls[].id`, `tool_call_id`).
    public static let maxToolCallIDBytes = 256
}

extension RequestLimits {
    /// Whether `before` may be a cursor: ASCII digits, hex letters, `-` and `_`, at most
    /// `maxCursorBytes`. (The storage parses it; this keeps anything else from getting there.)
    public static func isPlausibleCursor(_ text: String) -> Bool {
        let bytes = text.utf8
        guard !bytes.isEmpty, bytes.count <= Self.maxCursorBytes else { return false }
        return bytes.allSatisfy { byte in
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
        }
    }
}
