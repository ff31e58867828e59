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
/// stalled and closed; at most `maxPending` confirmations are awaited at once. A subscriber is
/// mostly silent, so it is also checked when idle: after `healthCheckInterval` with nothing
/// read it sends a `PING`, and if nothing at all is read by the next check it is closed (the
/// subscriber then reconnects and resubscribes).
final class RedisPubSubHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = PubSubRequest
    typealias OutboundOut = ByteBuffer

    struct Limits: Sendable, Hashable {
        var commandTimeout: TimeAmount
        var maxPending: Int
        /// Nil: no idle check.
        var healthCheckInterval: TimeAmount?

        init(commandTimeout: TimeAmount, maxPending: Int, healthCheckInterval: TimeAmount? = nil) {
            self.commandTimeout = commandTimeout
            self.maxPending = max(1, maxPending)
            self.healthCheckInterval = healthCheckInterval
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
    private var healthTimer: Scheduled<Void>?
    /// `valuesRead` at the last health check.
    private var valuesReadAtLastCheck: UInt64 = 0
    /// `valuesRead` when the idle check's PING went out; nil when none is outstanding.
    private var pingSentAfter: UInt64?

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
        // The waiters are the handler's now (see `RedisCommandHandler.write`).
        context.write(self.wrapOutboundOut(buffer), promise: nil)
        promise?.succeed()
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

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.scheduleHealthCheck(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.scheduleHealthCheck(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failAll(.connectionClosed)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.failAll(.connectionClosed)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.giveUp(.channelFailed(error), context: context)
    }

    private func protocolViolation(_ message: String, context: ChannelHandlerContext) {
        self.giveUp(.protocolError(message), context: context)
    }

    /// Closes the connection, then fails every waiting request with `error`.
    private func giveUp(_ error: RedisClientError, context: ChannelHandlerContext) {
        let waiters = self.takeAll()
        context.close(promise: nil)
        for waiter in waiters { waiter.promise.fail(error) }
    }

    private func failAll(_ error: RedisClientError) {
        for waiter in self.takeAll() { waiter.promise.fail(error) }
    }

    /// Marks the connection unusable and empties the waiters; the caller fails what it returns.
    private func takeAll() -> [Waiter] {
        self.isClosed = true
        self.healthTimer?.cancel()
        self.healthTimer = nil
        self.timer?.cancel()
        self.timer = nil
        self.timerDeadline = nil
        let waiters = self.waiters
        self.waiters = []
        return waiters
    }

    // MARK: Idle check

    private func scheduleHealthCheck(context: ChannelHandlerContext) {
        guard let interval = self.limits.healthCheckInterval, self.healthTimer == nil, !self.isClosed else { return }
        self.healthTimer = context.eventLoop.assumeIsolated().scheduleTask(in: interval) {
            self.healthTimer = nil
            self.checkHealth(context: context)
        }
    }

    private func checkHealth(context: ChannelHandlerContext) {
        guard !self.isClosed else { return }
        if let sentAfter = self.pingSentAfter {
            guard self.valuesRead != sentAfter else {
                // Not even the PONG in a whole interval: the server is frozen or gone.
                self.giveUp(.timedOut, context: context)
                return
            }
            self.pingSentAfter = nil
        }
        if self.valuesRead == self.valuesReadAtLastCheck {
            var buffer = context.channel.allocator.buffer(capacity: 14)
            if (try? RedisCommand("PING").encode(into: &buffer)) != nil {
                self.pingSentAfter = self.valuesRead
                context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
            }
        }
        self.valuesReadAtLastCheck = self.valuesRead
        self.scheduleHealthCheck(context: context)
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
            let rest = self.takeAll()
            context.close(promise: nil)
            for waiter in expired + rest { waiter.promise.fail(RedisClientError.timedOut) }
            return
        }
        if let next = self.waiters.map(\.deadline).min() { self.armTimer(for: next, context: context) }
        for waiter in expired { waiter.promise.fail(RedisClientError.timedOut) }
    }
}

@available(*, unavailable)
extension RedisPubSubHandler: Sendable {}
