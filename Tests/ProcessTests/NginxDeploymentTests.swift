import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// The deployment as `deploy/` describes it, on loopback: nginx (Debian's, with
/// `deploy/nginx/sluice.conf.template`) in front of three `sluice serve` instances sharing Redis
/// and PostgreSQL. `sluice-loadtest chat` runs through nginx while one instance is stopped with
/// SIGTERM: its clients are told to reconnect, nginx sends them to the others, they resume, and
/// every answer arrives whole, each seq exactly once.
@Suite struct NginxDeploymentTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// nginx with the template rendered for `gateways`, in a directory of its own; its PID.
    static func startNginx(port: Int, gateways: [Int], directory: URL) throws -> SpawnedChild {
        let template = try String(contentsOf: Self.repository.appendingPathComponent("deploy/nginx/sluice.conf.template"), encoding: .utf8)
        let servers = gateways.map { "server 127.0.0.1:\($0) max_fails=3 fail_timeout=10s;" }.joined(separator: " ")
        let site = template
            .replacingOccurrences(of: "${SLUICE_NGINX_LISTEN}", with: "127.0.0.1:\(port)")
            .replacingOccurrences(of: "${SLUICE_UPSTREAM_SERVERS}", with: servers)
        try site.write(to: directory.appendingPathComponent("sluice.conf"), atomically: true, encoding: .utf8)
        let prefix = directory.path
        let main = """
            pid \(prefix)/nginx.pid;
            error_log \(prefix)/error.log warn;
            worker_processes 1;
            events { worker_connections 4096; }
            http {
                client_body_temp_path \(prefix)/client_body;
                proxy_temp_path \(prefix)/proxy;
                fastcgi_temp_path \(prefix)/fastcgi;
                uwsgi_temp_path \(prefix)/uwsgi;
                scgi_temp_path \(prefix)/scgi;
                include \(prefix)/sluice.conf;
            }
            """
        try main.write(to: directory.appendingPathComponent("nginx.conf"), atomically: true, encoding: .utf8)
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "nginx"
        let pid = try ChildSpawn.spawn(
            nginx, arguments: [nginx, "-p", prefix, "-c", "\(prefix)/nginx.conf", "-g", "daemon off;"],
            output: "\(prefix)/nginx.out", newProcessGroup: true)
        return SpawnedChild(pid: pid)
    }

    @Test(.timeLimit(.minutes(15)))
    func aDrainBehindNginxLosesNothing() async throws {
        let environment = [
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "20ms",
            "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "50",
            "SLUICE_SERVER_DRAIN_GRACE_PERIOD": "0s",
            "SLUICE_REDIS_HANDOFF_DEADLINE": "20s",
        ]
        try await RedisServerProcess.withServer { redis in
            try await PostgresServerProcess.withServer { postgres in
                try await SluiceProcess.withProcesses(
                    count: 3, arguments: ["--redis-url", redis.url],
                    environment: environment.merging(["SLUICE_STORAGE_DATABASE_URL": postgres.url]) { $1 },
                    instanceEnvironment: { ["SLUICE_INSTANCE_ID": "gw-\($0)"] }
                ) { (gateways: [SluiceProcess]) async throws -> Void in
                    try await Self.drainBehindNginx(gateways)
                }
            }
        }
    }

    static func drainBehindNginx(_ gateways: [SluiceProcess]) async throws {
        for gateway in gateways {
            try await PersistenceProcessTests.eventually("\(gateway.port) ready") { try await gateway.httpGet(path: "/ready").status == 200 }
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-nginx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let port = try SluiceProcess.freePort()
        var nginx = try Self.startNginx(port: port, gateways: gateways.map(\.port), directory: directory)
        defer {
            // The whole process group: killing only the master would leave its workers running
            // (and listening). Before reaping, so the id cannot have been reused.
            _ = kill(-nginx.pid, SIGKILL)
            nginx.reap()
            try? FileManager.default.removeItem(at: directory)
        }
        // nginx answers /nginx-health once it listens.
        try await PersistenceProcessTests.eventually("nginx listening") {
            let probe = try? await RawClient.connect(port: port, group: MultiThreadedEventLoopGroup.singleton)
            await probe?.close()
            return probe != nil
        }

        // 30 users chat through nginx (least_conn: about 10 per gateway) for 8 s, with no think
        // time; gw-0 drains once several of its users are in the middle of an answer.
        let harness = URL(fileURLWithPath: try SluiceProcess.findExecutable()).deletingLastPathComponent().appendingPathComponent("sluice-loadtest").path
        async let run = SluiceProcess.runCommand(
            ["chat", "--url", "ws://127.0.0.1:\(port)/v1/ws", "--users", "30", "--duration", "8", "--max-tokens", "40", "--json", "--quiet"],
            executable: harness, timeout: .seconds(60))
        try await PersistenceProcessTests.eventually("gw-0 is generating answers", timeout: .seconds(8)) {
            let metrics = try await gateways[0].adminGet(path: "/metrics")
            return (MetricsProcessTests.parse(metrics.body)["sluice_active_generations"] ?? 0) >= 3
        }
        let drained = try await gateways[0].terminate(timeout: .seconds(30))
        #expect(drained == .exited(0), "\(gateways[0].logTail())")
        let result = try await run
        #expect(result.status == 0, "\(result.output)")
        let start = try #require(result.output.firstIndex(of: "{"))
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.output[start...].utf8)) as? [String: Any])

        // Every answer whole: contiguous seqs, done at the last one, ended by max_tokens.
        #expect(report["seq_violations"] as? Int == 0)
        #expect((report["errors"] as? [String: Int])?.isEmpty == true, "\(report["errors"] ?? "")")
        let answers = try #require(report["answers"] as? Int)
        #expect(answers > 30)
        #expect((report["finish_reasons"] as? [String: Int]) == ["length": answers])
        #expect(report["deltas"] as? Int == answers * 40)
        // gw-0's clients were cut off (Close 1012) and came back through nginx; those cut off in
        // the middle of an answer resumed it on another instance.
        let disconnects = try #require(report["unexpected_disconnects"] as? Int)
        let resumes = try #require(report["resumes"] as? Int)
        #expect(disconnects >= 1 && resumes >= 1 && resumes <= disconnects, "\(disconnects) disconnects, \(resumes) resumes")
        for gateway in gateways.dropFirst() {
            #expect(try await gateway.httpGet(path: "/ready").status == 200)
        }
    }
}
