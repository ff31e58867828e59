import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// A scripted HTTP upstream on 127.0.0.1: it decodes the request with NIOHTTP1, then writes the
/// script's raw bytes (so tests choose every TCP write, split and pause), and records what it saw.
public final class FakeUpstream: Sendable {
    public struct Request: Sendable {
        public var method: HTTPMethod
        public var uri: String
        public var headers: HTTPHeaders
        public var body: String

        public var json: [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(self.body.utf8))) as? [String: Any]
        }
    }

    public enum Step: Sendable {
        /// One TCP write.
        case write(String)
        /// One TCP write of raw bytes (which may end inside a UTF-8 sequence).
        case bytes([UInt8])
        case pause(TimeAmount)
        case close
        /// Stop here, keeping the connection open.
        case hang
        /// Write this text again and again, for as long as the peer reads it, until the
        /// connection closes (a never-ending answer). Never more than the socket takes: the
        /// writes wait while the channel is not writable, so the fake holds little.
        case forever(String)
    }

    public struct Log: Sendable {
        public var requests: [Request] = []
        public var connections = 0
        public var closedConnections = 0
    }

    public let port: Int
    private let channel: any Channel
    private let box: LogBox

    public var requests: [Request] { self.box.log.withLock { $0.requests } }
    public var connections: Int { self.box.log.withLock { $0.connections } }
    public var closedConnections: Int { self.box.log.withLock { $0.closedConnections } }

    private init(channel: any Channel, box: LogBox) {
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
        self.box = box
    }

    public static func start(
        tls: NIOSSLContext? = nil, script: @escaping @Sendable (Request) -> [Step]
    ) async throws -> FakeUpstream {
        let recorder = LogBox()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                do {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder()))
                    try channel.pipeline.syncOperations.addHandler(FakeUpstreamHandler(log: recorder, script: script))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return FakeUpstream(channel: channel, box: recorder)
    }

    public func stop() async {
        try? await self.channel.close()
    }

    /// Waits until `condition` holds for the log (polling; every wait has a deadline).
    public func wait(timeout: Duration = .seconds(5), until condition: (Log) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if self.box.log.withLock({ condition($0) }) { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return self.box.log.withLock { condition($0) }
    }

    /// The reference to the log shared with the handlers, before the server exists.
    public final class LogBox: Sendable {
        let log = Mutex(Log())
    }

    // MARK: Script helpers

    public static func head(status: String = "200 OK", contentType: String = "text/event-stream", extra: String = "") -> String {
        "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nConnection: close\r\n\(extra)\r\n"
    }

    public static func chunkedHead() -> String {
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    }

    /// One HTTP/1.1 chunk.
    public static func chunk(_ text: String) -> String {
        "\(String(text.utf8.count, radix: 16))\r\n\(text)\r\n"
    }

    public static let lastChunk = "0\r\n\r\n"

    public static func event(_ json: String) -> String { "data: \(json)\n\n" }

    public static func delta(_ text: String) -> String {
        Self.event(#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"\#(text)"},"finish_reason":null}]}"#)
    }
}

final class FakeUpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    private let log: FakeUpstream.LogBox
    private let script: @Sendable (FakeUpstream.Request) -> [FakeUpstream.Step]
    private var request: FakeUpstream.Request?
    private var steps: ArraySlice<FakeUpstream.Step> = []
    private var isActive = true

    init(log: FakeUpstream.LogBox, script: @escaping @Sendable (FakeUpstream.Request) -> [FakeUpstream.Step]) {
        self.log = log
        self.script = script
    }

    func channelActive(context: ChannelHandlerContext) {
        self.log.log.withLock { $0.connections += 1 }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.isActive = false
        self.log.log.withLock { $0.closedConnections += 1 }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.request = FakeUpstream.Request(method: head.method, uri: head.uri, headers: head.headers, body: "")
        case .body(let bytes):
            self.request?.body += String(buffer: bytes)
        case .end:
            guard let request = self.request else { return }
            self.log.log.withLock { $0.requests.append(request) }
            self.steps = self.script(request)[...]
            self.run(context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// The text of a `.forever` step being written, if one is.
    private var endless: ByteBuffer?

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, self.endless != nil { self.pump(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// Writes the endless text while the channel takes it, a batch per event-loop turn.
    private func pump(context: ChannelHandlerContext) {
        guard self.isActive, let text = self.endless else { return }
        var batch = 0
        while self.isActive && context.channel.isWritable && batch < 64 {
            context.write(self.wrapOutboundOut(text), promise: nil)
            batch += 1
        }
        context.flush()
        if self.isActive && context.channel.isWritable {
            context.eventLoop.assumeIsolated().execute { self.pump(context: context) }
        }
    }

    private func run(context: ChannelHandlerContext) {
        while self.isActive, let step = self.steps.popFirst() {
            switch step {
            case .write(let text):
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
            case .bytes(let bytes):
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil)
            case .pause(let delay):
                context.eventLoop.assumeIsolated().scheduleTask(in: delay) { self.run(context: context) }
                return
            case .close:
                context.close(promise: nil)
                return
            case .hang:
                return
            case .forever(let text):
                self.endless = ByteBuffer(string: text)
                self.pump(context: context)
                return
            }
        }
    }
}

@available(*, unavailable)
extension FakeUpstreamHandler: Sendable {}
