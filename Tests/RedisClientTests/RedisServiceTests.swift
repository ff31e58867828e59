import Logging
import NIOCore
import ServiceLifecycle
import Testing
@testable import RedisClient
@testable import SluiceTestSupport

/// The clients as `Service`s: they live as long as the group runs and close their connections
/// when it shuts down, without anyone calling `shutdown()` by hand.
@Suite(.timeLimit(.minutes(5)))
struct RedisServiceTests {
    /// The server's count of connections of `type` (`normal` or `pubsub`).
    static func clients(_ type: String, seenBy observer: RedisClient) async throws -> Int {
        let list = try await observer.send("CLIENT", "LIST", "TYPE", type).string ?? ""
        return list.split(separator: "\n").count
    }

    @Test func clientAndSubscriberCloseTheirConnectionsWhenTheGroupShutsDown() async throws {
        try await RedisServerProcess.withServer { server in
            let configuration = try RedisIntegrationTests.configuration(server)
            try await RedisIntegrationTests.withClient(server) { observer in
                let client = RedisClient(configuration: configuration, eventLoop: RedisIntegrationTests.eventLoop)
                let subscriber = RedisSubscriber(configuration: configuration, eventLoop: RedisIntegrationTests.eventLoop)
                let group = ServiceGroup(services: [client, subscriber], logger: Logger(label: "test"))
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask { try await group.run() }
                    try await RedisIntegrationTests.waitUntil("both connected") { client.isConnected && subscriber.isConnected }
                    try await subscriber.subscribe("events") { _ in }
                    // The observer, the client; the subscriber.
                    try await RedisIntegrationTests.waitUntil("the server saw both") {
                        let normal = try await Self.clients("normal", seenBy: observer)
                        let pubsub = try await Self.clients("pubsub", seenBy: observer)
                        return normal == 2 && pubsub == 1
                    }
                    #expect(try await client.ping() == "PONG")

                    await group.triggerGracefulShutdown()
                    try await tasks.next()

                    // Both closed their connections and stopped reconnecting: only the observer is left.
                    try await RedisIntegrationTests.waitUntil("the server saw both close") {
                        let normal = try await Self.clients("normal", seenBy: observer)
                        let pubsub = try await Self.clients("pubsub", seenBy: observer)
                        return normal == 1 && pubsub == 0
                    }
                    #expect(!client.isConnected)
                    #expect(!subscriber.isConnected)
                    await #expect(throws: RedisClientError.shutDown) { try await client.ping() }
                }
            }
        }
    }

    @Test func cancellingTheGroupAlsoCloses() async throws {
        try await RedisServerProcess.withServer { server in
            let configuration = try RedisIntegrationTests.configuration(server)
            try await RedisIntegrationTests.withClient(server) { observer in
                let client = RedisClient(configuration: configuration, eventLoop: RedisIntegrationTests.eventLoop)
                let group = ServiceGroup(services: [client], logger: Logger(label: "test"))
                let running = Task { try await group.run() }
                try await RedisIntegrationTests.waitUntil("the server saw the client") {
                    try await Self.clients("normal", seenBy: observer) == 2
                }
                running.cancel()
                _ = await running.result
                try await RedisIntegrationTests.waitUntil("the server saw it close") {
                    try await Self.clients("normal", seenBy: observer) == 1
                }
                await #expect(throws: RedisClientError.shutDown) { try await client.ping() }
            }
        }
    }
}
