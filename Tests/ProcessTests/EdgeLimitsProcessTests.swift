import Foundation
import NIOCore
import Synchronization
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// Resource bounds of the real `sluice serve` binary: connections per client address, and the
/// process-wide memory budget under many large messages at once.
@Suite struct EdgeLimitsProcessTests {
    /// The process's resident set, from /proc (bytes).
    static func residentBytes(_ pid: pid_t) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kib = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            return kib * 1024
        }
        return 0
    }

    /// A sample's value in Prometheus text (0 when absent).
    static func metric(_ name: String, in text: String) -> Int {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Int(Double(line.dropFirst(name.count + 1)) ?? 0)
        }
        return 0
    }

    static func closeCode(_ frames: [TestFrames.ServerFrame]) -> UInt16? {
        frames.first { $0.opcode == 0x8 }?.closeCode
    }

    @Test(.timeLimit(.minutes(15)))
    func connectionsPerPeerAddressAreCappedAndTheNextIsRefusedCheaply() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--echo"], environment: [
            "SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "4",
        ]) { processes in
            let process = processes[0]
            // Three idle TCP connections and a WebSocket hold 127.0.0.1's four slots.
            var idle: [RawClient] = []
            for _ in 0..<3 { idle.append(try await RawClient.connect(port: process.port, group: group)) }
            let webSocket = try await RawClient.connect(port: process.port, group: group)
            let (upgraded, _) = try await webSocket.handshake()
            #expect(upgraded.status == 101)
            // The fifth is answered 503 before it says anything, then closed.
            let fifth = try await RawClient.connect(port: process.port, group: group)
            let refused = try await fifth.readHTTPResponse()
            #expect(refused.status == 503)
            #expect(refused.value("Retry-After") == "1")
            _ = try await fifth.waitForClose()
            // Any connection from this address, while the slots are held; the others are not disturbed.
            let another = try await RawClient.connect(port: process.port, group: group)
            #expect(try await another.readHTTPResponse().status == 503)
            await another.close()
            try await webSocket.send(TestFrames.text("still here"))
            #expect(String(decoding: try await webSocket.nextFrame().payload, as: UTF8.self) == "still here")
            // A slot frees: served again.
            await idle[0].close()
            try await eventually("a slot is free again") { (try? await process.httpGet(path: "/health").status) == 200 }
            for client in idle.dropFirst() { await client.close() }
            await webSocket.close()
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func behindAProxyTheCapCountsForwardedClientsNotTheProxy() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--echo"], environment: [
            "SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "2",
            "SLUICE_LIMITS_FORWARDED_FOR_HOPS": "1",
        ]) { processes in
            let process = processes[0]
            func upgrade(for client: String) async throws -> (RawClient, Int) {
                let raw = try await RawClient.connect(port: process.port, group: group)
                let (response, _) = try await raw.handshake(extraHeaders: [("X-Forwarded-For", client)])
                return (raw, response.status)
            }
            // Every connection comes from the "proxy" (127.0.0.1): more than two are fine.
            var open: [RawClient] = []
            for _ in 0..<2 {
                let (raw, status) = try await upgrade(for: "203.0.113.9")
                #expect(status == 101)
                open.append(raw)
            }
            let (third, status) = try await upgrade(for: "203.0.113.9")
            #expect(status == 503)
            await third.close()
            let (other, otherStatus) = try await upgrade(for: "198.51.100.1")
            #expect(otherStatus == 101)
            open.append(other)
            #expect(try await process.httpGet(path: "/health").status == 200)
            // One of the first client's WebSockets closes: it may open another.
            await open[0].close()
            try await eventually("the client's slot is free again") {
                let (raw, status) = try await upgrade(for: "203.0.113.9")
                await raw.close()
                return status == 101
            }
            for client in open.dropFirst() { await client.close() }
        }
    }

    /// Forty clients each send a 4 MiB message at once to an instance with a 9 MiB budget: two
    /// fit, the other thirty-eight get Close 1013 at their frame header, the process stays up
    /// and answers, and its memory grows by about the budget, not by 160 MiB.
    @Test(.timeLimit(.minutes(15)))
    func manyLargeMessagesAtOnceStayWithinTheMemoryBudget() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let messageSize = 4 << 20
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--echo"], environment: [
            "SLUICE_SERVER_MEMORY_BUDGET": "9MiB",
            "SLUICE_WEBSOCKET_MAX_FRAME_SIZE": "4MiB",
            "SLUICE_WEBSOCKET_MAX_MESSAGE_SIZE": "4MiB",
        ], timeout: .seconds(60)) { processes in
            let process = processes[0]
            var clients: [RawClient] = []
            for _ in 0..<40 {
                let client = try await RawClient.connect(port: process.port, group: group)
                let (response, _) = try await client.handshake()
                #expect(response.status == 101)
                clients.append(client)
            }
            let before = Self.residentBytes(process.pid)
            // One masked frame, all of it but its last byte sent by every client at once.
            let frame = TestFrames.client(0x2, Array(repeating: 0x5A, count: messageSize))
            let allButLast = ByteBuffer(bytes: frame.dropLast())
            let handedOver = Mutex<Set<Int>>([])
            let sends = clients.map { $0.sendWithoutWaiting(allButLast) }
            for (index, send) in sends.enumerated() {
                send.whenComplete { _ in handedOver.withLock { _ = $0.insert(index) } }
            }
            // Each client is either refused or has handed all its bytes over, and the server has
            // read what the clients still connected sent (its wire counter says so).
            try await eventually("every client refused or read", timeout: .seconds(60)) {
                let done = handedOver.withLock { $0 }
                guard clients.indices.allSatisfy({ clients[$0].isClosed || done.contains($0) }) else { return false }
                let open = clients.filter { !$0.isClosed }.count
                let read = Self.metric(#"sluice_ws_bytes_total{direction="in",stage="wire"}"#, in: try await process.adminGet(path: "/metrics").body)
                return read >= open * allButLast.readableBytes
            }
            let grown = Self.residentBytes(process.pid) - before
            #expect(grown < 48 << 20, "resident set grew by \(grown >> 20) MiB (40 messages would be 160 MiB)")
            var refused = 0
            for client in clients where client.isClosed {
                if Self.closeCode(try await client.waitForClose()) == 1013 { refused += 1 }
            }
            #expect(refused == 38)
            let holders = clients.filter { !$0.isClosed }
            #expect(holders.count == 2)
            #expect(try await process.httpGet(path: "/health").status == 200)
            let metrics = try await process.adminGet(path: "/metrics").body
            #expect(metrics.contains("sluice_memory_budget_limit_bytes 9437184"))
            #expect(metrics.contains(#"sluice_memory_budget_refusals_total{use="ws_inbound"} 38"#))
            // They finish their messages and get them back whole.
            for client in holders {
                try await client.send([frame.last!])
                let echo = try await client.nextFrame(timeout: .seconds(30))
                #expect(echo.opcode == 0x2 && echo.payload.count == messageSize)
            }
            #expect(process.isRunning)
            for client in clients { await client.close() }
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func anOversizedBodyIsRefusedAtItsHeadAndAnIdleConnectionIsClosedAfterItsResponse() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await SluiceProcess.withProcesses(count: 1, environment: ["SLUICE_SERVER_IDLE_TIMEOUT": "1s"]) { processes in
            let process = processes[0]
            let client = try await RawClient.connect(port: process.port, group: group)
            // 1.4 MB announced for a route that takes about 208 KiB: 413 before a byte of it is sent.
            try await client.send("POST /v1/chat/stream HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1400000\r\n\r\n")
            let response = try await client.readHTTPResponse()
            #expect(response.status == 413)
            #expect(response.value("Connection") == "close")
            _ = try await client.waitForClose()
            // Expect: 100-continue within the limit gets its 100 Continue, then the answer.
            let polite = try await RawClient.connect(port: process.port, group: group)
            let body = #"{"type":"chat.send","content":"hi","max_tokens":2}"#
            try await polite.send("POST /v1/chat/stream HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: \(body.utf8.count)\r\n\r\n")
            #expect(try await polite.readHTTPResponse().status == 100)
            try await polite.send(body)
            let answered = try await polite.readHTTPResponse()
            #expect(answered.status == 200)
            #expect(answered.value("Connection") == "keep-alive")
            // Kept alive, then idle after a streamed response: closed by the idle timeout.
            _ = try await polite.waitForClose(timeout: .seconds(10))
            #expect(try await process.httpGet(path: "/health").status == 200)
        }
    }
}
