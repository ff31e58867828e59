import Foundation
import Inference
import NIOCore
@testable import Sessions

/// The `POST /v1/chat/completions` request decoder on any body: a refusal is a `Problem` (HTTP
/// 400); an accepted request respects the decoder's limits and, re-encoded as an OpenAI client
/// would send it, decodes to the same request.
///
/// Input: [content limit choice] body...
enum OpenAIRequestTarget {
    static let limits = [8, 64, 1024, 65536]

    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let maxContentBytes = Self.limits[Int(input.byte() & 3)]
        let body = ByteBuffer(bytes: input.rest())

        guard case .success(let request) = ChatCompletionResponder.parse(body, maxContentBytes: maxContentBytes) else { return }
        Self.check(request, maxContentBytes: maxContentBytes)
        let encoded = Self.encode(request)
        switch ChatCompletionResponder.parse(ByteBuffer(bytes: encoded), maxContentBytes: maxContentBytes) {
        case .success(let again):
            require(again.model == request.model && again.messages == request.messages && again.stream == request.stream
                    && again.includeUsage == request.includeUsage && again.maxTokens == request.maxTokens
                    && again.temperature == request.temperature,
                    "the request re-encoded decodes differently")
        case .failure(let problem):
            fatalError("the request re-encoded is refused: \(problem.message)")
        }
    }

    static func check(_ request: ChatCompletionResponder.Request, maxContentBytes: Int) {
        require(!request.messages.isEmpty, "a request without messages accepted")
        let size = request.messages.reduce(0) { $0 + $1.content.utf8.count }
        require(size <= maxContentBytes * 8, "messages of \(size) bytes accepted")
        if let maxTokens = request.maxTokens { require(maxTokens >= 1, "max_tokens \(maxTokens) accepted") }
        if let temperature = request.temperature { require(temperature.isFinite, "temperature \(temperature) accepted") }
    }

    static func encode(_ request: ChatCompletionResponder.Request) -> [UInt8] {
        var object: [String: Any] = [
            "messages": request.messages.map { ["role": $0.role.rawValue, "content": $0.content] },
            "stream": request.stream,
            "stream_options": ["include_usage": request.includeUsage],
        ]
        object["model"] = request.model
        object["max_tokens"] = request.maxTokens
        object["temperature"] = request.temperature
        guard let data = try? JSONSerialization.data(withJSONObject: object) else { fatalError("cannot encode the request") }
        return Array(data)
    }
}
