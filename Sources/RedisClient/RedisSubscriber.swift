import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A connection of its own in subscribe mode (a subscribed connection can run no other
/// command), delivering published messages to per-channel and per-pattern handlers.
///
/// Subscriptions are desired state: they are kept across disconnects and re-made on every
/// reconnect (same backoff as `RedisClient`), after which `onResubscribed` is called. Messages
/// published while the connection was down are lost, so callers resync there.
///
/// Handlers run on `eventLoop`, one message at a time in arrival order; they must not block.
/// One handler per channel (or pattern): subscribing again replaces it. Call `shutdown()` when
/// done: until then the reconnect loop keeps the subscriber alive.
public final class RedisSubscriber: Sendable {
    public typealias MessageHandler = @Sendable (RedisPubSubMessage) -> Void

    private struct Registry {
        var channels: [String: MessageHandler] = [:]
        var patterns: [String: MessageHandler] = [:]
    }

    public let configuration: RedisConfiguration
    public let eventLoop: any EventLoop
    private let registry: NIOLockedValueBox<Registry>
    private let reconnector: Reconnector<PubSubConnection>

    /// Starts connecting right away. `onStateChange` is called after each connect and
    /// disconnect; `onResubscribed` after every connect that re-made at least one subscription,
    /// once Redis confirmed them all. Both run on `eventLoop`.
    public init(
        configuration: RedisConfiguration,
        eventLoop: any EventLoop,
        logger: Logger = Logger(label: "sluice.redis.subscriber"),
        onStateChange: (@Sendable (RedisConnectionState) -> Void)? = nil,
        onResubscribed: (@Sendable () -> Void)? = nil
    ) {
        let registry = NIOLockedValueBox(Registry())
        let connector = RedisConnector(configuration: configuration, logger: logger)
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.registry = registry
        self.reconnector = Reconnector(
            eventLoop: eventLoop,
            configuration: configuration,
            logger: logger,
            connect: {
                PubSubConnection.connect(with: connector, on: eventLoop) { message in
                    let handler = registry.withLockedValue { registry in
                        if let pattern = message.pattern { registry.patterns[pattern] } else { registry.channels[message.channel] }
                    }
                    // No handler: a message that raced an unsubscribe.
                    handler?(message)
                }
            },
            didConnect: { connection in
                // The snapshot is taken after the connection became current: a subscribe() that
                // saw no connection is in it, one that saw this connection sent its own command
                // (twice is harmless, Redis just confirms again).
                let (channels, patterns) = registry.withLockedValue { (Array($0.channels.keys), Array($0.patterns.keys)) }
                guard !channels.isEmpty || !patterns.isEmpty else { return }
                var confirmations: [EventLoopFuture<Void>] = []
                if !channels.isEmpty { confirmations.append(connection.send(.subscribe, names: channels)) }
                if !patterns.isEmpty { confirmations.append(connection.send(.psubscribe, names: patterns)) }
                EventLoopFuture.andAllSucceed(confirmations, on: eventLoop).whenComplete { result in
                    switch result {
                    case .success:
                        logger.info("Redis subscriptions restored", metadata: ["channels": "\(channels.count)", "patterns": "\(patterns.count)"])
                        onResubscribed?()
                    case .failure(let error):
                        // The connection dropped again (the next connect retries) or Redis refused.
                        logger.warning("Redis resubscribe failed", metadata: ["error": "\(error)"])
                    }
                }
            },
            onStateChange: onStateChange
        )
        self.reconnector.start()
    }

    /// Whether the subscriber connection is up.
    public var isConnected: Bool {
        self.reconnector.connection?.channel.isActive ?? false
    }

    /// Subscribes to `channel`. The future succeeds once Redis confirmed. When not connected it
    /// fails with `notConnected`, but the subscription is kept and made on the next connect.
    public func subscribe(_ channel: String, handler: @escaping MessageHandler) -> EventLoopFuture<Void> {
        self.registry.withLockedValue { $0.channels[channel] = handler }
        return self.send(.subscribe, channel)
    }

    /// Subscribes to every channel matching the glob-style `pattern`; see `subscribe`.
    public func psubscribe(_ pattern: String, handler: @escaping MessageHandler) -> EventLoopFuture<Void> {
        self.registry.withLockedValue { $0.patterns[pattern] = handler }
        return self.send(.psubscribe, pattern)
    }

    /// Unsubscribes from `channel`; its handler is dropped at once. Succeeds at once when not
    /// connected (there is nothing to undo on the server then).
    public func unsubscribe(_ channel: String) -> EventLoopFuture<Void> {
        self.registry.withLockedValue { _ = $0.channels.removeValue(forKey: channel) }
        return self.send(.unsubscribe, channel, succeedWhenDisconnected: true)
    }

    public func punsubscribe(_ pattern: String) -> EventLoopFuture<Void> {
        self.registry.withLockedValue { _ = $0.patterns.removeValue(forKey: pattern) }
        return self.send(.punsubscribe, pattern, succeedWhenDisconnected: true)
    }

    public func subscribe(_ channel: String, handler: @escaping MessageHandler) async throws {
        try await self.subscribe(channel, handler: handler).get()
    }

    public func psubscribe(_ pattern: String, handler: @escaping MessageHandler) async throws {
        try await self.psubscribe(pattern, handler: handler).get()
    }

    public func unsubscribe(_ channel: String) async throws {
        try await self.unsubscribe(channel).get()
    }

    public func punsubscribe(_ pattern: String) async throws {
        try await self.punsubscribe(pattern).get()
    }

    private func send(_ command: PubSubCommand, _ name: String, succeedWhenDisconnected: Bool = false) -> EventLoopFuture<Void> {
        guard let connection = self.reconnector.connection, connection.channel.isActive else {
            if self.reconnector.isShutDown { return self.eventLoop.makeFailedFuture(RedisClientError.shutDown) }
            if succeedWhenDisconnected { return self.eventLoop.makeSucceededVoidFuture() }
            return self.eventLoop.makeFailedFuture(RedisClientError.notConnected)
        }
        return connection.send(command, names: [name])
    }

    /// Stops reconnecting and closes the connection. Idempotent.
    public func shutdown() -> EventLoopFuture<Void> {
        self.reconnector.shutdown()
    }

    public func shutdown() async {
        try? await self.reconnector.shutdown().get()
    }
}

/// The subscriber's connection: a channel with `RedisPubSubHandler` instead of the command handler.
final class PubSubConnection: ReconnectableConnection {
    let channel: any Channel

    init(channel: any Channel) {
        self.channel = channel
    }

    /// Connects and logs in like a command connection (no SELECT: pub/sub channels are global,
    /// not per database), then swaps the command handler for the subscribe-mode one.
    static func connect(
        with connector: RedisConnector,
        on eventLoop: any EventLoop,
        onMessage: @escaping @Sendable (RedisPubSubMessage) -> Void
    ) -> EventLoopFuture<PubSubConnection> {
        // Idle for a command timeout: PING; no answer by the next check: closed and made again.
        let limits = RedisPubSubHandler.Limits(
            commandTimeout: connector.configuration.commandTimeout, maxPending: connector.configuration.maxPendingCommands,
            healthCheckInterval: connector.configuration.commandTimeout)
        return connector.connect(on: eventLoop, selectDatabase: false).flatMap { connection in
            connection.channel.pipeline.syncOperations.removeHandler(name: RedisConnection.commandHandlerName)
                .flatMapThrowing {
                    try connection.channel.pipeline.syncOperations.addHandler(RedisPubSubHandler(limits: limits, onMessage: onMessage))
                    return PubSubConnection(channel: connection.channel)
                }
                .flatMapError { error in
                    connection.close().flatMapThrowing { throw error }
                }
        }
    }

    static func addHandlers(
        to pipeline: ChannelPipeline.SynchronousOperations,
        limits: RedisPubSubHandler.Limits = .init(commandTimeout: RedisConfiguration.defaultCommandTimeout,
                                                  maxPending: RedisConfiguration.defaultMaxPendingCommands),
        onMessage: @escaping (RedisPubSubMessage) -> Void
    ) throws {
        try pipeline.addHandler(ByteToMessageHandler(RESPDecoder()))
        try pipeline.addHandler(RedisPubSubHandler(limits: limits, onMessage: onMessage))
    }

    /// Sends one SUBSCRIBE-family command; succeeds when every name was confirmed.
    func send(_ command: PubSubCommand, names: [String]) -> EventLoopFuture<Void> {
        let eventLoop = self.channel.eventLoop
        let confirmations = names.map { _ in eventLoop.makePromise(of: Void.self) }
        let request = PubSubRequest(command: command, names: names, promises: confirmations)
        self.channel.writeAndFlush(request).whenFailure { error in
            // Only when the handler never took the request (it was already removed).
            let reason = RedisClientError.channelFailed(error)
            for confirmation in confirmations { confirmation.fail(reason) }
        }
        return EventLoopFuture.andAllSucceed(confirmations.map(\.futureResult), on: eventLoop)
    }

    var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    func close() -> EventLoopFuture<Void> {
        self.channel.close().flatMapError { _ in self.channel.closeFuture }
    }
}
