import Crypto
import NIOCore
import NIOHTTP1

/// Why an upgrade request was refused, and the HTTP answer it gets (the one place a handshake
/// failure maps to a status).
public struct HandshakeRejection: Error, Equatable, Sendable {
    public enum Reason: Equatable, Sendable {
        case notFound
        case methodNotAllowed
        case malformed(String)
        case unsupportedVersion
        case originNotAllowed
        case overloaded
        case draining
        /// The application's `admit` said no.
        case refused(HTTPRefusal)
    }

    public var reason: Reason

    public var status: HTTPResponseStatus {
        switch self.reason {
        case .notFound: return .notFound
        case .methodNotAllowed: return .methodNotAllowed
        case .malformed: return .badRequest
        case .unsupportedVersion: return .upgradeRequired
        case .originNotAllowed: return .forbidden
        case .overloaded, .draining: return .serviceUnavailable
        case .refused(let refusal): return refusal.status
        }
    }

    public var message: String {
        switch self.reason {
        case .notFound: return "no WebSocket endpoint at this path"
        case .methodNotAllowed: return "WebSocket upgrade needs GET"
        case .malformed(let detail): return "malformed WebSocket handshake: \(detail)"
        case .unsupportedVersion: return "unsupported WebSocket version; this server speaks 13"
        case .originNotAllowed: return "origin not allowed"
        case .overloaded: return "too many connections; retry later"
        case .draining: return "server is draining; retry on another instance"
        case .refused(let refusal): return refusal.body
        }
    }

    var contentType: String {
        if case .refused(let refusal) = self.reason { return refusal.contentType }
        return "text/plain; charset=utf-8"
    }

    var extraHeaders: [(String, String)] {
        switch self.reason {
        case .unsupportedVersion: return [("Sec-WebSocket-Version", "13")]
        case .overloaded, .draining: return [("Retry-After", "1")]
        case .refused(let refusal): return refusal.headers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        default: return []
        }
    }
}

/// What a valid handshake agrees on.
public struct HandshakeAgreement: Equatable, Sendable {
    public var acceptKey: String
    public var subprotocol: String?
    public var deflate: PerMessageDeflateAgreement?

    /// Headers for the 101 response (Upgrade and Connection are added by NIO's upgrade handler).
    public var responseHeaders: HTTPHeaders {
        var headers = HTTPHeaders()
        headers.add(name: "Sec-WebSocket-Accept", value: self.acceptKey)
        if let subprotocol { headers.add(name: "Sec-WebSocket-Protocol", value: subprotocol) }
        if let deflate { headers.add(name: "Sec-WebSocket-Extensions", value: deflate.responseHeader) }
        return headers
    }
}

/// RFC 6455 §4.2 server handshake checks as a pure function of the request and the configuration.
public enum WebSocketHandshake {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    public static func evaluate(
        _ request: HTTPRequestHead,
        configuration: WebSocketServerConfiguration
    ) -> Result<HandshakeAgreement, HandshakeRejection> {
        if let problem = HTTPHostRule.problem(request) { return .failure(.init(reason: .malformed(problem))) }
        let path = request.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard path == configuration.path else { return .failure(.init(reason: .notFound)) }
        guard request.method == .GET else { return .failure(.init(reason: .methodNotAllowed)) }
        guard request.version.major == 1 && request.version.minor >= 1 else {
            return .failure(.init(reason: .malformed("HTTP/1.1 or later required")))
        }
        let connectionTokens = request.headers[canonicalForm: "connection"].map { $0.lowercased() }
        guard connectionTokens.contains("upgrade") else {
            return .failure(.init(reason: .malformed("Connection header lacks \"upgrade\"")))
        }
        guard request.headers[canonicalForm: "upgrade"].contains(where: { $0.lowercased() == "websocket" }) else {
            return .failure(.init(reason: .malformed("Upgrade header is not \"websocket\"")))
        }
        let versions = request.headers["sec-websocket-version"]
        guard versions.count == 1 else { return .failure(.init(reason: .malformed("Sec-WebSocket-Version missing"))) }
        guard versions[0].trimmingCharacters(in: " \t") == "13" else { return .failure(.init(reason: .unsupportedVersion)) }
        let keys = request.headers["sec-websocket-key"]
        guard keys.count == 1 else { return .failure(.init(reason: .malformed("Sec-WebSocket-Key missing or repeated"))) }
        let key = keys[0].trimmingCharacters(in: " \t")
        guard let decoded = Self.base64Decode(key), decoded.count == 16 else {
            return .failure(.init(reason: .malformed("Sec-WebSocket-Key is not 16 bytes of base64")))
        }
        guard OriginCheck.allows(request.headers, configuration: configuration) else {
            return .failure(.init(reason: .originNotAllowed))
        }
        let offered = request.headers[canonicalForm: "sec-websocket-protocol"].map { $0.lowercased() }
        let subprotocol = configuration.subprotocols.first { offered.contains($0.lowercased()) }
        let deflate = PerMessageDeflateNegotiation.negotiate(
            offers: request.headers["sec-websocket-extensions"], configuration: configuration.deflate)
        return .success(HandshakeAgreement(acceptKey: Self.acceptKey(for: key), subprotocol: subprotocol, deflate: deflate))
    }

    /// `base64(SHA-1(key + GUID))` (RFC 6455 §4.2.2).
    public static func acceptKey(for key: String) -> String {
        let digest = Insecure.SHA1.hash(data: Array((key + Self.guid).utf8))
        return Self.base64Encode(Array(digest))
    }

    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func base64Encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let b0 = bytes[index]
            let b1 = index + 1 < bytes.count ? bytes[index + 1] : 0
            let b2 = index + 2 < bytes.count ? bytes[index + 2] : 0
            out.append(Self.alphabet[Int(b0 >> 2)])
            out.append(Self.alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(index + 1 < bytes.count ? Self.alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? Self.alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func base64Decode(_ string: String) -> [UInt8]? {
        let chars = Array(string.utf8)
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        var index = 0
        while index < chars.count {
            var values: [UInt8] = []
            var padding = 0
            for char in chars[index..<index + 4] {
                if char == UInt8(ascii: "=") {
                    padding += 1
                    values.append(0)
                } else if padding > 0 {
                    return nil
                } else if let value = Self.alphabet.firstIndex(of: char) {
                    values.append(UInt8(value))
                } else {
                    return nil
                }
            }
            if padding > 2 || (padding > 0 && index + 4 != chars.count) { return nil }
            out.append(values[0] << 2 | values[1] >> 4)
            if padding < 2 { out.append(values[1] << 4 | values[2] >> 2) }
            if padding < 1 { out.append(values[2] << 6 | values[3]) }
            index += 4
        }
        return out
    }
}
