import Inference
import NIOCore
import NIOHTTP1
import SluiceProtocol
import WSServer

/// The chat application's plain HTTP routes: `POST /v1/chat/stream` and `GET /v1/presence`.
///
/// `POST /v1/chat/stream`: the same generation as over WebSocket, as Server-Sent Events:
/// `data: <the sluice.v1 JSON object>` per event and a final `data: [DONE]`. Closing the HTTP
/// connection cancels the generation.
public struct ChatStreamRoutes: HTTPRouteProvider {
    public static let path = "/v1/chat/stream"
    let application: ChatApplication

    public init(application: ChatApplication) {
        self.application = application
    }

    public func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        if path == PresenceRoutes.path { return PresenceResponder(application: self.application) }
        guard path == Self.path else { return nil }
        return ChatStreamResponder(application: self.application)
    }
}

final class ChatStreamResponder: HTTPRouteResponder, ChatOutput {
    private let application: ChatApplication
    private var writer: HTTPResponseWriter?
    private var generation: ChatGeneration?
    private var headWritten = false
    private var disconnected = false

    init(application: ChatApplication) {
        self.application = application
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        self.writer = writer
        guard head.method == .POST else {
            self.respondError(.methodNotAllowed, .invalidMessage, "use POST with a JSON body")
            return
        }
        let send: ClientMessage.ChatSend
        switch ClientMessageDecoder.decodeChatRequest(body, maxContentBytes: self.application.configuration.maxContentBytes) {
        case .failure(let violation):
            self.respondError(Self.status(for: violation.code), violation.code, violation.message, requestID: violation.requestID)
            return
        case .success(let request):
            send = request
        }
        switch self.application.beginGeneration(send, output: self, sessionID: Identifier.make("sse_"), on: writer.eventLoop) {
        case .failure(let violation):
            self.respondError(Self.status(for: violation.code), violation.code, violation.message, requestID: violation.requestID)
        case .success(let generation):
            self.generation = generation
            generation.startUpstream()
        }
    }

    func clientDisconnected() {
        self.disconnected = true
        self.generation?.cancel()
        self.generation = nil
    }

    // MARK: ChatOutput

    var isConnected: Bool { !self.disconnected && self.writer != nil }
    var isWritable: Bool { self.writer?.isWritable ?? false }

    func writeMessage(_ encode: (inout ByteBuffer) -> Void) {
        guard let writer = self.writer, !self.disconnected else { return }
        if !self.headWritten {
            self.headWritten = true
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/event-stream")
            headers.add(name: "Cache-Control", value: "no-cache")
            writer.writeHead(status: .ok, headers: headers)
        }
        var buffer = writer.allocator.buffer(capacity: 128)
        buffer.writeStaticString("data: ")
        encode(&buffer)
        buffer.writeStaticString("\n\n")
        writer.writeBody(buffer, flush: false)
    }

    func writeMessageIfWritable(_ encode: (inout ByteBuffer) -> Void) -> Bool {
        guard self.isConnected, self.isWritable else { return false }
        self.writeMessage(encode)
        return true
    }

    func flush() { self.writer?.flush() }

    func generationEnded(_ generation: ChatGeneration) {
        self.generation = nil
        guard let writer = self.writer, !self.disconnected else { return }
        writer.writeBody(ByteBuffer(string: "data: [DONE]\n\n"), flush: false)
        writer.end()
        self.writer = nil
    }

    func generationFailedToStart(_ generation: ChatGeneration, error: InferenceError) {
        self.generation = nil
        guard !self.disconnected else { return }
        let retryAfterMs = ChatGeneration.retryAfterMs(for: error)
        self.respondError(Self.status(for: error.code), error.code, error.message, requestID: generation.requestID, retryAfterMs: retryAfterMs)
    }

    // MARK: Errors before any event

    private func respondError(
        _ status: HTTPResponseStatus, _ code: ErrorCode, _ message: String, requestID: String? = nil, retryAfterMs: Int64? = nil
    ) {
        guard let writer = self.writer else { return }
        var body = writer.allocator.buffer(capacity: 128)
        ServerMessageEncoder.error(code: code, message: message, requestID: requestID, retryAfterMs: retryAfterMs, into: &body)
        writer.respond(status: status, contentType: "application/json", body: body)
        self.writer = nil
    }

    static func status(for code: ErrorCode) -> HTTPResponseStatus {
        switch code {
        case .notFound: return .notFound
        case .tooLarge: return .payloadTooLarge
        case .overloaded, .upstreamUnavailable: return .serviceUnavailable
        case .upstreamError: return .badGateway
        case .upstreamTimeout: return .gatewayTimeout
        default: return .badRequest
        }
    }
}

@available(*, unavailable)
extension ChatStreamResponder: Sendable {}
