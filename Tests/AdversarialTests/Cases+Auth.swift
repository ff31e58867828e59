import Foundation
@testable import SluiceTestSupport

/// Credentials: unsigned and confused algorithms, broken encodings, time claims at and past
/// every range, nested and huge tokens, several credentials at once. All before the upgrade:
/// 401 with the protocol's error object (`unauthorized`), never a 101.
enum AuthCases {
    static let secret = CatalogueGateway.secret

    static var now: Int { Int(Date().timeIntervalSince1970) }

    /// An upgrade carrying `headers` (no token of the case's own), optionally on `query`.
    static func upgrade(_ name: String, _ action: String, query: String = "", _ headers: @escaping @Sendable (CaseContext) -> [(String, String)], _ expected: Expected) -> HostileCase {
        HostileCase(name: name, surface: .jwt, action: action, expected: expected) { context in
            try await context.upgrade(path: "/v1/ws" + query, headers: headers(context), authenticated: false)
        }
    }

    /// An upgrade with `Authorization: Bearer <token>`.
    static func bearer(_ name: String, _ action: String, _ token: @escaping @Sendable (CaseContext) -> String, _ expected: Expected = .status(401, code: "unauthorized")) -> HostileCase {
        Self.upgrade(name, action, { [("Authorization", "Bearer \(token($0))")] }, expected)
    }

    /// A signed token with these claims (JSON text).
    static func claims(_ name: String, _ action: String, _ claims: @escaping @Sendable (CaseContext) -> String, _ expected: Expected = .status(401, code: "unauthorized")) -> HostileCase {
        Self.bearer(name, action, { TestJWT.token(claims: claims($0), secret: Self.secret) }, expected)
    }

    static func header(_ name: String, _ action: String, _ header: String, _ expected: Expected = .status(401, code: "unauthorized")) -> HostileCase {
        Self.bearer(name, action, { TestJWT.token(header: header, claims: #"{"sub":"\#($0.user)","exp":\#(Self.now + 600)}"#, secret: Self.secret) }, expected)
    }

    static var cases: [HostileCase] {
        let unauthorized = Expected.status(401, code: "unauthorized")
        var cases: [HostileCase] = [
            header("jwt.alg-none", #"alg "none" (signed anyway)"#, #"{"alg":"none","typ":"JWT"}"#),
            header("jwt.alg-None", #"alg "None""#, #"{"alg":"None"}"#),
            header("jwt.alg-missing", "no alg in the header", #"{"typ":"JWT"}"#),
            header("jwt.alg-HS512", "alg HS512 over the HS256 key", #"{"alg":"HS512"}"#),
            header("jwt.alg-RS256-confusion", "alg RS256 with an HMAC signature (algorithm confusion)", #"{"alg":"RS256"}"#),
            header("jwt.alg-number", "alg 256", #"{"alg":256}"#),
            header("jwt.header-array", "a header that is a JSON array", #"["HS256"]"#),
            header("jwt.header-not-json", "a header that is not JSON", "HS256"),
            header("jwt.crit", "a crit header the server does not understand", #"{"alg":"HS256","crit":["exp"]}"#),
            header("jwt.kid-unknown", "a kid no key has", #"{"alg":"HS256","kid":"other-key"}"#),
            header("jwt.header-deep", "a header with 5,000 nested arrays", #"{"alg":"HS256","x":\#(String(repeating: "[", count: 5_000))\#(String(repeating: "]", count: 5_000))}"#),
            HostileCase(name: "jwt.kid-40KiB", surface: .jwt, action: "a kid of 40 KiB (a 54 KiB header, within the 80 KiB bound)",
                        expected: .verified("401 unknown key id, and the kid is not echoed")) { context in
                let kid = "KIDMARK" + String(repeating: "k", count: 40 * 1024)
                let token = TestJWT.token(header: #"{"alg":"HS256","kid":"\#(kid)"}"#, claims: #"{"sub":"x","exp":\#(Self.now + 60)}"#, secret: Self.secret)
                var observed = try await context.upgrade(headers: [("Authorization", "Bearer \(token)")], authenticated: false)
                if observed.status != 401 || observed.body.contains("KIDMARK") { observed.problem = "expected 401 without the kid echoed" }
                return observed
            },
            bearer("jwt.kid-1MiB", "a token whose kid is 1 MiB (past the 80 KiB header bound)", {
                TestJWT.token(header: #"{"alg":"HS256","kid":"\#(String(repeating: "k", count: 1 << 20))"}"#, claims: #"{"sub":"\#($0.user)"}"#, secret: Self.secret)
            }, .statusIn([400, 431])),
            bearer("jwt.bad-base64", "base64 with characters outside the alphabet", { _ in "e30!!.e30!!.c2ln" }),
            bearer("jwt.base64-padding", "base64 with = padding", { context in
                let good = context.token
                let parts = good.split(separator: ".")
                return parts[0] + "==." + parts[1] + "." + parts[2]
            }),
            bearer("jwt.base64-one-char-tail", "a part whose length is 1 mod 4", { context in
                let parts = context.token.split(separator: ".")
                return parts[0] + "A." + parts[1] + "." + parts[2]
            }),
            bearer("jwt.two-parts", "two dot-separated parts (an API key, then)", { _ in "e30.e30" }),
            bearer("jwt.four-parts", "four parts", { context in context.token + ".e30" }),
            bearer("jwt.empty-parts", "..", { _ in ".." }),
            bearer("jwt.signature-empty", "no signature", { context in
                let parts = context.token.split(separator: ".")
                return parts[0] + "." + parts[1] + "."
            }),
            bearer("jwt.signature-wrong", "the signature of another secret", { TestJWT.valid(sub: $0.user, secret: "another-secret-that-is-also-32-bytes-long!") }),
            bearer("jwt.signature-truncated", "a signature cut to 16 bytes", { context in String(context.token.dropLast(22)) }),
            bearer("jwt.whitespace-inside", "a token with a space inside", { context in
                let token = context.token
                return String(token.prefix(10)) + " " + String(token.dropFirst(10))
            }),
            bearer("jwt.70KiB-token", "a 70 KiB token of valid base64 (within the header bound)", { _ in
                TestJWT.token(claims: #"{"sub":"big","exp":\#(Self.now + 60),"pad":"\#(String(repeating: "p", count: 50 * 1024))"}"#, secret: "not-the-secret-but-long-enough-000000")
            }),
            claims("jwt.exp-1e30", "exp 1e30", { #"{"sub":"\#($0.user)","exp":1e30}"# }),
            claims("jwt.exp-2^63", "exp 9223372036854775807", { #"{"sub":"\#($0.user)","exp":9223372036854775807}"# }),
            claims("jwt.exp-2^64", "exp 18446744073709551616", { #"{"sub":"\#($0.user)","exp":18446744073709551616}"# }),
            claims("jwt.exp-negative", "exp -1", { #"{"sub":"\#($0.user)","exp":-1}"# }),
            claims("jwt.exp-NaN-string", #"exp "NaN""#, { #"{"sub":"\#($0.user)","exp":"NaN"}"# }),
            claims("jwt.exp-string-number", #"exp "9999999999""#, { #"{"sub":"\#($0.user)","exp":"9999999999"}"# }),
            claims("jwt.exp-1e400", "exp 1e400 (not a finite number)", { #"{"sub":"\#($0.user)","exp":1e400}"# }),
            claims("jwt.exp-missing", "no exp (auth.require_exp)", { #"{"sub":"\#($0.user)"}"# }),
            claims("jwt.exp-past", "exp an hour ago", { #"{"sub":"\#($0.user)","exp":\#(Self.now - 3600)}"# }),
            claims("jwt.exp-year-9999", "exp 9999-12-31T23:59:59Z (the last accepted second)", { #"{"sub":"\#($0.user)","exp":253402300799}"# }, .status(101)),
            claims("jwt.exp-year-10000", "exp one second past 9999", { #"{"sub":"\#($0.user)","exp":253402300800}"# }),
            claims("jwt.nbf-future", "nbf an hour ahead", { #"{"sub":"\#($0.user)","exp":\#(Self.now + 7200),"nbf":\#(Self.now + 3600)}"# }),
            claims("jwt.nbf-1e30", "nbf 1e30", { #"{"sub":"\#($0.user)","exp":\#(Self.now + 600),"nbf":1e30}"# }),
            claims("jwt.nbf--1e308", "nbf -1e308", { #"{"sub":"\#($0.user)","exp":\#(Self.now + 600),"nbf":-1e308}"# }),
            claims("jwt.iat-future", "iat an hour ahead", { #"{"sub":"\#($0.user)","exp":\#(Self.now + 7200),"iat":\#(Self.now + 3600)}"# }),
            claims("jwt.iat-2^63", "iat 2^63", { #"{"sub":"\#($0.user)","exp":\#(Self.now + 600),"iat":9223372036854775808}"# }),
            claims("jwt.sub-missing", "no sub", { _ in #"{"exp":\#(Self.now + 600)}"# }),
            claims("jwt.sub-empty", "sub \"\"", { _ in #"{"sub":"","exp":\#(Self.now + 600)}"# }),
            claims("jwt.sub-number", "sub 42", { _ in #"{"sub":42,"exp":\#(Self.now + 600)}"# }),
            claims("jwt.sub-control-characters", "sub with a NUL and a newline", { _ in #"{"sub":"eve\u0000\nadmin","exp":\#(Self.now + 600)}"# }),
            claims("jwt.sub-4KiB", "sub of 4 KiB", { _ in #"{"sub":"\#(String(repeating: "s", count: 4096))","exp":\#(Self.now + 600)}"# }),
            claims("jwt.claims-not-object", "claims that are a JSON array", { _ in "[1,2,3]" }),
            claims("jwt.claims-not-json", "claims that are not JSON", { _ in "sub=admin" }),
            claims("jwt.claims-deep", "claims with 10,000 nested arrays in an extra claim", { context in
                #"{"sub":"\#(context.user)","exp":\#(Self.now + 600),"x":\#(String(repeating: "[", count: 10_000))\#(String(repeating: "]", count: 10_000))}"#
            }),
            // RFC 7519 §4: a parser must refuse duplicate claim names or take the last; Foundation
            // takes the last, and only the key's holder can sign such a token.
            claims("jwt.claims-duplicate-sub", "two sub claims, validly signed (the last one counts, RFC 7519 §4)", { context in
                #"{"sub":"admin","sub":"\#(context.user)","exp":\#(Self.now + 600)}"#
            }, .status(101)),
            claims("jwt.claims-lone-surrogate", "sub with a lone surrogate escape", { _ in #"{"sub":"\ud800","exp":\#(Self.now + 600)}"# }),
        ]
        // Carriers and how many credentials.
        cases += [
            upgrade("jwt.missing", "no credential at all", { _ in [] }, unauthorized),
            upgrade("jwt.scheme-basic", "Authorization: Basic", { _ in [("Authorization", "Basic YWRtaW46YWRtaW4=")] }, unauthorized),
            upgrade("jwt.bearer-empty", "Authorization: Bearer (nothing)", { _ in [("Authorization", "Bearer ")] }, unauthorized),
            upgrade("jwt.two-authorization", "two Authorization headers", { [("Authorization", "Bearer \($0.token)"), ("Authorization", "Bearer \($0.token)")] }, unauthorized),
            upgrade("jwt.authorization-and-query", "Authorization and ?token=", query: "?token=x.y.z", { [("Authorization", "Bearer \($0.token)")] }, unauthorized),
            upgrade("jwt.query-twice", "?token= twice", query: "?token=a.b.c&token=a.b.c", { _ in [] }, unauthorized),
            upgrade("jwt.subprotocol-and-authorization", "a bearer.<token> subprotocol and an Authorization header", {
                [("Authorization", "Bearer \($0.token)"), ("Sec-WebSocket-Protocol", "bearer.\($0.token)")]
            }, unauthorized),
            upgrade("jwt.two-subprotocol-tokens", "two bearer. subprotocols", { [("Sec-WebSocket-Protocol", "bearer.\($0.token), bearer.\($0.token)")] }, unauthorized),
            upgrade("jwt.api-key-and-bearer", "X-API-Key and Authorization", { [("Authorization", "Bearer \($0.token)"), ("X-API-Key", "k")] }, unauthorized),
            upgrade("jwt.api-key-unknown", "an unknown X-API-Key", { _ in [("X-API-Key", "sk-" + String(repeating: "0", count: 48))] }, unauthorized),
            upgrade("jwt.query-percent-garbage", "?token=%ZZ%00", query: "?token=%ZZ%00", { _ in [] }, unauthorized),
            upgrade("jwt.user-header-without-token", "X-Sluice-User: admin (development only)", { _ in [("X-Sluice-User", "admin")] }, unauthorized),
            HostileCase(name: "jwt.valid-for-centuries-works", surface: .jwt, action: "a valid token expiring in 9999: the session works",
                        expected: .reply("pong")) { context in
                let token = TestJWT.token(claims: #"{"sub":"\#(context.user)","exp":253402300799,"iat":\#(Self.now)}"#, secret: Self.secret)
                let raw = try await context.connect()
                defer { Task { await raw.close() } }
                let (response, _) = try await raw.handshake(extraHeaders: [
                    ("Authorization", "Bearer \(token)"), ("Origin", CatalogueGateway.origin), ("Sec-WebSocket-Protocol", "sluice.v1"),
                ])
                guard response.status == 101 else { return .failed("expected 101, got \(response.status) \(response.body)") }
                _ = try await CaseContext.nextMessage(raw)
                try await raw.send(TestFrames.text(#"{"type":"ping","id":"old"}"#))
                return try await CaseContext.observeSession(raw, settle: .seconds(5))
            },
            HostileCase(name: "jwt.http-routes-refuse-bad-tokens", surface: .jwt, action: "an alg-none token on every HTTP route",
                        expected: .verified("401 on /v1/chat/stream, /v1/chat/completions, /v1/jobs, /v1/conversations, /v1/models")) { context in
                let token = TestJWT.token(header: #"{"alg":"none"}"#, claims: #"{"sub":"admin","exp":\#(Self.now + 600)}"#, secret: Self.secret, signature: "")
                var statuses: [String] = []
                for (method, path, body) in [
                    ("POST", "/v1/chat/stream", #"{"content":"x"}"#), ("POST", "/v1/chat/completions", #"{"messages":[{"role":"user","content":"x"}]}"#),
                    ("POST", "/v1/jobs", #"{"kind":"echo"}"#), ("GET", "/v1/jobs", nil), ("GET", "/v1/conversations", nil), ("GET", "/v1/models", nil),
                ] as [(String, String, String?)] {
                    let observed = try await context.request(method, path, headers: [("Authorization", "Bearer \(token)")], body: body, authenticated: false)
                    statuses.append("\(method) \(path) \(observed.status ?? 0)")
                }
                return statuses.allSatisfy { $0.hasSuffix(" 401") } ? .verified("\(statuses)") : .failed("\(statuses)")
            },
        ]
        return cases
    }
}
