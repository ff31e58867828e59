import NIOCore

/// A message published to a channel this subscriber listens to.
public struct RedisPubSubMessage: Sendable, Hashable {
    /// The channel it was published to.
    public var channel: String
    /// The pattern that matched, for a `psubscribe` subscription.
    public var pattern: String?
    /// The published bytes, exactly.
    public var payload: ByteBuffer

    public init(channel: String, pattern: String? = nil, payload: ByteBuffer) {
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }
}

/// The four commands that change a subscription; Redis confirms each name with a push named
/// like the command.
enum PubSubCommand: String, Sendable {
    case subscribe, unsubscribe, psubscribe, punsubscribe
}

/// A SUBSCRIBE-family command for some names; `promises[i]` completes when Redis confirmed `names[i]`.
struct PubSubRequest: Sendable {
    var command: PubSubCommand
    var names: [String]
    var promises: [EventLoopPromise<Void>]
}

/// A connection in subscribe mode. Redis then sends pushes, not replies: `message`/`pmessage`
/// whenever something is published, and one `subscribe`/`unsubscribe`/... confirmation per name
/// of each command, interleaved with messages in any order. Confirmations are matched by
/// (command, name) to the oldest waiting request; messages go to `onMessage`.
///
/// Bounds, as for commands (`RedisCommandHandler`): a confirmation has a deadline
/// (`commandTimeout`; past it the request fails with `timedOut`, and a late confirmation is
/// ignored); a connection that sent nothing at all between a request and its deadline is
/// stalled and closed; at most `maxPending` confirmations are awaited at once.
final class RedisPubSubHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = PubSubRequest
    typealias OutboundOut = ByteBuffer

    struct Limits: Sendable, Hashable {
        var commandTimeout: TimeAmount
        var maxPending: Int

        init(commandTimeout: TimeAmount, maxPending: Int) {
            self.commandTimeout = commandTimeout
            self.maxPending = max(1, maxPending)
        }
    }

    private struct Waiter {
        var command: PubSubCommand
        var name: String
        var requestID: Int
        var promise: EventLoopPromise<Void>
        var deadline: NIODeadline
        /// `valuesRead` when the request was written (unchanged at the deadline: a stall).
        var valuesReadBefore: UInt64
    }

    private let limits: Limits
    private let onMessage: (RedisPubSubMessage) -> Void
    private var waiters: [Waiter] = []
    private var nextRequestID = 0
    private var valuesRead: UInt64 = 0
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?
    private var isClosed = false

    init(limits: Limits, onMessage: @escaping (RedisPubSubMessage) -> Void) {
        self.limits = limits
        self.onMessage = onMessage
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = self.unwrapOutboundIn(data)
        if self.isClosed {
            for waiter in request.promises { waiter.fail(RedisClientError.connectionClosed) }
            promise?.fail(RedisClientError.connectionClosed)
            return
        }
        guard !request.names.isEmpty else {
            // An empty UNSUBSCRIBE would mean "all"; callers always name what they mean.
            promise?.succeed()
            return
        }
        guard request.names.count <= self.limits.maxPending - self.waiters.count else {
            for waiter in request.promises { waiter.fail(RedisClientError.tooManyPendingCommands) }
            promise?.fail(RedisClientError.tooManyPendingCommands)
            return
        }
        let command = RedisCommand(request.command.rawValue.uppercased(), arguments: request.names)
        var buffer = context.channel.allocator.buffer(capacity: 32)
        do {
            try command.encode(into: &buffer)
        } catch {
            for waiter in request.promises { waiter.fail(error) }
            promise?.fail(error)
            return
        }
        self.nextRequestID += 1
        let deadline = context.eventLoop.now + self.limits.commandTimeout
        for (name, waiter) in zip(request.names, request.promises) {
            self.waiters.append(Waiter(
                command: request.command, name: name, requestID: self.nextRequestID, promise: waiter,
                deadline: deadline, valuesReadBefore: self.valuesRead))
        }
        self.armTimer(for: deadline, context: context)
        context.write(self.wrapOutboundOut(buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isClosed else { return }
        let value = self.unwrapInboundIn(data)
        self.valuesRead &+= 1
        switch value {
        case .array(let items):
            self.handlePush(items, context: context)
        case .error(let message):
            // Only SUBSCRIBE-family commands are sent, so an error answers the oldest of them.
            guard let first = self.waiters.first else { return }
            let failed = self.waiters.filter { $0.requestID == first.requestID }
            self.waiters.removeAll { $0.requestID == first.requestID }
            for waiter in failed { waiter.promise.fail(RedisClientError.server(message)) }
        default:
            self.protocolViolation("unexpected reply in subscribe mode", context: context)
        }
    }

    private func handlePush(_ items: [RESPValue], context: ChannelHandlerContext) {
        guard let kind = items.first?.string else {
            self.protocolViolation("push without a kind", context: context)
            return
        }
        switch kind.lowercased() {
        case "message":
            guard items.count == 3, let channel = items[1].string, let payload = items[2].buffer else {
                self.protocolViolation("malformed message push", context: context)
                return
            }
            self.onMessage(RedisPubSubMessage(channel: channel, payload: payload))
        case "pmessage":
            guard items.count == 4, let pattern = items[1].string, let channel = items[2].string,
                  let payload = items[3].buffer
            else {
                self.protocolViolation("malformed pmessage push", context: context)
                return
            }
            self.onMessage(RedisPubSubMessage(channel: channel, pattern: pattern, payload: payload))
        case let name:
            guard let command = PubSubCommand(rawValue: name) else { return }  // e.g. "pong": ignored
            // A nil name comes from an UNSUBSCRIBE when nothing was subscribed; nobody waits for it.
            guard items.count == 3, let subject = items[1].string else { return }
            if let index = self.waiters.firstIndex(where: { $0.command == command && $0.name == subject }) {
                self.waiters.remove(at: index).promise.succeed()
            }
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

    private func protocolViolation(_ message: String, context: ChannelHandlerContext) {
        self.failAll(.protocolError(message))
        context.close(promise: nil)
    }

    private func failAll(_ error: RedisClientError) {
        self.isClosed = true
        self.timer?.cancel()
        self.timer = nil
        self.timerDeadline = nil
        let waiters = self.waiters
        self.waiters = []
        for waiter in waiters { waiter.promise.fail(error) }
    }

    // MARK: Deadlines

    private func armTimer(for deadline: NIODeadline, context: ChannelHandlerContext) {
        if let armed = self.timerDeadline, armed <= deadline { return }
        self.timer?.cancel()
        self.timerDeadline = deadline
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.deadlinePassed(context: context)
        }
    }

    private func deadlinePassed(context: ChannelHandlerContext) {
        self.timer = nil
        self.timerDeadline = nil
        guard !self.isClosed else { return }
        let now = context.eventLoop.now
        let expired = self.waiters.filter { $0.deadline <= now }
        self.waiters.removeAll { $0.deadline <= now }
        let stalled = expired.contains { $0.valuesReadBefore == self.valuesRead }
        if stalled {
            for waiter in expired { waiter.promise.fail(RedisClientError.timedOut) }
            self.failAll(.timedOut)
            context.close(promise: nil)
            return
        }
        if let next = self.waiters.map(\.deadline).min() { self.armTimer(for: next, context: context) }
        for waiter in expired { waiter.promise.fail(RedisClientError.timedOut) }
    }
}

@available(*, unavailable)
extension RedisPubSubHandler: Sendable {}
