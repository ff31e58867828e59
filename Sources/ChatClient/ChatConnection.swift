import Foundation
import NIOCore
import SluiceProtocol
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// Why a connection attempt failed, in words for the user.
struct ChatConnectionError: Error, CustomStringConvertible {
    var description: String
}

/// An open `sluice.v1` WebSocket as the driver sees it: send text, send Close once, and ask
/// for a silent connection to be dropped.
final class ChatSocket: Sendable {
    let channel: any Channel
    private let outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>
    private let closeSent = OnceFlag()

    init(channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<WebSocketFrame>) {
        self.channel = channel
        self.outbound = outbound
    }

    func sendText(_ text: String) async throws {
        // Client frames must be masked (RFC 6455 §5.3).
        try await self.outbound.write(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
    }

    /// Starts the closing handshake; only the first call sends a Close frame.
    func sendClose(_ code: WebSocketErrorCode = .normalClosure) async {
        guard self.closeSent.set() else { return }
        var data = ByteBuffer()
        data.write(webSocketErrorCode: code)
        try? await self.outbound.write(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data))
    }

    func sendPong(_ data: ByteBuffer) async throws {
        try await self.outbound.write(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: data))
    }

    /// Closes the channel when no byte arrives for `limit`. The server pings every heartbeat,
    /// so silence means a dead peer or path that TCP alone would notice only much later.
    func closeIfSilent(for limit: Duration) {
        let channel = self.channel
        let timeout = TimeAmount.nanoseconds(
            limit.components.seconds.multipliedSaturating(by: 1_000_000_000).addingSaturating(limit.components.attoseconds / 1_000_000_000))
        channel.eventLoop.execute {
            // At the front, so every inbound byte (pings included) counts as a sign of life.
            try? channel.pipeline.syncOperations.addHandler(CloseOnReadIdleHandler(), position: .first)
            try? channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: timeout), position: .first)
        }
    }
}

/// Closes the channel on a read-idle event from the `IdleStateHandler` before it.
private final class CloseOnReadIdleHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// A flag that can be set once, from any thread.
private final class OnceFlag: @unchecked Sendable {
    // @unchecked: `value` is only touched under `lock`.
    private let lock = NSLock()
    private var value = false

    /// `true` for the first caller only.
    func set() -> Bool {
        self.lock.lock()
        defer { self.lock.unlock() }
        guard !self.value else { return false }
        self.value = true
        return true
    }
}

enum ChatConnector {
    static let subprotocol = "sluice.v1"
    /// Generous: replies are small, but a long answer chunk or error must never trip it.
    static let maxFrameSize = 1 << 24
    static let handshakeTimeout = TimeAmount.seconds(10)

    enum UpgradeResult: Sendable {
        case websocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>)
        case notUpgraded
    }

    /// Opens TCP (and TLS for `wss://`), performs the WebSocket upgrade offering `sluice.v1`,
    /// and returns the upgraded channel.
    static func connect(
        to url: WebSocketURL, bearerToken: String? = nil, sslContext: NIOSSLContext?, group: any EventLoopGroup
    ) async throws -> NIOAsyncChannel<WebSocketFrame, WebSocketFrame> {
        let upgrade: EventLoopFuture<UpgradeResult>
        do {
            upgrade = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(10))
                .connect(host: url.host, port: url.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try Self.configure(channel, url: url, bearerToken: bearerToken, sslContext: sslContext)
                    }
                }
        } catch {
            throw ChatConnectionError(description: Self.describe(error))
        }
        let result: UpgradeResult
        do {
            result = try await upgrade.get()
        } catch let error as ChatConnectionError {
            throw error
        } catch let error as NIOSSLError {
            throw ChatConnectionError(description: Self.describe(error))
        } catch {
            throw ChatConnectionError(description: "WebSocket handshake failed: \(Self.describe(error))")
        }
        switch result {
        case .websocket(let channel):
            return channel
        case .notUpgraded:
            throw ChatConnectionError(description: "the server refused the WebSocket upgrade (is the path \(url.target) right?)")
        }
    }

    private static func configure(
        _ channel: any Channel, url: WebSocketURL, bearerToken: String?, sslContext: NIOSSLContext?
    ) throws -> EventLoopFuture<UpgradeResult> {
        if let sslContext {
            let handler = try NIOSSLClientHandler(context: sslContext, serverHostname: url.hostIsIPAddress ? nil : url.host)
            try channel.pipeline.syncOperations.addHandler(handler)
        }
        let upgrader = NIOTypedWebSocketClientUpgrader<UpgradeResult>(
            maxFrameSize: Self.maxFrameSize,
            upgradePipelineHandler: { channel, response in
                // The server picks a subprotocol from our offer; without `sluice.v1` it would
                // speak something else.
                guard response.headers[canonicalForm: "Sec-WebSocket-Protocol"].contains(where: { $0 == Substring(Self.subprotocol) }) else {
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(ChatConnectionError(
                        description: "the server does not speak \(Self.subprotocol)"))
                }
                return channel.eventLoop.makeCompletedFuture {
                    .websocket(try NIOAsyncChannel<WebSocketFrame, WebSocketFrame>(wrappingChannelSynchronously: channel))
                }
            })
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: url.hostHeader)
        headers.add(name: "Sec-WebSocket-Protocol", value: Self.subprotocol)
        if let bearerToken { headers.add(name: "Authorization", value: "Bearer \(bearerToken)") }
        // Without it the request encoder would frame the GET as chunked.
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.target, headers: headers)
        var configuration = NIOUpgradableHTTPClientPipelineConfiguration(
            upgradeConfiguration: NIOTypedHTTPClientUpgradeConfiguration(
                upgradeRequestHead: head,
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.close(promise: nil)
                    return channel.eventLoop.makeSucceededFuture(.notUpgraded)
                }))
        // The server may send `session.ready` in the same read as the 101 response.
        configuration.leftOverBytesStrategy = .forwardBytes
        let upgraded = try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: configuration)
        // A server that accepts TCP but never answers the upgrade must not hang us forever.
        // Whichever completes the promise first wins; the later completion is ignored.
        let result = channel.eventLoop.makePromise(of: UpgradeResult.self)
        let timeout = channel.eventLoop.scheduleTask(in: Self.handshakeTimeout) {
            result.fail(ChatConnectionError(description: "no answer to the WebSocket handshake within \(Self.handshakeTimeout.nanoseconds / 1_000_000_000) s"))
            channel.close(promise: nil)
        }
        upgraded.whenComplete { _ in timeout.cancel() }
        upgraded.cascade(to: result)
        return result.futureResult
    }

    /// NIO's connection errors list every address tried; users want the first reason in words.
    static func describe(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return Self.describe(first.error) }
            if error.dnsAError != nil || error.dnsAAAAError != nil { return "cannot resolve \(error.host)" }
            return "cannot connect to \(error.host):\(error.port)"
        }
        if let error = error as? IOError {
            return String(cString: strerror(error.errnoCode)).lowercased()
        }
        if let error = error as? ChannelError, case .connectTimeout = error {
            return "timed out"
        }
        if let error = error as? NIOSSLError, case .handshakeFailed = error {
            // BoringSSL's text is long; the common case deserves plain words.
            return "\(error)".contains("CERTIFICATE_VERIFY_FAILED")
                ? "TLS: the server's certificate is not trusted" : "TLS handshake failed (\(error))"
        }
        return "\(error)"
    }
}
