import Foundation
import NIOCore
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// The catalogue instance's settings: production-like (authentication, rate limits, quotas,
/// an upstream pool, Redis, jobs, tools) with small limits so the hostile cases reach them fast.
enum CatalogueConfiguration {
    static let maxFrameSize = 256 * 1024
    static let maxMessageSize = 256 * 1024
    static let memoryBudget = 64 << 20
    static let maxConnectionsPerAddress = 24
    static let requestsPerMinutePerUser = 20
    static let tokensPerMinutePerUser = 4000
    static let handshakeTimeout: Duration = .seconds(2)
    static let idleTimeout: Duration = .seconds(2)
    static let heartbeatInterval: Duration = .seconds(2)
    static let heartbeatTimeout: Duration = .seconds(2)

    static func environment(redis: String, database: String, steady: Int, hostile: Int, page: Int) -> [String: String] {
        [
            "SLUICE_SERVER_EVENT_LOOP_THREADS": "2",
            "SLUICE_JWT_SECRET": CatalogueGateway.secret,
            "SLUICE_AUTH_QUERY_PARAMETER": "token",
            "SLUICE_REDIS_URL": redis,
            "SLUICE_STORAGE_DATABASE_URL": database,
            "SLUICE_UPSTREAMS": """
                [{name: chat-a, pool: chat, kind: openai, base_url: "http://127.0.0.1:\(steady)", model: m-chat}, \
                {name: chat-b, pool: chat, kind: openai, base_url: "http://127.0.0.1:\(hostile)", model: m-chat}, \
                {name: wild, kind: openai, base_url: "http://127.0.0.1:\(hostile)", model: m-wild}]
                """,
            "SLUICE_UPSTREAM_CONNECT_TIMEOUT": "2s",
            "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": "2s",
            "SLUICE_UPSTREAM_BETWEEN_TOKENS_TIMEOUT": "2s",
            "SLUICE_UPSTREAM_CIRCUIT_FAILURE_THRESHOLD": "1000",
            "SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_USER": String(Self.requestsPerMinutePerUser),
            "SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_USER": String(Self.tokensPerMinutePerUser),
            "SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_IP": "60",
            "SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_IP": "20000",
            "SLUICE_LIMITS_CONNECTIONS_PER_SECOND_PER_IP": "10",
            "SLUICE_LIMITS_MESSAGES_PER_SECOND_PER_CONNECTION": "20",
            "SLUICE_WEBSOCKET_MAX_FRAME_SIZE": String(Self.maxFrameSize),
            "SLUICE_WEBSOCKET_MAX_MESSAGE_SIZE": String(Self.maxMessageSize),
            "SLUICE_WEBSOCKET_MAX_OUTBOUND_BYTES": "256KiB",
            "SLUICE_WEBSOCKET_HEARTBEAT_INTERVAL": "2s",
            "SLUICE_WEBSOCKET_HEARTBEAT_TIMEOUT": "2s",
            "SLUICE_WEBSOCKET_CLOSE_TIMEOUT": "1s",
            "SLUICE_SERVER_HANDSHAKE_TIMEOUT": "2s",
            "SLUICE_SERVER_IDLE_TIMEOUT": "2s",
            "SLUICE_SERVER_MEMORY_BUDGET": String(Self.memoryBudget),
            "SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS": String(Self.maxConnectionsPerAddress),
            "SLUICE_SERVER_ALLOWED_ORIGINS": CatalogueGateway.origin,
            "SLUICE_JOBS_WORKERS_IN_SERVE": "1",
            "SLUICE_JOBS_MAX_INPUT_BYTES": "64KiB",
            "SLUICE_TOOLS_ENABLED": "calculator,http_get",
            "SLUICE_TOOLS_HTTP_GET_ALLOWED_HOSTS": "127.0.0.1:\(page)",
            "SLUICE_TOOLS_TIMEOUT": "2s",
        ]
    }
}

extension CatalogueGateway {
    /// Starts Redis, the fake upstreams, sets the quota user's quota, then one `sluice serve`.
    static func with<T>(_ body: (CatalogueGateway) async throws -> T) async throws -> T {
        let steady = try await FakeUpstream.start(script: HostileUpstreams.steady)
        let hostile = try await FakeUpstream.start(script: HostileUpstreams.hostile)
        let page = try await FakeUpstream.start { _ in
            [.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\npage"), .close]
        }
        defer {
            Task {
                await steady.stop()
                await hostile.stop()
                await page.stop()
            }
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-catalogue-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = "sqlite://" + directory.appendingPathComponent("sluice.db").path
        let quota = try await SluiceProcess.runCommand(["quota", "set", "quota-user", "--limit", "1", "--database-url", database])
        guard quota.status == 0 else { throw CaseFailure("sluice quota set failed: \(quota.output)") }
        return try await RedisServerProcess.withServer { redis in
            let environment = CatalogueConfiguration.environment(
                redis: redis.url, database: database, steady: steady.port, hostile: hostile.port, page: page.port)
            return try await SluiceProcess.withProcesses(count: 1, environment: environment, timeout: .seconds(60)) { processes in
                let gateway = CatalogueGateway(
                    process: processes[0], steady: steady, hostile: hostile, page: page,
                    adminPort: processes[0].adminPort > 0 ? processes[0].adminPort : nil)
                try await eventually("/ready", timeout: .seconds(20)) { try await gateway.process.httpGet(path: "/ready").status == 200 }
                return try await body(gateway)
            }
        }
    }
}

/// The adversarial catalogue: hundreds of distinct hostile inputs at every surface of one
/// production-like `sluice serve`; each gets its documented answer, and after each the process
/// is alive (by PID) and `/health` answers 200 within 3 s.
@Suite(.serialized) struct AdversarialCatalogueTests {
    static var catalogue: [HostileCase] {
        WebSocketCases.frames + WebSocketCases.upgrades + ProtocolCases.cases + AuthCases.cases + HTTPCases.headers + HTTPCases.sse
            + HTTPCases.completions + HTTPCases.jobs + HTTPCases.history + HTTPCases.presence + AbuseCases.bursts + AbuseCases.slow
            + AbuseCases.upstreamCases
    }

    /// `CATALOGUE_FILTER=frames.,jwt.` runs only cases whose name contains one of the parts
    /// (for working on a few; CI runs them all).
    static var selected: [HostileCase] {
        let environment = ProcessInfo.processInfo.environment
        var cases = Self.catalogue
        if let filter = environment["CATALOGUE_FILTER"], !filter.isEmpty {
            let parts = filter.split(separator: ",").map(String.init)
            cases = cases.filter { hostile in parts.contains { hostile.name.contains($0) } }
        }
        if let skip = environment["CATALOGUE_SKIP"], !skip.isEmpty {
            let parts = skip.split(separator: ",").map(String.init)
            cases = cases.filter { hostile in !parts.contains { hostile.name.contains($0) } }
        }
        return cases
    }

    @Test func theCatalogueHasAtLeast150DistinctCasesCoveringEverySurface() {
        let cases = Self.catalogue
        let names = cases.map(\.name)
        #expect(Set(names).count == names.count, "duplicate names: \(Dictionary(grouping: names, by: { $0 }).filter { $0.value.count > 1 }.keys.sorted())")
        #expect(cases.count >= 150)
        for surface in Surface.allCases {
            #expect(cases.contains { $0.surface == surface }, "no case for \(surface.rawValue)")
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func everyHostileInputGetsItsAnswerAndTheProcessStaysUp() async throws {
        ProcessResources.raiseDescriptorLimit()
        let cases = Self.selected
        try await CatalogueGateway.with { gateway in
            let pid = gateway.process.pid
            let residentBefore = ProcessResources.residentBytes(pid) ?? 0
            let started = ContinuousClock.now
            // A watchdog: a build that buffers without bound is stopped before it takes the machine.
            let ceiling = residentBefore + CatalogueConfiguration.memoryBudget + (512 << 20)
            let watchdog = Task {
                while !Task.isCancelled {
                    if (ProcessResources.residentBytes(pid) ?? 0) > ceiling {
                        Issue.record("RSS passed \(ceiling >> 20) MiB: the process was killed by the catalogue's watchdog")
                        gateway.process.signal(SIGKILL)
                        return
                    }
                    try? await Task.sleep(for: .milliseconds(50))
                }
            }
            let results = await CatalogueRunner(gateway: gateway).run(cases)
            watchdog.cancel()
            let wall = ContinuousClock.now - started
            let residentAfter = ProcessResources.residentBytes(pid) ?? 0
            let peak = ProcessResources.peakResidentBytes(pid) ?? 0

            for result in results where !result.passed {
                var problems: [String] = []
                if let mismatch = result.mismatch { problems.append(mismatch) }
                if !result.alive { problems.append("the process is not running") }
                if result.healthStatus != 200 { problems.append("/health answered \(result.healthStatus.map(String.init) ?? "nothing") within 3 s") }
                Issue.record("""
                    \(result.hostile.name) [\(result.hostile.surface.rawValue)] \(result.hostile.action)
                      expected: \(result.hostile.expected)
                      observed: \(result.observed.map { "\($0)" } ?? "-")
                      problem: \(problems.joined(separator: "; "))
                    """)
            }
            #expect(gateway.process.isRunning, "\(gateway.process.logTail(lines: 40))")
            // Everything the cases held is the budget's, plus what the process needs to run.
            #expect(peak < residentBefore + CatalogueConfiguration.memoryBudget + (64 << 20),
                    "peak RSS \(peak >> 20) MiB (at start \(residentBefore >> 20) MiB, budget \(CatalogueConfiguration.memoryBudget >> 20) MiB)")

            let bySurface = Surface.allCases.map { surface in
                "\(surface.rawValue) \(results.filter { $0.hostile.surface == surface }.count)"
            }
            let failed = results.filter { !$0.passed }.count
            let slowest = results.max { $0.duration < $1.duration }
            let slowestHealth = results.map(\.healthLatency).max() ?? .zero
            print("""
                catalogue: \(results.count) cases (\(bySurface.joined(separator: ", "))), \(failed) failed, \
                wall \(wall.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1)))); \
                slowest case \(slowest.map { "\($0.hostile.name) \($0.duration.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1))))" } ?? "-"); \
                slowest /health after a case \(slowestHealth.formatted(.units(allowed: [.milliseconds]))); \
                RSS start \(residentBefore >> 20) MiB, end \(residentAfter >> 20) MiB, peak \(peak >> 20) MiB
                """)
            if ProcessInfo.processInfo.environment["CATALOGUE_VERBOSE"] != nil {
                for result in results.sorted(by: { $0.hostile.name < $1.hostile.name }) {
                    print("  \(result.passed ? "ok  " : "FAIL") \(result.hostile.name): \(result.observed.map { "\($0)" } ?? result.mismatch ?? "-")")
                }
                print(gateway.process.logTail(lines: Int(ProcessInfo.processInfo.environment["CATALOGUE_VERBOSE"] ?? "") ?? 0))
            }
        }
    }
}
