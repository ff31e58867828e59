/// `sluice serve --echo`: every message comes back unchanged, text as text, binary as binary.
/// Used by the conformance suite and benchmarks; keeps no per-connection state.
public struct EchoApplication: WebSocketApplication {
    public init() {}

    public func makeDelegate(for connection: WebSocketConnectionInfo) -> any WebSocketConnectionDelegate {
        EchoDelegate.shared
    }
}

/// Stateless, so one instance serves every connection on every event loop.
final class EchoDelegate: WebSocketConnectionDelegate, Sendable {
    static let shared = EchoDelegate()

    func connection(_ connection: WebSocketConnection, didReceive message: WebSocketMessage) {
        switch message {
        case .text(let buffer): connection.send(text: buffer)
        case .binary(let buffer): connection.send(binary: buffer)
        }
    }
}
