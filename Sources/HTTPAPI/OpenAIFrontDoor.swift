import Foundation
import Inference
import NIOCore
import NIOHTTP1
import Policy
import Sessions
import SluiceProtocol
import Tools
import WSServer

/// The OpenAI-compatible front door: `POST /v1/chat/completions` (streamed as SSE chunks, or
/// one JSON answer) and `GET /v1/models`, with the same authentication, rate limits, quotas and
/// routing as `sluice.v1`, so OpenAI SDK clients use the gateway unchanged. Stateless like the
/// OpenAI API: the request carries the whole context, and nothing is stored as a conversation.
public struct OpenAIRoutes: HTTPRouteProvider {
    public static let completionsPath = "/v1/chat/completions"
    public static let modelsPath = "/v1/models"
    let application: ChatApplication

    public init(application: ChatApplication) {
        self.application = application
    }

    public func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        switch path {
        case Self.completionsPath: return ChatCompletionResponder(application: self.application)
        case Self.modelsPath: return ModelsResponder(application: self.application)
        default: return nil
        }
    }
}

/// Errors in the OpenAI shape: `{"error": {"message", "type", "code"}}`.
enum OpenAIError {
    static func body(_ message: String, type: String, code: String?, param: String? = nil) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeString(#"{"error":{"message":"#)
        buffer.writeJSONString(message)
        buffer.writeString(#","type":"#)
        buffer.writeJSONString(type)
        if let param {
            buffer.writeString(#","param":"#)
            buffer.writeJSONString(param)
        }
        buffer.writeString(#","code":"#)
        if let code { buffer.writeJSONString(code) } else { buffer.writeString("null") }
        buffer.writeString("}}")
        return buffer
    }

    /// A caller turned away at the door: 429 `rate_limited` with `Retry-After`, or 401
    /// `invalid_api_key` with `WWW-Authenticate`.
    static func respond(_ writer: HTTPResponseWriter, _ refusal: ChatPolicy.CallerRefusal) {
        switch refusal {
        case .connectionRate(let limited):
            Self.respond(writer, status: HTTPResponseStatus(.rateLimited), limited.message, type: "rate_limit_exceeded", code: "rate_limited",
                         retryAfterMs: limited.retryAfterMs)
        case .credential(let failure):
            Self.respond(writer, status: .unauthorized, failure.message, type: "invalid_request_error", code: "invalid_api_key",
                         headers: [("WWW-Authenticate", failure.challenge)])
        }
    }

    static func respond(_ writer: HTTPResponseWriter, status: HTTPResponseStatus, _ message: String, type: String, code: String?,
                        param: String? = nil, retryAfterMs: Int64? = nil, headers extra: [(String, String)] = []) {
        let headers = extra + (retryAfterMs.map { [("Retry-After", RetryAfter.headerValue(milliseconds: $0))] } ?? [])
        writer.respond(status: status, contentType: "application/json", body: Self.body(message, type: type, code: code, param: param), headers: headers)
    }
}

final class ModelsResponder: HTTPRouteResponder {
    private let application: ChatApplication

    init(application: ChatApplication) {
        self.application = application
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        if case .failure(let refusal) = self.application.policy.admitCaller(head, peer: writer.remoteAddress, countsAsConnection: false) {
            OpenAIError.respond(writer, refusal)
            return
        }
        var out = ByteBuffer()
        out.writeString(#"{"object":"list","data":["#)
        let names = self.application.router.upstreams.map(\.name) + ["auto"]
        for (index, name) in names.enumerated() {
            if index > 0 { out.writeString(",") }
            out.writeString(#"{"id":"#)
            out.writeJSONString(name)
            out.writeString(#","object":"model","created":0,"owned_by":"sluice"}"#)
        }
        out.writeString("]}")
        writer.respond(status: .ok, contentType: "application/json", body: out)
    }

    func clientDisconnected() {}
}

/// One `POST /v1/chat/completions`, on its connection's event loop: an adapter between the
/// OpenAI wire format and the generation pipeline (`GenerationStarter`), like the WebSocket
/// session and the SSE route. The request's messages are an ephemeral conversation (stored
/// nowhere; the usage is recorded on its own); the generation gets everything a `sluice.v1` one
/// does: limits and quotas, gateway tools, traces, metrics, the hub (its id is the response's
/// `id`, so `generation.cancel` from the same user's WebSocket, on any instance, stops it), and a
/// cancel when the client disconnects. The client's own `tools` pass through both ways: offered
/// upstream with its `tool_choice`, and the model's calls come back as `tool_calls`.
final class ChatCompletionResponder: HTTPRouteResponder, GenerationRequester {
    private let application: ChatApplication
    private var writer: HTTPResponseWriter?
    private var generation: ChatGeneration?
    private var streaming = false
    private var includeUsage = false
    private var headWritten = false
    private let created = Int(Date().timeIntervalSince1970)
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":` once.
    private var chunkPrefix = ByteBuffer()
    /// The client's tools the model called, for a non-streamed answer's message.
    private var clientToolCalls: [ToolCall] = []

    init(application: ChatApplication) {
        self.application = application
    }

    /// It carries the whole context: the decoder's bound for it (eight contents, escaped, plus 16 KiB).
    var maxRequestBodyBytes: Int { self.application.configuration.requestLimits.maxOpenAIBodyBytes }

    /// The body, decoded and checked by `OpenAIChatRequestDecoder` (sizes, types, ranges), as the pipeline's order.
    static func order(_ body: ByteBuffer, limits: RequestLimits) -> Result<(GenerationOrder, stream: Bool, includeUsage: Bool), OpenAIRequestProblem> {
        OpenAIChatRequestDecoder.decode(body, limits: limits).map { decoded in
            let messages = decoded.messages.map { message in
                ChatMessage(
                    role: ChatMessage.Role(message.role), content: message.content,
                    toolCalls: message.toolCalls.map { ToolCall(id: $0.id, name: $0.name, arguments: $0.arguments) },
                    toolCallID: message.toolCallID)
            }
            let order = GenerationOrder(
                conversation: .ephemeral(messages: messages), model: decoded.model, maxTokens: decoded.maxTokens,
                temperature: decoded.temperature,
                clientTools: decoded.tools.map { ToolDefinition(name: $0.name, description: $0.description, parameters: $0.parameters) },
                toolChoice: decoded.toolChoice, idPrefix: "chatcmpl-")
            return (order, decoded.stream, decoded.includeUsage)
        }
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        self.writer = writer
        guard head.method == .POST else {
            OpenAIError.respond(writer, status: .methodNotAllowed, "use POST", type: "invalid_request_error", code: nil)
            return
        }
        let caller: ChatPolicy.Admitted
        switch self.application.policy.admitCaller(head, peer: writer.remoteAddress, countsAsConnection: true) {
        case .failure(let refusal):
            OpenAIError.respond(writer, refusal)
            return
        case .success(let admitted):
            caller = admitted
        }
        let order: GenerationOrder
        switch Self.order(body, limits: self.application.configuration.requestLimits) {
        case .failure(let problem):
            OpenAIError.respond(writer, status: problem.tooLarge ? .payloadTooLarge : .badRequest, problem.message, type: "invalid_request_error",
                                code: problem.tooLarge ? "too_large" : nil, param: problem.param)
            return
        case .success(let (decoded, stream, includeUsage)):
            order = decoded
            self.streaming = stream
            self.includeUsage = includeUsage
        }
        let generationCaller = GenerationCaller(
            user: caller.user, address: caller.address, sessionID: Identifier.make("http_"), trace: self.application.traceParent(head.headers))
        self.application.starter.start(order, for: generationCaller, output: self, on: writer.eventLoop)
    }

    func clientDisconnected() {
        self.writer = nil
        self.generation?.cancel()
        self.generation = nil
    }

    // MARK: GenerationRequester

    func generationStarting(_ generation: ChatGeneration) {
        self.generation = generation
        var prefix = ByteBuffer()
        prefix.writeString(#"{"id":""#)
        prefix.writeString(generation.id)
        prefix.writeString(#"","object":"chat.completion.chunk","created":\#(self.created),"model":"#)
        prefix.writeJSONString(generation.model)
        prefix.writeString(#","choices":[{"index":0,"delta":"#)
        self.chunkPrefix = prefix
    }

    func generationRefused(_ refusal: GenerationRefusal) {
        guard let writer = self.writer else { return }
        self.writer = nil
        Self.respond(writer, refusal.code, refusal.message, retryAfterMs: refusal.retryAfterMs)
    }

    /// An error before anything was sent, as the OpenAI API gives it: the status for the code,
    /// and the `type` SDKs map to their exceptions.
    private static func respond(_ writer: HTTPResponseWriter, _ code: ErrorCode, _ message: String, retryAfterMs: Int64?) {
        let type: String
        var wireCode = code.rawValue
        switch code {
        case .notFound:
            type = "invalid_request_error"
            wireCode = "model_not_found"  // the only thing an ephemeral conversation's order can name that does not exist
        case .contentRejected, .invalidMessage, .tooLarge: type = "invalid_request_error"
        case .quotaExceeded: type = "insufficient_quota"
        case .rateLimited: type = "rate_limit_exceeded"
        default: type = "api_error"
        }
        OpenAIError.respond(writer, status: HTTPResponseStatus(code), message, type: type, code: wireCode, retryAfterMs: retryAfterMs)
    }

    // MARK: GenerationOutput

    var isConnected: Bool { self.writer != nil }
    var isWritable: Bool { !self.streaming || (self.writer?.isWritable ?? false) }

    /// The head waits for the first chunk: an upstream that fails before any text still gets
    /// an HTTP error status, which SDKs retry.
    func writeStarted(_ generation: ChatGeneration) {}

    func writeDeltaIfWritable(_ generation: ChatGeneration, seq: Int64, text: Substring) -> Bool {
        // Not streamed: the generation keeps the answer, and it goes out whole at the end.
        guard self.streaming else { return true }
        guard let writer = self.writer, writer.isWritable else { return false }
        self.writeContentChunk(text.utf8, writer)
        return true
    }

    func writeHeldDelta(_ generation: ChatGeneration, _ held: DeltaMerger.PendingDelta) {
        guard self.streaming, let writer = self.writer else { return }
        self.writeContentChunk(Substring(held.text).utf8, writer)
    }

    private func writeContentChunk(_ text: Substring.UTF8View, _ writer: HTTPResponseWriter) {
        self.writeHeadIfNeeded(writer)
        var chunk = writer.allocator.buffer(capacity: self.chunkPrefix.readableBytes + text.count + 48)
        chunk.writeStaticString("data: ")
        chunk.writeImmutableBuffer(self.chunkPrefix)
        chunk.writeStaticString(#"{"content":"#)
        chunk.writeJSONString(text)
        chunk.writeStaticString("},\"finish_reason\":null}]}\n\n")
        writer.writeBody(chunk, flush: false)
    }

    /// Gateway tools run inside the gateway: the OpenAI wire has no event for them (a
    /// `tool_calls` delta would ask the client to run them), so only the answer shows.
    func writeToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall]) {}
    func writeToolResults(_ generation: ChatGeneration, _ runs: [ToolRun]) {}

    func writeClientToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall]) {
        guard self.streaming else {
            self.clientToolCalls = calls
            return
        }
        guard let writer = self.writer else { return }
        self.writeHeadIfNeeded(writer)
        var chunk = writer.allocator.buffer(capacity: 256)
        chunk.writeStaticString("data: ")
        chunk.writeImmutableBuffer(self.chunkPrefix)
        chunk.writeStaticString(#"{"tool_calls":"#)
        Self.writeToolCalls(calls, streamed: true, into: &chunk)
        chunk.writeStaticString("},\"finish_reason\":null}]}\n\n")
        writer.writeBody(chunk, flush: false)
    }

    /// `[{"index":0,"id":…,"type":"function","function":{"name":…,"arguments":…}}]` (streamed
    /// deltas carry each call's `index`; a whole message's calls do not).
    private static func writeToolCalls(_ calls: [ToolCall], streamed: Bool, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("[")
        for (index, call) in calls.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("{")
            if streamed { buffer.writeString(#""index":\#(index),"#) }
            buffer.writeStaticString(#""id":"#)
            buffer.writeJSONString(call.id)
            buffer.writeStaticString(#","type":"function","function":{"name":"#)
            buffer.writeJSONString(call.name)
            buffer.writeStaticString(#","arguments":"#)
            buffer.writeJSONString(call.arguments)
            buffer.writeStaticString("}}")
        }
        buffer.writeStaticString("]")
    }

    func writeDone(_ generation: ChatGeneration, _ end: GenerationEnd, cached: Bool, budgetNotice: GenerationStateMachine.BudgetNotice?) {
        guard let writer = self.writer else { return }
        // A failure before anything was sent (streamed: no chunk yet; not streamed: always):
        // an HTTP error the SDK maps to a retryable exception, not a cut answer that looks whole.
        if let error = end.error, !self.headWritten {
            self.writer = nil
            Self.respond(writer, error.code, error.message, retryAfterMs: Self.retryAfterMs(for: error.code))
            return
        }
        let usage = end.usage
        let usageJSON = #"{"prompt_tokens":\#(usage.promptTokens),"completion_tokens":\#(usage.completionTokens),"total_tokens":\#(usage.totalTokens)}"#
        let finishReason = end.finishReason == .cancelled || end.finishReason == .error ? "stop" : end.finishReason.rawValue
        if self.streaming {
            self.writeHeadIfNeeded(writer)
            var out = writer.allocator.buffer(capacity: 512)
            if let error = end.error {
                // Mid-stream failure: an error event, as OpenAI-compatible servers send it.
                out.writeStaticString("data: ")
                out.writeImmutableBuffer(OpenAIError.body(error.message, type: "api_error", code: error.code.rawValue))
                out.writeStaticString("\n\n")
            } else {
                out.writeStaticString("data: ")
                out.writeImmutableBuffer(self.chunkPrefix)
                out.writeString(#"{},"finish_reason":"\#(finishReason)"}]}"#)
                out.writeStaticString("\n\n")
                if self.includeUsage {
                    out.writeString(#"data: {"id":"\#(generation.id)","object":"chat.completion.chunk","created":\#(self.created),"model":"#)
                    out.writeJSONString(generation.model)
                    out.writeString(#","choices":[],"usage":\#(usageJSON)}"#)
                    out.writeStaticString("\n\n")
                }
            }
            out.writeStaticString("data: [DONE]\n\n")
            writer.writeBody(out, flush: false)
            writer.end()
        } else {
            var out = writer.allocator.buffer(capacity: generation.answerByteCount + 512)
            out.writeString(#"{"id":"\#(generation.id)","object":"chat.completion","created":\#(self.created),"model":"#)
            out.writeJSONString(generation.model)
            out.writeStaticString(#","choices":[{"index":0,"message":{"role":"assistant","content":"#)
            if self.clientToolCalls.isEmpty || generation.answerByteCount > 0 {
                out.writeJSONString(generation.answer)
            } else {
                out.writeStaticString("null")  // as OpenAI sends a turn that only calls tools
            }
            if !self.clientToolCalls.isEmpty {
                out.writeStaticString(#","tool_calls":"#)
                Self.writeToolCalls(self.clientToolCalls, streamed: false, into: &out)
            }
            out.writeString(#"},"finish_reason":"\#(finishReason)"}],"usage":\#(usageJSON)}"#)
            writer.respond(status: .ok, contentType: "application/json", body: out)
        }
        self.writer = nil
    }

    /// Retrying may help after these (the pipeline's own errors; an upstream's carry their advice in `InferenceError`).
    private static func retryAfterMs(for code: ErrorCode) -> Int64? {
        switch code {
        case .overloaded, .unavailable, .upstreamError, .rateLimited: 1000
        default: nil
        }
    }

    func flush() { self.writer?.flush() }

    func generationEnded(_ generation: ChatGeneration) {
        self.generation = nil
        self.writer = nil
    }

    func generationFailedToStart(_ generation: ChatGeneration, error: InferenceError) {
        self.generation = nil
        guard let writer = self.writer else { return }
        self.writer = nil
        Self.respond(writer, error.code, error.message, retryAfterMs: ChatGeneration.retryAfterMs(for: error))
    }

    private func writeHeadIfNeeded(_ writer: HTTPResponseWriter) {
        guard !self.headWritten else { return }
        self.headWritten = true
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/event-stream")
        headers.add(name: "Cache-Control", value: "no-cache")
        writer.writeHead(status: .ok, headers: headers)
        // The role first, as OpenAI does.
        var chunk = writer.allocator.buffer(capacity: self.chunkPrefix.readableBytes + 64)
        chunk.writeStaticString("data: ")
        chunk.writeImmutableBuffer(self.chunkPrefix)
        chunk.writeStaticString(#"{"role":"assistant","content":""},"finish_reason":null}]}"#)
        chunk.writeStaticString("\n\n")
        writer.writeBody(chunk, flush: false)
    }
}

@available(*, unavailable)
extension ChatCompletionResponder: Sendable {}

extension ChatMessage.Role {
    init(_ role: OpenAIChatRequest.Message.Role) {
        switch role {
        case .system: self = .system
        case .user: self = .user
        case .assistant: self = .assistant
        case .tool: self = .tool
        }
    }
}
