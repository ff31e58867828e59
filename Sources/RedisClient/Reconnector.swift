import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Whether a `RedisClient` or `RedisSubscriber` currently has a working connection.
public enum RedisConnectionState: Sendable, Hashable {
    case connected
    case disconnected
}

/// Settings shared by `RedisClient`, `RedisSubscriber` and every connection they make.
public struct RedisConfiguration: Sendable {
    /// Where Redis is, and the credentials and database used on every connection.
    public var url: RedisURL
    /// For `rediss://` URLs (ignored otherwise).
    public var tls: RedisTLSConfiguration
    /// How long one TCP connect may take before it counts as failed.
    public var connectTimeout: TimeAmount
    /// How long a command may wait for its reply (blocking commands: plus their block time).
    /// A connection that answered nothing within it is closed and made again.
    public var commandTimeout: TimeAmount
    /// Commands waiting for replies on one connection, at most; more fail at once with
    /// `tooManyPendingCommands`.
    public var maxPendingCommands: Int
    /// What one reply may make the parser hold (replies are outside input).
    public var replyLimits: RESPParser.Limits
    /// Delay before the first reconnect attempt; doubled after each failure up to `maximumBackoff`,
    /// and back to this after a successful connect.
    public var initialBackoff: TimeAmount
    public var maximumBackoff: TimeAmount

    public static let defaultCommandTimeout: TimeAmount = .seconds(2)
    public static let defaultMaxPendingCommands = 10_000

    public init(
        url: RedisURL,
        tls: RedisTLSConfiguration = .init(),
        connectTimeout: TimeAmount = .seconds(5),
        commandTimeout: TimeAmount = RedisConfiguration.defaultCommandTimeout,
        maxPendingCommands: Int = RedisConfiguration.defaultMaxPendingCommands,
        replyLimits: RESPParser.Limits = .default,
        initialBackoff: TimeAmount = .milliseconds(50),
        maximumBackoff: TimeAmount = .seconds(2)
    ) {
        self.url = url
        self.tls = tls
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.maxPendingCommands = maxPendingCommands
        self.replyLimits = replyLimits
        self.initialBackoff = initialBackoff
        self.maximumBackoff = maximumBackoff
    }

    /// Checks what can be checked before connecting: the TLS files of a `rediss://` URL.
    public func validate() throws(RedisTLSError) {
        if self.url.usesTLS { _ = try self.tls.makeContext() }
    }
}

/// A connection the `Reconnector` can watch and close.
protocol ReconnectableConnection: AnyObject, Sendable {
    var closeFuture: EventLoopFuture<Void> { get }
    func close() -> EventLoopFuture<Void>
}

extension RedisConnection: ReconnectableConnection {}

/// Keeps one connection up: connects, and whenever the connection fails or drops, tries again
/// after an exponential backoff, forever, until shut down. Used by both `RedisClient` and
/// `RedisSubscriber`, which differ only in how a connection is made and prepared.
final class Reconnector<Connection: ReconnectableConnection>: Sendable {
    typealias Connect = @Sendable () -> EventLoopFuture<Connection>
    /// Runs on a fresh connection right after it becomes current (under no lock, on `eventLoop`).
    typealias DidConnect = @Sendable (Connection) -> Void

    private struct State {
        var connection: Connection?
        /// The attempt in progress; shutdown waits for it so no connection outlives the owner.
        var attempt: EventLoopFuture<Void>?
        var retryTimer: Scheduled<Void>?
        var backoff: TimeAmount
        /// Failed attempts since the last successful connect (only the first one is logged loudly).
        var failures = 0
        var isShutDown = false
    }

    let eventLoop: any EventLoop
    private let configuration: RedisConfiguration
    private let logger: Logger
    private let connect: Connect
    private let didConnect: DidConnect
    private let onStateChange: (@Sendable (RedisConnectionState) -> Void)?
    private let state: NIOLockedValueBox<State>

    init(
        eventLoop: any EventLoop,
        configuration: RedisConfiguration,
        logger: Logger,
        connect: @escaping Connect,
        didConnect: @escaping DidConnect,
        onStateChange: (@Sendable (RedisConnectionState) -> Void)?
    ) {
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.logger = logger
        self.connect = connect
        self.didConnect = didConnect
        self.onStateChange = onStateChange
        self.state = NIOLockedValueBox(State(backoff: configuration.initialBackoff))
    }

    /// The current connection, if there is one. Nil while reconnecting or after shutdown.
    var connection: Connection? {
        self.state.withLockedValue { $0.connection }
    }

    var isShutDown: Bool {
        self.state.withLockedValue { $0.isShutDown }
    }

    func start() {
        self.attemptConnect()
    }

    private func attemptConnect() {
        let done = self.eventLoop.makePromise(of: Void.self)
        let proceed = self.state.withLockedValue { state -> Bool in
            guard !state.isShutDown else { return false }
            state.retryTimer = nil
            state.attempt = done.futureResult
            return true
        }
        guard proceed else {
            done.succeed()
            return
        }
        self.connect().hop(to: self.eventLoop).whenComplete { result in
            switch result {
            case .success(let connection):
                self.adopt(connection, done: done)
            case .failure(let error):
                let failures = self.state.withLockedValue { state in
                    state.failures += 1
                    return state.failures
                }
                // The first failure, and now and then after it (a wrong password stays wrong).
                let level: Logger.Level = failures == 1 || failures % 30 == 0 ? .warning : .debug
                self.logger.log(level: level, "Redis connect failed; retrying with backoff",
                                metadata: ["redis.url": "\(self.configuration.url)", "error": "\(error)", "attempt": "\(failures)"])
                self.scheduleRetry()
                done.succeed()
            }
        }
    }

    private func adopt(_ connection: Connection, done: EventLoopPromise<Void>) {
        let accepted = self.state.withLockedValue { state -> Bool in
            state.attempt = nil
            guard !state.isShutDown else { return false }
            state.connection = connection
            state.backoff = self.configuration.initialBackoff
            state.failures = 0
            return true
        }
        guard accepted else {
            connection.close().whenComplete { _ in done.succeed() }
            return
        }
        done.succeed()
        self.logger.info("Redis connected", metadata: ["redis.url": "\(self.configuration.url)"])
        self.onStateChange?(.connected)
        connection.closeFuture.whenComplete { _ in self.connectionClosed(connection) }
        self.didConnect(connection)
    }

    private func connectionClosed(_ connection: Connection) {
        let wasCurrent = self.state.withLockedValue { state -> Bool in
            guard state.connection === connection else { return false }
            state.connection = nil
            return true
        }
        guard wasCurrent else { return }
        let isShutDown = self.isShutDown
        if !isShutDown {
            self.logger.warning("Redis connection lost; reconnecting", metadata: ["redis.url": "\(self.configuration.url)"])
        }
        self.onStateChange?(.disconnected)
        self.scheduleRetry()
    }

    private func scheduleRetry() {
        self.state.withLockedValue { state in
            guard !state.isShutDown else { return }
            let delay = state.backoff
            state.backoff = min(state.backoff * 2, self.configuration.maximumBackoff)
            state.retryTimer = self.eventLoop.scheduleTask(in: delay) { self.attemptConnect() }
        }
    }

    /// Stops reconnecting and closes the connection (its pending commands fail with
    /// `connectionClosed`). Completes when nothing is left open. Idempotent.
    func shutdown() -> EventLoopFuture<Void> {
        let (connection, attempt, timer) = self.state.withLockedValue { state in
            state.isShutDown = true
            defer {
                state.retryTimer = nil
                state.attempt = nil
            }
            return (state.connection, state.attempt, state.retryTimer)
        }
        timer?.cancel()
        let closed = connection?.close() ?? self.eventLoop.makeSucceededVoidFuture()
        let attempted = attempt ?? self.eventLoop.makeSucceededVoidFuture()
        return closed.and(attempted).map { _ in }
    }
}
