import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import SluiceProtocol
import Synchronization

/// An upstream speaking the OpenAI chat completions API with streaming: vLLM, TensorRT-LLM's
/// `trtllm-serve`, SGLang, llama.cpp's server. One HTTP/1.1 connection per generation, on the
/// caller's event loop; cancel closes it, which is what makes these servers stop generating.
public struct OpenAICompatibleEngine: InferenceEngine {
    public struct Configuration: Sendable, Equatable {
        /// `http://` or `https://`, without `/v1` (e.g. `http://127.0.0.1:8000`).
        public var baseURL: URL
        /// The model to ask for; nil: the first of `GET {base}/v1/models`, fetched once.
        public var model: String?
        /// Sent as `Authorization: Bearer …` when set.
        public var apiKey: String?
        public var timeouts = UpstreamTimeouts()
        /// Certificates trusted for `https://` (the system's by default).
        public var trustRoots: NIOSSLTrustRoots = .default
        /// The largest stream event accepted.
        public var maximumEventSize = 1 << 20

        public init(baseURL: URL, model: String? = nil, apiKey: String? = nil, timeouts: UpstreamTimeouts = UpstreamTimeouts()) {
            self.baseURL = baseURL
            self.model = model
            self.apiKey = apiKey
            self.timeouts = timeouts
        }
    }

    public let configuration: Configuration
    private let endpoint: UpstreamEndpoint
    private let discovered: DiscoveredModel

    /// The configured model, else the discovered one, else "default" until discovery succeeds.
    public var defaultModel: String {
        self.configuration.model ?? self.discovered.name ?? "default"
    }

    public init(configuration: Configuration) throws(UpstreamConfigurationError) {
        self.configuration = configuration
        self.endpoint = try UpstreamEndpoint(baseURL: configuration.baseURL, trustRoots: configuration.trustRoots)
        self.discovered = DiscoveredModel()
    }

    /// Must be called on `eventLoop`.
    public func startGeneration(
        _ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink
    ) -> any GenerationHandle {
        if self.configuration.model == nil && request.model == nil {
            // Fire and forget: this generation goes out as "default", later ones get the name.
            _ = self.discoverModel(on: eventLoop)
        }
        let body = Self.requestBody(request, model: request.model ?? self.defaultModel)
        let head = self.endpoint.requestHead(
            .POST, path: "/v1/chat/completions", apiKey: self.configuration.apiKey,
            bodyLength: body.readableBytes, accept: "text/event-stream", extraHeaders: request.traceHeaders)
        let generation = StreamingHTTPRequest(
            endpoint: self.endpoint, head: head, body: body, decoder: OpenAIStreamDecoder(),
            timeouts: self.configuration.timeouts, maximumEventSize: self.configuration.maximumEventSize,
            eventLoop: eventLoop, sink: sink)
        generation.start()
        return generation
    }

    /// The model name: the configured one, or the first of `GET {base}/v1/models`, asked once
    /// (again only after a failure). Call it at startup to know the name before the first client.
    public func discoverModel(on eventLoop: any EventLoop) -> EventLoopFuture<String> {
        if let model = self.configuration.model ?? self.discovered.name {
            return eventLoop.makeSucceededFuture(model)
        }
        let discovered = self.discovered
        switch discovered.begin(on: eventLoop) {
        case .known(let name):
            return eventLoop.makeSucceededFuture(name)
        case .waiting(let future):
            return future
        case .fetch(let promise):
            let head = self.endpoint.requestHead(
                .GET, path: "/v1/models", apiKey: self.configuration.apiKey, bodyLength: nil, accept: "application/json")
            HTTPFetch.fetch(head, from: self.endpoint, timeouts: self.configuration.timeouts, on: eventLoop)
                .flatMapThrowing { response throws(ModelDiscoveryError) -> String in
                    try Self.firstModel(response)
                }
                .whenComplete { result in
                    discovered.complete(result)
                    promise.completeWith(result)
                }
            return promise.futureResult
        }
    }

    static func firstModel(_ response: HTTPFetch.Response) throws(ModelDiscoveryError) -> String {
        guard response.status == 200 else {
            throw ModelDiscoveryError(message: "GET /v1/models: HTTP \(response.status): \(UpstreamErrorMessage.from(body: response.body))")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any],
              let models = object["data"] as? [[String: Any]],
              let id = models.first?["id"] as? String
        else { throw ModelDiscoveryError(message: "GET /v1/models: no data[].id in the answer") }
        return id
    }

    /// The request body, written directly (no encoder): only the fields every server knows,
    /// plus vLLM's `continuous_usage_stats` (others ignore it).
    static func requestBody(_ request: GenerationRequest, model: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(256 + request.messages.reduce(0) { $0 + $1.content.utf8.count + 32 })
        buffer.writeStaticString(#"{"model":"#)
        buffer.writeJSONString(model)
        buffer.writeStaticString(#","messages":["#)
        for (index, message) in request.messages.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString(#"{"role":"#)
            buffer.writeJSONString(message.role.rawValue)
            buffer.writeStaticString(#","content":"#)
            buffer.writeJSONString(message.content)
            if !message.toolCalls.isEmpty {
                buffer.writeStaticString(#","tool_calls":["#)
                for (index, call) in message.toolCalls.enumerated() {
                    if index > 0 { buffer.writeStaticString(",") }
                    buffer.writeStaticString(#"{"id":"#)
                    buffer.writeJSONString(call.id)
                    buffer.writeStaticString(#","type":"function","function":{"name":"#)
                    buffer.writeJSONString(call.name)
                    buffer.writeStaticString(#","arguments":"#)
                    buffer.writeJSONString(call.arguments)
                    buffer.writeStaticString("}}")
                }
                buffer.writeStaticString("]")
            }
            if let callID = message.toolCallID {
                buffer.writeStaticString(#","tool_call_id":"#)
                buffer.writeJSONString(callID)
            }
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString(#"],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true},"max_tokens":"#)
        buffer.writeDecimal(Int64(request.maxTokens))
        if let temperature = request.temperature, temperature.isFinite {
            buffer.writeStaticString(#","temperature":"#)
            buffer.writeString("\(temperature)")
        }
        if !request.tools.isEmpty {
            buffer.writeStaticString(#","tools":["#)
            for (index, tool) in request.tools.enumerated() {
                if index > 0 { buffer.writeStaticString(",") }
                buffer.writeStaticString(#"{"type":"function","function":{"name":"#)
                buffer.writeJSONString(tool.name)
                buffer.writeStaticString(#","description":"#)
                buffer.writeJSONString(tool.description)
                buffer.writeStaticString(#","parameters":"#)
                // Validated JSON (the registry parsed it), written as is.
                buffer.writeString(tool.parameters)
                buffer.writeStaticString("}}")
            }
            buffer.writeStaticString("]")
        }
        switch request.toolChoice {
        case nil: break
        case .none?: buffer.writeStaticString(#","tool_choice":"none""#)
        case .auto?: buffer.writeStaticString(#","tool_choice":"auto""#)
        case .required?: buffer.writeStaticString(#","tool_choice":"required""#)
        case .function(let name)?:
            buffer.writeStaticString(#","tool_choice":{"type":"function","function":{"name":"#)
            buffer.writeJSONString(name)
            buffer.writeStaticString("}}")
        }
        buffer.writeStaticString("}")
        return buffer
    }
}

/// Why `/v1/models` gave no name.
public struct ModelDiscoveryError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}

/// The model name found by discovery, shared by all copies of an engine and all event loops.
final class DiscoveredModel: Sendable {
    private enum State {
        case unknown
        case fetching(EventLoopFuture<String>)
        case known(String)
    }

    enum Begin {
        case known(String)
        case waiting(EventLoopFuture<String>)
        /// The caller fetches and completes the promise (and `complete`s this).
        case fetch(EventLoopPromise<String>)
    }

    private let state = Mutex(State.unknown)

    var name: String? {
        self.state.withLock { state in
            if case .known(let name) = state { return name }
            return nil
        }
    }

    func begin(on eventLoop: any EventLoop) -> Begin {
        self.state.withLock { state in
            switch state {
            case .known(let name):
                return .known(name)
            case .fetching(let future):
                return .waiting(future.hop(to: eventLoop))
            case .unknown:
                let promise = eventLoop.makePromise(of: String.self)
                state = .fetching(promise.futureResult)
                return .fetch(promise)
            }
        }
    }

    func complete(_ result: Result<String, any Error>) {
        self.state.withLock { state in
            switch result {
            case .success(let name): state = .known(name)
            case .failure: state = .unknown  // the next generation asks again
            }
        }
    }
}

/// The OpenAI chat completion chunk dialect.
struct OpenAIStreamDecoder: UpstreamStreamDecoder {
    /// `finish_reason` arrives in a chunk before the usage chunk and `[DONE]`.
    private var finishReason: FinishReason?
    /// Tool calls arrive in pieces (`delta.tool_calls[i]`: the id and name first, then the
    /// arguments a few characters at a time), keyed by `index`.
    private var toolCalls: [Int: ToolCall] = [:]
    /// Bounds what a misbehaving upstream can make us hold.
    static let maximumToolCalls = 16
    static let maximumArgumentsBytes = 64 * 1024

    mutating func decode(_ event: SSEEvent) -> UpstreamStreamOutput {
        if event.data == "[DONE]" {
            var output = UpstreamStreamOutput(end: .finish(self.finishReason ?? .stop))
            if !self.toolCalls.isEmpty {
                output.toolCalls = self.toolCalls.sorted { $0.key < $1.key }.map(\.value)
                self.toolCalls = [:]
            }
            return output
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(event.data.utf8)) as? [String: Any] else {
            if event.type == "error" {
                return UpstreamStreamOutput(end: .fail(InferenceError(.upstreamError(status: nil), event.data)))
            }
            return UpstreamStreamOutput(end: .fail(InferenceError(.upstreamError(status: nil), "malformed stream chunk")))
        }
        if object["error"] != nil || event.type == "error" || object["object"] as? String == "error" {
            let message = UpstreamErrorMessage.from(object: object) ?? "upstream error"
            return UpstreamStreamOutput(end: .fail(InferenceError(.upstreamError(status: nil), message)))
        }
        var output = UpstreamStreamOutput()
        if let choices = object["choices"] as? [[String: Any]], let choice = choices.first {
            if let delta = choice["delta"] as? [String: Any] {
                if let content = delta["content"] as? String, !content.isEmpty {
                    output.text = Substring(content)
                }
                if let calls = delta["tool_calls"] as? [[String: Any]], let failure = self.accumulate(calls) {
                    return UpstreamStreamOutput(end: .fail(failure))
                }
            }
            if let reason = choice["finish_reason"] as? String {
                self.finishReason = reason == "length" ? .length : .stop
            }
        }
        // Counts are range-checked here (non-negative integers, clamped): nothing further on
        // adds or stores a value an upstream made up.
        if let usage = object["usage"] as? [String: Any],
           let prompt = Usage.count(fromJSON: usage["prompt_tokens"]), let completion = Usage.count(fromJSON: usage["completion_tokens"]) {
            output.usage = (prompt, completion)
        }
        return output
    }

    func endOfStream() -> UpstreamStreamEnd {
        .fail(InferenceError(.upstreamError(status: nil), "stream ended early (no [DONE])"))
    }

    /// Adds `delta.tool_calls` pieces; an error when they exceed the bounds.
    private mutating func accumulate(_ pieces: [[String: Any]]) -> InferenceError? {
        for (position, piece) in pieces.enumerated() {
            // Only a key: the calls live in a dictionary bounded by `maximumToolCalls`, so an
            // index of 10^9 costs one entry, not an array of that size.
            let index = piece["index"].flatMap { JSONNumber.integer($0) } ?? position
            let function = piece["function"] as? [String: Any]
            var call = self.toolCalls[index] ?? ToolCall(id: "", name: "", arguments: "")
            if self.toolCalls[index] == nil && self.toolCalls.count >= Self.maximumToolCalls {
                return InferenceError(.upstreamError(status: nil), "more than \(Self.maximumToolCalls) tool calls in one turn")
            }
            if let id = piece["id"] as? String, !id.isEmpty { call.id = id }
            if let name = function?["name"] as? String, !name.isEmpty, call.name.isEmpty { call.name = name }
            if let arguments = function?["arguments"] as? String { call.arguments += arguments }
            guard call.arguments.utf8.count <= Self.maximumArgumentsBytes else {
                return InferenceError(.upstreamError(status: nil), "tool call arguments larger than \(Self.maximumArgumentsBytes) bytes")
            }
            if call.id.isEmpty { call.id = "call_\(index)" }
            self.toolCalls[index] = call
        }
        return nil
    }
}
