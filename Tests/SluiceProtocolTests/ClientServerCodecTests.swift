import Foundation
import NIOCore
import SluiceProtocol
import Testing

/// Text no encoder may pass through unescaped: quote, backslash, every control character
/// (U+0000 included), U+2028/U+2029 (valid raw in JSON, not in JavaScript), non-ASCII.
let hostileTexts = [
    "plain", "", "say \"hi\"", #"C:\path\"#, "line\nnext\r\n\ttab", "nul\u{00}here", "bell\u{07}\u{08}\u{0C}\u{1F}\u{7F}",
    "sep\u{2028}para\u{2029}", "émoji 🚀 日本", #"\u0041 is not A"#, "}\",\"type\":\"ping",
    String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) }),
]

@Suite struct ClientMessageEncoderTests {
    static func roundTrip(_ message: ClientMessage) throws -> ClientMessage {
        var buffer = ByteBuffer()
        ClientMessageEncoder.encode(message, into: &buffer)
        // Also valid JSON to a parser that is not ours.
        #expect((try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView))) is [String: Any], "\(String(buffer: buffer))")
        return try ClientMessageDecoder.decode(buffer, limits: RequestLimits(maxContentBytes: 100_000)).get()
    }

    static let everyMessage: [ClientMessage] = [
        .chatSend(.init(content: "hi")),
        .chatSend(.init(content: "hi", requestID: "r1", conversationID: "c1", model: "m", maxTokens: 64, temperature: 0.7, tools: ["clock", "calc"])),
        .chatSend(.init(content: "t", temperature: 1e-05, tools: [])),
        .generationCancel(generationID: "g1"),
        .generationResume(generationID: "g1", afterSeq: 0),
        .generationResume(generationID: "g1", afterSeq: 41),
        .conversationSubscribe(conversationID: "c1"),
        .conversationUnsubscribe(conversationID: "c1"),
        .conversationList(.init()),
        .conversationList(.init(before: "0a-ff_9", limit: 5, requestID: "r")),
        .conversationHistory(conversationID: "c1", page: .init()),
        .conversationHistory(conversationID: "c1", page: .init(before: "abc", limit: 2, requestID: "r2")),
        .ping(id: nil),
        .ping(id: "p1"),
        .jobSubmit(.init(kind: "summarize", input: #"{"a":[1,2],"b":"x"}"#)),
        .jobSubmit(.init(kind: "k", input: #""text""#, priority: "high", idempotencyKey: "key-1", maxAttempts: 3, requestID: "r3")),
        .jobCancel(jobID: "j1", requestID: nil),
        .jobCancel(jobID: "j1", requestID: "r4"),
        .jobGet(jobID: "j1", requestID: nil),
        .jobGet(jobID: "j1", requestID: "r5"),
    ]

    @Test(arguments: Self.everyMessage)
    func everyMessageRoundTrips(_ message: ClientMessage) throws {
        #expect(try Self.roundTrip(message) == message)
    }

    @Test(arguments: hostileTexts)
    func hostileTextRoundTripsInEveryStringField(_ text: String) throws {
        let send = ClientMessage.chatSend(.init(content: text, requestID: text, conversationID: text, model: text, tools: [text]))
        #expect(try Self.roundTrip(send) == send)
        #expect(try Self.roundTrip(.generationCancel(generationID: text)) == .generationCancel(generationID: text))
        #expect(try Self.roundTrip(.generationResume(generationID: text, afterSeq: 3)) == .generationResume(generationID: text, afterSeq: 3))
        #expect(try Self.roundTrip(.ping(id: text)) == .ping(id: text))
        #expect(try Self.roundTrip(.jobGet(jobID: text, requestID: text)) == .jobGet(jobID: text, requestID: text))
    }

    /// The escaping the load-test harness lacked: a prompt with a quote or a control character
    /// is one `content` string, not broken JSON or an injected field.
    @Test func controlCharactersAreEscapedNotWrittenRaw() {
        var buffer = ByteBuffer()
        ClientMessageEncoder.chatSend(.init(content: "a\"b\n\u{01}\u{00}"), into: &buffer)
        #expect(String(buffer: buffer) == #"{"type":"chat.send","content":"a\"b\n\u0001\u0000"}"#)
    }

    @Test func jobInputThatIsNotJSONIsSentAsAString() throws {
        let message = ClientMessage.jobSubmit(.init(kind: "k", input: "not json {"))
        #expect(try Self.roundTrip(message) == .jobSubmit(.init(kind: "k", input: #""not json {""#)))
    }

    @Test func aTemperatureJSONCannotHoldIsLeftOut() throws {
        #expect(try Self.roundTrip(.chatSend(.init(content: "x", temperature: .nan))) == .chatSend(.init(content: "x")))
        #expect(try Self.roundTrip(.chatSend(.init(content: "x", temperature: .infinity))) == .chatSend(.init(content: "x")))
    }
}

@Suite struct ServerMessageDecoderTests {
    static func encoded(_ write: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var buffer = ByteBuffer()
        write(&buffer)
        return buffer
    }

    static func decoded(_ write: (inout ByteBuffer) -> Void) -> ServerMessage? {
        ServerMessageDecoder.decode(String(buffer: Self.encoded(write)))
    }

    @Test(arguments: hostileTexts)
    func everyMessageTheServerEncodesDecodesToTheSameValues(_ text: String) {
        #expect(Self.decoded { ServerMessageEncoder.sessionReady(sessionID: text, instanceID: text, heartbeatMs: 20_000, model: text, into: &$0) }
            == .sessionReady(instanceID: text, model: text, heartbeatMs: 20_000))
        #expect(Self.decoded { ServerMessageEncoder.sessionReady(sessionID: "s", instanceID: text, heartbeatMs: 0, model: nil, into: &$0) }
            == .sessionReady(instanceID: text, model: nil, heartbeatMs: 0))
        #expect(Self.decoded { ServerMessageEncoder.generationStarted(generationID: text, conversationID: text, requestID: text, model: text, into: &$0) }
            == .generationStarted(generationID: text, conversationID: text, requestID: text))
        #expect(Self.decoded { ServerMessageEncoder.generationStarted(generationID: "g", conversationID: "c", requestID: nil, model: "m", into: &$0) }
            == .generationStarted(generationID: "g", conversationID: "c", requestID: nil))
        #expect(Self.decoded { ServerMessageEncoder.generationDelta(generationID: text, seq: 7, firstSeq: 5, text: Substring(text).utf8, into: &$0) }
            == .generationDelta(generationID: text, seq: 7, text: text))
        let usage = Usage(promptTokens: 3, completionTokens: 9, source: .upstream)
        #expect(Self.decoded { ServerMessageEncoder.generationDone(generationID: text, seq: 9, finishReason: .stop, usage: usage, into: &$0) }
            == .generationDone(generationID: text, finishReason: "stop", completionTokens: 9, error: nil))
        #expect(Self.decoded {
            ServerMessageEncoder.generationDone(
                generationID: "g", seq: 0, finishReason: .error, usage: usage, error: (.upstreamTimeout, text), cached: true, into: &$0)
        } == .generationDone(generationID: "g", finishReason: "error", completionTokens: 9, error: .init(code: "upstream_timeout", message: text)))
        #expect(Self.decoded {
            ServerMessageEncoder.error(
                code: .notFound, message: text, requestID: text, generationID: text, conversationID: text, earliestSeq: 4, retryAfterMs: 10, into: &$0)
        } == .error(code: "not_found", message: text, requestID: text, generationID: text))
        #expect(Self.decoded { ServerMessageEncoder.error(code: .overloaded, message: text, into: &$0) }
            == .error(code: "overloaded", message: text, requestID: nil, generationID: nil))
        #expect(Self.decoded { ServerMessageEncoder.pong(id: text, into: &$0) } == .pong)
        #expect(Self.decoded { ServerMessageEncoder.conversationSubscription(subscribed: true, conversationID: text, into: &$0) }
            == .unknown(type: "conversation.subscribed"))
        #expect(Self.decoded { ServerMessageEncoder.sessionDraining(retryAfterMs: 5, into: &$0) } == .unknown(type: "session.draining"))
        #expect(Self.decoded { ServerMessageEncoder.toolCall(generationID: "g", callID: text, name: text, arguments: text, into: &$0) }
            == .unknown(type: "tool.call"))
    }

    @Test func malformedOrIncompleteMessagesAreNil() {
        #expect(ServerMessageDecoder.decode("not json") == nil)
        #expect(ServerMessageDecoder.decode("[1]") == nil)
        #expect(ServerMessageDecoder.decode(#"{"no_type":1}"#) == nil)
        #expect(ServerMessageDecoder.decode(#"{"type":"generation.delta","generation_id":"g","text":"x"}"#) == nil)
        // A seq that is not an integer that fits is refused, not truncated or trapped on.
        #expect(ServerMessageDecoder.decode(#"{"type":"generation.delta","generation_id":"g","seq":1e300,"text":"x"}"#) == nil)
        #expect(ServerMessageDecoder.decode(#"{"type":"generation.delta","generation_id":"g","seq":1.5,"text":"x"}"#) == nil)
        #expect(ServerMessageDecoder.decode(#"{"type":"future.thing","x":1}"#) == .unknown(type: "future.thing"))
    }
}

/// `ServerMessageScanner` reads what the load-test harness needs from every message
/// `ServerMessageEncoder` writes, whatever the free text holds.
@Suite struct ServerMessageScannerTests {
    static func scan(_ write: (inout ByteBuffer) -> Void) -> ServerMessageScanner {
        ServerMessageScanner(ServerMessageDecoderTests.encoded(write))
    }

    /// The raw JSON text of a string as the encoder writes it (what `string(_:)` returns).
    static func escaped(_ text: String) -> Substring {
        var buffer = ByteBuffer()
        buffer.writeJSONString(text)
        let written = String(buffer: buffer)
        return written.dropFirst().dropLast()
    }

    @Test(arguments: hostileTexts)
    func readsTheFieldsOfEveryServerMessage(_ text: String) {
        let ready = Self.scan { ServerMessageEncoder.sessionReady(sessionID: text, instanceID: "i-1", heartbeatMs: 20_000, model: text, into: &$0) }
        #expect(ready.type == "session.ready" && ready.string("instance_id") == "i-1" && ready.integer("heartbeat_ms") == 20_000)

        let started = Self.scan { ServerMessageEncoder.generationStarted(generationID: "g1", conversationID: "c1", requestID: "r1", model: text, into: &$0) }
        #expect(started.type == "generation.started" && started.string("generation_id") == "g1")
        #expect(started.string("conversation_id") == "c1" && started.string("request_id") == "r1")

        let delta = Self.scan { ServerMessageEncoder.generationDelta(generationID: "g1", seq: 12, firstSeq: 10, text: Substring(text).utf8, into: &$0) }
        #expect(delta.type == "generation.delta" && delta.string("generation_id") == "g1")
        #expect(delta.integer("seq") == 12 && delta.integer("first_seq") == 10)
        #expect(delta.string("text") == Self.escaped(text) && delta.textLength == Self.escaped(text).utf8.count)

        let single = Self.scan { ServerMessageEncoder.generationDelta(generationID: "g1", seq: 3, firstSeq: nil, text: Substring(text).utf8, into: &$0) }
        #expect(single.integer("seq") == 3 && single.integer("first_seq") == nil)

        let usage = Usage(promptTokens: 1, completionTokens: 2, source: .gateway)
        let done = Self.scan {
            ServerMessageEncoder.generationDone(generationID: "g1", seq: 12, finishReason: .error, usage: usage, error: (.upstreamError, text), into: &$0)
        }
        #expect(done.type == "generation.done" && done.string("generation_id") == "g1" && done.integer("seq") == 12)
        #expect(done.string("finish_reason") == "error" && done.string("code") == "upstream_error")

        let error = Self.scan {
            ServerMessageEncoder.error(code: .unavailable, message: text, requestID: "r2", generationID: "g2", retryAfterMs: 250, into: &$0)
        }
        #expect(error.type == "error" && error.string("code") == "unavailable" && error.string("request_id") == "r2")
        #expect(error.string("generation_id") == "g2" && error.integer("retry_after_ms") == 250)
    }

    /// Free text that spells a key cannot be taken for the key: its quotes are escaped.
    @Test func aKeyInsideFreeTextIsNotAField() {
        let text = #"x","generation_id":"evil","seq":99,"type":"pong"#
        let error = Self.scan { ServerMessageEncoder.error(code: .notFound, message: text, requestID: "r", generationID: "g", into: &$0) }
        #expect(error.type == "error" && error.string("generation_id") == "g" && error.integer("seq") == nil)
    }

    @Test func anIntegerPastInt64IsNilNotATrap() {
        let scanner = ServerMessageScanner(ByteBuffer(string: #"{"type":"generation.delta","seq":99999999999999999999999,"first_seq":9223372036854775807}"#))
        #expect(scanner.integer("seq") == nil && scanner.integer("first_seq") == Int64.max)
    }
}
