import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// An HTTP server on 127.0.0.1 that holds every request until `parties` requests are in
/// flight at once, then answers them all `{"together":true,"body":…}`; a request still alone
/// after `patience` is answered `{"together":false,…}`. A test can so prove that calls ran
/// concurrently without timing them.
public final class BarrierHTTPServer: Sendable {
    public let port: Int
    private let channel: any Channel
    private let state: NIOLockedValueBox<State>

    struct Waiting {
        let id: ObjectIdentifier
        let eventLoop: any EventLoop
        let context: NIOLoopBound<ChannelHandlerContext>
        let body: String
    }

    struct State {
        var waiting: [Waiting] = []
        var bodies: [String] = []
    }

    /// Every request body received, in arrival order.
    public var bodies: [String] { self.state.withLockedValue { $0.bodies } }

    private init(channel: any Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
        self.port = channel.localAddress!.port!
    }

    public static func start(parties: Int, patience: TimeAmount = .seconds(5)) async throws -> BarrierHTTPServer {
        let state = NIOLockedValueBox(State())
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(BarrierHandler(state: state, parties: parties, patience: patience))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return BarrierHTTPServer(channel: channel, state: state)
    }

    public func stop() async {
        try? await self.channel.close()
    }

    final class BarrierHandler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let state: NIOLockedValueBox<State>
        let parties: Int
        let patience: TimeAmount
        var body = ""

        init(state: NIOLockedValueBox<State>, parties: Int, patience: TimeAmount) {
            self.state = state
            self.parties = parties
            self.patience = patience
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch self.unwrapInboundIn(data) {
            case .head: self.body = ""
            case .body(let buffer): self.body += String(buffer: buffer)
            case .end:
                let me = Waiting(id: ObjectIdentifier(self), eventLoop: context.eventLoop, context: NIOLoopBound(context, eventLoop: context.eventLoop), body: self.body)
                let release: [Waiting] = self.state.withLockedValue { state in
                    state.bodies.append(me.body)
                    state.waiting.append(me)
                    guard state.waiting.count >= self.parties else { return [] }
                    defer { state.waiting = [] }
                    return state.waiting
                }
                for waiting in release { Self.answer(waiting, together: true) }
                let state = self.state
                context.eventLoop.scheduleTask(in: self.patience) {
                    let alone = state.withLockedValue { state -> Bool in
                        guard let index = state.waiting.firstIndex(where: { $0.id == me.id }) else { return false }
                        state.waiting.remove(at: index)
                        return true
                    }
                    if alone { Self.answer(me, together: false) }
                }
            }
        }

        static func answer(_ waiting: Waiting, together: Bool) {
            let context = waiting.context
            waiting.eventLoop.execute {
                let context = context.value
                let object: [String: Any] = ["together": together, "body": waiting.body]
                let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: String(data.count))
                headers.add(name: "Connection", value: "close")
                context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: data)))), promise: nil)
                let channel = context.channel
                context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
