import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// The real `sluice serve` binary as child processes: two instances side by side, then one drained
/// with SIGTERM and one crashed with SIGKILL.
@Suite struct SluiceProcessTests {
    @Test(.timeLimit(.minutes(15)))
    func twoInstancesAnswerThenOneDrainsOnSIGTERMAndOneDiesOnSIGKILL() async throws {
        let environment = [
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0",
            "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "200",
            "SLUICE_SERVER_DRAIN_GRACE_PERIOD": "200ms",
            "SLUICE_SERVER_DRAIN_DEADLINE": "10s",
        ]
        let group = MultiThreadedEventLoopGroup.singleton
        try await SluiceProcess.withProcesses(
            count: 2, environment: environment,
            instanceEnvironment: { ["SLUICE_INSTANCE_ID": $0 == 0 ? "a" : "b"] },
            timeout: .seconds(60)
        ) { processes in
            let (a, b) = (processes[0], processes[1])
            #expect(a.port != b.port && a.pid != b.pid)
            #expect(a.url == "ws://127.0.0.1:\(a.port)/v1/ws")
            for process in processes {
                let ready = try await process.httpGet(path: "/ready")
                #expect(ready.status == 200 && ready.body.trimmingCharacters(in: .whitespacesAndNewlines) == "ready")
            }

            let clientA = try await JSONWebSocketClient.connect(port: a.port, group: group, query: "?user=alice")
            let clientB = try await JSONWebSocketClient.connect(port: b.port, group: group, query: "?user=bob")
            let readyA = try await clientA.next()
            let readyB = try await clientB.next()
            #expect(readyA["type"] as? String == "session.ready" && readyB["type"] as? String == "session.ready")
            #expect(readyA["instance_id"] as? String == "a")
            #expect(readyB["instance_id"] as? String == "b")

            for client in [clientA, clientB] {
                try await client.send(["type": "chat.send", "content": "hello", "max_tokens": 5])
                var deltas: [[String: Any]] = []
                let done = try await client.until(type: "generation.done", collecting: &deltas, timeout: .seconds(10))
                #expect(done["finish_reason"] as? String == "length")
                #expect(deltas.filter { $0["type"] as? String == "generation.delta" }.count == 5)
            }

            // SIGTERM: the client gets Close 1012 (or at least the connection ends) and the process exits 0.
            async let drained = clientA.waitForClose(timeout: .seconds(15))
            let status = try await a.terminate(timeout: .seconds(15))
            let closedA = try await drained
            #expect(status == .exited(0), "log:\n\(a.logTail(lines: 20))")
            #expect(closedA.code == 1012 || !closedA.sawCloseFrame, "\(closedA)")
            #expect(!a.isRunning)

            // SIGKILL: no Close frame, the kernel just ends the connection.
            let killed = await b.kill()
            #expect(killed == .signaled(SIGKILL))
            let closedB = try await clientB.waitForClose(timeout: .seconds(10))
            #expect(!closedB.sawCloseFrame)
            #expect(!b.isRunning)
        }
    }

    /// `--port 0`: the port the kernel picked is logged as `sluice.port` on the `listening` line,
    /// in both log formats, and `SluiceProcess` reaches the public and the admin listener with it.
    @Test(.timeLimit(.minutes(15)), arguments: ["text", "json"])
    func thePortBoundForPortZeroIsLoggedAndUsed(format: String) async throws {
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--log-format", format]) { processes in
            let process = processes[0]
            #expect(process.port > 0 && process.adminPort > 0 && process.port != process.adminPort)
            let log = process.logTail(lines: 200)
            let listening = log.split(separator: "\n").filter { $0.contains("listening") && $0.contains("sluice.port") }
            // The public listener's line and the admin listener's own (which says sluice.listener).
            #expect(listening.count == 2, "\(log)")
            #expect(format == "json" ? log.contains(#""sluice.port":"\#(process.port)""#) : log.contains("sluice.port=\(process.port)"), "\(log)")
            #expect(SluiceProcess.port(inLog: log) == process.port)
            let health = try await process.httpGet(path: "/health")
            let adminHealth = try await process.adminGet(path: "/health")
            #expect(health.status == 200 && adminHealth.status == 200)
            let stats = try await process.adminGet(path: "/v1/stats")
            #expect(stats.status == 200, "the admin port is the admin listener's: \(stats)")
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func startThrowsWithTheLogTailWhenSluiceExitsAtStartup() async throws {
        let error = await #expect(throws: SluiceProcessError.self) {
            _ = try await SluiceProcess.start(arguments: ["--heartbeat-interval", "bogus"])
        }
        #expect(error?.description.contains("exit status 78") == true, "\(String(describing: error))")
        #expect(error?.description.contains("heartbeat_interval") == true, "\(String(describing: error))")
    }
}
