import Foundation
import NIOPosix
import RedisClient
@testable import SluiceTestSupport
import Testing

/// A frozen Redis (SIGSTOP: its TCP connections stay open, nothing is answered) against the real
/// binary, with rate limits, the fan-out and jobs on Redis and a password on it: chats are still
/// admitted (the limits fall back to this process as in an outage), `/ready` says Redis is
/// unreachable, and after SIGCONT everything goes back to Redis by itself.
@Suite struct RedisStallProcessTests {
    /// The chat's last event: `generation.done`, or the `error` that refused it.
    static func outcome(_ client: JSONWebSocketClient, within timeout: Duration) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TimedOut(description: "no generation.done or error within \(timeout)") }
            let message = try await client.next(timeout: left)
            if ["generation.done", "error"].contains(message["type"] as? String) { return message }
        }
    }

    /// Whether the shared limiter holds a bucket for `user` (the request went through Redis).
    static func hasSharedBucket(_ user: String, url: RedisURL) async throws -> Bool {
        let connection = try await RedisConnection.connect(to: url, on: MultiThreadedEventLoopGroup.singleton.next())
        defer { connection.close() }
        return try await connection.send("EXISTS", "sluice:rl:u:\(user):req").int == 1
    }

    @Test(.timeLimit(.minutes(15)))
    func aFrozenRedisNeverHoldsAdmissionAndEverythingRecoversAfterSIGCONT() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let password = "frozen-\(UInt32.random(in: 1_000_000...9_999_999))"
        try await RedisServerProcess.withServer(arguments: ["--requirepass", password]) { redis in
            let url = try RedisURL("redis://:\(password)@127.0.0.1:\(redis.port)/0")
            let environment = [
                // The password comes from the environment, never the command line (ps).
                "SLUICE_REDIS_URL": "redis://:\(password)@127.0.0.1:\(redis.port)/0",
                "SLUICE_REDIS_COMMAND_TIMEOUT": "1s",
                "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "2000",
                "SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_USER": "1000",
                "SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_USER": "1000000",
            ]
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
                let process = processes[0]
                try await eventually("ready with Redis up") { try await process.httpGet(path: "/ready").status == 200 }

                // 1. Redis answers: the chat is admitted through the shared limiter.
                let ann = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=ann")
                _ = try await ann.next()
                try await ann.send(["type": "chat.send", "content": "before", "max_tokens": 3])
                #expect(try await Self.outcome(ann, within: .seconds(20))["type"] as? String == "generation.done")
                #expect(try await Self.hasSharedBucket("ann", url: url))

                // 2. Redis freezes. Chats are still admitted, decided in process as in an outage.
                redis.stall()
                try await ann.send(["type": "chat.send", "content": "while frozen", "max_tokens": 3])
                let frozen = try await Self.outcome(ann, within: .seconds(30))
                #expect(frozen["type"] as? String == "generation.done", "\(frozen)")
                let bea = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=bea")
                _ = try await bea.next()
                try await bea.send(["type": "chat.send", "content": "also while frozen", "max_tokens": 3])
                let second = try await Self.outcome(bea, within: .seconds(30))
                #expect(second["type"] as? String == "generation.done", "\(second)")
                // Jobs are refused with a retryable error rather than hanging.
                let job = try await process.httpRequest(
                    "POST", path: "/v1/jobs", headers: ["X-Sluice-User": "bea"],
                    body: #"{"kind":"echo","input":"x"}"#, timeout: .seconds(30))
                #expect(job.status == 503, "\(job)")
                try await eventually("/ready says Redis is unreachable", timeout: .seconds(30)) {
                    try await process.httpGet(path: "/ready").status == 503
                }

                // 3. Redis thaws: everything reconnects by itself and goes through Redis again.
                redis.resume()
                try await eventually("ready again after SIGCONT", timeout: .seconds(30)) {
                    try await process.httpGet(path: "/ready").status == 200
                }
                let cyd = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=cyd")
                _ = try await cyd.next()
                try await cyd.send(["type": "chat.send", "content": "after", "max_tokens": 3])
                #expect(try await Self.outcome(cyd, within: .seconds(20))["type"] as? String == "generation.done")
                #expect(try await Self.hasSharedBucket("cyd", url: url))

                // The password never reached the log (URLs are logged masked).
                let log = process.logTail(lines: 10_000)
                #expect(!log.contains(password))
                #expect(log.contains("redis://:***@127.0.0.1:\(redis.port)/0"), "\(process.logTail(lines: 30))")
                for client in [ann, bea, cyd] { await client.close() }
            }
        }
    }

    /// The escape hatch that turns certificate checks off is loud about it.
    @Test(.timeLimit(.minutes(15)))
    func unverifiedTLSIsWarnedAboutAtStartup() async throws {
        let dead = try SluiceProcess.deadPort()
        let environment = ["SLUICE_REDIS_URL": "rediss://:pw@127.0.0.1:\(dead.port)/0", "SLUICE_REDIS_TLS_VERIFY": "false"]
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            try await eventually("the warning") { processes[0].logTail(lines: 1_000).contains("redis.tls.verify is false") }
        }
        _ = dead
    }

    /// A wrong password is an outage with a clear log line: `/ready` 503, chats still served from
    /// this process, the password in no log line; the right one (a restart with it) connects.
    @Test(.timeLimit(.minutes(15)))
    func aWrongPasswordIsAClearNonSecretErrorAndAnOutage() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer(arguments: ["--requirepass", "the-right-one"]) { redis in
            let environment = [
                "SLUICE_REDIS_URL": "redis://:a-wrong-one@127.0.0.1:\(redis.port)/0",
                "SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_USER": "1000",
            ]
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
                let process = processes[0]
                try await eventually("the refusal is logged") { process.logTail(lines: 10_000).contains("WRONGPASS") }
                let ready = try await process.httpGet(path: "/ready")
                #expect(ready.status == 503 && ready.body.contains("redis"), "\(ready)")
                let client = try await JSONWebSocketClient.connect(port: process.port, group: group, query: "?user=dee")
                _ = try await client.next()
                try await client.send(["type": "chat.send", "content": "hi", "max_tokens": 3])
                #expect(try await Self.outcome(client, within: .seconds(20))["type"] as? String == "generation.done")
                // Still refused (tried again with backoff), still unready.
                #expect(try await process.httpGet(path: "/ready").status == 503)
                let log = process.logTail(lines: 10_000)
                #expect(log.contains("Redis refused the credentials") && log.contains("redis://:***@127.0.0.1:\(redis.port)/0"))
                #expect(!log.contains("a-wrong-one") && !log.contains("the-right-one"))
                await client.close()
            }
        }
    }
}
