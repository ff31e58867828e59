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
    }

    static func encode(_ request: OpenAIChatRequest) -> [UInt8] {
        var object: [String: Any] = [
            "messages": request.messages.map { ["role": $0.role.rawValue, "content": $0.content] },
            "stream": request.stream,
            "stream_options": ["include_usage": request.includeUsage],
        ]
        object["model"] = request.model
        object["max_completion_tokens"] = request.maxTokens
        object["temperature"] = request.temperature
        object["top_p"] = request.topP
        guard let data = try? JSONSerialization.data(withJSONObject: object) else { fatalError("cannot encode the request") }
        return Array(data)
    }
}
