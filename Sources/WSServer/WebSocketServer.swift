import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// The listener: binds, builds each connection's pipeline, and drains on graceful shutdown.
///
/// Drain (SIGTERM/SIGINT through swift-service-lifecycle): `/ready` turns 503 and new upgrades
/// are refused with 503; after `drain.gracePeriod` (skipped when no connection is open) the
/// listener closes and every connection gets Close 1012; `run()` returns when all are closed or
/// `drain.deadline` passes (then the rest are dropped).
public final class WebSocketServer: Service, Sendable {
    private let shared: ServerShared
    private let logger: Logger
    private let group: any EventLoopGroup
    private let ownsGroup: Bool
    private let sslContext: NIOSSLContext?
    private let listener = Mutex<(any Channel)?>(nil)

    public var configuration: WebSocketServerConfiguration { self.shared.configuration }

    /// - Parameter httpRoutes: plain HTTP routes of the application beside the WebSocket endpoint.
    /// - Parameter eventLoopGroup: loops to run on; by default a new one with
    ///   `configuration.eventLoopThreads` threads (one per core when 0), shut down when `run` ends.
    /// - Parameter readiness: the application's readiness for `/ready`: nil when ready, else
    ///   the reason it is not (answered with 503).
    /// - Parameter memoryBudget: the process-wide byte budget to charge, shared with the
    ///   application; by default a new one of `configuration.memoryBudget` bytes.
    public init(
        configuration: WebSocketServerConfiguration,
        application: any WebSocketApplication,
        httpRoutes: (any HTTPRouteProvider)? = nil,
        eventLoopGroup: (any EventLoopGroup)? = nil,
        readiness: (@Sendable () -> String?)? = nil,
        memoryBudget: MemoryBudget? = nil,
        logger: Logger
    ) throws {
        self.shared = ServerShared(
            configuration: configuration, application: application, httpRoutes: httpRoutes, readiness: readiness, budget: memoryBudget)
        self.logger = logger
        if let eventLoopGroup {
            self.group = eventLoopGroup
            self.ownsGroup = false
        } else {
            let threads = configuration.eventLoopThreads > 0 ? configuration.eventLoopThreads : System.coreCount
            self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
            self.ownsGroup = true
        }
        if configuration.tls.isEnabled {
            let chain = try NIOSSLCertificate.fromPEMFile(configuration.tls.certificatePath!)
            let key = try NIOSSLPrivateKey(file: configuration.tls.privateKeyPath!, format: .pem)
            let tls = NIOSSL.TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            self.sslContext = try NIOSSLContext(configuration: tls)
        } else {
            self.sslContext = nil
        }
    }

    /// Open WebSocket connections right now.
    public var connectionCount: Int { self.shared.registry.count }
    /// Open client connections right now, HTTP and WebSocket.
    public var openConnectionCount: Int { self.shared.connections.total }
    /// The byte budget this server charges.
    public var memoryBudget: MemoryBudget { self.shared.budget }
    public var isDraining: Bool { self.shared.isDraining }
    /// How many times a WebSocket stopped reading because its peer did not take what was sent
    /// (since start): what a test waits for to know backpressure is in effect.
    public var readsPausedForBackpressure: Int { self.shared.metrics.readPauseCount }

    /// Binds the listener; returns the bound address (useful with port 0).
    @discardableResult
    public func start() async throws -> SocketAddress {
        let shared = self.shared
        let sslContext = self.sslContext
        let configuration = shared.configuration
        let channel = try await ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // NIO keeps each channel's last receive buffer for reuse: start small (a handshake
            // fits in 512 bytes) so an idle connection holds little; it grows under load.
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536))
            .childChannelOption(.writeBufferWaterMark, value: .init(
                low: configuration.writeBufferLowWatermark, high: configuration.writeBufferHighWatermark))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard Self.admit(channel, shared: shared, tls: sslContext != nil) else { return }
                    try Self.configurePipeline(channel, shared: shared, sslContext: sslContext)
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        self.listener.withLock { $0 = channel }
        let address = channel.localAddress!
        // `sluice.port` is the bound port (the one the kernel picked for port 0), for whoever
        // started this process: a test or a script reads it from the log.
        self.logger.info("listening", metadata: [
            "sluice.address": "\(address)",
            "sluice.port": "\(address.port ?? 0)",
            "sluice.path": "\(configuration.path)",
            "sluice.tls": "\(sslContext != nil)",
        ])
        return address
    }

    /// Counts a new connection against `max_connections` and, when the peer is the client,
    /// `max_connections_per_address`. Over either: the connection gets a fixed 503 (nothing it
    /// sends is parsed) and is closed; false then.
    static func admit(_ channel: any Channel, shared: ServerShared, tls: Bool) -> Bool {
        let configuration = shared.configuration
        let key: String? = configuration.forwardedForHops == 0 && configuration.maxConnectionsPerAddress > 0
            ? ClientAddress.limitKey(channel.remoteAddress?.ipAddress ?? "unknown") : nil
        if let refusal = shared.connections.open(
            key: key, maxTotal: configuration.maxConnections, maxPerAddress: configuration.maxConnectionsPerAddress)
        {
            shared.metrics.connectionRefused(refusal)
            let message = refusal == .total ? "too many connections; retry later" : "too many connections from this address; retry later"
            try? channel.pipeline.syncOperations.addHandler(ConnectionRefusalHandler(message: tls ? nil : message))
            return false
        }
        shared.metrics.tcpConnectionOpened()
        channel.closeFuture.whenComplete { _ in
            shared.connections.close(key: key)
            shared.metrics.tcpConnectionClosed()
        }
        return true
    }

    static func configurePipeline(_ channel: any Channel, shared: ServerShared, sslContext: NIOSSLContext?) throws {
        let pipeline = channel.pipeline.syncOperations
        if let sslContext {
            try pipeline.addHandler(NIOSSLServerHandler(context: sslContext))
        }
        let upgrader = WebSocketUpgrader(server: shared)
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: true,
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                // The HTTP handlers NIO does not know of leave too (see HTTPRequestGate).
                let pipeline = context.pipeline.syncOperations
                if let gate = try? pipeline.handler(type: HTTPRequestGate.self) { pipeline.removeHandler(gate, promise: nil) }
            }),
            withErrorHandling: true)
        let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
        try pipeline.addHandler(HTTPRequestGate(), position: .after(decoder))
        try pipeline.addHandler(HTTPRouteHandler(server: shared))
    }

    public func run() async throws {
        if self.listener.withLock({ $0 == nil }) {
            try await self.start()
        }
        await withTaskCancellationHandler {
            // Suspends until graceful shutdown is triggered (or the task is cancelled).
            try? await gracefulShutdown()
        } onCancel: {
            self.closeListener()
        }
        await self.drain()
        if self.ownsGroup {
            try? await self.group.shutdownGracefully()
        }
    }

    /// The drain sequence; also callable directly (tests).
    public func drain() async {
        let configuration = self.shared.configuration.drain
        self.shared.startDraining()
        let started = ContinuousClock.now
        let open = self.shared.registry.count
        self.logger.notice("draining", metadata: ["sluice.connections": "\(open)"])
        if open > 0 && !Task.isCancelled {
            try? await Task.sleep(for: .nanoseconds(configuration.gracePeriod.nanoseconds))
        }
        self.closeListener()
        for channel in self.shared.registry.all() {
            channel.triggerUserOutboundEvent(
                WebSocketServerEvent.close(.serviceRestart, reason: "server restarting"), promise: nil)
        }
        let deadline = started + .nanoseconds(configuration.deadline.nanoseconds)
        while self.shared.registry.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        let left = self.shared.registry.all()
        for channel in left { channel.close(promise: nil) }
        self.logger.notice("drained", metadata: ["sluice.forced_closes": "\(left.count)"])
    }

    private func closeListener() {
        let channel = self.listener.withLock { channel -> (any Channel)? in
            defer { channel = nil }
            return channel
        }
        channel?.close(promise: nil)
    }
}
