import NIOCore
import NIOEmbedded
import Testing
@testable import RedisClient

/// What a Redis reply may make the parser allocate (replies are outside input).
@Suite struct RESPLimitTests {
    private let small = RESPParser.Limits(maxReplyBytes: 1024, maxReplyElements: 8)

    private func parse(_ text: String, limits: RESPParser.Limits) throws(RESPProtocolError) -> [RESPValue] {
        let parser = RESPParser(limits: limits)
        try parser.feed(ByteBuffer(string: text))
        var values: [RESPValue] = []
        while let value = try parser.next() { values.append(value) }
        return values
    }

    @Test func aHugeArrayHeaderIsRefusedBeforeAnythingIsAllocated() {
        // Without the limit hiredis would calloc 2^31 element slots (16 GiB) on this header alone.
        do {
            _ = try self.parse("*2147483647\r\n", limits: .default)
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("more than \(RESPParser.Limits.default.maxReplyElements) values"), "\(error)")
        }
    }

    @Test func valuesAreCountedAtEveryDepthAndPerReply() throws {
        // [[1, 2, [3, 4]], 5]: 8 values, the arrays themselves included.
        #expect(try self.parse("*2\r\n*3\r\n:1\r\n:2\r\n*2\r\n:3\r\n:4\r\n:5\r\n", limits: self.small).count == 1)
        // One more anywhere is too many.
        #expect(throws: RESPProtocolError.self) {
            _ = try self.parse("*2\r\n*3\r\n:1\r\n:2\r\n*3\r\n:3\r\n:4\r\n:0\r\n:5\r\n", limits: self.small)
        }
        #expect(throws: RESPProtocolError.self) { _ = try self.parse("*9\r\n", limits: self.small) }
        // The count starts again with each reply: many small replies are fine.
        let many = String(repeating: "*3\r\n:1\r\n:2\r\n:3\r\n", count: 100)
        #expect(try self.parse(many, limits: self.small).count == 100)
    }

    @Test func bytesOfOneReplyAreBounded() throws {
        let half = String(repeating: "x", count: 500)
        // Two strings of 500 bytes fit in 1024; three do not.
        #expect(try self.parse("*2\r\n$500\r\n\(half)\r\n$500\r\n\(half)\r\n", limits: self.small).count == 1)
        #expect(throws: RESPProtocolError.self) {
            _ = try self.parse("*3\r\n$500\r\n\(half)\r\n$500\r\n\(half)\r\n$500\r\n\(half)\r\n", limits: self.small)
        }
        // Each reply on its own: fine however many.
        #expect(try self.parse(String(repeating: "$500\r\n\(half)\r\n", count: 10), limits: self.small).count == 10)
    }

    @Test func aBulkStringStillArrivingIsBoundedByWhatIsBuffered() throws {
        let parser = RESPParser(limits: self.small)
        // A declared length of 1 GB: nothing is allocated for it up front...
        try parser.feed(ByteBuffer(string: "$1000000000\r\n"))
        #expect(try parser.next() == nil)
        try parser.feed(ByteBuffer(string: String(repeating: "y", count: 900)))
        #expect(try parser.next() == nil)
        // ...and once more than the limit is buffered the reply is refused.
        try parser.feed(ByteBuffer(string: String(repeating: "y", count: 200)))
        do {
            _ = try parser.next()
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("larger than 1024 bytes"), "\(error)")
        }
        // The stream stays failed: it cannot be resynchronised, and nothing more is buffered.
        #expect(throws: RESPProtocolError.self) { try parser.feed(ByteBuffer(string: "+OK\r\n")) }
        #expect(throws: RESPProtocolError.self) { _ = try parser.next() }
    }

    @Test func aRefusedReplyFailsPendingCommandsAndClosesTheConnection() throws {
        let channel = EmbeddedChannel()
        try RedisConnection.addHandlers(to: channel.pipeline.syncOperations, replyLimits: self.small)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        defer { _ = try? channel.finish() }
        let connection = RedisConnection(channel: channel, logger: .init(label: "test"))
        let reply = connection.send(RedisCommand("LRANGE", "k", 0, -1))
        // The handler takes the decoder's error (no throw here) and closes.
        _ = try? channel.writeInbound(ByteBuffer(string: "*100000\r\n"))
        guard case .protocolError(let message)? = failure(reply) else {
            Issue.record("expected a protocol error, got \(String(describing: peek(reply)))")
            return
        }
        #expect(message.contains("more than 8 values"))
        #expect(!channel.isActive)
    }
}

/// Deadlines, the pending bound and late replies, on `EmbeddedChannel` with a manual clock.
@Suite struct RedisCommandDeadlineTests {
    private func makeConnection(
        timeout: TimeAmount = .seconds(2), maxPending: Int = 100, maxTimedOutSlots: Int? = nil
    ) throws -> (EmbeddedChannel, RedisConnection) {
        let channel = EmbeddedChannel()
        try RedisConnection.addHandlers(
            to: channel.pipeline.syncOperations,
            limits: .init(commandTimeout: timeout, maxPending: maxPending, maxTimedOutSlots: maxTimedOutSlots))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        return (channel, RedisConnection(channel: channel, logger: .init(label: "test")))
    }

    /// The commands written so far, as text.
    private func written(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
        return text
    }

    @Test func aLateReplyIsDroppedAndNeverGivenToTheNextCommand() throws {
        let (channel, connection) = try self.makeConnection()
        defer { _ = try? channel.finish() }
        let first = connection.send(RedisCommand("GET", "first"))
        let slow = connection.send(RedisCommand("GET", "slow"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        // Redis is alive (it answers the first command) but slow with the second.
        try channel.writeInbound(ByteBuffer(string: "$5\r\nfirst\r\n"))
        #expect(try peek(first)?.get() == "first")
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(999))
        #expect(peek(slow) == nil)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(failure(slow) == .timedOut)
        #expect(channel.isActive, "a connection that answers is kept")
        let next = connection.send(RedisCommand("GET", "next"))
        // The slow command's reply comes after all, then the next one's.
        try channel.writeInbound(ByteBuffer(string: "$4\r\nslow\r\n"))
        #expect(peek(next) == nil, "the late reply went to the command after it")
        try channel.writeInbound(ByteBuffer(string: "$4\r\nnext\r\n"))
        #expect(try peek(next)?.get() == "next")
        #expect(channel.isActive)
    }

    @Test func aConnectionThatAnswersNothingWithinADeadlineIsClosed() throws {
        let (channel, connection) = try self.makeConnection()
        let first = connection.send(RedisCommand("GET", "a"))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(500))
        let second = connection.send(RedisCommand("GET", "b"))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1500))
        // The first deadline passed with nothing read since it was sent: a stalled server.
        #expect(failure(first) == .timedOut)
        #expect(failure(second) == .timedOut)
        #expect(!channel.isActive)
        #expect(failure(connection.send(RedisCommand("PING"))) == .connectionClosed)
        _ = try? channel.finish()
    }

    @Test func aBlockingCommandGetsItsBlockTimeOnTopOfTheTimeout() throws {
        let (channel, connection) = try self.makeConnection()
        defer { _ = try? channel.finish() }
        var read = RedisCommand("XREAD")
        read.block(milliseconds: 5_000)
        read.append(contentsOf: ["STREAMS", "s", "$"])
        #expect(read.blockTime == .seconds(5))
        let blocked = connection.send(read)
        #expect(try self.written(channel).contains("BLOCK\r\n$4\r\n5000\r\n"))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(6_999))
        #expect(peek(blocked) == nil)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(failure(blocked) == .timedOut)
    }

    @Test func blockZeroWouldWaitForeverSoItBecomesOneMillisecond() {
        var read = RedisCommand("XREAD")
        read.block(milliseconds: 0)
        #expect(read.arguments.map { String(buffer: $0) } == ["XREAD", "BLOCK", "1"])
        #expect(read.blockTime == .milliseconds(1))
    }

    @Test func pendingCommandsAreBoundedAndTheExcessFailsAtOnceUnsent() throws {
        let (channel, connection) = try self.makeConnection(maxPending: 3)
        defer { _ = try? channel.finish() }
        let sent = connection.send(pipeline: [RedisCommand("GET", "1"), RedisCommand("GET", "2")])
        _ = try self.written(channel)
        // A pipeline that does not fit goes whole or not at all.
        let refused = connection.send(pipeline: [RedisCommand("GET", "3"), RedisCommand("GET", "4")])
        #expect(refused.allSatisfy { failure($0) == .tooManyPendingCommands })
        #expect(try self.written(channel).isEmpty, "nothing of a refused pipeline is written")
        let third = connection.send(RedisCommand("GET", "3"))
        #expect(failure(connection.send(RedisCommand("GET", "4"))) == .tooManyPendingCommands)
        #expect(RedisClientError.tooManyPendingCommands.isRetryable)
        try channel.writeInbound(ByteBuffer(string: ":1\r\n:2\r\n:3\r\n"))
        #expect(try sent.map { try peek($0)?.get() } == [1, 2])
        #expect(try peek(third)?.get() == 3)
        // Room again.
        let fourth = connection.send(RedisCommand("GET", "4"))
        try channel.writeInbound(ByteBuffer(string: ":4\r\n"))
        #expect(try peek(fourth)?.get() == 4)
    }

    @Test func tooManyLateRepliesStillToComeCloseTheConnection() throws {
        let (channel, connection) = try self.makeConnection(maxTimedOutSlots: 2)
        let answered = connection.send(RedisCommand("GET", "a"))
        let slow = (0..<3).map { connection.send(RedisCommand("GET", "slow\($0)")) }
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        try channel.writeInbound(ByteBuffer(string: "$1\r\na\r\n"))
        #expect(try peek(answered)?.get() == "a")
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(slow.allSatisfy { failure($0) == .timedOut })
        #expect(!channel.isActive, "3 late replies to wait for, with room for 2")
        _ = try? channel.finish()
    }

    @Test func repliesInTimeCancelNothing() throws {
        let (channel, connection) = try self.makeConnection()
        defer { _ = try? channel.finish() }
        for round in 0..<5 {
            let reply = connection.send(RedisCommand("INCR", "n"))
            channel.embeddedEventLoop.advanceTime(by: .milliseconds(1_900))
            try channel.writeInbound(ByteBuffer(string: ":\(round)\r\n"))
            #expect(try peek(reply)?.get() == .integer(round))
        }
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(channel.isActive)
    }

    @Test func anIdleSubscriberPingsAndIsClosedWhenNothingAnswers() throws {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        try PubSubConnection.addHandlers(
            to: channel.pipeline.syncOperations,
            limits: .init(commandTimeout: .seconds(2), maxPending: 10, healthCheckInterval: .seconds(5))) { _ in }
        defer { _ = try? channel.finish() }
        // Messages keep coming: no PING needed.
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        try channel.writeInbound(ByteBuffer(string: "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(try self.written(channel).isEmpty)
        // A quiet interval: PING, answered in subscribe mode with a pong push; the connection stays.
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(try self.written(channel) == "*1\r\n$4\r\nPING\r\n")
        try channel.writeInbound(ByteBuffer(string: "*2\r\n$4\r\npong\r\n$0\r\n\r\n"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(channel.isActive)
        #expect(try self.written(channel).isEmpty, "the pong was news")
        // Quiet again: another PING, and this time nothing comes back: closed at the next check.
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(try self.written(channel) == "*1\r\n$4\r\nPING\r\n")
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(!channel.isActive)
    }

    @Test func subscribeConfirmationsHaveDeadlinesToo() throws {
        let channel = EmbeddedChannel()
        try PubSubConnection.addHandlers(to: channel.pipeline.syncOperations, limits: .init(commandTimeout: .seconds(2), maxPending: 2)) { _ in }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        let connection = PubSubConnection(channel: channel)
        #expect(failure(connection.send(.subscribe, names: ["a", "b", "c"])) == .tooManyPendingCommands)
        let subscribed = connection.send(.subscribe, names: ["a"])
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(failure(subscribed) == .timedOut)
        #expect(!channel.isActive, "nothing came back at all: stalled")
        _ = try? channel.finish()
    }
}
