import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceProtocol

/// One upstream server of a pool.
public struct ReplicaSpec: Sendable {
    public var name: String
    public var engine: any InferenceEngine
    /// Where `GET` health checks go (nil: none, the replica counts as healthy).
    public var healthURL: URL?
    /// Generations it may run at once (0: no cap).
    public var maxConcurrency: Int

    public init(name: String, engine: any InferenceEngine, healthURL: URL? = nil, maxConcurrency: Int = 0) {
        self.name = name
        self.engine = engine
        self.healthURL = healthURL
        self.maxConcurrency = maxConcurrency
    }
}



/// Several replicas serving one model, as one engine: each generation goes to the healthy
/// replica with the fewest outstanding requests whose circuit is closed (or half-open and free
/// for a probe) and which is under its cap. A replica that fails **before the first token**
/// (refused connection, HTTP 5xx or 429, timeout) is marked and the generation is retried once
/// on another, so the client sees nothing; after the first token a failure is the client's
/// (tokens were already streamed). When every replica is at its cap the generation is refused
/// with `overloaded` (retryable) rather than queued without bound.
public final class ReplicaPool: InferenceEngine, Sendable {
    final class Replica: Sendable {
        let spec: ReplicaSpec
        let endpoint: UpstreamEndpoint?
        struct State {
            var outstanding = 0
            var healthy = true
            var circuit: CircuitBreaker
        }
        let state: NIOLockedValueBox<State>
        let circuitGauge: Gauge
        let outstandingGauge: Gauge
        private let requests = NIOLockedValueBox<[String: Counter]>([:])

        init(_ spec: ReplicaSpec, pool: String, circuit: CircuitBreaker.Settings) {
            self.spec = spec
            self.endpoint = spec.healthURL.flatMap { try? UpstreamEndpoint(baseURL: $0, trustRoots: .default) }
            self.state = NIOLockedValueBox(State(circuit: CircuitBreaker(settings: circuit)))
            self.circuitGauge = Gauge(label: "sluice_upstream_circuit_state", dimensions: [("pool", pool), ("replica", spec.name)])
            self.outstandingGauge = Gauge(label: "sluice_upstream_outstanding", dimensions: [("pool", pool), ("replica", spec.name)])
            self.circuitGauge.record(0)
            self.outstandingGauge.record(0)
        }

        func count(_ status: String, pool: String) {
            self.requests.withLockedValue { counters in
                if let counter = counters[status] { return counter }
                let counter = Counter(label: "sluice_upstream_replica_requests_total", dimensions: [
                    ("pool", pool), ("replica", self.spec.name), ("status", status),
                ])
                counters[status] = counter
                return counter
            }.increment()
        }
    }

    public let name: String
    let replicas: [Replica]
    private let logger: Logger
    /// The circuit breakers' clock (a test's own, to step through cool-downs without sleeping).
    private let now: @Sendable () -> NIODeadline

    public init(
        name: String, replicas: [ReplicaSpec], circuit: CircuitBreaker.Settings = .init(), logger: Logger,
        clock now: @escaping @Sendable () -> NIODeadline = { .now() }
    ) {
        precondition(!replicas.isEmpty, "a pool needs at least one replica")
        self.name = name
        self.replicas = replicas.map { Replica($0, pool: name, circuit: circuit) }
        self.logger = logger
        self.now = now
    }

    public var defaultModel: String { self.replicas[0].spec.engine.defaultModel }
    public var replicaNames: [String] { self.replicas.map(\.spec.name) }
    public var hasHealthChecks: Bool { self.replicas.contains { $0.endpoint != nil } }

    public func startGeneration(_ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink) -> any GenerationHandle {
        let attempt = PoolAttempt(pool: self, request: request, eventLoop: eventLoop, sink: sink)
        attempt.start()
        return attempt
    }

    public enum Choice {
        case replica(Int)
        /// Every replica that could take it is at its cap.
        case full
        /// None usable (circuits open).
        case none
    }

    /// The replica for the next attempt (reserving its slot and, if half-open, its probe).
    func choose(excluding tried: Set<Int>) -> Choice {
        let now = self.now()
        // Healthy ones first; if health checks fail everywhere, still try (fail open): a
        // misconfigured health path must not take the whole pool down.
        var sawCapped = false
        for onlyHealthy in [true, false] {
            var best: (index: Int, outstanding: Int)?
            for (index, replica) in self.replicas.enumerated() where !tried.contains(index) {
                let (usable, outstanding, capped) = replica.state.withLockedValue { state -> (Bool, Int, Bool) in
                    let capped = replica.spec.maxConcurrency > 0 && state.outstanding >= replica.spec.maxConcurrency
                    return ((!onlyHealthy || state.healthy) && state.circuit.wouldAllow(now: now) && !capped, state.outstanding, capped)
                }
                if capped { sawCapped = true }
                if usable, best.map({ outstanding < $0.outstanding }) ?? true { best = (index, outstanding) }
            }
            if let best {
                let reserved = self.replicas[best.index].state.withLockedValue { state -> Bool in
                    guard state.circuit.allowRequest(now: now) else { return false }
                    state.outstanding += 1
                    return true
                }
                if reserved {
                    self.publish(best.index)
                    return .replica(best.index)
                }
            }
        }
        return sawCapped ? .full : .none
    }

    enum Outcome {
        case connected
        case failed
        case abandoned
        case done
    }

    /// Updates the replica after an attempt: the circuit (connected: success; failed before or
    /// after connecting: failure) and, unless it only connected, its outstanding count.
    func report(_ index: Int, _ outcome: Outcome) {
        let now = self.now()
        let replica = self.replicas[index]
        replica.state.withLockedValue { state in
            switch outcome {
            case .connected: state.circuit.recordSuccess()
            case .failed:
                state.circuit.recordFailure(now: now)
                state.outstanding -= 1
            case .abandoned:
                state.circuit.recordAbandoned()
                state.outstanding -= 1
            case .done:
                state.outstanding -= 1
            }
        }
        self.publish(index)
    }

    private func publish(_ index: Int) {
        let replica = self.replicas[index]
        let (circuit, outstanding) = replica.state.withLockedValue { ($0.circuit.state.gaugeValue, $0.outstanding) }
        replica.circuitGauge.record(circuit)
        replica.outstandingGauge.record(outstanding)
    }

    func replicaName(_ index: Int) -> String { self.replicas[index].spec.name }
    func engine(_ index: Int) -> any InferenceEngine { self.replicas[index].spec.engine }
    func count(_ index: Int, _ status: String) { self.replicas[index].count(status, pool: self.name) }
    var log: Logger { self.logger }

    /// Whether a replica's state (for tests and `/v1/stats`).
    public func snapshot() -> [(name: String, healthy: Bool, outstanding: Int, circuit: CircuitBreaker.State)] {
        self.replicas.map { replica in
            replica.state.withLockedValue { (replica.spec.name, $0.healthy, $0.outstanding, $0.circuit.state) }
        }
    }

    // MARK: Health checks

    /// `GET healthURL` on every replica that has one, every `interval`, until cancelled. A 2xx
    /// marks it healthy; anything else (or no answer within `timeout`) unhealthy.
    public func runHealthChecks(every interval: TimeAmount, timeout: TimeAmount = .seconds(2), on eventLoopGroup: any EventLoopGroup) async {
        while !Task.isCancelled {
            await self.checkHealthOnce(timeout: timeout, on: eventLoopGroup)
            try? await Task.sleep(nanoseconds: UInt64(max(interval.nanoseconds, 1_000_000)))
        }
    }

    public func checkHealthOnce(timeout: TimeAmount = .seconds(2), on eventLoopGroup: any EventLoopGroup) async {
        for (index, replica) in self.replicas.enumerated() {
            guard let endpoint = replica.endpoint, let url = replica.spec.healthURL else { continue }
            let head = endpoint.requestHead(.GET, path: url.path.isEmpty ? "/" : url.path, apiKey: nil, bodyLength: nil, accept: "*/*")
            let healthy: Bool
            do {
                let response = try await HTTPFetch.fetch(
                    head, from: endpoint, timeouts: UpstreamTimeouts(connect: timeout, timeToFirstToken: timeout, betweenTokens: timeout),
                    on: eventLoopGroup.next()).get()
                healthy = (200..<300).contains(response.status)
            } catch {
                healthy = false
            }
            let changed = replica.state.withLockedValue { state -> Bool in
                defer { state.healthy = healthy }
                return state.healthy != healthy
            }
            if changed {
                self.logger.notice(healthy ? "upstream replica healthy again" : "upstream replica failed its health check", metadata: [
                    "sluice.pool": "\(self.name)", "sluice.replica": "\(replica.spec.name)",
                ])
            }
            self.publish(index)
        }
    }
}

/// One generation through a pool: the attempt on a replica, and the retry on another when the
/// first fails before the upstream accepted the request. All on the generation's event loop.
final class PoolAttempt: GenerationSink, GenerationHandle {
    private let pool: ReplicaPool
    private let request: GenerationRequest
    private let eventLoop: any EventLoop
    private let sink: any GenerationSink
    private var replica: Int?
    private var tried: Set<Int> = []
    private var handle: (any GenerationHandle)?
    private var connected = false
    private var finished = false

    init(pool: ReplicaPool, request: GenerationRequest, eventLoop: any EventLoop, sink: any GenerationSink) {
        self.pool = pool
        self.request = request
        self.eventLoop = eventLoop
        self.sink = sink
    }

    func start() {
        switch self.pool.choose(excluding: self.tried) {
        case .replica(let index):
            self.replica = index
            self.tried.insert(index)
            self.pool.log.debug("upstream replica chosen", metadata: [
                "sluice.pool": "\(self.pool.name)", "sluice.replica": "\(self.pool.replicaName(index))", "sluice.attempt": "\(self.tried.count)",
            ])
            let handle = self.pool.engine(index).startGeneration(self.request, on: self.eventLoop, sink: self)
            if self.finished { handle.cancel() } else { self.handle = handle }
        case .full:
            self.finish(failing: InferenceError(.overloaded, "every replica of \(self.pool.name) is at its concurrency limit"))
        case .none:
            self.finish(failing: InferenceError(.unavailable, "no replica of \(self.pool.name) is available (circuits open)"))
        }
    }

    func cancel() {
        guard !self.finished else { return }
        self.finished = true
        self.handle?.cancel()
        self.handle = nil
        if let replica = self.replica {
            self.pool.report(replica, self.connected ? .done : .abandoned)
            self.pool.count(replica, "cancelled")
            self.replica = nil
        }
    }

    private func finish(failing error: InferenceError) {
        guard !self.finished else { return }
        self.finished = true
        self.sink.generationDidFail(error)
    }

    // MARK: GenerationSink (from the replica's engine)

    func generationDidConnect() {
        guard !self.finished, let replica = self.replica else { return }
        self.connected = true
        self.pool.report(replica, .connected)
        self.sink.generationDidConnect()
    }

    func generationDidProduce(_ text: Substring) {
        guard !self.finished else { return }
        self.sink.generationDidProduce(text)
    }

    func generationDidReportUsage(promptTokens: Int, completionTokens: Int) {
        guard !self.finished else { return }
        self.sink.generationDidReportUsage(promptTokens: promptTokens, completionTokens: completionTokens)
    }

    func generationDidEndBatch() {
        guard !self.finished else { return }
        self.sink.generationDidEndBatch()
    }

    func generationDidRequestToolCalls(_ calls: [ToolCall]) {
        guard !self.finished else { return }
        self.sink.generationDidRequestToolCalls(calls)
    }

    func generationDidFinish(_ reason: FinishReason) {
        guard !self.finished else { return }
        self.finished = true
        if let replica = self.replica {
            self.pool.report(replica, .done)
            self.pool.count(replica, "ok")
        }
        self.handle = nil
        self.sink.generationDidFinish(reason)
    }

    func generationDidFail(_ error: InferenceError) {
        guard !self.finished, let replica = self.replica else { return }
        self.handle = nil
        self.replica = nil
        self.pool.report(replica, .failed)
        self.pool.count(replica, error.code.rawValue)
        if !self.connected && Self.worthRetrying(error) && self.tried.count < 2 && self.tried.count < self.pool.replicas.count {
            self.pool.log.notice("upstream replica failed before the first token; retrying on another", metadata: [
                "sluice.pool": "\(self.pool.name)", "sluice.replica": "\(self.pool.replicaName(replica))",
                "sluice.error": "\(error.message)",
            ])
            self.start()
            return
        }
        self.finished = true
        self.sink.generationDidFail(error)
    }

    /// Failures another replica may not have: connection, overload, server errors, timeouts;
    /// not a 4xx, which the next replica would answer the same way.
    static func worthRetrying(_ error: InferenceError) -> Bool {
        switch error.kind {
        case .unavailable, .timeout, .overloaded: return true
        case .upstreamError(let status):
            guard let status else { return true }
            return status == 429 || status >= 500
        }
    }
}

@available(*, unavailable)
extension PoolAttempt: Sendable {}
