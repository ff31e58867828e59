import Foundation
import Logging
import NIOCore
import NIOPosix
import SluiceProtocol
@testable import SluiceTestSupport
import Synchronization
import Testing

@testable import Inference

@Suite struct CircuitBreakerTests {
    @Test func opensAfterTheThresholdProbesOnceAndCloses() {
        var settings = CircuitBreaker.Settings()
        settings.failureThreshold = 3
        settings.openDuration = .seconds(10)
        var breaker = CircuitBreaker(settings: settings)
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        breaker.recordFailure(now: t0)
        breaker.recordFailure(now: t0)
        breaker.recordSuccess()  // a success in between resets the count
        breaker.recordFailure(now: t0)
        breaker.recordFailure(now: t0)
        do { let allowed = breaker.allowRequest(now: t0); #expect(allowed) }
        breaker.recordFailure(now: t0)
        #expect(breaker.state == .open(until: t0 + .seconds(10)))
        do { let allowed = breaker.allowRequest(now: t0 + .seconds(9)); #expect(!allowed) }
        // One probe after the cool-down, no second while it runs.
        do { let allowed = breaker.allowRequest(now: t0 + .seconds(10)); #expect(allowed) }
        do { let allowed = breaker.allowRequest(now: t0 + .seconds(10)); #expect(!allowed) }
        // A failed probe opens it for twice as long.
        breaker.recordFailure(now: t0 + .seconds(11))
        #expect(breaker.state == .open(until: t0 + .seconds(31)))
        do { let allowed = breaker.allowRequest(now: t0 + .seconds(31)); #expect(allowed) }
        breaker.recordAbandoned()  // the probe was cancelled: the slot is free again
        do { let allowed = breaker.allowRequest(now: t0 + .seconds(31)); #expect(allowed) }
        breaker.recordSuccess()
        #expect(breaker.state == .closed(consecutiveFailures: 0))
        #expect(breaker.state.gaugeValue == 0)
    }
}

@Suite struct AutoRoutingTests {
    @Test func theSeedsRuleChoosesATier() throws {
        var auto = AutoRouting()
        auto.simple = "small"
        auto.complex = "large"
        #expect(auto.tier(for: "What time is it?") == .simple)
        #expect(auto.tier(for: "Please analyze this contract clause by clause") == .complex)
        #expect(auto.tier(for: "Write a poem about rivers") == .medium)
        #expect(auto.tier(for: String(repeating: "long question ", count: 20) + "?") == .medium)
        let engine = SimulatorEngine(configuration: .init())
        let router = InferenceRouter(
            upstreams: [.init(name: "mid", engine: engine), .init(name: "small", engine: engine), .init(name: "large", engine: engine)],
            auto: auto)
        #expect(try router.route(model: "auto", prompt: "Why?").get().upstream.name == "small")
        #expect(try router.route(model: "auto", prompt: "compare these two").get().upstream.name == "large")
        // No medium tier configured: the default upstream.
        #expect(try router.route(model: "auto", prompt: "hello").get().upstream.name == "mid")
    }
}

/// Pools of real OpenAI-compatible engines in front of scripted upstreams on loopback.
@Suite struct ReplicaPoolTests {
    static let logger = Logger(label: "test")

    static func working(_ text: String = "ok") -> @Sendable (FakeUpstream.Request) -> [FakeUpstream.Step] {
        { _ in [.write(FakeUpstream.head()), .write(FakeUpstream.delta(text)),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)), .write("data: [DONE]\n\n"), .close] }
    }

    static let failing: @Sendable (FakeUpstream.Request) -> [FakeUpstream.Step] = { _ in
        [.write("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), .close]
    }

    static func replica(_ name: String, port: Int, maxConcurrency: Int = 0, health: Bool = false) throws -> ReplicaSpec {
        let url = URL(string: "http://127.0.0.1:\(port)")!
        let engine = try OpenAICompatibleEngine(configuration: .init(
            baseURL: url, model: "m", timeouts: UpstreamTimeouts(connect: .seconds(2), timeToFirstToken: .seconds(5))))
        return ReplicaSpec(name: name, engine: engine, healthURL: health ? url.appendingPathComponent("health") : nil, maxConcurrency: maxConcurrency)
    }

    /// Bound but not listening for the test's lifetime: connections are refused.
    static let deadPort = try! SluiceProcess.deadPort()

    @Test func aReplicaThatRefusesConnectionsOrAnswers500IsRetriedOnAnother() async throws {
        let good = try await FakeUpstream.start(script: Self.working("from b"))
        let bad = try await FakeUpstream.start(script: Self.failing)
        defer { Task { await good.stop(); await bad.stop() } }
        for first in [try Self.replica("refusing", port: Self.deadPort.port), try Self.replica("failing", port: bad.port)] {
            let pool = ReplicaPool(name: "p", replicas: [first, try Self.replica("b", port: good.port)], logger: Self.logger)
            let generation = try await TestGeneration.start(pool)
            let events = await generation.log.waitForEnd()
            #expect(events.filter { $0 != .batch } == [.text("from b"), .finish(.stop)], "\(first.name): \(events)")
            let state = pool.snapshot()
            #expect(state.allSatisfy { $0.outstanding == 0 })
            #expect(state[0].circuit == .closed(consecutiveFailures: 1))
        }
        #expect(bad.requests.count == 1 && good.requests.count == 2)
    }

    @Test func aFailureAfterTheFirstTokenIsNotRetried() async throws {
        let cut = try await FakeUpstream.start { _ in [.write(FakeUpstream.head()), .write(FakeUpstream.delta("half")), .close] }
        let good = try await FakeUpstream.start(script: Self.working())
        defer { Task { await cut.stop(); await good.stop() } }
        let pool = ReplicaPool(name: "p", replicas: [try Self.replica("cut", port: cut.port), try Self.replica("b", port: good.port)], logger: Self.logger)
        let generation = try await TestGeneration.start(pool)
        let events = await generation.log.waitForEnd()
        #expect(events.first == .text("half"))
        #expect(events.last == .fail(.upstreamError(status: nil)))
        #expect(good.requests.isEmpty)
    }

    @Test func theCircuitOpensAfterFailuresAndAProbeClosesIt() async throws {
        let broken = Mutex(true)
        let flaky = try await FakeUpstream.start { request in
            broken.withLock { $0 } ? Self.failing(request) : Self.working("a is back")(request)
        }
        let good = try await FakeUpstream.start(script: Self.working("from b"))
        defer { Task { await flaky.stop(); await good.stop() } }
        var settings = CircuitBreaker.Settings()
        settings.failureThreshold = 2
        settings.openDuration = .seconds(10)
        // The breakers' own clock: the cool-down passes when the test says, however slow the machine.
        let clock = Mutex(NIODeadline.now())
        let pool = ReplicaPool(
            name: "p", replicas: [try Self.replica("a", port: flaky.port), try Self.replica("b", port: good.port)], circuit: settings,
            logger: Self.logger, clock: { clock.withLock { $0 } })
        for _ in 0..<2 {
            let generation = try await TestGeneration.start(pool)
            #expect(await generation.log.waitForEnd().last == .finish(.stop))
        }
        guard case .open = pool.snapshot()[0].circuit else {
            Issue.record("the circuit did not open: \(pool.snapshot()[0].circuit)")
            return
        }
        // While open, a goes unasked.
        let asked = flaky.requests.count
        for _ in 0..<3 {
            let generation = try await TestGeneration.start(pool)
            #expect(await generation.log.waitForEnd().last == .finish(.stop))
        }
        #expect(flaky.requests.count == asked)
        // After the cool-down one probe goes to a, which works again: closed.
        broken.withLock { $0 = false }
        clock.withLock { $0 = $0 + .seconds(11) }
        let probe = try await TestGeneration.start(pool)
        #expect(await probe.log.waitForEnd().filter { $0 != .batch } == [.text("a is back"), .finish(.stop)])
        #expect(pool.snapshot()[0].circuit == .closed(consecutiveFailures: 0))
        #expect(flaky.requests.count == asked + 1)
    }

    @Test func leastOutstandingSpreadsAndCapsRefuseWithOverloaded() async throws {
        let hanging: @Sendable (FakeUpstream.Request) -> [FakeUpstream.Step] = { _ in [.write(FakeUpstream.head()), .write(FakeUpstream.delta("…")), .hang] }
        let a = try await FakeUpstream.start(script: hanging)
        let b = try await FakeUpstream.start(script: hanging)
        defer { Task { await a.stop(); await b.stop() } }
        let pool = ReplicaPool(
            name: "p", replicas: [try Self.replica("a", port: a.port, maxConcurrency: 1), try Self.replica("b", port: b.port, maxConcurrency: 1)],
            logger: Self.logger)
        let first = try await TestGeneration.start(pool)
        let second = try await TestGeneration.start(pool)
        await first.log.wait { $0.contains(.text("…")) }
        await second.log.wait { $0.contains(.text("…")) }
        #expect(a.requests.count == 1 && b.requests.count == 1)
        let third = try await TestGeneration.start(pool)
        #expect(await third.log.waitForEnd() == [.fail(.overloaded)])
        try await first.cancel()
        try await second.cancel()
        let aClosed = await a.wait { $0.closedConnections == 1 }
        let bClosed = await b.wait { $0.closedConnections == 1 }
        #expect(aClosed && bClosed)
        #expect(pool.snapshot().allSatisfy { $0.outstanding == 0 })
    }

    @Test func healthChecksTakeAFailingReplicaOutAndBringItBack() async throws {
        let healthy = Mutex(false)
        let a = try await FakeUpstream.start { request in
            if request.uri.hasSuffix("/health") {
                let ok = healthy.withLock { $0 }
                return [.write("HTTP/1.1 \(ok ? "200 OK" : "503 Service Unavailable")\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), .close]
            }
            return Self.working("from a")(request)
        }
        let b = try await FakeUpstream.start(script: Self.working("from b"))
        defer { Task { await a.stop(); await b.stop() } }
        let pool = ReplicaPool(
            name: "p", replicas: [try Self.replica("a", port: a.port, health: true), try Self.replica("b", port: b.port)], logger: Self.logger)
        await pool.checkHealthOnce(on: MultiThreadedEventLoopGroup.singleton)
        #expect(pool.snapshot()[0].healthy == false)
        for _ in 0..<2 {
            let generation = try await TestGeneration.start(pool)
            #expect(await generation.log.waitForEnd().contains(.text("from b")))
        }
        healthy.withLock { $0 = true }
        await pool.checkHealthOnce(on: MultiThreadedEventLoopGroup.singleton)
        #expect(pool.snapshot()[0].healthy)
        let generation = try await TestGeneration.start(pool)
        #expect(await generation.log.waitForEnd().contains(.text("from a")))
    }
}
