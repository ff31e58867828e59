import NIOCore
import Synchronization

/// The open WebSocket connections of this process: lets a drain reach every connection (and
/// keeps WebSockets within `maxConnections` on their own). An entry leaves when its channel closes.
final class ConnectionRegistry: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    var count: Int { self.channels.withLock { $0.count } }

    func tryAdd(_ channel: any Channel, limit: Int) -> Bool {
        let id = ObjectIdentifier(channel)
        let added = self.channels.withLock { channels -> Bool in
            guard channels.count < limit else { return false }
            channels[id] = channel
            return true
        }
        if added {
            channel.closeFuture.whenComplete { _ in
                _ = self.channels.withLock { $0.removeValue(forKey: id) }
            }
        }
        return added
    }

    func all() -> [any Channel] {
        self.channels.withLock { Array($0.values) }
    }
}

/// State shared by every connection of one server.
final class ServerShared: Sendable {
    let configuration: WebSocketServerConfiguration
    let application: any WebSocketApplication
    let httpRoutes: (any HTTPRouteProvider)?
    let registry = ConnectionRegistry()
    /// Every open connection, and per client address.
    let connections = ConnectionCounter()
    /// Bytes held for clients, process-wide (shared with the application).
    let budget: MemoryBudget
    let metrics: WebSocketServerMetrics
    let connectionSettings: ConnectionSettings
    /// The application's own readiness: nil when ready, else why not (`/ready` answers 503).
    let readiness: (@Sendable () -> String?)?
    private let draining = Atomic<Bool>(false)

    init(
        configuration: WebSocketServerConfiguration, application: any WebSocketApplication, httpRoutes: (any HTTPRouteProvider)? = nil,
        readiness: (@Sendable () -> String?)? = nil, budget: MemoryBudget? = nil
    ) {
        self.configuration = configuration
        let budget = budget ?? MemoryBudget(limit: configuration.memoryBudget)
        self.budget = budget
        self.application = application
        self.httpRoutes = httpRoutes
        self.readiness = readiness
        let metrics = WebSocketServerMetrics()
        self.metrics = metrics
        self.connectionSettings = ConnectionSettings(configuration, application: application, metrics: metrics, budget: budget)
    }

    var isDraining: Bool { self.draining.load(ordering: .relaxed) }
    func startDraining() { self.draining.store(true, ordering: .relaxed) }
}
