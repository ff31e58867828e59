import NIOCore
import NIOHTTP1

/// A one-shot request whose whole (bounded) answer is wanted, e.g. `GET /v1/models`. Not for
/// generations: those stream through `StreamingHTTPRequest`.
enum HTTPFetch {
    struct Response: Sendable {
        var status: Int
        var body: ByteBuffer
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let maximumBodySize = 1 << 20

    /// The answer, or a failure after `timeouts.connect` + `timeouts.timeToFirstToken` at most.
    static func fetch(
        _ head: HTTPRequestHead, body: ByteBuffer? = nil, from endpoint: UpstreamEndpoint, address: SocketAddress? = nil,
        timeouts: UpstreamTimeouts, on eventLoop: any EventLoop
    ) -> EventLoopFuture<Response> {
        endpoint.connect(on: eventLoop, to: address, timeout: timeouts.connect) { channel in
            try channel.pipeline.syncOperations.addHandler(HTTPFetchHandler(promise: channel.eventLoop.makePromise()))
        }.flatMap { channel in
            // Only the channel that won the connect race gets the request.
            let handler: HTTPFetchHandler
            do {
                handler = try channel.pipeline.syncOperations.handler(type: HTTPFetchHandler.self)
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
            let timeout = channel.eventLoop.assumeIsolated().scheduleTask(in: timeouts.timeToFirstToken) {
                handler.fail(HTTPFetch.Failure(description: "no answer within \(timeouts.timeToFirstToken.milliseconds)"))
                channel.close(promise: nil)
            }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            let response = handler.response
            response.whenComplete { _ in timeout.cancel() }
            return response
        }
    }
}

/// Collects one response and closes the connection.
final class HTTPFetchHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<HTTPFetch.Response>
    private var status: Int?
    private var body = ByteBuffer()

    init(promise: EventLoopPromise<HTTPFetch.Response>) {
        self.promise = promise
    }

    var response: EventLoopFuture<HTTPFetch.Response> { self.promise.futureResult }

    func fail(_ error: any Error) {
        self.promise.fail(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.status = Int(head.status.code)
        case .body(var bytes):
            let room = HTTPFetch.maximumBodySize - self.body.readableBytes
            if room > 0, let slice = bytes.readSlice(length: min(room, bytes.readableBytes)) {
                self.body.writeImmutableBuffer(slice)
            }
        case .end:
            if let status = self.status {
                self.promise.succeed(HTTPFetch.Response(status: status, body: self.body))
                context.close(promise: nil)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.promise.fail(HTTPFetch.Failure(description: "connection closed before a complete response"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.promise.fail(error)
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // A channel that lost the connect race never becomes active: its promise must not leak.
        self.promise.fail(HTTPFetch.Failure(description: "connection closed"))
    }
}

@available(*, unavailable)
extension HTTPFetchHandler: Sendable {}
