import Foundation
@testable import SluiceTestSupport

/// `sluice.v1` messages: every field with numeric extremes, wrong types, null, deep nesting,
/// huge strings, lone surrogates, unknown types, duplicate and very many keys. A protocol
/// error never closes the connection: every case also checks the session answers a ping after.
enum ProtocolCases {
    static func message(_ name: String, _ action: String, _ text: @escaping @Sendable () -> String, _ expected: Expected) -> HostileCase {
        HostileCase(name: name, surface: .messages, action: action, expected: expected) { context in
            try await context.message(text())
        }
    }

    static func message(_ name: String, _ text: String, _ expected: Expected) -> HostileCase {
        Self.message(name, text.count > 120 ? String(text.prefix(117)) + "…" : text, { text }, expected)
    }

    /// A chat.send whose `field` is `value` (JSON text), everything else valid.
    static func chatField(_ field: String, _ value: String, _ expected: Expected, name: String? = nil) -> HostileCase {
        let label = name ?? value
        return Self.message("messages.chat.\(field)=\(label)", #"{"type":"chat.send","content":"x","request_id":"r","\#(field)":\#(value)}"#, expected)
    }

    static let invalid = Expected.error("invalid_message")

    static var cases: [HostileCase] {
        var cases: [HostileCase] = []
        // max_tokens: integers past every width, signed zero, fractions, non-numbers.
        for (label, value) in [
            ("2^53", "9007199254740992"), ("2^63", "9223372036854775808"), ("2^64", "18446744073709551616"), ("-0", "-0"),
            ("-1", "-1"), ("1e308", "1e308"), ("1e400", "1e400"), ("1.5", "1.5"), ("5e-324", "5e-324"), ("string", #""10""#),
            ("NaN-string", #""NaN""#), ("true", "true"), ("array", "[1]"), ("object", #"{"n":1}"#), ("limit+1", "32769"),
        ] {
            cases.append(Self.chatField("max_tokens", value, Self.invalid, name: label))
        }
        for (label, value) in [
            ("NaN-string", #""NaN""#), ("Infinity-string", #""Infinity""#), ("1e308", "1e308"), ("-0.0001", "-0.0001"), ("true", "true"),
            ("2^63", "9223372036854775808"),
        ] {
            cases.append(Self.chatField("temperature", value, Self.invalid, name: label))
        }
        cases += [
            Self.message("messages.chat.content=null", #"{"type":"chat.send","content":null}"#, Self.invalid),
            Self.message("messages.chat.content=number", #"{"type":"chat.send","content":42}"#, Self.invalid),
            Self.message("messages.chat.content=array", #"{"type":"chat.send","content":["x"]}"#, Self.invalid),
            Self.message("messages.chat.content=object", #"{"type":"chat.send","content":{"text":"x"}}"#, Self.invalid),
            Self.message("messages.chat.content-over-limit", "a chat.send of 64 KiB + 1 of content", {
                #"{"type":"chat.send","content":"\#(String(repeating: "c", count: 64 * 1024 + 1))"}"#
            }, .error("too_large")),
            Self.message("messages.chat.content-escapes-over-limit", "content of 35,000 \\u00e9 escapes (70 KB of text in 210 KB of JSON)", {
                #"{"type":"chat.send","content":"\#(String(repeating: "\\u00e9", count: 35_000))"}"#
            }, .error("too_large")),
            Self.message("messages.chat.content-lone-surrogate", #"{"type":"chat.send","content":"\ud800","request_id":"s"}"#, Self.invalid),
            Self.message("messages.chat.content-reversed-surrogates", #"{"type":"chat.send","content":"\udc00\ud800"}"#, Self.invalid),
            Self.message("messages.chat.conversation_id=traversal", #"{"type":"chat.send","content":"x","conversation_id":"../../etc/passwd"}"#, .error("not_found")),
            Self.message("messages.chat.conversation_id=sql", #"{"type":"chat.send","content":"x","conversation_id":"' OR 1=1 --"}"#, .error("not_found")),
            Self.message("messages.chat.conversation_id=number", #"{"type":"chat.send","content":"x","conversation_id":7}"#, Self.invalid),
            Self.message("messages.chat.model=traversal", #"{"type":"chat.send","content":"x","model":"../../admin"}"#, .error("not_found")),
            Self.message("messages.chat.model=number", #"{"type":"chat.send","content":"x","model":7}"#, Self.invalid),
            Self.message("messages.chat.tools=65", "a tools list of 65 names", {
                #"{"type":"chat.send","content":"x","tools":[\#(Array(repeating: #""calculator""#, count: 65).joined(separator: ","))]}"#
            }, Self.invalid),
            Self.message("messages.chat.tools=numbers", #"{"type":"chat.send","content":"x","tools":[1,2]}"#, Self.invalid),
            Self.message("messages.chat.tools=string", #"{"type":"chat.send","content":"x","tools":"calculator"}"#, Self.invalid),
            Self.message("messages.chat.request_id=object", #"{"type":"chat.send","content":"x","request_id":{"a":1}}"#, Self.invalid),
        ]
        // The type field.
        cases += [
            Self.message("messages.type=unknown", #"{"type":"chat.sendx"}"#, .error("unknown_type")),
            Self.message("messages.type=empty", #"{"type":""}"#, .error("unknown_type")),
            Self.message("messages.type=number", #"{"type":1}"#, Self.invalid),
            Self.message("messages.type=null", #"{"type":null,"content":"x"}"#, Self.invalid),
            Self.message("messages.type-missing", #"{"content":"x"}"#, Self.invalid),
            Self.message("messages.type=capitals", #"{"type":"PING"}"#, .error("unknown_type")),
            Self.message("messages.type=nul", #"{"type":"ping\u0000"}"#, .error("unknown_type")),
            Self.message("messages.type=64KiB", "a type of 64 KiB", { #"{"type":"\#(String(repeating: "t", count: 64 * 1024))"}"# }, .error("unknown_type")),
        ]
        // JSON that is not quite JSON, and JSON that is too much.
        cases += [
            Self.message("messages.json-truncated", #"{"type":"ping""#, Self.invalid),
            Self.message("messages.json-trailing-garbage", #"{"type":"ping"} x"#, Self.invalid),
            Self.message("messages.json-two-objects", #"{"type":"ping"}{"type":"ping"}"#, Self.invalid),
            Self.message("messages.json-single-quotes", "{'type':'ping'}", Self.invalid),
            Self.message("messages.json-comment", #"{"type":"ping" /* hi */}"#, Self.invalid),
            // Foundation's parser allows one trailing comma; nothing depends on rejecting it.
            Self.message("messages.json-trailing-comma", #"{"type":"ping","id":"t",} (accepted: Foundation's parser allows it)"#, { #"{"type":"ping","id":"t",}"# }, .reply("pong")),
            Self.message("messages.json-two-trailing-commas", #"{"type":"ping",,}"#, Self.invalid),
            Self.message("messages.json-NaN-literal", #"{"type":"chat.send","content":"x","temperature":NaN}"#, Self.invalid),
            Self.message("messages.json-Infinity-literal", #"{"type":"chat.send","content":"x","max_tokens":Infinity}"#, Self.invalid),
            Self.message("messages.json-invalid-escape", #"{"type":"ping","id":"\x41"}"#, Self.invalid),
            Self.message("messages.json-deep-arrays", "10,000 nested arrays in a field", {
                #"{"type":"ping","x":\#(String(repeating: "[", count: 10_000))\#(String(repeating: "]", count: 10_000))}"#
            }, Self.invalid),
            Self.message("messages.json-deep-objects", "10,000 nested objects in a field", {
                #"{"type":"ping","x":\#(String(repeating: #"{"a":"#, count: 10_000))1\#(String(repeating: "}", count: 10_000))}"#
            }, Self.invalid),
            Self.message("messages.json-deep-unterminated", "10,000 [ never closed", {
                #"{"type":"ping","x":\#(String(repeating: "[", count: 10_000))"#
            }, Self.invalid),
            Self.message("messages.json-duplicate-type", #"{"type":"chat.send","type":"ping","id":"dup"}"#, .reply("pong")),
            Self.message("messages.json-20000-keys", "a ping with 20,000 extra keys", {
                #"{"type":"ping","id":"many",\#((0..<20_000).map { #""k\#($0)":0"# }.joined(separator: ","))}"#
            }, .reply("pong")),
            Self.message("messages.json-200KiB-id", "a ping whose id is 200 KiB (within the JSON bound)", {
                #"{"type":"ping","id":"\#(String(repeating: "i", count: 200 * 1024))"}"#
            }, .reply("pong")),
            Self.message("messages.json-over-json-bound", "a ping of 230 KiB (past the JSON bound, within the frame bound)", {
                #"{"type":"ping","id":"\#(String(repeating: "i", count: 230 * 1024))"}"#
            }, .error("too_large")),
            Self.message("messages.json-10000-escapes", "an id of 10,000 \\u0041 escapes", {
                #"{"type":"ping","id":"\#(String(repeating: "\\u0041", count: 10_000))"}"#
            }, .reply("pong")),
            Self.message("messages.json-array-is-text", #"[{"type":"ping"}] (not an object: plain text, a chat.send)"#, { #"[{"type":"ping"}]"# }, .reply("generation.started")),
            Self.message("messages.ping-id=number", #"{"type":"ping","id":42}"#, Self.invalid),
            Self.message("messages.ping-id=null", #"{"type":"ping","id":null}"#, .reply("pong")),
            Self.message("messages.ping-id=nul", #"{"type":"ping","id":"\u0000"}"#, .reply("pong")),
        ]
        // Resume, cancel, subscribe.
        cases += [
            Self.message("messages.resume.after_seq=2^53", #"{"type":"generation.resume","generation_id":"gen_1","after_seq":9007199254740992}"#, Self.invalid),
            Self.message("messages.resume.after_seq=-1", #"{"type":"generation.resume","generation_id":"gen_1","after_seq":-1}"#, Self.invalid),
            Self.message("messages.resume.after_seq=string", #"{"type":"generation.resume","generation_id":"gen_1","after_seq":"0"}"#, Self.invalid),
            Self.message("messages.resume.after_seq=2^53-1", #"{"type":"generation.resume","generation_id":"gen_nope","after_seq":9007199254740991}"#, .error("not_found")),
            Self.message("messages.resume.id=traversal", #"{"type":"generation.resume","generation_id":"../../../etc/shadow"}"#, .error("not_found")),
            Self.message("messages.resume.id=64KiB", "a generation_id of 64 KiB", {
                #"{"type":"generation.resume","generation_id":"\#(String(repeating: "g", count: 64 * 1024))"}"#
            }, .error("not_found")),
            Self.message("messages.resume.id=number", #"{"type":"generation.resume","generation_id":12}"#, Self.invalid),
            Self.message("messages.cancel.unknown", #"{"type":"generation.cancel","generation_id":"gen_0000000000000000"}"#, .error("not_found")),
            Self.message("messages.cancel.id=array", #"{"type":"generation.cancel","generation_id":[]}"#, Self.invalid),
            Self.message("messages.subscribe.not-uuid", #"{"type":"conversation.subscribe","conversation_id":"x' OR '1'='1"}"#, .error("not_found")),
            Self.message("messages.subscribe.id=64KiB", "a conversation_id of 64 KiB", {
                #"{"type":"conversation.subscribe","conversation_id":"\#(String(repeating: "c", count: 64 * 1024))"}"#
            }, .error("not_found")),
            Self.message("messages.subscribe.id=null", #"{"type":"conversation.subscribe","conversation_id":null}"#, Self.invalid),
        ]
        // History pages.
        for (label, value) in [("0", "0"), ("501", "501"), ("2^63", "9223372036854775807"), ("-0", "-0"), ("1e308", "1e308"), ("string", #""20""#)] {
            cases.append(Self.message("messages.list.limit=\(label)", #"{"type":"conversation.list","request_id":"l","limit":\#(value)}"#, Self.invalid))
        }
        cases += [
            Self.message("messages.list.before=not-a-cursor", #"{"type":"conversation.list","before":"zzz"}"#, Self.invalid),
            Self.message("messages.list.before=129-bytes", "a 129-byte cursor", { #"{"type":"conversation.list","before":"\#(String(repeating: "a", count: 129))"}"# }, Self.invalid),
            Self.message("messages.list.before=nul", #"{"type":"conversation.list","before":"1_\u0000"}"#, Self.invalid),
            Self.message("messages.list.before=plausible-junk", #"{"type":"conversation.list","before":"0_0"}"#, Self.invalid),
            Self.message("messages.list.before=huge-time", #"{"type":"conversation.list","before":"99999999999999999999999999_00000000-0000-0000-0000-000000000000"}"#, Self.invalid),
            Self.message("messages.history.not-uuid", #"{"type":"conversation.history","conversation_id":"../x"}"#, .error("not_found")),
            Self.message("messages.history.limit=-1", #"{"type":"conversation.history","conversation_id":"00000000-0000-0000-0000-000000000000","limit":-1}"#, Self.invalid),
        ]
        // Jobs over sluice.v1.
        cases += [
            Self.message("messages.job.kind=65-bytes", "a job kind of 65 bytes", { #"{"type":"job.submit","kind":"\#(String(repeating: "k", count: 65))"}"# }, Self.invalid),
            Self.message("messages.job.kind=unknown", #"{"type":"job.submit","kind":"mine-bitcoin","input":{}}"#, .error("not_found")),
            Self.message("messages.job.kind=traversal", #"{"type":"job.submit","kind":"../../bin/sh","input":{}}"#, .error("not_found")),
            Self.message("messages.job.input-deep", "an input of 10,000 nested arrays", {
                #"{"type":"job.submit","kind":"echo","input":\#(String(repeating: "[", count: 10_000))\#(String(repeating: "]", count: 10_000))}"#
            }, Self.invalid),
            Self.message("messages.job.input-70KiB", "an input of 70 KiB", {
                #"{"type":"job.submit","kind":"echo","input":{"text":"\#(String(repeating: "j", count: 70 * 1024))"}}"#
            }, .error("too_large")),
            Self.message("messages.job.priority=urgent", #"{"type":"job.submit","kind":"echo","priority":"urgent"}"#, Self.invalid),
            Self.message("messages.job.priority=17-bytes", #"{"type":"job.submit","kind":"echo","priority":"lowlowlowlowlowlo"}"#, Self.invalid),
            Self.message("messages.job.idempotency_key=256-bytes", "an idempotency_key of 256 bytes", {
                #"{"type":"job.submit","kind":"echo","idempotency_key":"\#(String(repeating: "i", count: 256))"}"#
            }, Self.invalid),
            Self.message("messages.job.get=traversal", #"{"type":"job.get","job_id":"../../"}"#, .error("not_found")),
            Self.message("messages.job.get=empty", #"{"type":"job.get","job_id":""}"#, .error("not_found")),
            Self.message("messages.job.get=number", #"{"type":"job.get","job_id":1}"#, Self.invalid),
            Self.message("messages.job.cancel=unknown", #"{"type":"job.cancel","job_id":"job_ffffffffffffffffffffffffffffffff"}"#, .error("not_found")),
        ]
        for (label, value) in [("0", "0"), ("101", "101"), ("2^63", "9223372036854775808"), ("1.5", "1.5"), ("string", #""3""#), ("true", "true")] {
            cases.append(Self.message("messages.job.max_attempts=\(label)", #"{"type":"job.submit","kind":"echo","max_attempts":\#(value)}"#, Self.invalid))
        }
        cases.append(Self.otherUsersConversation)
        return cases
    }

    /// A conversation of one user asked for by another: `not_found`, like an unknown one.
    static var otherUsersConversation: HostileCase {
        HostileCase(name: "messages.history.other-users-conversation", surface: .messages,
                    action: "user B asks for user A's conversation (history, subscribe, chat.send into it)",
                    expected: .verified("not_found for all three, like an unknown id")) { context in
            let owner = CaseContext(gateway: context.gateway, address: context.address, user: context.user + "-owner")
            let alice = try await owner.session()
            defer { Task { await alice.close() } }
            try await alice.send(TestFrames.text(#"{"type":"chat.send","content":"mine","max_tokens":3}"#))
            let started = try await CaseContext.until("generation.started", alice)
            guard let conversation = started["conversation_id"] as? String else { return .failed("no conversation id: \(started)") }
            _ = try await CaseContext.until("generation.done", alice)
            let bob = try await context.session()
            defer { Task { await bob.close() } }
            var codes: [String] = []
            for message in [
                #"{"type":"conversation.history","conversation_id":"\#(conversation)"}"#,
                #"{"type":"conversation.subscribe","conversation_id":"\#(conversation)"}"#,
                #"{"type":"chat.send","content":"theirs","conversation_id":"\#(conversation)"}"#,
            ] {
                try await bob.send(TestFrames.text(message))
                codes.append(try await CaseContext.until("error", bob)["code"] as? String ?? "?")
            }
            let http = try await context.request("GET", "/v1/conversations/\(conversation)/messages")
            codes.append("HTTP \(http.status ?? 0) \(http.errorCode ?? "-")")
            return codes == ["not_found", "not_found", "not_found", "HTTP 404 not_found"] ? .verified("\(codes)") : .failed("got \(codes)")
        }
    }
}
