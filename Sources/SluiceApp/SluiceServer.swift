import Foundation
import Inference
import Logging
import NIOPosix
import ServiceLifecycle
import Sessions
import WSServer

/// `sluice serve`: wires the configured application onto the WebSocket server and runs it as a
/// service group that drains on SIGTERM/SIGINT.
public enum SluiceServer {
    public static func run(configuration: SluiceConfiguration) async throws {
        var logger = Logger(label: "sluice")
        logger.logLevel = Logger.Level(rawValue: configuration.logLevel) ?? .info
        let application: any WebSocketApplication
        var httpRoutes: (any HTTPRouteProvider)?
        if configuration.echo {
            application = EchoApplication()
            logger.notice("echo mode: /v1/ws echoes every message")
        } else {
            var chat = configuration.chat
            chat.instanceID = configuration.instanceID ?? Self.generatedInstanceID()
            chat.heartbeatMs = configuration.server.heartbeatInterval.nanoseconds / 1_000_000
            let router = try await Self.makeRouter(configuration, logger: logger)
            let chatApplication = ChatApplication(
                configuration: chat, router: router, conversations: ConversationMemory(), logger: logger)
            application = chatApplication
            httpRoutes = ChatStreamRoutes(application: chatApplication)
        }
        let server = try WebSocketServer(
            configuration: configuration.server, application: application, httpRoutes: httpRoutes, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }

    /// The configured upstreams: the named list, or the single `upstream`.
    static func makeRouter(_ configuration: SluiceConfiguration, logger: Logger) async throws -> InferenceRouter {
        guard !configuration.upstreams.isEmpty else {
            let upstream = configuration.upstream
            let engine = try await Self.makeEngine(
                NamedUpstream(name: "default", kind: upstream.kind, baseURL: upstream.baseURL, model: upstream.model, apiKey: upstream.apiKey),
                configuration, logger: logger)
            return InferenceRouter(single: engine)
        }
        var upstreams: [InferenceRouter.Upstream] = []
        for named in configuration.upstreams {
            upstreams.append(.init(name: named.name, engine: try await Self.makeEngine(named, configuration, logger: logger)))
        }
        logger.notice("upstreams by name", metadata: [
            "sluice.upstreams": "\(upstreams.map(\.name).joined(separator: ", "))", "sluice.default": "\(upstreams[0].name)",
        ])
        return InferenceRouter(upstreams: upstreams)
    }

    /// One upstream's engine. An OpenAI-compatible server without a configured model is asked
    /// for its model list now, so the first client already sees the real name.
    static func makeEngine(_ upstream: NamedUpstream, _ configuration: SluiceConfiguration, logger: Logger) async throws -> any InferenceEngine {
        let timeouts = UpstreamTimeouts(
            connect: configuration.upstream.connectTimeout, timeToFirstToken: configuration.upstream.firstTokenTimeout,
            betweenTokens: configuration.upstream.betweenTokensTimeout)
        let name: Logger.MetadataValue = "\(upstream.name)"
        switch upstream.kind {
        case .sim:
            let engine = SimulatorEngine(configuration: configuration.simulator)
            logger.notice("upstream: built-in simulator (not a model)", metadata: ["sluice.upstream": name, "sluice.model": "\(engine.defaultModel)"])
            return engine
        case .openai:
            guard let url = URL(string: upstream.baseURL ?? "") else { throw UpstreamConfigurationError.invalidBaseURL(upstream.baseURL ?? "") }
            let engine = try OpenAICompatibleEngine(configuration: .init(
                baseURL: url, model: upstream.model, apiKey: upstream.apiKey, timeouts: timeouts))
            if upstream.model == nil {
                do {
                    let model = try await engine.discoverModel(on: MultiThreadedEventLoopGroup.singleton.next()).get()
                    logger.notice("upstream model discovered", metadata: ["sluice.upstream": name, "sluice.model": "\(model)"])
                } catch {
                    logger.warning("upstream model discovery failed; will retry on the first request",
                                   metadata: ["sluice.upstream": name, "sluice.error": "\(error)"])
                }
            }
            logger.notice("upstream: OpenAI-compatible", metadata: [
                "sluice.upstream": name, "sluice.url": "\(url)", "sluice.model": "\(engine.defaultModel)"])
            return engine
        case .triton:
            guard let url = URL(string: upstream.baseURL ?? "") else { throw UpstreamConfigurationError.invalidBaseURL(upstream.baseURL ?? "") }
            let engine = try TritonEngine(configuration: .init(
                baseURL: url, model: upstream.model ?? "ensemble", apiKey: upstream.apiKey, timeouts: timeouts))
            logger.notice("upstream: Triton generate_stream", metadata: [
                "sluice.upstream": name, "sluice.url": "\(url)", "sluice.model": "\(engine.defaultModel)"])
            return engine
        }
    }

    /// `hostname-pid`: unique per process on a host, readable in logs.
    static func generatedInstanceID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
    }
}
