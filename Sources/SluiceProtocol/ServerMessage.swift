import NIOCore

/// Why a generation ended (`generation.done.finish_reason`).
public enum FinishReason: String, Sendable {
    case stop, length, cancelled, error
}

/// Token counts for `generation.done.usage`.
public struct Usage: Equatable, Sendable {
    public enum Source: String, Sendable {
        /// The upstream reported these counts.
        case upstream
        /// The gateway counted (completion) or estimated (prompt) them.
        case gateway
    }

    public var promptTokens: Int
    public var completionTokens: Int
    public var source: Source

    public init(promptTokens: Int, completionTokens: Int, source: Source) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.source = source
    }

    public var totalTokens: Int { self.promptTokens + self.completionTokens }
}

/// Writes server-to-client `sluice.v1` messages straight into a `ByteBuffer`. Hand-written for
/// the fixed shapes, so a delta costs one pass over its text (escaping) and no intermediate
/// objects. Fields that do not apply are left out, never written as null.
public enum ServerMessageEncoder {
    public static func sessionReady(sessionID: String, instanceID: String, heartbeatMs: Int64, model: String?, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"session.ready","session_id":"#)
        buffer.writeJSONString(sessionID)
        buffer.writeStaticString(#","instance_id":"#)
        buffer.writeJSONString(instanceID)
        buffer.writeStaticString(#","protocol":"sluice.v1","heartbeat_ms":"#)
        buffer.writeDecimal(heartbeatMs)
        if let model {
            buffer.writeStaticString(#","model":"#)
            buffer.writeJSONString(model)
        }
        buffer.writeStaticString("}")
    }

    public static func generationStarted(generationID: String, conversationID: String, requestID: String?, model: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"generation.started","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString(#","conversation_id":"#)
        buffer.writeJSONString(conversationID)
        if let requestID {
            buffer.writeStaticString(#","request_id":"#)
            buffer.writeJSONString(requestID)
        }
        buffer.writeStaticString(#","model":"#)
        buffer.writeJSONString(model)
        buffer.writeStaticString("}")
    }

    /// One delta; `firstSeq` is given when the delta merges several (seq stays contiguous).
    public static func generationDelta(generationID: String, seq: Int64, firstSeq: Int64?, text: Substring.UTF8View, into buffer: inout ByteBuffer) {
        Self.generationDeltaPrefix(generationID: generationID, into: &buffer)
        Self.generationDeltaRest(seq: seq, firstSeq: firstSeq, text: text, into: &buffer)
    }

    /// The constant start of a generation's deltas, to encode once and reuse with
    /// `generationDelta(prefix:…)`.
    public static func generationDeltaPrefix(generationID: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"generation.delta","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString(#","seq":"#)
    }

    /// A delta after a prefix from `generationDeltaPrefix`: same bytes as `generationDelta`.
    public static func generationDelta(prefix: ByteBuffer, seq: Int64, firstSeq: Int64?, text: Substring.UTF8View, into buffer: inout ByteBuffer) {
        buffer.writeImmutableBuffer(prefix)
        Self.generationDeltaRest(seq: seq, firstSeq: firstSeq, text: text, into: &buffer)
    }

    private static func generationDeltaRest(seq: Int64, firstSeq: Int64?, text: Substring.UTF8View, into buffer: inout ByteBuffer) {
        buffer.writeDecimal(seq)
        if let firstSeq, firstSeq != seq {
            buffer.writeStaticString(#","first_seq":"#)
            buffer.writeDecimal(firstSeq)
        }
        buffer.writeStaticString(#","text":"#)
        buffer.writeJSONString(text)
        buffer.writeStaticString("}")
    }

    public static func generationDone(
        generationID: String, seq: Int64, finishReason: FinishReason, usage: Usage,
        error: (code: ErrorCode, message: String)? = nil, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString(#"{"type":"generation.done","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString(#","seq":"#)
        buffer.writeDecimal(seq)
        buffer.writeStaticString(#","finish_reason":""#)
        buffer.writeString(finishReason.rawValue)
        buffer.writeStaticString(#"","usage":{"prompt_tokens":"#)
        buffer.writeDecimal(Int64(usage.promptTokens))
        buffer.writeStaticString(#","completion_tokens":"#)
        buffer.writeDecimal(Int64(usage.completionTokens))
        buffer.writeStaticString(#","total_tokens":"#)
        buffer.writeDecimal(Int64(usage.totalTokens))
        buffer.writeStaticString(#","usage_source":""#)
        buffer.writeString(usage.source.rawValue)
        buffer.writeStaticString(#""}"#)
        if let error {
            buffer.writeStaticString(#","error":{"code":""#)
            buffer.writeString(error.code.rawValue)
            buffer.writeStaticString(#"","message":"#)
            buffer.writeJSONString(error.message)
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("}")
    }

    public static func error(
        code: ErrorCode, message: String, requestID: String? = nil, generationID: String? = nil,
        retryAfterMs: Int64? = nil, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString(#"{"type":"error","code":""#)
        buffer.writeString(code.rawValue)
        buffer.writeStaticString(#"","message":"#)
        buffer.writeJSONString(message)
        if let requestID {
            buffer.writeStaticString(#","request_id":"#)
            buffer.writeJSONString(requestID)
        }
        if let generationID {
            buffer.writeStaticString(#","generation_id":"#)
            buffer.writeJSONString(generationID)
        }
        if let retryAfterMs {
            buffer.writeStaticString(#","retry_after_ms":"#)
            buffer.writeDecimal(retryAfterMs)
        }
        buffer.writeStaticString("}")
    }

    public static func pong(id: String?, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"pong""#)
        if let id {
            buffer.writeStaticString(#","id":"#)
            buffer.writeJSONString(id)
        }
        buffer.writeStaticString("}")
    }
}

extension ByteBuffer {
    /// Writes `"…"` with JSON escaping (RFC 8259 §7): quote, backslash and control characters;
    /// other UTF-8 bytes pass through unchanged.
    @inlinable
    public mutating func writeJSONString(_ string: String) {
        var string = string
        string.withUTF8 { self.writeJSONString(bytes: UnsafeRawBufferPointer($0)) }
    }

    @inlinable
    public mutating func writeJSONString(_ utf8: Substring.UTF8View) {
        if let done: Void = utf8.withContiguousStorageIfAvailable({ self.writeJSONString(bytes: UnsafeRawBufferPointer($0)) }) {
            return done
        }
        self.writeJSONString(String(Substring(utf8)))
    }

    @inlinable
    public mutating func writeJSONString(bytes: UnsafeRawBufferPointer) {
        self.reserveCapacity(minimumWritableBytes: bytes.count + 2)
        self.writeInteger(UInt8(ascii: "\""))
        var runStart = 0
        for index in 0..<bytes.count {
            let byte = bytes[index]
            guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
            if runStart < index { self.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[runStart..<index])) }
            runStart = index + 1
            switch byte {
            case UInt8(ascii: "\""): self.writeStaticString("\\\"")
            case UInt8(ascii: "\\"): self.writeStaticString("\\\\")
            case 0x0A: self.writeStaticString("\\n")
            case 0x0D: self.writeStaticString("\\r")
            case 0x09: self.writeStaticString("\\t")
            case 0x08: self.writeStaticString("\\b")
            case 0x0C: self.writeStaticString("\\f")
            default:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                self.writeStaticString("\\u00")
                self.writeInteger(hex[Int(byte >> 4)])
                self.writeInteger(hex[Int(byte & 0x0F)])
            }
        }
        if runStart < bytes.count { self.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[runStart...])) }
        self.writeInteger(UInt8(ascii: "\""))
    }

    /// Writes an integer in decimal without going through `String`.
    @inlinable
    public mutating func writeDecimal(_ value: Int64) {
        if value < 0 {
            self.writeInteger(UInt8(ascii: "-"))
            self.writeDecimal(UInt64(value.magnitude))
        } else {
            self.writeDecimal(UInt64(value))
        }
    }

    @inlinable
    mutating func writeDecimal(_ value: UInt64) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { out in
            repeat {
                out[19 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            self.writeBytes(UnsafeRawBufferPointer(rebasing: out[(20 - count)...]))
        }
    }
}
