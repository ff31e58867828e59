import Foundation
import Inference
import NIOCore
import Policy
import Sessions
import NIOHTTP1
import SluiceProtocol
import WSServer

/// The chat application's public HTTP routes: `POST /v1/chat/stream`, `GET /v1/presence` (the
/// caller's own), `GET /v1/conversations`, `GET /v1/conversations/{id}/messages` and `/v1/jobs`.
/// Operators' routes (`/v1/stats`, anyone's presence) are `AdminRoutes`, on the admin listener.
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
        if let route = HistoryRoute(path: path) { return HistoryResponder(application: self.application, route: route) }
        if let route = JobsResponder.Route(path: path) { return JobsResponder(application: self.application, route: route) }
        guard path == Self.path else { return nil }
        return ChatStreamResponder(application: self.application)
    }
}

final class ChatStreamResponder: HTTPRouteResponder, GenerationRequester, SluiceMessageOutput {
    private let application: ChatApplication
    private var writer: HTTPResponseWriter?
    private var generation: ChatGeneration?
    private var headWritten = false
    private var disconnected = false

    init(application: ChatApplication) {
        self.application = application
    }

    /// The decoder's own bound (three contents' worth of escaped JSON plus 16 KiB), checked at the head.
    var maxRequestBodyBytes: Int { self.application.configuration.requestLimits.maxJSONMessageBytes }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        self.writer = writer
        guard head.method == .POST else {
            self.respondError(.methodNotAllowed, .invalidMessage, "use POST with a JSON body")
            return
        }
        let caller: ChatPolicy.Admitted
        switch self.application.policy.admitCaller(head, peer: writer.remoteAddress, countsAsConnection: true) {
        case .failure(let refusal):
            writer.respond(refusal.httpRefusal)
            self.writer = nil
            return
        case .success(let admitted):
            caller = admitted
        }
        let send: ClientMessage.ChatSend
        switch ClientMessageDecoder.decodeChatRequest(body, limits: self.application.configuration.requestLimits) {
        case .failure(let violation):
            self.respondError(HTTPResponseStatus(violation.code), violation.code, violation.message, requestID: violation.requestID)
            return
        case .success(let request):
            send = request
        }
        let order = GenerationOrder(
            conversation: .stored(conversationID: send.conversationID, content: send.content), requestID: send.requestID,
            model: send.model, maxTokens: send.maxTokens, temperature: send.temperature, gatewayTools: send.tools)
        let generationCaller = GenerationCaller(
            user: caller.user, address: caller.address, sessionID: Identifier.make("sse_"), trace: self.application.traceParent(head.headers))
        self.application.starter.start(order, for: generationCaller, output: self, on: writer.eventLoop)
    }

    func clientDisconnected() {
        self.disconnected = true
        self.generation?.cancel()
        self.generation = nil
    }

    // MARK: GenerationRequester

    func generationStarting(_ generation: ChatGeneration) {
        self.generation = generation
    }

    func generationRefused(_ refusal: GenerationRefusal) {
        guard !self.disconnected else { return }
        self.respondError(HTTPResponseStatus(refusal.code), refusal.code, refusal.message, requestID: refusal.requestID,
                          retryAfterMs: refusal.retryAfterMs)
    }

    // MARK: GenerationOutput

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
        self.respondError(HTTPResponseStatus(error.code), error.code, error.message, requestID: generation.requestID, retryAfterMs: retryAfterMs)
    }

    // MARK: Errors before any event

    private func respondError(
        _ status: HTTPResponseStatus, _ code: ErrorCode, _ message: String, requestID: String? = nil, retryAfterMs: Int64? = nil
    ) {
        guard let writer = self.writer else { return }
        var body = writer.allocator.buffer(capacity: 128)
        ServerMessageEncoder.error(code: code, message: message, requestID: requestID, retryAfterMs: retryAfterMs, into: &body)
        let headers = retryAfterMs.map { [("Retry-After", RetryAfter.headerValue(milliseconds: $0))] } ?? []
        writer.respond(status: status, contentType: "application/json", body: body, headers: headers)
        self.writer = nil
    }

}

@available(*, unavailable)
extension ChatStreamResponder: Sendable {}

/// `GET /v1/conversations[?before=&limit=]` and `GET /v1/conversations/{id}/messages[?before=&limit=]`:
/// the same pages as `conversation.list` / `conversation.history`, as the same JSON objects.
/// The user comes from `X-Sluice-User` or `?user=` (none: the anonymous user).
enum HistoryRoute: Equatable {
    case list
    case messages(conversationID: String)

    static let prefix = "/v1/conversations"

    init?(path: String) {
        guard path.hasPrefix(Self.prefix) else { return nil }
        let rest = path.dropFirst(Self.prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        if rest.isEmpty || rest == [""] {
            self = .list
        } else if rest.count == 3, rest[0].isEmpty, !rest[1].isEmpty, rest[2] == "messages" {
            self = .messages(conversationID: String(rest[1]))
        } else {
            return nil
        }
    }
}

final class HistoryResponder: HTTPRouteResponder {
    private let application: ChatApplication
    private let route: HistoryRoute

    init(application: ChatApplication, route: HistoryRoute) {
        self.application = application
        self.route = route
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        guard head.method == .GET else {
            Self.respondError(writer, .methodNotAllowed, .invalidMessage, "use GET", retryAfterMs: nil)
            return
        }
        let query = Self.query(head.uri)
        let page: ClientMessage.HistoryPage
        switch ClientMessageDecoder.historyPage(limit: query["limit"], before: query["before"]) {
        case .success(let checked):
            page = checked
        case .failure(let violation):
            Self.respondError(writer, .badRequest, violation.code, violation.message, retryAfterMs: nil)
            return
        }
        let user: String
        switch self.application.policy.admitCaller(head, peer: writer.remoteAddress, countsAsConnection: false) {
        case .failure(let refusal):
            writer.respond(refusal.httpRefusal)
            return
        case .success(let caller):
            user = caller.user
        }
        let history = self.application.history
        let route = self.route
        let respond = NIOLoopBound(writer, eventLoop: writer.eventLoop)
        let promise = writer.eventLoop.makePromise(of: Result<ByteBuffer, HistoryFailure>.self)
        promise.completeWithTask {
            var body = ByteBuffer()
            switch route {
            case .list:
                switch await history.listConversations(user: user, page: page) {
                case .success(let (stored, listings)):
                    ServerMessageEncoder.conversationListResult(requestID: nil, conversations: listings, next: stored.next?.token, into: &body)
                case .failure(let failure):
                    return .failure(failure)
                }
            case .messages(let conversationID):
                switch await history.messages(conversationID: conversationID, user: user, page: page) {
                case .success(let (stored, listings)):
                    ServerMessageEncoder.conversationHistoryResult(
                        requestID: nil, conversationID: conversationID.lowercased(), messages: listings, next: stored.next?.token, into: &body)
                case .failure(let failure):
                    return .failure(failure)
                }
            }
            return .success(body)
        }
        promise.futureResult.whenSuccess { result in
            switch result {
            case .success(let body):
                respond.value.respond(status: .ok, contentType: "application/json", body: body)
            case .failure(let failure):
                let conversationID: String? = if case .messages(let id) = route { id } else { nil }
                let (code, message, retryAfterMs) = failure.wireError(conversationID: conversationID)
                Self.respondError(respond.value, HTTPResponseStatus(code), code, message, retryAfterMs: retryAfterMs)
            }
        }
    }

    func clientDisconnected() {}

    static func respondError(
        _ writer: HTTPResponseWriter, _ status: HTTPResponseStatus, _ code: ErrorCode, _ message: String, retryAfterMs: Int64?
    ) {
        var body = writer.allocator.buffer(capacity: 128)
        ServerMessageEncoder.error(code: code, message: message, retryAfterMs: retryAfterMs, into: &body)
        writer.respond(status: status, contentType: "application/json", body: body)
    }

    /// The query parameters, percent-decoded (the last of a repeated name wins).
    static func query(_ uri: String) -> [String: String] {
        guard let query = uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return [:] }
        var result: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { continue }
            let name = String(parts[0]).removingPercentEncoding ?? String(parts[0])
            result[name] = String(parts[1]).removingPercentEncoding ?? String(parts[1])
        }
        return result
    }
}

/// `GET /v1/stats` (admin listener): the conversation cache's hit ratio and the storage's
/// counters (statements run, the write queue), as JSON. What the persistence benchmark reads;
/// `/metrics` exposes the same counters to Prometheus.
final class StatsResponder: HTTPRouteResponder {
    static let path = "/v1/stats"
    private let application: ChatApplication

    init(application: ChatApplication) {
        self.application = application
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        var out = writer.allocator.buffer(capacity: 512)
        let (hits, misses) = self.application.history.cacheCounts
        out.writeString(#"{"conversation_cache":{"hits":\#(hits),"misses":\#(misses),"hit_ratio":\#(hits + misses == 0 ? 0 : Double(hits) / Double(hits + misses))}"#)
        if let storage = self.application.history.persistence.lifecycle, let queue = self.application.history.persistence.queue {
            let metrics = storage.metrics
            let counters = queue.counters
            out.writeString(#","storage":{"read_statements":\#(metrics.readStatements),"write_statements":\#(metrics.writeStatements),"write_transactions":\#(metrics.writeTransactions)}"#)
            out.writeString(#","write_queue":{"enqueued":\#(counters.enqueued),"written":\#(counters.written),"rejected":\#(counters.rejected),"retries":\#(counters.retries),"refused_full":\#(counters.refusedFull),"pending":\#(counters.pending),"reserved":\#(counters.reserved),"batches":\#(counters.batches),"recovered":\#(counters.recovered)}"#)
        } else {
            out.writeString(#","storage":null"#)
        }
        out.writeString("}")
        writer.respond(status: .ok, contentType: "application/json", body: out)
    }

    func clientDisconnected() {}
}
