import NIOCore

/// One RESP2 value as Redis sends it.
public enum RESPValue: Sendable, Hashable {
    /// `+OK`: a status line (never binary).
    case simpleString(String)
    /// `-ERR ...`: an error reply. As a command's reply it fails the command with
    /// `RedisClientError.server`; inside an array (EXEC, EVAL results) it stays a value.
    case error(String)
    /// `:42`
    case integer(Int)
    /// `$n`: a binary-safe string.
    case bulkString(ByteBuffer)
    /// `$-1`: the null bulk string (GET of a missing key, SET NX that did not set).
    case null
    /// `*n`
    case array([RESPValue])
    /// `*-1`: the null array (a blocking XREAD that timed out, an aborted EXEC).
    case nullArray

    /// True for `null` and `nullArray`.
    public var isNull: Bool {
        switch self {
        case .null, .nullArray: true
        default: false
        }
    }

    /// The text of a simple or bulk string (UTF-8, lossily decoded), or an integer's digits.
    public var string: String? {
        switch self {
        case .simpleString(let text): text
        case .bulkString(let buffer): String(buffer: buffer)
        case .integer(let value): String(value)
        default: nil
        }
    }

    /// An integer reply, or a string holding a decimal integer (GET of a counter).
    public var int: Int? {
        switch self {
        case .integer(let value): value
        case .simpleString(let text): Int(text)
        case .bulkString(let buffer): Int(String(buffer: buffer))
        default: nil
        }
    }

    /// The elements of an array; nil for anything else, `nullArray` included.
    public var array: [RESPValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    /// The bytes of a bulk or simple string.
    public var buffer: ByteBuffer? {
        switch self {
        case .bulkString(let buffer): buffer
        case .simpleString(let text): ByteBuffer(string: text)
        default: nil
        }
    }

    /// The bytes of a bulk or simple string as an array.
    public var bytes: [UInt8]? {
        self.buffer.map { Array($0.readableBytesView) }
    }

    /// The message of an error reply.
    public var errorMessage: String? {
        if case .error(let message) = self { return message }
        return nil
    }
}

extension RESPValue: CustomStringConvertible {
    public var description: String {
        switch self {
        case .simpleString(let text): "+\(text)"
        case .error(let message): "-\(message)"
        case .integer(let value): ":\(value)"
        case .bulkString(let buffer): "\"\(String(buffer: buffer))\""
        case .null: "(nil)"
        case .array(let values): "[" + values.map(\.description).joined(separator: ", ") + "]"
        case .nullArray: "(nil array)"
        }
    }
}

extension RESPValue: ExpressibleByStringLiteral {
    /// A bulk string, which is what Redis returns for stored values (handy in tests).
    public init(stringLiteral value: String) {
        self = .bulkString(ByteBuffer(string: value))
    }
}

extension RESPValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int) {
        self = .integer(value)
    }
}
