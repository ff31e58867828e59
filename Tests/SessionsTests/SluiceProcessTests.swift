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

    @Test(.timeLimit(.minutes(15)))
    func startThrowsWithTheLogTailWhenSluiceExitsAtStartup() async throws {
        let error = await #expect(throws: SluiceProcessError.self) {
            _ = try await SluiceProcess.start(arguments: ["--heartbeat-interval", "bogus"])
        }
        #expect(error?.description.contains("exit status 78") == true, "\(String(describing: error))")
        #expect(error?.description.contains("heartbeat_interval") == true, "\(String(describing: error))")
    }
}
