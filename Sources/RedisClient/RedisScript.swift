import Crypto
import Foundation
import NIOCore

/// A Lua script run with `EVALSHA`, falling back to `EVAL` once when Redis does not have it
/// cached yet (`NOSCRIPT`: first use, or after a restart or `SCRIPT FLUSH`), so the script's
/// text crosses the wire only then.
public struct RedisScript: Sendable {
    public let source: String
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        self.sha1 = Insecure.SHA1.hash(data: Data(source.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    public func run(
        on redis: any RedisCommandExecutor, keys: [String] = [], arguments: [any RedisArgumentConvertible] = []
    ) async throws -> RESPValue {
        var tail: [any RedisArgumentConvertible] = [keys.count]
        tail.append(contentsOf: keys as [any RedisArgumentConvertible])
        tail.append(contentsOf: arguments)
        do {
            return try await redis.send(RedisCommand("EVALSHA", arguments: [self.sha1] + tail)).get()
        } catch RedisClientError.server(let message) where message.hasPrefix("NOSCRIPT") {
            return try await redis.send(RedisCommand("EVAL", arguments: [self.source] + tail)).get()
        }
    }
}
