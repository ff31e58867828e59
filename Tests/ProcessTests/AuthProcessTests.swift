import Crypto
import Foundation
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// Authentication and authorization on the real binary: two instances sharing Redis and
/// PostgreSQL, `--jwt-secret`. Tokens are made here by hand (HS256 with swift-crypto), so the
/// gateway's jwt-kit verification is checked against an independent signer.
@Suite struct AuthProcessTests {
    static let secret = "process-test-secret-of-32-bytes-or-more"

    static func base64URL(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func token(sub: String, expiresIn: Int = 600, secret: String = Self.secret, alg: String = "HS256") -> String {
        let header = Self.base64URL(Array(#"{"alg":"\#(alg)","typ":"JWT"}"#.utf8))
        let claims = Self.base64URL(Array(#"{"sub":"\#(sub)","exp":\#(Int(Date().timeIntervalSince1970) + expiresIn)}"#.utf8))
        let input = header + "." + claims
        guard alg == "HS256" else { return input + "." }
        let mac = HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(secret.utf8)))
        return input + "." + Self.base64URL(Array(mac))
    }

    /// The upgrade's answer (status, headers, body) without upgrading.
    static func handshake(_ port: Int, query: String = "", headers: [(String, String)] = []) async throws -> RawHTTPResponse {
        let raw = try await RawClient.connect(port: port, group: MultiThreadedEventLoopGroup.singleton)
        defer { Task { await raw.close() } }
        return try await raw.handshake(path: "/v1/ws" + query, extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1")] + headers).response
    }

    static func curl(_ url: String, token: String?) async throws -> Int {
        var arguments = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        let result = try await SluiceProcess.runCommand(arguments, executable: "/usr/bin/curl", timeout: .seconds(10))
        return Int(result.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    @Test(.timeLimit(.minutes(15)))
    func tokensAreCheckedBeforeTheUpgradeAndUsersSeeOnlyTheirOwn() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer { redis in
            try await PostgresServerProcess.withServer { postgres in
                let environment = [
                    "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "10ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "20",
                    "SLUICE_SIMULATOR_ANSWER_TOKENS": "60", "SLUICE_AUTH_LEEWAY": "0s", "SLUICE_JWT_SECRET": Self.secret,
                    "SLUICE_STORAGE_DATABASE_URL": postgres.url,
                    // Opt-in since issue 15 (URLs end up in logs): this test uses ?token= too.
                    "SLUICE_AUTH_QUERY_PARAMETER": "token",
                ]
                try await SluiceProcess.withProcesses(
                    count: 2, arguments: ["--redis-url", redis.url], environment: environment
                ) { (processes: [SluiceProcess]) async throws -> Void in
                    for process in processes {
                        try await PersistenceProcessTests.eventually("/ready") { try await process.httpGet(path: "/ready").status == 200 }
                    }
                    try await Self.refusals(processes[0].port)
                    try await Self.ownership(processes, group: group)
                    try await Self.expiry(processes[1].port, group: group)
                }
            }
        }
    }

    /// Missing, expired, forged and unsigned tokens: 401 with a JSON body, never a 101.
    static func refusals(_ port: Int) async throws {
        let cases: [(String, [(String, String)], String)] = [
            ("missing", [], "authentication required"),
            ("expired", [("Authorization", "Bearer \(Self.token(sub: "alice", expiresIn: -120))")], "token expired"),
            ("forged", [("Authorization", "Bearer \(Self.token(sub: "alice", secret: "not-the-secret-but-also-32-bytes-long"))")], "signature does not verify"),
            ("alg none", [("Authorization", "Bearer \(Self.token(sub: "alice", alg: "none"))")], "alg none"),
            ("garbage", [("Authorization", "Bearer x.y.z")], "malformed token"),
            ("dev user without token", [("X-Sluice-User", "alice")], "authentication required"),
        ]
        for (name, headers, message) in cases {
            let response = try await Self.handshake(port, headers: headers)
            #expect(response.status == 401, "\(name): \(response.status)")
            let body = try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any]
            #expect(body?["type"] as? String == "error" && body?["code"] as? String == "unauthorized", "\(name): \(response.body)")
            #expect((body?["message"] as? String)?.contains(message) == true, "\(name): \(response.body)")
            #expect(response.headers.contains { $0.name.lowercased() == "www-authenticate" && $0.value.hasPrefix("Bearer") }, "\(name)")
            #expect(response.headers.contains { $0.name.lowercased() == "content-type" && $0.value == "application/json" }, "\(name)")
        }
    }

    static func ownership(_ processes: [SluiceProcess], group: MultiThreadedEventLoopGroup) async throws {
        let aliceToken = Self.token(sub: "alice"), bobToken = Self.token(sub: "bob")
        // The token names the user; `?user=` is ignored once authentication is on.
        let alice = try await JSONWebSocketClient.connect(
            port: processes[0].port, group: group, query: "?user=bob", headers: [("Authorization", "Bearer \(aliceToken)")])
        _ = try await alice.next()
        // Browsers: the token as a subprotocol; the server must pick sluice.v1, never echo it.
        let bobRaw = try await RawClient.connect(port: processes[1].port, group: group)
        let (bobAnswer, _) = try await bobRaw.handshake(path: "/v1/ws", extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1, bearer.\(bobToken)")])
        #expect(bobAnswer.status == 101)
        #expect(bobAnswer.headers.first { $0.name.lowercased() == "sec-websocket-protocol" }?.value == "sluice.v1")
        let bobElsewhere = JSONWebSocketClient(raw: bobRaw)
        _ = try await bobElsewhere.next()
        // And as a query parameter, on Alice's instance.
        let bobHere = try await JSONWebSocketClient.connect(port: processes[0].port, group: group, query: "?token=\(bobToken)")
        _ = try await bobHere.next()

        try await alice.send(["type": "chat.send", "content": "mine only", "max_tokens": 30])
        let started = try await alice.until(type: "generation.started")
        let generation = try #require(started["generation_id"] as? String)
        let conversation = try #require(started["conversation_id"] as? String)

        for bob in [bobHere, bobElsewhere] {
            try await bob.send(["type": "generation.resume", "generation_id": generation, "after_seq": 0])
            #expect(try await bob.until(type: "error")["code"] as? String == "not_found")
            try await bob.send(["type": "generation.cancel", "generation_id": generation])
            #expect(try await bob.until(type: "error")["code"] as? String == "not_found")
            try await bob.send(["type": "conversation.subscribe", "conversation_id": conversation])
            #expect(try await bob.until(type: "error", timeout: .seconds(10))["code"] as? String == "not_found")
            try await bob.send(["type": "conversation.history", "conversation_id": conversation])
            #expect(try await bob.until(type: "error", timeout: .seconds(10))["code"] as? String == "not_found")
        }
        // Nothing Bob did touched it.
        #expect(try await alice.until(type: "generation.done", timeout: .seconds(20))["finish_reason"] as? String == "length")
        // Bob's own history is empty; Alice's has her conversation.
        try await bobHere.send(["type": "conversation.list"])
        let bobList = try await bobHere.until(type: "conversation.list.result", timeout: .seconds(10))
        #expect((bobList["conversations"] as? [Any])?.isEmpty == true, "\(bobList)")

        // Over HTTP: the same rules.
        let url = "http://127.0.0.1:\(processes[1].port)/v1/conversations/\(conversation)/messages"
        try await PersistenceProcessTests.eventually("alice reads her conversation over HTTP") {
            try await Self.curl(url, token: aliceToken) == 200
        }
        #expect(try await Self.curl(url, token: bobToken) == 404)
        #expect(try await Self.curl(url, token: nil) == 401)
        #expect(try await Self.curl("http://127.0.0.1:\(processes[1].port)/v1/conversations", token: Self.token(sub: "x", expiresIn: -100)) == 401)
        for client in [alice, bobHere, bobElsewhere] { await client.close() }
    }

    /// A token that expires while connected: `error unauthorized`, then Close 1008.
    static func expiry(_ port: Int, group: MultiThreadedEventLoopGroup) async throws {
        let client = try await JSONWebSocketClient.connect(
            port: port, group: group, headers: [("Authorization", "Bearer \(Self.token(sub: "carol", expiresIn: 2))")])
        _ = try await client.next()
        let error = try await client.until(type: "error", timeout: .seconds(10))
        #expect(error["code"] as? String == "unauthorized")
        let closed = try await client.waitForClose()
        #expect(closed.code == 1008)
    }
}
