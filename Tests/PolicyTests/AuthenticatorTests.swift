import Crypto
import _CryptoExtras
import Foundation
import JWTKit
import NIOHTTP1
@testable import Policy
import Testing

/// Tokens made with jwt-kit (or by hand, for the forgeries) against `Authenticator`.
@Suite struct AuthenticatorTests {
    static let secret = "an-hs256-secret-of-at-least-32-bytes!"

    struct Claims: JWTPayload {
        var sub: SubjectClaim?
        var exp: ExpirationClaim?
        var nbf: NotBeforeClaim?
        var iss: IssuerClaim?
        var aud: AudienceClaim?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    static func claims(sub: String? = "alice", expiresIn: TimeInterval? = 300, nbf: TimeInterval? = nil, iss: String? = nil, aud: String? = nil) -> Claims {
        Claims(
            sub: sub.map(SubjectClaim.init(value:)), exp: expiresIn.map { ExpirationClaim(value: Date().addingTimeInterval($0)) },
            nbf: nbf.map { NotBeforeClaim(value: Date().addingTimeInterval($0)) }, iss: iss.map(IssuerClaim.init(value:)),
            aud: aud.map { AudienceClaim(value: [$0]) })
    }

    static func hs256(_ claims: Claims, secret: String = Self.secret, kid: String? = nil) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256, kid: kid.map(JWKIdentifier.init(string:)))
        return try await keys.sign(claims, kid: kid.map(JWKIdentifier.init(string:)))
    }

    static func authenticator(_ configure: (inout Authenticator.Configuration) -> Void = { _ in }) async throws -> Authenticator {
        var configuration = Authenticator.Configuration()
        configuration.keys = [JWTKeySpec(algorithm: "HS256", material: .secret(Self.secret))]
        configure(&configuration)
        return try await Authenticator.make(configuration)
    }

    static func base64URL(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// A token assembled by hand: any header, any claims, any signature.
    static func handmade(header: String, claims: String, signature: (String) -> [UInt8]) -> String {
        let signingInput = Self.base64URL(Array(header.utf8)) + "." + Self.base64URL(Array(claims.utf8))
        return signingInput + "." + Self.base64URL(signature(signingInput))
    }

    static func failure(_ result: Result<Identity, AuthenticationFailure>) -> AuthenticationFailure? {
        if case .failure(let failure) = result { return failure }
        return nil
    }

    @Test func aValidHS256TokenNamesItsSubject() async throws {
        let authenticator = try await Self.authenticator()
        let token = try await Self.hs256(Self.claims())
        let identity = try authenticator.authenticate(credential: token).get()
        #expect(identity.userID == "alice" && identity.method == .token)
        #expect(identity.expiresAt != nil)
    }

    @Test func expiredNotYetValidAndClaimlessTokensAreRefused() async throws {
        let authenticator = try await Self.authenticator { $0.leeway = 5 }
        #expect(Self.failure(authenticator.authenticate(credential: try await Self.hs256(Self.claims(expiresIn: -60))))?.message == "token expired")
        // Inside the leeway still counts as valid.
        #expect(try authenticator.authenticate(credential: try await Self.hs256(Self.claims(expiresIn: -2))).get().userID == "alice")
        #expect(Self.failure(authenticator.authenticate(credential: try await Self.hs256(Self.claims(nbf: 60))))?.message == "token not valid yet (nbf)")
        #expect(Self.failure(authenticator.authenticate(credential: try await Self.hs256(Self.claims(sub: nil))))?.message == "token has no sub")
        #expect(Self.failure(authenticator.authenticate(credential: try await Self.hs256(Self.claims(expiresIn: nil))))?.message == "token has no exp")
        let lenient = try await Self.authenticator { $0.requireExpiry = false }
        #expect(try lenient.authenticate(credential: try await Self.hs256(Self.claims(expiresIn: nil))).get().expiresAt == nil)
    }

    /// A sub is the user id in storage, keys and log lines: a newline or NUL in it, or 4 KiB
    /// of it, is refused (found by the adversarial catalogue: jwt.sub-control-characters, jwt.sub-4KiB).
    @Test func subjectsThatCannotBeUserIDsAreRefused() async throws {
        let authenticator = try await Self.authenticator()
        let unusable = "token sub is not a usable user id (at most 256 bytes, no control characters)"
        for sub in ["eve\nadmin", "a\u{0}b", "tab\there", "del\u{7F}", "c1\u{85}", String(repeating: "s", count: 257)] {
            let token = try await Self.hs256(Self.claims(sub: sub))
            #expect(Self.failure(authenticator.authenticate(credential: token))?.message == unusable, "\(sub.debugDescription)")
        }
        for sub in [String(repeating: "s", count: 256), "auth0|5f7c8ec7c33c6c004bbafe82", "josé@example.com", "user with spaces"] {
            let token = try await Self.hs256(Self.claims(sub: sub))
            #expect(try authenticator.authenticate(credential: token).get().userID == sub)
        }
    }

    @Test func forgedUnsignedAndConfusedTokensAreRefused() async throws {
        let authenticator = try await Self.authenticator()
        // Signed with another secret.
        let forged = try await Self.hs256(Self.claims(), secret: "another-secret-that-is-32-bytes-long!!")
        #expect(Self.failure(authenticator.authenticate(credential: forged))?.message == "signature does not verify")
        // alg none, with and without a signature.
        let claims = #"{"sub":"mallory","exp":\#(Int(Date().timeIntervalSince1970) + 300)}"#
        for alg in ["none", "None", "NONE"] {
            let unsigned = Self.handmade(header: #"{"alg":"\#(alg)","typ":"JWT"}"#, claims: claims) { _ in [] }
            #expect(Self.failure(authenticator.authenticate(credential: unsigned))?.message == "unsigned tokens (alg none) are not accepted")
        }
        // A valid token with its claims swapped for others.
        let valid = try await Self.hs256(Self.claims())
        let parts = valid.split(separator: ".")
        let swapped = parts[0] + "." + Self.base64URL(Array(claims.utf8)) + "." + parts[2]
        #expect(Self.failure(authenticator.authenticate(credential: String(swapped)))?.message == "signature does not verify")
        // An algorithm no configured key has.
        let rs = Self.handmade(header: #"{"alg":"RS256"}"#, claims: claims) { _ in [1, 2, 3] }
        #expect(Self.failure(authenticator.authenticate(credential: rs))?.message == "the token's alg is not accepted")
        // Critical header parameters are not understood, so refused.
        let critical = Self.handmade(header: #"{"alg":"HS256","crit":["exp"]}"#, claims: claims) { input in
            Array(HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(Self.secret.utf8))))
        }
        #expect(Self.failure(authenticator.authenticate(credential: critical)) != nil)
        for garbage in ["a.b.c", "..", "x", "eyJhbGciOiJIUzI1NiJ9.e30"] {
            #expect(Self.failure(authenticator.authenticate(credential: garbage)) != nil, "\(garbage)")
        }
    }

    /// The classic confusion: the server holds an RSA public key; the attacker signs HS256 with
    /// that public key's PEM text as the HMAC secret.
    @Test func anHMACTokenSignedWithTheRSAPublicKeyIsRefused() async throws {
        let privateKey = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let publicPEM = privateKey.publicKey.pemRepresentation
        var configuration = Authenticator.Configuration()
        configuration.keys = [JWTKeySpec(kid: "rsa-1", algorithm: "RS256", material: .publicKeyPEM(publicPEM))]
        let authenticator = try await Authenticator.make(configuration)
        let claims = #"{"sub":"mallory","exp":\#(Int(Date().timeIntervalSince1970) + 300)}"#
        for header in [#"{"alg":"HS256","kid":"rsa-1"}"#, #"{"alg":"HS256"}"#] {
            let confused = Self.handmade(header: header, claims: claims) { input in
                Array(HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(publicPEM.utf8))))
            }
            #expect(Self.failure(authenticator.authenticate(credential: confused)) != nil)
        }
        // The same key's real RS256 token passes.
        let keys = JWTKeyCollection()
        await keys.add(rsa: try Insecure.RSA.PrivateKey(pem: privateKey.pemRepresentation), digestAlgorithm: .sha256, kid: "rsa-1")
        let token = try await keys.sign(Self.claims(sub: "rita"), kid: "rsa-1")
        #expect(try authenticator.authenticate(credential: token).get().userID == "rita")
    }

    @Test func es256KeysAndJWKSByKid() async throws {
        let first = ES256PrivateKey()
        let second = ES256PrivateKey()
        let jwks = """
            {"keys":[{"kty":"EC","crv":"P-256","kid":"ec-2","alg":"ES256","use":"sig",
              "x":"\(second.parameters!.x)","y":"\(second.parameters!.y)"}]}
            """
        var configuration = Authenticator.Configuration()
        configuration.keys = [JWTKeySpec(kid: "ec-1", algorithm: "ES256", material: .publicKeyPEM(first.publicKey.pemRepresentation))]
        configuration.jwksJSON = jwks
        let authenticator = try await Authenticator.make(configuration)
        for (kid, key, user) in [("ec-1", first, "erin"), ("ec-2", second, "eve")] {
            let keys = JWTKeyCollection()
            await keys.add(ecdsa: key, kid: JWKIdentifier(string: kid))
            let token = try await keys.sign(Self.claims(sub: user), kid: JWKIdentifier(string: kid))
            #expect(try authenticator.authenticate(credential: token).get().userID == user)
        }
        // Signed by the first key but naming the second: refused.
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: first, kid: "ec-2")
        let misnamed = try await keys.sign(Self.claims(), kid: "ec-2")
        #expect(Self.failure(authenticator.authenticate(credential: misnamed))?.message == "signature does not verify")
        let unknown = try await Self.hs256(Self.claims(), kid: "nope")
        #expect(Self.failure(authenticator.authenticate(credential: unknown)) != nil)
    }

    @Test func issuerAndAudienceAreCheckedWhenConfigured() async throws {
        let authenticator = try await Self.authenticator {
            $0.issuer = "https://id.example"
            $0.audience = "sluice"
        }
        #expect(try authenticator.authenticate(credential: try await Self.hs256(Self.claims(iss: "https://id.example", aud: "sluice"))).get().userID == "alice")
        #expect(Self.failure(authenticator.authenticate(credential: try await Self.hs256(Self.claims(iss: "https://evil", aud: "sluice"))))?.message == "wrong issuer")
        #expect(Self.failure(authenticator.authenticate(credential: try await Self.hs256(Self.claims(iss: "https://id.example", aud: "other"))))?.message == "wrong audience")
    }

    @Test func apiKeysAreCheckedByTheirHash() async throws {
        var configuration = Authenticator.Configuration()
        configuration.apiKeys = [try #require(APIKeySpec(entry: "batch-service:" + APIKeySpec.hash("sk-live-123")))]
        let authenticator = try await Authenticator.make(configuration)
        let identity = try authenticator.authenticate(credential: "sk-live-123").get()
        #expect(identity.userID == "batch-service" && identity.method == .apiKey)
        #expect(Self.failure(authenticator.authenticate(credential: "sk-live-124"))?.message == "unknown API key")
        #expect(APIKeySpec(entry: "user:nothex") == nil && APIKeySpec(entry: ":" + APIKeySpec.hash("x")) == nil)
    }

    @Test func credentialsComeFromTheHeaderTheSubprotocolOrTheQuery() async throws {
        let authenticator = try await Self.authenticator()
        func head(_ uri: String, _ headers: [(String, String)]) -> HTTPRequestHead {
            HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: HTTPHeaders(headers))
        }
        #expect(try authenticator.credential(in: head("/v1/ws", [("Authorization", "Bearer abc.def.ghi")])).get() == "abc.def.ghi")
        #expect(try authenticator.credential(in: head("/v1/ws", [("Sec-WebSocket-Protocol", "sluice.v1, bearer.abc.def.ghi")])).get() == "abc.def.ghi")
        #expect(try authenticator.credential(in: head("/v1/ws?user=x&token=abc.def.ghi", [])).get() == "abc.def.ghi")
        #expect(try authenticator.credential(in: head("/v1/ws", [("X-API-Key", "sk-1")])).get() == "sk-1")
        #expect(try authenticator.credential(in: head("/v1/ws?user=x", [])).get() == nil)
        let noQuery = try await Self.authenticator { $0.queryParameter = nil }
        #expect(try noQuery.credential(in: head("/v1/ws?token=abc.def.ghi", [])).get() == nil)
        if case .failure(let failure) = authenticator.authenticate(head("/v1/ws", [])) {
            #expect(failure.kind == .missing && failure.challenge == #"Bearer realm="sluice""#)
        } else {
            Issue.record("a request without credentials was authenticated")
        }
    }

    /// A correctly signed HS256 token with these claims (JSON text, numbers as written).
    static func signed(_ claims: String, header: String = #"{"alg":"HS256","typ":"JWT"}"#) -> String {
        Self.handmade(header: header, claims: claims) { input in
            Array(HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(Self.secret.utf8))))
        }
    }

    /// `exp`, `nbf`, `iat` are range-checked: 1970 ... 9999. A token valid until 2400 is a
    /// token (its expiry is a date far away, which the session's timer must bound), 10^30 is not.
    @Test func timeClaimsAreRangeChecked() async throws {
        let authenticator = try await Self.authenticator()
        let now = Int(Date().timeIntervalSince1970)
        let year2400 = 13_569_465_600
        let far = try authenticator.authenticate(credential: Self.signed(#"{"sub":"alice","exp":\#(year2400),"iat":\#(now)}"#)).get()
        #expect(far.userID == "alice" && far.expiresAt == Date(timeIntervalSince1970: Double(year2400) + 30))
        for (claims, message) in [
            (#"{"sub":"a","exp":1e30}"#, "token exp is out of range"),
            (#"{"sub":"a","exp":9223372036854775807}"#, "token exp is out of range"),
            (#"{"sub":"a","exp":253402300800}"#, "token exp is out of range"),
            (#"{"sub":"a","exp":-1}"#, "token exp is out of range"),
            (#"{"sub":"a","exp":\#(now + 300),"nbf":-1e300}"#, "token nbf is out of range"),
            (#"{"sub":"a","exp":\#(now + 300),"iat":1e19}"#, "token iat is out of range"),
            (#"{"sub":"a","exp":\#(now + 300),"iat":\#(now + 3600)}"#, "token issued in the future (iat)"),
            (#"{"sub":"a","exp":"soon"}"#, "malformed claims"),
        ] {
            #expect(Self.failure(authenticator.authenticate(credential: Self.signed(claims)))?.message == message, "\(claims)")
        }
        // Not even a Double: refused, whichever check catches it.
        #expect(Self.failure(authenticator.authenticate(credential: Self.signed(#"{"sub":"a","exp":1e400}"#))) != nil)
        // Within the leeway (30 s), a slightly fast issuer clock is fine.
        #expect(try authenticator.authenticate(credential: Self.signed(#"{"sub":"a","exp":\#(now + 300),"iat":\#(now + 10)}"#)).get().userID == "a")
    }

    /// Refusals do not echo the header's `kid` or `alg` (attacker-controlled text).
    @Test func refusalsDoNotEchoTheClientsKidOrAlg() async throws {
        var configuration = Authenticator.Configuration()
        configuration.keys = [JWTKeySpec(kid: "k1", algorithm: "HS256", material: .secret(Self.secret))]
        let authenticator = try await Authenticator.make(configuration)
        let claims = #"{"sub":"a","exp":\#(Int(Date().timeIntervalSince1970) + 300)}"#
        let marker = "<img src=x onerror=alert(1)>"
        for header in [#"{"alg":"HS256","kid":"\#(marker)"}"#, #"{"alg":"\#(marker)","kid":"k1"}"#, #"{"alg":"\#(marker)"}"#] {
            let failure = try #require(Self.failure(authenticator.authenticate(credential: Self.signed(claims, header: header))))
            #expect(!failure.message.contains(marker) && !failure.message.contains("img"), "\(failure.message)")
        }
        #expect(Self.failure(authenticator.authenticate(credential: Self.signed(claims, header: #"{"alg":"HS256","kid":"other"}"#)))?.message
            == "unknown key id")
        #expect(Self.failure(authenticator.authenticate(credential: Self.signed(claims, header: #"{"alg":"HS384","kid":"k1"}"#)))?.message
            == "the token's alg does not match its key")
    }

    /// One credential per request: several are refused, whatever their carriers, never
    /// resolved by taking the first.
    @Test func moreThanOneCredentialIsRefused() async throws {
        let authenticator = try await Self.authenticator()
        let token = try await Self.hs256(Self.claims())
        func head(_ uri: String, _ headers: [(String, String)]) -> HTTPRequestHead {
            HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: HTTPHeaders(headers))
        }
        let cases: [(String, HTTPRequestHead)] = [
            ("two Authorization headers", head("/v1/ws", [("Authorization", "Bearer \(token)"), ("Authorization", "Bearer \(token)")])),
            ("Authorization twice, one not bearer", head("/v1/ws", [("Authorization", "Basic eDp5"), ("Authorization", "Bearer \(token)")])),
            ("token twice in the query", head("/v1/ws?token=\(token)&token=\(token)", [])),
            ("token twice, one empty", head("/v1/ws?token=&token=\(token)", [])),
            ("two bearer subprotocols", head("/v1/ws", [("Sec-WebSocket-Protocol", "sluice.v1, bearer.\(token), bearer.\(token)")])),
            ("two subprotocol headers", head("/v1/ws", [("Sec-WebSocket-Protocol", "bearer.\(token)"), ("Sec-WebSocket-Protocol", "bearer.x")])),
            ("header and query", head("/v1/ws?token=\(token)", [("Authorization", "Bearer \(token)")])),
            ("header and API key", head("/v1/ws", [("Authorization", "Bearer \(token)"), ("X-API-Key", "sk-1")])),
            ("two API keys", head("/v1/ws", [("X-API-Key", "sk-1"), ("X-API-Key", "sk-2")])),
            ("subprotocol and query", head("/v1/ws?token=x", [("Sec-WebSocket-Protocol", "bearer.\(token)")])),
        ]
        for (name, request) in cases {
            let failure = try #require(Self.failure(authenticator.authenticate(request)), "\(name) was authenticated")
            #expect(failure.kind == .multiple, "\(name)")
            #expect(failure.message.hasPrefix("send exactly one credential") && !failure.message.contains(token), "\(name)")
            #expect(failure.challenge == #"Bearer realm="sluice", error="invalid_request""#)
        }
        // One credential, with unrelated query parameters and subprotocols, is fine.
        #expect(try authenticator.authenticate(head("/v1/ws?user=x&tokens=y", [("Sec-WebSocket-Protocol", "sluice.v1"), ("Authorization", "Bearer \(token)")])).get().userID == "alice")
        // With the query parameter turned off, ?token= is not a credential (nor a second one).
        let noQuery = try await Self.authenticator { $0.queryParameter = nil }
        #expect(try noQuery.authenticate(head("/v1/ws?token=x", [("Authorization", "Bearer \(token)")])).get().userID == "alice")
    }

    @Test func shortHMACSecretsAndBadKeysAreSetupErrors() async {
        var configuration = Authenticator.Configuration()
        configuration.keys = [JWTKeySpec(algorithm: "HS256", material: .secret("short"))]
        await #expect(throws: Authenticator.SetupError.self) { _ = try await Authenticator.make(configuration) }
        configuration.keys = [JWTKeySpec(algorithm: "RS256", material: .publicKeyPEM("not a pem"))]
        await #expect(throws: Authenticator.SetupError.self) { _ = try await Authenticator.make(configuration) }
        configuration.keys = [JWTKeySpec(algorithm: "HS256", material: .publicKeyPEM("x"))]
        await #expect(throws: Authenticator.SetupError.self) { _ = try await Authenticator.make(configuration) }
    }
}
