import Crypto
import Foundation
import NIOCore
import NIOPosix
import SluiceProtocol
@testable import SluiceTestSupport
import Testing

/// The issue's headline inputs against the real binary (authentication, a tokens-per-minute
/// limit, an upstream that reports absurd usage): numbers near 2^63 through every front door
/// and JWTs valid for centuries. Each gets a clear refusal or is handled, and after each the
/// process is alive and `/health` answers. (Before: one WebSocket message killed the process.)
@Suite struct HostileNumbersProcessTests {
    static let secret = AuthProcessTests.secret

    static func token(claims: String, header: String = #"{"alg":"HS256","typ":"JWT"}"#) -> String {
        let input = AuthProcessTests.base64URL(Array(header.utf8)) + "." + AuthProcessTests.base64URL(Array(claims.utf8))
        let mac = HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(Self.secret.utf8)))
        return input + "." + AuthProcessTests.base64URL(Array(mac))
    }

    static func token(sub: String) -> String { AuthProcessTests.token(sub: sub) }

    /// The process still runs and answers `/health`.
    static func expectAlive(_ process: SluiceProcess, after step: String) async throws {
        #expect(process.isRunning, "the process died after \(step): \(process.logTail())")
        let health = try await process.httpGet(path: "/health")
        #expect(health.status == 200, "/health after \(step): \(health.status)")
    }

    @Test(.timeLimit(.minutes(15)))
    func headlineNumbersAreRefusedAndTheProcessStaysUp() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        // An upstream that echoes absurd usage: 2^63-1 prompt and completion tokens.
        let upstream = try await FakeUpstream.start { _ in
            [
                .write(FakeUpstream.head()), .write(FakeUpstream.delta("ok")),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":9223372036854775807}}"#)),
                .write("data: [DONE]\n\n"), .close,
            ]
        }
        defer { Task { await upstream.stop() } }
        let environment = [
            "SLUICE_JWT_SECRET": Self.secret,
            // ?token= is opt-in (issue 15); on here so "one credential per request" covers it.
            "SLUICE_AUTH_QUERY_PARAMETER": "token",
            "SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_USER": "10000",
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms",
            "SLUICE_UPSTREAMS": #"[{name: echo, kind: openai, base_url: "http://127.0.0.1:\#(upstream.port)", model: echo-model}, {name: demo, kind: sim}]"#,
        ]
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--database-url", "memory"], environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let process = processes[0]
            try await Self.webSocket(process, group: group)
            try await Self.chatStream(process)
            try await Self.chatCompletions(process)
            try await Self.tokens(process, group: group)
        }
    }

    /// The message from the issue, and its neighbours, over `sluice.v1`.
    static func webSocket(_ process: SluiceProcess, group: MultiThreadedEventLoopGroup) async throws {
        let client = try await JSONWebSocketClient.connect(
            port: process.port, group: group, headers: [("Authorization", "Bearer \(Self.token(sub: "ws-user"))")])
        _ = try await client.until(type: "session.ready")
        for value in ["9223372036854775000", "4611686018427387904", "9223372036854775807", "1e30"] {
            try await client.send(text: #"{"type":"chat.send","content":"x","max_tokens":\#(value),"request_id":"r-\#(value)"}"#)
            let error = try await client.until(type: "error")
            #expect(error["code"] as? String == "invalid_message" && error["request_id"] as? String == "r-\(value)", "\(error)")
            #expect((error["message"] as? String)?.contains("32768") == true, "\(error)")
            try await Self.expectAlive(process, after: "WebSocket max_tokens \(value)")
        }
        try await client.send(text: #"{"type":"generation.resume","generation_id":"g","after_seq":9223372036854775807}"#)
        #expect(try await client.until(type: "error")["code"] as? String == "invalid_message")
        try await client.send(text: #"{"type":"conversation.list","limit":1e300}"#)
        #expect(try await client.until(type: "error")["code"] as? String == "invalid_message")
        // The connection is still good for a normal request.
        try await client.send(["type": "chat.send", "content": "still here", "max_tokens": 3, "model": "demo"])
        let done = try await client.until(type: "generation.done", timeout: .seconds(20))
        #expect(done["finish_reason"] as? String == "length", "\(done)")
        await client.close()
        try await Self.expectAlive(process, after: "the WebSocket inputs")
    }

    static func chatStream(_ process: SluiceProcess) async throws {
        let headers = ["Authorization": "Bearer \(Self.token(sub: "sse-user"))"]
        for value in ["4611686018427387904", "9223372036854775807"] {
            let response = try await process.httpRequest(
                "POST", path: "/v1/chat/stream", headers: headers, body: #"{"content":"x","max_tokens":\#(value)}"#)
            #expect(response.status == 400, "/v1/chat/stream max_tokens \(value): \(response.status) \(response.body)")
            #expect(response.body.contains(#""code":"invalid_message""#) && response.body.contains("32768"), "\(response.body)")
            try await Self.expectAlive(process, after: "/v1/chat/stream max_tokens \(value)")
        }
        let history = try await process.httpRequest("GET", path: "/v1/conversations?limit=99999999999999999999999", headers: headers)
        #expect(history.status == 400, "\(history)")
        try await Self.expectAlive(process, after: "/v1/conversations limit")
    }

    static func chatCompletions(_ process: SluiceProcess) async throws {
        let headers = ["Authorization": "Bearer \(Self.token(sub: "openai-user"))"]
        for field in ["max_tokens", "max_completion_tokens"] {
            for value in ["4611686018427387904", "9223372036854775807"] {
                let body = #"{"model":"echo","messages":[{"role":"user","content":"x"}],"\#(field)":\#(value)}"#
                let response = try await process.httpRequest("POST", path: "/v1/chat/completions", headers: headers, body: body)
                #expect(response.status == 400, "\(field) \(value): \(response.status) \(response.body)")
                let error = (try? JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])?["error"] as? [String: Any]
                #expect(error?["param"] as? String == field && (error?["message"] as? String)?.contains("32768") == true, "\(response.body)")
                try await Self.expectAlive(process, after: "/v1/chat/completions \(field) \(value)")
            }
        }
        let n = try await process.httpRequest(
            "POST", path: "/v1/chat/completions", headers: headers, body: #"{"model":"echo","messages":[{"role":"user","content":"x"}],"n":3}"#)
        #expect(n.status == 400 && n.body.contains("n=1"), "\(n)")
        // The upstream reports 2^63-1 prompt and completion tokens: clamped, and the sum fits.
        let usageUser = ["Authorization": "Bearer \(Self.token(sub: "usage-user"))"]
        let answer = try await process.httpRequest(
            "POST", path: "/v1/chat/completions", headers: usageUser, body: #"{"model":"echo","messages":[{"role":"user","content":"x"}],"max_tokens":5}"#)
        #expect(answer.status == 200, "\(answer)")
        let usage = (try? JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any])?["usage"] as? [String: Any]
        #expect(usage?["prompt_tokens"] as? Int == Usage.maximumTokens && usage?["total_tokens"] as? Int == 2 * Usage.maximumTokens, "\(answer.body)")
        try await Self.expectAlive(process, after: "an upstream reporting 2^63-1 tokens")
    }

    /// JWTs with far and absurd times, several credentials, and hostile header text.
    static func tokens(_ process: SluiceProcess, group: MultiThreadedEventLoopGroup) async throws {
        let now = Int(Date().timeIntervalSince1970)
        // Valid until the year 2400: accepted (the expiry timer is bounded, it used to trap).
        let year2400 = Self.token(claims: #"{"sub":"patient","exp":13569465600,"iat":\#(now)}"#)
        let client = try await JSONWebSocketClient.connect(port: process.port, group: group, headers: [("Authorization", "Bearer \(year2400)")])
        _ = try await client.until(type: "session.ready")
        try await client.send(["type": "ping", "id": "p1"])
        #expect(try await client.until(type: "pong")["id"] as? String == "p1")
        try await Self.expectAlive(process, after: "a token valid until 2400")
        await client.close()
        // 10^30 and 2^63-1 seconds: refused before the upgrade.
        for exp in ["1e30", "9223372036854775807"] {
            let response = try await AuthProcessTests.handshake(process.port, headers: [("Authorization", "Bearer \(Self.token(claims: #"{"sub":"x","exp":\#(exp)}"#))")])
            #expect(response.status == 401 && response.body.contains("out of range"), "exp \(exp): \(response.status) \(response.body)")
            try await Self.expectAlive(process, after: "exp \(exp)")
        }
        // One credential per request.
        let token = Self.token(sub: "twice")
        for (query, headers) in [
            ("", [("Authorization", "Bearer \(token)"), ("Authorization", "Bearer \(token)")]),
            ("?token=\(token)", [("Authorization", "Bearer \(token)")]),
            ("?token=\(token)&token=\(token)", []),
            ("", [("Sec-WebSocket-Protocol", "bearer.\(token), bearer.\(token)")]),
        ] {
            let response = try await AuthProcessTests.handshake(process.port, query: query, headers: headers)
            #expect(response.status == 401 && response.body.contains("exactly one credential"), "\(query) \(headers.map(\.0)): \(response.status) \(response.body)")
        }
        let stream = try await process.httpRequest(
            "POST", path: "/v1/chat/stream?token=\(token)", headers: ["Authorization": "Bearer \(token)"], body: #"{"content":"x"}"#)
        #expect(stream.status == 401 && stream.body.contains("exactly one credential"), "\(stream)")
        // The header's kid and alg are not echoed.
        let marker = "kid-marker-<script>"
        let evil = Self.token(claims: #"{"sub":"x","exp":\#(now + 300)}"#, header: #"{"alg":"HS256","kid":"\#(marker)"}"#)
        let refused = try await AuthProcessTests.handshake(process.port, headers: [("Authorization", "Bearer \(evil)")])
        #expect(refused.status == 401 && !refused.body.contains("kid-marker"), "\(refused.body)")
        try await Self.expectAlive(process, after: "the credential checks")
    }
}
