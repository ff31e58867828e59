import Crypto
import Foundation

/// JWTs made by hand for hostile tests: any header and claims text (not just valid JSON), HS256
/// signatures with any secret, and the pieces (base64url) to assemble broken ones. Independent
/// of the gateway's jwt-kit, so a test checks the verifier against a second implementation.
enum TestJWT {
    static func base64URL(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func base64URL(_ text: String) -> String { Self.base64URL(Array(text.utf8)) }

    /// HMAC-SHA256 of `input` with `secret`, base64url.
    static func hs256Signature(_ input: String, secret: String) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: Data(secret.utf8)))
        return Self.base64URL(Array(mac))
    }

    /// `base64url(header).base64url(claims).signature`, where the signature is HS256 over the
    /// first two parts with `secret` (whatever `alg` the header names), or `signature` verbatim.
    static func token(header: String = #"{"alg":"HS256","typ":"JWT"}"#, claims: String, secret: String, signature: String? = nil) -> String {
        let input = Self.base64URL(header) + "." + Self.base64URL(claims)
        return input + "." + (signature ?? Self.hs256Signature(input, secret: secret))
    }

    /// A valid HS256 token for `sub`, expiring `expiresIn` seconds from now.
    static func valid(sub: String, secret: String, expiresIn: Int = 600) -> String {
        let now = Int(Date().timeIntervalSince1970)
        return Self.token(claims: #"{"sub":"\#(sub)","iat":\#(now),"exp":\#(now + expiresIn)}"#, secret: secret)
    }
}
