import Crypto
import Foundation
import JWTKit
import NIOHTTP1

/// Who a request is from, once authenticated.
public struct Identity: Sendable, Equatable {
    public enum Method: String, Sendable {
        /// A verified JWT (`sub` is the user).
        case token
        /// A static API key from the configuration.
        case apiKey = "api_key"
        /// Authentication is off: the development stand-in (`?user=` / `X-Sluice-User`).
        case development
    }

    public var userID: String
    public var method: Method
    /// When the credential stops being valid (a JWT's `exp`); nil: never.
    public var expiresAt: Date?

    public init(userID: String, method: Method, expiresAt: Date? = nil) {
        self.userID = userID
        self.method = method
        self.expiresAt = expiresAt
    }
}

/// Why a request was not authenticated: always answered 401, never with an upgraded socket.
public struct AuthenticationFailure: Error, Equatable, Sendable {
    public enum Kind: Sendable {
        /// No credential at all.
        case missing
        /// A credential that does not verify, or has expired (RFC 6750's `invalid_token`).
        case invalid
        /// More than one credential (several headers, carriers or query parameters): refused
        /// rather than resolved by precedence (RFC 6750's `invalid_request`).
        case multiple
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3).
    public var challenge: String {
        switch self.kind {
        case .missing: return #"Bearer realm="sluice""#
        case .invalid: return #"Bearer realm="sluice", error="invalid_token""#
        case .multiple: return #"Bearer realm="sluice", error="invalid_request""#
        }
    }
}

/// A JWT verification key from the configuration.
public struct JWTKeySpec: Sendable, Equatable {
    public enum Material: Sendable, Equatable {
        /// HS256/384/512: the shared secret.
        case secret(String)
        /// RS*/PS*/ES*: a PEM public key (or certificate).
        case publicKeyPEM(String)
    }

    public var kid: String?
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `ES256`, `ES384`, `ES512`.
    public var algorithm: String
    public var material: Material

    public init(kid: String? = nil, algorithm: String, material: Material) {
        self.kid = kid
        self.algorithm = algorithm
        self.material = material
    }

    public static let algorithms: Set<String> = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]

    /// RFC 7518 §3.2: an HMAC key at least as long as the hash output (jwt-kit asserts it too).
    public static func minimumSecretBytes(_ algorithm: String) -> Int {
        switch algorithm {
        case "HS384": return 48
        case "HS512": return 64
        default: return 32
        }
    }
}

/// A static API key for server-to-server clients: only its SHA-256 is configured.
public struct APIKeySpec: Sendable, Equatable {
    public var userID: String
    /// Lowercase hex SHA-256 of the key.
    public var sha256: String

    public init(userID: String, sha256: String) {
        self.userID = userID
        self.sha256 = sha256.lowercased()
    }

    /// `user:sha256hex`, as written in the configuration.
    public init?(entry: String) {
        guard let colon = entry.lastIndex(of: ":") else { return nil }
        let user = String(entry[..<colon]), hash = entry[entry.index(after: colon)...].lowercased()
        guard !user.isEmpty, hash.count == 64, hash.allSatisfy(\.isHexDigit) else { return nil }
        self.init(userID: user, sha256: hash)
    }

    public static func hash(_ key: String) -> String {
        SHA256.hash(data: Data(key.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}

/// Checks credentials before anything else happens: a JWT (`Authorization: Bearer`, the
/// `bearer.<token>` WebSocket subprotocol for browsers, or a query parameter) or an API key.
/// Verification is synchronous (keys are loaded once, at start), so it runs on the event loop
/// during the handshake with no hop.
///
/// `alg` must be one of the configured keys' algorithms and match the key it selects: `none`
/// and algorithm confusion (e.g. an HS256 token "signed" with an RSA public key) are refused
/// before any signature check.
public final class Authenticator: Sendable {
    public struct Configuration: Sendable, Equatable {
        public var keys: [JWTKeySpec] = []
        /// A JWKS document (its keys need `kid` and `alg`).
        public var jwksJSON: String?
        public var apiKeys: [APIKeySpec] = []
        /// Clock skew allowed on `exp` and `nbf`.
        public var leeway: TimeInterval = 30
        /// When set, a token's `iss` must equal it.
        public var issuer: String?
        /// When set, a token's `aud` must contain it.
        public var audience: String?
        /// The query parameter that may carry a token (nil: not accepted).
        public var queryParameter: String? = "token"
        /// Tokens without `exp` are refused.
        public var requireExpiry: Bool = true

        public init() {}

        /// Authentication is on when there is anything to check credentials against.
        public var isEnabled: Bool { !self.keys.isEmpty || self.jwksJSON != nil || !self.apiKeys.isEmpty }
    }

    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    struct VerificationKey: Sendable {
        var kid: String?
        var algorithmName: String
        var algorithm: any JWTAlgorithm
    }

    public let configuration: Configuration
    private let keys: [VerificationKey]
    private let apiKeys: [String: String]

    public var isEnabled: Bool { self.configuration.isEnabled }

    private init(configuration: Configuration, keys: [VerificationKey]) {
        self.configuration = configuration
        self.keys = keys
        self.apiKeys = Dictionary(configuration.apiKeys.map { ($0.sha256, $0.userID) }) { first, _ in first }
    }

    /// Loads the keys (PEM parsing, JWKS) once.
    public static func make(_ configuration: Configuration) async throws(SetupError) -> Authenticator {
        var keys: [VerificationKey] = []
        do {
            for (index, spec) in configuration.keys.enumerated() {
                guard JWTKeySpec.algorithms.contains(spec.algorithm) else {
                    throw SetupError(description: "key \(spec.kid ?? "#\(index)"): unsupported algorithm \(spec.algorithm)")
                }
                let collection = JWTKeyCollection()
                let kid = JWKIdentifier(string: spec.kid ?? "key-\(index)")
                switch (spec.algorithm.prefix(2), spec.material) {
                case ("HS", .secret(let secret)):
                    guard secret.utf8.count >= JWTKeySpec.minimumSecretBytes(spec.algorithm) else {
                        throw SetupError(description: "key \(kid.string): an \(spec.algorithm) secret needs at least \(JWTKeySpec.minimumSecretBytes(spec.algorithm)) bytes")
                    }
                    await collection.add(hmac: HMACKey(from: secret), digestAlgorithm: Self.digest(spec.algorithm), kid: kid)
                case ("RS", .publicKeyPEM(let pem)):
                    let key = pem.contains("CERTIFICATE") ? try Insecure.RSA.PublicKey(certificatePEM: pem) : try Insecure.RSA.PublicKey(pem: pem)
                    await collection.add(rsa: key, digestAlgorithm: Self.digest(spec.algorithm), kid: kid)
                case ("ES", .publicKeyPEM(let pem)):
                    switch spec.algorithm {
                    case "ES256": await collection.add(ecdsa: try ES256PublicKey(pem: pem), kid: kid)
                    case "ES384": await collection.add(ecdsa: try ES384PublicKey(pem: pem), kid: kid)
                    default: await collection.add(ecdsa: try ES512PublicKey(pem: pem), kid: kid)
                    }
                default:
                    throw SetupError(description: "key \(kid.string): \(spec.algorithm) needs \(spec.algorithm.hasPrefix("HS") ? "a secret" : "a public key")")
                }
                keys.append(VerificationKey(kid: spec.kid, algorithmName: spec.algorithm, algorithm: try await collection.getKey(for: kid)))
            }
            if let json = configuration.jwksJSON {
                let jwks = try JSONDecoder().decode(JWKS.self, from: Data(json.utf8))
                for jwk in jwks.keys {
                    // Encryption keys and keys without a name or algorithm cannot verify a token safely.
                    guard let kid = jwk.keyIdentifier, let algorithm = jwk.algorithm?.rawValue,
                          JWTKeySpec.algorithms.contains(algorithm) || ["PS256", "PS384", "PS512", "EdDSA"].contains(algorithm)
                    else {
                        throw SetupError(description: "JWKS: every key needs kid and a signing alg")
                    }
                    let collection = JWTKeyCollection()
                    try await collection.add(jwk: jwk)
                    keys.append(VerificationKey(kid: kid.string, algorithmName: algorithm, algorithm: try await collection.getKey(for: kid, alg: algorithm)))
                }
            }
        } catch let error as SetupError {
            throw error
        } catch {
            throw SetupError(description: "\(error)")
        }
        return Authenticator(configuration: configuration, keys: keys)
    }

    private static func digest(_ algorithm: String) -> DigestAlgorithm {
        switch algorithm.suffix(3) {
        case "384": return .sha384
        case "512": return .sha512
        default: return .sha256
        }
    }

    // MARK: Requests

    /// The one credential a request carries: in `Authorization: Bearer`, `X-API-Key`, a
    /// `bearer.<token>` subprotocol or the query parameter. Exactly one is accepted: two
    /// `Authorization` headers, a repeated query parameter, several `bearer.` subprotocols or
    /// credentials in two carriers are `.multiple` (refused), never resolved by taking the first,
    /// so a proxy and the gateway can never disagree about who is asking.
    public func credential(in head: HTTPRequestHead) -> Result<String?, AuthenticationFailure> {
        var found: [String] = []
        let authorizations = head.headers["authorization"]
        if authorizations.count > 1 { return .failure(Self.multipleCredentials) }
        if let authorization = authorizations.first {
            let parts = authorization.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { found.append(parts[1].trimmingCharacters(in: .whitespaces)) }
        }
        for key in head.headers["x-api-key"] where !key.isEmpty { found.append(key) }
        for value in head.headers[canonicalForm: "sec-websocket-protocol"] where value.lowercased().hasPrefix("bearer.") {
            found.append(String(value.dropFirst("bearer.".count)))
        }
        if let name = self.configuration.queryParameter, !name.isEmpty,
           let query = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).dropFirst().first {
            for pair in query.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if parts.count == 2, parts[0] == name {
                    found.append(String(parts[1]).removingPercentEncoding ?? String(parts[1]))
                }
            }
        }
        guard found.count <= 1 else { return .failure(Self.multipleCredentials) }
        return .success(found.first)
    }

    static let multipleCredentials = AuthenticationFailure(
        .multiple, "send exactly one credential: this request carries several (Authorization, X-API-Key, bearer. subprotocol, query parameter)")

    /// Authenticates a request (only meaningful when `isEnabled`).
    public func authenticate(_ head: HTTPRequestHead, now: Date = Date()) -> Result<Identity, AuthenticationFailure> {
        let credential: String?
        switch self.credential(in: head) {
        case .failure(let failure): return .failure(failure)
        case .success(let found): credential = found
        }
        guard let credential, !credential.isEmpty else {
            return .failure(AuthenticationFailure(.missing, "authentication required: send a bearer token or an API key"))
        }
        return self.authenticate(credential: credential, now: now)
    }

    public func authenticate(credential: String, now: Date = Date()) -> Result<Identity, AuthenticationFailure> {
        // A JWS has exactly two dots; anything else can only be an API key.
        if credential.utf8.lazy.filter({ $0 == UInt8(ascii: ".") }).count == 2 {
            return self.verify(jwt: credential, now: now)
        }
        if let user = self.apiKeys[APIKeySpec.hash(credential)] {
            return .success(Identity(userID: user, method: .apiKey))
        }
        return .failure(AuthenticationFailure(.invalid, "unknown API key"))
    }

    // MARK: JWT

    private struct Header: Decodable {
        var alg: String?
        var kid: String?
        var crit: [String]?
    }

    private struct Claims: Decodable {
        var sub: String?
        var exp: Double?
        var nbf: Double?
        var iat: Double?
        var iss: String?
        var aud: Audience?
    }

    /// `exp`, `nbf` and `iat` must lie in 1970-01-01T00:00:00Z ... 9999-12-31T23:59:59Z (NumericDate
    /// seconds); anything else (a negative time, 10^30) is refused as a malformed token.
    static let timeClaimRange: ClosedRange<Double> = 0...253_402_300_799

    private enum Audience: Decodable {
        case one(String)
        case many([String])

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let one = try? container.decode(String.self) { self = .one(one) } else { self = .many(try container.decode([String].self)) }
        }

        func contains(_ value: String) -> Bool {
            switch self {
            case .one(let one): return one == value
            case .many(let many): return many.contains(value)
            }
        }
    }

    func verify(jwt: String, now: Date) -> Result<Identity, AuthenticationFailure> {
        func invalid(_ message: String) -> Result<Identity, AuthenticationFailure> {
            .failure(AuthenticationFailure(.invalid, message))
        }
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              let headerBytes = Self.base64URLDecode(parts[0]),
              let header = try? JSONDecoder().decode(Header.self, from: Data(headerBytes))
        else { return invalid("malformed token") }
        guard let alg = header.alg, alg.lowercased() != "none" else { return invalid("unsigned tokens (alg none) are not accepted") }
        guard header.crit == nil else { return invalid("token has critical header parameters this server does not understand") }
        // The key is chosen by kid (and must be for this alg), or among the keys of this alg.
        let candidates: [VerificationKey]
        if let kid = header.kid {
            candidates = self.keys.filter { $0.kid == kid && $0.algorithmName == alg }
            if candidates.isEmpty {
                // Fixed messages: the header's kid and alg are the client's text, never echoed.
                return invalid(self.keys.contains { $0.kid == kid } ? "the token's alg does not match its key" : "unknown key id")
            }
        } else {
            candidates = self.keys.filter { $0.algorithmName == alg }
            if candidates.isEmpty { return invalid("the token's alg is not accepted") }
        }
        guard let signature = Self.base64URLDecode(parts[2]) else { return invalid("malformed signature") }
        let signed = Array(jwt.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        guard candidates.contains(where: { (try? $0.algorithm.verify(signature, signs: signed)) == true }) else {
            return invalid("signature does not verify")
        }
        guard let payload = Self.base64URLDecode(parts[1]), let claims = try? JSONDecoder().decode(Claims.self, from: Data(payload)) else {
            return invalid("malformed claims")
        }
        guard let subject = claims.sub, !subject.isEmpty else { return invalid("token has no sub") }
        guard Self.isUsableSubject(subject) else {
            return invalid("token sub is not a usable user id (at most \(Self.maxSubjectBytes) bytes, no control characters)")
        }
        for (name, value) in [("exp", claims.exp), ("nbf", claims.nbf), ("iat", claims.iat)] {
            if let value, !Self.timeClaimRange.contains(value) { return invalid("token \(name) is out of range") }
        }
        let leeway = self.configuration.leeway
        let nowSeconds = now.timeIntervalSince1970
        if let iat = claims.iat, iat > nowSeconds + leeway { return invalid("token issued in the future (iat)") }
        if let exp = claims.exp {
            if nowSeconds > exp + leeway { return invalid("token expired") }
        } else if self.configuration.requireExpiry {
            return invalid("token has no exp")
        }
        if let nbf = claims.nbf, nowSeconds + leeway < nbf { return invalid("token not valid yet (nbf)") }
        if let issuer = self.configuration.issuer, claims.iss != issuer { return invalid("wrong issuer") }
        if let audience = self.configuration.audience, claims.aud?.contains(audience) != true { return invalid("wrong audience") }
        return .success(Identity(userID: subject, method: .token, expiresAt: claims.exp.map { Date(timeIntervalSince1970: $0 + leeway) }))
    }

    /// A `sub` becomes the user id in storage, Redis keys, limits and log lines: at most this
    /// many bytes, and no control characters (a newline could forge a log line).
    static let maxSubjectBytes = 256

    static func isUsableSubject(_ subject: String) -> Bool {
        guard subject.utf8.count <= Self.maxSubjectBytes else { return false }
        return !subject.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    static func base64URLDecode(_ text: Substring) -> [UInt8]? {
        var base64 = String(text).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard !base64.contains("=") else { return nil }
        let remainder = base64.utf8.count % 4
        if remainder == 1 { return nil }
        if remainder > 0 { base64 += String(repeating: "=", count: 4 - remainder) }
        return Data(base64Encoded: base64).map(Array.init)
    }
}

/// HS256 tokens for development and tests (`sluice token`): `sub`, `iat`, `exp`.
public enum DevelopmentToken {
    struct Payload: JWTPayload {
        var sub: SubjectClaim
        var iat: IssuedAtClaim
        var exp: ExpirationClaim

        func verify(using algorithm: some JWTAlgorithm) async throws {
            try self.exp.verifyNotExpired()
        }
    }

    public struct ShortSecret: Error, CustomStringConvertible {
        public var description: String { "an HS256 secret needs at least 32 bytes" }
    }

    public static func mint(secret: String, subject: String, expiresIn seconds: TimeInterval, now: Date = Date()) async throws -> String {
        guard secret.utf8.count >= JWTKeySpec.minimumSecretBytes("HS256") else { throw ShortSecret() }
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(Payload(
            sub: SubjectClaim(value: subject), iat: IssuedAtClaim(value: now),
            exp: ExpirationClaim(value: now.addingTimeInterval(seconds))))
    }
}
