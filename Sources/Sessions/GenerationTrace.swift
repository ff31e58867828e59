import Inference
import NIOCore
import NIOHTTP1
import SluiceProtocol
import Tracing

/// Reads trace propagation headers (`traceparent`) from a client's request.
struct HTTPHeadersExtractor: Extractor {
    func extract(key: String, from carrier: HTTPHeaders) -> String? { carrier.first(name: key) }
}

/// Writes trace propagation headers for an upstream request.
struct HeaderListInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [(name: String, value: String)]) {
        carrier.append((key, value))
    }
}

/// A generation's span: `chat {model}` (kind client, as the OpenTelemetry GenAI conventions
/// name inference calls), from `chat.send` to `generation.done`, with the upstream's timings as
/// events and the outcome and usage as attributes. With no tracer configured the span is a
/// no-op and nothing here builds attributes; nothing is done per token either way.
struct GenerationTrace {
    private let span: any Span
    private let startedAt: NIODeadline

    init(
        tracer: any Tracer, parent: InstrumentationContext, model: String, upstream: String,
        generationID: String, conversationID: String, requestID: String?, request: GenerationRequest, startedAt: NIODeadline
    ) {
        self.span = tracer.startSpan("chat \(model)", context: parent, ofKind: .client)
        self.startedAt = startedAt
        guard self.span.isRecording else { return }
        self.span.updateAttributes { attributes in
            attributes["gen_ai.operation.name"] = "chat"
            attributes["gen_ai.request.model"] = model
            attributes["gen_ai.request.max_tokens"] = request.maxTokens
            if let temperature = request.temperature { attributes["gen_ai.request.temperature"] = temperature }
            attributes["gen_ai.conversation.id"] = conversationID
            attributes["sluice.generation.id"] = generationID
            if let requestID { attributes["sluice.request.id"] = requestID }
            attributes["sluice.upstream"] = upstream
            attributes["sluice.context.messages"] = request.messages.count
        }
    }

    /// The headers that make the upstream's own span a child of this one.
    func propagationHeaders(_ tracer: any Tracer) -> [(name: String, value: String)] {
        guard self.span.context.isPropagated else { return [] }
        var headers: [(name: String, value: String)] = []
        tracer.inject(self.span.context, into: &headers, using: HeaderListInjector())
        return headers
    }

    /// The upstream answered with a 2xx head (the simulator: at once).
    func upstreamAccepted() {
        guard self.span.isRecording else { return }
        self.span.addEvent(SpanEvent(name: "upstream.accepted"))
        self.span.attributes["sluice.upstream.accept_ms"] = self.milliseconds()
    }

    func firstToken() {
        guard self.span.isRecording else { return }
        self.span.addEvent(SpanEvent(name: "first_token"))
        self.span.attributes["sluice.time_to_first_token_ms"] = self.milliseconds()
    }

    func cancelRequested() {
        guard self.span.isRecording else { return }
        self.span.addEvent(SpanEvent(name: "cancel.requested"))
    }

    /// The upstream failed before accepting the request: no generation happened.
    func failedToStart(_ error: InferenceError) {
        guard self.span.isRecording else {
            self.span.end()
            return
        }
        self.span.attributes["error.type"] = error.code.rawValue
        self.span.setStatus(SpanStatus(code: .error, message: error.message))
        self.span.end()
    }

    func ended(_ end: GenerationEnd, model: String) {
        guard self.span.isRecording else {
            self.span.end()
            return
        }
        self.span.updateAttributes { attributes in
            attributes["gen_ai.response.model"] = model
            attributes["gen_ai.response.finish_reasons"] = [end.finishReason.rawValue]
            attributes["gen_ai.usage.input_tokens"] = end.usage.promptTokens
            attributes["gen_ai.usage.output_tokens"] = end.usage.completionTokens
            attributes["sluice.usage.source"] = end.usage.source.rawValue
            attributes["sluice.deltas"] = Int(end.seq)
            attributes["sluice.duration_ms"] = self.milliseconds()
            if let error = end.error { attributes["error.type"] = error.code.rawValue }
        }
        if let error = end.error {
            self.span.setStatus(SpanStatus(code: .error, message: error.message))
        }
        self.span.end()
    }

    private func milliseconds() -> Double {
        Double((NIODeadline.now() - self.startedAt).nanoseconds) / 1_000_000
    }
}

extension InstrumentationContext {
    /// False for the empty context of a no-op tracer: then there is nothing to send upstream.
    fileprivate var isPropagated: Bool { !self.isEmpty }
}
