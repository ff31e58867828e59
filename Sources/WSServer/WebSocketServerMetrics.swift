import Metrics

/// Connection-level counters (swift-metrics; a no-op until the executable bootstraps a backend).
/// Labels are bounded: close codes only.
final class WebSocketServerMetrics: Sendable {
    private let opened = Counter(label: "sluice_ws_connections_opened_total")
    private let open = Gauge(label: "sluice_ws_connections_open")
    private let slowConsumers = Counter(label: "sluice_ws_slow_consumer_closes_total")
    private let heartbeatTimeouts = Counter(label: "sluice_ws_heartbeat_timeouts_total")
    private let handshakeRejections = Counter(label: "sluice_ws_handshake_rejections_total")
    private let closedByCode: [UInt16: Counter]
    private let closedOther = Counter(label: "sluice_ws_connections_closed_total", dimensions: [("code", "other")])
    private let openCount = ManagedCounter()

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

    func slowConsumerClosed() { self.slowConsumers.increment() }
    func heartbeatTimedOut() { self.heartbeatTimeouts.increment() }
    func handshakeRejected() { self.handshakeRejections.increment() }
}

import Synchronization

/// A lock-free counter for the open-connections gauge.
final class ManagedCounter: Sendable {
    private let value = Atomic<Int>(0)
    func add(_ delta: Int) -> Int { self.value.add(delta, ordering: .relaxed).newValue }
    var current: Int { self.value.load(ordering: .relaxed) }
}
