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
        #expect(Self.failure(authenticator.authenticate(credential: rs))?.message == "alg RS256 is not accepted")
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
        #expect(authenticator.credential(in: head("/v1/ws", [("Authorization", "Bearer abc.def.ghi")])) == "abc.def.ghi")
        #expect(authenticator.credential(in: head("/v1/ws", [("Sec-WebSocket-Protocol", "sluice.v1, bearer.abc.def.ghi")])) == "abc.def.ghi")
        #expect(authenticator.credential(in: head("/v1/ws?user=x&token=abc.def.ghi", [])) == "abc.def.ghi")
        #expect(authenticator.credential(in: head("/v1/ws", [("X-API-Key", "sk-1")])) == "sk-1")
        #expect(authenticator.credential(in: head("/v1/ws?user=x", [])) == nil)
        let noQuery = try await Self.authenticator { $0.queryParameter = nil }
        #expect(noQuery.credential(in: head("/v1/ws?token=abc.def.ghi", [])) == nil)
        if case .failure(let failure) = authenticator.authenticate(head("/v1/ws", [])) {
            #expect(failure.kind == .missing && failure.challenge == #"Bearer realm="sluice""#)
        } else {
            Issue.record("a request without credentials was authenticated")
        }
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
