import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import RedisClient
@testable import SluiceTestSupport

/// Against a real `redis-server` (one per test, random loopback port, temporary directory).
/// Every wait is bounded; the bounds are semantic ("within 10 s"), not timing assertions.
@Suite(.timeLimit(.minutes(15)))
struct RedisIntegrationTests {
    static let eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()

    /// Short backoff so reconnect tests do not wait long.
    static func configuration(_ server: RedisServerProcess, database: Int = 0) throws -> RedisConfiguration {
        RedisConfiguration(url: try RedisURL("\(server.url)/\(database)"), connectTimeout: .seconds(2),
                           initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(200))
    }

    /// Polls `condition` until it holds or `timeout` passes.
    static func waitUntil(
        _ what: String,
        timeout: Duration = .seconds(10),
        _ condition: @Sendable () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                throw RedisServerProcessError(description: "timed out waiting until \(what)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// A connected client, shut down after `body`.
    static func withClient<T>(
        _ server: RedisServerProcess,
        database: Int = 0,
        _ body: (RedisClient) async throws -> T
    ) async throws -> T {
        let client = RedisClient(configuration: try Self.configuration(server, database: database), eventLoop: Self.eventLoop)
        do {
            try await Self.waitUntil("the client connected") { client.isConnected }
            let result = try await body(client)
            await client.shutdown()
            return result
        } catch {
            await client.shutdown()
            throw error
        }
    }

    // MARK: Commands

    @Test func commandsAndPipelining() async throws {
        try await RedisServerProcess.withServer { server in
            try await Self.withClient(server) { client in
                #expect(try await client.ping() == "PONG")

                // Binary-safe values round-trip byte for byte.
                let value = ByteBuffer(bytes: [0, 13, 10, 0xFF, 0, 36])
                #expect(try await client.set("bin\r\nkey", to: value))
                #expect(try await client.get("bin\r\nkey") == value)
                #expect(try await client.get("missing") == nil)

                // 10,000 INCRs in one pipeline: every reply in order, the right final value.
                let commands = Array(repeating: RedisCommand("INCR", "counter"), count: 10_000)
                let replies = await client.send(pipeline: commands)
                let values = try replies.map { try $0.get().int }
                #expect(values == (1...10_000).map { $0 })
                #expect(try await client.get("counter").map { String(buffer: $0) } == "10000")

                // An error reply fails only its own command of the pipeline.
                let mixed = await client.send(pipeline: [
                    RedisCommand("SET", "s", "x"), RedisCommand("LPUSH", "s", "y"), RedisCommand("GET", "s"),
                ])
                #expect(try mixed[0].get() == .simpleString("OK"))
                #expect(throws: RedisClientError.self) { try mixed[1].get() }
                if case .failure(RedisClientError.server(let message)) = mixed[1] {
                    #expect(message.hasPrefix("WRONGTYPE"))
                } else {
                    Issue.record("expected WRONGTYPE, got \(mixed[1])")
                }
                #expect(try mixed[2].get() == "x")

                #expect(try await client.del("s", "counter", "nothing") == 2)
                #expect(try await client.incr("fresh") == 1)
            }
        }
    }

    @Test func setNXAndExpiry() async throws {
        try await RedisServerProcess.withServer { server in
            try await Self.withClient(server) { client in
                #expect(try await client.set("lock", to: "owner-1", condition: .ifNotExists, expiration: .seconds(30)))
                #expect(try await client.set("lock", to: "owner-2", condition: .ifNotExists) == false)
                #expect(try await client.get("lock").map { String(buffer: $0) } == "owner-1")
                #expect(try await client.set("absent", to: "x", condition: .ifExists) == false)
                #expect(try await client.send("TTL", "lock").int.map { (1...30).contains($0) } == true)

                #expect(try await client.expire("lock", seconds: 100))
                #expect(try await client.expire("nothing", seconds: 100) == false)
                #expect(try await client.pexpire("lock", milliseconds: 50))
                try await Self.waitUntil("the key expired") { try await client.get("lock") == nil }
                #expect(try await client.set("lock", to: "owner-3", condition: .ifNotExists, expiration: .milliseconds(60_000)))
            }
        }
    }

    @Test func databaseFromTheURLIsSelected() async throws {
        try await RedisServerProcess.withServer { server in
            try await Self.withClient(server, database: 3) { client in
                try await client.set("where", to: "db3")
                #expect(try await client.send("CLIENT", "INFO").string?.contains("db=3") == true)
            }
            let elsewhere = try await Self.withClient(server, database: 0) { client in
                try await client.get("where")
            }
            #expect(elsewhere == nil)
        }
    }

    @Test func streams() async throws {
        try await RedisServerProcess.withServer { server in
            try await Self.withClient(server) { client in
                var ids: [String] = []
                for index in 0..<5 {
                    ids.append(try await client.xadd("events", trim: .exactMaxLength(3),
                                                     fields: [("seq", index), ("body", ByteBuffer(bytes: [UInt8(index), 0, 13, 10]))]))
                }
                let entries = try await client.xrange("events")
                #expect(entries.map(\.id) == Array(ids.suffix(3)))
                #expect(entries.map { $0[field: "seq"].map { String(buffer: $0) } } == ["2", "3", "4"])
                #expect(entries.last?[field: "body"] == ByteBuffer(bytes: [4, 0, 13, 10]))
                #expect(try await client.xrange("events", start: ids[3], count: 1).map(\.id) == [ids[3]])
                #expect(try await client.xrange("nothing").isEmpty)

                // Approximate trimming is accepted (Redis may keep more).
                for _ in 0..<10 { _ = try await client.xadd("loose", trim: .approximateMaxLength(2), fields: [("k", "v")]) }
                #expect(try await client.xrange("loose").count >= 2)

                // XREAD without blocking on the shared client.
                let read = try await client.xread([("events", ids[2]), ("nothing", "0")], count: 10)
                #expect(read.count == 1 && read.first?.key == "events")
                #expect(read.first?.entries.map(\.id) == Array(ids.suffix(2)))
                #expect(try await client.xread([("nothing", "0")]).isEmpty)

                // Blocking is refused on the shared connection...
                await #expect(throws: RedisClientError.blockingCommandOnSharedConnection) {
                    _ = try await client.xread([("events", "$")], blockMilliseconds: 10)
                }
                // ...and works on a dedicated one: a timeout gives nothing, an XADD wakes it.
                let dedicated = try await client.makeDedicatedConnection()
                #expect(try await dedicated.xread([("events", "$")], blockMilliseconds: 50).isEmpty)
                let lastID = ids[4]
                async let woken = dedicated.xread([("events", lastID)], blockMilliseconds: 10_000)
                // The server says the XREAD is blocked before anything is added: the XADD wakes it.
                try await Self.waitUntil("the XREAD blocks") {
                    let info = try await client.send("INFO", "clients").string ?? ""
                    return info.firstMatch(of: /blocked_clients:(\d+)/).flatMap { Int($0.1) }.map { $0 >= 1 } ?? false
                }
                let newID = try await client.xadd("events", fields: [("seq", "new")])
                let wokenEntries = try await woken
                #expect(wokenEntries.first?.entries.map(\.id) == [newID])
                await dedicated.close()
            }
        }
    }

    @Test func scriptsHashesAndSets() async throws {
        try await RedisServerProcess.withServer { server in
            try await Self.withClient(server) { client in
                // A small atomic script: increment and set an expiry only on first use.
                let script = """
                local n = redis.call('INCR', KEYS[1])
                if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
                return {n, redis.call('PTTL', KEYS[1]) > 0 and 1 or 0, ARGV[2]}
                """
                let first = try await client.eval(script, keys: ["rate:1"], arguments: [60_000, "tag"])
                #expect(first == .array([1, 1, "tag"]))
                let second = try await client.eval(script, keys: ["rate:1"], arguments: [60_000, "tag"])
                #expect(second.array?.first == 2)
                await #expect(throws: RedisClientError.self) {
                    _ = try await client.eval("return redis.call('NOSUCHCOMMAND')")
                }
                #expect(try await client.eval("return nil") == .null)

                #expect(try await client.hset("h", fields: [("a", "1"), ("b", ByteBuffer(bytes: [0, 1]))]) == 2)
                #expect(try await client.hgetall("h") == ["a": ByteBuffer(string: "1"), "b": ByteBuffer(bytes: [0, 1])])
                #expect(try await client.hgetall("nothing").isEmpty)

                #expect(try await client.sadd("set", members: ["x", "y", "x"]) == 2)
                #expect(try await client.srem("set", members: ["x", "zz"]) == 1)
                #expect(try await client.smembers("set") == [ByteBuffer(string: "y")])
            }
        }
    }

    // MARK: Pub/sub

    /// Messages a handler received, shared with the test.
    final class Received: Sendable {
        let messages = NIOLockedValueBox<[RedisPubSubMessage]>([])
        var all: [RedisPubSubMessage] { self.messages.withLockedValue { $0 } }
        func append(_ message: RedisPubSubMessage) { self.messages.withLockedValue { $0.append(message) } }
    }

    @Test func publishSubscribe() async throws {
        try await RedisServerProcess.withServer { server in
            try await Self.withClient(server) { client in
                let subscriber = RedisSubscriber(configuration: try Self.configuration(server), eventLoop: Self.eventLoop)
                defer { _ = subscriber.shutdown() }
                try await Self.waitUntil("the subscriber connected") { subscriber.isConnected }

                let news = Received()
                let rooms = Received()
                try await subscriber.subscribe("news") { news.append($0) }
                try await subscriber.psubscribe("room.*") { rooms.append($0) }

                let payload = ByteBuffer(bytes: [0, 13, 10, 0xFF] + Array("hello".utf8))
                #expect(try await client.publish(payload, to: "news") == 1)
                #expect(try await client.publish("in room 7", to: "room.7") == 1)
                #expect(try await client.publish("nobody", to: "other") == 0)
                try await Self.waitUntil("both messages arrived") { news.all.count == 1 && rooms.all.count == 1 }
                #expect(news.all == [RedisPubSubMessage(channel: "news", payload: payload)])
                #expect(rooms.all == [RedisPubSubMessage(channel: "room.7", pattern: "room.*", payload: ByteBuffer(string: "in room 7"))])

                // Many messages arrive complete and in order.
                for index in 0..<200 { try await client.publish("\(index)", to: "news") }
                try await Self.waitUntil("200 more messages arrived") { news.all.count == 201 }
                #expect(news.all.dropFirst().map { String(buffer: $0.payload) } == (0..<200).map(String.init))

                try await subscriber.unsubscribe("news")
                try await subscriber.punsubscribe("room.*")
                #expect(try await client.publish("late", to: "news") == 0)
                #expect(try await client.publish("late", to: "room.7") == 0)
                await subscriber.shutdown()
            }
        }
    }

    // MARK: Outages

    @Test func whileRedisIsDownCommandsFailAtOnce() async throws {
        let port = try RedisServerProcess.freePort()
        let configuration = RedisConfiguration(url: RedisURL(host: "127.0.0.1", port: port),
                                               initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(100))
        let client = RedisClient(configuration: configuration, eventLoop: Self.eventLoop)
        #expect(!client.isConnected)
        await #expect(throws: RedisClientError.notConnected) { _ = try await client.ping() }
        await client.shutdown()
        await #expect(throws: RedisClientError.shutDown) { _ = try await client.ping() }
    }

    /// The states reported through `onStateChange`, and how often `onResubscribed` fired.
    final class Events: Sendable {
        let states = NIOLockedValueBox<[RedisConnectionState]>([])
        let resubscribed = NIOLockedValueBox(0)
    }

    @Test func killedServerFailsPendingCommandsAndRestartReconnectsAndResubscribes() async throws {
        try await RedisServerProcess.withServer { server in
            let clientEvents = Events()
            let subscriberEvents = Events()
            let configuration = try Self.configuration(server)
            let client = RedisClient(configuration: configuration, eventLoop: Self.eventLoop) { state in
                clientEvents.states.withLockedValue { $0.append(state) }
            }
            let subscriber = RedisSubscriber(
                configuration: configuration, eventLoop: Self.eventLoop,
                onStateChange: { state in subscriberEvents.states.withLockedValue { $0.append(state) } },
                onResubscribed: { subscriberEvents.resubscribed.withLockedValue { $0 += 1 } }
            )
            defer {
                _ = client.shutdown()
                _ = subscriber.shutdown()
            }
            try await Self.waitUntil("both connected") { client.isConnected && subscriber.isConnected }
            let received = Received()
            try await subscriber.subscribe("events") { received.append($0) }
            try await subscriber.psubscribe("user.*") { received.append($0) }

            // Park commands on the server (CLIENT PAUSE holds every client's commands), then kill it.
            _ = try await client.send("CLIENT", "PAUSE", "20000", "ALL")
            let pending: [EventLoopFuture<RESPValue>] = client.send(pipeline: [RedisCommand("GET", "a"), RedisCommand("INCR", "b")])
            // The pipeline's write was queued on the client's loop and flushed there; once this
            // later task has run, its bytes were handed to the (loopback) socket: the server has them.
            try await Self.eventLoop.submit {}.get()
            await server.kill()
            for future in pending {
                await #expect(throws: RedisClientError.connectionClosed) { _ = try await future.get() }
            }
            try await Self.waitUntil("both noticed the outage") { !client.isConnected && !subscriber.isConnected }
            await #expect(throws: RedisClientError.notConnected) { _ = try await client.ping() }
            await #expect(throws: RedisClientError.notConnected) {
                try await subscriber.subscribe("while-down") { received.append($0) }
            }

            // Back on the same port: both reconnect by themselves, subscriptions are re-made.
            try await server.restart()
            try await Self.waitUntil("the client reconnected") { client.isConnected }
            #expect(try await client.ping() == "PONG")
            try await Self.waitUntil("the subscriber resubscribed") { subscriberEvents.resubscribed.withLockedValue { $0 } == 1 }
            #expect(try await client.publish("after", to: "events") == 1)
            #expect(try await client.publish("pattern", to: "user.42") == 1)
            #expect(try await client.publish("kept", to: "while-down") == 1)
            try await Self.waitUntil("messages after the restart arrived") { received.all.count == 3 }
            #expect(Set(received.all.map { String(buffer: $0.payload) }) == ["after", "pattern", "kept"])

            #expect(clientEvents.states.withLockedValue { $0 } == [.connected, .disconnected, .connected])
            #expect(subscriberEvents.states.withLockedValue { $0 } == [.connected, .disconnected, .connected])

            // A clean stop (SIGTERM) also fails nothing silently: the next commands are refused at once.
            try await server.stop()
            try await Self.waitUntil("the client noticed the stop") { !client.isConnected }
            await #expect(throws: RedisClientError.notConnected) { _ = try await client.ping() }
            await client.shutdown()
            await subscriber.shutdown()
        }
    }
}
