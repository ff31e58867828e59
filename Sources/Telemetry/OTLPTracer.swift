import NIOConcurrencyHelpers
import Tracing

/// A swift-distributed-tracing `Tracer` that records spans and hands the finished ones to an
/// `OTLPExporter`. Propagates W3C `traceparent`: a span started under an extracted context joins
/// that trace, and `inject` writes the current span for the next hop (an upstream request).
///
/// Sampling is decided once per trace, at its root (`sampleRatio`), and then follows the
/// parent's `sampled` flag, as the W3C parent-based sampler does.
public final class OTLPTracer: Tracer, Sendable {
    public typealias Span = OTLPSpan

    let exporter: OTLPExporter
    let sampleRatio: Double

    public init(exporter: OTLPExporter, sampleRatio: Double = 1) {
        self.exporter = exporter
        self.sampleRatio = min(max(sampleRatio, 0), 1)
    }

    public func startSpan<Instant: TracerInstant>(
        _ operationName: String,
        context: @autoclosure () -> InstrumentationContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        function: String,
        file fileID: String,
        line: UInt
    ) -> OTLPSpan {
        var generator = SystemRandomNumberGenerator()
        var context = context()
        let parent = context.traceContext
        var spanID: UInt64 = 0
        while spanID == 0 { spanID = generator.next() }
        let traceContext: TraceContext
        if let parent {
            traceContext = TraceContext(
                traceIDHigh: parent.traceIDHigh, traceIDLow: parent.traceIDLow, spanID: spanID, sampled: parent.sampled)
        } else {
            var high: UInt64 = 0
            var low: UInt64 = 0
            while high == 0 && low == 0 {
                high = generator.next()
                low = generator.next()
            }
            let sampled = self.sampleRatio >= 1 || (self.sampleRatio > 0 && Double.random(in: 0..<1, using: &generator) < self.sampleRatio)
            traceContext = TraceContext(traceIDHigh: high, traceIDLow: low, spanID: spanID, sampled: sampled)
        }
        context.traceContext = traceContext
        return OTLPSpan(
            operationName: operationName, kind: kind, context: context, traceContext: traceContext,
            parentSpanID: parent?.spanID, start: instant().nanosecondsSinceEpoch,
            exporter: traceContext.sampled ? self.exporter : nil)
    }

    public func forceFlush() {
        self.exporter.exportSoon()
    }

    public func inject<Carrier, Inject: Injector>(
        _ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject
    ) where Carrier == Inject.Carrier {
        guard let traceContext = context.traceContext else { return }
        injector.inject(traceContext.traceparent, forKey: TraceContext.headerName, into: &carrier)
    }

    public func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract
    ) where Carrier == Extract.Carrier {
        guard let header = extractor.extract(key: TraceContext.headerName, from: carrier),
              let traceContext = TraceContext(traceparent: header)
        else { return }
        context.traceContext = traceContext
    }
}

/// A span as the exporter sends it.
public struct FinishedSpan: Sendable {
    public var name: String
    public var kind: SpanKind
    public var traceContext: TraceContext
    public var parentSpanID: UInt64?
    public var startNanoseconds: UInt64
    public var endNanoseconds: UInt64
    public var attributes: SpanAttributes
    public var events: [SpanEvent]
    public var links: [SpanLink]
    public var status: SpanStatus?
}

/// One span. Values are shared (a struct over one locked box), as the `Span` protocol wants;
/// a span that is not sampled records nothing but still carries its context onward.
public struct OTLPSpan: Tracing.Span {
    public let context: InstrumentationContext
    public let traceContext: TraceContext
    private let state: NIOLockedValueBox<State>
    private let exporter: OTLPExporter?

    private struct State {
        var span: FinishedSpan
        var ended = false
    }

    init(
        operationName: String, kind: SpanKind, context: InstrumentationContext, traceContext: TraceContext,
        parentSpanID: UInt64?, start: UInt64, exporter: OTLPExporter?
    ) {
        self.context = context
        self.traceContext = traceContext
        self.exporter = exporter
        self.state = NIOLockedValueBox(State(span: FinishedSpan(
            name: operationName, kind: kind, traceContext: traceContext, parentSpanID: parentSpanID,
            startNanoseconds: start, endNanoseconds: start, attributes: [:], events: [], links: [], status: nil)))
    }

    public var isRecording: Bool {
        self.exporter != nil && !self.state.withLockedValue { $0.ended }
    }

    public var operationName: String {
        get { self.state.withLockedValue { $0.span.name } }
        nonmutating set { self.update { $0.name = newValue } }
    }

    public var attributes: SpanAttributes {
        get { self.state.withLockedValue { $0.span.attributes } }
        nonmutating set { self.update { $0.attributes = newValue } }
    }

    public func setStatus(_ status: SpanStatus) {
        self.update { span in
            // OK is final, as the OpenTelemetry API says.
            if span.status?.code == .ok { return }
            span.status = status
        }
    }

    public func addEvent(_ event: SpanEvent) {
        self.update { $0.events.append(event) }
    }

    public func addLink(_ link: SpanLink) {
        self.update { $0.links.append(link) }
    }

    public func recordError<Instant: TracerInstant>(
        _ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant
    ) {
        guard self.exporter != nil else { return }
        var eventAttributes = attributes
        eventAttributes["exception.type"] = "\(type(of: error))"
        eventAttributes["exception.message"] = "\(error)"
        self.addEvent(SpanEvent(name: "exception", at: instant(), attributes: eventAttributes))
    }

    public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        guard let exporter = self.exporter else { return }
        let end = instant().nanosecondsSinceEpoch
        let finished: FinishedSpan? = self.state.withLockedValue { state in
            guard !state.ended else { return nil }
            state.ended = true
            state.span.endNanoseconds = max(end, state.span.startNanoseconds)
            return state.span
        }
        if let finished { exporter.enqueue(finished) }
    }

    private func update(_ body: (inout FinishedSpan) -> Void) {
        guard self.exporter != nil else { return }
        self.state.withLockedValue { state in
            guard !state.ended else { return }
            body(&state.span)
        }
    }
}
