import NIOCore
import NIOHTTP1

/// The seam between the data plane and whatever speaks over it (the chat protocol, echo).
/// WSServer calls it; it never knows what the application does with messages.
public protocol WebSocketApplication: Sendable {
    /// Decides, before the 101 is written, whether a valid handshake may upgrade (who is asking,
    /// how often). On the connection's event loop; must not block. A refusal is answered with
    /// its own HTTP status and body, and no socket is upgraded. Default: admitted.
    func admit(_ request: UpgradeRequest) -> UpgradeAdmission
    /// Called on the connection's event loop right after the upgrade; the returned delegate
    /// lives on that event loop for the connection's lifetime.
    func makeDelegate(for connection: WebSocketConnectionInfo) -> any WebSocketConnectionDelegate
}

extension WebSocketApplication {
    public func admit(_ request: UpgradeRequest) -> UpgradeAdmission { .admit(nil) }
}

/// A handshake that passed the protocol's checks, as the application sees it before the upgrade.
public struct UpgradeRequest {
    public var head: HTTPRequestHead
    public var remoteAddress: SocketAddress?

    public init(head: HTTPRequestHead, remoteAddress: SocketAddress?) {
        self.head = head
        self.remoteAddress = remoteAddress
    }
}

public enum UpgradeAdmission: Sendable {
    /// Upgrade; `attachment` (e.g. the authenticated identity) reaches `makeDelegate` in
    /// `WebSocketConnectionInfo.admission`.
    case admit((any Sendable)?)
    case refuse(HTTPRefusal)
}

/// An HTTP answer instead of an upgrade (or instead of an application route's work).
public struct HTTPRefusal: Error, Equatable, Sendable {
    public var status: HTTPResponseStatus
    public var body: String
    public var contentType: String
    public var headers: [String: String]

    public init(status: HTTPResponseStatus, body: String, contentType: String = "application/json", headers: [String: String] = [:]) {
        self.status = status
        self.body = body
        self.contentType = contentType
        self.headers = headers
    }
}

/// What the application learns about a new connection.
public struct WebSocketConnectionInfo: Sendable {
    public var requestHead: HTTPRequestHead
    public var remoteAddress: SocketAddress?
    /// The subprotocol agreed in the handshake, if any.
    public var subprotocol: String?
    /// Whether permessage-deflate was agreed.
    public var isCompressed: Bool
    /// The connection's event loop: every delegate call happens on it.
    public var eventLoop: any EventLoop
    /// What the application's `admit` attached (e.g. the authenticated identity).
    public var admission: (any Sendable)? = nil
}

/// A message as it arrived: reassembled, decompressed, and for text, valid UTF-8.
public enum WebSocketMessage: Equatable, Sendable {
    case text(ByteBuffer)
    case binary(ByteBuffer)
}

/// Per-connection callbacks, all on the connection's event loop. Not Sendable on purpose.
public protocol WebSocketConnectionDelegate: AnyObject {
    func connectionOpened(_ connection: WebSocketConnection)
    func connection(_ connection: WebSocketConnection, didReceive message: WebSocketMessage)
    /// The outbound side became writable again (or stopped being writable): producers should
    /// pause while `connection.isWritable` is false.
    func connectionWritabilityChanged(_ connection: WebSocketConnection)
    /// The server is about to close this connection with `code` (drain: 1012): last chance to
    /// send final messages, which go out before the Close frame.
    func connectionWillClose(_ connection: WebSocketConnection, code: WebSocketCloseCode)
    /// Called once; `code` is the close code sent or received, or 1006 when TCP just closed.
    func connectionClosed(_ connection: WebSocketConnection, code: WebSocketCloseCode)
}

extension WebSocketConnectionDelegate {
    public func connectionOpened(_ connection: WebSocketConnection) {}
    public func connectionWritabilityChanged(_ connection: WebSocketConnection) {}
    public func connectionWillClose(_ connection: WebSocketConnection, code: WebSocketCloseCode) {}
    public func connectionClosed(_ connection: WebSocketConnection, code: WebSocketCloseCode) {}
}

/// The application's handle on one connection. Use it on the connection's event loop only
/// (from elsewhere, hop with `eventLoop.execute`). Sends after close are dropped.
public struct WebSocketConnection {
    let handler: WebSocketConnectionHandler

    public var eventLoop: any EventLoop { self.handler.eventLoop }
    public var allocator: ByteBufferAllocator { self.handler.allocator }
    /// False while the peer is behind; queued bytes then count against `maxOutboundBytes`.
    public var isWritable: Bool { self.handler.isWritable }
    public var isOpen: Bool { self.handler.isOpen }

    /// Queues a text message (its bytes must be UTF-8) and flushes unless the server is inside
    /// a read burst, in which case it flushes once at the end of the burst.
    public func send(text: ByteBuffer) { self.handler.sendMessage(.text, text, flush: true) }
    public func send(binary: ByteBuffer) { self.handler.sendMessage(.binary, binary, flush: true) }
    /// Queues without flushing; call `flush()` after a batch.
    public func write(text: ByteBuffer) { self.handler.sendMessage(.text, text, flush: false) }
    public func write(binary: ByteBuffer) { self.handler.sendMessage(.binary, binary, flush: false) }
    /// Encodes a text message straight into a per-connection scratch buffer (reused, so no
    /// allocation per message) and queues it without flushing. `body` must write UTF-8.
    public func writeText(_ body: (inout ByteBuffer) -> Void) { self.handler.writeEncoded(.text, body) }
    /// `writeText` if the connection is open and writable; false (nothing written) otherwise.
    /// For producers that hold back or merge while the peer is behind.
    public func writeTextIfWritable(_ body: (inout ByteBuffer) -> Void) -> Bool {
        self.handler.writeEncodedIfWritable(.text, body)
    }
    public func flush() { self.handler.flushOutbound() }
    /// Starts the close handshake.
    public func close(code: WebSocketCloseCode = .normalClosure, reason: String = "") {
        self.handler.initiateClose(code: code, reason: reason)
    }
}

/// Events the server sends down a connection's pipeline (`Channel.triggerUserOutboundEvent`).
public enum WebSocketServerEvent: Sendable {
    /// Close the connection with this code (drain sends 1012).
    case close(WebSocketCloseCode, reason: String)
}
