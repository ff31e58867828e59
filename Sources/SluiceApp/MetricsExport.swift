import CoreMetrics
import NIOCore
import NIOHTTP1
import Prometheus
import Synchronization
import WSServer

/// The process's swift-metrics backend: a Prometheus registry, served at `GET /metrics` in the
/// text exposition format. swift-metrics allows one bootstrap per process, so the first server
/// started bootstraps it and later ones (tests) share the registry.
enum MetricsExport {
    private static let bootstrapped = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Bootstraps swift-metrics with Prometheus (once) and returns the registry to serve.
    /// Call before the server, chat application and storage are made: metric handles are
    /// bound to the backend when they are created.
    static func bootstrap() -> PrometheusCollectorRegistry {
        Self.bootstrapped.withLock { registry in
            if let registry { return registry }
            let made = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: made)
            // Token gaps and cancels are milliseconds; whole answers are seconds.
            let fine: [Duration] = [
                .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
                .milliseconds(2500),
            ]
            let coarse: [Duration] = [
                .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2),
                .seconds(5), .seconds(10), .seconds(20), .seconds(30), .seconds(60), .seconds(120),
            ]
            factory.durationHistogramBuckets = [
                "sluice_inter_token_gap_seconds": fine,
                "sluice_cancel_latency_seconds": fine,
                "sluice_storage_write_seconds": fine,
                "sluice_time_to_first_token_seconds": coarse,
                "llm_latency_seconds": coarse,
            ]
            MetricsSystem.bootstrap(factory)
            registry = made
            return made
        }
    }
}

/// `GET /metrics`.
struct MetricsRoute: HTTPRouteProvider {
    static let path = "/metrics"
    let registry: PrometheusCollectorRegistry
    /// Sets gauges that are read rather than kept up to date (the memory budget's use).
    var beforeScrape: @Sendable () -> Void = {}

    func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard path == Self.path else { return nil }
        return MetricsResponder(registry: self.registry, beforeScrape: self.beforeScrape)
    }
}

final class MetricsResponder: HTTPRouteResponder {
    let registry: PrometheusCollectorRegistry
    let beforeScrape: @Sendable () -> Void

    init(registry: PrometheusCollectorRegistry, beforeScrape: @escaping @Sendable () -> Void = {}) {
        self.registry = registry
        self.beforeScrape = beforeScrape
    }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        self.beforeScrape()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16 * 1024)
        self.registry.emit(into: &bytes)
        writer.respond(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: ByteBuffer(bytes: bytes))
    }

    func clientDisconnected() {}
}
