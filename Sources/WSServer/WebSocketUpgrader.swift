import NIOCore
import NIOHTTP1

/// Plugs the handshake into NIO's `HTTPServerUpgradeHandler` and, once the 101 is written,
/// replaces every HTTP handler with one `WebSocketConnectionHandler` (HTTP state is dropped so
/// an idle connection costs little). A refusal is fired as `HandshakeRejection` to the route
/// handler, which answers it with the right status.
final class WebSocketUpgrader: HTTPServerProtocolUpgrader {
    let supportedProtocol = "websocket"
    /// Checked by `WebSocketHandshake` instead, so a missing header gets a 400, not a silent pass-through.
    let requiredUpgradeHeaders: [String] = []

    private let server: ServerShared
    private var agreement: HandshakeAgreement?
    private var admission: (any Sendable)?

    init(server: ServerShared) {
        self.server = server
    }

    func buildUpgradeResponse(
        channel: any Channel,
        upgradeRequest: HTTPRequestHead,
        initialResponseHeaders: HTTPHeaders
    ) -> EventLoopFuture<HTTPHeaders> {
        switch WebSocketHandshake.evaluate(upgradeRequest, configuration: self.server.configuration) {
        case .failure(let rejection):
            self.server.metrics.handshakeRejected()
            return channel.eventLoop.makeFailedFuture(rejection)
        case .success(let agreement):
            if self.server.isDraining {
                self.server.metrics.handshakeRejected()
                return channel.eventLoop.makeFailedFuture(HandshakeRejection(reason: .draining))
            }
            // Behind our proxies the connection is the proxy's: the client's WebSockets are
            // counted here instead, for as long as they stay open.
            let configuration = self.server.configuration
            var heldKey: String?
            if configuration.forwardedForHops > 0 && configuration.maxConnectionsPerAddress > 0 {
                let key = ClientAddress.limitKey(ClientAddress.resolve(
                    upgradeRequest, peer: channel.remoteAddress, forwardedForHops: configuration.forwardedForHops))
                guard self.server.connections.hold(key: key, max: configuration.maxConnectionsPerAddress) else {
                    self.server.metrics.connectionRefused(.perAddress)
                    self.server.metrics.handshakeRejected()
                    return channel.eventLoop.makeFailedFuture(HandshakeRejection(reason: .overloaded))
                }
                heldKey = key
            }
            let connections = self.server.connections
            func releaseHeld() { if let heldKey { connections.release(key: heldKey) } }
            switch self.server.application.admit(UpgradeRequest(head: upgradeRequest, remoteAddress: channel.remoteAddress)) {
            case .refuse(let refusal):
                releaseHeld()
                self.server.metrics.handshakeRejected()
                return channel.eventLoop.makeFailedFuture(HandshakeRejection(reason: .refused(refusal)))
            case .admit(let attachment):
                self.admission = attachment
            }
            guard self.server.registry.tryAdd(channel, limit: self.server.configuration.maxConnections) else {
                releaseHeld()
                self.server.metrics.handshakeRejected()
                return channel.eventLoop.makeFailedFuture(HandshakeRejection(reason: .overloaded))
            }
            if let heldKey {
                channel.closeFuture.whenComplete { _ in connections.release(key: heldKey) }
            }
            self.agreement = agreement
            var headers = initialResponseHeaders
            headers.add(contentsOf: agreement.responseHeaders)
            return channel.eventLoop.makeSucceededFuture(headers)
        }
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        let agreement = self.agreement!
        let info = WebSocketConnectionInfo(
            requestHead: upgradeRequest,
            remoteAddress: context.channel.remoteAddress,
            subprotocol: agreement.subprotocol,
            isCompressed: agreement.deflate != nil,
            eventLoop: context.eventLoop,
            admission: self.admission)
        let handler = WebSocketConnectionHandler(
            settings: self.server.connectionSettings,
            deflate: agreement.deflate.map(DeflateParameters.init),
            info: info)
        do {
            let pipeline = context.pipeline.syncOperations
            if let routes = try? pipeline.handler(type: HTTPRouteHandler.self) {
                pipeline.removeHandler(routes, promise: nil)
            }
            try pipeline.addHandler(handler)
            return context.eventLoop.makeSucceededVoidFuture()
        } catch {
            return context.eventLoop.makeFailedFuture(error)
        }
    }
}

@available(*, unavailable)
extension WebSocketUpgrader: Sendable {}
