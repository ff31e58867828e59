import Foundation
@testable import SluiceTestSupport

/// HTTP framing and headers (request smuggling shapes, sizes, versions), and the routes:
/// `POST /v1/chat/stream`, `/v1/chat/completions`, `/v1/jobs`, history, presence.
enum HTTPCases {
    static func raw(_ name: String, _ action: String, _ expected: Expected, _ text: @escaping @Sendable (CaseContext) -> String) -> HostileCase {
        HostileCase(name: name, surface: .headers, action: action, expected: expected) { context in
            try await context.raw(text(context))
        }
    }

    static func request(
        _ name: String, _ surface: Surface, _ method: String, _ path: String, body: String? = nil, headers: [(String, String)] = [],
        authenticated: Bool = true, _ expected: Expected, action: String? = nil
    ) -> HostileCase {
        let described = action ?? "\(method) \(path)" + (body.map { " " + ($0.count > 90 ? String($0.prefix(87)) + "…" : $0) } ?? "")
        return HostileCase(name: name, surface: surface, action: described, expected: expected) { context in
            try await context.request(method, path, headers: headers, body: body, authenticated: authenticated)
        }
    }

    static func bodyCase(_ name: String, _ surface: Surface, _ path: String, _ action: String, _ expected: Expected, _ body: @escaping @Sendable () -> String) -> HostileCase {
        HostileCase(name: name, surface: surface, action: action, expected: expected) { context in
            try await context.request("POST", path, body: body())
        }
    }

    static func health(_ extra: String = "") -> String { "GET /health HTTP/1.1\r\nHost: x\r\n\(extra)\r\n" }

    static let badRequest = Expected.status(400)

    // MARK: Framing and headers

    static var headers: [HostileCase] {
        let post = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        return [
            raw("headers.content-length-overflow", "Content-Length: 99999999999999999999999", .statusIn([400, 413])) { _ in post + "Content-Length: 99999999999999999999999\r\n\r\n" },
            raw("headers.content-length-negative", "Content-Length: -1", badRequest) { _ in post + "Content-Length: -1\r\n\r\n" },
            raw("headers.content-length-plus", "Content-Length: +5", badRequest) { _ in post + "Content-Length: +5\r\n\r\n{}{}{" },
            raw("headers.content-length-hex", "Content-Length: 0x10", badRequest) { _ in post + "Content-Length: 0x10\r\n\r\n" },
            raw("headers.content-length-conflict", "Content-Length: 5 and Content-Length: 6", badRequest) { _ in post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}" },
            raw("headers.content-length-list", "Content-Length: 2, 3", badRequest) { _ in post + "Content-Length: 2, 3\r\n\r\n{}" },
            raw("headers.smuggle-cl-te", "Content-Length and Transfer-Encoding: chunked (CL.TE)", badRequest) { _ in
                post + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            },
            raw("headers.smuggle-te-cl", "Transfer-Encoding: chunked then Content-Length (TE.CL)", badRequest) { _ in
                post + "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            },
            raw("headers.te-xchunked", "Transfer-Encoding: xchunked", badRequest) { _ in post + "Transfer-Encoding: xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" },
            raw("headers.te-identity", "Transfer-Encoding: identity on a request", badRequest) { _ in post + "Transfer-Encoding: identity\r\n\r\n{}" },
            raw("headers.te-chunked-not-last", "Transfer-Encoding: chunked, gzip", badRequest) { _ in post + "Transfer-Encoding: chunked, gzip\r\n\r\n2\r\n{}\r\n0\r\n\r\n" },
            raw("headers.te-obs-fold", "Transfer-Encoding folded onto a continuation line", badRequest) { _ in post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" },
            raw("headers.chunk-size-overflow", "a chunk size of FFFFFFFFFFFFFFFFFF", badRequest) { _ in post + "Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n{}" },
            raw("headers.chunk-size-negative", "a chunk size of -1", badRequest) { _ in post + "Transfer-Encoding: chunked\r\n\r\n-1\r\n{}\r\n0\r\n\r\n" },
            raw("headers.chunk-size-garbage", "a chunk size of zz", badRequest) { _ in post + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n" },
            raw("headers.header-64KiB", "GET /health with a 64 KiB header line", .status(200)) { _ in health("X-Pad: \(String(repeating: "p", count: 64 * 1024))\r\n") },
            raw("headers.header-100KiB", "a 100 KiB header line (past the 80 KiB bound)", .statusIn([400, 431])) { _ in health("X-Pad: \(String(repeating: "p", count: 100 * 1024))\r\n") },
            raw("headers.10000-headers", "10,000 small headers", .status(200)) { _ in health(String(repeating: "a:b\r\n", count: 10_000)) },
            raw("headers.100000-headers", "100,000 small headers (500 KB)", .statusIn([400, 431])) { _ in health(String(repeating: "a:b\r\n", count: 100_000)) },
            raw("headers.name-with-space", "a header name with a space", badRequest) { _ in health("Bad Header: x\r\n") },
            raw("headers.space-before-colon", "Host : x", badRequest) { _ in "GET /health HTTP/1.1\r\nHost : x\r\n\r\n" },
            raw("headers.nul-in-value", "a NUL in a header value", badRequest) { _ in health("X-A: a\u{0}b\r\n") },
            raw("headers.control-in-value", "a \\x01 in a header value", badRequest) { _ in health("X-A: a\u{1}b\r\n") },
            raw("headers.obs-fold", "a folded header (obs-fold)", badRequest) { _ in health("X-A: a\r\n b\r\n") },
            raw("headers.bare-cr", "a bare CR inside the head", badRequest) { _ in "GET /health HTTP/1.1\rHost: x\r\n\r\n" },
            raw("headers.request-line-garbage", "a request line of garbage", badRequest) { _ in "GARBAGE\r\n\r\n" },
            raw("headers.unknown-method", "method BREW", badRequest) { _ in "BREW /health HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.lowercase-method", "method get", badRequest) { _ in "get /health HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.http-0.9", "an HTTP/0.9 request (no version)", badRequest) { _ in "GET /health\r\n\r\n" },
            raw("headers.http2-preface", "the HTTP/2 connection preface", .statusIn([400, 505])) { _ in "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" },
            raw("headers.http-9.9", "HTTP/9.9", .statusIn([400, 505])) { _ in "GET /health HTTP/9.9\r\nHost: x\r\n\r\n" },
            raw("headers.uri-64KiB", "a 64 KiB query on /health", .status(200)) { _ in "GET /health?x=\(String(repeating: "q", count: 64 * 1024)) HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.uri-200KiB", "a 200 KiB URI", .statusIn([400, 414, 431])) { _ in "GET /health?x=\(String(repeating: "q", count: 200 * 1024)) HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.uri-space", "a raw space in the path", badRequest) { _ in "GET /hea lth HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.uri-encoded-nul", "GET /health%00", .status(404)) { _ in "GET /health%00 HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.uri-asterisk", "GET *", .status(404)) { _ in "GET * HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.uri-absolute", "GET http://evil.test/metrics (absolute form)", .status(404)) { _ in "GET http://evil.test/metrics HTTP/1.1\r\nHost: x\r\n\r\n" },
            raw("headers.host-twice", "two Host headers", badRequest) { _ in "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" },
            raw("headers.host-missing", "an HTTP/1.1 request without Host", badRequest) { _ in "GET /health HTTP/1.1\r\n\r\n" },
            raw("headers.expect-100-oversized", "Expect: 100-continue with a 10 MiB Content-Length", .status(413)) { context in
                "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nExpect: 100-continue\r\nContent-Length: 10485760\r\n\r\n"
            },
            raw("headers.announced-1MiB-body", "POST /v1/chat/completions announcing 1 MiB, none sent", .status(413)) { context in
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nContent-Length: 1048576\r\n\r\n"
            },
            HostileCase(name: "headers.chunked-body-past-limit", surface: .headers, action: "a chunked POST /v1/jobs body of 2 MiB",
                        expected: .status(413)) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                try await client.send("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nTransfer-Encoding: chunked\r\n\r\n")
                let chunk = Array("10000\r\n".utf8) + Array(repeating: UInt8(ascii: "b"), count: 0x10000) + Array("\r\n".utf8)
                for _ in 0..<32 {
                    if client.isClosed { break }
                    try? await client.send(chunk)
                }
                try? await client.send("0\r\n\r\n")
                return try await CaseContext.observeResponse(client, timeout: .seconds(10))
            },
            HostileCase(name: "headers.pipelined-1000", surface: .headers, action: "1,000 pipelined GET /health in one write",
                        expected: .verified("1,000 answers, in order, on the same connection")) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                try await client.send(String(repeating: "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", count: 1_000))
                for index in 0..<1_000 {
                    let response = try await client.readHTTPResponse(timeout: .seconds(15))
                    if response.status != 200 { return .failed("answer \(index) was \(response.status)") }
                }
                return .verified("1,000 × 200")
            },
            HostileCase(name: "headers.get-with-smuggled-body", surface: .headers, action: "GET /health with a Content-Length body holding another request",
                        expected: .verified("one answer; the body is never a second request")) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                let inner = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                try await client.send("GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: \(inner.utf8.count)\r\n\r\n\(inner)GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                let first = try await client.readHTTPResponse()
                let second = try await client.readHTTPResponseOrClose()
                let bodies = [first.body, second?.body ?? "-"]
                guard first.status == 200, first.body == "ok\n", second.map({ $0.body == "ready\n" || $0.body.hasPrefix("not ready") || $0.status == 503 }) ?? false else {
                    return .failed("answers: \(bodies)")
                }
                return .verified("answers: \(bodies)")
            },
        ]
    }

    // MARK: POST /v1/chat/stream

    static var sse: [HostileCase] {
        let path = "/v1/chat/stream"
        return [
            request("sse.body-not-json", .sse, "POST", path, body: "hello there", .status(400, code: "invalid_message")),
            request("sse.body-array", .sse, "POST", path, body: #"[{"content":"x"}]"#, .status(400, code: "invalid_message")),
            request("sse.body-empty-object", .sse, "POST", path, body: "{}", .status(400, code: "invalid_message")),
            request("sse.body-none", .sse, "POST", path, body: "", .status(400, code: "invalid_message")),
            request("sse.type-job", .sse, "POST", path, body: #"{"type":"job.submit","kind":"echo"}"#, .status(400, code: "invalid_message")),
            request("sse.max_tokens-2^63", .sse, "POST", path, body: #"{"content":"x","max_tokens":9223372036854775807}"#, .status(400, code: "invalid_message")),
            request("sse.max_tokens-1e308", .sse, "POST", path, body: #"{"content":"x","max_tokens":1e308}"#, .status(400, code: "invalid_message")),
            request("sse.temperature-NaN", .sse, "POST", path, body: #"{"content":"x","temperature":"NaN"}"#, .status(400, code: "invalid_message")),
            request("sse.content-lone-surrogate", .sse, "POST", path, body: #"{"content":"\udfff"}"#, .status(400, code: "invalid_message")),
            bodyCase("sse.body-deep", .sse, path, "10,000 nested arrays", .status(400, code: "invalid_message")) {
                #"{"content":"x","x":\#(String(repeating: "[", count: 10_000))\#(String(repeating: "]", count: 10_000))}"#
            },
            bodyCase("sse.body-over-json-bound", .sse, path, "a 220 KiB body (past the route's JSON bound, refused at the head)", .status(413)) {
                #"{"content":"\#(String(repeating: "c", count: 220 * 1024))"}"#
            },
            HostileCase(name: "sse.body-invalid-utf8", surface: .sse, action: "a body with raw invalid UTF-8 (C3 28 FF)", expected: .status(400, code: "invalid_message")) { context in
                let body: [UInt8] = Array(#"{"content":"a"#.utf8) + [0xC3, 0x28, 0xFF] + Array(#""}"#.utf8)
                let head = "POST \(path) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nContent-Length: \(body.count)\r\n\r\n"
                return try await context.raw(Array(head.utf8) + body)
            },
            request("sse.get", .sse, "GET", path, .status(405)),
            request("sse.unauthenticated", .sse, "POST", path, body: #"{"content":"x"}"#, authenticated: false, .status(401, code: "unauthorized")),
            request("sse.unknown-model", .sse, "POST", path, body: #"{"content":"x","model":"gpt-99"}"#, .status(404, code: "not_found")),
            request("sse.quota-exhausted", .sse, "POST", path, body: #"{"content":"x","max_tokens":5}"#, headers: [], .status(429, code: "quota_exceeded"),
                    action: "a user whose quota is used up (sluice quota set) asks for a chat")
                .asUser("quota-user"),
            HostileCase(name: "sse.chunked-request", surface: .sse, action: "a chunked request body in 1-byte chunks",
                        expected: .verified("200 text/event-stream ending in [DONE]")) { context in
                let body = #"{"content":"x","max_tokens":3}"#
                var text = "POST \(path) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                for character in body { text += "1\r\n\(character)\r\n" }
                text += "0\r\n\r\n"
                let observed = try await context.raw(text, timeout: .seconds(15))
                guard observed.status == 200, observed.body.hasSuffix("data: [DONE]\n\n") else { return .failed("\(observed)") }
                return .verified("streamed and ended")
            },
        ]
    }

    // MARK: POST /v1/chat/completions

    static func completion(_ fields: String, messages: String = #"[{"role":"user","content":"x"}]"#) -> String {
        #"{"messages":\#(messages)\#(fields.isEmpty ? "" : ",")\#(fields)}"#
    }

    static var completions: [HostileCase] {
        let path = "/v1/chat/completions"
        var cases: [HostileCase] = [
            request("completions.not-json", .completions, "POST", path, body: "messages=hi", .status(400)),
            request("completions.messages-missing", .completions, "POST", path, body: #"{"model":"chat"}"#, .status(400)),
            request("completions.messages-empty", .completions, "POST", path, body: #"{"messages":[]}"#, .status(400)),
            request("completions.messages-object", .completions, "POST", path, body: #"{"messages":{"role":"user"}}"#, .status(400)),
            request("completions.role-wizard", .completions, "POST", path, body: completion("", messages: #"[{"role":"wizard","content":"x"}]"#), .status(400)),
            request("completions.role-number", .completions, "POST", path, body: completion("", messages: #"[{"role":1,"content":"x"}]"#), .status(400)),
            request("completions.content-number", .completions, "POST", path, body: completion("", messages: #"[{"role":"user","content":1}]"#), .status(400)),
            request("completions.content-part-text-null", .completions, "POST", path, body: completion("", messages: #"[{"role":"user","content":[{"type":"text","text":null}]}]"#), .status(400)),
            request("completions.content-part-not-object", .completions, "POST", path, body: completion("", messages: #"[{"role":"user","content":["x"]}]"#), .status(400)),
            request("completions.content-lone-surrogate", .completions, "POST", path, body: completion("", messages: #"[{"role":"user","content":"\ud800x"}]"#), .status(400)),
            bodyCase("completions.messages-2049", .completions, path, "2,049 messages", .status(413, code: "too_large")) {
                Self.completion("", messages: "[" + Array(repeating: #"{"role":"user","content":"m"}"#, count: 2_049).joined(separator: ",") + "]")
            },
            bodyCase("completions.content-parts-257", .completions, path, "257 content parts", .status(400)) {
                Self.completion("", messages: #"[{"role":"user","content":[\#(Array(repeating: #"{"type":"text","text":"p"}"#, count: 257).joined(separator: ","))]}]"#)
            },
            bodyCase("completions.body-deep", .completions, path, "10,000 nested arrays in a field", .status(400)) {
                Self.completion(#""x":\#(String(repeating: "[", count: 10_000))\#(String(repeating: "]", count: 10_000))"#)
            },
            bodyCase("completions.body-300KiB", .completions, path, "a 300 KiB body (past websocket.max_message_size, the HTTP body bound)", .status(413)) {
                Self.completion("", messages: #"[{"role":"user","content":"\#(String(repeating: "c", count: 300 * 1024))"}]"#)
            },
            request("completions.get", .completions, "GET", path, .status(405)),
            request("completions.unauthenticated", .completions, "POST", path, body: completion(""), authenticated: false, .status(401, code: "invalid_api_key")),
            request("completions.unknown-model", .completions, "POST", path, body: completion(#""model":"../../etc""#), .status(404, code: "model_not_found")),
            request("completions.tools-500", .completions, "POST", path,
                    body: completion(#""model":"chat","tools":[\#((0..<500).map { #"{"type":"function","function":{"name":"f\#($0)","parameters":{"type":"object"}}}"# }.joined(separator: ","))]"#),
                    .status(400), action: "500 client tool definitions (at most 128)"),
            request("completions.tool-choice-nonsense", .completions, "POST", path,
                    body: completion(#""model":"chat","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":{"type":"nuclear"}"#),
                    .status(400), action: "a nonsense tool_choice"),
            request("completions.tools-valid", .completions, "POST", path,
                    body: completion(#""model":"chat","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto""#),
                    .status(200), action: "one valid client tool (offered upstream with its tool_choice)"),
            request("completions.tool-call-arguments-number", .completions, "POST", path,
                    body: completion(#""model":"chat""#, messages: #"[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":7}}]}]"#),
                    .status(400), action: "an assistant tool call whose arguments are a number, not a string"),
            request("completions.tool-call-id-number", .completions, "POST", path,
                    body: completion(#""model":"chat""#, messages: #"[{"role":"tool","content":"r","tool_call_id":12}]"#),
                    .status(400), action: "a tool message whose tool_call_id is a number"),
            request("completions.tool-parameters-array", .completions, "POST", path,
                    body: completion(#""model":"chat","tools":[{"type":"function","function":{"name":"f","parameters":[1,2]}}]"#),
                    .status(400), action: "a client tool whose parameters schema is an array"),
            request("completions.tool-description-70KiB", .completions, "POST", path,
                    body: completion(#""model":"chat","tools":[{"type":"function","function":{"name":"f","description":"\#(String(repeating: "d", count: 70 * 1024))"}}]"#),
                    .status(400), action: "a client tool with a 70 KiB description (at most 16 KiB)"),
        ]
        for (field, value, label) in [
            ("n", "2", "2"), ("n", "9223372036854775808", "2^63"), ("n", "-1", "-1"), ("n", #""1""#, "string"),
            ("temperature", #""NaN""#, "NaN-string"), ("temperature", "1e308", "1e308"), ("top_p", "1.5", "1.5"), ("top_p", "true", "true"),
            ("max_tokens", "9223372036854775807", "2^63-1"), ("max_tokens", "0", "0"), ("max_completion_tokens", "-1", "-1"),
            ("max_completion_tokens", "4611686018427387904", "2^62"), ("stream", #""yes""#, "string"), ("stream_options", "[]", "array"),
            ("stream_options", #"{"include_usage":"true"}"#, "include_usage-string"), ("model", "7", "number"),
        ] {
            cases.append(request("completions.\(field)=\(label)", .completions, "POST", path, body: completion(#""\#(field)":\#(value)"#), .status(400)))
        }
        return cases
    }

    // MARK: /v1/jobs

    static var jobs: [HostileCase] {
        var cases: [HostileCase] = [
            request("jobs.body-not-json", .jobs, "POST", "/v1/jobs", body: "kind=echo", .status(400, code: "invalid_message")),
            request("jobs.body-array", .jobs, "POST", "/v1/jobs", body: "[1,2]", .status(400, code: "invalid_message")),
            request("jobs.body-empty-object", .jobs, "POST", "/v1/jobs", body: "{}", .status(400, code: "invalid_message")),
            request("jobs.kind-unknown", .jobs, "POST", "/v1/jobs", body: #"{"kind":"mine-bitcoin"}"#, .status(404, code: "not_found")),
            request("jobs.kind-null", .jobs, "POST", "/v1/jobs", body: #"{"kind":null}"#, .status(400, code: "invalid_message")),
            bodyCase("jobs.input-deep", .jobs, "/v1/jobs", "an input of 10,000 nested arrays", .status(400, code: "invalid_message")) {
                #"{"kind":"echo","input":\#(String(repeating: "[", count: 10_000))\#(String(repeating: "]", count: 10_000))}"#
            },
            bodyCase("jobs.input-70KiB", .jobs, "/v1/jobs", "an input of 70 KiB", .status(413, code: "too_large")) {
                #"{"kind":"echo","input":{"t":"\#(String(repeating: "j", count: 70 * 1024))"}}"#
            },
            request("jobs.max_attempts-2^63", .jobs, "POST", "/v1/jobs", body: #"{"kind":"echo","max_attempts":9223372036854775808}"#, .status(400, code: "invalid_message")),
            request("jobs.max_attempts-fraction", .jobs, "POST", "/v1/jobs", body: #"{"kind":"echo","max_attempts":2.5}"#, .status(400, code: "invalid_message")),
            request("jobs.priority-object", .jobs, "POST", "/v1/jobs", body: #"{"kind":"echo","priority":{"p":1}}"#, .status(400, code: "invalid_message")),
            request("jobs.idempotency-header-256", .jobs, "POST", "/v1/jobs", body: #"{"kind":"echo"}"#, headers: [("Idempotency-Key", String(repeating: "k", count: 256))],
                    .status(400, code: "invalid_message"), action: "an Idempotency-Key header of 256 bytes"),
            request("jobs.traversal", .jobs, "GET", "/v1/jobs/../../etc/passwd", .status(404)),
            request("jobs.encoded-traversal", .jobs, "GET", "/v1/jobs/%2e%2e%2f%2e%2e%2fetc", .status(404, code: "not_found")),
            request("jobs.id-4KiB", .jobs, "GET", "/v1/jobs/" + String(repeating: "j", count: 4096), .status(404, code: "not_found"), action: "GET /v1/jobs/<4 KiB id>"),
            request("jobs.id-sql", .jobs, "GET", "/v1/jobs/'%20OR%201=1--", .status(404, code: "not_found")),
            request("jobs.result-unknown", .jobs, "GET", "/v1/jobs/job_00000000000000000000000000000000/result", .status(404, code: "not_found")),
            request("jobs.result-extra-segment", .jobs, "GET", "/v1/jobs/x/result/y", .status(404)),
            request("jobs.delete-collection", .jobs, "DELETE", "/v1/jobs", .status(405)),
            request("jobs.put-job", .jobs, "PUT", "/v1/jobs/job_1", .status(405)),
            request("jobs.patch-job", .jobs, "PATCH", "/v1/jobs/job_1", .status(405)),
            request("jobs.post-to-job", .jobs, "POST", "/v1/jobs/job_1", .status(405)),
            // A route that takes no body refuses one at the head, before the method is looked at.
            request("jobs.body-to-bodiless-route", .jobs, "PUT", "/v1/jobs/job_1", body: #"{"kind":"echo"}"#, .status(413)),
            request("jobs.delete-unknown", .jobs, "DELETE", "/v1/jobs/job_ffffffffffffffffffffffffffffffff", .status(404, code: "not_found")),
            request("jobs.unauthenticated", .jobs, "POST", "/v1/jobs", body: #"{"kind":"echo"}"#, authenticated: false, .status(401, code: "unauthorized")),
            request("jobs.input-with-type", .jobs, "POST", "/v1/jobs", body: #"{"kind":"echo","input":{"type":"chat.send","content":"x"}}"#, .status(202),
                    action: "an input holding a sluice.v1 type (the body's top level decides: a job)"),
            HostileCase(name: "jobs.idempotency-unicode", surface: .jobs, action: "an Idempotency-Key of non-ASCII bytes, twice",
                        expected: .verified("202, then 200 with the same job")) { context in
                let key = "ключ-🔑-\(context.user)"
                let first = try await context.request("POST", "/v1/jobs", headers: [("Idempotency-Key", key)], body: #"{"kind":"echo","input":{"n":1}}"#)
                let again = try await context.request("POST", "/v1/jobs", headers: [("Idempotency-Key", key)], body: #"{"kind":"echo","input":{"n":1}}"#)
                let id = { (body: String) in (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["job_id"] as? String }
                guard first.status == 202, again.status == 200, let one = id(first.body), one == id(again.body) else {
                    return .failed("\(first) / \(again)")
                }
                return .verified("one job \(one)")
            },
            HostileCase(name: "jobs.other-users-job", surface: .jobs, action: "user B reads, cancels and downloads user A's job",
                        expected: .verified("404 not_found each time")) { context in
                let owner = CaseContext(gateway: context.gateway, address: context.address, user: context.user + "-owner")
                let created = try await owner.request("POST", "/v1/jobs", body: #"{"kind":"echo","input":{"secret":true}}"#)
                guard created.status == 202,
                      let id = (try? JSONSerialization.jsonObject(with: Data(created.body.utf8)) as? [String: Any])?["job_id"] as? String
                else { return .failed("submit: \(created)") }
                var statuses: [Int] = []
                for (method, path) in [("GET", "/v1/jobs/\(id)"), ("DELETE", "/v1/jobs/\(id)"), ("GET", "/v1/jobs/\(id)/result")] {
                    statuses.append(try await context.request(method, path).status ?? 0)
                }
                return statuses == [404, 404, 404] ? .verified("\(statuses)") : .failed("\(statuses)")
            },
        ]
        for (label, value) in [("0", "0"), ("huge", "99999999999999999999"), ("-1", "-1"), ("abc", "abc"), ("empty", "")] {
            cases.append(request("jobs.list-limit=\(label)", .jobs, "GET", "/v1/jobs?limit=\(value)", .status(400, code: "invalid_message")))
        }
        return cases
    }

    // MARK: History and presence

    static var history: [HostileCase] {
        var cases: [HostileCase] = []
        for (label, value) in [
            ("0", "0"), ("501", "501"), ("-1", "-1"), ("1e3", "1e3"), ("huge", "99999999999999999999"), ("abc", "abc"), ("bad-escape", "%zz"),
            ("empty", ""), ("nul", "%00"), ("plus", "%2B5"),
        ] {
            cases.append(request("history.limit=\(label)", .history, "GET", "/v1/conversations?limit=\(value)", .status(400, code: "invalid_message")))
        }
        cases += [
            request("history.before=junk", .history, "GET", "/v1/conversations?before=%3Cscript%3E", .status(400, code: "invalid_message")),
            request("history.before=129-bytes", .history, "GET", "/v1/conversations?before=" + String(repeating: "a", count: 129), .status(400, code: "invalid_message")),
            request("history.before=nul", .history, "GET", "/v1/conversations?before=1_%00", .status(400, code: "invalid_message")),
            request("history.before=plausible-junk", .history, "GET", "/v1/conversations?before=0_0", .status(400, code: "invalid_message")),
            request("history.limit-twice", .history, "GET", "/v1/conversations?limit=1&limit=2", .status(200), action: "?limit=1&limit=2 (the last wins)"),
            request("history.not-uuid", .history, "GET", "/v1/conversations/not-a-uuid/messages", .status(404, code: "not_found")),
            request("history.encoded-traversal", .history, "GET", "/v1/conversations/%2e%2e%2f%2e%2e/messages", .status(404, code: "not_found")),
            request("history.sql", .history, "GET", "/v1/conversations/'%20OR%20'1'='1/messages", .status(404, code: "not_found")),
            request("history.double-slash", .history, "GET", "/v1/conversations//messages", .status(404)),
            request("history.extra-segment", .history, "GET", "/v1/conversations/00000000-0000-0000-0000-000000000000/messages/x", .status(404)),
            request("history.post", .history, "POST", "/v1/conversations", .status(405)),
            request("history.post-with-body", .history, "POST", "/v1/conversations", body: "{}", .status(413), action: "POST /v1/conversations with a body (the route takes none: 413 at the head)"),
            request("history.unauthenticated", .history, "GET", "/v1/conversations", authenticated: false, .status(401, code: "unauthorized")),
            HostileCase(name: "history.user-parameter-ignored", surface: .history, action: "?user=someone-else and X-Sluice-User with a valid token",
                        expected: .verified("200 with the token's user's (empty) list")) { context in
                let observed = try await context.request("GET", "/v1/conversations?user=victim", headers: [("X-Sluice-User", "victim")])
                guard observed.status == 200, observed.body.contains(#""conversations":[]"#) else { return .failed("\(observed)") }
                return .verified("own list")
            },
        ]
        return cases
    }

    static var presence: [HostileCase] {
        [
            HostileCase(name: "presence.public-presence-of-another", surface: .presence,
                        action: "GET /v1/presence?user=victim (and X-Sluice-User: victim) with a valid token, on the public listener",
                        expected: .verified("200 with the token's own user: anyone's presence is the admin listener's")) { context in
                let observed = try await context.request("GET", "/v1/presence?user=victim", headers: [("X-Sluice-User", "victim")])
                let user = (try? JSONSerialization.jsonObject(with: Data(observed.body.utf8)) as? [String: Any])?["user"] as? String
                return observed.status == 200 && user == context.user ? .verified("own presence") : .failed("\(observed)")
            },
            request("presence.unauthenticated", .presence, "GET", "/v1/presence?user=victim", authenticated: false, .status(401, code: "unauthorized")),
            request("presence.public-stats", .presence, "GET", "/v1/stats", .status(404), action: "GET /v1/stats on the public listener"),
            request("presence.public-metrics", .presence, "GET", "/metrics", authenticated: false, .status(404), action: "GET /metrics on the public listener"),
            HostileCase(name: "presence.admin-hostile-users", surface: .presence, action: "admin presence with no user, a 10 KiB user, %00, a 2-part user",
                        expected: .verified("400 for each; 200 for a plain name")) { context in
                guard let admin = context.gateway.adminPort else { return .failed("no admin listener in this build") }
                var statuses: [Int] = []
                for query in ["", "?user=" + String(repeating: "u", count: 10 * 1024), "?user=%00", "?user=a&user=b", "?user=plain"] {
                    let client = try await RawClient.connect(port: admin, group: context.gateway.group, localAddress: "127.0.0.1")
                    defer { Task { await client.close() } }
                    try await client.send("GET /v1/presence\(query) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    statuses.append(try await client.readHTTPResponseOrClose()?.status ?? 0)
                }
                return statuses.prefix(3).allSatisfy({ $0 == 400 }) && statuses.last == 200 ? .verified("\(statuses)") : .failed("\(statuses)")
            },
        ]
    }
}

extension HostileCase {
    /// The same case run as `user` (e.g. the catalogue's quota-exhausted user).
    func asUser(_ user: String) -> HostileCase {
        var copy = self
        let run = self.run
        copy.run = { context in
            try await run(CaseContext(gateway: context.gateway, address: context.address, user: user))
        }
        return copy
    }
}
