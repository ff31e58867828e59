import Foundation
import NIOCore
import NIOPosix
import NIOConcurrencyHelpers
@testable import SluiceTestSupport
import Testing

/// Resource probes against the real binary: 10,000 WebSocket connections each sending a
/// maximum-size message at once, and 2,000 idle keep-alive HTTP connections. Resident memory is
/// read from /proc/PID/status (VmRSS, sampled every 20 ms, and VmHWM).
///
/// Probe sizes: `websocket.max_message_size` 1 MiB and `server.memory_budget` 256 MiB, so the
/// 10 GiB offered at once is 40 times the budget (meaningful), while what may be held stays
/// small beside the machine's memory (bounded). The fixed overhead is measured at idle with all
/// connections open, before the messages: the peak must stay under it plus the budget plus
/// `readBufferAllowance` (NIO's receive buffers of the connections still reading, at most 64 KiB
/// each for the ~256 that fit; they are not message bytes and the budget does not count them).
///
/// They hold the heavy-test gate for about a minute, so the main `swift test` run (where other
/// heavy tests' time limits include their wait at the gate) leaves them out: `.ci/run` runs them
/// in a step of their own with `RESOURCE_PROBES=1`.
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["RESOURCE_PROBES"] == "1", "set RESOURCE_PROBES=1 (.ci/run does)"))
struct ResourceProbeTests {
    static let messageSize = 1 << 20
    static let memoryBudget = 256 << 20
    static let readBufferAllowance = 32 << 20
    static let secret = "probe-secret-of-at-least-thirty-two-bytes!"

    static func mib(_ bytes: Int) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }

    /// Samples the child's VmRSS every 20 ms while `body` runs; SIGKILLs it (and fails) if it
    /// passes `killAbove`, so a build without the budget cannot take the machine down.
    static func sampling<T: Sendable>(
        _ process: SluiceProcess, killAbove: Int, _ body: @Sendable () async throws -> T
    ) async throws -> (T, peak: Int, killed: Bool) {
        let state = NIOLockedValueBox((peak: 0, stop: false, killed: false))
        let sampler = Task {
            while !state.withLockedValue({ $0.stop }) {
                let rss = ProcessResources.residentBytes(process.pid) ?? 0
                let kill = state.withLockedValue { state -> Bool in
                    state.peak = max(state.peak, rss)
                    if rss > killAbove && !state.killed {
                        state.killed = true
                        return true
                    }
                    return false
                }
                if kill { process.signal(SIGKILL) }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        defer { sampler.cancel() }
        let result = try await body()
        state.withLockedValue { $0.stop = true }
        _ = await sampler.value
        let final = state.withLockedValue { $0 }
        return (result, final.peak, final.killed)
    }

    /// Runs `work` for 0..<count, at most `width` at a time.
    static func concurrently(_ count: Int, width: Int, _ work: @escaping @Sendable (Int) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            while next < min(width, count) {
                let index = next
                group.addTask { try await work(index) }
                next += 1
            }
            while try await group.next() != nil {
                if next < count {
                    let index = next
                    group.addTask { try await work(index) }
                    next += 1
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func tenThousandMaximumSizeMessagesAtOnceStayWithinTheMemoryBudget() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let limit = ProcessResources.raiseDescriptorLimit()
        // Each side needs a descriptor per connection; on a machine below 10,500 we probe fewer.
        let count = min(10_000, max(1_000, limit - 500))
        let environment = [
            "SLUICE_JWT_SECRET": Self.secret,
            "SLUICE_SERVER_EVENT_LOOP_THREADS": "2",
            "SLUICE_SERVER_MAX_CONNECTIONS": "12000",
            "SLUICE_SERVER_MEMORY_BUDGET": String(Self.memoryBudget),
            "SLUICE_SERVER_HANDSHAKE_TIMEOUT": "60s",
            "SLUICE_WEBSOCKET_MAX_FRAME_SIZE": String(Self.messageSize),
            "SLUICE_WEBSOCKET_MAX_MESSAGE_SIZE": String(Self.messageSize),
            "SLUICE_WEBSOCKET_HEARTBEAT_INTERVAL": "120s",
            "SLUICE_WEBSOCKET_DEFLATE_ENABLED": "false",
        ]
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--database-url", "memory"], environment: environment, timeout: .seconds(60)) { processes in
            let process = processes[0]
            let pid = process.pid
            let childLimits = ProcessResources.descriptorLimits(pid)
            #expect(childLimits.map { $0.soft == $0.hard } == true, "sluice did not raise its soft open-file limit: \(String(describing: childLimits))")
            let idle = ProcessResources.residentBytes(pid) ?? 0
            let token = TestJWT.valid(sub: "probe", secret: Self.secret, expiresIn: 3600)

            // Connect every client (200 per source address, under the per-address cap).
            let setupStarted = ContinuousClock.now
            let clients = NIOLockedValueBox<[Int: RawClient]>([:])
            try await Self.concurrently(count, width: 64) { index in
                let client = try await RawClient.connect(
                    port: process.port, group: group, localAddress: "127.4.\(index / 200).\(index % 200 + 1)")
                let (response, _) = try await client.handshake(extraHeaders: [("Authorization", "Bearer \(token)")])
                guard response.status == 101 else { throw CaseFailure("connection \(index): upgrade answered \(response.status)") }
                _ = try await client.nextFrame(timeout: .seconds(30))  // session.ready
                clients.withLockedValue { $0[index] = client }
            }
            let all = clients.withLockedValue { $0 }.sorted { $0.key < $1.key }.map(\.value)
            let setup = ContinuousClock.now - setupStarted
            let baseline = ProcessResources.residentBytes(pid) ?? 0

            // All at once: one masked 1 MiB text frame each (plain text, so the application
            // answers too_large for those that get in); the same buffer for every write.
            let frame = ByteBuffer(bytes: TestFrames.client(0x1, Array(repeating: UInt8(ascii: "a"), count: Self.messageSize)))
            let healthDuring = NIOLockedValueBox<[Int]>([])
            let burstStarted = ContinuousClock.now
            let (_, peak, killed) = try await Self.sampling(process, killAbove: baseline + 2 * Self.memoryBudget + Self.readBufferAllowance) {
                let handedOver = NIOLockedValueBox(0)
                for client in all {
                    client.sendWithoutWaiting(frame).whenComplete { _ in handedOver.withLockedValue { $0 += 1 } }
                }
                // Every client is refused (closed) or has its answer; /health is asked meanwhile.
                try await eventually("every client refused or answered", timeout: .seconds(180), poll: .milliseconds(250)) {
                    let status = (try? await process.httpGet(path: "/health", timeout: .seconds(5)))?.status ?? 0
                    healthDuring.withLockedValue { $0.append(status) }
                    guard process.isRunning else { return true }
                    return all.allSatisfy { $0.isClosed || $0.totalBytesReceived > 0 && $0.unconsumedBytes.count > 0 }
                }
            }
            let burst = ContinuousClock.now - burstStarted
            guard !killed, process.isRunning else {
                Issue.record("""
                    \(killed ? "RSS passed the watchdog's \(Self.mib(baseline + 2 * Self.memoryBudget + Self.readBufferAllowance)) (peak \(Self.mib(peak))): killed" : "the process died") \
                    \(burst) into the burst of \(count) × \(Self.mib(Self.messageSize)); log: \(process.logTail(lines: 10))
                    """)
                for client in all { await client.close() }
                return
            }
            let highWater = ProcessResources.peakResidentBytes(pid) ?? peak
            var refused = 0, answered = 0, other: [String] = []
            for client in all {
                var frames = client.isClosed ? try await client.waitForClose(timeout: .seconds(1)) : []
                if !client.isClosed { frames = [try await client.nextFrame(timeout: .seconds(30))] }
                if let close = frames.first(where: { $0.opcode == 0x8 }), close.closeCode == 1013 {
                    refused += 1
                } else if frames.contains(where: { $0.opcode == 0x1 && $0.text.contains(#""code":"too_large""#) }) {
                    answered += 1
                } else if other.count < 5 {
                    other.append(frames.map { "\($0.opcode):\($0.closeCode.map(String.init) ?? $0.text.prefix(60).description)" }.joined(separator: ","))
                }
            }
            let health = try await process.httpGet(path: "/health")
            #expect(health.status == 200)
            let during = healthDuring.withLockedValue { $0 }
            #expect(during.allSatisfy { $0 == 200 }, "/health during the burst: \(during)")
            // Within the budget: what got in at once is what the budget holds.
            #expect(peak <= baseline + Self.memoryBudget + Self.readBufferAllowance,
                    "peak RSS \(Self.mib(peak)) > idle-with-connections \(Self.mib(baseline)) + budget \(Self.mib(Self.memoryBudget)) + \(Self.mib(Self.readBufferAllowance))")
            // Admitted over the burst as others finish, never more at once than the budget holds;
            // most are refused at their frame header.
            #expect(answered >= 1 && refused > count / 2, "\(answered) messages got in, \(refused) refused")
            #expect(refused + answered == count, "refused \(refused) + answered \(answered) of \(count); others: \(other)")
            for client in all { await client.close() }
            try await eventually("the connections are gone", timeout: .seconds(60)) {
                (ProcessResources.openDescriptors(pid) ?? 0) < 200
            }
            let after = ProcessResources.residentBytes(pid) ?? 0
            print("""
                probe 10k: \(count) connections × \(Self.mib(Self.messageSize)) at once, budget \(Self.mib(Self.memoryBudget)); \
                connect \(setup.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1)))), \
                burst \(burst.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1)))); \
                RSS idle \(Self.mib(idle)), with connections \(Self.mib(baseline)), peak \(Self.mib(peak)) (VmHWM \(Self.mib(highWater))), \
                after \(Self.mib(after)); \(answered) messages admitted (too_large answers), \(refused) refused with 1013; \
                /health answered \(during.count) times during the burst
                """)
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func twoThousandIdleKeepAliveConnectionsStayCheapAndAreClosedByTheIdleTimeout() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        ProcessResources.raiseDescriptorLimit()
        let count = 2_000
        // Longer than connecting them all takes, so all 2,000 are idle at once when measured.
        let idleTimeout: Duration = .seconds(10)
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--database-url", "memory"], environment: [
            "SLUICE_JWT_SECRET": Self.secret,
            "SLUICE_SERVER_IDLE_TIMEOUT": "10s",
            "SLUICE_SERVER_HANDSHAKE_TIMEOUT": "30s",
        ]) { processes in
            let process = processes[0]
            let pid = process.pid
            let idle = ProcessResources.residentBytes(pid) ?? 0
            let clients = NIOLockedValueBox<[RawClient]>([])
            let answeredAt = NIOLockedValueBox<[ContinuousClock.Instant]>([])
            let started = ContinuousClock.now
            try await Self.concurrently(count, width: 64) { index in
                let client = try await RawClient.connect(port: process.port, group: group, localAddress: "127.5.\(index / 200).\(index % 200 + 1)")
                try await client.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                let response = try await client.readHTTPResponse(timeout: .seconds(30))
                guard response.status == 200, response.value("Connection")?.lowercased() != "close" else {
                    throw CaseFailure("connection \(index): \(response.status) \(response.value("Connection") ?? "")")
                }
                answeredAt.withLockedValue { $0.append(ContinuousClock.now) }
                clients.withLockedValue { $0.append(client) }
            }
            let all = clients.withLockedValue { $0 }
            let open = all.filter { !$0.isClosed }.count
            let held = ProcessResources.residentBytes(pid) ?? 0
            let fresh = try await process.httpGet(path: "/health")
            #expect(fresh.status == 200)
            #expect(open == count, "\(count - open) closed before all were connected")
            let perConnection = open > 0 ? max(0, held - idle) / open : 0
            #expect(perConnection < 64 * 1024, "\(perConnection) bytes of RSS per idle connection")
            // Closed by the idle timeout (re-armed after the response), not left open.
            let allClosed = (try? await eventually("every idle connection is closed by the server", timeout: idleTimeout + .seconds(20), poll: .milliseconds(100)) {
                all.allSatisfy(\.isClosed)
            }) != nil
            let lastAnswer = answeredAt.withLockedValue { $0.max() } ?? started
            let closedBy = all.compactMap(\.closedAt).max().map { $0 - lastAnswer } ?? .zero
            let stillOpen = all.filter { !$0.isClosed }.count
            let after = ProcessResources.residentBytes(pid) ?? 0
            #expect(allClosed, "\(stillOpen) of \(count) idle connections were still open \(idleTimeout + .seconds(20)) after their answer")
            #expect(closedBy < idleTimeout + .seconds(5), "the last idle connection closed \(closedBy) after the last answer")
            #expect(try await process.httpGet(path: "/health").status == 200)
            print("""
                probe keep-alive: \(count) idle connections (\(open) open when measured); RSS idle \(Self.mib(idle)), \
                with them \(Self.mib(held)) (\(perConnection) bytes each), after \(Self.mib(after)); \
                \(allClosed ? "all closed \(closedBy.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1)))) after the last answer" : "\(stillOpen) never closed") \
                (idle timeout \(idleTimeout))
                """)
            for client in all { await client.close() }
        }
    }
}

/// `sluice serve` raises its soft open-file limit to the hard one at start (started here under
/// `prlimit --nofile=512:4096`), and warns that 10,000 connections cannot fit in 4,096.
@Suite struct DescriptorLimitProcessTests {
    @Test(.timeLimit(.minutes(15)))
    func sluiceRaisesItsOpenFileLimitAndWarnsWhenMaxConnectionsCannotFit() async throws {
        // util-linux's prlimit (an essential Debian package) starts sluice with a low soft limit.
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit"), "prlimit (util-linux) is needed")
        try await SluiceProcess.withProcesses(
            count: 1, arguments: ["--database-url", "memory"], environment: ["SLUICE_SERVER_MAX_CONNECTIONS": "10000"],
            launcher: ["/usr/bin/prlimit", "--nofile=512:4096", "--"]
        ) { processes in
            let process = processes[0]
            let limits = ProcessResources.descriptorLimits(process.pid)
            #expect(limits.map { $0.soft == 4096 && $0.hard == 4096 } == true, "\(String(describing: limits))")
            try await eventually("the warning is logged") {
                process.logTail(lines: 200).contains("server.max_connections 10000 needs about 11024 file descriptors")
            }
        }
    }
}
