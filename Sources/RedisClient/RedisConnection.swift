import Logging
import NIOCore
import NIOPosix

/// Anything that runs Redis commands: a single `RedisConnection` or the reconnecting
/// `RedisClient`. The typed helpers (`get`, `set`, `xadd`, ...) are built on these two sends.
public protocol RedisCommandExecutor: Sendable {
    /// Sends one command; the future completes with its reply on the connection's event loop.
    /// An error reply fails it with `RedisClientError.server`.
    func send(_ command: RedisCommand) -> EventLoopFuture<RESPValue>

    /// Sends several commands in one write (one flush, one syscall when they fit), without
    /// waiting for replies in between. Each command succeeds or fails on its own.
    func send(pipeline commands: [RedisCommand]) -> [EventLoopFuture<RESPValue>]

    /// Whether blocking commands (XREAD BLOCK) may be sent. False for the shared client
    /// connection, where one would stall every command pipelined behind it.
    var allowsBlockingCommands: Bool { get }
}

/// One TCP connection to Redis on one event loop, with any number of commands in flight
/// (replies are matched in order). It does not reconnect: once closed, every pending command
/// has failed with `RedisClientError.connectionClosed` and new ones fail the same way at once.
/// `RedisClient` adds reconnection on top.
public final class RedisConnection: RedisCommandExecutor, Sendable {
    let channel: any Channel
    let logger: Logger

    public var eventLoop: any EventLoop { self.channel.eventLoop }

    init(channel: any Channel, logger: Logger) {
        self.channel = channel
        self.logger = logger
    }

    /// Connects to `host:port` on `eventLoop` and, for a database other than 0, selects it
    /// before the connection is handed out.
    public static func connect(
        host: String,
        port: Int,
        database: Int = 0,
        on eventLoop: any EventLoop,
        connectTimeout: TimeAmount = .seconds(5),
        logger: Logger = Logger(label: "sluice.redis")
    ) -> EventLoopFuture<RedisConnection> {
        ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Self.addHandlers(to: channel.pipeline.syncOperations)
                }
            }
            .connect(host: host, port: port)
            .flatMap { channel in
                let connection = RedisConnection(channel: channel, logger: logger)
                guard database != 0 else { return channel.eventLoop.makeSucceededFuture(connection) }
                return connection.send(RedisCommand("SELECT", database)).flatMapError { error in
                    // Never hand out a connection on the wrong database.
                    connection.close().flatMapThrowing { throw error }
                }.map { _ in connection }
            }
    }

    public static func connect(
        to url: RedisURL,
        on eventLoop: any EventLoop,
        connectTimeout: TimeAmount = .seconds(5),
        logger: Logger = Logger(label: "sluice.redis")
    ) -> EventLoopFuture<RedisConnection> {
        Self.connect(host: url.host, port: url.port, database: url.database, on: eventLoop,
                     connectTimeout: connectTimeout, logger: logger)
    }

    public static func connect(
        to url: RedisURL,
        on eventLoop: any EventLoop,
        connectTimeout: TimeAmount = .seconds(5),
        logger: Logger = Logger(label: "sluice.redis")
    ) async throws -> RedisConnection {
        try await Self.connect(to: url, on: eventLoop, connectTimeout: connectTimeout, logger: logger).get()
    }

    /// The pipeline of a command connection (also used on `EmbeddedChannel` in tests).
    static func addHandlers(to pipeline: ChannelPipeline.SynchronousOperations) throws {
        try pipeline.addHandler(ByteToMessageHandler(RESPDecoder()))
        try pipeline.addHandler(RedisCommandHandler())
    }

    public func send(_ command: RedisCommand) -> EventLoopFuture<RESPValue> {
        let reply = self.channel.eventLoop.makePromise(of: RESPValue.self)
        self.write(RedisRequest(commands: [command], promises: [reply]))
        return reply.futureResult
    }

    public func send(pipeline commands: [RedisCommand]) -> [EventLoopFuture<RESPValue>] {
        let replies = commands.map { _ in self.channel.eventLoop.makePromise(of: RESPValue.self) }
        if !commands.isEmpty {
            self.write(RedisRequest(commands: commands, promises: replies))
        }
        return replies.map(\.futureResult)
    }

    private func write(_ request: RedisRequest) {
        // The handler fails the promises itself if the connection is closed; this covers a
        // pipeline whose handler was already removed (the write then fails in the head).
        self.channel.writeAndFlush(request).whenFailure { _ in
            for reply in request.promises { reply.fail(RedisClientError.connectionClosed) }
        }
    }

    public var allowsBlockingCommands: Bool { true }

    /// Whether the TCP connection is still open.
    public var isActive: Bool { self.channel.isActive }

    /// Completes when the connection has closed, for whatever reason.
    public var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    /// Closes the connection; pending commands fail with `connectionClosed`. Closing twice is fine.
    @discardableResult
    public func close() -> EventLoopFuture<Void> {
        self.closeChannel()
    }

    public func close() async {
        try? await self.closeChannel().get()
    }

    private func closeChannel() -> EventLoopFuture<Void> {
        self.channel.close().flatMapError { _ in
            // Already closed: the close future is what the caller cares about.
            self.channel.closeFuture
        }
    }
}
