import Foundation
import NIOCore
import SluiceProtocol
import Testing

@Suite struct ClientMessageDecoderTests {
    private func decode(_ text: String, max: Int = 1000) -> Result<ClientMessage, ProtocolViolation> {
        ClientMessageDecoder.decode(ByteBuffer(string: text), maxContentBytes: max)
    }

    @Test func chatSendWithEveryField() throws {
        let message = try decode(#"{"type":"chat.send","content":"hi","request_id":"r1","conversation_id":"c1","model":"m","max_tokens":64,"temperature":0.5}"#).get()
        #expect(message == .chatSend(.init(content: "hi", requestID: "r1", conversationID: "c1", model: "m", maxTokens: 64, temperature: 0.5)))
    }

    @Test func plainTextIsAChatSend() throws {
        #expect(try decode("  hello there \n").get() == .chatSend(.init(content: "hello there")))
        #expect(try decode("[1, 2]").get() == .chatSend(.init(content: "[1, 2]")))
    }

    @Test func cancelAndPing() throws {
        #expect(try decode(#"{"type":"generation.cancel","generation_id":"g"}"#).get() == .generationCancel(generationID: "g"))
        #expect(try decode(#"{"type":"ping","id":"p"}"#).get() == .ping(id: "p"))
        #expect(try decode(#" {"type":"ping"}"#).get() == .ping(id: nil))
    }

    @Test func resumeAndConversationSubscriptions() throws {
        #expect(try decode(#"{"type":"generation.resume","generation_id":"g","after_seq":41}"#).get()
            == .generationResume(generationID: "g", afterSeq: 41))
        #expect(try decode(#"{"type":"generation.resume","generation_id":"g"}"#).get() == .generationResume(generationID: "g", afterSeq: 0))
        #expect(try decode(#"{"type":"conversation.subscribe","conversation_id":"c"}"#).get() == .conversationSubscribe(conversationID: "c"))
        #expect(try decode(#"{"type":"conversation.unsubscribe","conversation_id":"c"}"#).get() == .conversationUnsubscribe(conversationID: "c"))
    }

    @Test func historyRequests() throws {
        #expect(try decode(#"{"type":"conversation.list"}"#).get() == .conversationList(.init()))
        #expect(try decode(#"{"type":"conversation.list","before":"c1","limit":5,"request_id":"r"}"#).get()
            == .conversationList(.init(before: "c1", limit: 5, requestID: "r")))
        #expect(try decode(#"{"type":"conversation.history","conversation_id":"x","limit":2}"#).get()
            == .conversationHistory(conversationID: "x", page: .init(limit: 2)))
        for bad in [#"{"type":"conversation.history"}"#, #"{"type":"conversation.list","limit":0}"#,
                    #"{"type":"conversation.list","limit":"5"}"#, #"{"type":"conversation.list","before":7,"request_id":"q"}"#] {
            guard case .failure(let violation) = decode(bad) else {
                Issue.record("accepted \(bad)")
                continue
            }
            #expect(violation.code == .invalidMessage, "\(bad)")
        }
        guard case .failure(let violation) = decode(#"{"type":"conversation.list","before":7,"request_id":"q"}"#) else { return }
        #expect(violation.requestID == "q")
    }

    @Test(arguments: [
        (#"{bad json"#, ErrorCode.invalidMessage),
        (#"{"content":"x"}"#, .invalidMessage),
        (#"{"type":5}"#, .invalidMessage),
        (#"{"type":"nope"}"#, .unknownType),
        (#"{"type":"chat.send"}"#, .invalidMessage),
        (#"{"type":"chat.send","content":5}"#, .invalidMessage),
        (#"{"type":"chat.send","content":"x","max_tokens":"5"}"#, .invalidMessage),
        (#"{"type":"chat.send","content":"x","max_tokens":true}"#, .invalidMessage),
        (#"{"type":"chat.send","content":"x","max_tokens":1.5}"#, .invalidMessage),
        (#"{"type":"chat.send","content":"x","max_tokens":0}"#, .invalidMessage),
        (#"{"type":"chat.send","content":"x","temperature":9}"#, .invalidMessage),
        (#"{"type":"generation.cancel"}"#, .invalidMessage),
        (#"{"type":"generation.resume"}"#, .invalidMessage),
        (#"{"type":"generation.resume","generation_id":"g","after_seq":-1}"#, .invalidMessage),
        (#"{"type":"generation.resume","generation_id":"g","after_seq":"3"}"#, .invalidMessage),
        (#"{"type":"conversation.subscribe"}"#, .invalidMessage),
        (#"{"type":"conversation.unsubscribe","conversation_id":7}"#, .invalidMessage),
        ("   ", .invalidMessage),
    ])
    func badInputIsRefusedWithTheRightCode(text: String, code: ErrorCode) {
        guard case .failure(let violation) = decode(text) else { Issue.record("accepted \(text)"); return }
        #expect(violation.code == code, "\(text): \(violation.message)")
    }

    @Test func tooLargeContentAndRequestIDEchoedOnErrors() {
        guard case .failure(let violation) = decode(#"{"type":"chat.send","content":"0123456789","request_id":"r9"}"#, max: 5) else {
            Issue.record("accepted"); return
        }
        #expect(violation.code == .tooLarge && violation.requestID == "r9")
        guard case .failure(let plain) = decode(String(repeating: "x", count: 6), max: 5) else { Issue.record("accepted"); return }
        #expect(plain.code == .tooLarge)
    }
}

@Suite struct ServerMessageEncoderTests {
    private func json(_ write: (inout ByteBuffer) -> Void) throws -> [String: Any] {
        var buffer = ByteBuffer()
        write(&buffer)
        return try #require(try JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any])
    }

    @Test func deltaEscapesTextAndOmitsFirstSeqWhenNotMerged() throws {
        let text = "quote \" backslash \\ newline \n tab \t bell \u{7} κόσμε 𝄞"
        let single = try json { ServerMessageEncoder.generationDelta(generationID: "g", seq: 7, firstSeq: nil, text: Substring(text).utf8, into: &$0) }
        #expect(single["type"] as? String == "generation.delta")
        #expect(single["text"] as? String == text)
        #expect(single["seq"] as? Int == 7)
        #expect(single["first_seq"] == nil)
        let merged = try json { ServerMessageEncoder.generationDelta(generationID: "g", seq: 9, firstSeq: 8, text: "ab".utf8[...], into: &$0) }
        #expect(merged["first_seq"] as? Int == 8)
    }

    @Test func doneCarriesUsageAndOptionalError() throws {
        let done = try json {
            ServerMessageEncoder.generationDone(
                generationID: "g", seq: 3, finishReason: .error, usage: Usage(promptTokens: 10, completionTokens: 3, source: .gateway),
                error: (.upstreamError, "502 from upstream"), into: &$0)
        }
        let usage = try #require(done["usage"] as? [String: Any])
        #expect(usage["total_tokens"] as? Int == 13 && usage["usage_source"] as? String == "gateway")
        #expect((done["error"] as? [String: Any])?["code"] as? String == "upstream_error")
        let plain = try json {
            ServerMessageEncoder.generationDone(generationID: "g", seq: 0, finishReason: .stop,
                                                usage: Usage(promptTokens: 1, completionTokens: 0, source: .upstream), into: &$0)
        }
        #expect(plain["error"] == nil && plain["finish_reason"] as? String == "stop")
    }

    @Test func absentFieldsAreLeftOutNotNull() throws {
        let error = try json { ServerMessageEncoder.error(code: .notFound, message: "no", into: &$0) }
        #expect(Set(error.keys) == ["type", "code", "message"])
        let started = try json { ServerMessageEncoder.generationStarted(generationID: "g", conversationID: "c", requestID: nil, model: "m", into: &$0) }
        #expect(started["request_id"] == nil)
        let pong = try json { ServerMessageEncoder.pong(id: nil, into: &$0) }
        #expect(Set(pong.keys) == ["type"])
    }

    @Test func decimalsAreExact() {
        for value: Int64 in [0, 7, 10, 99, 1234567890, Int64.max, -5, Int64.min + 1] {
            var buffer = ByteBuffer()
            buffer.writeDecimal(value)
            #expect(String(buffer: buffer) == String(value))
        }
    }
}

@Suite struct DeltaEncodingTests {
    @Test func deltaBytesAreExact() {
        var prefix = ByteBuffer()
        ServerMessageEncoder.generationDeltaPrefix(generationID: "gen_\"x", into: &prefix)
        var merged = ByteBuffer()
        ServerMessageEncoder.generationDelta(prefix: prefix, seq: 12, firstSeq: 10, text: "a\nb\u{1}".utf8[...], into: &merged)
        #expect(String(buffer: merged) == #"{"type":"generation.delta","generation_id":"gen_\"x","seq":12,"first_seq":10,"text":"a\nb\u0001"}"#)
        var single = ByteBuffer()
        ServerMessageEncoder.generationDelta(generationID: "g", seq: Int64.max, firstSeq: nil, text: "".utf8[...], into: &single)
        #expect(String(buffer: single) == #"{"type":"generation.delta","generation_id":"g","seq":9223372036854775807,"text":""}"#)
    }

    /// Random texts of every byte class and of lengths on both sides of the exact-size path
    /// (4,096 bytes) round-trip through a JSON parser, appended after other data.
    @Test func randomTextsRoundTrip() throws {
        var random = SystemRandomNumberGenerator()
        let alphabet: [String] = ["a", " ", "\"", "\\", "\n", "\t", "\u{0}", "\u{1F}", "\u{7F}", "é", "€", "𝄞", "/"]
        for length in [0, 1, 5, 100, 4095, 4096, 4097, 20_000] {
            let text = String((0..<length).map { _ in alphabet.randomElement(using: &random)! }.joined().prefix(length))
            var buffer = ByteBuffer(string: "xyz")
            ServerMessageEncoder.generationDelta(generationID: "g", seq: Int64(length), firstSeq: nil, text: Substring(text).utf8, into: &buffer)
            buffer.moveReaderIndex(forwardBy: 3)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any])
            #expect(object["text"] as? String == text)
            #expect(object["seq"] as? Int == length)
            var string = ByteBuffer()
            string.writeJSONString(text)
            #expect(try JSONSerialization.jsonObject(with: Data(string.readableBytesView), options: .fragmentsAllowed) as? String == text)
        }
    }
}

@Suite struct HistoryEncodingTests {
    private func json(_ write: (inout ByteBuffer) -> Void) throws -> [String: Any] {
        var buffer = ByteBuffer()
        write(&buffer)
        return try #require(try JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any])
    }

    @Test(arguments: [
        (Int64(0), "1970-01-01T00:00:00.000000Z"),
        (1_795_000_000_123_456, "2026-11-18T11:06:40.123456Z"),
        (951_782_400_000_001, "2000-02-29T00:00:00.000001Z"),  // a leap day
        (4_107_542_399_999_999, "2100-02-28T23:59:59.999999Z"),  // 2100 is not a leap year
        (-1, "1969-12-31T23:59:59.999999Z"),
    ])
    func timestampsAreRFC3339InUTC(microseconds: Int64, expected: String) {
        var buffer = ByteBuffer()
        buffer.writeTimestamp(microseconds: microseconds)
        #expect(String(buffer: buffer) == "\"\(expected)\"")
    }

    @Test func timestampsAgreeWithFoundation() {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<1000 {
            let seconds = Int64.random(in: -2_000_000_000...5_000_000_000, using: &generator)
            var buffer = ByteBuffer()
            buffer.writeTimestamp(microseconds: seconds * 1_000_000)
            let written = String(buffer: buffer).dropFirst().dropLast()
            let expected = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
            #expect(written.replacingOccurrences(of: ".000000", with: "") == expected)
        }
    }

    @Test func listAndHistoryResults() throws {
        let list = try json {
            ServerMessageEncoder.conversationListResult(
                requestID: "r", conversations: [.init(id: "c1", title: "A \"quoted\" title", createdAtMicroseconds: 0, updatedAtMicroseconds: 1_000_000)],
                next: "1000000_c1", into: &$0)
        }
        #expect(list["type"] as? String == "conversation.list.result" && list["request_id"] as? String == "r" && list["next"] as? String == "1000000_c1")
        let conversation = try #require((list["conversations"] as? [[String: Any]])?.first)
        #expect(conversation["title"] as? String == "A \"quoted\" title" && conversation["updated_at"] as? String == "1970-01-01T00:00:01.000000Z")

        let history = try json {
            ServerMessageEncoder.conversationHistoryResult(
                requestID: nil, conversationID: "c1",
                messages: [
                    .init(id: "m2", role: "assistant", content: "line\nbreak", finishReason: "stop", promptTokens: 3, completionTokens: 4,
                          model: "m", createdAtMicroseconds: 2),
                    .init(id: "m1", role: "user", content: "hi", finishReason: nil, promptTokens: nil, completionTokens: nil, model: nil,
                          createdAtMicroseconds: 1),
                ],
                next: nil, into: &$0)
        }
        #expect(history["request_id"] == nil && history["next"] is NSNull)
        let messages = try #require(history["messages"] as? [[String: Any]])
        #expect(messages.map { $0["content"] as? String } == ["line\nbreak", "hi"])
        #expect((messages[0]["usage"] as? [String: Any])?["completion_tokens"] as? Int == 4 && messages[1]["usage"] == nil)
        #expect(messages[1]["finish_reason"] == nil && messages[1]["model"] == nil)
    }
}
