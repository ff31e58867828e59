import NIOCore
import NIOHTTP1

/// Plain HTTP beside the upgrade on the same port: `/health`, `/ready`, 404 for unknown paths,
/// 426 for a plain request to the WebSocket path, and the answer to a refused handshake.
/// It also closes connections that neither upgrade nor finish a request in time.
final class HTTPRouteHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: ServerShared
    private var handshakeTimer: Scheduled<Void>?
    private var rejection: HandshakeRejection?
    private var request: HTTPRequestHead?
    /// An application route answering the current request, with the body collected so far.
    private var responder: (any HTTPRouteResponder)?
    private var requestBody: ByteBuffer?
    private var bodyTooLarge = false
    /// A streamed response is being written: the handshake timeout no longer applies.
    private var streaming = false
    private var streamingKeepAlive = true

    init(server: ServerShared) {
        self.server = server
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: self.server.configuration.handshakeTimeout) {
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let responder = self.responder {
            self.responder = nil
            responder.clientDisconnected()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let rejection = error as? HandshakeRejection {
            // Arrives just before the refused request itself.
            self.rejection = rejection
        } else {
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.request = head
            if self.rejection == nil, let routes = self.server.httpRoutes, let responder = routes.responder(for: head) {
                // A page's request through its visitor's browser: refused (403 once the body is read).
                guard OriginCheck.allows(head.headers, configuration: self.server.configuration) else {
                    self.rejection = HandshakeRejection(reason: .originNotAllowed)
                    return
                }
                self.responder = responder
                self.requestBody = context.channel.allocator.buffer(capacity: 0)
                self.bodyTooLarge = false
            }
        case .body(var chunk):
            // Only application routes take a body, bounded like a WebSocket message.
            guard self.responder != nil, !self.bodyTooLarge else { return }
            if (self.requestBody?.readableBytes ?? 0) + chunk.readableBytes > self.server.configuration.maxMessageSize {
                self.bodyTooLarge = true
                self.requestBody = nil
            } else {
                self.requestBody?.writeBuffer(&chunk)
            }
        case .end:
            guard let head = self.request else { return }
            self.request = nil
            if let responder = self.responder {
                if self.bodyTooLarge {
                    self.responder = nil
                    self.respond(context: context, head: head, status: .payloadTooLarge, body: "request body too large", close: true)
                    return
                }
                let body = self.requestBody ?? ByteBuffer()
                self.requestBody = nil
                self.streamingKeepAlive = head.isKeepAlive
                responder.respond(to: head, body: body, writer: HTTPResponseWriter(handler: self, context: context))
                return
            }
            self.route(head, context: context)
        }
    }

    private func route(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        if let rejection = self.rejection {
            self.rejection = nil
            self.respond(context: context, head: head, status: rejection.status, body: rejection.message,
                         contentType: rejection.contentType, headers: rejection.extraHeaders, close: true)
            return
        }
        switch path {
        case "/health":
            self.respond(context: context, head: head, status: .ok, body: "ok")
        case "/ready":
            if self.server.isDraining {
                self.respond(context: context, head: head, status: .serviceUnavailable, body: "draining")
            } else if let reason = self.server.readiness?() {
                self.respond(context: context, head: head, status: .serviceUnavailable, body: reason)
            } else {
                self.respond(context: context, head: head, status: .ok, body: "ready")
            }
        case self.server.configuration.path:
            if Self.asksForWebSocket(head), (try? context.pipeline.syncOperations.handler(type: HTTPServerUpgradeHandler.self)) == nil {
                // NIO's upgrade handler leaves after a connection's first request; a proxy that
                // reuses a kept-alive connection (nginx's upstream pool) upgrades on a later one.
                self.upgradeInPlace(head, context: context)
            } else if head.headers.contains(name: "upgrade") {
                // An Upgrade that NIO's handler passed on: not a WebSocket upgrade we understand.
                self.respond(context: context, head: head, status: .badRequest,
                             body: "malformed WebSocket handshake", close: true)
            } else {
                self.respond(context: context, head: head, status: .upgradeRequired,
                             body: "this endpoint speaks WebSocket only",
                             headers: [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
            }
        default:
            self.respond(context: context, head: head, status: .notFound, body: "not found")
        }
    }

    private static func asksForWebSocket(_ head: HTTPRequestHead) -> Bool {
        head.headers[canonicalForm: "upgrade"].contains { $0.lowercased() == "websocket" }
    }

    /// The WebSocket handshake on a kept-alive connection: the same checks and handlers as
    /// `WebSocketUpgrader` behind NIO's upgrade handler, then the HTTP handlers leave.
    private func upgradeInPlace(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let upgrader = WebSocketUpgrader(server: self.server)
        upgrader.buildUpgradeResponse(channel: context.channel, upgradeRequest: head, initialResponseHeaders: HTTPHeaders())
            .assumeIsolated().whenComplete { result in
                switch result {
                case .failure(let rejection as HandshakeRejection):
                    self.respond(context: context, head: head, status: rejection.status, body: rejection.message,
                                 contentType: rejection.contentType, headers: rejection.extraHeaders, close: true)
                case .failure:
                    context.close(promise: nil)
                case .success(var headers):
                    headers.add(name: "Upgrade", value: "websocket")
                    headers.add(name: "Connection", value: "upgrade")
                    let response = HTTPResponseHead(version: head.version, status: .switchingProtocols, headers: headers)
                    context.writeAndFlush(self.wrapOutboundOut(.head(response)), promise: nil)
                    let pipeline = context.pipeline.syncOperations
                    // Codec last: its leftover bytes (frames sent right behind the handshake)
                    // are forwarded to the WebSocket handler, which must be in place by then.
                    let upgraded = upgrader.upgrade(context: context, upgradeRequest: head)
                    if let encoder = try? pipeline.handler(type: HTTPResponseEncoder.self) { pipeline.removeHandler(encoder, promise: nil) }
                    if let assistance = try? pipeline.handler(type: HTTPServerPipelineHandler.self) { pipeline.removeHandler(assistance, promise: nil) }
                    if let validator = try? pipeline.handler(type: NIOHTTPResponseHeadersValidator.self) {
                        pipeline.removeHandler(validator, promise: nil)
                    }
                    if let errors = try? pipeline.handler(type: HTTPServerProtocolErrorHandler.self) { pipeline.removeHandler(errors, promise: nil) }
                    if let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) {
                        pipeline.removeHandler(decoder, promise: nil)
                    }
                    // The decoder hands its leftover bytes (frames right behind the handshake) over
                    // once this read is done, after the burst's end went past; the WebSocket
                    // handler flushes its answers at a burst's end, so give it one.
                    let channel = context.channel
                    context.eventLoop.execute { channel.pipeline.fireChannelReadComplete() }
                    upgraded.assumeIsolated().whenFailure { _ in context.close(promise: nil) }
                }
            }
    }

    // MARK: Streaming responses for application routes

    func writeStreamingHead(context: ChannelHandlerContext, status: HTTPResponseStatus, headers: HTTPHeaders) {
        // A long response must not be cut by the handshake timeout.
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
        self.streaming = true
        var headers = headers
        headers.replaceOrAdd(name: "Connection", value: self.streamingKeepAlive ? "keep-alive" : "close")
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
    }

    func writeStreamingBody(context: ChannelHandlerContext, _ buffer: ByteBuffer, flush: Bool) {
        guard self.streaming else { return }
        if flush {
            context.writeAndFlush(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        } else {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
    }

    func endStreamingResponse(context: ChannelHandlerContext) {
        guard self.streaming else { return }
        self.streaming = false
        self.responder = nil
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: promise)
        if !self.streamingKeepAlive {
            promise.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    private func respond(
        context: ChannelHandlerContext,
        head: HTTPRequestHead,
        status: HTTPResponseStatus,
        body: String,
        contentType: String = "text/plain; charset=utf-8",
        headers extra: [(String, String)] = [],
        close: Bool = false
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.utf8.count + 1))
        for (name, value) in extra { headers.add(name: name, value: value) }
        let keepAlive = head.isKeepAlive && !close
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let responseHead = HTTPResponseHead(version: head.version, status: status, headers: headers)
        context.write(self.wrapOutboundOut(.head(responseHead)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count + 1)
        buffer.writeString(body)
        buffer.writeString("\n")
        context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: promise)
        if !keepAlive {
            promise.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension HTTPRouteHandler: Sendable {}
