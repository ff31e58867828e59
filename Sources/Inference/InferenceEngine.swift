import NIOCore
import SluiceProtocol

/// One chat message sent upstream as context.
public struct ChatMessage: Equatable, Sendable {
    public enum Role: String, Sendable { case system, user, assistant, tool }
    public var role: Role
    public var content: String
    /// An assistant turn that asked for tools (OpenAI `tool_calls`).
    public var toolCalls: [ToolCall]
    /// A `tool` message: the call it answers.
    public var toolCallID: String?
    public init(role: Role, content: String, toolCalls: [ToolCall] = [], toolCallID: String? = nil) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
        self.toolCallID = toolCallID
    }
}

/// A function call the model asked for (OpenAI tool calling).
public struct ToolCall: Equatable, Sendable {
    public var id: String
    public var name: String
    /// The arguments as the model wrote them (JSON text, unvalidated).
    public var arguments: String
    public init(id: String, name: String, arguments: String) {
        self.id = id
        self.name = name
        self.arguments = arguments
    }
}

/// A tool offered to the model: `{"type":"function","function":{name, description, parameters}}`.
public struct ToolDefinition: Equatable, Sendable {
    public var name: String
    public var description: String
    /// The JSON schema of the arguments (JSON text).
    public var parameters: String
    public init(name: String, description: String, parameters: String) {
        self.name = name
        self.description = description
        self.parameters = parameters
    }
}

/// What to generate.
public struct GenerationRequest: Sendable {
    public var messages: [ChatMessage]
    /// The model the client asked for; nil means the engine's configured model.
    public var model: String?
    public var maxTokens: Int
    public var temperature: Double?
    /// Trace propagation headers (W3C `traceparent`) for the upstream request, so an upstream
    /// that traces (vLLM with `--otlp-traces-endpoint`) joins the gateway's trace.
    public var traceHeaders: [(name: String, value: String)]
    /// Tools the model may call (empty: none offered).
    public var tools: [ToolDefinition] = []
    /// nil: the upstream's default (`auto` when tools are offered).
    public var toolChoice: ToolChoice?
    /// The user the answer is for, as the gateway identified them (not sent upstream). The
    /// response cache keys on it: an answer is replayed only to the user it was made for (or,
    /// when configured, to the users of one tenant); nil: neither looked up nor stored.
    public var user: String?
    public init(
        messages: [ChatMessage], model: String? = nil, maxTokens: Int, temperature: Double? = nil,
        traceHeaders: [(name: String, value: String)] = []
    ) {
        self.messages = messages
        self.model = model
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.traceHeaders = traceHeaders
    }
}

extension GenerationRequest {
    /// The most answer bytes a generation of `maxTokens` tokens may bring: 64 bytes a token
    /// (tokens are a few bytes; some stand for a run of spaces), at least 64 KiB. Whoever holds an
    /// answer stops there, and at `maxTokens` deltas, whatever the upstream does: one that ignores
    /// `max_tokens`, or sends a "token" of megabytes, is cut instead of growing memory.
    public static func maxAnswerBytes(forTokens maxTokens: Int) -> Int {
        max(64 * 1024, max(0, maxTokens).multipliedReportingOverflow(by: 64).overflow ? Int.max : max(0, maxTokens) * 64)
    }
}

/// Why an upstream generation failed, mapped to a wire error code in one place.
public struct InferenceError: Error, Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// Could not connect (refused, DNS, TLS).
        case unavailable
        /// The upstream answered with an HTTP error status or an error object in the stream.
        case upstreamError(status: Int?)
        /// No first token, or no next token, in time.
        case timeout
        /// Every replica that could take it is at its concurrency cap.
        case overloaded
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var code: ErrorCode {
        switch self.kind {
        case .unavailable: return .upstreamUnavailable
        case .upstreamError: return .upstreamError
        case .timeout: return .upstreamTimeout
        case .overloaded: return .overloaded
        }
    }
}

/// Receives a generation's chunks. Every call happens on the event loop the generation was
/// started on, so the receiver can write to its channel with no hop. Not Sendable on purpose.
public protocol GenerationSink: AnyObject {
    /// The upstream accepted the request (an HTTP 2xx head; the simulator at once). A failure
    /// before this means nothing was generated, and retrying may help.
    func generationDidConnect()
    /// A piece of answer text (one upstream chunk or token).
    func generationDidProduce(_ text: Substring)
    /// Token counts as the upstream reported them (may arrive with any chunk, or only at the end).
    func generationDidReportUsage(promptTokens: Int, completionTokens: Int)
    /// A batch of chunks (one upstream read, one simulator tick) is over: a good moment to flush.
    func generationDidEndBatch()
    /// The generation ended normally (`stop` or `length`).
    func generationDidFinish(_ reason: FinishReason)
    /// The generation failed; no further calls follow.
    func generationDidFail(_ error: InferenceError)
    /// The answer comes from the response cache, not an upstream (called before its text).
    func generationWasCached()
    /// The model asked for these tools to be run (called once, just before
    /// `generationDidFinish`). The caller runs them and continues with a new request.
    func generationDidRequestToolCalls(_ calls: [ToolCall])
}

extension GenerationSink {
    public func generationDidConnect() {}
    public func generationWasCached() {}
    public func generationDidRequestToolCalls(_ calls: [ToolCall]) {}
}

/// A running generation. `cancel()` stops it at once (closing the upstream connection); after
/// it, the sink hears nothing more. Use on the generation's event loop.
public protocol GenerationHandle: AnyObject {
    func cancel()
}

/// Something that turns a request into a stream of chunks: an upstream adapter or the simulator.
public protocol InferenceEngine: Sendable {
    /// The model name reported to clients when the request names none.
    var defaultModel: String { get }
    /// Starts a generation whose events are delivered to `sink` on `eventLoop`.
    func startGeneration(
        _ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink
    ) -> any GenerationHandle
}
