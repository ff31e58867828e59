import NIOCore
import NIOHTTP1

/// Plain HTTP beside the upgrade on the same port: `/health`, `/ready`, 404 for unknown paths,
/// 426 for a plain request to the WebSocket path, the answer to a refused handshake, and the
/// application's routes (with their bodies bounded before they are read).
///
/// Timers: a new connection must complete its first request (or upgrade) within
/// `handshake_timeout`; after each response a kept-alive connection may stay idle for
/// `idle_timeout`; a request that has begun must arrive whole within `handshake_timeout`. While
/// a response is being produced (a stream may last minutes) no timer runs.
final class HTTPRouteHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: ServerShared
    /// The handshake, request or idle timer, whichever applies now.
    private var timer: Scheduled<Void>?
    private var rejection: HandshakeRejection?
    private var request: HTTPRequestHead?
    /// An application route answering the current request, with the body collected so far.
    private var responder: (any HTTPRouteResponder)?
    private var requestBody: ByteBuffer?
    /// The current route's body limit.
    private var bodyLimit = 0
    /// What the request body holds of the memory budget (until its response ends).
    private var bodyCharge = MemoryCharge(.httpRequestBody)
    /// The request was answered before its body arrived (413, 503): the rest of it is dropped.
    private var discarding = false
    /// The client address (behind our proxies) this request counts against.
    private var heldAddress: String?
    /// A streamed response is being written.
    private var streaming = false
    private var streamingKeepAlive = true
    /// The request's HTTP version: a streamed answer to HTTP/1.0 is not chunked (a 1.0 client does
    /// not know chunked encoding, RFC 9112 §6.1); it is the raw bytes up to the connection's close.
    private var streamingVersion = HTTPVersion.http1_1
    /// Streamed bytes handed to the channel while it was not writable, not yet written.
    private var queuedResponseBytes = 0

    init(server: ServerShared) {
        self.server = server
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.arm(context: context, self.server.configuration.handshakeTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.disarm()
        self.releaseRequest()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.disarm()
        self.releaseRequest()
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

    // MARK: Timers

    private func arm(context: ChannelHandlerContext, _ timeout: TimeAmount) {
        self.timer?.cancel()
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            context.close(promise: nil)
        }
    }

    private func disarm() {
        self.timer?.cancel()
        self.timer = nil
    }

    /// Gives back what the finished (or abandoned) request held: its body's bytes and its
    /// place in its address's count.
    private func releaseRequest() {
        self.requestBody = nil
        self.bodyCharge.releaseAll(to: self.server.budget)
        if let key = self.heldAddress {
            self.heldAddress = nil
            self.server.connections.release(key: key)
        }
    }

    // MARK: Requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.request = head
            self.discarding = false
            // The request must arrive whole within the handshake timeout.
            self.arm(context: context, self.server.configuration.handshakeTimeout)
            if let problem = HTTPHostRule.problem(head) {
                self.rejection = nil
                self.refuseEarly(context: context, status: .badRequest, body: problem)
                return
            }
            if self.rejection == nil, let routes = self.server.httpRoutes, let responder = routes.responder(for: head) {
                // A page's request through its visitor's browser (OriginCheck): refused before its body is read.
                guard OriginCheck.allows(head.headers, configuration: self.server.configuration) else {
                    self.refuseEarly(context: context, status: .forbidden, body: "origin not allowed")
                    return
                }
                self.begin(head, responder: responder, context: context)
            }
        case .body(var chunk):
            guard self.responder != nil, !self.discarding, var body = self.requestBody else { return }
            let received = body.readableBytes + chunk.readableBytes
            if received > self.bodyLimit {
                self.refuseEarly(context: context, status: .payloadTooLarge, body: "request body over \(self.bodyLimit) bytes")
                return
            }
            guard self.bodyCharge.grow(to: received, granule: 16 * 1024, in: self.server.budget) else {
                self.refuseEarly(context: context, status: .serviceUnavailable, body: "server memory budget exhausted; retry later",
                                 headers: [("Retry-After", "1")])
                return
            }
            self.requestBody = nil  // keep the buffer uniquely referenced while appending
            body.writeBuffer(&chunk)
            self.requestBody = body
        case .end:
            guard let head = self.request else { return }
            self.request = nil
            if self.discarding {
                // Answered already; the connection closes once the answer is out.
                self.discarding = false
                return
            }
            // The response may take long (a stream, a job): no timer while it is produced.
            self.disarm()
            // The last request this connection answers: what follows it is dropped unanswered.
            if !head.isKeepAlive, let gate = try? context.pipeline.syncOperations.handler(type: HTTPRequestGate.self) {
                gate.shut()
            }
            if let responder = self.responder {
                let body = self.requestBody ?? ByteBuffer()
                self.requestBody = nil
                self.streamingVersion = head.version
                // A streamed answer has no length: only chunked encoding (HTTP/1.1) lets the
                // connection carry another request after it.
                self.streamingKeepAlive = head.isKeepAlive && (head.version.major, head.version.minor) >= (1, 1)
                responder.respond(to: head, body: body, writer: HTTPResponseWriter(handler: self, context: context))
                return
            }
            self.route(head, context: context)
        }
    }

    /// An application route's request head: the per-address cap behind proxies, then the body
    /// limits, before any of the body is read.
    private func begin(_ head: HTTPRequestHead, responder: any HTTPRouteResponder, context: ChannelHandlerContext) {
        let configuration = self.server.configuration
        if configuration.forwardedForHops > 0 && configuration.maxConnectionsPerAddress > 0 {
            let address = ClientAddress.resolve(head, peer: context.channel.remoteAddress, forwardedForHops: configuration.forwardedForHops)
            let key = ClientAddress.limitKey(address)
            guard self.server.connections.hold(key: key, max: configuration.maxConnectionsPerAddress) else {
                self.server.metrics.connectionRefused(.perAddress)
                self.refuseEarly(context: context, status: .serviceUnavailable, body: "too many connections from this address; retry later",
                                 headers: [("Retry-After", "1")])
                return
            }
            self.heldAddress = key
        }
        self.bodyLimit = min(max(0, responder.maxRequestBodyBytes), configuration.maxMessageSize)
        switch HTTPRequestBodyLimit.evaluate(head, limit: self.bodyLimit) {
        case .tooLarge:
            self.refuseEarly(context: context, status: .payloadTooLarge, body: "request body over \(self.bodyLimit) bytes")
        case .malformed(let reason):
            self.refuseEarly(context: context, status: .badRequest, body: reason)
        case .read(let length, let sendContinue):
            if let length, !self.bodyCharge.grow(to: length, in: self.server.budget) {
                self.refuseEarly(context: context, status: .serviceUnavailable, body: "server memory budget exhausted; retry later",
                                 headers: [("Retry-After", "1")])
                return
            }
            self.responder = responder
            self.requestBody = context.channel.allocator.buffer(capacity: length ?? 0)
            if sendContinue {
                context.writeAndFlush(self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
            }
        }
    }

    /// Answers before the body arrived and closes once the answer is out, dropping the rest
    /// of the request unread (a lingering close, so the client still reads the answer).
    private func refuseEarly(
        context: ChannelHandlerContext, status: HTTPResponseStatus, body: String, headers: [(String, String)] = []
    ) {
        guard let head = self.request else { return }
        self.server.metrics.httpRequestRefused(status)
        self.responder = nil
        self.releaseRequest()
        self.discarding = true
        self.disarm()
        self.respond(context: context, head: head, status: status, body: body, headers: headers, close: true, lingering: true)
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
                    if let gate = try? pipeline.handler(type: HTTPRequestGate.self) { pipeline.removeHandler(gate, promise: nil) }
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
        self.streaming = true
        var headers = headers
        headers.replaceOrAdd(name: "Connection", value: self.streamingKeepAlive ? "keep-alive" : "close")
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: self.streamingVersion, status: status, headers: headers))), promise: nil)
    }

    func writeStreamingBody(context: ChannelHandlerContext, _ buffer: ByteBuffer, flush: Bool) {
        guard self.streaming else { return }
        guard !context.channel.isWritable else {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            if flush { context.flush() }
            return
        }
        // The socket does not take more now: what is handed over waits in the channel. Count it
        // against the connection's outbound bound and the memory budget until it is written.
        let size = buffer.readableBytes
        let budget = self.server.budget
        guard self.queuedResponseBytes + size <= self.server.configuration.maxOutboundBytes,
              budget.reserve(size, for: .httpResponse)
        else {
            // A client this far behind is dropped (its responder hears `clientDisconnected`).
            self.server.metrics.slowConsumerClosed()
            self.streaming = false
            context.close(promise: nil)
            return
        }
        self.queuedResponseBytes += size
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { _ in
            self.queuedResponseBytes -= size
            budget.release(size, for: .httpResponse)
        }
        context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: promise)
        if flush { context.flush() }
    }

    func endStreamingResponse(context: ChannelHandlerContext) {
        guard self.streaming else { return }
        self.streaming = false
        self.responder = nil
        self.releaseRequest()
        // Armed before the end is written: a pipelined request may be delivered during that write.
        if self.streamingKeepAlive { self.arm(context: context, self.server.configuration.idleTimeout) }
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
        close: Bool = false,
        lingering: Bool = false
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
        // Armed before the end is written: a pipelined request may be delivered during that write.
        if keepAlive { self.arm(context: context, self.server.configuration.idleTimeout) }
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: promise)
        if !keepAlive {
            promise.futureResult.assumeIsolated().whenComplete { _ in
                if lingering {
                    LingeringClose.start(context: context)
                } else {
                    context.close(promise: nil)
                }
            }
        }
    }
}

@available(*, unavailable)
extension HTTPRouteHandler: Sendable {}
