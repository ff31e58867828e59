import NIOCore

/// Why a generation ended (`generation.done.finish_reason`).
public enum FinishReason: String, Sendable {
    case stop, length, cancelled, error
    /// The model called tools the client defined (the OpenAI door's `tools`): the client runs
    /// them and sends the results in its next request. Never on `sluice.v1`, whose tools are the gateway's.
    case toolCalls = "tool_calls"
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

    /// Counts are clamped to `0...maximumTokens` (an upstream may report anything).
    public init(promptTokens: Int, completionTokens: Int, source: Source) {
        self.promptTokens = Self.clamped(promptTokens)
        self.completionTokens = Self.clamped(completionTokens)
        self.source = source
    }

    /// The largest token count kept (about a billion, far past any context window): two of
    /// them still add up within a 32-bit column (`prompt_tokens + completion_tokens` in SQL).
    public static let maximumTokens = Int(Int32.max) / 2

    public static func clamped(_ tokens: Int) -> Int {
        min(max(tokens, 0), Self.maximumTokens)
    }

    public var totalTokens: Int { self.promptTokens.addingSaturating(self.completionTokens) }
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
        var prefix = ByteBuffer()
        Self.generationDeltaPrefix(generationID: generationID, into: &prefix)
        Self.generationDelta(prefix: prefix, seq: seq, firstSeq: firstSeq, text: text, into: &buffer)
    }

    /// The constant start of a generation's deltas, to encode once and reuse with
    /// `generationDelta(prefix:…)`.
    public static func generationDeltaPrefix(generationID: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"generation.delta","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString(#","seq":"#)
    }

    /// A delta after a prefix from `generationDeltaPrefix`: same bytes as `generationDelta`.
    /// The hot path of streaming: every piece goes through one raw write (one capacity check and
    /// one exclusivity check per delta instead of one per field).
    public static func generationDelta(prefix: ByteBuffer, seq: Int64, firstSeq: Int64?, text: Substring.UTF8View, into buffer: inout ByteBuffer) {
        let written: Void? = text.withContiguousStorageIfAvailable { text in
            prefix.withUnsafeReadableBytes { prefix in
                Self.writeDelta(prefix: prefix, seq: seq, firstSeq: firstSeq, text: UnsafeRawBufferPointer(text), into: &buffer)
            }
        }
        if written == nil {
            var copy = String(Substring(text))
            copy.withUTF8 { text in
                prefix.withUnsafeReadableBytes { prefix in
                    Self.writeDelta(prefix: prefix, seq: seq, firstSeq: firstSeq, text: UnsafeRawBufferPointer(text), into: &buffer)
                }
            }
        }
    }

    @inline(__always)
    private static func writeDelta(
        prefix: UnsafeRawBufferPointer, seq: Int64, firstSeq: Int64?, text: UnsafeRawBufferPointer, into buffer: inout ByteBuffer
    ) {
        // prefix + two 20-digit numbers + the constant keys + the escaped text.
        let maximum = prefix.count + 2 * RawJSONWriter.maximumDecimalLength + 24 + RawJSONWriter.maximumEscapedLength(text)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: maximum) { out in
            var writer = RawJSONWriter(out)
            writer.write(prefix)
            writer.writeDecimal(seq)
            if let firstSeq, firstSeq != seq {
                writer.write(#","first_seq":"#)
                writer.writeDecimal(firstSeq)
            }
            writer.write(#","text":"#)
            writer.writeJSONString(text)
            writer.write("}")
            return writer.count
        }
    }

    public static func generationDone(
        generationID: String, seq: Int64, finishReason: FinishReason, usage: Usage,
        error: (code: ErrorCode, message: String)? = nil, cached: Bool = false, into buffer: inout ByteBuffer
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
        if cached { buffer.writeStaticString(#","cached":true"#) }
        buffer.writeStaticString("}")
    }

    public static func error(
        code: ErrorCode, message: String, requestID: String? = nil, generationID: String? = nil,
        conversationID: String? = nil, earliestSeq: Int64? = nil, retryAfterMs: Int64? = nil, into buffer: inout ByteBuffer
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
        if let conversationID {
            buffer.writeStaticString(#","conversation_id":"#)
            buffer.writeJSONString(conversationID)
        }
        if let earliestSeq {
            buffer.writeStaticString(#","earliest_seq":"#)
            buffer.writeDecimal(earliestSeq)
        }
        if let retryAfterMs {
            buffer.writeStaticString(#","retry_after_ms":"#)
            buffer.writeDecimal(retryAfterMs)
        }
        buffer.writeStaticString("}")
    }

    /// `conversation.subscribed` / `conversation.unsubscribed`.
    public static func conversationSubscription(subscribed: Bool, conversationID: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(subscribed ? #"{"type":"conversation.subscribed","conversation_id":"# : #"{"type":"conversation.unsubscribed","conversation_id":"#)
        buffer.writeJSONString(conversationID)
        buffer.writeStaticString("}")
    }

    /// Sent before Close 1012 when the instance drains: reconnect elsewhere and resume.
    public static func sessionDraining(retryAfterMs: Int64, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"session.draining","reconnect_after_ms":"#)
        buffer.writeDecimal(retryAfterMs)
        buffer.writeStaticString("}")
    }

    /// `conversation.list.result`: one page of the user's conversations, newest activity first.
    public static func conversationListResult(
        requestID: String?, conversations: [ConversationListing], next: String?, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString(#"{"type":"conversation.list.result""#)
        Self.writeRequestID(requestID, into: &buffer)
        buffer.writeStaticString(#","conversations":["#)
        for (index, conversation) in conversations.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString(#"{"id":"#)
            buffer.writeJSONString(conversation.id)
            buffer.writeStaticString(#","title":"#)
            if let title = conversation.title { buffer.writeJSONString(title) } else { buffer.writeStaticString("null") }
            buffer.writeStaticString(#","created_at":"#)
            buffer.writeTimestamp(microseconds: conversation.createdAtMicroseconds)
            buffer.writeStaticString(#","updated_at":"#)
            buffer.writeTimestamp(microseconds: conversation.updatedAtMicroseconds)
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("]")
        Self.writeNext(next, into: &buffer)
        buffer.writeStaticString("}")
    }

    /// `conversation.history.result`: one page of a conversation's messages, newest first.
    public static func conversationHistoryResult(
        requestID: String?, conversationID: String, messages: [MessageListing], next: String?, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString(#"{"type":"conversation.history.result""#)
        Self.writeRequestID(requestID, into: &buffer)
        buffer.writeStaticString(#","conversation_id":"#)
        buffer.writeJSONString(conversationID)
        buffer.writeStaticString(#","messages":["#)
        for (index, message) in messages.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString(#"{"id":"#)
            buffer.writeJSONString(message.id)
            buffer.writeStaticString(#","role":"#)
            buffer.writeJSONString(message.role)
            buffer.writeStaticString(#","content":"#)
            buffer.writeJSONString(message.content)
            if let finishReason = message.finishReason {
                buffer.writeStaticString(#","finish_reason":"#)
                buffer.writeJSONString(finishReason)
            }
            if let model = message.model {
                buffer.writeStaticString(#","model":"#)
                buffer.writeJSONString(model)
            }
            if message.promptTokens != nil || message.completionTokens != nil {
                buffer.writeStaticString(#","usage":{"prompt_tokens":"#)
                buffer.writeDecimal(Int64(message.promptTokens ?? 0))
                buffer.writeStaticString(#","completion_tokens":"#)
                buffer.writeDecimal(Int64(message.completionTokens ?? 0))
                buffer.writeStaticString("}")
            }
            buffer.writeStaticString(#","created_at":"#)
            buffer.writeTimestamp(microseconds: message.createdAtMicroseconds)
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("]")
        Self.writeNext(next, into: &buffer)
        buffer.writeStaticString("}")
    }

    private static func writeRequestID(_ requestID: String?, into buffer: inout ByteBuffer) {
        guard let requestID else { return }
        buffer.writeStaticString(#","request_id":"#)
        buffer.writeJSONString(requestID)
    }

    private static func writeNext(_ next: String?, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#","next":"#)
        if let next { buffer.writeJSONString(next) } else { buffer.writeStaticString("null") }
    }

    /// The model asked for a tool (`tool.call`); `arguments` is the model's JSON text, as a string.
    public static func toolCall(generationID: String, callID: String, name: String, arguments: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"tool.call","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString(#","call_id":"#)
        buffer.writeJSONString(callID)
        buffer.writeStaticString(#","name":"#)
        buffer.writeJSONString(name)
        buffer.writeStaticString(#","arguments":"#)
        buffer.writeJSONString(arguments)
        buffer.writeStaticString("}")
    }

    /// A tool call's outcome (`tool.result`): `status` ok, error, timeout, invalid_arguments or
    /// unknown_tool; `output` is what the model gets back.
    public static func toolResult(
        generationID: String, callID: String, name: String, status: String, output: String, durationMs: Int, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString(#"{"type":"tool.result","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString(#","call_id":"#)
        buffer.writeJSONString(callID)
        buffer.writeStaticString(#","name":"#)
        buffer.writeJSONString(name)
        buffer.writeStaticString(#","status":"#)
        buffer.writeJSONString(status)
        buffer.writeStaticString(#","output":"#)
        buffer.writeJSONString(output)
        buffer.writeStaticString(#","duration_ms":"#)
        buffer.writeDecimal(Int64(durationMs))
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

/// A conversation in `conversation.list.result` (what the protocol needs, not the storage row).
public struct ConversationListing: Sendable, Equatable {
    public var id: String
    public var title: String?
    public var createdAtMicroseconds: Int64
    public var updatedAtMicroseconds: Int64

    public init(id: String, title: String?, createdAtMicroseconds: Int64, updatedAtMicroseconds: Int64) {
        self.id = id
        self.title = title
        self.createdAtMicroseconds = createdAtMicroseconds
        self.updatedAtMicroseconds = updatedAtMicroseconds
    }
}

/// A message in `conversation.history.result`.
public struct MessageListing: Sendable, Equatable {
    public var id: String
    public var role: String
    public var content: String
    public var finishReason: String?
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var model: String?
    public var createdAtMicroseconds: Int64

    public init(
        id: String, role: String, content: String, finishReason: String?, promptTokens: Int?, completionTokens: Int?,
        model: String?, createdAtMicroseconds: Int64
    ) {
        self.id = id
        self.role = role
        self.content = content
        self.finishReason = finishReason
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.model = model
        self.createdAtMicroseconds = createdAtMicroseconds
    }
}

extension ByteBuffer {
    /// Writes `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` (RFC 3339, UTC, microseconds; or milliseconds,
    /// truncated, with `millisecondsOnly`) without Foundation's formatters. Days to civil date
    /// after Howard Hinnant's `civil_from_days`.
    public mutating func writeTimestamp(microseconds: Int64, millisecondsOnly: Bool = false) {
        let (seconds, micros) = microseconds.quotientAndRemainder(dividingBy: 1_000_000)
        let (secondsAdjusted, microsAdjusted) = micros < 0 ? (seconds - 1, micros + 1_000_000) : (seconds, micros)
        var days = secondsAdjusted / 86_400
        var secondOfDay = secondsAdjusted % 86_400
        if secondOfDay < 0 { secondOfDay += 86_400; days -= 1 }
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ value: Int64, _ width: Int, _ buffer: inout ByteBuffer) {
            var digits = [UInt8](repeating: UInt8(ascii: "0"), count: width)
            var rest = value
            for index in stride(from: width - 1, through: 0, by: -1) {
                digits[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
            buffer.writeBytes(digits)
        }
        self.writeStaticString("\"")
        pad(year, 4, &self)
        self.writeStaticString("-")
        pad(month, 2, &self)
        self.writeStaticString("-")
        pad(day, 2, &self)
        self.writeStaticString("T")
        pad(secondOfDay / 3600, 2, &self)
        self.writeStaticString(":")
        pad(secondOfDay % 3600 / 60, 2, &self)
        self.writeStaticString(":")
        pad(secondOfDay % 60, 2, &self)
        self.writeStaticString(".")
        if millisecondsOnly { pad(microsAdjusted / 1000, 3, &self) } else { pad(microsAdjusted, 6, &self) }
        self.writeStaticString("Z\"")
    }

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
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: RawJSONWriter.maximumEscapedLength(bytes)) { out in
            var writer = RawJSONWriter(out)
            writer.writeJSONString(bytes)
            return writer.count
        }
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

/// Appends JSON pieces to raw memory that the caller sized with the `maximum…` helpers, so a
/// whole message is written under one capacity check. Bounds are checked in debug builds.
@usableFromInline
struct RawJSONWriter {
    @usableFromInline let out: UnsafeMutableRawBufferPointer
    @usableFromInline var count = 0

    @usableFromInline static let maximumDecimalLength = 20

    @inlinable
    init(_ out: UnsafeMutableRawBufferPointer) { self.out = out }

    /// Room for `"…"` with every byte escaped in the worst case (`\u00XX`), counted exactly for
    /// long texts so a big merged delta does not reserve six times its size.
    @inlinable
    static func maximumEscapedLength(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard bytes.count > 4096 else { return bytes.count * 6 + 2 }
        var length = bytes.count + 2
        for byte in bytes where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
            length += byte < 0x20 ? 5 : 1
        }
        return length
    }

    @inlinable
    mutating func write(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        assert(self.count + bytes.count <= self.out.count)
        (self.out.baseAddress! + self.count).copyMemory(from: source, byteCount: bytes.count)
        self.count += bytes.count
    }

    @inlinable
    mutating func write(_ string: StaticString) {
        self.write(UnsafeRawBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    @inlinable
    mutating func write(byte: UInt8) {
        assert(self.count < self.out.count)
        self.out[self.count] = byte
        self.count += 1
    }

    @inlinable
    mutating func writeDecimal(_ value: Int64) {
        if value < 0 { self.write(byte: UInt8(ascii: "-")) }
        var rest = value.magnitude
        var digits = 0
        var probe = rest
        repeat { digits += 1; probe /= 10 } while probe > 0
        assert(self.count + digits <= self.out.count)
        var index = self.count + digits - 1
        repeat {
            self.out[index] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: rest % 10)
            rest /= 10
            index -= 1
        } while rest > 0
        self.count += digits
    }

    /// `"…"` with JSON escaping (RFC 8259 §7): quote, backslash and control characters; other
    /// UTF-8 bytes pass through unchanged.
    @inlinable
    mutating func writeJSONString(_ bytes: UnsafeRawBufferPointer) {
        self.write(byte: UInt8(ascii: "\""))
        var runStart = 0
        for index in 0..<bytes.count {
            let byte = bytes[index]
            guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
            if runStart < index { self.write(UnsafeRawBufferPointer(rebasing: bytes[runStart..<index])) }
            runStart = index + 1
            switch byte {
            case UInt8(ascii: "\""): self.write("\\\"")
            case UInt8(ascii: "\\"): self.write("\\\\")
            case 0x0A: self.write("\\n")
            case 0x0D: self.write("\\r")
            case 0x09: self.write("\\t")
            case 0x08: self.write("\\b")
            case 0x0C: self.write("\\f")
            default:
                self.write("\\u00")
                self.write(byte: Self.hexDigit(byte >> 4))
                self.write(byte: Self.hexDigit(byte & 0x0F))
            }
        }
        if runStart < bytes.count { self.write(UnsafeRawBufferPointer(rebasing: bytes[runStart...])) }
        self.write(byte: UInt8(ascii: "\""))
    }

    @inlinable
    static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }
}
