import Metrics

extension Timer {
    func recordInterval(since start: NIODeadline) {
        self.recordNanoseconds((NIODeadline.now() - start).nanoseconds)
    }
}
import NIOConcurrencyHelpers
import NIOCore

/// The chat layer's metrics (swift-metrics; exported at `GET /metrics` by the executable's
/// Prometheus backend, a no-op without one). Labels are bounded: `model` is the upstream's
/// configured name (not the client's free-form `model`), `status` a finish reason or error code.
final class ChatMetrics: Sendable {
    /// One set of handlers per upstream name, made on first use.
    final class Upstream: Sendable {
        let latency: Timer
        let timeToFirstToken: Timer
        let readGap: Timer
        private let requests: NIOLockedValueBox<[String: Counter]>
        private let upstreamRequests: NIOLockedValueBox<[String: Counter]>
        let name: String

        private let cancels: Counter
        private let cancelLatency: Timer

        init(name: String, cancels: Counter, cancelLatency: Timer) {
            self.name = name
            self.cancels = cancels
            self.cancelLatency = cancelLatency
            self.latency = Timer(label: "llm_latency_seconds", dimensions: [("model", name)])
            self.timeToFirstToken = Timer(label: "sluice_time_to_first_token_seconds", dimensions: [("model", name)])
            self.readGap = Timer(label: "sluice_inter_token_gap_seconds", dimensions: [("model", name)])
            self.requests = NIOLockedValueBox([:])
            self.upstreamRequests = NIOLockedValueBox([:])
        }

        /// A cancel that ended a generation, and how long from the request to its end (the
        /// upstream request closed and `generation.done` written).
        func cancelled(latency: TimeAmount) {
            self.cancels.increment()
            self.cancelLatency.recordNanoseconds(latency.nanoseconds)
        }

        /// `llm_requests_total{model,status}`: one per generation, by how it ended.
        func request(status: String) {
            self.requests.withLockedValue { counters in
                if let counter = counters[status] { return counter }
                let counter = Counter(label: "llm_requests_total", dimensions: [("model", self.name), ("status", status)])
                counters[status] = counter
                return counter
            }.increment()
        }

        /// `sluice_upstream_requests_total{upstream,status}`: `ok` once the upstream accepted the
        /// request, else the error code it failed with before the first token.
        func upstreamRequest(status: String) {
            self.upstreamRequests.withLockedValue { counters in
                if let counter = counters[status] { return counter }
                let counter = Counter(label: "sluice_upstream_requests_total", dimensions: [("upstream", self.name), ("status", status)])
                counters[status] = counter
                return counter
            }.increment()
        }
    }

    private let upstreams = NIOLockedValueBox<[String: Upstream]>([:])
    let cancels = Counter(label: "sluice_cancels_total")
    let cancelLatency = Timer(label: "sluice_cancel_latency_seconds")
    let resumes = Counter(label: "sluice_resumes_total")
    let activeGenerations = Gauge(label: "sluice_active_generations")
    let activeConversations = Gauge(label: "active_conversations")
    /// User input refused by the input filter or the moderation service.
    let contentRejected = Counter(label: "sluice_content_rejected_total")
    /// Retained answers forgotten early because the memory budget needed the room.
    let retainedEvicted = Counter(label: "sluice_resume_evictions_total", dimensions: [("reason", "memory_budget")])
    /// Ended answers not retained for resuming because the memory budget could not hold them.
    let retainedNotKept = Counter(label: "sluice_resume_evictions_total", dimensions: [("reason", "not_retained")])
    /// Generations ended with `overloaded` because the memory budget could not hold their answer.
    let overBudget = Counter(label: "sluice_generations_over_memory_budget_total")

    func upstream(_ name: String) -> Upstream {
        self.upstreams.withLockedValue { upstreams in
            if let existing = upstreams[name] { return existing }
            let made = Upstream(name: name, cancels: self.cancels, cancelLatency: self.cancelLatency)
            upstreams[name] = made
            return made
        }
    }
}
