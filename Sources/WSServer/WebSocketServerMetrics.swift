import Metrics
import NIOHTTP1

/// Connection-level counters (swift-metrics; a no-op until the executable bootstraps a backend).
/// Labels are bounded: close codes only.
final class WebSocketServerMetrics: Sendable {
    private let opened = Counter(label: "sluice_ws_connections_opened_total")
    private let open = Gauge(label: "sluice_ws_connections_open")
    private let slowConsumers = Counter(label: "sluice_ws_slow_consumer_closes_total")
    private let heartbeatTimeouts = Counter(label: "sluice_ws_heartbeat_timeouts_total")
    private let handshakeRejections = Counter(label: "sluice_ws_handshake_rejections_total")
    private let connectionsOpen = Gauge(label: "sluice_connections_open")
    private let connectionsOpenCount = ManagedCounter()
    private let refusedTotal = Counter(label: "sluice_connections_refused_total", dimensions: [("reason", "max_connections")])
    private let refusedPerAddress = Counter(label: "sluice_connections_refused_total", dimensions: [("reason", "per_address")])
    private let refusedRequests: [Int: Counter] = Dictionary(uniqueKeysWithValues: [400, 413, 503].map {
        ($0, Counter(label: "sluice_http_requests_refused_total", dimensions: [("status", String($0))]))
    })
    private let memoryBudgetCloses = Counter(label: "sluice_ws_memory_budget_closes_total")
    private let closedByCode: [UInt16: Counter]
    private let closedOther = Counter(label: "sluice_ws_connections_closed_total", dimensions: [("code", "other")])
    private let openCount = ManagedCounter()
    private let readPauses = ManagedCounter()
    private let messagesIn = Counter(label: "sluice_ws_messages_total", dimensions: [("direction", "in")])
    private let messagesOut = Counter(label: "sluice_ws_messages_total", dimensions: [("direction", "out")])
    private let wireBytesIn = Counter(label: "sluice_ws_bytes_total", dimensions: [("direction", "in"), ("stage", "wire")])
    private let wireBytesOut = Counter(label: "sluice_ws_bytes_total", dimensions: [("direction", "out"), ("stage", "wire")])
    private let payloadBytesIn = Counter(label: "sluice_ws_bytes_total", dimensions: [("direction", "in"), ("stage", "payload")])
    private let payloadBytesOut = Counter(label: "sluice_ws_bytes_total", dimensions: [("direction", "out"), ("stage", "payload")])

    init() {
        var closed: [UInt16: Counter] = [:]
        for code: UInt16 in [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1012, 1013] {
            closed[code] = Counter(label: "sluice_ws_connections_closed_total", dimensions: [("code", String(code))])
        }
        self.closedByCode = closed
    }

    func connectionOpened() {
        self.opened.increment()
        self.open.record(self.openCount.add(1))
    }

    func connectionClosed(code: WebSocketCloseCode) {
        (self.closedByCode[code.rawValue] ?? self.closedOther).increment()
        self.open.record(self.openCount.add(-1))
    }

    /// Messages and bytes: `wire` is what crossed the socket (frames, compressed), `payload` the
    /// messages' bytes before compression (out) or after inflating (in).
    func add(_ traffic: WebSocketTraffic) {
        if traffic.messagesIn > 0 { self.messagesIn.increment(by: traffic.messagesIn) }
        if traffic.messagesOut > 0 { self.messagesOut.increment(by: traffic.messagesOut) }
        if traffic.wireBytesIn > 0 { self.wireBytesIn.increment(by: traffic.wireBytesIn) }
        if traffic.wireBytesOut > 0 { self.wireBytesOut.increment(by: traffic.wireBytesOut) }
        if traffic.payloadBytesIn > 0 { self.payloadBytesIn.increment(by: traffic.payloadBytesIn) }
        if traffic.payloadBytesOut > 0 { self.payloadBytesOut.increment(by: traffic.payloadBytesOut) }
    }

    /// Any client connection (HTTP or WebSocket) accepted or closed.
    func tcpConnectionOpened() { self.connectionsOpen.record(self.connectionsOpenCount.add(1)) }
    func tcpConnectionClosed() { self.connectionsOpen.record(self.connectionsOpenCount.add(-1)) }

    func connectionRefused(_ refusal: ConnectionCounter.Refusal) {
        switch refusal {
        case .total: self.refusedTotal.increment()
        case .perAddress: self.refusedPerAddress.increment()
        }
    }

    /// An application request answered before its body was read (400, 413, 503).
    func httpRequestRefused(_ status: HTTPResponseStatus) { self.refusedRequests[Int(status.code)]?.increment() }

    /// A WebSocket closed with 1013 because the memory budget had no room for its message or queue.
    func memoryBudgetClosed() { self.memoryBudgetCloses.increment() }

    /// A WebSocket's reading stopped because its peer did not take what was sent (backpressure).
    func readPaused() { _ = self.readPauses.add(1) }
    var readPauseCount: Int { self.readPauses.current }

    func slowConsumerClosed() { self.slowConsumers.increment() }
    func heartbeatTimedOut() { self.heartbeatTimeouts.increment() }
    func handshakeRejected() { self.handshakeRejections.increment() }
}

import Synchronization

/// One connection's traffic not yet added to the shared counters.
struct WebSocketTraffic {
    var messagesIn = 0
    var messagesOut = 0
    var wireBytesIn = 0
    var wireBytesOut = 0
    var payloadBytesIn = 0
    var payloadBytesOut = 0

    /// One access per message (each `self.traffic.x += …` is a separate exclusivity check).
    mutating func sent(payloadBytes: Int) {
        self.messagesOut += 1
        self.payloadBytesOut += payloadBytes
    }

    mutating func received(payloadBytes: Int) {
        self.messagesIn += 1
        self.payloadBytesIn += payloadBytes
    }

    var isEmpty: Bool { self.wireBytesIn == 0 && self.wireBytesOut == 0 && self.messagesIn == 0 && self.messagesOut == 0 }
}

/// A lock-free counter for the open-connections gauge.
final class ManagedCounter: Sendable {
    private let value = Atomic<Int>(0)
    func add(_ delta: Int) -> Int { self.value.add(delta, ordering: .relaxed).newValue }
    var current: Int { self.value.load(ordering: .relaxed) }
}
