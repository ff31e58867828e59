import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
@testable import SluiceTestSupport
import Testing

/// Where a hostile input is thrown.
enum Surface: String, CaseIterable, Sendable {
    case frames = "WebSocket frames"
    case upgrade = "WebSocket upgrade"
    case messages = "sluice.v1 messages"
    case sse = "POST /v1/chat/stream"
    case completions = "/v1/chat/completions"
    case jobs = "/v1/jobs"
    case history = "history routes"
    case presence = "presence and admin routes"
    case headers = "HTTP framing and headers"
    case jwt = "JWTs and credentials"
    case bursts = "bursts and rates"
    case slow = "slowloris and half-open"
    case upstream = "hostile upstream"
}

/// What the gateway did with one hostile input, as seen from the client.
struct Observed: Sendable, CustomStringConvertible {
    /// The HTTP status of the (first) response, if one came.
    var status: Int?
    /// `code` of the error object in the answer: sluice.v1's `code`, OpenAI's `error.code`.
    var errorCode: String?
    var body: String = ""
    /// The response's `Retry-After`, if any.
    var retryAfter: String?
    /// The WebSocket Close code the server sent (nil: none, or a Close without a code).
    var closeCode: UInt16?
    /// The server closed the connection (TCP), with or without a Close frame.
    var closed = false
    /// sluice.v1 messages that came back: `type`, or `type:code` for errors.
    var messages: [String] = []
    /// The connection still answered a ping sent after the input.
    var sentinelAnswered = false
    /// What a case that checks for itself found (`Expected.verified`); nil when it is fine.
    var problem: String?
    var note: String = ""

    var description: String {
        var parts: [String] = []
        if let status { parts.append("HTTP \(status)") }
        if let errorCode { parts.append("code \(errorCode)") }
        if let closeCode { parts.append("Close \(closeCode)") } else if self.closed { parts.append("closed") }
        if !self.messages.isEmpty { parts.append("messages \(self.messages.prefix(8).joined(separator: ","))\(self.messages.count > 8 ? ",…" : "")") }
        if self.sentinelAnswered { parts.append("answers ping") }
        if let problem { parts.append("problem: \(problem)") }
        if !self.note.isEmpty { parts.append(self.note) }
        if parts.isEmpty || (self.status != nil && self.errorCode == nil && !self.body.isEmpty) {
            parts.append("body \(self.body.prefix(160).debugDescription)")
        }
        return parts.joined(separator: "; ")
    }

    static func verified(_ note: String) -> Observed { Observed(note: note) }
    static func failed(_ problem: String) -> Observed { Observed(problem: problem) }
}

/// The documented answer a case expects.
enum Expected: Sendable, CustomStringConvertible {
    /// This HTTP status (and, when given, this error code in the JSON body).
    case status(Int, code: String? = nil)
    /// One of these statuses (where the contract allows either, e.g. a refusal by NIO's parser).
    case statusIn([Int])
    /// The WebSocket is closed with this code.
    case close(UInt16)
    /// A sluice.v1 `error` with this code, and the connection stays up (it answers the next ping).
    case error(String)
    /// A sluice.v1 message of this type, and the connection stays up.
    case reply(String)
    /// The server closes the connection without answering (a timeout's doing).
    case closedUnanswered
    /// The case checked what the contract says itself (described here); it reports problems.
    case verified(String)

    var description: String {
        switch self {
        case .status(let status, let code): return "HTTP \(status)" + (code.map { " \($0)" } ?? "")
        case .statusIn(let statuses): return "HTTP " + statuses.map(String.init).joined(separator: "/")
        case .close(let code): return "Close \(code)"
        case .error(let code): return "error \(code), still open"
        case .reply(let type): return "\(type), still open"
        case .closedUnanswered: return "closed, no answer"
        case .verified(let what): return what
        }
    }

    /// nil when `observed` is what was expected, else why not.
    func mismatch(_ observed: Observed) -> String? {
        if let problem = observed.problem { return problem }
        switch self {
        case .status(let status, let code):
            if observed.status != status { return "expected HTTP \(status)" }
            if let code, observed.errorCode != code { return "expected error code \(code)" }
        case .statusIn(let statuses):
            if !statuses.contains(observed.status ?? -1) { return "expected one of \(statuses)" }
        case .close(let code):
            if observed.closeCode != code { return "expected Close \(code)" }
        case .error(let code):
            if !observed.messages.contains("error:\(code)") { return "expected error \(code)" }
            if !observed.sentinelAnswered { return "the connection did not stay usable" }
        case .reply(let type):
            if !observed.messages.contains(type) { return "expected \(type)" }
            if !observed.sentinelAnswered { return "the connection did not stay usable" }
        case .closedUnanswered:
            if !observed.closed || observed.status != nil { return "expected a close without an answer" }
        case .verified:
            break
        }
        return nil
    }
}

/// One entry of the catalogue.
struct HostileCase: Sendable {
    var name: String
    var surface: Surface
    /// What is thrown, in words.
    var action: String
    var expected: Expected
    /// Runs alone (bursts and timing-sensitive cases), after the parallel ones.
    var exclusive = false
    var run: @Sendable (CaseContext) async throws -> Observed
}

/// The `sluice serve` child of the catalogue, configured like production, with what the cases
/// need to reach it.
struct CatalogueGateway: Sendable {
    static let secret = "catalogue-secret-of-at-least-thirty-two-bytes"
    static let origin = "https://app.example.com"

    let process: SluiceProcess
    let steady: FakeUpstream
    let hostile: FakeUpstream
    /// A page http_get is allowed to fetch (loopback, listed by host:port).
    let page: FakeUpstream
    /// The admin listener's port, when this build has one.
    let adminPort: Int?
    /// A user whose token quota is used up (set with `sluice quota set` before the start).
    let quotaUser = "quota-user"

    var port: Int { self.process.port }
    var group: any EventLoopGroup { MultiThreadedEventLoopGroup.singleton }

    func token(_ user: String, expiresIn: Int = 900) -> String {
        TestJWT.valid(sub: user, secret: Self.secret, expiresIn: expiresIn)
    }
}

/// What one case runs with: the gateway, its own client address (127.1.x.y, so per-address
/// limits never mix cases) and its own user.
struct CaseContext: Sendable {
    let gateway: CatalogueGateway
    let address: String
    let user: String

    var port: Int { self.gateway.port }
    var token: String { self.gateway.token(self.user) }
    var bearer: (String, String) { ("Authorization", "Bearer \(self.token)") }

    func connect(autoRead: Bool = true, socketBufferSize: Int? = nil, address: String? = nil) async throws -> RawClient {
        try await RawClient.connect(
            port: self.port, group: self.gateway.group, autoRead: autoRead, socketBufferSize: socketBufferSize,
            localAddress: address ?? self.address)
    }

    // MARK: HTTP

    /// Writes `bytes` on a fresh connection and reads one response (or the close).
    func raw(_ bytes: [UInt8], timeout: Duration = .seconds(5)) async throws -> Observed {
        let client = try await self.connect()
        defer { Task { await client.close() } }
        try? await client.send(bytes)
        return try await Self.observeResponse(client, timeout: timeout)
    }

    func raw(_ text: String, timeout: Duration = .seconds(5)) async throws -> Observed {
        try await self.raw(Array(text.utf8), timeout: timeout)
    }

    static func observeResponse(_ client: RawClient, timeout: Duration) async throws -> Observed {
        guard let response = try await client.readHTTPResponseOrClose(timeout: timeout) else {
            return Observed(closed: true)
        }
        var observed = Observed(status: response.status, errorCode: Self.errorCode(response.body), body: response.body)
        observed.retryAfter = response.value("Retry-After")
        observed.closed = client.isClosed
        return observed
    }

    /// A request with `Host`, `Connection: close`, the case's token unless `authenticated` is
    /// false, and a `Content-Length` body when there is one.
    func request(
        _ method: String, _ path: String, headers: [(String, String)] = [], body: String? = nil, authenticated: Bool = true,
        timeout: Duration = .seconds(10)
    ) async throws -> Observed {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(self.port)\r\nConnection: close\r\n"
        if authenticated { text += "\(self.bearer.0): \(self.bearer.1)\r\n" }
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if let body {
            text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        } else {
            text += "\r\n"
        }
        return try await self.raw(text, timeout: timeout)
    }

    /// `code` of a JSON error body: sluice.v1's top-level `code` or OpenAI's `error.code`.
    static func errorCode(_ body: String) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else { return nil }
        if let code = object["code"] as? String { return code }
        return (object["error"] as? [String: Any])?["code"] as? String
    }

    // MARK: WebSocket

    /// The upgrade's answer; `authenticated` adds the case's bearer token and `withOrigin` the
    /// allowed Origin. A 101 is closed at once.
    func upgrade(
        path: String = "/v1/ws", headers: [(String, String)], authenticated: Bool = true, withOrigin: Bool = true,
        subprotocol: Bool = true
    ) async throws -> Observed {
        let client = try await self.connect()
        defer { Task { await client.close() } }
        var extra = headers
        if subprotocol { extra.insert(("Sec-WebSocket-Protocol", "sluice.v1"), at: 0) }
        if withOrigin { extra.insert(("Origin", CatalogueGateway.origin), at: 0) }
        if authenticated { extra.insert(self.bearer, at: 0) }
        let (response, _) = try await client.handshake(path: path, extraHeaders: extra)
        var observed = Observed(status: response.status, errorCode: Self.errorCode(response.body), body: response.body)
        observed.retryAfter = response.value("Retry-After")
        observed.note = response.values("Sec-WebSocket-Extensions").joined(separator: ",")
        return observed
    }

    /// An authenticated sluice.v1 session with `session.ready` read; `deflate` offers
    /// permessage-deflate (and fails the case if it is not agreed).
    func session(deflate: Bool = false, headers: [(String, String)] = [], autoRead: Bool = true, socketBufferSize: Int? = nil) async throws -> RawClient {
        let client = try await self.connect(autoRead: autoRead, socketBufferSize: socketBufferSize)
        var extra = [self.bearer, ("Origin", CatalogueGateway.origin), ("Sec-WebSocket-Protocol", "sluice.v1")] + headers
        if deflate { extra.append(("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")) }
        let (response, _) = try await client.handshake(extraHeaders: extra)
        guard response.status == 101 else {
            await client.close()
            throw CaseFailure("the upgrade was answered \(response.status): \(response.body)")
        }
        if deflate && response.value("Sec-WebSocket-Extensions")?.contains("permessage-deflate") != true {
            await client.close()
            throw CaseFailure("permessage-deflate was not agreed")
        }
        if autoRead {
            let ready = try await client.nextFrame()
            guard ready.opcode == 0x1, ready.text.contains("session.ready") || ready.rsv1 else {
                await client.close()
                throw CaseFailure("expected session.ready, got opcode \(ready.opcode) \(ready.text.prefix(80))")
            }
        }
        return client
    }

    /// Sends `bytes` on a fresh session, then reads what comes back: a Close (answered), or,
    /// when nothing closes the connection within `settle`, whether it still answers a ping.
    func afterFrames(_ bytes: [UInt8], deflate: Bool = false, settle: Duration = .seconds(3)) async throws -> Observed {
        let client = try await self.session(deflate: deflate)
        defer { Task { await client.close() } }
        try? await client.send(bytes)
        return try await Self.observeSession(client, settle: settle)
    }

    /// Sends one text message on a fresh session; then as `afterFrames`.
    func message(_ text: String, settle: Duration = .seconds(5)) async throws -> Observed {
        try await self.afterFrames(TestFrames.text(text), settle: settle)
    }

    static let sentinel = #"{"type":"ping","id":"catalogue-sentinel"}"#

    /// Collects messages until a Close, the connection's end, or `settle` without either; then
    /// (connection still open) sends the sentinel ping and waits for its pong.
    static func observeSession(_ client: RawClient, settle: Duration, inflater: ClientDeflate? = nil) async throws -> Observed {
        var observed = Observed()
        var sentSentinel = false
        var deadline = ContinuousClock.now + settle
        while true {
            let frame: TestFrames.ServerFrame
            do {
                frame = try await client.nextFrame(timeout: max(deadline - ContinuousClock.now, .zero))
            } catch {
                if client.isClosed {
                    observed.closed = true
                    return observed
                }
                if sentSentinel { return observed }
                // Quiet and open: does it still answer?
                sentSentinel = true
                try? await client.send(TestFrames.text(Self.sentinel))
                deadline = ContinuousClock.now + .seconds(5)
                continue
            }
            switch frame.opcode {
            case 0x8:
                observed.closeCode = frame.closeCode
                observed.closed = true
                try? await client.send(TestFrames.close(code: frame.closeCode.flatMap { $0 == 1005 ? nil : $0 } ?? 1000))
                return observed
            case 0x9:
                try? await client.send(TestFrames.client(0xA, frame.payload))
            case 0x1:
                var payload = frame.payload
                if frame.rsv1, let inflater { payload = (try? inflater.inflateMessage(payload)) ?? payload }
                guard let object = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any],
                      let type = object["type"] as? String
                else {
                    observed.messages.append("unparsable")
                    continue
                }
                if type == "pong", object["id"] as? String == "catalogue-sentinel" {
                    observed.sentinelAnswered = true
                    return observed
                }
                if type == "error" {
                    let code = object["code"] as? String ?? "?"
                    observed.messages.append("error:\(code)")
                    observed.errorCode = observed.errorCode ?? code
                } else {
                    observed.messages.append(type)
                }
                // An answer came: the sentinel goes right behind it.
                if !sentSentinel {
                    sentSentinel = true
                    try? await client.send(TestFrames.text(Self.sentinel))
                    deadline = ContinuousClock.now + .seconds(5)
                }
            default:
                continue
            }
        }
    }

    /// The next sluice.v1 message (pings answered, other control frames skipped).
    static func nextMessage(_ client: RawClient, timeout: Duration = .seconds(10)) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let frame = try await client.nextFrame(timeout: max(deadline - ContinuousClock.now, .zero))
            switch frame.opcode {
            case 0x1:
                guard let object = try JSONSerialization.jsonObject(with: Data(frame.payload)) as? [String: Any] else {
                    throw CaseFailure("a text frame that is not a JSON object: \(frame.text.prefix(80))")
                }
                return object
            case 0x8:
                throw CaseFailure("closed with \(frame.closeCode.map(String.init) ?? "no code")")
            case 0x9:
                try? await client.send(TestFrames.client(0xA, frame.payload))
            default:
                continue
            }
        }
    }

    /// Messages until one of `type` (returned); the ones before are appended to `skipped`.
    static func until(_ type: String, _ client: RawClient, skipped: inout [[String: Any]], timeout: Duration = .seconds(15)) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let message = try await Self.nextMessage(client, timeout: max(deadline - ContinuousClock.now, .zero))
            if message["type"] as? String == type { return message }
            skipped.append(message)
        }
    }

    static func until(_ type: String, _ client: RawClient, timeout: Duration = .seconds(15)) async throws -> [String: Any] {
        var skipped: [[String: Any]] = []
        return try await Self.until(type, client, skipped: &skipped, timeout: timeout)
    }
}

/// A case that could not run as planned (its setup failed); reported as a mismatch.
struct CaseFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// What running one case gave.
struct CaseResult: Sendable {
    var hostile: HostileCase
    var observed: Observed?
    var mismatch: String?
    var alive: Bool
    var healthStatus: Int?
    var healthLatency: Duration
    var duration: Duration

    var passed: Bool { self.mismatch == nil && self.alive && self.healthStatus == 200 }
}

/// Runs cases (the independent ones `parallelism` at a time, then the exclusive ones alone)
/// and after each checks that the process is alive by its PID and `/health` answers 200 within
/// `healthBound`.
struct CatalogueRunner {
    let gateway: CatalogueGateway
    var parallelism = 6
    var caseTimeout: Duration = .seconds(45)
    var healthBound: Duration = .seconds(3)

    /// 127.1.x.y for case `index`: one address per case.
    static func address(_ index: Int) -> String {
        "127.1.\(index / 250).\(index % 250 + 1)"
    }

    static func user(_ name: String) -> String {
        "u-" + String(name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "_" })
    }

    func run(_ cases: [HostileCase]) async -> [CaseResult] {
        let indexed = Array(cases.enumerated())
        var results: [CaseResult] = []
        let shared = indexed.filter { !$0.element.exclusive }
        await withTaskGroup(of: CaseResult.self) { group in
            var next = 0
            while next < min(self.parallelism, shared.count) {
                let (index, hostile) = shared[next]
                group.addTask { await self.runOne(hostile, index: index) }
                next += 1
            }
            for await result in group {
                results.append(result)
                if next < shared.count {
                    let (index, hostile) = shared[next]
                    group.addTask { await self.runOne(hostile, index: index) }
                    next += 1
                }
            }
        }
        for (index, hostile) in indexed where hostile.exclusive {
            results.append(await self.runOne(hostile, index: index))
        }
        return results
    }

    func runOne(_ hostile: HostileCase, index: Int) async -> CaseResult {
        let context = CaseContext(gateway: self.gateway, address: Self.address(index), user: Self.user(hostile.name))
        let started = ContinuousClock.now
        var observed: Observed?
        var mismatch: String?
        do {
            let result = try await withDeadline(self.caseTimeout) { try await hostile.run(context) }
            observed = result
            mismatch = hostile.expected.mismatch(result)
        } catch {
            mismatch = "\(error)"
        }
        let duration = ContinuousClock.now - started
        let alive = self.gateway.process.isRunning
        let healthStarted = ContinuousClock.now
        let health = try? await self.gateway.process.httpGet(path: "/health", timeout: self.healthBound)
        return CaseResult(
            hostile: hostile, observed: observed, mismatch: mismatch, alive: alive, healthStatus: health?.status,
            healthLatency: ContinuousClock.now - healthStarted, duration: duration)
    }
}

struct DeadlinePassed: Error, CustomStringConvertible {
    var limit: Duration
    var description: String { "no outcome within \(self.limit) (hang?)" }
}

/// `body`, or `DeadlinePassed` after `limit` (the body is cancelled).
func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw DeadlinePassed(limit: limit) }
        return value
    }
}
