/// RFC 6455 §7.4 close status codes the server sends or checks.
public struct WebSocketCloseCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let normalClosure = Self(rawValue: 1000)
    public static let goingAway = Self(rawValue: 1001)
    public static let protocolError = Self(rawValue: 1002)
    public static let unsupportedData = Self(rawValue: 1003)
    /// Never sent on the wire: stands for "no status code in the Close frame".
    public static let noStatusReceived = Self(rawValue: 1005)
    /// Never sent on the wire: stands for "TCP closed without a close handshake".
    public static let abnormalClosure = Self(rawValue: 1006)
    public static let invalidPayload = Self(rawValue: 1007)
    public static let policyViolation = Self(rawValue: 1008)
    public static let messageTooBig = Self(rawValue: 1009)
    public static let internalError = Self(rawValue: 1011)
    public static let serviceRestart = Self(rawValue: 1012)
    public static let tryAgainLater = Self(rawValue: 1013)

    /// Whether a peer may put this code in a Close frame (RFC 6455 §7.4.1, §7.4.2; IANA registry).
    public var isValidOnWire: Bool {
        switch self.rawValue {
        case 1000...1003, 1007...1014: return true
        case 3000...4999: return true
        default: return false
        }
    }

    public var description: String { String(self.rawValue) }
}

/// Frame opcodes (RFC 6455 §5.2).
public enum WebSocketOpcode: UInt8, Sendable {
    case continuation = 0x0
    case text = 0x1
    case binary = 0x2
    case close = 0x8
    case ping = 0x9
    case pong = 0xA

    var isControl: Bool { self.rawValue & 0x8 != 0 }
}
