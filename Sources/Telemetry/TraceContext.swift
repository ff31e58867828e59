import Tracing

/// A W3C Trace Context (`traceparent`): which trace a span belongs to and which span is its
/// parent, carried in an `InstrumentationContext` and in HTTP headers across processes.
public struct TraceContext: Hashable, Sendable {
    /// 16 bytes, as two big-endian halves (never both zero).
    public var traceIDHigh: UInt64
    public var traceIDLow: UInt64
    /// 8 bytes (never zero).
    public var spanID: UInt64
    /// The `sampled` flag: whether spans of this trace are recorded and exported.
    public var sampled: Bool

    public init(traceIDHigh: UInt64, traceIDLow: UInt64, spanID: UInt64, sampled: Bool) {
        self.traceIDHigh = traceIDHigh
        self.traceIDLow = traceIDLow
        self.spanID = spanID
        self.sampled = sampled
    }

    public static let headerName = "traceparent"

    /// 32 lowercase hex digits, as OTLP/JSON and `traceparent` write it.
    public var traceIDHex: String { Self.hex(self.traceIDHigh) + Self.hex(self.traceIDLow) }
    public var spanIDHex: String { Self.hex(self.spanID) }

    /// `00-<trace id>-<span id>-<flags>`.
    public var traceparent: String {
        "00-\(self.traceIDHex)-\(self.spanIDHex)-\(self.sampled ? "01" : "00")"
    }

    /// Parses a `traceparent` header; nil for anything malformed (the spec says: then start a
    /// new trace, do not fail the request). Versions above 00 are read by their 00 prefix.
    public init?(traceparent: String) {
        let parts = traceparent.utf8.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false)
        guard parts.count >= 4,
              parts[0].count == 2, parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
              let version = Self.parseHex(parts[0]), version != 0xFF,
              version != 0 || parts.count == 4,
              let high = Self.parseHex(parts[1].prefix(16)), let low = Self.parseHex(parts[1].dropFirst(16)),
              let span = Self.parseHex(parts[2]), let flags = Self.parseHex(parts[3]),
              high != 0 || low != 0, span != 0
        else { return nil }
        self.init(traceIDHigh: high, traceIDLow: low, spanID: span, sampled: flags & 1 == 1)
    }

    static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// Lowercase hex only, as the spec requires.
    private static func parseHex(_ bytes: Substring.UTF8View) -> UInt64? {
        var value: UInt64 = 0
        for byte in bytes {
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }
}

private enum TraceContextKey: InstrumentationContextKey {
    typealias Value = TraceContext
    static let nameOverride: String? = "w3c-trace-context"
}

extension InstrumentationContext {
    /// The span this context belongs to, when it belongs to one.
    public var traceContext: TraceContext? {
        get { self[TraceContextKey.self] }
        set { self[TraceContextKey.self] = newValue }
    }
}

/// Reads and writes `traceparent` in a plain `[String: String]` (header names lowercased).
public struct DictionaryHeaderExtractor: Extractor {
    public init() {}
    public func extract(key: String, from carrier: [String: String]) -> String? { carrier[key.lowercased()] }
}

public struct DictionaryHeaderInjector: Injector {
    public init() {}
    public func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key.lowercased()] = value
    }
}
