import Foundation
import NIOCore

/// The server-to-client `sluice.v1` messages a client acts on (the client side of
/// `ServerMessageEncoder`). Other well-formed messages are `.unknown(type:)`, and unknown fields
/// are ignored, so an older client keeps working against a newer server.
public enum ServerMessage: Equatable, Sendable {
    public struct ErrorInfo: Equatable, Sendable {
        public var code: String
        public var message: String

        public init(code: String, message: String) {
            self.code = code
            self.message = message
        }
    }

    case sessionReady(instanceID: String, model: String?, heartbeatMs: Int?)
    case generationStarted(generationID: String, conversationID: String, requestID: String?)
    case generationDelta(generationID: String, seq: Int, text: String)
    case generationDone(generationID: String, finishReason: String, completionTokens: Int?, error: ErrorInfo?)
    case error(code: String, message: String, requestID: String?, generationID: String?)
    case pong
    /// A well-formed message of a type this client does not know.
    case unknown(type: String)
}

/// Decodes server messages for clients (the terminal client). Not a hot path: one
/// `JSONSerialization` parse per message. The load-test harness reads deltas with
/// `ServerMessageScanner` instead.
public enum ServerMessageDecoder {
    /// `nil` when the text is not a JSON object with the fields its type requires. Numbers are
    /// taken only when they are integers that fit (`Int(exactly:)`), never by truncation.
    public static func decode(_ text: String) -> ServerMessage? {
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(text.utf8)),
              let object = parsed as? [String: Any],
              let type = object["type"] as? String else { return nil }
        let string = { (key: String) in object[key] as? String }
        let int = { (key: String) in Self.integer(object[key]) }
        switch type {
        case "session.ready":
            guard let instanceID = string("instance_id") else { return nil }
            return .sessionReady(instanceID: instanceID, model: string("model"), heartbeatMs: int("heartbeat_ms"))
        case "generation.started":
            guard let generationID = string("generation_id"), let conversationID = string("conversation_id") else { return nil }
            return .generationStarted(generationID: generationID, conversationID: conversationID, requestID: string("request_id"))
        case "generation.delta":
            guard let generationID = string("generation_id"), let seq = int("seq"), let text = string("text") else { return nil }
            return .generationDelta(generationID: generationID, seq: seq, text: text)
        case "generation.done":
            guard let generationID = string("generation_id"), let finishReason = string("finish_reason") else { return nil }
            let usage = object["usage"] as? [String: Any]
            let completionTokens = Self.integer(usage?["completion_tokens"])
            var error: ServerMessage.ErrorInfo?
            if let details = object["error"] as? [String: Any] {
                error = .init(code: details["code"] as? String ?? "error", message: details["message"] as? String ?? "")
            }
            return .generationDone(generationID: generationID, finishReason: finishReason, completionTokens: completionTokens, error: error)
        case "error":
            return .error(
                code: string("code") ?? "error", message: string("message") ?? "",
                requestID: string("request_id"), generationID: string("generation_id"))
        case "pong":
            return .pong
        default:
            return .unknown(type: type)
        }
    }

    /// A JSON number that is an integer within `Int` (nil for 1.5 or 1e300: no rounding, no trap).
    static func integer(_ value: Any?) -> Int? {
        guard let number = value as? NSNumber else { return nil }
        return Int(exactly: number.doubleValue)
    }
}

/// Reads single fields of a server message without a JSON parser, for the load-test harness's
/// per-delta path (no allocation but the key pattern, no object tree). Inlinable, so it compiles
/// into the harness as its own scanner did.
///
/// The first occurrence of `"key":` is the field: inside an encoded JSON string every `"` is
/// escaped (`\"`), so `"key":` cannot occur in free text (`text`, `message`); it only matches a
/// real key. Nested keys count too: `code` is found in `generation.done`'s `error` object. The
/// value of `string(_:)` is the raw JSON text between the quotes (escapes not undone).
public struct ServerMessageScanner {
    public let bytes: ByteBufferView

    @inlinable
    public init(_ buffer: ByteBuffer) {
        self.bytes = buffer.readableBytesView
    }

    /// The message's `type`.
    @inlinable
    public var type: Substring? { self.string("type") }

    /// A string field's raw JSON text (escapes left as written), or nil if absent or not a string.
    @inlinable
    public func string(_ key: String) -> Substring? {
        guard var index = self.valueStart(key), index < self.bytes.endIndex, self.bytes[index] == UInt8(ascii: "\"") else { return nil }
        index += 1
        let start = index
        while index < self.bytes.endIndex {
            let byte = self.bytes[index]
            if byte == UInt8(ascii: "\\") {
                index += 2
                continue
            }
            if byte == UInt8(ascii: "\"") {
                return Substring(decoding: self.bytes[start..<index], as: UTF8.self)
            }
            index += 1
        }
        return nil
    }

    /// A non-negative integer field; nil if absent, not digits, or past `Int64.max` (a hostile
    /// or broken server cannot make the harness trap).
    @inlinable
    public func integer(_ key: String) -> Int64? {
        guard var index = self.valueStart(key) else { return nil }
        var value: Int64 = 0
        var digits = 0
        while index < self.bytes.endIndex, self.bytes[index] >= UInt8(ascii: "0"), self.bytes[index] <= UInt8(ascii: "9") {
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int64(self.bytes[index] - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
            digits += 1
            index += 1
        }
        return digits > 0 ? value : nil
    }

    /// The length of the `text` field's JSON string (escapes counted as written).
    @inlinable
    public var textLength: Int {
        guard let text = self.string("text") else { return 0 }
        return text.utf8.count
    }

    /// Index just after `"key":`.
    @usableFromInline
    func valueStart(_ key: String) -> Int? {
        let pattern = Array("\"\(key)\":".utf8)
        guard let first = pattern.first, self.bytes.count >= pattern.count else { return nil }
        var index = self.bytes.startIndex
        let last = self.bytes.endIndex - pattern.count
        while index <= last {
            if self.bytes[index] == first {
                var matched = true
                for offset in 1..<pattern.count where self.bytes[index + offset] != pattern[offset] {
                    matched = false
                    break
                }
                if matched { return index + pattern.count }
            }
            index += 1
        }
        return nil
    }
}
