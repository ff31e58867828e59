import NIOCore
import SluiceProtocol

/// How generation events travel between instances (Redis pub/sub payloads and stream entries):
/// a compact binary form, so a follower on another instance cuts and merges deltas without
/// parsing JSON, and every event is encoded once on the owner for both the stream and the channel.
///
///     started: "S" info-fields
///     batch:   "B" firstSeq:i64 lastSeq:i64 count:u32 tokenEnds:u32×count textLength:u32 text
///     end:     "E" seq:i64 finishReason usage… error?
///
/// Strings are `u32 length + UTF-8`; integers are big-endian. Decoding is strict: anything
/// malformed is `nil` (and counted by the caller), never a crash.
enum GenerationWire {
    enum Event: Sendable, Equatable {
        case started(GenerationInfo, owner: String)
        case batch(firstSeq: Int64, lastSeq: Int64, tokenEnds: [Int32], text: String)
        case end(GenerationEnd)
    }

    static func encodeStarted(_ info: GenerationInfo, owner: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "S"))
        Self.writeString(info.generationID, into: &buffer)
        Self.writeString(info.conversationID, into: &buffer)
        Self.writeString(info.requestID ?? "", into: &buffer)
        buffer.writeInteger(UInt8(info.requestID == nil ? 0 : 1))
        Self.writeString(info.model, into: &buffer)
        Self.writeString(owner, into: &buffer)
    }

    static func encodeBatch(_ update: FollowUpdate, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "B"))
        buffer.writeInteger(update.firstSeq)
        buffer.writeInteger(update.lastSeq)
        buffer.writeInteger(UInt32(update.tokenEnds.count))
        for end in update.tokenEnds { buffer.writeInteger(UInt32(bitPattern: end)) }
        Self.writeString(update.text, into: &buffer)
    }

    static func encodeEnd(_ end: GenerationEnd, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "E"))
        buffer.writeInteger(end.seq)
        Self.writeString(end.finishReason.rawValue, into: &buffer)
        buffer.writeInteger(Int64(end.usage.promptTokens))
        buffer.writeInteger(Int64(end.usage.completionTokens))
        Self.writeString(end.usage.source.rawValue, into: &buffer)
        Self.writeString(end.error?.code.rawValue ?? "", into: &buffer)
        Self.writeString(end.error?.message ?? "", into: &buffer)
    }

    static func decode(_ buffer: ByteBuffer) -> Event? {
        var buffer = buffer
        guard let kind = buffer.readInteger(as: UInt8.self) else { return nil }
        switch kind {
        case UInt8(ascii: "S"):
            guard let id = Self.readString(&buffer), let conversation = Self.readString(&buffer),
                  let request = Self.readString(&buffer), let hasRequest = buffer.readInteger(as: UInt8.self),
                  let model = Self.readString(&buffer), let owner = Self.readString(&buffer), buffer.readableBytes == 0
            else { return nil }
            return .started(GenerationInfo(generationID: id, conversationID: conversation, requestID: hasRequest == 1 ? request : nil, model: model),
                            owner: owner)
        case UInt8(ascii: "B"):
            guard let first = buffer.readInteger(as: Int64.self), let last = buffer.readInteger(as: Int64.self),
                  let count = buffer.readInteger(as: UInt32.self), first >= 1, last >= first - 1, last <= Self.maximumSeq,
                  Int64(count) == last - first + 1, Int(count) * 4 <= buffer.readableBytes
            else { return nil }
            var ends: [Int32] = []
            ends.reserveCapacity(Int(count))
            for _ in 0..<count { ends.append(Int32(bitPattern: buffer.readInteger(as: UInt32.self)!)) }
            guard let text = Self.readString(&buffer), buffer.readableBytes == 0 else { return nil }
            // Offsets must rise and end at the text's end, or cutting would split wrongly.
            var previous: Int32 = 0
            for end in ends {
                guard end >= previous else { return nil }
                previous = end
            }
            guard ends.isEmpty || Int(previous) == text.utf8.count else { return nil }
            return .batch(firstSeq: first, lastSeq: last, tokenEnds: ends, text: text)
        case UInt8(ascii: "E"):
            guard let seq = buffer.readInteger(as: Int64.self), (0...Self.maximumSeq).contains(seq), let reasonText = Self.readString(&buffer),
                  let reason = FinishReason(rawValue: reasonText),
                  let prompt = buffer.readInteger(as: Int64.self), let completion = buffer.readInteger(as: Int64.self),
                  let sourceText = Self.readString(&buffer), let source = Usage.Source(rawValue: sourceText),
                  let codeText = Self.readString(&buffer), let message = Self.readString(&buffer), buffer.readableBytes == 0
            else { return nil }
            var error: GenerationError?
            if !codeText.isEmpty {
                guard let code = ErrorCode(rawValue: codeText) else { return nil }
                error = GenerationError(code: code, message: message)
            }
            return .end(GenerationEnd(
                seq: seq, finishReason: reason,
                usage: Usage(promptTokens: Int(prompt), completionTokens: Int(completion), source: source), error: error))
        default:
            return nil
        }
    }

    /// Seqs read back from Redis are bounded like a client's `after_seq`, so `seq + 1` anywhere
    /// further on cannot overflow (an event past it is not one of ours).
    static let maximumSeq = RequestLimits.afterSeqRange.upperBound

    private static func writeString(_ string: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(string.utf8.count))
        buffer.writeString(string)
    }

    private static func readString(_ buffer: inout ByteBuffer) -> String? {
        guard let length = buffer.readInteger(as: UInt32.self), Int(length) <= buffer.readableBytes else { return nil }
        return buffer.readString(length: Int(length))
    }
}
