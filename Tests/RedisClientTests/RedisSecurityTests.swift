import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import RedisClient
@testable import SluiceTestSupport

/// Passwords, ACL users, databases, TLS, deadlines and the pending bound against a real
/// `redis-server` 7 (TLS built in), with certificates made by openssl for the test.
@Suite(.serialized)
struct RedisSecurityTests {
    let loop = MultiThreadedEventLoopGroup.singleton.next()

    func configuration(
        _ url: String, tls: RedisTLSConfiguration = .init(), commandTimeout: TimeAmount = .seconds(5), maxPending: Int = 1_000
    ) throws -> RedisConfiguration {
        RedisConfiguration(
            url: try RedisURL(url), tls: tls, connectTimeout: .seconds(2), commandTimeout: commandTimeout,
            maxPendingCommands: maxPending, initialBackoff: .milliseconds(20), maximumBackoff: .milliseconds(200))
    }

    func connect(_ configuration: RedisConfiguration) async throws -> RedisConnection {
        try await RedisConnection.connect(configuration: configuration, on: self.loop)
    }

    /// The error a connect attempt fails with.
    func connectError(_ configuration: RedisConfiguration) async -> RedisClientError? {
        do {
            let connection = try await self.connect(configuration)
            await connection.close()
            Issue.record("connected to \(configuration.url)")
            return nil
        } catch {
            return error as? RedisClientError
        }
    }

    // MARK: Passwords and ACL users

    static let aclArguments = [
        "--requirepass", "main-secret",
        // An ACL user limited to keys and channels app:*, for telling who we logged in as.
        "--user", "app", "on", ">app-secret", "~app:*", "&app:*", "+@all",
    ]

    @Test(.timeLimit(.minutes(15)))
    func passwordsAndACLUsersOnEveryKindOfConnection() async throws {
        try await RedisServerProcess.withServer(arguments: Self.aclArguments) { server in
            let base = "127.0.0.1:\(server.port)"
            // requirepass: AUTH with the password only (the default user).
            let main = try await self.connect(try self.configuration("redis://:main-secret@\(base)"))
            #expect(try await main.send("ACL", "WHOAMI").string == "default")
            await main.close()

            // An ACL user: AUTH user password, on the shared client, a dedicated connection and
            // the subscriber alike.
            let app = try self.configuration("redis://app:app-secret@\(base)/5")
            let client = RedisClient(configuration: app, eventLoop: self.loop)
            try await eventually("the client connects") { client.isConnected }
            #expect(try await client.send("ACL", "WHOAMI").string == "app")
            _ = try await client.set("app:k", to: "v")
            await #expect(throws: RedisClientError.self) { try await client.set("other:k", to: "v") }  // NOPERM: really "app"
            let dedicated = try await client.makeDedicatedConnection()
            #expect(try await dedicated.send("ACL", "WHOAMI").string == "app")
            #expect(try await dedicated.get("app:k").map { String(buffer: $0) } == "v")
            await dedicated.close()
            let received = NIOLockedValueBox<[String]>([])
            let subscriber = RedisSubscriber(configuration: app, eventLoop: self.loop)
            try await eventually("the subscriber connects") { subscriber.isConnected }
            try await subscriber.subscribe("app:news") { message in received.withLockedValue { $0.append(String(buffer: message.payload)) } }
            _ = try await client.publish("hello", to: "app:news")
            try await eventually("the message arrives over the authenticated subscriber") { received.withLockedValue { $0 } == ["hello"] }
            await subscriber.shutdown()
            await client.shutdown()
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func aWrongOrMissingPasswordIsAClearErrorWithoutTheSecret() async throws {
        try await RedisServerProcess.withServer(arguments: Self.aclArguments) { server in
            let base = "127.0.0.1:\(server.port)"
            let wrong = await self.connectError(try self.configuration("redis://app:not-the-secret@\(base)"))
            guard case .authenticationFailed(let message)? = wrong else {
                Issue.record("expected authenticationFailed, got \(String(describing: wrong))")
                return
            }
            #expect(message.contains("WRONGPASS"))
            #expect(!"\(wrong!)".contains("not-the-secret"))
            #expect(wrong!.isRetryable)
            let missing = await self.connectError(try self.configuration("redis://\(base)"))
            guard case .authenticationFailed(let noAuth)? = missing else {
                Issue.record("expected authenticationFailed, got \(String(describing: missing))")
                return
            }
            #expect(noAuth.contains("NOAUTH"))
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func aRefusedLoginIsRetriedWithBackoffUntilItWorks() async throws {
        try await RedisServerProcess.withServer(arguments: ["--requirepass", "main-secret"]) { server in
            let admin = try await self.connect(try self.configuration("redis://:main-secret@127.0.0.1:\(server.port)"))
            func connectionsReceived() async throws -> Int {
                let info = try await admin.send("INFO", "stats").string ?? ""
                let line = info.split(separator: "\r\n").first { $0.hasPrefix("total_connections_received:") }
                return Int(line?.split(separator: ":").last ?? "") ?? 0
            }
            // A user that does not exist yet: refused, and tried again and again.
            let client = RedisClient(configuration: try self.configuration("redis://late:late-secret@127.0.0.1:\(server.port)"), eventLoop: self.loop)
            let before = try await connectionsReceived()
            try await eventually("several attempts") { try await connectionsReceived() >= before + 3 }
            #expect(!client.isConnected)
            await #expect(throws: RedisClientError.notConnected) { try await client.ping() }
            // Once the user exists, the next attempt logs in by itself.
            _ = try await admin.send("ACL", "SETUSER", "late", "on", ">late-secret", "~*", "+@all")
            try await eventually("connected once the credentials are valid") { client.isConnected }
            #expect(try await client.send("ACL", "WHOAMI").string == "late")
            await client.shutdown()
            await admin.close()
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func theURLsDatabaseIsSelectedOnEveryConnectionAndIsolatesKeys() async throws {
        try await RedisServerProcess.withServer(arguments: ["--requirepass", "main-secret"]) { server in
            let base = "redis://:main-secret@127.0.0.1:\(server.port)"
            let three = RedisClient(configuration: try self.configuration("\(base)/3"), eventLoop: self.loop)
            let zero = RedisClient(configuration: try self.configuration("\(base)/0"), eventLoop: self.loop)
            try await eventually("both connect") { three.isConnected && zero.isConnected }
            _ = try await three.set("shared-name", to: "in three")
            #expect(try await zero.get("shared-name") == nil)
            #expect(try await three.get("shared-name").map { String(buffer: $0) } == "in three")
            let dedicated = try await three.makeDedicatedConnection()
            #expect(try await dedicated.get("shared-name").map { String(buffer: $0) } == "in three")
            await dedicated.close()
            // After a reconnect too.
            _ = try? await three.send("CLIENT", "KILL", "TYPE", "normal")
            try await eventually("reconnected") {
                guard three.isConnected else { return false }
                return (try? await three.get("shared-name")) != nil
            }
            #expect(try await three.get("shared-name").map { String(buffer: $0) } == "in three")
            // A database the server does not have: refused, not used on database 0.
            let error = await self.connectError(try self.configuration("\(base)/99"))
            #expect(error.map { "\($0)" }?.contains("DB index is out of range") == true, "\(String(describing: error))")
            await three.shutdown()
            await zero.shutdown()
        }
    }

    // MARK: TLS

    @Test(.timeLimit(.minutes(15)))
    func tlsVerifiesTheServerByCAAndName() async throws {
        let pki = try await TestCertificates.make()
        defer { pki.remove() }
        let tls = RedisServerProcess.TLSOptions(certificateFile: pki.serverCertificate, keyFile: pki.serverKey, caFile: pki.caCertificate)
        try await RedisServerProcess.withServer(arguments: ["--requirepass", "tls-secret"], tls: tls) { server in
            let trusted = RedisTLSConfiguration(caFile: pki.caCertificate)
            // By name: SNI localhost, certificate for localhost.
            let byName = try await self.connect(try self.configuration(server.tlsURL(host: "localhost", credentials: ":tls-secret@"), tls: trusted))
            #expect(try await byName.ping() == "PONG")
            await byName.close()
            // By address: the certificate names localhost, not 127.0.0.1, so it is refused...
            let byAddress = await self.connectError(try self.configuration(server.tlsURL(credentials: ":tls-secret@"), tls: trusted))
            guard case .tls(let addressMessage)? = byAddress else {
                Issue.record("expected a TLS error, got \(String(describing: byAddress))")
                return
            }
            #expect(addressMessage.contains("not valid for 127.0.0.1"), "\(addressMessage)")
            // ...unless server_name says which name to expect (and send as SNI).
            var named = trusted
            named.serverName = "localhost"
            let overridden = try await self.connect(try self.configuration(server.tlsURL(credentials: ":tls-secret@"), tls: named))
            #expect(try await overridden.ping() == "PONG")
            await overridden.close()

            // Refused: a name the certificate does not carry, another CA, the system roots.
            named.serverName = "redis.wrong.example"
            let wrongName = await self.connectError(try self.configuration(server.tlsURL(host: "localhost", credentials: ":tls-secret@"), tls: named))
            guard case .tls(let nameMessage)? = wrongName else {
                Issue.record("expected a TLS error, got \(String(describing: wrongName))")
                return
            }
            #expect(nameMessage.contains("redis.wrong.example"), "\(nameMessage)")
            let wrongCA = await self.connectError(try self.configuration(
                server.tlsURL(host: "localhost", credentials: ":tls-secret@"), tls: RedisTLSConfiguration(caFile: pki.otherCACertificate)))
            guard case .tls? = wrongCA else {
                Issue.record("expected a TLS error, got \(String(describing: wrongCA))")
                return
            }
            let systemRoots = await self.connectError(try self.configuration(server.tlsURL(host: "localhost", credentials: ":tls-secret@")))
            guard case .tls? = systemRoots else {
                Issue.record("expected a TLS error, got \(String(describing: systemRoots))")
                return
            }
            // The documented escape hatch accepts it (encrypted, not authenticated).
            let unverified = try await self.connect(try self.configuration(
                server.tlsURL(host: "localhost", credentials: ":tls-secret@"),
                tls: RedisTLSConfiguration(caFile: pki.otherCACertificate, verifiesCertificates: false)))
            #expect(try await unverified.ping() == "PONG")
            await unverified.close()
            // Plain text to the TLS port is no TLS at all: refused (it never gets a reply).
            let plain = await self.connectError(try self.configuration("redis://:tls-secret@127.0.0.1:\(server.tlsPort ?? 0)", commandTimeout: .seconds(1)))
            #expect(plain != nil)

            // The whole client over TLS: commands, a dedicated connection, pub/sub.
            let configuration = try self.configuration(server.tlsURL(host: "localhost", credentials: ":tls-secret@"), tls: trusted)
            let client = RedisClient(configuration: configuration, eventLoop: self.loop)
            let subscriber = RedisSubscriber(configuration: configuration, eventLoop: self.loop)
            try await eventually("client and subscriber connect over TLS") { client.isConnected && subscriber.isConnected }
            let received = NIOLockedValueBox<[String]>([])
            try await subscriber.subscribe("news") { message in received.withLockedValue { $0.append(String(buffer: message.payload)) } }
            _ = try await client.publish("over tls", to: "news")
            try await eventually("published over TLS") { received.withLockedValue { $0 } == ["over tls"] }
            let dedicated = try await client.makeDedicatedConnection()
            #expect(try await dedicated.xread([("nothing", "$")], blockMilliseconds: 10).isEmpty)
            await dedicated.close()
            await subscriber.shutdown()
            await client.shutdown()
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func mutualTLSSendsTheClientCertificateWhenTheServerRequiresOne() async throws {
        let pki = try await TestCertificates.make()
        defer { pki.remove() }
        let tls = RedisServerProcess.TLSOptions(
            certificateFile: pki.serverCertificate, keyFile: pki.serverKey, caFile: pki.caCertificate, requireClientCertificates: true)
        try await RedisServerProcess.withServer(tls: tls) { server in
            let url = server.tlsURL(host: "localhost")
            let withoutCertificate = await self.connectError(try self.configuration(url, tls: RedisTLSConfiguration(caFile: pki.caCertificate)))
            #expect(withoutCertificate != nil && withoutCertificate!.isRetryable, "\(String(describing: withoutCertificate))")
            let mutual = RedisTLSConfiguration(caFile: pki.caCertificate, certificateFile: pki.clientCertificate, privateKeyFile: pki.clientKey)
            let connection = try await self.connect(try self.configuration(url, tls: mutual))
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test func tlsFilesThatCannotBeUsedAreReportedByName() throws {
        #expect(throws: RedisTLSError.self) { _ = try RedisTLSConfiguration(caFile: "/nonexistent/ca.pem").makeContext() }
        do {
            _ = try RedisTLSConfiguration(certificateFile: "/tmp/c.pem").makeContext()
            Issue.record("a certificate without its key was accepted")
        } catch {
            #expect(error.description.contains("private_key_file"))
        }
        let configuration = RedisConfiguration(url: RedisURL(host: "h", usesTLS: true), tls: RedisTLSConfiguration(caFile: "/nonexistent/ca.pem"))
        #expect(throws: RedisTLSError.self) { try configuration.validate() }
    }

    // MARK: Deadlines and bounds

    @Test(.timeLimit(.minutes(15)))
    func aFrozenServerFailsCommandsAtTheirDeadlineAndTheClientRecoversAfterSIGCONT() async throws {
        try await RedisServerProcess.withServer(arguments: ["--requirepass", "main-secret"]) { server in
            let configuration = try self.configuration("redis://:main-secret@127.0.0.1:\(server.port)/2", commandTimeout: .seconds(1))
            let states = NIOLockedValueBox<[RedisConnectionState]>([])
            let client = RedisClient(configuration: configuration, eventLoop: self.loop) { state in states.withLockedValue { $0.append(state) } }
            try await eventually("connected") { client.isConnected }
            _ = try await client.set("a", to: "A")
            _ = try await client.set("b", to: "B")
            let dedicated = try await client.makeDedicatedConnection()
            let received = NIOLockedValueBox<[String]>([])
            let resubscribed = NIOLockedValueBox(0)
            let subscriber = RedisSubscriber(configuration: configuration, eventLoop: self.loop, onResubscribed: {
                resubscribed.withLockedValue { $0 += 1 }
            })
            try await eventually("subscriber connected") { subscriber.isConnected }
            try await subscriber.subscribe("news") { message in received.withLockedValue { $0.append(String(buffer: message.payload)) } }

            server.stall()
            await #expect(throws: RedisClientError.timedOut) { try await client.get("a") }
            // The silent connection was given up: commands fail at once now (Redis counts as down).
            try await eventually("disconnected") { !client.isConnected }
            await #expect(throws: RedisClientError.notConnected) { try await client.get("b") }
            // A blocking read gets its block time on top of the deadline, then fails too.
            await #expect(throws: RedisClientError.timedOut) { try await dedicated.xread([("s", "$")], blockMilliseconds: 200) }
            #expect(!dedicated.isActive)

            // The idle subscriber notices too (its PING goes unanswered) and lets go.
            try await eventually("the subscriber gave up the silent connection") { !subscriber.isConnected }

            server.resume()
            try await eventually("reconnected after SIGCONT") { client.isConnected }
            try await eventually("resubscribed after SIGCONT") { subscriber.isConnected && resubscribed.withLockedValue { $0 } >= 1 }
            _ = try await client.publish("after", to: "news")
            try await eventually("messages flow again") { received.withLockedValue { $0 } == ["after"] }
            await subscriber.shutdown()
            // Each command gets its own reply: nothing late is matched to the wrong one.
            #expect(try await client.get("b").map { String(buffer: $0) } == "B")
            #expect(try await client.get("a").map { String(buffer: $0) } == "A")
            #expect(states.withLockedValue { $0 }.starts(with: [.connected, .disconnected]))
            await client.shutdown()
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func pendingCommandsAreBoundedPerConnectionAndNoneIsLost() async throws {
        try await RedisServerProcess.withServer { server in
            // A deadline far away: only the bound is under test here.
            let configuration = try self.configuration(server.url, commandTimeout: .seconds(60), maxPending: 10)
            let connection = try await self.connect(configuration)
            server.stall()
            let waiting: [EventLoopFuture<RESPValue>] = connection.send(pipeline: (0..<10).map { RedisCommand("INCR", "counter\($0 % 2)") })
            let refused: EventLoopFuture<RESPValue> = connection.send(RedisCommand("INCR", "counter0"))
            await #expect(throws: RedisClientError.tooManyPendingCommands) { try await refused.get() }
            server.resume()
            var results: [Int] = []
            for reply in waiting { results.append(try await reply.get().int ?? -1) }
            #expect(results == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
            #expect(try await connection.send("GET", "counter0").int == 5, "the refused command was never sent")
            await connection.close()
        }
    }
}
