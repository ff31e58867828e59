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
///
/// Bounds:
/// - Every command has a deadline: `commandTimeout` after it was written, plus its block time
///   for a blocking command. Past it the command fails with `timedOut`, but its slot stays in
///   the FIFO: the late reply, when it comes, is dropped there rather than given to the next
///   command.
/// - A connection on which nothing at all was read since a timed-out command was written is
///   stalled (a frozen or unreachable server, TCP still open): it is closed, every pending
///   command fails, and the owner reconnects. So is one with more than `maxTimedOutSlots` late
///   replies still to come.
/// - At most `maxPending` commands wait for replies; past that a command fails at once with
///   `tooManyPendingCommands` and is not sent.
///
/// Removable: the subscriber's connection logs in through it, then swaps it for the
/// subscribe-mode handler.
final class RedisCommandHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = RedisRequest
    typealias OutboundOut = ByteBuffer

    struct Limits: Sendable, Hashable {
        var commandTimeout: TimeAmount
        var maxPending: Int
        /// Timed-out commands whose replies may still arrive, at most, before the connection is
        /// given up as too far behind.
        var maxTimedOutSlots: Int

        init(commandTimeout: TimeAmount, maxPending: Int, maxTimedOutSlots: Int? = nil) {
            self.commandTimeout = commandTimeout
            self.maxPending = max(1, maxPending)
            self.maxTimedOutSlots = maxTimedOutSlots ?? max(1, min(self.maxPending / 2, 1_000))
        }
    }

    private struct Slot {
        /// Nil once the command timed out: its reply is dropped when it comes.
        var promise: EventLoopPromise<RESPValue>?
        var deadline: NIODeadline
        /// `repliesRead` when the command was written: unchanged at its deadline means the
        /// connection said nothing at all meanwhile.
        var repliesReadBefore: UInt64
    }

    private let limits: Limits
    private var pending = CircularBuffer<Slot>(initialCapacity: 16)
    private var timedOutSlots = 0
    private var repliesRead: UInt64 = 0
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?
    /// Set once the connection is unusable; later writes fail at once instead of queueing
    /// promises nobody would ever complete.
    private var isClosed = false

    init(limits: Limits) {
        self.limits = limits
    }

    /// Commands sent and not yet answered (timed-out ones whose replies are still to come included).
    var pendingCount: Int { self.pending.count }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = self.unwrapOutboundIn(data)
        if self.isClosed {
            for reply in request.promises { reply.fail(RedisClientError.connectionClosed) }
            promise?.fail(RedisClientError.connectionClosed)
            return
        }
        // A pipeline goes whole or not at all: its commands often belong together (XADD + PUBLISH).
        guard request.commands.count <= self.limits.maxPending - self.pending.count else {
            for reply in request.promises { reply.fail(RedisClientError.tooManyPendingCommands) }
            promise?.fail(RedisClientError.tooManyPendingCommands)
            return
        }
        let now = context.eventLoop.now
        var buffer = context.channel.allocator.buffer(capacity: 64 * request.commands.count)
        var earliest: NIODeadline?
        for (command, reply) in zip(request.commands, request.promises) {
            do {
                try command.encode(into: &buffer)
                let deadline = now + self.limits.commandTimeout + command.blockTime
                self.pending.append(Slot(promise: reply, deadline: deadline, repliesReadBefore: self.repliesRead))
                earliest = min(earliest ?? deadline, deadline)
            } catch {
                reply.fail(error)
            }
        }
        if let earliest { self.armTimer(for: earliest, context: context) }
        // The handler owns the replies' promises now: whatever ends the connection (a reset, a
        // failed TLS handshake, a deadline) fails them with its own reason. The caller's write
        // promise only tells whether the handler took the request.
        context.write(self.wrapOutboundOut(buffer), promise: nil)
        promise?.succeed()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isClosed else { return }
        let value = self.unwrapInboundIn(data)
        self.repliesRead &+= 1
        guard let slot = self.pending.popFirst() else {
            // A reply nobody asked for means the stream is out of step; nothing after it can be
            // matched reliably.
            self.giveUp(.protocolError("a reply nobody asked for"), context: context)
            return
        }
        guard let reply = slot.promise else {
            // The late reply of a command that timed out: its caller has moved on.
            self.timedOutSlots -= 1
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
        self.giveUp(.channelFailed(error), context: context)
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
        var expired: [EventLoopPromise<RESPValue>] = []
        var stalled = false
        var next: NIODeadline?
        for index in self.pending.indices {
            guard let promise = self.pending[index].promise else { continue }
            if self.pending[index].deadline <= now {
                expired.append(promise)
                self.pending[index].promise = nil
                self.timedOutSlots += 1
                if self.pending[index].repliesReadBefore == self.repliesRead { stalled = true }
            } else {
                next = min(next ?? self.pending[index].deadline, self.pending[index].deadline)
            }
        }
        // Fail after the bookkeeping: a callback may send the next command right away.
        if stalled || self.timedOutSlots > self.limits.maxTimedOutSlots {
            let rest = self.takeAll()
            context.close(promise: nil)
            for promise in expired + rest { promise.fail(RedisClientError.timedOut) }
            return
        }
        if let next { self.armTimer(for: next, context: context) }
        for promise in expired { promise.fail(RedisClientError.timedOut) }
    }

    // MARK: Closing

    /// Closes the connection, then fails every pending command with `error` (closed first, so
    /// whoever sees the failure sees the connection gone).
    private func giveUp(_ error: RedisClientError, context: ChannelHandlerContext) {
        let promises = self.takeAll()
        context.close(promise: nil)
        for promise in promises { promise.fail(error) }
    }

    private func failAll(_ error: RedisClientError) {
        for promise in self.takeAll() { promise.fail(error) }
    }

    /// Marks the connection unusable and empties the FIFO; the caller fails what it returns.
    private func takeAll() -> [EventLoopPromise<RESPValue>] {
        self.isClosed = true
        self.timer?.cancel()
        self.timer = nil
        self.timerDeadline = nil
        self.timedOutSlots = 0
        var promises: [EventLoopPromise<RESPValue>] = []
        promises.reserveCapacity(self.pending.count)
        while let slot = self.pending.popFirst() {
            if let promise = slot.promise { promises.append(promise) }
        }
        return promises
    }
}

@available(*, unavailable)
extension RedisCommandHandler: Sendable {}
