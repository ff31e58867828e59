import Foundation
import HTTPAPI
import Inference
import Logging
import NIOCore
import NIOPosix
import RedisClient
import NIOConcurrencyHelpers
import Sessions
import SluiceProtocol
@testable import SluiceTestSupport
import Testing
import WSServer

/// Several Sluice instances (each its own WebSocket server, chat application and Redis broker,
/// in this process) sharing a real `redis-server` on loopback.
@Suite(.serialized) struct MultiInstanceTests {
    typealias Client = ChatSessionTests.ChatClient

    final class Instance: Sendable {
        let name: String
        let port: Int
        let group: any EventLoopGroup
        let server: WebSocketServer
        let fanOut: FanOut
        let application: ChatApplication

        init(
            name: String, redisURL: String, simulator: SimulatorEngine.Configuration, broker: RedisBrokerConfiguration,
            engine: (any InferenceEngine)? = nil
        ) async throws {
            self.name = name
            var logger = Logger(label: "sluice.multi-instance-test.\(name)")
            logger.logLevel = .critical
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            self.group = group
            var server = WebSocketServerConfiguration()
            server.host = "127.0.0.1"
            server.port = 0
            server.drain.gracePeriod = .zero
            server.drain.deadline = .seconds(3)
            let fanOut = FanOut.redis(url: try RedisURL(redisURL), instanceID: name, configuration: broker,
                                      eventLoop: group.next(), logger: logger)
            self.fanOut = fanOut
            let application = ChatApplication(
                configuration: ChatConfiguration(instanceID: name), router: InferenceRouter(single: engine ?? SimulatorEngine(configuration: simulator)),
                conversations: ConversationMemory(), fanOut: fanOut, logger: logger)
            self.application = application
            self.server = try WebSocketServer(
                configuration: server, application: application, httpRoutes: ChatStreamRoutes(application: application), eventLoopGroup: group,
                readiness: { fanOut.isHealthy ? nil : "redis unreachable" }, logger: logger)
            self.port = try #require(try await self.server.start().port)
        }

        func connect(path: String = "/v1/ws", headers: [(String, String)] = []) async throws -> Client {
            let raw = try await RawClient.connect(port: self.port, group: self.group)
            let (response, _) = try await raw.handshake(path: path, extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1")] + headers)
            #expect(response.status == 101)
            let client = Client(raw: raw)
            let ready = try await client.next()
            #expect(ready["type"] as? String == "session.ready" && ready["instance_id"] as? String == self.name)
            return client
        }

        func get(_ path: String) async throws -> RawHTTPResponse {
            let raw = try await RawClient.connect(port: self.port, group: self.group)
            try await raw.send("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            let response = try await raw.readHTTPResponse()
            await raw.close()
            return response
        }

        func stop() async {
            await self.fanOut.shutdown()
            try? await self.group.shutdownGracefully()
        }
    }

    /// Runs `body` with a fresh redis-server and `count` instances; everything is stopped after.
    static func run(
        count: Int = 2,
        simulator configure: (inout SimulatorEngine.Configuration) -> Void = { _ in },
        broker configureBroker: (inout RedisBrokerConfiguration) -> Void = { _ in },
        engine: (any InferenceEngine)? = nil,
        _ body: (RedisServerProcess, [Instance]) async throws -> Void
    ) async throws {
        var simulator = SimulatorEngine.Configuration()
        simulator.timeToFirstToken = .milliseconds(5)
        simulator.tokensPerSecond = 200
        simulator.answerTokens = 100
        configure(&simulator)
        var broker = RedisBrokerConfiguration()
        broker.ownerTTL = .milliseconds(600)
        broker.livenessInterval = .milliseconds(200)
        configureBroker(&broker)
        try await RedisServerProcess.withServer { redis in
            var instances: [Instance] = []
            do {
                for index in 0..<count {
                    instances.append(try await Instance(
                        name: "gw-\(index)", redisURL: redis.url, simulator: simulator, broker: broker, engine: index == 0 ? engine : nil))
                }
                // Each instance's control channel and liveness key in place before the test starts.
                try await Self.eventually("instances connected to Redis") { instances.allSatisfy { $0.fanOut.isHealthy } }
                try await body(redis, instances)
            } catch {
                for instance in instances { await instance.stop() }
                throw error
            }
            for instance in instances { await instance.stop() }
        }
    }

    static func eventually(_ what: String, timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws {
        try await SluiceTestSupport.eventually(what, timeout: timeout, condition)
    }

    static let text = FollowTests.text(of:after:)

    @Test func aSecondTabOnAnotherInstanceSeesIdenticalDeltas() async throws {
        try await Self.run { _, instances in
            let first = try await instances[0].connect()
            try await first.send(["type": "chat.send", "content": "hello", "max_tokens": 3])
            let conversationID = try #require(try await first.next()["conversation_id"] as? String)
            var ignored: [[String: Any]] = []
            _ = try await first.until("generation.done", &ignored)

            let second = try await instances[1].connect()
            try await second.send(["type": "conversation.subscribe", "conversation_id": conversationID])
            #expect(try await second.next()["type"] as? String == "conversation.subscribed")
            try await first.send(["type": "chat.send", "content": "watch this", "conversation_id": conversationID])
            var firstMessages: [[String: Any]] = []
            let firstDone = try await first.until("generation.done", &firstMessages)
            var secondMessages: [[String: Any]] = []
            let secondDone = try await second.until("generation.done", &secondMessages)
            #expect(secondMessages.first?["type"] as? String == "generation.started")
            #expect(secondMessages.first?["generation_id"] as? String == firstDone["generation_id"] as? String)
            #expect(Self.text(secondMessages, 0).text == Self.text(firstMessages, 0).text)
            #expect(Self.text(secondMessages, 0).text == SimulatorEngine.tokens(for: "watch this", seed: 0, count: 100).joined())
            #expect(secondDone["seq"] as? Int == 100 && secondDone["finish_reason"] as? String == "stop")

            // The conversation continues from the other instance, with its context from Redis.
            try await second.send(["type": "chat.send", "content": "my turn", "conversation_id": conversationID, "max_tokens": 2])
            let started = try await second.next()
            #expect(started["type"] as? String == "generation.started" && started["conversation_id"] as? String == conversationID)
            var mine: [[String: Any]] = []
            _ = try await second.until("generation.done", &mine)
            // Back on the first instance: the context holds every turn, B's included. The
            // simulator reports prompt tokens as the words of all messages plus 4 per message.
            try await first.send(["type": "chat.send", "content": "back to me", "conversation_id": conversationID, "max_tokens": 1])
            var last: [[String: Any]] = []
            let lastDone = try await first.until("generation.done", &last)
            let words = 1 + 3 + 2 + 100 + 2 + 2 + 3
            #expect((lastDone["usage"] as? [String: Any])?["prompt_tokens"] as? Int == words + 4 * 7)
            try await second.send(["type": "conversation.subscribe", "conversation_id": "conv_nowhere"])
            var rest: [[String: Any]] = []
            let error = try await second.until("error", &rest)
            #expect(error["code"] as? String == "not_found" && error["conversation_id"] as? String == "conv_nowhere")
        }
    }

    @Test func cancelFromAnotherInstanceStopsTheGeneration() async throws {
        try await Self.run(simulator: { $0.tokensPerSecond = 50; $0.answerTokens = 10_000 }) { _, instances in
            let owner = try await instances[0].connect()
            try await owner.send(["type": "chat.send", "content": "long", "max_tokens": 10_000])
            let generationID = try #require(try await owner.next()["generation_id"] as? String)
            _ = try await owner.next()
            let other = try await instances[1].connect()
            try await other.send(["type": "generation.cancel", "generation_id": generationID])
            let otherDone = try await other.next()
            #expect(otherDone["type"] as? String == "generation.done" && otherDone["finish_reason"] as? String == "cancelled")
            var ownerMessages: [[String: Any]] = []
            let ownerDone = try await owner.until("generation.done", &ownerMessages)
            #expect(ownerDone["finish_reason"] as? String == "cancelled" && ownerDone["seq"] as? Int == otherDone["seq"] as? Int)
            // Again: a no-op; an id nobody knows: not_found.
            try await other.send(["type": "generation.cancel", "generation_id": generationID])
            try await other.send(["type": "generation.cancel", "generation_id": "gen_nobody"])
            let error = try await other.next()
            #expect(error["code"] as? String == "not_found" && error["generation_id"] as? String == "gen_nobody")
        }
    }

    @Test func randomDisconnectResumeCyclesAcrossInstancesRebuildTheText() async throws {
        try await Self.run(count: 3, simulator: { $0.tokensPerSecond = 1000; $0.answerTokens = 3000 }) { _, instances in
            let expected = SimulatorEngine.tokens(for: "wander", seed: 0, count: 3000).joined()
            var generator = SystemRandomNumberGenerator()
            var client = try await instances[0].connect()
            try await client.send(["type": "chat.send", "content": "wander", "max_tokens": 3000])
            let generationID = try #require(try await client.next()["generation_id"] as? String)
            var text = ""
            var lastSeq = 0
            var cycles = 0
            while true {
                var messages: [[String: Any]] = []
                let stopAfter = Int.random(in: 1...12, using: &generator)
                var done = false
                while messages.count < stopAfter {
                    let message = try await client.next()
                    if message["type"] as? String == "generation.done" { done = true; break }
                    messages.append(message)
                }
                let part = Self.text(messages, lastSeq)
                text += part.text
                lastSeq = part.lastSeq
                if done { break }
                await client.raw.close()
                cycles += 1
                client = try await instances.randomElement(using: &generator)!.connect()
                try await client.send(["type": "generation.resume", "generation_id": generationID, "after_seq": lastSeq])
                #expect(try await client.next()["type"] as? String == "generation.started")
            }
            #expect(text == expected)
            #expect(lastSeq == 3000)
            #expect(cycles >= 100)
        }
    }

    @Test func resumeAfterTheEndAndAResumeGap() async throws {
        try await Self.run(simulator: { $0.tokensPerSecond = 0; $0.answerTokens = 400 }, broker: { $0.streamMaxEntries = 10 }) { _, instances in
            let owner = try await instances[0].connect()
            try await owner.send(["type": "chat.send", "content": "done soon", "max_tokens": 400])
            let generationID = try #require(try await owner.next()["generation_id"] as? String)
            var all: [[String: Any]] = []
            _ = try await owner.until("generation.done", &all)
            let other = try await instances[1].connect()
            // After the last seq: started again, then at once the done.
            try await other.send(["type": "generation.resume", "generation_id": generationID, "after_seq": 400])
            #expect(try await other.next()["type"] as? String == "generation.started")
            let done = try await other.next()
            #expect(done["type"] as? String == "generation.done" && done["seq"] as? Int == 400)
            // The stream kept only its newest entries (one per simulator tick of 256 tokens or
            // fewer), so seq 1 may be gone; whatever is held replays exactly.
            try await other.send(["type": "generation.resume", "generation_id": generationID, "after_seq": 0])
            let answer = try await other.next()
            if answer["type"] as? String == "error" {
                #expect(answer["code"] as? String == "resume_gap")
                let earliest = try #require(answer["earliest_seq"] as? Int)
                try await other.send(["type": "generation.resume", "generation_id": generationID, "after_seq": earliest - 1])
                #expect(try await other.next()["type"] as? String == "generation.started")
                var replay: [[String: Any]] = []
                _ = try await other.until("generation.done", &replay)
                let expected = SimulatorEngine.tokens(for: "done soon", seed: 0, count: 400).dropFirst(earliest - 1).joined()
                #expect(Self.text(replay, earliest - 1).text == expected)
            } else {
                #expect(answer["type"] as? String == "generation.started")
                var replay: [[String: Any]] = []
                _ = try await other.until("generation.done", &replay)
                #expect(Self.text(replay, 0).text == SimulatorEngine.tokens(for: "done soon", seed: 0, count: 400).joined())
            }
            try await other.send(["type": "generation.resume", "generation_id": "gen_gone"])
            let error = try await other.next()
            #expect(error["code"] as? String == "not_found")
        }
    }

    @Test func anOwnerThatStopsHeartbeatingIsReportedLost() async throws {
        try await Self.run(simulator: { $0.tokensPerSecond = 20; $0.answerTokens = 10_000 }) { _, instances in
            let owner = try await instances[0].connect()
            try await owner.send(["type": "chat.send", "content": "abandoned", "max_tokens": 10_000])
            let generationID = try #require(try await owner.next()["generation_id"] as? String)
            _ = try await owner.next()
            let watcher = try await instances[1].connect()
            try await watcher.send(["type": "generation.resume", "generation_id": generationID])
            #expect(try await watcher.next()["type"] as? String == "generation.started")
            // The owner's Redis side goes away (its liveness key is deleted at shutdown and no
            // longer refreshed), while its generation never publishes an end.
            await instances[0].fanOut.shutdown()
            var messages: [[String: Any]] = []
            let done = try await watcher.until("generation.done", &messages)
            #expect(done["finish_reason"] as? String == "error")
            #expect((done["error"] as? [String: Any])?["code"] as? String == "owner_lost")
            #expect(done["seq"] as? Int == Self.text(messages, 0).lastSeq || messages.isEmpty)
        }
    }

    @Test func redisGoingAwayLeavesLocalStreamsAloneAndEverythingRecovers() async throws {
        try await Self.run(simulator: { $0.tokensPerSecond = 200; $0.answerTokens = 300 }) { redis, instances in
            let local = try await instances[0].connect()
            try await local.send(["type": "chat.send", "content": "keep going", "max_tokens": 300])
            _ = try await local.next()
            await redis.kill()
            try await Self.eventually("instance notices") { !instances[0].fanOut.isHealthy }
            // /ready reflects the outage; the local stream finishes untouched.
            var messages: [[String: Any]] = []
            let done = try await local.until("generation.done", &messages)
            #expect(Self.text(messages, 0).text == SimulatorEngine.tokens(for: "keep going", seed: 0, count: 300).joined())
            #expect(done["finish_reason"] as? String == "stop")
            // Cross-instance features answer with a retryable error meanwhile.
            let other = try await instances[1].connect()
            try await other.send(["type": "generation.resume", "generation_id": "gen_somewhere"])
            let error = try await other.next()
            #expect(error["code"] as? String == "unavailable" && error["retry_after_ms"] != nil)
            // New local chats still work.
            try await other.send(["type": "chat.send", "content": "local only", "max_tokens": 3])
            var local2: [[String: Any]] = []
            #expect(try await other.until("generation.done", &local2)["finish_reason"] as? String == "length")

            try await redis.restart()
            try await Self.eventually("instances reconnect") { instances.allSatisfy { $0.fanOut.isHealthy } }
            // Cross-instance again: a second tab on the other instance.
            let owner = try await instances[0].connect()
            try await owner.send(["type": "chat.send", "content": "after the outage", "max_tokens": 5])
            let started = try await owner.next()
            let generationID = try #require(started["generation_id"] as? String)
            var ownerMessages: [[String: Any]] = []
            _ = try await owner.until("generation.done", &ownerMessages)
            try await other.send(["type": "generation.resume", "generation_id": generationID])
            #expect(try await other.next()["type"] as? String == "generation.started")
            var replay: [[String: Any]] = []
            _ = try await other.until("generation.done", &replay)
            #expect(Self.text(replay, 0).text == Self.text(ownerMessages, 0).text)
        }
    }

    @Test func aDrainHandsGenerationsOffToAnotherInstance() async throws {
        try await Self.run(simulator: { $0.tokensPerSecond = 300; $0.answerTokens = 600 }) { _, instances in
            let expected = SimulatorEngine.tokens(for: "rolling deploy", seed: 0, count: 600).joined()
            let client = try await instances[0].connect()
            try await client.send(["type": "chat.send", "content": "rolling deploy", "max_tokens": 600])
            let generationID = try #require(try await client.next()["generation_id"] as? String)
            var before: [[String: Any]] = []
            while before.count < 10 { before.append(try await client.next()) }
            // SIGTERM's drain: session.draining and Close 1012 at once; the generation goes on.
            let drain = Task { await instances[0].server.drain() }
            var closeCode: UInt16?
            var sawDraining = false
            while closeCode == nil {
                let frame = try await client.raw.nextFrame()
                if frame.opcode == 0x8 {
                    closeCode = frame.payload.count >= 2 ? UInt16(frame.payload[0]) << 8 | UInt16(frame.payload[1]) : nil
                    break
                }
                let message = try #require(try JSONSerialization.jsonObject(with: Data(frame.payload)) as? [String: Any])
                if message["type"] as? String == "session.draining" { sawDraining = true } else { before.append(message) }
            }
            #expect(sawDraining && closeCode == 1012)
            await drain.value
            let (head, lastSeq) = Self.text(before, 0)
            // The client reconnects elsewhere and resumes: the whole answer, no gap, no repeat.
            let elsewhere = try await instances[1].connect()
            try await elsewhere.send(["type": "generation.resume", "generation_id": generationID, "after_seq": lastSeq])
            #expect(try await elsewhere.next()["type"] as? String == "generation.started")
            var rest: [[String: Any]] = []
            let done = try await elsewhere.until("generation.done", &rest)
            #expect(head + Self.text(rest, lastSeq).text == expected)
            #expect(done["finish_reason"] as? String == "stop" && done["seq"] as? Int == 600)
            // The drained instance's process would now wait for its generations: none is left.
            await instances[0].application.finishGenerations(deadline: .seconds(5))
        }
    }

    @Test func generationsStillRunningAtTheHandOffDeadlineEndWithOwnerLost() async throws {
        try await Self.run(simulator: { $0.tokensPerSecond = 20; $0.answerTokens = 10_000 }) { _, instances in
            let client = try await instances[0].connect()
            try await client.send(["type": "chat.send", "content": "too long", "max_tokens": 10_000])
            let generationID = try #require(try await client.next()["generation_id"] as? String)
            let follower = try await instances[1].connect()
            try await follower.send(["type": "generation.resume", "generation_id": generationID])
            #expect(try await follower.next()["type"] as? String == "generation.started")
            await instances[0].server.drain()
            await instances[0].application.finishGenerations(deadline: .milliseconds(300))
            var messages: [[String: Any]] = []
            let done = try await follower.until("generation.done", &messages)
            #expect(done["finish_reason"] as? String == "error")
            #expect((done["error"] as? [String: Any])?["code"] as? String == "owner_lost")
        }
    }

    /// Found by loadtest/chaos.sh (issue 15): while Redis restarts, the owner's publishes fail and
    /// were dropped for good, so a follower on another instance got a gap in its seqs, and one
    /// whose answer ended during the outage never got its `generation.done`. (This Redis keeps no
    /// data, so the restart also wipes every stream: the worst case.)
    @Test func aFollowerElsewhereMissesNothingAcrossARedisRestart() async throws {
        try await Self.run(simulator: { $0.tokensPerSecond = 100; $0.answerTokens = 600 }) { redis, instances in
            let longText = SimulatorEngine.tokens(for: "a long answer", seed: 0, count: 600).joined()
            let shortText = SimulatorEngine.tokens(for: "a short answer", seed: 0, count: 150).joined()
            // Two answers on instance 0, each followed from instance 1 from its start: a short one
            // that ends while Redis is down and a long one that goes on after it is back.
            let longOwner = try await instances[0].connect()
            try await longOwner.send(["type": "chat.send", "content": "a long answer", "max_tokens": 600])
            let longID = try #require(try await longOwner.next()["generation_id"] as? String)
            let shortOwner = try await instances[0].connect()
            try await shortOwner.send(["type": "chat.send", "content": "a short answer", "max_tokens": 150])
            let shortID = try #require(try await shortOwner.next()["generation_id"] as? String)
            let longFollower = try await instances[1].connect()
            try await longFollower.send(["type": "generation.resume", "generation_id": longID, "after_seq": 0])
            #expect(try await longFollower.next()["type"] as? String == "generation.started")
            let shortFollower = try await instances[1].connect()
            try await shortFollower.send(["type": "generation.resume", "generation_id": shortID, "after_seq": 0])
            #expect(try await shortFollower.next()["type"] as? String == "generation.started")
            var longSeen: [[String: Any]] = [try await longFollower.next()]
            var shortSeen: [[String: Any]] = [try await shortFollower.next()]

            await redis.kill()
            try await Self.eventually("the owner notices") { !instances[0].fanOut.isHealthy }
            // The owners' own streams go on: the short answer ends, the long one moves on.
            var shortOwnerMessages: [[String: Any]] = []
            #expect(try await shortOwner.until("generation.done", &shortOwnerMessages)["finish_reason"] as? String == "length")
            var longOwnerMessages: [[String: Any]] = []
            while Self.text(longOwnerMessages, 0).lastSeq < 250 { longOwnerMessages.append(try await longOwner.next()) }
            try await redis.restart()

            // Every seq exactly once and one done, for both, on the other instance.
            let shortDone = try await shortFollower.until("generation.done", &shortSeen)
            #expect(Self.text(shortSeen, 0).text == shortText)
            #expect(shortDone["seq"] as? Int == 150 && shortDone["finish_reason"] as? String == "length")
            let longDone = try await longFollower.until("generation.done", &longSeen)
            #expect(Self.text(longSeen, 0).text == longText)
            #expect(longDone["seq"] as? Int == 600 && longDone["finish_reason"] as? String == "stop")
            // And a resume after it all, elsewhere, replays the whole answer from Redis.
            let late = try await instances[1].connect()
            try await late.send(["type": "generation.resume", "generation_id": shortID, "after_seq": 0])
            #expect(try await late.next()["type"] as? String == "generation.started")
            var replay: [[String: Any]] = []
            _ = try await late.until("generation.done", &replay)
            #expect(Self.text(replay, 0).text == shortText)
        }
    }

    /// Found by loadtest/chaos.sh (issue 15): an instance killed and started again under the same
    /// id (what a supervisor does) refreshed the same liveness key, so the dead process's
    /// generations looked alive for ever and their followers waited with no end.
    @Test func anInstanceRestartedUnderTheSameIDDoesNotReviveItsPredecessorsGenerations() async throws {
        var broker = RedisBrokerConfiguration()
        broker.ownerTTL = .milliseconds(600)
        broker.livenessInterval = .milliseconds(200)
        try await Self.run(simulator: { $0.tokensPerSecond = 20; $0.answerTokens = 10_000 }) { redis, instances in
            let owner = try await instances[0].connect()
            try await owner.send(["type": "chat.send", "content": "orphaned", "max_tokens": 10_000])
            let generationID = try #require(try await owner.next()["generation_id"] as? String)
            var seen: [[String: Any]] = [try await owner.next()]
            let follower = try await instances[1].connect()
            try await follower.send(["type": "generation.resume", "generation_id": generationID, "after_seq": 0])
            #expect(try await follower.next()["type"] as? String == "generation.started")
            // gw-0 dies (its Redis side goes silent; its liveness key would expire) and a new
            // process takes its name at once.
            await instances[0].fanOut.shutdown()
            let successor = try await Instance(
                name: instances[0].name, redisURL: redis.url, simulator: SimulatorEngine.Configuration(), broker: broker)
            do {
                try await Self.eventually("the successor is up") { successor.fanOut.isHealthy }
                let done = try await follower.until("generation.done", &seen)
                #expect(done["finish_reason"] as? String == "error")
                #expect((done["error"] as? [String: Any])?["code"] as? String == "owner_lost")
            } catch {
                await successor.stop()
                throw error
            }
            await successor.stop()
        }
    }

    @Test func presenceListsAUsersConnectionsOnEveryInstance() async throws {
        try await Self.run { _, instances in
            let onA = try await instances[0].connect(path: "/v1/ws?user=alice")
            let onB = try await instances[1].connect(headers: [("X-Sluice-User", "alice")])
            let bob = try await instances[1].connect(path: "/v1/ws?user=bob")
            func sessions(_ response: RawHTTPResponse) throws -> [[String: Any]] {
                let object = try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])
                return try #require(object["connections"] as? [[String: Any]])
            }
            try await Self.eventually("both of alice's connections are listed") {
                try sessions(try await instances[0].get("/v1/presence?user=alice")).count == 2
            }
            let alice = try sessions(try await instances[1].get("/v1/presence?user=alice"))
            #expect(Set(alice.compactMap { $0["instance_id"] as? String }) == ["gw-0", "gw-1"])
            #expect(try sessions(try await instances[0].get("/v1/presence?user=bob")).count == 1)
            #expect(try await instances[0].get("/v1/presence").status == 400)
            await onB.raw.close()
            try await Self.eventually("a closed connection leaves") {
                try sessions(try await instances[0].get("/v1/presence?user=alice")).count == 1
            }
            // An instance that dies (its liveness key gone) takes its connections with it.
            await instances[0].fanOut.shutdown()
            try await Self.eventually("a dead instance's connections vanish") {
                try sessions(try await instances[1].get("/v1/presence?user=alice")).isEmpty
            }
            _ = onA
            _ = bob
        }
    }

    /// An OpenAI-compatible upstream that streams a chunk every 20 ms until its connection is
    /// closed, and notes when that happens (what makes vLLM free the sequence).
    final class EndlessUpstream: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let closed: NIOLockedValueBox<Int>

        init(closed: NIOLockedValueBox<Int>) { self.closed = closed }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            context.writeAndFlush(NIOAny(ByteBuffer(string: head)), promise: nil)
            self.tick(context)
        }

        private func tick(_ context: ChannelHandlerContext) {
            context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(20)) {
                guard context.channel.isActive else { return }
                let event = #"data: {"choices":[{"delta":{"content":" word"}}]}"# + "\n\n"
                let chunk = String(event.utf8.count, radix: 16) + "\r\n" + event + "\r\n"
                context.writeAndFlush(NIOAny(ByteBuffer(string: chunk)), promise: nil)
                self.tick(context)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.closed.withLockedValue { $0 += 1 }
        }
    }

    @Test func cancelFromAnotherInstanceClosesTheUpstreamRequest() async throws {
        let closed = NIOLockedValueBox(0)
        let upstream = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EndlessUpstream(closed: closed)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { upstream.close(promise: nil) }
        let engine = try OpenAICompatibleEngine(configuration: .init(
            baseURL: URL(string: "http://127.0.0.1:\(upstream.localAddress!.port!)")!, model: "m"))
        try await Self.run(engine: engine) { _, instances in
            let owner = try await instances[0].connect()
            try await owner.send(["type": "chat.send", "content": "go on forever"])
            let generationID = try #require(try await owner.next()["generation_id"] as? String)
            _ = try await owner.next()  // a delta: the upstream is streaming
            #expect(closed.withLockedValue { $0 } == 0)
            let other = try await instances[1].connect()
            try await other.send(["type": "generation.cancel", "generation_id": generationID])
            #expect(try await other.next()["finish_reason"] as? String == "cancelled")
            try await Self.eventually("the upstream connection is closed") { closed.withLockedValue { $0 } == 1 }
        }
    }
}
