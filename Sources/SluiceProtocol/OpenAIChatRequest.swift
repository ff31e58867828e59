import Foundation
import NIOCore

/// A `POST /v1/chat/completions` request (the OpenAI chat completions API), as the gateway
/// uses it: the messages (text only), the model, streaming, and the sampling parameters,
/// each checked against `RequestLimits`.
public struct OpenAIChatRequest: Equatable, Sendable {
    public struct Message: Equatable, Sendable {
        public enum Role: String, Sendable {
            /// `system` and `developer`.
            case system
            case user
            case assistant
            case tool
        }

        public var role: Role
        /// The text (text parts joined; an assistant turn without content is "").
        public var content: String

        public init(role: Role, content: String) {
            self.role = role
            self.content = content
        }
    }

    public var model: String?
    public var messages: [Message]
    public var stream: Bool
    /// `stream_options.include_usage`.
    public var includeUsage: Bool
    /// `max_completion_tokens`, else `max_tokens` (both within 1...`maxTokensLimit`).
    public var maxTokens: Int?
    public var temperature: Double?
    /// Checked (0...1) but not passed on: the upstream adapters send no `top_p`.
    public var topP: Double?

    public init(
        model: String? = nil, messages: [Message], stream: Bool = false, includeUsage: Bool = false, maxTokens: Int? = nil,
        temperature: Double? = nil, topP: Double? = nil
    ) {
        self.model = model
        self.messages = messages
        self.stream = stream
        self.includeUsage = includeUsage
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
    }
}

/// Why an OpenAI request was refused: the message says what is wrong, `param` which parameter
/// (OpenAI's `error.param`). `tooLarge` maps to 413, everything else to 400.
public struct OpenAIRequestProblem: Error, Equatable, Sendable {
    public var message: String
    public var param: String?
    public var tooLarge: Bool

    public init(_ message: String, param: String?, tooLarge: Bool = false) {
        self.message = message
        self.param = param
        self.tooLarge = tooLarge
    }
}

/// Decodes a `POST /v1/chat/completions` body. A pure function of the bytes and the limits (no
/// socket, no configuration object): the body's size is checked before it is parsed, then
/// every parameter's type and range.
public enum OpenAIChatRequestDecoder {
    public static func decode(_ body: ByteBuffer, limits: RequestLimits) -> Result<OpenAIChatRequest, OpenAIRequestProblem> {
        let bytes = body.readableBytesView
        guard bytes.count <= limits.maxOpenAIBodyBytes else {
            return .failure(OpenAIRequestProblem("the body exceeds \(limits.maxOpenAIBodyBytes) bytes", param: nil, tooLarge: true))
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            return .failure(OpenAIRequestProblem("the body must be a JSON object", param: nil))
        }
        let fields = JSONFields(object: object)
        do throws(OpenAIRequestProblem) {
            let messages = try Self.messages(fields, limits: limits)
            let model = try Self.field("model") { () throws(ProtocolViolation) in try fields.optionalString("model") }
            let tokensRange = limits.maxTokensRange
            let maxTokens = try Self.field("max_tokens") { () throws(ProtocolViolation) in
                try fields.optionalInteger("max_tokens", in: tokensRange, rangeMessage: ClientMessageDecoder.maxTokensMessage("max_tokens", limits))
            }
            let maxCompletionTokens = try Self.field("max_completion_tokens") { () throws(ProtocolViolation) in
                try fields.optionalInteger(
                    "max_completion_tokens", in: tokensRange,
                    rangeMessage: ClientMessageDecoder.maxTokensMessage("max_completion_tokens", limits))
            }
            if let n = fields.value("n") {
                guard case .value(1) = JSONFields.integer(n) else {
                    throw OpenAIRequestProblem("only n=1 is supported (one choice per request)", param: "n")
                }
            }
            let temperature = try Self.field("temperature") { () throws(ProtocolViolation) in
                try fields.optionalNumber("temperature", in: RequestLimits.temperatureRange)
            }
            let topP = try Self.field("top_p") { () throws(ProtocolViolation) in
                try fields.optionalNumber("top_p", in: RequestLimits.topPRange)
            }
            let stream = try Self.field("stream") { () throws(ProtocolViolation) in try fields.optionalBool("stream") } ?? false
            var includeUsage = false
            if let options = fields.value("stream_options") {
                guard let dictionary = options as? [String: Any] else {
                    throw OpenAIRequestProblem("stream_options must be an object", param: "stream_options")
                }
                includeUsage = try Self.field("stream_options") { () throws(ProtocolViolation) in
                    try JSONFields(object: dictionary).optionalBool("include_usage")
                } ?? false
            }
            return .success(OpenAIChatRequest(
                model: model, messages: messages, stream: stream, includeUsage: includeUsage,
                maxTokens: (maxCompletionTokens ?? maxTokens).map { Int($0) }, temperature: temperature, topP: topP))
        } catch {
            return .failure(error)
        }
    }

    /// Runs one field's check, naming the parameter in the problem.
    private static func field<T>(_ param: String, _ read: () throws(ProtocolViolation) -> T) throws(OpenAIRequestProblem) -> T {
        do {
            return try read()
        } catch {
            throw OpenAIRequestProblem(error.message, param: param)
        }
    }

    private static func messages(_ fields: JSONFields, limits: RequestLimits) throws(OpenAIRequestProblem) -> [OpenAIChatRequest.Message] {
        guard let raw = fields.value("messages") as? [Any], !raw.isEmpty else {
            throw OpenAIRequestProblem("messages must be a non-empty array of {role, content}", param: "messages")
        }
        guard raw.count <= RequestLimits.maxMessages else {
            throw OpenAIRequestProblem("at most \(RequestLimits.maxMessages) messages", param: "messages", tooLarge: true)
        }
        var messages: [OpenAIChatRequest.Message] = []
        messages.reserveCapacity(raw.count)
        var size = 0
        for item in raw {
            guard let message = item as? [String: Any] else {
                throw OpenAIRequestProblem("messages must be a non-empty array of {role, content}", param: "messages")
            }
            guard let roleText = message["role"] as? String else {
                throw OpenAIRequestProblem("every message needs a role", param: "messages")
            }
            let role: OpenAIChatRequest.Message.Role
            switch roleText {
            case "system", "developer": role = .system
            case "user": role = .user
            case "assistant": role = .assistant
            case "tool": role = .tool
            default:
                // Not echoed: the client's text stays out of the answer.
                throw OpenAIRequestProblem("unknown role (use system, developer, user, assistant or tool)", param: "messages")
            }
            let content = try Self.content(message["content"], role: role)
            size = size.addingSaturating(content.utf8.count)
            guard size <= limits.maxMessagesBytes else {
                throw OpenAIRequestProblem("messages are too large (at most \(limits.maxMessagesBytes) bytes of text)", param: "messages", tooLarge: true)
            }
            messages.append(OpenAIChatRequest.Message(role: role, content: content))
        }
        return messages
    }

    /// A string, or an array of content parts whose text parts are joined (images and audio are
    /// not something this gateway can pass on); absent or null only for an assistant turn.
    private static func content(_ value: Any?, role: OpenAIChatRequest.Message.Role) throws(OpenAIRequestProblem) -> String {
        if let text = value as? String { return text }
        if let parts = value as? [Any] {
            guard parts.count <= RequestLimits.maxContentParts else {
                throw OpenAIRequestProblem("at most \(RequestLimits.maxContentParts) content parts per message", param: "messages")
            }
            var text = ""
            for part in parts {
                guard let part = part as? [String: Any] else {
                    throw OpenAIRequestProblem("message content must be a string or text parts", param: "messages")
                }
                guard part["type"] as? String == "text" else { continue }
                guard let piece = part["text"] as? String else {
                    throw OpenAIRequestProblem("a text part needs a string text", param: "messages")
                }
                text += piece
            }
            return text
        }
        if value == nil || value is NSNull, role == .assistant { return "" }
        throw OpenAIRequestProblem("message content must be a string or text parts", param: "messages")
    }
}
