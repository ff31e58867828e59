import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Tracing

/// Sends finished spans to an OpenTelemetry collector over OTLP/HTTP with the JSON encoding,
/// in batches, off the event loops' hot path: `enqueue` only appends under a lock; a service
/// task posts what has gathered every `interval` (sooner when a batch is full), and once more
/// at shutdown. A full queue drops spans (counted) rather than grow or slow the gateway down.
public final class OTLPExporter: Service, Sendable {
    public struct Configuration: Sendable {
        /// `http(s)://host:port[/path]`; a URL without a path gets `/v1/traces`, as
        /// `OTEL_EXPORTER_OTLP_ENDPOINT` does.
        public var endpoint: String
        public var serviceName: String = "sluice"
        public var serviceInstanceID: String?
        /// Extra request headers (e.g. a collector's API key).
        public var headers: [String: String] = [:]
        public var maxQueuedSpans: Int = 8192
        public var maxBatchSpans: Int = 1024
        public var interval: TimeAmount = .seconds(1)
        public var timeout: TimeAmount = .seconds(10)

        public init(endpoint: String) {
            self.endpoint = endpoint
        }
    }

    public struct InvalidEndpoint: Error, CustomStringConvertible {
        public var description: String
    }

    struct Target: Sendable {
        var host: String
        var port: Int
        var path: String
        var tls: Bool
    }

    private let configuration: Configuration
    private let target: Target
    private let resource: [OTLPJSON.KeyValue]
    private let eventLoopGroup: any EventLoopGroup
    private let tlsContext: NIOSSLContext?
    private let logger: Logger
    private let pending = NIOLockedValueBox<[FinishedSpan]>([])
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation
    private let exported = Counter(label: "sluice_trace_spans_exported_total")
    private let dropped = Counter(label: "sluice_trace_spans_dropped_total")
    private let failures = Counter(label: "sluice_trace_export_failures_total")

    public init(configuration: Configuration, eventLoopGroup: any EventLoopGroup, logger: Logger) throws(InvalidEndpoint) {
        self.configuration = configuration
        self.target = try Self.target(configuration.endpoint)
        if self.target.tls {
            do {
                self.tlsContext = try NIOSSLContext(configuration: .makeClientConfiguration())
            } catch {
                throw InvalidEndpoint(description: "TLS for \(configuration.endpoint): \(error)")
            }
        } else {
            self.tlsContext = nil
        }
        var resource = [OTLPJSON.KeyValue(key: "service.name", value: .string(configuration.serviceName))]
        if let instance = configuration.serviceInstanceID {
            resource.append(OTLPJSON.KeyValue(key: "service.instance.id", value: .string(instance)))
        }
        resource.append(OTLPJSON.KeyValue(key: "telemetry.sdk.name", value: .string("sluice")))
        resource.append(OTLPJSON.KeyValue(key: "telemetry.sdk.language", value: .string("swift")))
        self.resource = resource
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        (self.wakeups, self.wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Checks an endpoint URL the way `init` will (for configuration errors at start-up).
    public static func checkEndpoint(_ endpoint: String) throws(InvalidEndpoint) {
        _ = try self.target(endpoint)
    }

    static func target(_ endpoint: String) throws(InvalidEndpoint) -> Target {
        guard let url = URL(string: endpoint), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
              var host = url.host, !host.isEmpty
        else { throw InvalidEndpoint(description: "not an http(s) URL: \(endpoint)") }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let path = url.path.isEmpty || url.path == "/" ? "/v1/traces" : url.path
        return Target(host: host, port: url.port ?? (scheme == "https" ? 443 : 4318), path: path, tls: scheme == "https")
    }

    func enqueue(_ span: FinishedSpan) {
        let (accepted, full) = self.pending.withLockedValue { pending -> (Bool, Bool) in
            guard pending.count < self.configuration.maxQueuedSpans else { return (false, false) }
            pending.append(span)
            return (true, pending.count >= self.configuration.maxBatchSpans)
        }
        if !accepted { self.dropped.increment() }
        if full { self.wake.yield() }
    }

    /// Spans waiting for the next export.
    public var queuedCount: Int { self.pending.withLockedValue { $0.count } }

    /// Asks for an export now rather than at the next tick.
    public func exportSoon() {
        self.wake.yield()
    }

    public func run() async throws {
        let interval = self.configuration.interval
        let wake = self.wake
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(nanoseconds: UInt64(interval.nanoseconds))
                    wake.yield()
                }
            }
            for await _ in self.wakeups.cancelOnGracefulShutdown() {
                await self.exportPending()
            }
            group.cancelAll()
        }
        // What ended during the drain goes out too.
        await self.exportPending()
    }

    /// Posts everything queued, a batch at a time; a batch that fails is dropped (counted): the
    /// collector may be down for long, and spans are not worth holding memory for.
    func exportPending() async {
        while true {
            let batch = self.pending.withLockedValue { pending -> [FinishedSpan] in
                let count = min(pending.count, self.configuration.maxBatchSpans)
                let batch = Array(pending.prefix(count))
                pending.removeFirst(count)
                return batch
            }
            guard !batch.isEmpty else { return }
            do {
                let body = try OTLPJSON.encode(batch, resource: self.resource, scopeVersion: "1")
                let status = try await self.post(body)
                guard (200..<300).contains(status) else {
                    throw InvalidEndpoint(description: "collector answered HTTP \(status)")
                }
                self.exported.increment(by: batch.count)
            } catch {
                self.failures.increment()
                self.dropped.increment(by: batch.count)
                self.logger.warning("trace export failed", metadata: [
                    "sluice.endpoint": "\(self.configuration.endpoint)", "sluice.error": "\(error)",
                    "sluice.spans": "\(batch.count)",
                ])
            }
        }
    }

    private func post(_ body: Data) async throws -> Int {
        let target = self.target
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: target.port == (target.tls ? 443 : 80) ? target.host : "\(target.host):\(target.port)")
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        for (name, value) in self.configuration.headers { headers.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path, headers: headers)
        let tlsContext = self.tlsContext
        let timeout = self.configuration.timeout
        let channel = try await ClientBootstrap(group: self.eventLoopGroup)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        let tls = try NIOSSLClientHandler(context: tlsContext, serverHostname: target.host)
                        try channel.pipeline.syncOperations.addHandler(tls)
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(StatusHandler(promise: channel.eventLoop.makePromise()))
                }
            }
            .connect(host: target.host, port: target.port).get()
        let status = channel.eventLoop.flatSubmit { () -> EventLoopFuture<Int> in
            let handler: StatusHandler
            do {
                handler = try channel.pipeline.syncOperations.handler(type: StatusHandler.self)
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
            let timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            let result = handler.promise.futureResult
            result.whenComplete { _ in
                timer.cancel()
                channel.close(promise: nil)
            }
            return result
        }
        return try await status.get()
    }
}

/// Waits for the response's status (and its end, so the body is read off the socket).
private final class StatusHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let promise: EventLoopPromise<Int>
    private var status: Int?

    init(promise: EventLoopPromise<Int>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.status = Int(head.status.code)
        case .body: break
        case .end:
            if let status = self.status { self.promise.succeed(status) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.promise.fail(OTLPExporter.InvalidEndpoint(description: "connection closed before the collector answered"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.promise.fail(error)
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.promise.fail(OTLPExporter.InvalidEndpoint(description: "connection closed"))
    }
}

@available(*, unavailable)
extension StatusHandler: Sendable {}
