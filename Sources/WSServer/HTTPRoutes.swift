import NIOCore
import NIOHTTP1

/// Plain HTTP routes an application adds beside the WebSocket endpoint (for example a
/// Server-Sent Events stream). WSServer owns the socket and the HTTP codec; the route owns
/// what it answers. Called on the connection's event loop.
public protocol HTTPRouteProvider: Sendable {
    /// A responder for this request, or nil when the route is not the application's
    /// (then `/health`, `/ready` and 404 apply).
    func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)?
}

/// Several route providers, asked in order.
public struct RouteList: HTTPRouteProvider {
    public let providers: [any HTTPRouteProvider]

    public init(providers: [any HTTPRouteProvider]) {
        self.providers = providers
    }

    public func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
        for provider in self.providers {
            if let responder = provider.responder(for: head) { return responder }
        }
        return nil
    }
}

/// Answers one request. Not Sendable: lives on the connection's event loop.
public protocol HTTPRouteResponder: AnyObject {
    /// The largest request body this route takes, in bytes (the server also caps it at
    /// `max_message_size`). A bigger one is answered 413 by the server before this responder
    /// sees it: at the head when `Content-Length` (or `Expect: 100-continue`) says so, else as
    /// soon as the body passes it, without buffering the rest. Default 0: no body.
    var maxRequestBodyBytes: Int { get }
    /// The whole request body has arrived (within `maxRequestBodyBytes`).
    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter)
    /// The client closed the connection before the response ended.
    func clientDisconnected()
}

extension HTTPRouteResponder {
    public var maxRequestBodyBytes: Int { 0 }
}

/// Writes a (possibly long, streamed) response. Use on the connection's event loop only.
public struct HTTPResponseWriter {
    let handler: HTTPRouteHandler
    let context: ChannelHandlerContext

    public var eventLoop: any EventLoop { self.context.eventLoop }
    public var allocator: ByteBufferAllocator { self.context.channel.allocator }
    /// False while the client is behind; producers should merge or pause.
    public var isWritable: Bool { self.context.channel.isWritable }
    /// The peer (for per-address limits).
    public var remoteAddress: SocketAddress? { self.context.channel.remoteAddress }

    public func writeHead(status: HTTPResponseStatus, headers: HTTPHeaders) {
        self.handler.writeStreamingHead(context: self.context, status: status, headers: headers)
    }

    public func writeBody(_ buffer: ByteBuffer, flush: Bool) {
        self.handler.writeStreamingBody(context: self.context, buffer, flush: flush)
    }

    public func flush() { self.context.flush() }

    /// Ends the response (the connection may then serve the next request).
    public func end() {
        self.handler.endStreamingResponse(context: self.context)
    }

    /// Writes a refusal (401, 429, ...) as a complete response.
    public func respond(_ refusal: HTTPRefusal) {
        var body = self.allocator.buffer(capacity: refusal.body.utf8.count + 1)
        body.writeString(refusal.body)
        body.writeString("\n")
        self.respond(status: refusal.status, contentType: refusal.contentType, body: body,
                     headers: refusal.headers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
    }

    /// Writes a complete response with a body in one go.
    public func respond(status: HTTPResponseStatus, contentType: String, body: ByteBuffer, headers extra: [(String, String)] = []) {
        var headers = HTTPHeaders()
        for (name, value) in extra { headers.add(name: name, value: value) }
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        self.writeHead(status: status, headers: headers)
        self.writeBody(body, flush: false)
        self.end()
    }
}
