import Foundation
import Tracing

/// The OTLP/HTTP JSON encoding of `ExportTraceServiceRequest` (opentelemetry-proto,
/// `collector/trace/v1`): ids in lowercase hex, 64-bit integers as decimal strings, enums as
/// numbers, field names in lowerCamelCase, as the OTLP specification's JSON mapping says.
enum OTLPJSON {
    struct Resource: Encodable {
        var attributes: [KeyValue]
    }

    static func encode(_ spans: [FinishedSpan], resource: [KeyValue], scopeVersion: String) throws -> Data {
        let request = ExportRequest(resourceSpans: [ResourceSpans(
            resource: Resource(attributes: resource),
            scopeSpans: [ScopeSpans(scope: Scope(name: "sluice", version: scopeVersion), spans: spans.map(Span.init))])])
        return try JSONEncoder().encode(request)
    }

    private struct ExportRequest: Encodable {
        var resourceSpans: [ResourceSpans]
    }

    private struct ResourceSpans: Encodable {
        var resource: Resource
        var scopeSpans: [ScopeSpans]
    }

    private struct ScopeSpans: Encodable {
        var scope: Scope
        var spans: [Span]
    }

    private struct Scope: Encodable {
        var name: String
        var version: String
    }

    private struct Span: Encodable {
        var traceId: String
        var spanId: String
        var parentSpanId: String?
        var name: String
        var kind: Int
        var startTimeUnixNano: String
        var endTimeUnixNano: String
        var attributes: [KeyValue]
        var events: [Event]
        var links: [Link]
        var status: Status?

        init(_ span: FinishedSpan) {
            self.traceId = span.traceContext.traceIDHex
            self.spanId = span.traceContext.spanIDHex
            self.parentSpanId = span.parentSpanID.map(TraceContext.hex)
            self.name = span.name
            self.kind = OTLPJSON.kind(span.kind)
            self.startTimeUnixNano = String(span.startNanoseconds)
            self.endTimeUnixNano = String(span.endNanoseconds)
            self.attributes = OTLPJSON.keyValues(span.attributes)
            self.events = span.events.map {
                Event(timeUnixNano: String($0.nanosecondsSinceEpoch), name: $0.name, attributes: OTLPJSON.keyValues($0.attributes))
            }
            self.links = span.links.compactMap { link in
                guard let context = link.context.traceContext else { return nil }
                return Link(traceId: context.traceIDHex, spanId: context.spanIDHex, attributes: OTLPJSON.keyValues(link.attributes))
            }
            self.status = span.status.map { Status(code: $0.code == .ok ? 1 : 2, message: $0.message) }
        }
    }

    private struct Event: Encodable {
        var timeUnixNano: String
        var name: String
        var attributes: [KeyValue]
    }

    private struct Link: Encodable {
        var traceId: String
        var spanId: String
        var attributes: [KeyValue]
    }

    private struct Status: Encodable {
        var code: Int
        var message: String?
    }

    struct KeyValue: Encodable {
        var key: String
        var value: AnyValue
    }

    /// `AnyValue`: exactly one of its fields.
    enum AnyValue: Encodable {
        case string(String)
        case bool(Bool)
        case int(Int64)
        case double(Double)
        case array([AnyValue])

        private enum Keys: String, CodingKey {
            case stringValue, boolValue, intValue, doubleValue, arrayValue
        }

        private struct ArrayValue: Encodable {
            var values: [AnyValue]
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            switch self {
            case .string(let value): try container.encode(value, forKey: .stringValue)
            case .bool(let value): try container.encode(value, forKey: .boolValue)
            case .int(let value): try container.encode(String(value), forKey: .intValue)
            case .double(let value):
                // JSON has no NaN or infinity; the proto mapping spells them as strings.
                if value.isFinite {
                    try container.encode(value, forKey: .doubleValue)
                } else {
                    try container.encode(value.isNaN ? "NaN" : (value > 0 ? "Infinity" : "-Infinity"), forKey: .doubleValue)
                }
            case .array(let values): try container.encode(ArrayValue(values: values), forKey: .arrayValue)
            }
        }
    }

    static func kind(_ kind: SpanKind) -> Int {
        switch kind {
        case .internal: return 1
        case .server: return 2
        case .client: return 3
        case .producer: return 4
        case .consumer: return 5
        }
    }

    static func keyValues(_ attributes: SpanAttributes) -> [KeyValue] {
        var values: [KeyValue] = []
        attributes.forEach { key, attribute in
            if let value = Self.value(attribute) { values.append(KeyValue(key: key, value: value)) }
        }
        // Stable order: easier to read and to compare.
        return values.sorted { $0.key < $1.key }
    }

    static func value(_ attribute: SpanAttribute) -> AnyValue? {
        switch attribute {
        case .int32(let value): return .int(Int64(value))
        case .int64(let value): return .int(value)
        case .int32Array(let values): return .array(values.map { .int(Int64($0)) })
        case .int64Array(let values): return .array(values.map { .int($0) })
        case .double(let value): return .double(value)
        case .doubleArray(let values): return .array(values.map { .double($0) })
        case .bool(let value): return .bool(value)
        case .boolArray(let values): return .array(values.map { .bool($0) })
        case .string(let value): return .string(value)
        case .stringArray(let values): return .array(values.map { .string($0) })
        case .stringConvertible(let value): return .string(value.description)
        case .stringConvertibleArray(let values): return .array(values.map { .string($0.description) })
        default: return nil
        }
    }
}
