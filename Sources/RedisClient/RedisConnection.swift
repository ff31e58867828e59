import Logging
import NIOConcurrencyHelpers
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

/// One connection to Redis on one event loop, with up to `maxPendingCommands` commands in
/// flight (replies are matched in order), each with a deadline. It does not reconnect: once
/// closed, every pending command has failed and new ones fail with `connectionClosed` at once.
/// `RedisClient` adds reconnection on top.
public final class RedisConnection: RedisCommandExecutor, Sendable {
    let channel: any Channel
    let logger: Logger

    public var eventLoop: any EventLoop { self.channel.eventLoop }

    init(channel: any Channel, logger: Logger) {
        self.channel = channel
        self.logger = logger
    }

    /// Connects as `configuration` says (TCP, TLS for `rediss://`), logs in (`AUTH`) and
    /// selects the URL's database before the connection is handed out. A refused password
    /// fails with `authenticationFailed`, a failed TLS handshake with `tls`, a server that does
    /// not answer within the command timeout with `timedOut`.
    public static func connect(
        configuration: RedisConfiguration,
        on eventLoop: any EventLoop,
        logger: Logger = Logger(label: "sluice.redis")
    ) -> EventLoopFuture<RedisConnection> {
        RedisConnector(configuration: configuration, logger: logger).connect(on: eventLoop)
    }

    public static func connect(
        configuration: RedisConfiguration,
        on eventLoop: any EventLoop,
        logger: Logger = Logger(label: "sluice.redis")
    ) async throws -> RedisConnection {
        try await Self.connect(configuration: configuration, on: eventLoop, logger: logger).get()
    }

    public static func connect(
        to url: RedisURL,
        on eventLoop: any EventLoop,
        connectTimeout: TimeAmount = .seconds(5),
        logger: Logger = Logger(label: "sluice.redis")
    ) -> EventLoopFuture<RedisConnection> {
        Self.connect(configuration: RedisConfiguration(url: url, connectTimeout: connectTimeout), on: eventLoop, logger: logger)
    }

    public static func connect(
        to url: RedisURL,
        on eventLoop: any EventLoop,
        connectTimeout: TimeAmount = .seconds(5),
        logger: Logger = Logger(label: "sluice.redis")
    ) async throws -> RedisConnection {
        try await Self.connect(to: url, on: eventLoop, connectTimeout: connectTimeout, logger: logger).get()
    }

    static let commandHandlerName = "redis.commands"

    /// The pipeline of a command connection (also used on `EmbeddedChannel` in tests).
    static func addHandlers(
        to pipeline: ChannelPipeline.SynchronousOperations,
        limits: RedisCommandHandler.Limits = .init(commandTimeout: RedisConfiguration.defaultCommandTimeout,
                                                   maxPending: RedisConfiguration.defaultMaxPendingCommands),
        replyLimits: RESPParser.Limits = .default
    ) throws {
        try pipeline.addHandler(ByteToMessageHandler(RESPDecoder(limits: replyLimits)))
        try pipeline.addHandler(RedisCommandHandler(limits: limits), name: Self.commandHandlerName)
    }

    /// `AUTH` (when the URL has a password), then `SELECT` (a database other than 0, when
    /// `selectDatabase`), or a `PING` when there is neither: a connection is handed out only
    /// once the server answered on it.
    func handshake(_ url: RedisURL, selectDatabase: Bool) -> EventLoopFuture<Void> {
        var commands: [RedisCommand] = []
        if let password = url.password {
            commands.append(url.user.map { RedisCommand("AUTH", $0, password) } ?? RedisCommand("AUTH", password))
        }
        if selectDatabase && url.database != 0 { commands.append(RedisCommand("SELECT", url.database)) }
        if commands.isEmpty { commands.append(RedisCommand("PING")) }
        let sentAuth = url.password != nil
        let replies = self.send(pipeline: commands)
        return EventLoopFuture.whenAllComplete(replies, on: self.eventLoop).flatMapThrowing { results in
            for (index, result) in results.enumerated() {
                guard case .failure(let error) = result else { continue }
                throw Self.handshakeError(error, isAuth: sentAuth && index == 0)
            }
        }
    }

    /// A refused login says so (Redis's message names no secret); anything else as it is.
    static func handshakeError(_ error: any Error, isAuth: Bool) -> any Error {
        guard case RedisClientError.server(let message) = error else { return error }
        if isAuth || message.hasPrefix("NOAUTH") || message.hasPrefix("WRONGPASS") {
            return RedisClientError.authenticationFailed(message)
        }
        return error
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
        self.channel.writeAndFlush(request).whenFailure { error in
            // Only when the handler never took the request (it was already removed).
            let reason = RedisClientError.channelFailed(error)
            for reply in request.promises { reply.fail(reason) }
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

/// Makes connections for one configuration: TCP, TLS for `rediss://`, then `AUTH` and `SELECT`
/// before a connection is handed out. The TLS context (trust roots, client certificate) is
/// loaded once, when the connector is made.
struct RedisConnector: Sendable {
    let configuration: RedisConfiguration
    let logger: Logger
    private let tls: Result<RedisTLS, RedisClientError>?

    init(configuration: RedisConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        if configuration.url.usesTLS {
            do {
                let context = try configuration.tls.makeContext()
                self.tls = .success(RedisTLS(context: context, configuration: configuration.tls, host: configuration.url.host))
            } catch {
                self.tls = .failure(.tls(error.description))
            }
        } else {
            self.tls = nil
        }
    }

    /// A certificate for another name says which name was expected.
    static func explained(_ error: any Error, tls: RedisTLS?, host: String) -> any Error {
        guard case RedisClientError.tls(let message) = error, message.contains("failedToValidateHostname") else { return error }
        let expected = tls?.serverHostname ?? host
        return RedisClientError.tls("the server's certificate is not valid for \(expected) (redis.tls.server_name sets the name to expect): \(message)")
    }

    /// A command connection, logged in, on `url.database` when `selectDatabase` (pub/sub
    /// channels are not per database, so the subscriber skips it).
    func connect(on eventLoop: any EventLoop, selectDatabase: Bool = true) -> EventLoopFuture<RedisConnection> {
        let tls: RedisTLS?
        switch self.tls {
        case nil: tls = nil
        case .success(let settings): tls = settings
        case .failure(let error): return eventLoop.makeFailedFuture(error)
        }
        let url = self.configuration.url
        let logger = self.logger
        let limits = RedisCommandHandler.Limits(
            commandTimeout: self.configuration.commandTimeout, maxPending: self.configuration.maxPendingCommands)
        let replyLimits = self.configuration.replyLimits
        let handshakes = NIOLockedValueBox([ObjectIdentifier: EventLoopFuture<Void>]())
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(self.configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let tls {
                        try pipeline.addHandler(try tls.makeHandler())
                        let waiter = TLSHandshakeWaiter(promise: channel.eventLoop.makePromise())
                        // Kept by channel: with several addresses, several channels race.
                        handshakes.withLockedValue { $0[ObjectIdentifier(channel)] = waiter.handshake }
                        try pipeline.addHandler(waiter)
                    }
                    try RedisConnection.addHandlers(to: pipeline, limits: limits, replyLimits: replyLimits)
                }
            }
            .connect(host: url.host, port: url.port)
            .flatMap { channel in
                let connection = RedisConnection(channel: channel, logger: logger)
                // With TLS: the commands go out once the server is verified.
                let verified = handshakes.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) }
                    ?? channel.eventLoop.makeSucceededVoidFuture()
                return verified.flatMap { connection.handshake(url, selectDatabase: selectDatabase) }
                    .map { connection }
                    .flatMapError { error in
                        // Never hand out a connection that is not logged in or on the wrong database.
                        connection.close().flatMapThrowing { throw Self.explained(error, tls: tls, host: url.host) }
                    }
            }
    }
}
