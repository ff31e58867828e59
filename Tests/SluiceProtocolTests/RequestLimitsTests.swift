import Foundation
import NIOCore
import SluiceProtocol
import Testing

/// Every number a client sends is range-checked where it is decoded: out of range is
/// `invalid_message` (never a value that traps further on), sizes are checked on the bytes.
@Suite struct ClientNumberRangeTests {
    private func decode(_ text: String, limits: RequestLimits = RequestLimits()) -> Result<ClientMessage, ProtocolViolation> {
        ClientMessageDecoder.decode(ByteBuffer(string: text), limits: limits)
    }

    private func violation(_ text: String, limits: RequestLimits = RequestLimits()) -> ProtocolViolation? {
        guard case .failure(let violation) = self.decode(text, limits: limits) else { return nil }
        return violation
    }

    /// The message that used to kill the process (Double → Int64 trap in the rate limiter).
    @Test func theHeadlineMaxTokensIsRefusedNamingTheLimit() throws {
        let refused = try #require(self.violation(#"{"type":"chat.send","content":"x","max_tokens":9223372036854775000,"request_id":"r1"}"#))
        #expect(refused.code == .invalidMessage)
        #expect(refused.message.contains("32768"), "\(refused.message)")
        #expect(refused.requestID == "r1")
    }

    @Test(arguments: [
        "4611686018427387904",  // 2^62
        "9223372036854775807",  // 2^63 - 1
        "9223372036854775808",  // 2^63 (an unsigned NSNumber)
        "18446744073709551616",  // 2^64 (an NSDecimalNumber)
        "1e30", "-1", "0", "32769", "-9223372036854775808",
    ])
    func maxTokensOutOfRange(value: String) throws {
        let refused = try #require(self.violation(#"{"type":"chat.send","content":"x","max_tokens":\#(value)}"#), "accepted \(value)")
        #expect(refused.code == .invalidMessage, "\(value)")
        #expect(refused.message.contains("from 1 to 32768"), "\(value): \(refused.message)")
    }

    @Test(arguments: [#""5""#, "true", "false", "1.5", "[1]", #"{"n":1}"#])
    func maxTokensOfTheWrongTypeIsRefused(value: String) throws {
        let refused = try #require(self.violation(#"{"type":"chat.send","content":"x","max_tokens":\#(value)}"#), "accepted \(value)")
        #expect(refused.code == .invalidMessage && refused.message.contains("must be an integer"), "\(value): \(refused.message)")
    }

    @Test func maxTokensWithinTheLimitIsAcceptedAndTheLimitIsConfigurable() throws {
        #expect(try self.decode(#"{"type":"chat.send","content":"x","max_tokens":32768}"#).get() == .chatSend(.init(content: "x", maxTokens: 32768)))
        #expect(try self.decode(#"{"type":"chat.send","content":"x","max_tokens":1.0}"#).get() == .chatSend(.init(content: "x", maxTokens: 1)))
        #expect(try self.decode(#"{"type":"chat.send","content":"x","max_tokens":null}"#).get() == .chatSend(.init(content: "x")))
        let tight = RequestLimits(maxTokensLimit: 100)
        #expect(try self.decode(#"{"type":"chat.send","content":"x","max_tokens":100}"#, limits: tight).get() == .chatSend(.init(content: "x", maxTokens: 100)))
        let refused = try #require(self.violation(#"{"type":"chat.send","content":"x","max_tokens":101}"#, limits: tight))
        #expect(refused.message.contains("from 1 to 100"), "\(refused.message)")
    }

    @Test(arguments: ["-0.1", "2.0001", "1e308", "true", #""1""#])
    func temperatureOutOfRangeOrOfTheWrongType(value: String) throws {
        let refused = try #require(self.violation(#"{"type":"chat.send","content":"x","temperature":\#(value)}"#), "accepted \(value)")
        #expect(refused.code == .invalidMessage, "\(value)")
    }

    @Test func temperatureAtItsBounds() throws {
        #expect(try self.decode(#"{"type":"chat.send","content":"x","temperature":0}"#).get() == .chatSend(.init(content: "x", temperature: 0)))
        #expect(try self.decode(#"{"type":"chat.send","content":"x","temperature":2}"#).get() == .chatSend(.init(content: "x", temperature: 2)))
    }

    @Test func afterSeqIsBoundedSoSeqPlusOneCannotOverflow() throws {
        #expect(try self.decode(#"{"type":"generation.resume","generation_id":"g","after_seq":9007199254740991}"#).get()
            == .generationResume(generationID: "g", afterSeq: 9_007_199_254_740_991))
        for value in ["9007199254740992", "9223372036854775807", "1e30", "-1", "true", "0.5"] {
            let refused = self.violation(#"{"type":"generation.resume","generation_id":"g","after_seq":\#(value)}"#)
            #expect(refused?.code == .invalidMessage, "accepted after_seq \(value)")
        }
    }

    @Test func historyLimitHasACeilingAndBeforeMustLookLikeACursor() throws {
        #expect(try self.decode(#"{"type":"conversation.list","limit":500}"#).get() == .conversationList(.init(limit: 500)))
        let cursor = "1795733892731906_9a71c3d2-0b1e-4c55-8f0e-3b2f7c1d9e44"
        #expect(try self.decode(#"{"type":"conversation.list","before":"\#(cursor)"}"#).get() == .conversationList(.init(before: cursor)))
        for bad in [#""limit":501"#, #""limit":1e30"#, #""limit":true"#, #""before":"\#(String(repeating: "1", count: 129))""#,
                    #""before":"abc def""#, #""before":"x\"y""#, #""before":"""#] {
            let refused = self.violation(#"{"type":"conversation.list",\#(bad),"request_id":"q"}"#)
            #expect(refused?.code == .invalidMessage && refused?.requestID == "q", "accepted \(bad)")
        }
        #expect(self.violation(#"{"type":"conversation.history","conversation_id":"c","limit":9223372036854775807}"#)?.code == .invalidMessage)
    }

    @Test func historyQueryParametersFollowTheSameRules() throws {
        #expect(try ClientMessageDecoder.historyPage(limit: "20", before: nil).get() == .init(limit: 20))
        #expect(try ClientMessageDecoder.historyPage(limit: nil, before: nil).get() == .init())
        for limit in ["0", "501", "-1", "+5", " 5", "abc", "99999999999999999999", "1e3", ""] {
            guard case .failure(let violation) = ClientMessageDecoder.historyPage(limit: limit, before: nil) else {
                Issue.record("accepted limit=\(limit)")
                continue
            }
            #expect(violation.code == .invalidMessage && violation.message.contains("1 to 500"))
        }
        guard case .failure = ClientMessageDecoder.historyPage(limit: nil, before: String(repeating: "a", count: 10_000)) else {
            Issue.record("accepted a 10,000-byte cursor")
            return
        }
    }

    @Test func jobFieldsAreBounded() throws {
        let ok = try self.decode(#"{"type":"job.submit","kind":"report","max_attempts":100,"priority":"low","idempotency_key":"\#(String(repeating: "k", count: 255))"}"#).get()
        guard case .jobSubmit(let submit) = ok else { Issue.record("not a job.submit"); return }
        #expect(submit.maxAttempts == 100 && submit.priority == "low" && submit.idempotencyKey?.count == 255)
        for bad in [#""max_attempts":0"#, #""max_attempts":101"#, #""max_attempts":1e30"#, #""max_attempts":9223372036854775807"#,
                    #""max_attempts":true"#, #""idempotency_key":"\#(String(repeating: "k", count: 256))""#,
                    #""priority":"\#(String(repeating: "p", count: 17))""#, #""idempotency_key":5"#] {
            let refused = self.violation(#"{"type":"job.submit","kind":"report",\#(bad)}"#)
            #expect(refused?.code == .invalidMessage, "accepted \(bad)")
        }
        #expect(self.violation(#"{"type":"job.submit","kind":"\#(String(repeating: "k", count: 65))"}"#)?.code == .invalidMessage)
    }

    @Test func jobRequestBodiesUseTheSameRulesAndTheTopLevelDecidesTheType() throws {
        let limits = RequestLimits(maxContentBytes: 1000)
        let submit = try ClientMessageDecoder.decodeJobRequest(ByteBuffer(string: #"{"kind":"echo","input":{"type":"x"},"max_attempts":2}"#), limits: limits).get()
        #expect(submit.kind == "echo" && submit.input == #"{"type":"x"}"# && submit.maxAttempts == 2)
        guard case .failure(let wrongType) = ClientMessageDecoder.decodeJobRequest(ByteBuffer(string: #"{"type":"chat.send","content":"x"}"#), limits: limits),
              case .failure(let huge) = ClientMessageDecoder.decodeJobRequest(ByteBuffer(string: #"{"kind":"echo","max_attempts":1e300}"#), limits: limits),
              case .failure(let notObject) = ClientMessageDecoder.decodeJobRequest(ByteBuffer(string: "[1]"), limits: limits)
        else { Issue.record("accepted"); return }
        #expect(wrongType.code == .invalidMessage && huge.code == .invalidMessage && notObject.code == .invalidMessage)
    }

    @Test func chatRequestBodiesUseTheSameRules() throws {
        let send = try ClientMessageDecoder.decodeChatRequest(ByteBuffer(string: #"{"content":"hi","max_tokens":8}"#), limits: RequestLimits()).get()
        #expect(send == .init(content: "hi", maxTokens: 8))
        for value in ["4611686018427387904", "9223372036854775807"] {
            guard case .failure(let violation) = ClientMessageDecoder.decodeChatRequest(
                ByteBuffer(string: #"{"content":"x","max_tokens":\#(value)}"#), limits: RequestLimits()) else {
                Issue.record("accepted \(value)")
                continue
            }
            #expect(violation.code == .invalidMessage && violation.message.contains("32768"))
        }
    }
}

/// Size before work: a message's bytes are measured before a `String` is made, before it is
/// trimmed and before JSON is parsed.
@Suite struct DecoderSizeTests {
    /// A JSON message past the byte budget is `too_large` even when it is not valid JSON: the
    /// parser never ran (before, it was parsed first and answered "not valid JSON").
    @Test func anOversizedJSONMessageIsRefusedBeforeItIsParsed() throws {
        let limits = RequestLimits(maxContentBytes: 1000)
        let budget = limits.maxJSONMessageBytes
        #expect(budget == 3 * 1000 + RequestLimits.jsonOverheadBytes)
        let broken = "{" + String(repeating: "x", count: budget)
        guard case .failure(let violation) = ClientMessageDecoder.decode(ByteBuffer(string: broken), limits: limits) else {
            Issue.record("accepted"); return
        }
        #expect(violation.code == .tooLarge, "\(violation.message)")
        // Just under the budget, the same bytes are parsed (and found broken).
        let small = "{" + String(repeating: "x", count: budget - 2)
        guard case .failure(let parsed) = ClientMessageDecoder.decode(ByteBuffer(string: small), limits: limits) else {
            Issue.record("accepted"); return
        }
        #expect(parsed.code == .invalidMessage)
        // The same rule on the HTTP bodies.
        guard case .failure(let body) = ClientMessageDecoder.decodeChatRequest(ByteBuffer(string: broken), limits: limits) else {
            Issue.record("accepted"); return
        }
        #expect(body.code == .tooLarge)
    }

    /// Content escaped as `\uXXXX` (Python's default) still fits: the budget allows for it.
    @Test func escapedContentOfTheMaximumSizeFits() throws {
        let limits = RequestLimits(maxContentBytes: 3000)
        let text = String(repeating: "語", count: 1000)  // 3000 bytes of UTF-8, 6000 escaped
        let escaped = text.unicodeScalars.map { String(format: "\\u%04x", $0.value) }.joined()
        let message = #"{"type":"chat.send","content":"\#(escaped)"}"#
        #expect(try ClientMessageDecoder.decode(ByteBuffer(string: message), limits: limits).get() == .chatSend(.init(content: text)))
    }

    /// Plain text is measured between its first and last non-blank bytes, before a `String` is
    /// made and trimmed: padding that only Unicode trimming would remove does not shrink it back
    /// under the limit (before, the whole text was trimmed first, and this was accepted).
    @Test func plainTextIsMeasuredBeforeItIsTrimmed() throws {
        let padded = "hello" + String(repeating: "\u{00A0}", count: 1000)
        guard case .failure(let violation) = ClientMessageDecoder.decode(ByteBuffer(string: padded), maxContentBytes: 5) else {
            Issue.record("accepted"); return
        }
        #expect(violation.code == .tooLarge)
        // ASCII blanks around it are free, and Unicode ones are still trimmed when it fits.
        let message = String(repeating: " ", count: 10_000) + "hello\u{00A0}\n"
        #expect(try ClientMessageDecoder.decode(ByteBuffer(string: message), maxContentBytes: 7).get() == .chatSend(.init(content: "hello")))
    }

    @Test func invalidUTF8ThatGrowsWhenRepairedStaysWithinTheLimit() {
        var buffer = ByteBuffer()
        buffer.writeBytes([0xFF, 0xFE, 0xFF, 0xFE, 0xFF])  // 5 bytes, 15 once repaired
        guard case .failure(let violation) = ClientMessageDecoder.decode(buffer, maxContentBytes: 10) else {
            Issue.record("accepted"); return
        }
        #expect(violation.code == .tooLarge)
    }
}

@Suite struct SaturatingArithmeticTests {
    @Test func doublesBecomeInt64WithoutTrapping() {
        #expect(Int64(saturating: .nan) == 0)
        #expect(Int64(saturating: .infinity) == .max && Int64(saturating: -.infinity) == .min)
        #expect(Int64(saturating: 9_223_372_036_854_775_808.0) == .max)
        #expect(Int64(saturating: 9.3e18) == .max && Int64(saturating: -9.3e18) == .min)
        #expect(Int64(saturating: 1e30) == .max)
        #expect(Int64(saturating: 12.9) == 12 && Int64(saturating: -12.9) == -12)
        #expect(Int(saturating: 1e19) == .max)
    }

    @Test func integerOperationsStopAtTheBounds() {
        #expect(Int.max.addingSaturating(1) == .max && Int.min.addingSaturating(-1) == .min)
        #expect(Int.min.subtractingSaturating(1) == .min && Int.max.subtractingSaturating(-1) == .max)
        #expect(Int.max.multipliedSaturating(by: 2) == .max && Int.max.multipliedSaturating(by: -2) == .min)
        #expect(3.addingSaturating(4) == 7 && 3.multipliedSaturating(by: -4) == -12)
    }

    @Test func usageIsClampedAndItsTotalCannotOverflow() {
        let usage = Usage(promptTokens: .max, completionTokens: .max, source: .upstream)
        #expect(usage.promptTokens == Usage.maximumTokens && usage.totalTokens == 2 * Usage.maximumTokens)
        #expect(usage.totalTokens <= Int(Int32.max))
        #expect(Usage(promptTokens: -5, completionTokens: 3, source: .gateway).totalTokens == 3)
        var edited = usage
        edited.promptTokens = .max
        #expect(edited.totalTokens == .max)
    }

    @Test func upstreamTokenCountsAreReadExactlyOrNotAtAll() throws {
        func count(_ json: String) throws -> Int? {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(#"{"v":\#(json)}"#.utf8)) as? [String: Any])
            return Usage.count(fromJSON: object["v"])
        }
        #expect(try count("12") == 12)
        #expect(try count("9223372036854775807") == Usage.maximumTokens)
        #expect(try count("1e30") == Usage.maximumTokens)
        #expect(try count("18446744073709551616") == Usage.maximumTokens)
        #expect(try count("-1") == nil && count("-1e30") == nil && count("1.5") == nil)
        #expect(try count("true") == nil && count(#""5""#) == nil && count("null") == nil)
        #expect(Usage.count(fromJSON: nil) == nil)
    }
}
