/// Why a Redis command (or subscription) failed.
public enum RedisClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Redis answered with an error reply (`-ERR ...`, `-WRONGTYPE ...`). Only this command
    /// failed; the connection is fine.
    case server(String)
    /// The connection closed (or was closed) while the command was pending, or before it was sent.
    case connectionClosed
    /// The client is between connections (Redis down, reconnecting with backoff). Commands are
    /// refused at once rather than queued, so memory stays bounded during an outage.
    case notConnected
    /// The bytes from Redis were not valid RESP; the connection was closed.
    case protocolError(String)
    /// A helper got a reply of a shape its command never returns.
    case unexpectedReply(command: String, reply: RESPValue)
    /// The client or subscriber was shut down.
    case shutDown
    /// A blocking command (XREAD BLOCK) on the shared, pipelined connection would stall every
    /// command queued behind it; use a dedicated `RedisConnection` (`RedisClient.makeDedicatedConnection()`).
    case blockingCommandOnSharedConnection
    /// hiredis could not format the command (out of memory, or over 2 GiB).
    case encodingFailed
    /// No reply within the command's deadline (`RedisConfiguration.commandTimeout`, plus the
    /// block time of a blocking command). The command may still run on the server. A connection
    /// that answered nothing at all within a deadline is closed and made again.
    case timedOut
    /// The connection already has `RedisConfiguration.maxPendingCommands` commands waiting for
    /// replies; this one was not sent. Retry shortly.
    case tooManyPendingCommands
    /// Redis refused the credentials (`WRONGPASS`), or wants some and got none (`NOAUTH`). The
    /// message is Redis's own; it never contains the password.
    case authenticationFailed(String)
    /// The TLS handshake failed (untrusted certificate, wrong host name, no client certificate
    /// where the server requires one, ...).
    case tls(String)

    /// What pending commands fail with when the channel reports `error`: a RESP error cannot be
    /// recovered from, and I/O errors (reset by peer) end the connection too.
    static func channelFailed(_ error: any Error) -> RedisClientError {
        if let error = error as? RESPProtocolError { return .protocolError(error.message) }
        if let error = error as? RedisClientError { return error }
        if RedisTLS.isTLSError(error) { return .tls("\(error)") }
        return .connectionClosed
    }

    /// Whether the same command may succeed if tried again later: true for every fault of the
    /// connection or the server's availability, false for a refusal of the command itself.
    public var isRetryable: Bool {
        switch self {
        case .connectionClosed, .notConnected, .protocolError, .timedOut, .tooManyPendingCommands,
             .authenticationFailed, .tls:
            true
        case .server(let message):
            // Redis busy with a script, loading its data set, or a replica not yet in sync.
            message.hasPrefix("BUSY ") || message.hasPrefix("LOADING") || message.hasPrefix("MASTERDOWN")
                || message.hasPrefix("TRYAGAIN")
        case .unexpectedReply, .shutDown, .blockingCommandOnSharedConnection, .encodingFailed:
            false
        }
    }

    public var description: String {
        switch self {
        case .server(let message): "Redis error: \(message)"
        case .connectionClosed: "the Redis connection closed before the reply arrived"
        case .notConnected: "not connected to Redis (reconnecting)"
        case .protocolError(let message): "Redis protocol error: \(message)"
        case .unexpectedReply(let command, let reply): "unexpected reply to \(command): \(reply)"
        case .shutDown: "the Redis client was shut down"
        case .blockingCommandOnSharedConnection: "blocking commands need a dedicated Redis connection"
        case .encodingFailed: "hiredis could not format the command"
        case .timedOut: "Redis did not answer in time"
        case .tooManyPendingCommands: "too many Redis commands waiting for replies on this connection"
        case .authenticationFailed(let message): "Redis refused the credentials: \(message)"
        case .tls(let message): "TLS with Redis failed: \(message)"
        }
    }
}

/// hiredis' reader rejected the input (unknown type byte, bad length, nesting over 7 levels).
/// Once it happens the stream cannot be resynchronised, so the connection is closed.
public struct RESPProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { "RESP protocol error: \(self.message)" }
}
