import Foundation
import NIOCore
import SluiceProtocol

/// `OpenAIChatRequestDecoder` (the `POST /v1/chat/completions` body) on any bytes: a refusal is
/// an `OpenAIRequestProblem` (413 only for sizes); an accepted request respects every bound of
/// `RequestLimits` and, re-encoded as an OpenAI client would send it, decodes to itself.
///
/// Input: [limits choice] body... (bits 0-1: content limit; bits 2-3: max_tokens limit)
enum OpenAIRequestTarget {
    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let choice = Int(input.byte())
        let limits = RequestLimits(
            maxContentBytes: ClientMessageTarget.contentLimits[choice & 3], maxTokensLimit: ClientMessageTarget.tokenLimits[(choice >> 2) & 3])
        let body = ByteBuffer(bytes: input.rest())

        switch OpenAIChatRequestDecoder.decode(body, limits: limits) {
        case .failure(let problem):
            if problem.tooLarge { require(problem.param == nil || problem.param == "messages", "413 for \(problem.param ?? "")") }
        case .success(let request):
            Self.check(request, limits: limits)
            switch OpenAIChatRequestDecoder.decode(ByteBuffer(bytes: Self.encode(request)), limits: limits) {
            case .success(let again):
                require(again == request, "\(request) re-encoded decodes as \(again)")
            case .failure(let problem):
                fatalError("\(request) re-encoded is refused: \(problem.message)")
            }
        }
    }

    static func check(_ request: OpenAIChatRequest, limits: RequestLimits) {
        require(!request.messages.isEmpty && request.messages.count <= RequestLimits.maxMessages, "\(request.messages.count) messages accepted")
        let size = request.messages.reduce(0) { $0 + $1.content.utf8.count }
        require(size <= limits.maxMessagesBytes, "messages of \(size) bytes accepted")
        if let maxTokens = request.maxTokens {
            require(limits.maxTokensRange.contains(Int64(maxTokens)), "max_tokens \(maxTokens) accepted with a limit of \(limits.maxTokensLimit)")
        }
        if let temperature = request.temperature {
            require(temperature.isFinite && RequestLimits.temperatureRange.contains(temperature), "temperature \(temperature) accepted")
        }
        if let topP = request.topP { require(topP.isFinite && RequestLimits.topPRange.contains(topP), "top_p \(topP) accepted") }
        require(request.tools.count <= RequestLimits.maxTools, "\(request.tools.count) tools accepted")
        require(Set(request.tools.map(\.name)).count == request.tools.count, "two tools of one name accepted")
        for tool in request.tools {
            require(Self.isToolName(tool.name), "tool name \(tool.name.debugDescription) accepted")
            require(tool.description.utf8.count <= RequestLimits.maxToolDescriptionBytes, "a description of \(tool.description.utf8.count) bytes")
            require(tool.parameters.utf8.count <= RequestLimits.maxToolParametersBytes, "parameters of \(tool.parameters.utf8.count) bytes")
            // Passed upstream as they are: they must be a JSON object.
            require((try? JSONSerialization.jsonObject(with: Data(tool.parameters.utf8))) is [String: Any], "parameters are not a JSON object")
        }
        switch request.toolChoice {
        case .function(let name)?: require(request.tools.contains { $0.name == name }, "tool_choice names a tool not offered")
        case .auto?, .required?: require(!request.tools.isEmpty, "tool_choice without tools")
        case .none?, nil: break
        }
        var textSize = 0
        for message in request.messages {
            textSize += message.content.utf8.count
            require(message.toolCalls.isEmpty || message.role == .assistant, "tool calls on a \(message.role) message")
            require(message.toolCallID == nil || message.role == .tool, "tool_call_id on a \(message.role) message")
            require(message.toolCalls.count <= RequestLimits.maxToolCallsPerMessage, "\(message.toolCalls.count) tool calls accepted")
            for call in message.toolCalls {
                require(Self.isToolName(call.name) && (1...RequestLimits.maxToolCallIDBytes).contains(call.id.utf8.count), "tool call \(call) accepted")
                textSize += call.arguments.utf8.count + call.name.utf8.count
            }
        }
        require(textSize <= limits.maxMessagesBytes, "messages and tool calls of \(textSize) bytes accepted")
    }

    static func isToolName(_ name: String) -> Bool {
        (1...RequestLimits.maxToolNameBytes).contains(name.utf8.count)
            && name.utf8.allSatisfy { (65...90).contains($0) || (97...122).contains($0) || (48...57).contains($0) || $0 == 95 || $0 == 45 }
    }

    static func encode(_ request: OpenAIChatRequest) -> [UInt8] {
        var object: [String: Any] = [
            "messages": request.messages.map { message -> [String: Any] in
                var object: [String: Any] = ["role": message.role.rawValue, "content": message.content]
                if !message.toolCalls.isEmpty {
                    object["tool_calls"] = message.toolCalls.map {
                        ["id": $0.id, "type": "function", "function": ["name": $0.name, "arguments": $0.arguments]] as [String: Any]
                    }
                }
                object["tool_call_id"] = message.toolCallID
                return object
            },
            "stream": request.stream,
            "stream_options": ["include_usage": request.includeUsage],
        ]
        object["model"] = request.model
        object["max_completion_tokens"] = request.maxTokens
        object["temperature"] = request.temperature
        object["top_p"] = request.topP
        if !request.tools.isEmpty {
            object["tools"] = request.tools.map { tool -> [String: Any] in
                guard let schema = try? JSONSerialization.jsonObject(with: Data(tool.parameters.utf8)) else { fatalError("parameters \(tool.parameters)") }
                return ["type": "function", "function": ["name": tool.name, "description": tool.description, "parameters": schema] as [String: Any]]
            }
        }
        switch request.toolChoice {
        case nil: break
        case .none?: object["tool_choice"] = "none"
        case .auto?: object["tool_choice"] = "auto"
        case .required?: object["tool_choice"] = "required"
        case .function(let name)?: object["tool_choice"] = ["type": "function", "function": ["name": name]] as [String: Any]
        }
        guard let data = try? JSONSerialization.data(withJSONObject: object) else { fatalError("cannot encode the request") }
        return Array(data)
    }
}
