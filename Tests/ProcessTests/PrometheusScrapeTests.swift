import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// A real Prometheus (Debian's package) scrapes a real `sluice serve`'s `/metrics` on its admin port, with the
/// alert rules of `deploy/prometheus/alerts.yml` loaded: the target is up and the gateway's
/// series are queryable.
@Suite struct PrometheusScrapeTests {
    static func curl(_ url: String) async throws -> [String: Any] {
        let result = try await SluiceProcess.runCommand(["-sS", "--max-time", "5", url], executable: "/usr/bin/curl", timeout: .seconds(10))
        guard result.status == 0, let object = try? JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any] else {
            return [:]
        }
        return object
    }

    /// The first value of an instant query's result, if any.
    static func query(_ port: Int, _ expression: String) async throws -> Double? {
        let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? expression
        let answer = try await Self.curl("http://127.0.0.1:\(port)/api/v1/query?query=\(encoded)")
        let result = ((answer["data"] as? [String: Any])?["result"] as? [[String: Any]])?.first
        return ((result?["value"] as? [Any])?.last as? String).flatMap(Double.init)
    }

    @Test(.timeLimit(.minutes(15)))
    func prometheusScrapesTheGateway() async throws {
        let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let binary = try #require(prometheus, "Debian's prometheus package is needed (.ci/run installs it)")
        try await SluiceProcess.withProcesses(count: 1) { (gateways: [SluiceProcess]) async throws -> Void in
            let gateway = gateways[0]
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-prometheus-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let rules = NginxDeploymentTests.repository.appendingPathComponent("deploy/prometheus/alerts.yml").path
            let configuration = """
                global:
                  scrape_interval: 1s
                  evaluation_interval: 1s
                rule_files: ["\(rules)"]
                scrape_configs:
                  - job_name: sluice
                    static_configs:
                      - targets: ["127.0.0.1:\(gateway.adminPort)"]
                """
            try configuration.write(to: directory.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
            let port = try SluiceProcess.freePort()
            var child = SpawnedChild(pid: try ChildSpawn.spawn(
                binary,
                arguments: [
                    binary, "--config.file=\(directory.path)/prometheus.yml", "--storage.tsdb.path=\(directory.path)/data",
                    "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
                ],
                output: directory.appendingPathComponent("prometheus.log").path, newProcessGroup: true))
            defer {
                // Its process group, before reaping (the id cannot have been reused).
                _ = kill(-child.pid, SIGKILL)
                child.reap()
            }
            // Some traffic, so the gateway's counters move.
            let client = try await JSONWebSocketClient.connect(port: gateway.port, group: MultiThreadedEventLoopGroup.singleton)
            _ = try await client.next()
            try await client.send(["type": "chat.send", "content": "scrape me", "max_tokens": 3])
            _ = try await client.until(type: "generation.done", timeout: .seconds(10))

            try await PersistenceProcessTests.eventually("prometheus scraped the gateway", timeout: .seconds(60)) {
                try await Self.query(port, #"up{job="sluice"}"#) == 1
            }
            try await PersistenceProcessTests.eventually("the gateway's series in prometheus", timeout: .seconds(30)) {
                try await Self.query(port, #"sum(llm_requests_total{job="sluice"})"#) == 1
            }
            #expect(try await Self.query(port, #"sluice_ws_connections_open{job="sluice"}"#) == 1)
            // The deployment's alert rules loaded and evaluate against these series.
            let rulesAnswer = try await Self.curl("http://127.0.0.1:\(port)/api/v1/rules")
            let groups = ((rulesAnswer["data"] as? [String: Any])?["groups"] as? [[String: Any]]) ?? []
            #expect(!groups.isEmpty && groups.allSatisfy { ($0["rules"] as? [Any])?.isEmpty == false })
        }
    }
}
