#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import NIOHTTP1
import Synchronization

/// Which address a connection or request counts against for `max_connections_per_address`.
public enum ClientAddress {
    /// The peer's address, or behind `forwardedForHops` proxies of ours the address that many
    /// entries from the right of `X-Forwarded-For` (each proxy appends the address it saw; what
    /// is further left was written by the client and is not trusted). The same rule as the
    /// rate limits' (`GatewayLimits.clientAddress`).
    public static func resolve(_ head: HTTPRequestHead, peer: SocketAddress?, forwardedForHops: Int) -> String {
        let peerAddress = peer?.ipAddress ?? "unknown"
        guard forwardedForHops > 0 else { return peerAddress }
        let hops = head.headers[canonicalForm: "x-forwarded-for"].map { $0.trimmingCharacters(in: " \t") }.filter { !$0.isEmpty }
        let index = hops.count - forwardedForHops
        return index >= 0 ? hops[index] : peerAddress
    }

    /// The key an address is counted under: an IPv4 address as it is, an IPv6 address by its
    /// /64 (one host or household usually holds a whole /64, so counting single IPv6 addresses
    /// would cap nothing), an IPv4-mapped IPv6 address as the IPv4 one. Anything that does not
    /// parse as an address is counted as written (at most 64 bytes of it).
    public static func limitKey(_ address: String) -> String {
        if !address.contains(":") { return Self.truncated(address) }
        var raw = in6_addr()
        let parsed = address.withCString { inet_pton(AF_INET6, $0, &raw) } == 1
        guard parsed else { return Self.truncated(address) }
        let bytes = withUnsafeBytes(of: raw) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            return "\(bytes[12]).\(bytes[13]).\(bytes[14]).\(bytes[15])"
        }
        var key = ""
        for group in 0..<4 {
            let value = UInt16(bytes[group * 2]) << 8 | UInt16(bytes[group * 2 + 1])
            key += String(value, radix: 16) + ":"
        }
        return key + ":/64"
    }

    private static func truncated(_ text: String) -> String {
        text.utf8.count <= 64 ? text : String(decoding: text.utf8.prefix(64), as: UTF8.self)
    }
}

/// Every open client connection of the server (HTTP and WebSocket alike) and how many each
/// client address holds: `max_connections` and `max_connections_per_address`. An address's
/// entry leaves when its count reaches zero, so the table is never larger than the
/// connections it counts.
final class ConnectionCounter: Sendable {
    enum Refusal: Equatable, Sendable {
        /// `max_connections` reached.
        case total
        /// `max_connections_per_address` reached for this address.
        case perAddress
    }

    private struct State {
        var total = 0
        var byAddress: [String: Int] = [:]
    }

    private let state = Mutex(State())

    /// Open connections now.
    var total: Int { self.state.withLock { $0.total } }

    /// What `key` holds now (tests, metrics).
    func count(for key: String) -> Int { self.state.withLock { $0.byAddress[key] ?? 0 } }

    /// A new connection; `key` is its address's when the per-address cap applies to connections
    /// (no proxies in front), nil otherwise. `maxPerAddress` 0: no per-address cap.
    func open(key: String?, maxTotal: Int, maxPerAddress: Int) -> Refusal? {
        self.state.withLock { state in
            guard state.total < maxTotal else { return .total }
            if let key, maxPerAddress > 0 {
                let held = state.byAddress[key] ?? 0
                guard held < maxPerAddress else { return .perAddress }
                state.byAddress[key] = held + 1
            }
            state.total += 1
            return nil
        }
    }

    func close(key: String?) {
        self.state.withLock { state in
            state.total = max(0, state.total - 1)
            if let key { Self.decrement(&state, key) }
        }
    }

    /// Counts one more against `key` alone (a request or WebSocket of a client behind our
    /// proxies); false when it already holds `max`.
    func hold(key: String, max: Int) -> Bool {
        guard max > 0 else { return true }
        return self.state.withLock { state in
            let held = state.byAddress[key] ?? 0
            guard held < max else { return false }
            state.byAddress[key] = held + 1
            return true
        }
    }

    func release(key: String) {
        self.state.withLock { Self.decrement(&$0, key) }
    }

    private static func decrement(_ state: inout State, _ key: String) {
        guard let held = state.byAddress[key] else { return }
        if held <= 1 {
            state.byAddress[key] = nil
        } else {
            state.byAddress[key] = held - 1
        }
    }
}

/// Answers a connection over a limit without parsing anything it sends: an HTTP 503 with
/// `Retry-After` and `Connection: close` (a plain-HTTP client reads it as the answer to its
/// request; over TLS nothing is written, the connection is just closed), then a graceful close.
final class ConnectionRefusalHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let message: String?
    private var answered = false

    /// `message` nil: close without writing (TLS listeners).
    init(message: String?) {
        self.message = message
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.answer(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.answer(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Whatever the client sends is dropped unread.
    }

    private func answer(context: ChannelHandlerContext) {
        guard !self.answered else { return }
        self.answered = true
        guard let message = self.message else {
            context.close(promise: nil)
            return
        }
        let text = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(message.utf8.count + 1)\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\(message)\n"
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { _ in LingeringClose.start(context: context) }
    }
}

@available(*, unavailable)
extension ConnectionRefusalHandler: Sendable {}

/// Closing after an answer the client may still be sending a request to (an early 413, a
/// refused connection): the output is shut first (the client reads the answer and a clean end),
/// what still arrives is read and dropped, and the connection is closed when the client closes
/// or after `timeout`. Closing at once with unread bytes would reset the connection, and the
/// client could lose the answer.
enum LingeringClose {
    static let timeout: TimeAmount = .seconds(2)

    static func start(context: ChannelHandlerContext) {
        let channel = context.channel
        channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        let timer = channel.eventLoop.scheduleTask(in: Self.timeout) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in timer.cancel() }
    }
}
