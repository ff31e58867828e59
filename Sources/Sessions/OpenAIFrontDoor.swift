import Foundation
import Inference
import NIOCore
import NIOHTTP1
import Policy
import SluiceProtocol
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

    static func respond(_ writer: HTTPResponseWriter, status: HTTPResponseStatus, _ message: String, type: String, code: String?,
                        param: String? = nil, retryAfterMs: Int64? = nil) {
        let headers = retryAfterMs.map { [("Retry-After", RetryAfter.headerValue(milliseconds: $0))] } ?? []
        writer.respond(status: status, contentType: "application/json", body: Self.body(message, type: type, code: code, param: param), headers: headers)
    }
}

final class ModelsResponder: HTTPRouteResponder {
    private let application: ChatApplication

    init(application: ChatApplication) {
        self.application = application
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        if case .failure(let failure) = self.application.policy.identify(head) {
            OpenAIError.respond(writer, status: .unauthorized, failure.message, type: "invalid_request_error", code: "invalid_api_key")
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

/// One `POST /v1/chat/completions`, on its connection's event loop: the policy checks, then the
/// upstream generation with this responder as its sink.
final class ChatCompletionResponder: HTTPRouteResponder, GenerationSink {
    private let application: ChatApplication
    private var writer: HTTPResponseWriter?
    private var handle: (any GenerationHandle)?
    private var admission: ChatApplication.Admission?
    private var user = ConversationHistory.anonymous
    private var streaming = false
    private var includeUsage = false
    private var headWritten = false
    private var ended = false
    private let id = "chatcmpl-" + Identifier.make("")
    private let created = Int(Date().timeIntervalSince1970)
    private var model = ""
    private var deltas = 0
    private var answerBytes = 0
    /// The answer reached its max_tokens or byte bound: the rest is dropped, the answer ends.
    private var limitReached = false
    private var text = ByteBuffer()
    private var usage: (prompt: Int, completion: Int)?
    private var promptEstimate = 0
    private var metrics: ChatMetrics.Upstream?
    private let startedAt = NIODeadline.now()
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":` once.
    private var chunkPrefix = ByteBuffer()
    /// What the answer collected for a non-streamed response holds of the memory budget.
    private var charge = MemoryCharge(.generation)
    /// The memory budget had no room for more of a non-streamed answer: 503 at the end of this read.
    private var overBudget = false

    init(application: ChatApplication) {
        self.application = application
    }

    /// It carries the whole context: the decoder's bound for it (eight contents, escaped, plus 16 KiB).
    var maxRequestBodyBytes: Int { self.application.configuration.requestLimits.maxOpenAIBodyBytes }

    struct Request {
        var model: String?
        var messages: [ChatMessage]
        var stream: Bool
        var includeUsage: Bool
        var maxTokens: Int?
        var temperature: Double?
    }

    /// The body, decoded and checked by `OpenAIChatRequestDecoder` (sizes, types, ranges).
    static func parse(_ body: ByteBuffer, limits: RequestLimits) -> Result<Request, OpenAIRequestProblem> {
        OpenAIChatRequestDecoder.decode(body, limits: limits).map { decoded in
            Request(
                model: decoded.model, messages: decoded.messages.map { ChatMessage(role: ChatMessage.Role($0.role), content: $0.content) },
                stream: decoded.stream, includeUsage: decoded.includeUsage, maxTokens: decoded.maxTokens, temperature: decoded.temperature)
        }
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        self.writer = writer
        guard head.method == .POST else {
            OpenAIError.respond(writer, status: .methodNotAllowed, "use POST", type: "invalid_request_error", code: nil)
            return
        }
        let policy = self.application.policy
        let address = policy.limiter.limits.clientAddress(head, peer: writer.remoteAddress)
        if let refusal = policy.limiter.admitConnection(from: address) {
            OpenAIError.respond(writer, status: HTTPResponseStatus(.rateLimited), refusal.message, type: "rate_limit_exceeded", code: "rate_limited",
                                retryAfterMs: refusal.retryAfterMs)
            return
        }
        switch policy.identify(head) {
        case .failure(let failure):
            OpenAIError.respond(writer, status: .unauthorized, failure.message, type: "invalid_request_error", code: "invalid_api_key")
            return
        case .success(let identity):
            self.user = identity?.userID ?? ConversationHistory.anonymous
        }
        var request: Request
        switch Self.parse(body, limits: self.application.configuration.requestLimits) {
        case .failure(let problem):
            OpenAIError.respond(writer, status: problem.tooLarge ? .payloadTooLarge : .badRequest, problem.message, type: "invalid_request_error",
                                code: problem.tooLarge ? "too_large" : nil, param: problem.param)
            return
        case .success(let parsed):
            request = parsed
        }
        let prompt = request.messages.last(where: { $0.role == .user })?.content ?? ""
        let route: InferenceRouter.Route
        switch self.application.router.route(model: request.model, prompt: prompt) {
        case .failure(let unknown):
            OpenAIError.respond(writer, status: .notFound, unknown.message, type: "invalid_request_error", code: "model_not_found")
            return
        case .success(let found):
            route = found
        }
        self.streaming = request.stream
        self.includeUsage = request.includeUsage
        self.model = route.model ?? route.upstream.engine.defaultModel
        self.metrics = self.application.metrics.upstream(route.upstream.name)
        self.promptEstimate = ChatApplication.promptEstimate(request.messages)
        var prefix = ByteBuffer()
        prefix.writeString(#"{"id":""#)
        prefix.writeString(self.id)
        prefix.writeString(#"","object":"chat.completion.chunk","created":\#(self.created),"model":"#)
        prefix.writeJSONString(self.model)
        prefix.writeString(#","choices":[{"index":0,"delta":"#)
        self.chunkPrefix = prefix
        // Every user message through the input filter; the last one also to the moderation service.
        for index in request.messages.indices where request.messages[index].role == .user {
            switch self.application.policy.inputFilter.check(request.messages[index].content) {
            case .rejected(let rule):
                self.application.logger.notice("input refused", metadata: ["sluice.user": "\(self.user)", "sluice.rule": "\(rule)"])
                self.application.metrics.contentRejected.increment()
                OpenAIError.respond(writer, status: .badRequest, "the message was refused by the content policy", type: "invalid_request_error",
                                    code: "content_rejected")
                return
            case .allowed(let cleaned):
                request.messages[index].content = cleaned
            }
        }
        let responder = NIOLoopBound(self, eventLoop: writer.eventLoop)
        let maxTokens = request.maxTokens ?? self.application.configuration.defaultMaxTokens
        let application = self.application
        let user: String = self.user
        let moderated = request
        let check = self.application.policy.moderation != nil ? request.messages.last(where: { $0.role == .user })?.content : nil
        let loop = writer.eventLoop
        let admit: @Sendable () -> Void = {
            application.admit(user: user, address: address, context: moderated.messages, maxTokens: maxTokens, on: loop) { result in
                responder.value.admitted(result, request: moderated, route: route)
            }
        }
        guard let check else {
            admit()
            return
        }
        self.application.moderate(check, user: user, on: loop) { result in
            switch result {
            case .failure(let refusal): responder.value.admitted(.failure(refusal), request: moderated, route: route)
            case .success: admit()
            }
        }
    }

    private func admitted(_ result: Result<ChatApplication.Admission, ChatApplication.AdmissionRefusal>, request: Request, route: InferenceRouter.Route) {
        let admission: ChatApplication.Admission
        switch result {
        case .failure(let refusal):
            guard let writer = self.writer else { return }
            let type = refusal.code == .quotaExceeded ? "insufficient_quota"
                : (refusal.code == .contentRejected ? "invalid_request_error" : (refusal.code == .unavailable ? "api_error" : "rate_limit_exceeded"))
            OpenAIError.respond(writer, status: HTTPResponseStatus(refusal.code), refusal.message, type: type, code: refusal.code.rawValue,
                                retryAfterMs: refusal.retryAfterMs)
            self.writer = nil
            return
        case .success(let admitted):
            admission = admitted
        }
        guard let writer = self.writer else {
            self.application.settle(admission, user: self.user, usedTokens: 0)
            return
        }
        self.admission = admission
        var generation = GenerationRequest(
            messages: request.messages, model: route.model, maxTokens: admission.grant.maxTokens, temperature: request.temperature)
        generation.user = self.user
        let handle = route.upstream.engine.startGeneration(generation, on: writer.eventLoop, sink: self)
        if self.ended { handle.cancel() } else { self.handle = handle }
    }

    func clientDisconnected() {
        self.writer = nil
        guard !self.ended else { return }
        self.handle?.cancel()
        self.handle = nil
        self.finish(.cancelled)
    }

    // MARK: GenerationSink

    func generationDidProduce(_ text: Substring) {
        guard !self.ended, !self.limitReached, !self.overBudget else { return }
        if let grant = self.admission?.grant {
            // Past max_tokens, or the byte bound: cut, whatever the upstream does.
            if self.deltas >= grant.maxTokens || self.answerBytes.addingSaturating(text.utf8.count) > GenerationRequest.maxAnswerBytes(forTokens: grant.maxTokens) {
                self.limitReached = true
                return
            }
            // A budget smaller than the request's max_tokens ends it right at the budget.
            if grant.cutByBudget && self.deltas + 1 >= grant.maxTokens { self.limitReached = true }
        }
        if self.deltas == 0 { self.metrics?.timeToFirstToken.recordInterval(since: self.startedAt) }
        self.deltas += 1
        self.answerBytes = self.answerBytes.addingSaturating(text.utf8.count)
        if self.streaming {
            self.writeHeadIfNeeded()
            var chunk = ByteBuffer()
            chunk.writeString("data: ")
            chunk.writeImmutableBuffer(self.chunkPrefix)
            chunk.writeString(#"{"content":"#)
            chunk.writeJSONString(text.utf8)
            chunk.writeString("},\"finish_reason\":null}]}\n\n")
            self.writer?.writeBody(chunk, flush: false)
        } else {
            self.text.writeSubstring(text)
            if self.text.capacity > self.charge.held,
               !self.charge.grow(to: self.text.capacity, granule: 16 * 1024, in: self.application.hub.budget)
            {
                self.overBudget = true
            }
        }
    }

    func generationDidReportUsage(promptTokens: Int, completionTokens: Int) {
        self.usage = (promptTokens, completionTokens)
    }

    func generationDidEndBatch() {
        guard !self.ended else { return }
        if self.overBudget {
            // Nothing was sent yet (a non-streamed answer): a retryable 503, and the answer dropped.
            self.handle?.cancel()
            self.handle = nil
            self.ended = true
            self.application.hub.countOverBudget()
            self.metrics?.request(status: ErrorCode.overloaded.rawValue)
            if let admission = self.admission {
                let used = (self.usage?.prompt ?? self.promptEstimate).addingSaturating(self.deltas)
                self.application.settle(admission, user: self.user, usedTokens: used, recordingAs: self.id)
            }
            self.text = ByteBuffer()
            self.charge.releaseAll(to: self.application.hub.budget)
            if let writer = self.writer {
                OpenAIError.respond(writer, status: HTTPResponseStatus(.overloaded), "the server's memory budget is exhausted; retry shortly",
                                    type: "api_error", code: ErrorCode.overloaded.rawValue, retryAfterMs: 1000)
                self.writer = nil
            }
            return
        }
        // max_tokens reached (the request's, or a smaller budget's): stop there.
        if self.limitReached {
            self.handle?.cancel()
            self.handle = nil
            self.finish(.length)
            return
        }
        self.writer?.flush()
    }

    func generationDidFinish(_ reason: FinishReason) {
        self.handle = nil
        self.finish(reason)
    }

    func generationDidFail(_ error: InferenceError) {
        self.handle = nil
        guard !self.ended else { return }
        guard self.headWritten || !self.streaming && self.deltas > 0 else {
            // Nothing sent yet: an HTTP error the SDK maps to a retryable exception.
            self.ended = true
            self.metrics?.request(status: error.code.rawValue)
            if let admission = self.admission { self.application.settle(admission, user: self.user, usedTokens: 0) }
            if let writer = self.writer {
                OpenAIError.respond(writer, status: HTTPResponseStatus(error.code), error.message, type: "api_error", code: error.code.rawValue,
                                    retryAfterMs: ChatGeneration.retryAfterMs(for: error))
                self.writer = nil
            }
            return
        }
        self.finish(.error, error: error)
    }

    // MARK: Output

    private func writeHeadIfNeeded() {
        guard !self.headWritten, let writer = self.writer else { return }
        self.headWritten = true
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/event-stream")
        headers.add(name: "Cache-Control", value: "no-cache")
        writer.writeHead(status: .ok, headers: headers)
        // The role first, as OpenAI does.
        var chunk = ByteBuffer()
        chunk.writeString("data: ")
        chunk.writeImmutableBuffer(self.chunkPrefix)
        chunk.writeString(#"{"role":"assistant","content":""},"finish_reason":null}]}"#)
        chunk.writeString("\n\n")
        writer.writeBody(chunk, flush: false)
    }

    private func finish(_ reason: FinishReason, error: InferenceError? = nil) {
        guard !self.ended else { return }
        self.ended = true
        defer { self.charge.releaseAll(to: self.application.hub.budget) }
        // The upstream's counts are clamped where they are decoded; the sum saturates anyway.
        let usage = self.usage.map { Usage(promptTokens: $0.prompt, completionTokens: $0.completion, source: .upstream) }
            ?? Usage(promptTokens: self.promptEstimate, completionTokens: self.deltas, source: .gateway)
        self.metrics?.latency.recordInterval(since: self.startedAt)
        self.metrics?.request(status: error?.code.rawValue ?? reason.rawValue)
        // Nothing is stored for this door, so the usage is recorded on its own: it counts against quotas.
        if let admission = self.admission { self.application.settle(admission, user: self.user, usedTokens: usage.totalTokens, recordingAs: self.id) }
        guard let writer = self.writer else { return }
        let finishReason = reason == .cancelled || reason == .error ? "stop" : reason.rawValue
        let usageJSON = #"{"prompt_tokens":\#(usage.promptTokens),"completion_tokens":\#(usage.completionTokens),"total_tokens":\#(usage.totalTokens)}"#
        if self.streaming {
            self.writeHeadIfNeeded()
            var out = ByteBuffer()
            if let error {
                // Mid-stream failure: an error event, as OpenAI-compatible servers send it.
                out.writeString("data: ")
                out.writeImmutableBuffer(OpenAIError.body(error.message, type: "api_error", code: error.code.rawValue))
                out.writeString("\n\n")
            } else {
                out.writeString("data: ")
                out.writeImmutableBuffer(self.chunkPrefix)
                out.writeString(#"{},"finish_reason":"\#(finishReason)"}]}"#)
                out.writeString("\n\n")
                if self.includeUsage {
                    out.writeString(#"data: {"id":"\#(self.id)","object":"chat.completion.chunk","created":\#(self.created),"model":"#)
                    out.writeJSONString(self.model)
                    out.writeString(#","choices":[],"usage":\#(usageJSON)}"#)
                    out.writeString("\n\n")
                }
            }
            out.writeString("data: [DONE]\n\n")
            writer.writeBody(out, flush: true)
            writer.end()
        } else {
            var out = ByteBuffer()
            out.writeString(#"{"id":"\#(self.id)","object":"chat.completion","created":\#(self.created),"model":"#)
            out.writeJSONString(self.model)
            out.writeString(#","choices":[{"index":0,"message":{"role":"assistant","content":"#)
            out.writeJSONString(String(buffer: self.text))
            out.writeString(#"},"finish_reason":"\#(finishReason)"}],"usage":\#(usageJSON)}"#)
            writer.respond(status: .ok, contentType: "application/json", body: out)
        }
        self.writer = nil
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
