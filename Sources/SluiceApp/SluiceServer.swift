import Foundation
import Logging
import ServiceLifecycle
import WSServer

/// `sluice serve`: wires the configured application onto the WebSocket server and runs it as a
/// service group that drains on SIGTERM/SIGINT.
public enum SluiceServer {
    public static func run(configuration: SluiceConfiguration) async throws {
        var logger = Logger(label: "sluice")
        logger.logLevel = Logger.Level(rawValue: configuration.logLevel) ?? .info
        let application: any WebSocketApplication
        if configuration.echo {
            application = EchoApplication()
            logger.notice("echo mode: /v1/ws echoes every message")
        } else {
            // The chat protocol arrives with the streaming issue; until then the endpoint echoes.
            application = EchoApplication()
        }
        let server = try WebSocketServer(
            configuration: configuration.server, application: application, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}
