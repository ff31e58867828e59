import NIOCore

/// What every connection of one server shares: limits, the application, metrics and the
/// heartbeat schedulers. One instance per server, so a connection holds one reference
/// instead of a copy of each value.
final class ConnectionSettings: Sendable {
    let maxFrameSize: Int
    let maxMessageSize: Int
    let maxOutboundBytes: Int
    let heartbeatInterval: TimeAmount
    let heartbeatTimeout: TimeAmount
    let closeTimeout: TimeAmount
    let deflateMinSize: Int
    let deflateLevel: Int
    let deflateMemoryLevel: Int
    let application: any WebSocketApplication
    let metrics: WebSocketServerMetrics
    let heartbeats: HeartbeatSchedulers
    /// The process-wide byte budget inbound messages and queued outbound bytes are charged to.
    let budget: MemoryBudget

    init(
        _ configuration: WebSocketServerConfiguration, application: any WebSocketApplication, metrics: WebSocketServerMetrics,
        budget: MemoryBudget = .unlimited()
    ) {
        self.budget = budget
        self.maxFrameSize = configuration.maxFrameSize
        self.maxMessageSize = configuration.maxMessageSize
        self.maxOutboundBytes = configuration.maxOutboundBytes
        self.heartbeatInterval = configuration.heartbeatInterval
        self.heartbeatTimeout = configuration.heartbeatTimeout
        self.closeTimeout = configuration.closeTimeout
        self.deflateMinSize = configuration.deflate.minSize
        self.deflateLevel = configuration.deflate.level
        self.deflateMemoryLevel = configuration.deflate.memoryLevel
        self.application = application
        self.metrics = metrics
        self.heartbeats = HeartbeatSchedulers(
            tick: HeartbeatScheduler.tick(interval: configuration.heartbeatInterval, timeout: configuration.heartbeatTimeout))
    }
}

/// The per-connection part of a permessage-deflate agreement (no strings: kept per connection).
struct DeflateParameters: Equatable, Sendable {
    var serverNoContextTakeover: Bool
    var clientNoContextTakeover: Bool
    /// nil: never compress outbound (the client asked for a window zlib cannot produce).
    var serverWindowBits: Int8?

    init(_ agreement: PerMessageDeflateAgreement) {
        self.serverNoContextTakeover = agreement.serverNoContextTakeover
        self.clientNoContextTakeover = agreement.clientNoContextTakeover
        self.serverWindowBits = agreement.serverWindowBits.map { Int8($0) }
    }
}
