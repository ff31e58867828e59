import Foundation
import NIOCore

/// A `POST /v1/chat/completions` request (the OpenAI chat completions API), as the gateway
/// uses it: the messages (text, and the tool calls and results of earlier turns), the model,
/// streaming, the sampling parameters and the client's tools, each checked against
/// `RequestLimits`.
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
        /// An assistant turn's `tool_calls` (the calls the model made).
        public var toolCalls: [ToolCall]
        /// A `tool` message's `tool_call_id` (the call it answers).
        public var toolCallID: String?

        public init(role: Role, content: String, toolCalls: [ToolCall] = [], toolCallID: String? = nil) {
            self.role = role
            self.content = content
            self.toolCalls = toolCalls
            self.toolCallID = toolCallID
        }
    }

    /// A function the client offers the model (`tools[]`, type `function`).
    public struct Tool: Equatable, Sendable {
        /// `^[a-zA-Z0-9_-]{1,64}$`, as OpenAI requires.
        public var name: String
        public var description: String
        /// The JSON schema of the arguments: a JSON object, as compact JSON text with sorted keys.
        public var parameters: String

        public init(name: String, description: String = "", parameters: String = #"{"properties":{},"type":"object"}"#) {
            self.name = name
            self.description = description
            self.parameters = parameters
        }
    }

    /// `tool_choice` (one type with what the upstream adapters write).
    public typealias ToolChoice = SluiceProtocol.ToolChoice

    /// A call the model made in an earlier turn (`tool_calls[]` of an assistant message).
    public struct ToolCall: Equatable, Sendable {
        public var id: String
        public var name: String
        /// The arguments as JSON text, as the model wrote them (not parsed).
        public var arguments: String

        public init(id: String, name: String, arguments: String) {
            self.id = id
            self.name = name
            self.arguments = arguments
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
    /// The client's tools (empty: none offered).
    public var tools: [Tool]
    /// nil: not given (the upstream's default, `auto` when tools are offered).
    public var toolChoice: ToolChoice?

    public init(
        model: String? = nil, messages: [Message], stream: Bool = false, includeUsage: Bool = false, maxTokens: Int? = nil,
        temperature: Double? = nil, topP: Double? = nil, tools: [Tool] = [], toolChoice: ToolChoice? = nil
    ) {
        self.tools = tools
        self.toolChoice = toolChoice
        self.model = model
        self.messages = messages
        self.stream = stream
        self.includeUsage = includeUsage
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
    }
}

/// Whether and which tool the model must call (OpenAI `tool_choice`): decoded from a client's
/// request here, written upstream by the Inference adapters.
public enum ToolChoice: Equatable, Sendable {
    case none
    case auto
    case required
    /// `{"type":"function","function":{"name":…}}`: this tool, which must be offered.
    case function(String)
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
            let tools = try Self.tools(fields.value("tools"))
            let toolChoice = try Self.toolChoice(fields.value("tool_choice"), tools: tools)
            return .success(OpenAIChatRequest(
                model: model, messages: messages, stream: stream, includeUsage: includeUsage,
                maxTokens: (maxCompletionTokens ?? maxTokens).map { Int($0) }, temperature: temperature, topP: topP,
                tools: tools, toolChoice: toolChoice))
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
            let toolCalls = try Self.toolCalls(message["tool_calls"], role: role)
            var toolCallID: String?
            if let value = message["tool_call_id"], !(value is NSNull) {
                guard role == .tool, let id = value as? String, Self.isToolCallID(id) else {
                    throw OpenAIRequestProblem(
                        "tool_call_id belongs to a tool message and is a string of 1 to \(RequestLimits.maxToolCallIDBytes) bytes", param: "messages")
                }
                toolCallID = id
            }
            // Earlier turns' tool calls are text the upstream reads too: they count with the content.
            size = size.addingSaturating(content.utf8.count)
            for call in toolCalls { size = size.addingSaturating(call.arguments.utf8.count).addingSaturating(call.name.utf8.count) }
            guard size <= limits.maxMessagesBytes else {
                throw OpenAIRequestProblem("messages are too large (at most \(limits.maxMessagesBytes) bytes of text)", param: "messages", tooLarge: true)
            }
            messages.append(OpenAIChatRequest.Message(role: role, content: content, toolCalls: toolCalls, toolCallID: toolCallID))
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

    // MARK: Tools

    private static func isToolName(_ name: String) -> Bool {
        let bytes = name.utf8
        return (1...RequestLimits.maxToolNameBytes).contains(bytes.count) && bytes.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }

    private static func isToolCallID(_ id: String) -> Bool {
        (1...RequestLimits.maxToolCallIDBytes).contains(id.utf8.count)
    }

    /// `tools`: at most `maxTools` functions with valid, distinct names; each schema a JSON object
    /// of at most `maxToolParametersBytes` (kept as compact JSON with sorted keys, so it is passed
    /// upstream as valid JSON whatever the client wrote).
    private static func tools(_ value: Any?) throws(OpenAIRequestProblem) -> [OpenAIChatRequest.Tool] {
        guard let value, !(value is NSNull) else { return [] }
        guard let list = value as? [Any] else { throw OpenAIRequestProblem("tools must be an array of functions", param: "tools") }
        guard list.count <= RequestLimits.maxTools else {
            throw OpenAIRequestProblem("at most \(RequestLimits.maxTools) tools", param: "tools")
        }
        var tools: [OpenAIChatRequest.Tool] = []
        var names: Set<String> = []
        for item in list {
            guard let tool = item as? [String: Any], tool["type"] as? String == "function",
                  let function = tool["function"] as? [String: Any]
            else { throw OpenAIRequestProblem(#"every tool must be {"type":"function","function":{…}}"#, param: "tools") }
            guard let name = function["name"] as? String, Self.isToolName(name) else {
                throw OpenAIRequestProblem("a tool's name must be 1 to \(RequestLimits.maxToolNameBytes) letters, digits, _ or -", param: "tools")
            }
            guard names.insert(name).inserted else { throw OpenAIRequestProblem("two tools are named \(name)", param: "tools") }
            var description = ""
            if let value = function["description"], !(value is NSNull) {
                guard let text = value as? String, text.utf8.count <= RequestLimits.maxToolDescriptionBytes else {
                    throw OpenAIRequestProblem("a tool's description is a string of at most \(RequestLimits.maxToolDescriptionBytes) bytes", param: "tools")
                }
                description = text
            }
            var parameters = #"{"properties":{},"type":"object"}"#
            if let value = function["parameters"], !(value is NSNull) {
                guard let schema = value as? [String: Any],
                      let data = try? JSONSerialization.data(withJSONObject: schema, options: [.sortedKeys, .withoutEscapingSlashes]),
                      data.count <= RequestLimits.maxToolParametersBytes
                else {
                    throw OpenAIRequestProblem("a tool's parameters are a JSON schema object of at most \(RequestLimits.maxToolParametersBytes) bytes", param: "tools")
                }
                parameters = String(decoding: data, as: UTF8.self)
            }
            tools.append(OpenAIChatRequest.Tool(name: name, description: description, parameters: parameters))
        }
        return tools
    }

    /// `tool_choice`: `none`, `auto`, `required`, or one offered function by name.
    private static func toolChoice(_ value: Any?, tools: [OpenAIChatRequest.Tool]) throws(OpenAIRequestProblem) -> OpenAIChatRequest.ToolChoice? {
        guard let value, !(value is NSNull) else { return nil }
        let choice: OpenAIChatRequest.ToolChoice
        switch value {
        case let text as String:
            switch text {
            case "none": choice = .none
            case "auto": choice = .auto
            case "required": choice = .required
            default: throw OpenAIRequestProblem("tool_choice must be none, auto, required or a function", param: "tool_choice")
            }
        case let object as [String: Any]:
            guard object["type"] as? String == "function", let function = object["function"] as? [String: Any],
                  let name = function["name"] as? String
            else { throw OpenAIRequestProblem(#"tool_choice must be none, auto, required or {"type":"function","function":{"name":…}}"#, param: "tool_choice") }
            guard tools.contains(where: { $0.name == name }) else {
                // Not echoed: the name is the client's text.
                throw OpenAIRequestProblem("tool_choice names a function that is not in tools", param: "tool_choice")
            }
            choice = .function(name)
        default:
            throw OpenAIRequestProblem("tool_choice must be none, auto, required or a function", param: "tool_choice")
        }
        if choice != .none && tools.isEmpty {
            throw OpenAIRequestProblem("tool_choice needs tools", param: "tool_choice")
        }
        return choice
    }

    /// An assistant message's `tool_calls`: at most `maxToolCallsPerMessage` function calls, each
    /// with an id, a tool name and its arguments as a string.
    private static func toolCalls(_ value: Any?, role: OpenAIChatRequest.Message.Role) throws(OpenAIRequestProblem) -> [OpenAIChatRequest.ToolCall] {
        guard let value, !(value is NSNull) else { return [] }
        guard role == .assistant, let list = value as? [Any] else {
            throw OpenAIRequestProblem("tool_calls belong to an assistant message and are an array", param: "messages")
        }
        guard list.count <= RequestLimits.maxToolCallsPerMessage else {
            throw OpenAIRequestProblem("at most \(RequestLimits.maxToolCallsPerMessage) tool calls per message", param: "messages")
        }
        var calls: [OpenAIChatRequest.ToolCall] = []
        for item in list {
            guard let call = item as? [String: Any], call["type"] as? String == "function",
                  let id = call["id"] as? String, Self.isToolCallID(id),
                  let function = call["function"] as? [String: Any],
                  let name = function["name"] as? String, Self.isToolName(name),
                  let arguments = function["arguments"] as? String
            else {
                throw OpenAIRequestProblem(
                    #"every tool call is {"id":…,"type":"function","function":{"name":…,"arguments":"…"}} with an id of at most "#
                        + "\(RequestLimits.maxToolCallIDBytes) bytes", param: "messages")
            }
            calls.append(OpenAIChatRequest.ToolCall(id: id, name: name, arguments: arguments))
        }
        return calls
    }
}
