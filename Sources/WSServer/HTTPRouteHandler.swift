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
        case .body:
            break  // no route takes a body
        case .end:
            guard let head = self.request else { return }
            self.request = nil
            self.route(head, context: context)
        }
    }

    private func route(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        if let rejection = self.rejection {
            self.rejection = nil
            self.respond(context: context, head: head, status: rejection.status, body: rejection.message,
                         headers: rejection.extraHeaders, close: true)
            return
        }
        switch path {
        case "/health":
            self.respond(context: context, head: head, status: .ok, body: "ok")
        case "/ready":
            if self.server.isDraining {
                self.respond(context: context, head: head, status: .serviceUnavailable, body: "draining")
            } else {
                self.respond(context: context, head: head, status: .ok, body: "ready")
            }
        case self.server.configuration.path:
            if head.headers.contains(name: "upgrade") {
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

    private func respond(
        context: ChannelHandlerContext,
        head: HTTPRequestHead,
        status: HTTPResponseStatus,
        body: String,
        headers extra: [(String, String)] = [],
        close: Bool = false
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
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
