import NIOCore

/// What `RedisConnection` writes into its pipeline: commands sent in one write, and per command
/// the promise its reply completes.
struct RedisRequest: Sendable {
    var commands: [RedisCommand]
    var promises: [EventLoopPromise<RESPValue>]
}

/// Pipelining for a plain (non-subscribed) connection. Redis answers commands strictly in the
/// order it received them, so replies are matched to a FIFO of promises. An error reply fails
/// only its own command; a protocol error or the channel closing fails every pending command.
final class RedisCommandHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = RedisRequest
    typealias OutboundOut = ByteBuffer

    private var pending = CircularBuffer<EventLoopPromise<RESPValue>>(initialCapacity: 16)
    /// Set once the connection is unusable; later writes fail at once instead of queueing
    /// promises nobody would ever complete.
    private var isClosed = false

    /// Commands sent and not yet answered.
    var pendingCount: Int { self.pending.count }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = self.unwrapOutboundIn(data)
        if self.isClosed {
            for reply in request.promises { reply.fail(RedisClientError.connectionClosed) }
            promise?.fail(RedisClientError.connectionClosed)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 64 * request.commands.count)
        for (command, reply) in zip(request.commands, request.promises) {
            do {
                try command.encode(into: &buffer)
                self.pending.append(reply)
            } catch {
                reply.fail(error)
            }
        }
        context.write(self.wrapOutboundOut(buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isClosed else { return }
        let value = self.unwrapInboundIn(data)
        guard let reply = self.pending.popFirst() else {
            // A reply nobody asked for means the stream is out of step; nothing after it can be
            // matched reliably.
            self.failAll(.protocolError("unsolicited reply \(value)"))
            context.close(promise: nil)
            return
        }
        if case .error(let message) = value {
            reply.fail(RedisClientError.server(message))
        } else {
            reply.succeed(value)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failAll(.connectionClosed)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.failAll(.connectionClosed)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failAll(.channelFailed(error))
        context.close(promise: nil)
    }

    private func failAll(_ error: RedisClientError) {
        self.isClosed = true
        while let reply = self.pending.popFirst() {
            reply.fail(error)
        }
    }
}

@available(*, unavailable)
extension RedisCommandHandler: Sendable {}
