import NIOCore

/// Everything the WebSocket data plane can be told. Plain values with documented defaults;
/// reading them from YAML, environment and flags lives in `SluiceApp`.
public struct WebSocketServerConfiguration: Sendable, Equatable {
    /// Address to bind. `127.0.0.1` by default so a fresh start is never exposed by accident.
    public var host: String = "127.0.0.1"
    /// TCP port; 0 picks a free one (tests).
    public var port: Int = 8080
    /// Event loop threads; 0 means one per core.
    public var eventLoopThreads: Int = 0
    /// Path of the WebSocket endpoint.
    public var path: String = "/v1/ws"
    /// Subprotocols the server accepts, in order of preference; the first one the client offers is echoed.
    public var subprotocols: [String] = ["sluice.v1"]
    /// Allowed `Origin` values (exact, case-insensitive; `*` allows any). Empty: `defaultOrigins`
    /// decides. Requests without an `Origin` (not from a browser) are always allowed: see `OriginCheck`.
    public var allowedOrigins: [String] = []
    /// What an empty `allowedOrigins` allows: loopback pages only (the default: without
    /// authentication, a web page must not reach a local gateway), or any page (when every request
    /// needs a credential a page cannot take from the browser).
    public var defaultOrigins: DefaultOrigins = .loopbackOnly
    /// Most client connections held at once, plain HTTP (kept alive or not) and WebSocket alike;
    /// beyond it a new connection gets HTTP 503 with `Retry-After` and is closed, before
    /// anything it sends is parsed.
    public var maxConnections: Int = 10_000
    /// Most connections one client address may hold at once (IPv6: per /64); 0 turns the cap
    /// off. With `forwardedForHops` 0 it counts TCP connections by peer address (over it: the
    /// same cheap 503 as `maxConnections`). Behind our proxies (`forwardedForHops` > 0) every
    /// connection comes from a proxy, so it counts instead, per `X-Forwarded-For` client,
    /// WebSocket connections for their lifetime and HTTP requests while they are answered
    /// (over it: 503 with `Retry-After` for that request or upgrade).
    public var maxConnectionsPerAddress: Int = 256
    /// 0: the peer address is the client. n: the n-th address from the right of
    /// `X-Forwarded-For` is (set from `limits.forwarded_for_hops`).
    public var forwardedForHops: Int = 0
    /// A TCP connection that has not completed the upgrade or its first HTTP request within this
    /// time is closed; so is one whose request has begun but not arrived whole within it.
    public var handshakeTimeout: TimeAmount = .seconds(10)
    /// A kept-alive HTTP connection idle this long after a response is closed. Longer than the
    /// idle timeouts of common proxies' upstream pools (60 s), so a proxy in front closes first
    /// and never sends a request on a connection the gateway is closing.
    public var idleTimeout: TimeAmount = .seconds(75)
    /// Bytes held on behalf of clients, process-wide (inbound messages being assembled, queued
    /// outbound bytes, HTTP request bodies and waiting responses, running and retained answers).
    /// Past it: Close 1013, HTTP 503 with `Retry-After`, `overloaded`. See `MemoryBudget`.
    public var memoryBudget: Int = 512 << 20
    /// Largest single frame payload accepted (bytes); bigger closes with 1009.
    public var maxFrameSize: Int = 1 << 20
    /// Largest message accepted after reassembly and decompression (bytes); bigger closes with 1009.
    public var maxMessageSize: Int = 4 << 20
    /// A Ping is sent this often.
    public var heartbeatInterval: TimeAmount = .seconds(20)
    /// A connection from which nothing (Pong or any frame) arrived this long after a Ping is closed.
    public var heartbeatTimeout: TimeAmount = .seconds(10)
    /// After the server sends Close, it waits this long for the client's Close before dropping TCP.
    public var closeTimeout: TimeAmount = .seconds(5)
    /// Outbound bytes a connection may queue while its socket is not writable; beyond it the
    /// connection is closed with 1013 (slow consumer).
    public var maxOutboundBytes: Int = 4 << 20
    /// Kernel-side write watermarks: above `high` the channel reports "not writable".
    public var writeBufferLowWatermark: Int = 32 * 1024
    public var writeBufferHighWatermark: Int = 256 * 1024
    /// permessage-deflate (RFC 7692).
    public var deflate: DeflateConfiguration = .init()
    /// Optional TLS; when both paths are set the listener speaks `wss://`.
    public var tls: TLSConfiguration = .init()
    /// Graceful drain on SIGTERM/SIGINT.
    public var drain: DrainConfiguration = .init()

    public init() {}

    public enum DefaultOrigins: Sendable, Equatable {
        case loopbackOnly
        case any
    }

    public struct DeflateConfiguration: Sendable, Equatable {
        /// Whether permessage-deflate is offered at all.
        public var enabled: Bool = true
        /// Outbound messages smaller than this many bytes are sent uncompressed.
        public var minSize: Int = 256
        /// Ask for (and always use) no context takeover on the server's side: less memory, worse ratio.
        public var serverNoContextTakeover: Bool = false
        /// Ask the client not to keep its compression context between messages.
        public var clientNoContextTakeover: Bool = false
        /// Largest LZ77 window the server compresses with (9...15; zlib cannot do 8 for raw deflate).
        public var serverMaxWindowBits: Int = 15
        /// zlib compression level (1...9).
        public var level: Int = 6
        /// zlib memLevel (1...9): 8 is zlib's default; lower trades ratio for memory per connection.
        public var memoryLevel: Int = 8
        public init() {}
    }

    public struct TLSConfiguration: Sendable, Equatable {
        public var certificatePath: String? = nil
        public var privateKeyPath: String? = nil
        public var isEnabled: Bool { self.certificatePath != nil && self.privateKeyPath != nil }
        public init() {}
    }

    public struct DrainConfiguration: Sendable, Equatable {
        /// After SIGTERM, `/ready` answers 503 and new upgrades are refused for this long before
        /// connections get Close 1012, so load balancers see the instance leave first.
        public var gracePeriod: TimeAmount = .seconds(5)
        /// The process exits after this long even if some connections did not close.
        public var deadline: TimeAmount = .seconds(30)
        public init() {}
    }
}
