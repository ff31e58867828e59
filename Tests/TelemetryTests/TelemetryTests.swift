import Foundation
import Logging
import NIOCore
import NIOPosix
import SluiceTestSupport
import Testing
import Tracing
@testable import Telemetry

@Suite struct TraceContextTests {
    @Test func traceparentRoundTrips() throws {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let context = try #require(TraceContext(traceparent: header))
        #expect(context.traceIDHex == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(context.spanIDHex == "00f067aa0ba902b7")
        #expect(context.sampled)
        #expect(context.traceparent == header)
        let unsampled = try #require(TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"))
        #expect(!unsampled.sampled)
        // A later version is read by its version-00 prefix.
        #expect(TraceContext(traceparent: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") != nil)
    }

    @Test(arguments: [
        "", "00", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",   // short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // version 00 has 4 fields
        "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
    ])
    func malformedTraceparentIsIgnored(_ header: String) {
        #expect(TraceContext(traceparent: header) == nil)
    }
}

@Suite struct OTLPTracerTests {
    private func exporter(endpoint: String = "http://127.0.0.1:1", maxQueued: Int = 8192) throws -> OTLPExporter {
        var configuration = OTLPExporter.Configuration(endpoint: endpoint)
        configuration.maxQueuedSpans = maxQueued
        return try OTLPExporter(configuration: configuration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"))
    }

    @Test func childJoinsParentTraceAndInjectsItself() throws {
        let tracer = OTLPTracer(exporter: try self.exporter())
        var incoming = InstrumentationContext.topLevel
        tracer.extract(["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], into: &incoming,
                       using: DictionaryHeaderExtractor())
        let span = tracer.startSpan("child", context: incoming)
        #expect(span.traceContext.traceIDHex == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(span.traceContext.spanID != 0x00f0_67aa_0ba9_02b7)
        #expect(span.isRecording)
        var outgoing: [String: String] = [:]
        tracer.inject(span.context, into: &outgoing, using: DictionaryHeaderInjector())
        #expect(outgoing["traceparent"] == span.traceContext.traceparent)
        span.end()
        #expect(!span.isRecording)
    }

    @Test func rootSpansStartNewTracesAndSamplingFollowsTheParent() throws {
        let exporter = try self.exporter()
        let tracer = OTLPTracer(exporter: exporter, sampleRatio: 0)
        let root = tracer.startSpan("root", context: .topLevel)
        #expect(!root.isRecording)
        #expect(!root.traceContext.sampled)
        // Not recorded, but still propagated (so the next hop knows it was not sampled).
        var outgoing: [String: String] = [:]
        tracer.inject(root.context, into: &outgoing, using: DictionaryHeaderInjector())
        #expect(outgoing["traceparent"]?.hasSuffix("-00") == true)
        root.attributes["ignored"] = 1
        root.end()
        // A sampled parent wins over the ratio.
        var incoming = InstrumentationContext.topLevel
        incoming.traceContext = TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        let child = tracer.startSpan("child", context: incoming)
        #expect(child.isRecording)
        child.end()
        #expect(exporter.queuedCount == 1)

        let sampling = OTLPTracer(exporter: try self.exporter(), sampleRatio: 1)
        let a = sampling.startSpan("a", context: .topLevel)
        let b = sampling.startSpan("b", context: .topLevel)
        #expect(a.traceContext.traceIDHex != b.traceContext.traceIDHex)
        #expect(a.isRecording && b.isRecording)
    }

    @Test func aFullQueueDropsSpansInsteadOfGrowing() throws {
        let exporter = try self.exporter(maxQueued: 3)
        let tracer = OTLPTracer(exporter: exporter)
        for index in 0..<10 {
            tracer.startSpan("span \(index)", context: .topLevel).end()
        }
        #expect(exporter.queuedCount == 3)
    }

    @Test func endpointURLs() throws {
        let plain = try OTLPExporter.target("http://127.0.0.1:4318")
        #expect(plain.host == "127.0.0.1" && plain.port == 4318 && plain.path == "/v1/traces" && !plain.tls)
        let custom = try OTLPExporter.target("https://collector.example/otlp/v1/traces")
        #expect(custom.port == 443 && custom.path == "/otlp/v1/traces" && custom.tls)
        let v6 = try OTLPExporter.target("http://[::1]:4318/")
        #expect(v6.host == "::1" && v6.path == "/v1/traces")
        #expect(throws: OTLPExporter.InvalidEndpoint.self) { try OTLPExporter.target("grpc://127.0.0.1:4317") }
        #expect(throws: OTLPExporter.InvalidEndpoint.self) { try OTLPExporter.target("not a url") }
    }
}

@Suite struct OTLPExportTests {
    @Test func spansArePostedAsOTLPJSON() async throws {
        let collector = try await FakeUpstream.start { _ in
            [.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"), .close]
        }
        defer { Task { await collector.stop() } }
        var configuration = OTLPExporter.Configuration(endpoint: "http://127.0.0.1:\(collector.port)")
        configuration.serviceInstanceID = "gw-1"
        configuration.headers = ["X-Api-Key": "k"]
        let exporter = try OTLPExporter(configuration: configuration, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"))
        let tracer = OTLPTracer(exporter: exporter)
        let parent = tracer.startSpan("request", context: .topLevel, ofKind: .server)
        let span = tracer.startSpan("chat.generation", context: parent.context, ofKind: .client)
        span.attributes["gen_ai.request.model"] = "smol"
        span.attributes["gen_ai.usage.output_tokens"] = 42
        span.attributes["sluice.cached"] = false
        span.attributes["sluice.ratio"] = 0.5
        span.addEvent(SpanEvent(name: "first_token", attributes: ["sluice.seq": 1]))
        span.setStatus(SpanStatus(code: .error, message: "upstream_error"))
        span.end()
        parent.end()
        await exporter.exportPending()
        #expect(exporter.queuedCount == 0)

        let request = try #require(collector.requests.first)
        #expect(request.method == .POST && request.uri == "/v1/traces")
        #expect(request.headers.first(name: "Content-Type") == "application/json")
        #expect(request.headers.first(name: "X-Api-Key") == "k")
        let body = try #require(request.json)
        let resourceSpans = try #require((body["resourceSpans"] as? [[String: Any]])?.first)
        let resource = try #require((resourceSpans["resource"] as? [String: Any])?["attributes"] as? [[String: Any]])
        #expect(Self.attribute("service.name", in: resource)?["stringValue"] as? String == "sluice")
        #expect(Self.attribute("service.instance.id", in: resource)?["stringValue"] as? String == "gw-1")
        let scope = try #require((resourceSpans["scopeSpans"] as? [[String: Any]])?.first)
        let spans = try #require(scope["spans"] as? [[String: Any]])
        #expect(spans.count == 2)
        let generation = try #require(spans.first { $0["name"] as? String == "chat.generation" })
        let request_ = try #require(spans.first { $0["name"] as? String == "request" })
        #expect(generation["traceId"] as? String == parent.traceContext.traceIDHex)
        #expect(generation["parentSpanId"] as? String == parent.traceContext.spanIDHex)
        #expect(request_["parentSpanId"] == nil)
        #expect(generation["kind"] as? Int == 3 && request_["kind"] as? Int == 2)
        let start = try #require(UInt64(generation["startTimeUnixNano"] as? String ?? ""))
        let end = try #require(UInt64(generation["endTimeUnixNano"] as? String ?? ""))
        #expect(start > 1_700_000_000 * 1_000_000_000 && end >= start)
        let attributes = try #require(generation["attributes"] as? [[String: Any]])
        #expect(Self.attribute("gen_ai.request.model", in: attributes)?["stringValue"] as? String == "smol")
        #expect(Self.attribute("gen_ai.usage.output_tokens", in: attributes)?["intValue"] as? String == "42")
        #expect(Self.attribute("sluice.cached", in: attributes)?["boolValue"] as? Bool == false)
        #expect(Self.attribute("sluice.ratio", in: attributes)?["doubleValue"] as? Double == 0.5)
        let events = try #require(generation["events"] as? [[String: Any]])
        #expect(events.first?["name"] as? String == "first_token")
        let status = try #require(generation["status"] as? [String: Any])
        #expect(status["code"] as? Int == 2 && status["message"] as? String == "upstream_error")
    }

    @Test func aFailingCollectorDropsTheBatchAndKeepsGoing() async throws {
        let collector = try await FakeUpstream.start { _ in
            [.write("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), .close]
        }
        defer { Task { await collector.stop() } }
        let exporter = try OTLPExporter(
            configuration: .init(endpoint: "http://127.0.0.1:\(collector.port)"), eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: Logger(label: "test"))
        let tracer = OTLPTracer(exporter: exporter)
        tracer.startSpan("one", context: .topLevel).end()
        await exporter.exportPending()
        #expect(collector.requests.count == 1)
        #expect(exporter.queuedCount == 0)
        // A collector that is not there at all: the same, after the connect fails.
        await collector.stop()
        tracer.startSpan("two", context: .topLevel).end()
        await exporter.exportPending()
        #expect(exporter.queuedCount == 0)
    }

    static func attribute(_ key: String, in list: [[String: Any]]) -> [String: Any]? {
        list.first { $0["key"] as? String == key }?["value"] as? [String: Any]
    }
}
