import Foundation
import NIOCore

/// Writes client-to-server `sluice.v1` messages (the client side of `ClientMessageDecoder`)
/// straight into a `ByteBuffer`, with the same JSON string escaping as the server's
/// `ServerMessageEncoder`: quotes, backslashes and every control character are escaped, so any
/// `String` (a prompt with newlines, U+0000, U+2028…) gives valid JSON. Fields that are nil are
/// left out. `ClientMessageDecoder.decode(encode(m)) == m` for every message (tested).
public enum ClientMessageEncoder {
    public static func encode(_ message: ClientMessage, into buffer: inout ByteBuffer) {
        switch message {
        case .chatSend(let send):
            Self.chatSend(send, into: &buffer)
        case .generationCancel(let generationID):
            Self.generationCancel(generationID: generationID, into: &buffer)
        case .generationResume(let generationID, let afterSeq):
            Self.generationResume(generationID: generationID, afterSeq: afterSeq, into: &buffer)
        case .conversationSubscribe(let conversationID):
            buffer.writeStaticString(#"{"type":"conversation.subscribe","conversation_id":"#)
            buffer.writeJSONString(conversationID)
            buffer.writeStaticString("}")
        case .conversationUnsubscribe(let conversationID):
            buffer.writeStaticString(#"{"type":"conversation.unsubscribe","conversation_id":"#)
            buffer.writeJSONString(conversationID)
            buffer.writeStaticString("}")
        case .conversationList(let page):
            buffer.writeStaticString(#"{"type":"conversation.list""#)
            Self.writePage(page, into: &buffer)
            buffer.writeStaticString("}")
        case .conversationHistory(let conversationID, let page):
            buffer.writeStaticString(#"{"type":"conversation.history","conversation_id":"#)
            buffer.writeJSONString(conversationID)
            Self.writePage(page, into: &buffer)
            buffer.writeStaticString("}")
        case .ping(let id):
            buffer.writeStaticString(#"{"type":"ping""#)
            Self.writeOptional("id", id, into: &buffer)
            buffer.writeStaticString("}")
        case .jobSubmit(let submit):
            Self.jobSubmit(submit, into: &buffer)
        case .jobCancel(let jobID, let requestID):
            buffer.writeStaticString(#"{"type":"job.cancel","job_id":"#)
            buffer.writeJSONString(jobID)
            Self.writeOptional("request_id", requestID, into: &buffer)
            buffer.writeStaticString("}")
        case .jobGet(let jobID, let requestID):
            buffer.writeStaticString(#"{"type":"job.get","job_id":"#)
            buffer.writeJSONString(jobID)
            Self.writeOptional("request_id", requestID, into: &buffer)
            buffer.writeStaticString("}")
        }
    }

    /// `encode` into a new buffer, as a `String` (for APIs that send text).
    public static func string(_ message: ClientMessage) -> String {
        var buffer = ByteBuffer()
        Self.encode(message, into: &buffer)
        return String(buffer: buffer)
    }

    public static func chatSend(_ send: ClientMessage.ChatSend, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"chat.send""#)
        Self.writeOptional("request_id", send.requestID, into: &buffer)
        Self.writeOptional("conversation_id", send.conversationID, into: &buffer)
        buffer.writeStaticString(#","content":"#)
        buffer.writeJSONString(send.content)
        Self.writeOptional("model", send.model, into: &buffer)
        if let maxTokens = send.maxTokens {
            buffer.writeStaticString(#","max_tokens":"#)
            buffer.writeDecimal(Int64(maxTokens))
        }
        // JSON has no NaN or infinity: such a temperature is left out (the server's default).
        if let temperature = send.temperature, temperature.isFinite {
            buffer.writeStaticString(#","temperature":"#)
            buffer.writeString(temperature.description)
        }
        if let tools = send.tools {
            buffer.writeStaticString(#","tools":["#)
            for (index, tool) in tools.enumerated() {
                if index > 0 { buffer.writeStaticString(",") }
                buffer.writeJSONString(tool)
            }
            buffer.writeStaticString("]")
        }
        buffer.writeStaticString("}")
    }

    public static func generationCancel(generationID: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"generation.cancel","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString("}")
    }

    public static func generationResume(generationID: String, afterSeq: Int64, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"generation.resume","generation_id":"#)
        buffer.writeJSONString(generationID)
        buffer.writeStaticString(#","after_seq":"#)
        buffer.writeDecimal(afterSeq)
        buffer.writeStaticString("}")
    }

    /// `input` is JSON text (as `ClientMessageDecoder` gives it) and is written as it is; text
    /// that is not JSON is sent as a JSON string instead, so the message stays valid JSON.
    public static func jobSubmit(_ submit: ClientMessage.JobSubmit, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"type":"job.submit""#)
        Self.writeOptional("request_id", submit.requestID, into: &buffer)
        buffer.writeStaticString(#","kind":"#)
        buffer.writeJSONString(submit.kind)
        buffer.writeStaticString(#","input":"#)
        if (try? JSONSerialization.jsonObject(with: Data(submit.input.utf8), options: [.fragmentsAllowed])) != nil {
            buffer.writeString(submit.input)
        } else {
            buffer.writeJSONString(submit.input)
        }
        Self.writeOptional("priority", submit.priority, into: &buffer)
        Self.writeOptional("idempotency_key", submit.idempotencyKey, into: &buffer)
        if let maxAttempts = submit.maxAttempts {
            buffer.writeStaticString(#","max_attempts":"#)
            buffer.writeDecimal(Int64(maxAttempts))
        }
        buffer.writeStaticString("}")
    }

    private static func writePage(_ page: ClientMessage.HistoryPage, into buffer: inout ByteBuffer) {
        Self.writeOptional("request_id", page.requestID, into: &buffer)
        Self.writeOptional("before", page.before, into: &buffer)
        if let limit = page.limit {
            buffer.writeStaticString(#","limit":"#)
            buffer.writeDecimal(Int64(limit))
        }
    }

    /// `,"key":"value"` when there is a value. Keys are this file's constants (no escaping needed).
    private static func writeOptional(_ key: StaticString, _ value: String?, into buffer: inout ByteBuffer) {
        guard let value else { return }
        buffer.writeStaticString(",\"")
        buffer.writeStaticString(key)
        buffer.writeStaticString("\":")
        buffer.writeJSONString(value)
    }
}
