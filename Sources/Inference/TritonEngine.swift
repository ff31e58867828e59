import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceProtocol

/// Triton Inference Server's generate extension (as TensorRT-LLM's Triton backend serves it):
/// `POST {base}/v2/models/{model}/generate_stream`, answered with SSE events carrying
/// `text_output`. Triton reports no token counts, so this engine reports no usage (the gateway
/// counts). Shares the connection code with `OpenAICompatibleEngine`.
public struct TritonEngine: InferenceEngine {
    public struct Configuration: Sendable, Equatable {
        /// `http://` or `https://`, the server root (e.g. `http://127.0.0.1:8000`).
        public var baseURL: URL
        /// The Triton model (for TensorRT-LLM usually the `ensemble`).
        public var model: String
        /// Sent as `Authorization: Bearer …` when set (for a proxy in front of Triton).
        public var apiKey: String?
        public var timeouts = UpstreamTimeouts()
        /// Certificates trusted for `https://` (the system's by default).
        public var trustRoots: NIOSSLTrustRoots = .default
        /// The largest stream event accepted.
        public var maximumEventSize = 1 << 20

        public init(baseURL: URL, model: String = "ensemble", apiKey: String? = nil, timeouts: UpstreamTimeouts = UpstreamTimeouts()) {
            self.baseURL = baseURL
            self.model = model
            self.apiKey = apiKey
            self.timeouts = timeouts
        }
    }

    public let configuration: Configuration
    private let endpoint: UpstreamEndpoint

    public var defaultModel: String { self.configuration.model }

    public init(configuration: Configuration) throws(UpstreamConfigurationError) {
        self.configuration = configuration
        self.endpoint = try UpstreamEndpoint(baseURL: configuration.baseURL, trustRoots: configuration.trustRoots)
    }

    /// Must be called on `eventLoop`.
    public func startGeneration(
        _ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink
    ) -> any GenerationHandle {
        let model = request.model ?? self.configuration.model
        let body = Self.requestBody(request)
        let head = self.endpoint.requestHead(
            .POST, path: "/v2/models/\(Self.pathSegment(model))/generate_stream", apiKey: self.configuration.apiKey,
            bodyLength: body.readableBytes, accept: "text/event-stream", extraHeaders: request.traceHeaders)
        let generation = StreamingHTTPRequest(
            endpoint: self.endpoint, head: head, body: body, decoder: TritonStreamDecoder(),
            timeouts: self.configuration.timeouts, maximumEventSize: self.configuration.maximumEventSize,
            eventLoop: eventLoop, sink: sink)
        generation.start()
        return generation
    }

    /// A plain-text prompt for a model behind a raw text endpoint: one `role: content` line per
    /// message, then `assistant:` for the model to continue.
    static func prompt(for messages: [ChatMessage]) -> String {
        var prompt = ""
        for message in messages {
            prompt += message.role.rawValue
            prompt += ": "
            prompt += message.content
            prompt += "\n"
        }
        prompt += "assistant:"
        return prompt
    }

    static func requestBody(_ request: GenerationRequest) -> ByteBuffer {
        let prompt = Self.prompt(for: request.messages)
        var buffer = ByteBuffer()
        buffer.reserveCapacity(prompt.utf8.count + 96)
        buffer.writeStaticString(#"{"text_input":"#)
        buffer.writeJSONString(prompt)
        buffer.writeStaticString(#","max_tokens":"#)
        buffer.writeDecimal(Int64(request.maxTokens))
        buffer.writeStaticString(#","stream":true"#)
        if let temperature = request.temperature, temperature.isFinite {
            buffer.writeStaticString(#","temperature":"#)
            buffer.writeString("\(temperature)")
        }
        buffer.writeStaticString("}")
        return buffer
    }

    /// Model names may hold characters a path cannot.
    static func pathSegment(_ name: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/")
        return name.addingPercentEncoding(withAllowedCharacters: allowed) ?? name
    }
}

/// Triton generate-stream events: `{"text_output": "…", …}`; the last may carry
/// `finish_reason` or `"is_final": true`; `{"error": "…"}` reports a failure.
struct TritonStreamDecoder: UpstreamStreamDecoder {
    mutating func decode(_ event: SSEEvent) -> UpstreamStreamOutput {
        guard let object = try? JSONSerialization.jsonObject(with: Data(event.data.utf8)) as? [String: Any] else {
            return UpstreamStreamOutput(end: .fail(InferenceError(.upstreamError(status: nil), "malformed stream event")))
        }
        if object["error"] != nil {
            let message = UpstreamErrorMessage.from(object: object) ?? "upstream error"
            return UpstreamStreamOutput(end: .fail(InferenceError(.upstreamError(status: nil), message)))
        }
        var output = UpstreamStreamOutput()
        if let text = object["text_output"] as? String, !text.isEmpty {
            output.text = Substring(text)
        }
        if let reason = object["finish_reason"] as? String {
            output.end = .finish(reason == "length" ? .length : .stop)
        } else if object["is_final"] as? Bool == true {
            output.end = .finish(.stop)
        }
        return output
    }

    /// Triton ends the stream by ending the response.
    func endOfStream() -> UpstreamStreamEnd {
        .finish(.stop)
    }
}
