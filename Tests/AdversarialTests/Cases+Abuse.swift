import Foundation
import NIOCore
import NIOConcurrencyHelpers
@testable import SluiceTestSupport

/// Bursts past the rates, slowloris heads and bodies, half-open readers, and an upstream that
/// is the adversary.
enum AbuseCases {
    // MARK: Bursts

    static var bursts: [HostileCase] {
        [
            HostileCase(name: "bursts.message-flood", surface: .bursts, action: "400 pings in one write (20/s allowed, bursts of 40)",
                        expected: .verified("rate_limited errors for the excess, then Close 1008 once 10 s worth were dropped"), exclusive: true) { context in
                let client = try await context.session()
                defer { Task { await client.close() } }
                var bytes: [UInt8] = []
                for index in 0..<400 { bytes += TestFrames.text(#"{"type":"ping","id":"\#(index)"}"#) }
                try await client.send(bytes)
                var pongs = 0, limited = 0
                while true {
                    let frame = try await client.nextFrame(timeout: .seconds(15))
                    if frame.opcode == 0x8 {
                        guard frame.closeCode == 1008 else { return .failed("closed with \(frame.closeCode.map(String.init) ?? "-")") }
                        break
                    }
                    if frame.text.contains(#""type":"pong""#) { pongs += 1 }
                    if frame.text.contains(#""code":"rate_limited""#) { limited += 1 }
                }
                guard pongs >= 40, pongs < 400, limited >= 1 else { return .failed("\(pongs) pongs, \(limited) rate_limited") }
                return .verified("\(pongs) pongs, \(limited) rate_limited errors, Close 1008")
            },
            HostileCase(name: "bursts.over-message-rate", surface: .bursts, action: "60 pings in one write (a burst of 40 allowed)",
                        expected: .verified("about 40 pongs, rate_limited errors with retry_after_ms for the rest, still open"), exclusive: true) { context in
                let client = try await context.session()
                defer { Task { await client.close() } }
                var bytes: [UInt8] = []
                for index in 0..<60 { bytes += TestFrames.text(#"{"type":"ping","id":"\#(index)"}"#) }
                try await client.send(bytes)
                // Answers until a quiet half second: about 40 pongs and one rate_limited (the
                // dropped messages are announced once a second, not each).
                var pongs = 0, limited = 0
                while let message = try? await CaseContext.nextMessage(client, timeout: .milliseconds(500)) {
                    if message["type"] as? String == "pong" { pongs += 1 }
                    if message["code"] as? String == "rate_limited" {
                        limited += 1
                        if (message["retry_after_ms"] as? Int ?? 0) <= 0 { return .failed("rate_limited without retry_after_ms: \(message)") }
                    }
                }
                guard (39...59).contains(pongs), limited >= 1, !client.isClosed else { return .failed("\(pongs) pongs, \(limited) rate_limited") }
                // A second later the bucket has room again.
                try await eventually("the session answers again", timeout: .seconds(5), poll: .milliseconds(250)) {
                    try await client.send(TestFrames.text(#"{"type":"ping","id":"later"}"#))
                    let message = try await CaseContext.nextMessage(client)
                    return message["type"] as? String == "pong"
                }
                return .verified("\(pongs) pongs, \(limited) rate_limited, then served again")
            },
            HostileCase(name: "bursts.connections-per-second", surface: .bursts, action: "20 upgrades at once from one address (10 per second allowed; under the per-address cap)",
                        expected: .verified("some 101, the rest 429 with Retry-After"), exclusive: true) { context in
                let results = NIOLockedValueBox<[Observed]>([])
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<20 {
                        group.addTask {
                            let observed = (try? await context.upgrade(headers: [])) ?? Observed()
                            results.withLockedValue { $0.append(observed) }
                        }
                    }
                }
                let all = results.withLockedValue { $0 }
                let statuses = all.map { $0.status ?? 0 }
                let accepted = statuses.filter { $0 == 101 }.count
                let refused = all.filter { $0.status == 429 && $0.errorCode == "rate_limited" && $0.retryAfter != nil }.count
                guard accepted >= 1, refused >= 1, accepted + refused == 20 else { return .failed("statuses \(statuses.sorted())") }
                return .verified("\(accepted) × 101, \(refused) × 429 rate_limited with Retry-After")
            },
            HostileCase(name: "bursts.requests-per-minute", surface: .bursts, action: "21 chats at once from one user over 6 connections (20 per minute allowed)",
                        expected: .verified("20 run, the rest rate_limited with retry_after_ms"), exclusive: true) { context in
                var sessions: [RawClient] = []
                defer { for session in sessions { Task { await session.close() } } }
                for _ in 0..<6 { sessions.append(try await context.session()) }
                // All sent before any is answered: the per-minute bucket cannot refill meanwhile.
                let total = CatalogueConfiguration.requestsPerMinutePerUser + 1
                for index in 0..<total {
                    try await sessions[index % sessions.count].send(TestFrames.text(#"{"type":"chat.send","content":"n\#(index)","max_tokens":1,"request_id":"r\#(index)"}"#))
                }
                var started = 0, limited = 0
                for (position, session) in sessions.enumerated() {
                    let sent = (0..<total).filter { $0 % sessions.count == position }.count
                    var outcomes = 0
                    while outcomes < sent {
                        let message = try await CaseContext.nextMessage(session)
                        switch (message["type"] as? String, message["code"] as? String) {
                        case ("generation.started", _): started += 1; outcomes += 1
                        case ("error", "rate_limited"):
                            guard (message["retry_after_ms"] as? Int ?? 0) > 0 else { return .failed("no retry_after_ms: \(message)") }
                            limited += 1; outcomes += 1
                        case ("error", let code): return .failed("error \(code ?? "?")")
                        default: continue
                        }
                    }
                }
                guard limited >= 1, started <= CatalogueConfiguration.requestsPerMinutePerUser, started + limited == total else {
                    return .failed("\(started) started, \(limited) rate_limited")
                }
                return .verified("\(started) started, \(limited) rate_limited")
            },
            HostileCase(name: "bursts.tokens-per-minute", surface: .bursts, action: "max_tokens 32768 against a 4,000 tokens-per-minute budget, on an endless upstream",
                        expected: .verified("cut where the budget ends: done length, then error rate_limited")) { context in
                let client = try await context.session()
                defer { Task { await client.close() } }
                try await client.send(TestFrames.text(#"{"type":"chat.send","content":"HOSTILE:forever","model":"wild","max_tokens":32768}"#))
                let done = try await CaseContext.until("generation.done", client, timeout: .seconds(30))
                let seq = done["seq"] as? Int ?? 0
                guard done["finish_reason"] as? String == "length", seq > 0, seq <= CatalogueConfiguration.tokensPerMinutePerUser else { return .failed("\(done)") }
                let notice = try await CaseContext.until("error", client)
                return notice["code"] as? String == "rate_limited" ? .verified("cut at \(seq)") : .failed("\(notice)")
            },
            HostileCase(name: "bursts.concurrent-chat-streams", surface: .bursts, action: "40 POST /v1/chat/stream at once from one user and address",
                        expected: .verified("each answered: 200, 429 (rates) or 503 (the per-address cap), the refusals with Retry-After"), exclusive: true) { context in
                let results = NIOLockedValueBox<[Observed]>([])
                await withTaskGroup(of: Void.self) { group in
                    for index in 0..<40 {
                        group.addTask {
                            let observed = (try? await context.request("POST", "/v1/chat/stream", body: #"{"content":"c\#(index)","max_tokens":2}"#, timeout: .seconds(20))) ?? Observed()
                            results.withLockedValue { $0.append(observed) }
                        }
                    }
                }
                let all = results.withLockedValue { $0 }
                let statuses = all.map { $0.status ?? 0 }
                let refusals = all.filter { $0.status == 429 || $0.status == 503 }
                guard statuses.allSatisfy({ [200, 429, 503].contains($0) }), !refusals.isEmpty, refusals.allSatisfy({ $0.retryAfter != nil }) else {
                    return .failed("\(statuses.sorted())")
                }
                return .verified("\(statuses.filter { $0 == 200 }.count) × 200, \(statuses.filter { $0 == 429 }.count) × 429, \(statuses.filter { $0 == 503 }.count) × 503")
            },
            HostileCase(name: "bursts.connections-per-address", surface: .bursts, action: "more idle connections from one address than server.max_connections_per_address",
                        expected: .verified("those past the cap get 503 with Retry-After at once; others are served"), exclusive: true) { context in
                var held: [RawClient] = []
                defer { for client in held { Task { await client.close() } } }
                for _ in 0..<CatalogueConfiguration.maxConnectionsPerAddress {
                    held.append(try await context.connect())
                }
                let extra = try await context.connect()
                held.append(extra)
                guard let refused = try await extra.readHTTPResponseOrClose(timeout: .seconds(5)) else { return .failed("closed without an answer") }
                guard refused.status == 503, refused.value("Retry-After") != nil else { return .failed("got \(refused.status)") }
                // Another address is served all the while.
                let elsewhere = CaseContext(gateway: context.gateway, address: "127.3.0.1", user: context.user)
                let other = try await elsewhere.request("GET", "/health", authenticated: false).status
                return other == 200 ? .verified("503 past the cap; another address served") : .failed("another address got \(other ?? 0)")
            },
            HostileCase(name: "bursts.quota-exhausted-ws", surface: .bursts, action: "a chat.send from a user whose quota is used up",
                        expected: .error("quota_exceeded")) { context in
                try await context.message(#"{"type":"chat.send","content":"more","max_tokens":5}"#)
            }.asUser("quota-user"),
        ]
    }

    // MARK: Slowloris and half-open

    /// While `body` runs, /health is asked every 200 ms on fresh connections; returns the
    /// slowest answer (nil when one failed).
    static func healthDuring<T: Sendable>(_ context: CaseContext, _ body: @escaping @Sendable () async throws -> T) async throws -> (T, slowest: Duration?) {
        let done = NIOLockedValueBox(false)
        async let probe: Duration? = {
            var slowest: Duration = .zero
            while !done.withLockedValue({ $0 }) {
                let started = ContinuousClock.now
                guard (try? await context.gateway.process.httpGet(path: "/health", timeout: .seconds(2)))?.status == 200 else { return nil }
                slowest = max(slowest, ContinuousClock.now - started)
                try? await Task.sleep(for: .milliseconds(200))
            }
            return slowest
        }()
        let result: T
        do {
            result = try await body()
        } catch {
            done.withLockedValue { $0 = true }
            _ = await probe
            throw error
        }
        done.withLockedValue { $0 = true }
        return (result, await probe)
    }

    static func slowloris(_ name: String, _ action: String, _ request: @escaping @Sendable (CaseContext) -> String, pause: Duration = .milliseconds(100)) -> HostileCase {
        HostileCase(name: name, surface: .slow, action: action,
                    expected: .verified("closed by server.handshake_timeout before the request is complete; /health answers meanwhile"), exclusive: true) { context in
            let client = try await context.connect()
            defer { Task { await client.close() } }
            let bytes = Array(request(context).utf8)
            let started = ContinuousClock.now
            let ((sent, closed), slowest) = try await Self.healthDuring(context) { await client.trickle(bytes, pause: pause) }
            let elapsed = ContinuousClock.now - started
            // Far less than the trickle takes (30 s and more): the timeout, not the end of the request.
            let bound = CatalogueConfiguration.handshakeTimeout + .seconds(8)
            guard closed, sent < bytes.count else { return .failed("not closed: \(sent) of \(bytes.count) bytes sent") }
            guard elapsed < bound else { return .failed("closed after \(elapsed), later than \(bound)") }
            guard let slowest, slowest < .seconds(2) else { return .failed("/health was slow or failed meanwhile (\(slowest.map { "\($0)" } ?? "failed"))") }
            return .verified("closed after \(sent)/\(bytes.count) bytes, \(elapsed); slowest /health \(slowest)")
        }
    }

    static var slow: [HostileCase] {
        [
            slowloris("slow.slowloris-upgrade", "an upgrade request one byte every 100 ms", { context in
                WebSocketCases.head(context) + String(repeating: "X-Slow: 1\r\n", count: 20)
            }),
            slowloris("slow.slowloris-health", "GET /health one byte every 100 ms, headers without end", { _ in
                "GET /health HTTP/1.1\r\nHost: x\r\n" + String(repeating: "X-Slow: 1\r\n", count: 40) + "\r\n"
            }),
            HostileCase(name: "slow.slowloris-body", surface: .slow, action: "POST /v1/jobs head at once, its 200-byte body one byte every 100 ms",
                        expected: .verified("closed within server.handshake_timeout of the request's start; /health answers meanwhile"), exclusive: true) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                let body = #"{"kind":"echo","input":{"pad":"\#(String(repeating: "p", count: 160))"}}"#
                try await client.send("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nContent-Length: \(body.utf8.count)\r\n\r\n")
                let started = ContinuousClock.now
                let ((sent, closed), slowest) = try await Self.healthDuring(context) { await client.trickle(Array(body.utf8), pause: .milliseconds(100)) }
                let elapsed = ContinuousClock.now - started
                guard closed, sent < body.utf8.count, elapsed < CatalogueConfiguration.handshakeTimeout + .seconds(8) else {
                    return .failed("closed \(closed) after \(elapsed), \(sent) of \(body.utf8.count) bytes")
                }
                guard let slowest, slowest < .seconds(2) else { return .failed("/health slow or failed meanwhile") }
                return .verified("closed after \(sent) body bytes, \(elapsed)")
            },
            HostileCase(name: "slow.silent-connection", surface: .slow, action: "a connection that never sends a byte",
                        expected: .closedUnanswered) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                try await client.waitForClose(timeout: CatalogueConfiguration.handshakeTimeout + .seconds(3))
                return Observed(closed: true)
            },
            HostileCase(name: "slow.idle-keep-alive", surface: .slow, action: "one request on a kept-alive connection, then silence",
                        expected: .verified("the answer, then closed by server.idle_timeout")) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                try await client.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                let response = try await client.readHTTPResponse()
                guard response.status == 200 else { return .failed("\(response.status)") }
                let started = ContinuousClock.now
                try await client.waitForClose(timeout: CatalogueConfiguration.idleTimeout + .seconds(3))
                return .verified("closed \(ContinuousClock.now - started) after the answer")
            },
            HostileCase(name: "slow.many-slowloris", surface: .slow, action: "60 slowloris heads at once from 60 addresses",
                        expected: .verified("all closed by the handshake timeout; /health answers within 2 s meanwhile"), exclusive: true) { context in
                let closedCount = NIOLockedValueBox(0)
                let (_, slowest) = try await Self.healthDuring(context) {
                    await withTaskGroup(of: Void.self) { group in
                        for index in 0..<60 {
                            group.addTask {
                                guard let client = try? await context.connect(address: "127.2.0.\(index + 1)") else { return }
                                let (_, closed) = await client.trickle(Array(("GET /health HTTP/1.1\r\nHost: x\r\n" + String(repeating: "X-S: 1\r\n", count: 30)).utf8), pause: .milliseconds(100))
                                if closed { closedCount.withLockedValue { $0 += 1 } }
                                await client.close()
                            }
                        }
                    }
                }
                let closed = closedCount.withLockedValue { $0 }
                guard closed == 60 else { return .failed("\(closed) of 60 closed by the server") }
                guard let slowest, slowest < .seconds(2) else { return .failed("/health slow or failed meanwhile") }
                return .verified("60 closed; slowest /health \(slowest)")
            },
            HostileCase(name: "slow.half-open-websocket", surface: .slow,
                        action: "a WebSocket client that never reads while an endless answer of 16 KiB deltas streams",
                        expected: .verified("the server stops buffering (bounded), ends the answer, and drops the connection; RSS stays within the budget"), exclusive: true) { context in
                try await Self.halfOpen(context, webSocket: true)
            },
            HostileCase(name: "slow.half-open-resume", surface: .slow,
                        action: "a client that stops reading, then asks to replay eight 60 KiB answers (480 KiB, past websocket.max_outbound_bytes)",
                        expected: .verified("closed with 1013 at the outbound bound (or dropped by the heartbeat), never buffered past it"), exclusive: true) { context in
                let client = try await context.session(socketBufferSize: 4096)
                defer { Task { await client.close() } }
                var generations: [String] = []
                for index in 0..<8 {
                    try await client.send(TestFrames.text(#"{"type":"chat.send","content":"HOSTILE:forever-kib \#(index)","model":"wild","max_tokens":60}"#))
                    let done = try await CaseContext.until("generation.done", client)
                    guard let id = done["generation_id"] as? String, done["finish_reason"] as? String == "length" else { return .failed("\(done)") }
                    generations.append(id)
                }
                try await client.pauseReading()
                for id in generations {
                    try await client.send(TestFrames.text(#"{"type":"generation.resume","generation_id":"\#(id)","after_seq":0}"#))
                }
                // Not reading: the server must hang up (the kernel's socket state shows it), its
                // memory never holding the unread replays; reading again shows how it ended.
                let pid = context.gateway.process.pid
                let before = ProcessResources.residentBytes(pid) ?? 0
                var peak = before
                try await eventually("the server hangs up on the client that does not read",
                                     timeout: CatalogueConfiguration.heartbeatInterval + CatalogueConfiguration.heartbeatTimeout + .seconds(10)) {
                    peak = max(peak, ProcessResources.residentBytes(pid) ?? 0)
                    return client.serverHasHungUp
                }
                let grown = peak - before
                try await client.resumeReading()
                let frames = try await client.waitForClose(timeout: CatalogueConfiguration.heartbeatInterval + CatalogueConfiguration.heartbeatTimeout + .seconds(10))
                let close = frames.last { $0.opcode == 0x8 }?.closeCode
                guard close == 1013 || close == nil else { return .failed("closed with \(close.map(String.init) ?? "-")") }
                guard grown < 8 << 20 else { return .failed("RSS grew \(grown >> 20) MiB while the client did not read") }
                return .verified("closed \(close.map { "with \($0)" } ?? "without a Close frame (heartbeat)"), RSS +\(grown >> 10) KiB meanwhile")
            },
            HostileCase(name: "slow.half-open-sse", surface: .slow,
                        action: "a POST /v1/chat/stream client that never reads while an endless answer of 16 KiB deltas streams",
                        expected: .verified("the server stops buffering (bounded) and ends the answer; RSS stays within the budget"), exclusive: true) { context in
                try await Self.halfOpen(context, webSocket: false)
            },
        ]
    }

    /// A reader that stops reading while `HOSTILE:forever-big` streams 16 KiB deltas: the
    /// process's resident memory must stay within the memory budget (plus what it held before),
    /// the answer must end, and the upstream request with it.
    static func halfOpen(_ context: CaseContext, webSocket: Bool) async throws -> Observed {
        let gateway = context.gateway
        let pid = gateway.process.pid
        let before = ProcessResources.residentBytes(pid) ?? 0
        let upstreamRequests = gateway.hostile.requests.count
        let openBefore = gateway.hostile.connections - gateway.hostile.closedConnections
        let body = #"{"type":"chat.send","content":"HOSTILE:forever-big","model":"wild","max_tokens":32768}"#
        let client: RawClient
        if webSocket {
            client = try await context.session(socketBufferSize: 4096)
            try await client.pauseReading()
            try await client.send(TestFrames.text(body))
        } else {
            client = try await context.connect(autoRead: false, socketBufferSize: 4096)
            try await client.send("POST /v1/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        }
        defer { Task { await client.close() } }
        guard await gateway.hostile.wait(timeout: .seconds(10), until: { $0.requests.count > upstreamRequests }) else {
            return .failed("the endless answer never reached the upstream")
        }
        // The answer must end (budget, token cut or memory budget) and its upstream request close.
        var peak = before
        let ended = await gateway.hostile.wait(timeout: .seconds(40)) { log in
            peak = max(peak, ProcessResources.residentBytes(pid) ?? 0)
            return log.connections - log.closedConnections <= openBefore
        }
        peak = max(peak, ProcessResources.residentBytes(pid) ?? 0)
        let grown = peak - before
        let allowed = CatalogueConfiguration.memoryBudget + (32 << 20)
        guard ended else { return .failed("the endless upstream request was never closed (grew \(grown >> 20) MiB)") }
        guard grown < allowed else { return .failed("resident memory grew \(grown >> 20) MiB, more than the budget + 32 MiB") }
        // The client that never reads is let go of: the heartbeat or the outbound bound
        // (WebSocket), the idle timeout after the ended response (SSE).
        let hungUp = (try? await eventually("the server hangs up", timeout: .seconds(20)) { client.serverHasHungUp }) != nil
        guard hungUp else { return .failed("the server still holds the connection of the client that does not read") }
        return .verified("answer ended, upstream closed, client dropped; RSS grew \(grown >> 20) MiB (budget \(CatalogueConfiguration.memoryBudget >> 20) MiB)")
    }

    // MARK: The upstream as the adversary

    /// A chat.send to the `wild` upstream with `marker`; `check` judges the messages up to the end.
    static func upstream(_ name: String, _ action: String, _ marker: String, _ expected: String,
                         _ check: @escaping @Sendable ([[String: Any]]) -> String?) -> HostileCase {
        HostileCase(name: name, surface: .upstream, action: action, expected: .verified(expected)) { context in
            let client = try await context.session()
            defer { Task { await client.close() } }
            try await client.send(TestFrames.text(#"{"type":"chat.send","content":"\#(marker)","model":"wild","max_tokens":50,"request_id":"up"}"#))
            var messages: [[String: Any]] = []
            while true {
                let message = try await CaseContext.nextMessage(client, timeout: .seconds(20))
                messages.append(message)
                let type = message["type"] as? String
                if type == "generation.done" || (type == "error" && message["request_id"] as? String == "up") { break }
            }
            if let problem = check(messages) { return .failed("\(problem): \(messages.suffix(3))") }
            try await client.send(TestFrames.text(CaseContext.sentinel))
            let pong = try await CaseContext.until("pong", client)
            _ = pong
            return .verified("\(messages.compactMap { $0["type"] as? String }.suffix(4))")
        }
    }

    static func done(_ messages: [[String: Any]]) -> [String: Any]? { messages.last { $0["type"] as? String == "generation.done" } }

    static func failure(_ messages: [[String: Any]]) -> String? {
        if let done = Self.done(messages) { return (done["error"] as? [String: Any])?["code"] as? String }
        return messages.last { $0["type"] as? String == "error" }?["code"] as? String
    }

    static var upstreamCases: [HostileCase] {
        [
            upstream("upstream.absurd-usage", "usage of 1e308 prompt and -2^63 completion tokens, total \"NaN\"", "HOSTILE:usage",
                     "done stop; usage clamped to non-negative counts whose sum fits") { messages in
                guard let done = Self.done(messages), done["finish_reason"] as? String == "stop",
                      let usage = done["usage"] as? [String: Any], let prompt = usage["prompt_tokens"] as? Int,
                      let completion = usage["completion_tokens"] as? Int, let total = usage["total_tokens"] as? Int
                else { return "no usage" }
                return prompt >= 0 && completion >= 0 && total >= prompt && total >= completion ? nil : "usage \(usage)"
            },
            upstream("upstream.endless-stream", "an upstream that streams deltas without end, ignoring max_tokens 50", "HOSTILE:forever",
                     "the answer ends at max_tokens (finish_reason length), the upstream request is closed") { messages in
                guard let done = Self.done(messages), done["finish_reason"] as? String == "length" else { return "not ended by length" }
                return (done["seq"] as? Int ?? 0) <= 50 ? nil : "streamed \(done["seq"] ?? "?") deltas for max_tokens 50"
            },
            upstream("upstream.malformed-sse", "events that are not JSON, not chunks, 5,000 nested {, an unknown event name", "HOSTILE:malformed",
                     "the generation ends with upstream_error (a malformed chunk is an upstream fault)") { messages in
                Self.failure(messages) == "upstream_error" ? nil : "expected upstream_error"
            },
            upstream("upstream.huge-line", "one 2 MiB SSE line without end of line", "HOSTILE:hugeline",
                     "upstream_error (the event bound), without holding the line") { messages in
                Self.failure(messages) == "upstream_error" ? nil : "expected upstream_error"
            },
            upstream("upstream.silent", "a 200 head, then silence", "HOSTILE:silent", "upstream_timeout after the first-token timeout") { messages in
                Self.failure(messages) == "upstream_timeout" ? nil : "expected upstream_timeout"
            },
            upstream("upstream.garbage", "bytes that are not HTTP", "HOSTILE:garbage", "an upstream failure (upstream_error or upstream_unavailable), retryable") { messages in
                ["upstream_error", "upstream_unavailable"].contains(Self.failure(messages) ?? "") ? nil : "expected an upstream failure"
            },
            upstream("upstream.content-length-overflow", "a response head with Content-Length 10^23", "HOSTILE:badlength", "upstream_error") { messages in
                ["upstream_error", "upstream_unavailable"].contains(Self.failure(messages) ?? "") ? nil : "expected an upstream failure"
            },
            upstream("upstream.error-with-1MiB-body", "a 400 whose error body is 1 MiB", "HOSTILE:error-status",
                     "upstream_error whose message is bounded (< 4 KiB)") { messages in
                guard Self.failure(messages) == "upstream_error" else { return "expected upstream_error" }
                let message = messages.last { $0["type"] as? String == "error" }?["message"] as? String ?? ""
                return message.utf8.count < 4096 ? nil : "an error message of \(message.utf8.count) bytes"
            },
            upstream("upstream.invalid-unicode", "lone surrogate escapes and raw invalid UTF-8 in deltas", "HOSTILE:unicode",
                     "every text frame is valid UTF-8 JSON; the generation ends") { messages in
                Self.done(messages) == nil ? "no generation.done" : nil
            },
            upstream("upstream.hostile-tool-calls", "tool calls: 9^9^9^9^9, 5,000 nested parentheses, http_get to 169.254.169.254, an unknown tool, arguments that are not JSON",
                     "HOSTILE:tools", "a tool.result that is not ok for each (error, invalid_arguments, unknown_tool); the answer goes on") { messages in
                let results = messages.filter { $0["type"] as? String == "tool.result" }
                guard results.count == 5 else { return "\(results.count) tool results" }
                let statuses = results.compactMap { $0["status"] as? String }
                guard statuses.count == 5, !statuses.contains("ok") else { return "a hostile call succeeded: \(statuses)" }
                return Self.done(messages)?["finish_reason"] as? String == "stop" ? nil : "not finished"
            },
            HostileCase(name: "upstream.pool-replica-fails", surface: .upstream, action: "chats to the chat pool, whose second replica answers 500 to everything",
                        expected: .verified("every chat is answered by the other replica (retried before the first token)")) { context in
                let client = try await context.session()
                defer { Task { await client.close() } }
                for index in 0..<4 {
                    try await client.send(TestFrames.text(#"{"type":"chat.send","content":"p\#(index)","model":"chat","max_tokens":5}"#))
                    var skipped: [[String: Any]] = []
                    let done = try await CaseContext.until("generation.done", client, skipped: &skipped)
                    let text = skipped.compactMap { $0["text"] as? String }.joined()
                    guard done["finish_reason"] as? String == "stop", text == "steady answer" else { return .failed("chat \(index): \(done) \(text)") }
                }
                return .verified("4 answers from the steady replica")
            },
            HostileCase(name: "upstream.completions-absurd-usage", surface: .upstream, action: "the absurd usage through /v1/chat/completions",
                        expected: .verified("200; usage clamped, total fits")) { context in
                let observed = try await context.request("POST", "/v1/chat/completions", body: #"{"model":"wild","messages":[{"role":"user","content":"HOSTILE:usage"}]}"#)
                guard observed.status == 200,
                      let object = try? JSONSerialization.jsonObject(with: Data(observed.body.utf8)) as? [String: Any],
                      let usage = object["usage"] as? [String: Any], let total = usage["total_tokens"] as? Int, total >= 0
                else { return .failed("\(observed)") }
                return .verified("usage \(usage)")
            },
            HostileCase(name: "upstream.completions-endless-stream", surface: .upstream, action: "stream: true from the endless upstream, max_tokens 20",
                        expected: .verified("the stream ends (finish_reason length, [DONE])")) { context in
                let observed = try await context.request(
                    "POST", "/v1/chat/completions", body: #"{"model":"wild","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"HOSTILE:forever"}]}"#,
                    timeout: .seconds(20))
                guard observed.status == 200, observed.body.contains(#""finish_reason":"length""#), observed.body.hasSuffix("data: [DONE]\n\n") else {
                    return .failed("\(observed.status ?? 0) \(observed.body.suffix(200))")
                }
                return .verified("ended")
            },
            HostileCase(name: "upstream.sse-hugeline", surface: .upstream, action: "the 2 MiB line through POST /v1/chat/stream",
                        expected: .verified("the stream ends with generation.done error upstream_error")) { context in
                let observed = try await context.request("POST", "/v1/chat/stream", body: #"{"content":"HOSTILE:hugeline","model":"wild"}"#, timeout: .seconds(20))
                guard observed.status == 200, observed.body.contains(#""code":"upstream_error""#), observed.body.hasSuffix("data: [DONE]\n\n") else {
                    return .failed("\(observed.status ?? 0) \(observed.body.suffix(200))")
                }
                return .verified("ended with upstream_error")
            },
            HostileCase(name: "upstream.sse-client-disconnects", surface: .upstream, action: "an SSE client that hangs up in the middle of an endless answer",
                        expected: .verified("the upstream request is closed (the generation cancelled)"), exclusive: true) { context in
                let gateway = context.gateway
                let before = gateway.hostile.requests.count
                let openBefore = gateway.hostile.connections - gateway.hostile.closedConnections
                let client = try await context.connect()
                let body = #"{"content":"HOSTILE:forever","model":"wild","max_tokens":32768}"#
                try await client.send("POST /v1/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
                guard await gateway.hostile.wait(timeout: .seconds(10), until: { $0.requests.count > before }) else { return .failed("no upstream request") }
                await client.close()
                let closed = await gateway.hostile.wait(timeout: .seconds(10)) { $0.connections - $0.closedConnections <= openBefore }
                return closed ? .verified("upstream closed") : .failed("the upstream request stayed open")
            },
        ]
    }
}
