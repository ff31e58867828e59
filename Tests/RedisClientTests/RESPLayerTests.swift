import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing
@testable import RedisClient

/// The hiredis-backed RESP layer on `EmbeddedChannel`: exact bytes in, values out.
@Suite struct RESPDecoderTests {
    /// A pipeline with only the decoder; values come out with `readInbound`.
    private func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder()))
        return channel
    }

    private func decode(_ chunks: [[UInt8]]) throws -> [RESPValue] {
        let channel = try self.makeChannel()
        defer { _ = try? channel.finish() }
        var values: [RESPValue] = []
        for chunk in chunks {
            try channel.writeInbound(ByteBuffer(bytes: chunk))
            while let value = try channel.readInbound(as: RESPValue.self) { values.append(value) }
        }
        return values
    }

    private func decode(_ text: String) throws -> [RESPValue] {
        try self.decode([Array(text.utf8)])
    }

    @Test func everyType() throws {
        let values = try self.decode("+OK\r\n-ERR unknown command 'FOO'\r\n:-42\r\n$5\r\nhello\r\n$0\r\n\r\n$-1\r\n*0\r\n*-1\r\n")
        #expect(values == [
            .simpleString("OK"),
            .error("ERR unknown command 'FOO'"),
            .integer(-42),
            .bulkString(ByteBuffer(string: "hello")),
            .bulkString(ByteBuffer()),
            .null,
            .array([]),
            .nullArray,
        ])
    }

    @Test func binaryBulkStringsKeepEveryByte() throws {
        let payload: [UInt8] = [0, 13, 10, 0xFF, 0, 36, 45, 49, 13, 10]
        let values = try self.decode([Array("$\(payload.count)\r\n".utf8) + payload + [13, 10]])
        #expect(values.count == 1)
        #expect(values.first?.bytes == payload)
    }

    @Test func nestedArraysWithNullsAndErrorsInside() throws {
        // The shape of an XREAD reply, plus a null bulk, a null array and an error inside (EXEC-like).
        let text = "*2\r\n*2\r\n$6\r\nstream\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*4\r\n$-1\r\n*-1\r\n-WRONGTYPE bad\r\n:7\r\n"
        let values = try self.decode(text)
        let entry: RESPValue = .array(["1-0", .array(["f", "v"])])
        #expect(values == [
            .array([
                .array(["stream", .array([entry])]),
                .array([.null, .nullArray, .error("WRONGTYPE bad"), .integer(7)]),
            ]),
        ])
    }

    @Test func aReplySplitAtEveryByteBoundary() throws {
        let text = Array("*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n+done\r\n$4\r\nnext\r\n".utf8)
        let whole = try self.decode([text])
        #expect(whole.count == 2)
        for cut in 0...text.count {
            #expect(try self.decode([Array(text[..<cut]), Array(text[cut...])]) == whole, "split at \(cut)")
        }
        // And one byte at a time.
        #expect(try self.decode(text.map { [$0] }) == whole)
    }

    @Test func severalRepliesInOneRead() throws {
        let values = try self.decode(String(repeating: ":1\r\n+OK\r\n", count: 500))
        #expect(values.count == 1000)
        #expect(values.last == .simpleString("OK"))
    }

    @Test func aLargeBulkStringAcrossManyReads() throws {
        let payload = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let bytes = Array("$\(payload.count)\r\n".utf8) + payload + [13, 10]
        let chunks = stride(from: 0, to: bytes.count, by: 4096).map { Array(bytes[$0..<min($0 + 4096, bytes.count)]) }
        let values = try self.decode(chunks)
        #expect(values.count == 1 && values.first?.bytes == payload)
    }

    @Test func garbageIsATypedProtocolError() throws {
        let channel = try self.makeChannel()
        defer { _ = try? channel.finish() }
        #expect(throws: RESPProtocolError.self) {
            try channel.writeInbound(ByteBuffer(string: "+OK\r\n?garbage\r\n"))
        }
        // The value before the garbage was still delivered.
        #expect(try channel.readInbound(as: RESPValue.self) == .simpleString("OK"))
    }

    @Test func badLengthIsAProtocolError() throws {
        let parser = RESPParser()
        try parser.feed(ByteBuffer(string: "$-5\r\n"))
        #expect(throws: RESPProtocolError.self) { _ = try parser.next() }
        // The reader stays failed: RESP cannot resynchronise.
        #expect(throws: RESPProtocolError.self) {
            try parser.feed(ByteBuffer(string: "+OK\r\n"))
            _ = try parser.next()
        }
    }

    @Test func nestingBeyondHiredisLimitIsAProtocolError() throws {
        let parser = RESPParser()
        try parser.feed(ByteBuffer(string: String(repeating: "*1\r\n", count: 9) + ":1\r\n"))
        #expect(throws: RESPProtocolError.self) { _ = try parser.next() }
    }

    @Test func parserNeedsMoreDataUntilTheValueIsWhole() throws {
        let parser = RESPParser()
        try parser.feed(ByteBuffer(string: "*2\r\n$3\r\nab"))
        #expect(try parser.next() == nil)
        try parser.feed(ByteBuffer(string: "c\r\n:5"))
        #expect(try parser.next() == nil)
        try parser.feed(ByteBuffer(string: "\r\n"))
        #expect(try parser.next() == .array(["abc", 5]))
        #expect(try parser.next() == nil)
    }

    @Test func accessors() {
        #expect(RESPValue.bulkString(ByteBuffer(string: "12")).int == 12)
        #expect(RESPValue.integer(3).string == "3")
        #expect(RESPValue.simpleString("PONG").string == "PONG")
        #expect(RESPValue.null.isNull && RESPValue.nullArray.isNull && RESPValue.null.string == nil)
        #expect(RESPValue.array([1]).array == [1] && RESPValue.nullArray.array == nil)
        #expect(RESPValue.error("ERR x").errorMessage == "ERR x")
    }
}

@Suite struct RESPEncodingTests {
    private func encode(_ command: RedisCommand) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try command.encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }

    @Test func binaryArgumentsAreEncodedExactly() throws {
        let value = ByteBuffer(bytes: [0, 0x0D, 0x0A, 0x00, 0xFF])
        let bytes = try self.encode(RedisCommand("SET", "key\r\nwith crlf", value))
        let expected = Array("*3\r\n$3\r\nSET\r\n$14\r\nkey\r\nwith crlf\r\n$5\r\n".utf8) + [0, 0x0D, 0x0A, 0x00, 0xFF] + [0x0D, 0x0A]
        #expect(bytes == expected)
    }

    @Test func emptyAndNumericArguments() throws {
        let bytes = try self.encode(RedisCommand("EVAL", "", 0, 1.5, [UInt8]()))
        #expect(bytes == Array("*5\r\n$4\r\nEVAL\r\n$0\r\n\r\n$1\r\n0\r\n$3\r\n1.5\r\n$0\r\n\r\n".utf8))
    }

    @Test func commandArgumentsRoundTrip() {
        var command = RedisCommand("XADD", "s")
        command.append(contentsOf: ["MAXLEN", "~", 10])
        command.append("*")
        #expect(command.name == "XADD")
        #expect(command.arguments.map { String(buffer: $0) } == ["XADD", "s", "MAXLEN", "~", "10", "*"])
    }

    @Test func pipelinedCommandsGoOutInOneWrite() throws {
        let channel = EmbeddedChannel()
        try RedisConnection.addHandlers(to: channel.pipeline.syncOperations)
        let connection = RedisConnection(channel: channel, logger: .init(label: "test"))
        _ = connection.send(pipeline: [RedisCommand("PING"), RedisCommand("GET", "a")])
        let written = try channel.readOutbound(as: ByteBuffer.self)
        #expect(written.map { String(buffer: $0) } == "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        _ = try? channel.finish()
    }
}

/// What a future on an `EmbeddedEventLoop` has completed with so far (nil: still pending).
func peek<Value: Sendable>(_ future: EventLoopFuture<Value>) -> Result<Value, any Error>? {
    let box = NIOLockedValueBox<Result<Value, any Error>?>(nil)
    future.whenComplete { result in box.withLockedValue { $0 = result } }
    return box.withLockedValue { $0 }
}

func failure<Value: Sendable>(_ future: EventLoopFuture<Value>) -> RedisClientError? {
    guard case .failure(let error) = peek(future) else { return nil }
    return error as? RedisClientError
}

@Suite struct RedisCommandHandlerTests {
    private func makeConnection() throws -> (EmbeddedChannel, RedisConnection) {
        let channel = EmbeddedChannel()
        try RedisConnection.addHandlers(to: channel.pipeline.syncOperations)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        return (channel, RedisConnection(channel: channel, logger: .init(label: "test")))
    }

    @Test func pipelinedRepliesAreMatchedInOrder() throws {
        let (channel, connection) = try self.makeConnection()
        defer { _ = try? channel.finish() }
        let first = connection.send(RedisCommand("SET", "a", "1"))
        let second = connection.send(RedisCommand("LPUSH", "a", "x"))
        let third = connection.send(RedisCommand("GET", "a"))
        let fourth = connection.send(RedisCommand("GET", "missing"))
        #expect(peek(first) == nil)
        // Replies arrive split across reads, several per read.
        try channel.writeInbound(ByteBuffer(string: "+OK\r\n-WRONGTYPE Operation against a key\r\n$1"))
        #expect(try peek(first)?.get() == .simpleString("OK"))
        #expect(failure(second) == .server("WRONGTYPE Operation against a key"))
        #expect(peek(third) == nil)
        try channel.writeInbound(ByteBuffer(string: "\r\n1\r\n$-1\r\n"))
        #expect(try peek(third)?.get() == "1")
        #expect(try peek(fourth)?.get() == .null)
        // An error reply fails only its command: the connection is still usable.
        #expect(channel.isActive)
    }

    @Test func pendingCommandsFailWhenTheChannelCloses() throws {
        let (channel, connection) = try self.makeConnection()
        let first = connection.send(RedisCommand("GET", "a"))
        let second = connection.send(RedisCommand("GET", "b"))
        try channel.writeInbound(ByteBuffer(string: "$1\r\nA\r\n"))
        #expect(try peek(first)?.get() == "A")
        _ = try? channel.finish()
        #expect(failure(second) == .connectionClosed)
        // Sending on the closed connection fails at once.
        #expect(failure(connection.send(RedisCommand("PING"))) == .connectionClosed)
        #expect(connection.send(pipeline: [RedisCommand("PING"), RedisCommand("PING")]).allSatisfy { failure($0) == .connectionClosed })
    }

    @Test func garbageFailsPendingCommandsWithAProtocolErrorAndCloses() throws {
        let (channel, connection) = try self.makeConnection()
        defer { _ = try? channel.finish() }
        let pending = connection.send(RedisCommand("GET", "a"))
        try channel.writeInbound(ByteBuffer(string: "!!!\r\n"))
        guard case .protocolError(let message)? = failure(pending) else {
            Issue.record("expected a protocol error, got \(String(describing: peek(pending)))")
            return
        }
        #expect(message.contains("Protocol error"))
        #expect(!channel.isActive)
    }

    @Test func anUnsolicitedReplyClosesTheConnection() throws {
        let (channel, _) = try self.makeConnection()
        defer { _ = try? channel.finish() }
        try channel.writeInbound(ByteBuffer(string: "+OK\r\n"))
        #expect(!channel.isActive)
    }
}

@Suite struct RedisPubSubHandlerTests {
    /// Messages the handler delivered, in order.
    private final class Inbox {
        var messages: [RedisPubSubMessage] = []
    }

    @Test func pushesInterleavedWithConfirmations() throws {
        let channel = EmbeddedChannel()
        let inbox = Inbox()
        try PubSubConnection.addHandlers(to: channel.pipeline.syncOperations) { inbox.messages.append($0) }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        defer { _ = try? channel.finish() }
        let connection = PubSubConnection(channel: channel)

        let subscribed = connection.send(.subscribe, names: ["a", "b"])
        let patterned = connection.send(.psubscribe, names: ["room.*"])
        let written = try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) }
        #expect(written == "*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n")

        // Confirmation for "a", then a message on "a" before "b" is confirmed, then the rest.
        try channel.writeInbound(ByteBuffer(string:
            "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n" +
            "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nfirst\r\n"))
        #expect(peek(subscribed) == nil)
        #expect(inbox.messages == [RedisPubSubMessage(channel: "a", payload: ByteBuffer(string: "first"))])

        var bytes = ByteBuffer(string: "*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n*4\r\n$8\r\npmessage\r\n$6\r\nroom.*\r\n$6\r\nroom.1\r\n$3\r\n")
        bytes.writeBytes([0, 13, 10])  // binary payload
        bytes.writeString("\r\n*3\r\n$10\r\npsubscribe\r\n$6\r\nroom.*\r\n:3\r\n")
        try channel.writeInbound(bytes)
        #expect(throws: Never.self) { try peek(subscribed)?.get() }
        #expect(peek(subscribed) != nil && peek(patterned) != nil)
        #expect(inbox.messages.count == 2)
        #expect(inbox.messages.last == RedisPubSubMessage(channel: "room.1", pattern: "room.*", payload: ByteBuffer(bytes: [0, 13, 10])))

        let unsubscribed = connection.send(.unsubscribe, names: ["a"])
        try channel.writeInbound(ByteBuffer(string: "*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$0\r\n\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:2\r\n"))
        #expect(peek(unsubscribed) != nil)
        #expect(inbox.messages.count == 3)
    }

    @Test func pendingConfirmationsFailWhenTheChannelCloses() throws {
        let channel = EmbeddedChannel()
        try PubSubConnection.addHandlers(to: channel.pipeline.syncOperations) { _ in }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        let connection = PubSubConnection(channel: channel)
        let subscribed = connection.send(.subscribe, names: ["a"])
        _ = try? channel.finish()
        #expect(failure(subscribed) == .connectionClosed)
        #expect(failure(connection.send(.subscribe, names: ["b"])) == .connectionClosed)
    }

    @Test func anErrorReplyFailsTheOldestRequest() throws {
        let channel = EmbeddedChannel()
        try PubSubConnection.addHandlers(to: channel.pipeline.syncOperations) { _ in }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        defer { _ = try? channel.finish() }
        let connection = PubSubConnection(channel: channel)
        let first = connection.send(.subscribe, names: ["a", "b"])
        let second = connection.send(.subscribe, names: ["c"])
        try channel.writeInbound(ByteBuffer(string: "-ERR nope\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"))
        #expect(failure(first) == .server("ERR nope"))
        #expect(throws: Never.self) { try peek(second)?.get() }
        #expect(peek(second) != nil)
    }
}
