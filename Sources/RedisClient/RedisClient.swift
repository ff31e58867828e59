import Logging
import NIOCore

/// The shared Redis command client: one pipelined connection that reconnects by itself.
///
/// While there is no connection (Redis down, backoff running) commands fail at once with
/// `RedisClientError.notConnected` instead of queueing, so memory stays bounded through an
/// outage and callers can degrade right away. When the connection drops, every command in
/// flight fails with `RedisClientError.connectionClosed`. Every command has a deadline
/// (`commandTimeout`), so a frozen Redis (TCP open, nothing answered) fails commands with
/// `timedOut` and then counts as down too: its connection is closed and made again. `isConnected` and the optional
/// `onStateChange` callback report the state for health checks.
///
/// Blocking commands (XREAD BLOCK, BLPOP) would stall every command queued behind them on
/// the shared connection; `xread(blockMilliseconds:)` refuses, and raw `send` leaves it to
/// the caller. Use `makeDedicatedConnection()` for those.
///
/// Call `shutdown()` when done: until then the reconnect loop keeps the client alive.
public final class RedisClient: RedisCommandExecutor, Sendable {
    public let configuration: RedisConfiguration
    public let eventLoop: any EventLoop
    private let logger: Logger
    private let connector: RedisConnector
    private let reconnector: Reconnector<RedisConnection>

    /// Starts connecting right away (in the background); see `isConnected`.
    /// `onStateChange` is called on `eventLoop` after each connect and each disconnect
    /// (the close at shutdown included).
    public init(
        configuration: RedisConfiguration,
        eventLoop: any EventLoop,
        logger: Logger = Logger(label: "sluice.redis"),
        onStateChange: (@Sendable (RedisConnectionState) -> Void)? = nil
    ) {
        let connector = RedisConnector(configuration: configuration, logger: logger)
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.connector = connector
        self.reconnector = Reconnector(
            eventLoop: eventLoop,
            configuration: configuration,
            logger: logger,
            connect: {
                // AUTH and SELECT happen inside connect, before the connection is used.
                connector.connect(on: eventLoop)
            },
            didConnect: { _ in },
            onStateChange: onStateChange
        )
        self.reconnector.start()
    }

    /// Whether commands can be sent right now.
    public var isConnected: Bool {
        self.reconnector.connection?.isActive ?? false
    }

    public func send(_ command: RedisCommand) -> EventLoopFuture<RESPValue> {
        guard let connection = self.activeConnection else {
            return self.eventLoop.makeFailedFuture(self.unavailableError)
        }
        return connection.send(command)
    }

    public func send(pipeline commands: [RedisCommand]) -> [EventLoopFuture<RESPValue>] {
        guard let connection = self.activeConnection else {
            let error = self.unavailableError
            return commands.map { _ in self.eventLoop.makeFailedFuture(error) }
        }
        return connection.send(pipeline: commands)
    }

    /// The current connection unless it already closed (the reconnector learns of a close a
    /// moment later, from the close future).
    private var activeConnection: RedisConnection? {
        guard let connection = self.reconnector.connection, connection.isActive else { return nil }
        return connection
    }

    private var unavailableError: RedisClientError {
        self.reconnector.isShutDown ? .shutDown : .notConnected
    }

    public var allowsBlockingCommands: Bool { false }

    /// A new connection of its own to the same Redis and database (same credentials and TLS),
    /// for blocking commands (XREAD BLOCK). It does not reconnect; the caller closes it.
    public func makeDedicatedConnection() -> EventLoopFuture<RedisConnection> {
        self.connectDedicated()
    }

    public func makeDedicatedConnection() async throws -> RedisConnection {
        try await self.connectDedicated().get()
    }

    private func connectDedicated() -> EventLoopFuture<RedisConnection> {
        self.connector.connect(on: self.eventLoop)
    }

    /// Stops reconnecting and closes the connection; pending commands fail with
    /// `connectionClosed`, later ones with `shutDown`.
    public func shutdown() -> EventLoopFuture<Void> {
        self.reconnector.shutdown()
    }

    public func shutdown() async {
        try? await self.reconnector.shutdown().get()
    }
}
