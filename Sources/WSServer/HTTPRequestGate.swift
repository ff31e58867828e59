import NIOCore
import NIOHTTP1

/// Sits between NIO's HTTP request decoder and its pipelining handler and shuts once a request
/// that ends the connection (not keep-alive) has arrived whole: whatever the client sent after it
/// is neither answered nor handed on (RFC 9112 §9.6), including bytes that do not parse, for which
/// NIO would otherwise write a 400 after our response — inside the body, for a client reading a
/// response delimited by the close (found by the `upgrade` fuzz target).
///
/// It never unwraps what passes: after a WebSocket upgrade it may stay in the pipeline and sees
/// raw bytes, which it hands on untouched (it is never shut on such a connection).
final class HTTPRequestGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private(set) var isShut = false

    /// Called when the last request the connection answers has arrived whole.
    func shut() {
        self.isShut = true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isShut else { return }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A parse error after the last request: nothing to answer; the connection is closing.
        if self.isShut && error is HTTPParserError { return }
        context.fireErrorCaught(error)
    }
}
