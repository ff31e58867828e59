import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// The admin listener of the real `sluice serve`: `/metrics`, `/v1/stats` and anyone's presence
/// there and only there; `/health` and `/ready` on both; drained with the public listener.
@Suite struct AdminListenerProcessTests {
    static let environment = [
        "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "50",
        "SLUICE_SERVER_DRAIN_GRACE_PERIOD": "5s", "SLUICE_SERVER_DRAIN_DEADLINE": "10s",
    ]

    @Test(.timeLimit(.minutes(15)))
    func adminSurfacesAreOnTheAdminPortOnly() async throws {
        try await SluiceProcess.withProcesses(count: 1, environment: Self.environment) { (processes: [SluiceProcess]) async throws -> Void in
            let gateway = processes[0]
            #expect(gateway.adminPort > 0 && gateway.adminPort != gateway.port)
            #expect(gateway.logTail(lines: 200).contains("admin listener"))
            let group = MultiThreadedEventLoopGroup.singleton
            let client = try await JSONWebSocketClient.connect(port: gateway.port, group: group, query: "?user=alice")
            _ = try await client.next()

            // The public listener: 404 for the operators' routes, probes still there.
            #expect(try await gateway.httpGet(path: "/metrics").status == 404)
            #expect(try await gateway.httpGet(path: "/v1/stats").status == 404)
            #expect(try await gateway.httpGet(path: "/health").status == 200)
            #expect(try await gateway.httpGet(path: "/ready").status == 200)
            // A user's own presence stays a user feature (here the development ?user=).
            let own = try await gateway.httpGet(path: "/v1/presence?user=alice")
            #expect(own.status == 200 && own.body.contains(#""user":"alice""#))

            // The admin listener: the same probes, and what operators read.
            let metrics = try await gateway.adminGet(path: "/metrics")
            #expect(metrics.status == 200 && MetricsProcessTests.parse(metrics.body)["sluice_ws_connections_open"] == 1)
            let stats = try await gateway.adminGet(path: "/v1/stats")
            #expect(stats.status == 200 && stats.body.contains(#""conversation_cache""#))
            let presence = try await gateway.adminGet(path: "/v1/presence?user=alice")
            #expect(presence.status == 200 && presence.body.contains(#""session_id""#), "\(presence.body)")
            #expect(try await gateway.adminGet(path: "/health").status == 200)
            #expect(try await gateway.adminGet(path: "/ready").status == 200)
            // No chat and no WebSocket there.
            #expect(try await gateway.httpRequest("POST", path: "/v1/chat/stream", body: #"{"content":"hi"}"#, port: gateway.adminPort).status == 404)
            let upgrade = try await RawClient.connect(port: gateway.adminPort, group: group)
            #expect(try await upgrade.handshake().response.status == 404)
            await upgrade.close()

            // Drained with the public listener: /ready 503 on both while it drains, /metrics
            // still answering, and both gone when the process exits.
            gateway.signal(SIGTERM)
            try await PersistenceProcessTests.eventually("admin /ready follows the drain", timeout: .seconds(5)) {
                try await gateway.adminGet(path: "/ready").status == 503
            }
            #expect(try await gateway.adminGet(path: "/metrics").status == 200)
            #expect(try await gateway.waitForExit(timeout: .seconds(20)) == .exited(0))
            await #expect(throws: (any Error).self) { _ = try await gateway.adminGet(path: "/health") }
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func withTheAdminListenerOffNothingServesTheAdminRoutes() async throws {
        var environment = Self.environment
        environment["SLUICE_ADMIN_ENABLED"] = "false"
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let gateway = processes[0]
            #expect(gateway.adminPort == 0)
            #expect(try await gateway.httpGet(path: "/metrics").status == 404)
            #expect(gateway.logTail(lines: 200).contains("admin listener off"))
        }
    }
}

/// What a web page can do through a browser on the developer's machine: nothing, unless it is
/// a loopback page or configured; clients without an Origin are not affected.
@Suite struct OriginProcessTests {
    static func post(_ gateway: SluiceProcess, origin: String?, token: String? = nil) async throws -> Int {
        var headers = ["Content-Type": "text/plain"]
        if let origin { headers["Origin"] = origin }
        if let token { headers["Authorization"] = "Bearer \(token)" }
        return try await gateway.httpRequest("POST", path: "/v1/chat/stream", headers: headers, body: #"{"content":"hi","max_tokens":2}"#).status
    }

    static func upgrade(_ gateway: SluiceProcess, origin: String) async throws -> Int {
        let client = try await RawClient.connect(port: gateway.port, group: MultiThreadedEventLoopGroup.singleton)
        defer { Task { await client.close() } }
        return try await client.handshake(extraHeaders: [("Origin", origin)]).response.status
    }

    @Test(.timeLimit(.minutes(15)))
    func withoutAuthenticationOnlyLoopbackPagesGetThrough() async throws {
        let environment = ["SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "0"]
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let gateway = processes[0]
            // A "simple" cross-site POST (text/plain, no preflight) and a WebSocket from evil.example.
            #expect(try await Self.post(gateway, origin: "https://evil.example") == 403)
            #expect(try await gateway.httpRequest("POST", path: "/v1/jobs", headers: ["Origin": "https://evil.example"], body: "{}").status == 403)
            #expect(try await Self.upgrade(gateway, origin: "https://evil.example") == 403)
            // The developer's own page on localhost, and curl (no Origin).
            #expect(try await Self.post(gateway, origin: "http://localhost:5173") == 200)
            #expect(try await Self.upgrade(gateway, origin: "http://127.0.0.1:8000") == 101)
            #expect(try await Self.post(gateway, origin: nil) == 200)
        }
        // Configured: exactly the list.
        try await SluiceProcess.withProcesses(
            count: 1, arguments: ["--allowed-origin", "https://app.example"], environment: environment
        ) { (processes: [SluiceProcess]) async throws -> Void in
            #expect(try await Self.post(processes[0], origin: "https://app.example") == 200)
            #expect(try await Self.post(processes[0], origin: "https://evil.example") == 403)
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func withAuthenticationAnyPageMayAskButNeedsAToken() async throws {
        let environment = [
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms", "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "0",
            "SLUICE_JWT_SECRET": AuthProcessTests.secret,
        ]
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let token = AuthProcessTests.token(sub: "alice", expiresIn: 300)
            #expect(try await Self.post(processes[0], origin: "https://app.example", token: token) == 200)
            #expect(try await Self.post(processes[0], origin: "https://app.example") == 401)
            // A token in the URL (access logs, history) is not taken unless auth.query_parameter says so.
            #expect(try await processes[0].httpGet(path: "/v1/conversations?token=\(token)").status == 401)
            #expect(try await processes[0].httpRequest("GET", path: "/v1/conversations", headers: ["Authorization": "Bearer \(token)"]).status == 200)
        }
    }
}
