import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import SluiceTestSupport
@testable import WSServer

/// The connection handler on an `EmbeddedChannel`: exact bytes in, exact frames out, time driven by hand.
@Suite struct ConnectionHandlerTests {
    /// Records messages and lets the test send through the connection.
    final class RecordingApplication: WebSocketApplication, @unchecked Sendable {
        // @unchecked: used from the single EmbeddedEventLoop thread only.
        final class Delegate: WebSocketConnectionDelegate {
            var messages: [WebSocketMessage] = []
            var connection: WebSocketConnection?
            var closedWith: WebSocketCloseCode?
            var writabilityChanges = 0
            var echo = false
            func connectionOpened(_ connection: WebSocketConnection) { self.connection = connection }
            func connection(_ connection: WebSocketConnection, didReceive message: WebSocketMessage) {
                self.messages.append(message)
                if self.echo {
                    if case .text(let buffer) = message { connection.send(text: buffer) }
                    if case .binary(let buffer) = message { connection.send(binary: buffer) }
                }
            }
            func connectionWritabilityChanged(_ connection: WebSocketConnection) { self.writabilityChanges += 1 }
            func connectionClosed(_ connection: WebSocketConnection, code: WebSocketCloseCode) { self.closedWith = code }
        }
        let delegate = Delegate()
        func makeDelegate(for connection: WebSocketConnectionInfo) -> any WebSocketConnectionDelegate { self.delegate }
    }

    /// Counts `read()` calls that reach the socket side, to observe read backpressure.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }
    }

    struct Harness {
        let channel: EmbeddedChannel
        let app: RecordingApplication
        let reads: ReadCounter
        var pending: [UInt8] = []

        init(
            configure: (inout WebSocketServerConfiguration) -> Void = { _ in }, deflate: PerMessageDeflateAgreement? = nil,
            echo: Bool = false, loop: EmbeddedEventLoop = EmbeddedEventLoop(), shared: ConnectionSettings? = nil,
            budget: MemoryBudget = .unlimited()
        ) throws {
            var configuration = WebSocketServerConfiguration()
            configure(&configuration)
            self.app = RecordingApplication()
            self.app.delegate.echo = echo
            self.reads = ReadCounter()
            self.channel = EmbeddedChannel(loop: loop)
            let info = WebSocketConnectionInfo(
                requestHead: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/ws"),
                remoteAddress: nil, subprotocol: nil, isCompressed: deflate != nil, eventLoop: loop)
            try self.channel.pipeline.syncOperations.addHandler(self.reads)
            try self.channel.pipeline.syncOperations.addHandler(WebSocketConnectionHandler(
                settings: shared ?? ConnectionSettings(configuration, application: self.app, metrics: WebSocketServerMetrics(), budget: budget),
                deflate: deflate.map(DeflateParameters.init), info: info))
            try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        func feed(_ bytes: [UInt8]) throws {
            try self.channel.writeInbound(ByteBuffer(bytes: bytes))
            self.channel.pipeline.fireChannelReadComplete()
        }

        /// All outbound writes so far, as separate buffers.
        func writes() throws -> [ByteBuffer] {
            var out: [ByteBuffer] = []
            while let buffer = try self.channel.readOutbound(as: ByteBuffer.self) { out.append(buffer) }
            return out
        }

        mutating func frames() throws -> [TestFrames.ServerFrame] {
            for buffer in try self.writes() { self.pending += Array(buffer.readableBytesView) }
            return TestFrames.decode(&self.pending)
        }

        var isOpen: Bool { self.channel.isActive }
    }

    @Test func echoesAndFlushesOncePerReadBurst() throws {
        let harness = try Harness(echo: true)
        try harness.feed(TestFrames.text("one") + TestFrames.text("two") + TestFrames.client(0x2, [1, 2, 3]))
        let writes = try harness.writes()
        #expect(writes.count == 1)  // three frames, one buffer
        var bytes = Array(writes[0].readableBytesView)
        let frames = TestFrames.decode(&bytes)
        #expect(frames.map(\.opcode) == [0x1, 0x1, 0x2])
        #expect(frames.map(\.text) == ["one", "two", "\u{1}\u{2}\u{3}"])
    }

    @Test func reassemblesFragmentsWithAPingInBetween() throws {
        var harness = try Harness()
        try harness.feed(TestFrames.text("Hel", fin: false) + TestFrames.client(0x9, Array("are you there".utf8)))
        try harness.feed(TestFrames.client(0x0, Array("lo, ".utf8), fin: false))
        try harness.feed(TestFrames.client(0x0, Array("wörld".utf8)))
        let frames = try harness.frames()
        #expect(frames == [.init(fin: true, rsv1: false, opcode: 0xA, payload: Array("are you there".utf8))])
        #expect(harness.app.delegate.messages == [.text(ByteBuffer(string: "Hello, wörld"))])
    }

    @Test func aMessageSplitAcrossReadsAtEveryByteArrivesWhole() throws {
        let frame = TestFrames.text("split anywhere ✓") + TestFrames.client(0x2, Array(repeating: 7, count: 300))
        for cut in 1..<frame.count {
            let harness = try Harness()
            try harness.feed(Array(frame[..<cut]))
            try harness.feed(Array(frame[cut...]))
            #expect(harness.app.delegate.messages == [
                .text(ByteBuffer(string: "split anywhere ✓")), .binary(ByteBuffer(repeating: 7, count: 300)),
            ])
        }
    }

    @Test func invalidUTF8ClosesWith1007EvenInsideAFragment() throws {
        var harness = try Harness()
        try harness.feed(TestFrames.client(0x1, [0x41, 0xC0, 0xAF], fin: false))
        #expect(try harness.frames().first?.closeCode == 1007)
        #expect(!harness.isOpen)
        #expect(harness.app.delegate.messages.isEmpty)
        #expect(harness.app.delegate.closedWith == .invalidPayload)
    }

    @Test func textEndingMidSequenceIs1007() throws {
        var harness = try Harness()
        try harness.feed(TestFrames.client(0x1, [0x41, 0xE2, 0x82]))
        #expect(try harness.frames().first?.closeCode == 1007)
    }

    @Test func oversizedMessageAcrossFragmentsIs1009() throws {
        var harness = try Harness(configure: { $0.maxMessageSize = 1000 })
        try harness.feed(TestFrames.client(0x2, Array(repeating: 0, count: 600), fin: false))
        #expect(harness.isOpen)
        try harness.feed(TestFrames.client(0x0, Array(repeating: 0, count: 600)))
        #expect(try harness.frames().first?.closeCode == 1009)
        #expect(!harness.isOpen)
    }

    @Test func protocolViolationsAre1002() throws {
        for bytes in [
            TestFrames.client(0x0, [1]),  // continuation with nothing to continue
            TestFrames.text("a", fin: false) + TestFrames.text("b"),  // new message inside a fragmented one
            TestFrames.client(0x1, [0x41], masked: false),
            TestFrames.close(code: 1005),  // a code that must not appear on the wire
            TestFrames.client(0x8, [0x03]),  // one-byte close payload
        ] {
            var harness = try Harness()
            try harness.feed(bytes)
            #expect(try harness.frames().last?.closeCode == 1002)
            #expect(!harness.isOpen)
        }
    }

    @Test func clientCloseIsEchoedAndTCPClosed() throws {
        var harness = try Harness()
        try harness.feed(TestFrames.close(code: 4001, reason: "bye"))
        let frames = try harness.frames()
        #expect(frames.count == 1 && frames[0].closeCode == 4001)
        #expect(!harness.isOpen)
        #expect(harness.app.delegate.closedWith == WebSocketCloseCode(rawValue: 4001))
        // A close reason that is not UTF-8 is 1007.
        var second = try Harness()
        try second.feed(TestFrames.client(0x8, [0x03, 0xE8, 0xC0, 0xAF]))
        #expect(try second.frames().first?.closeCode == 1007)
    }

    @Test func heartbeatPingsAndDropsASilentPeer() throws {
        var harness = try Harness(configure: {
            $0.heartbeatInterval = .seconds(20)
            $0.heartbeatTimeout = .seconds(10)
        })
        let loop = harness.channel.embeddedEventLoop
        loop.advanceTime(by: .seconds(19))
        #expect(try harness.frames().isEmpty)
        loop.advanceTime(by: .seconds(1))
        #expect(try harness.frames().map(\.opcode) == [0x9])
        // Pong in time: still open, next ping 20 s after the first.
        try harness.feed(TestFrames.client(0xA, []))
        loop.advanceTime(by: .seconds(10))
        #expect(harness.isOpen)
        loop.advanceTime(by: .seconds(10))
        #expect(try harness.frames().map(\.opcode) == [0x9])
        // Silence: dropped 10 s after that ping.
        loop.advanceTime(by: .milliseconds(9_999))
        #expect(harness.isOpen)
        loop.advanceTime(by: .milliseconds(1))
        #expect(!harness.isOpen)
        #expect(harness.app.delegate.closedWith == .abnormalClosure)
    }

    @Test func oneSchedulerServesEveryConnectionOnALoopAndSurvivesRemovals() throws {
        var configuration = WebSocketServerConfiguration()
        configuration.heartbeatInterval = .seconds(20)
        configuration.heartbeatTimeout = .seconds(10)
        let shared = ConnectionSettings(configuration, application: RecordingApplication(), metrics: WebSocketServerMetrics())
        let loop = EmbeddedEventLoop()
        var connections = try (0..<4).map { _ in try Harness(loop: loop, shared: shared) }
        let scheduler = shared.heartbeats.scheduler(for: loop)
        #expect(scheduler.count == 4)
        try connections[1].feed(TestFrames.close(code: 1000))  // leaves: the last one moves into its slot
        #expect(scheduler.count == 3)
        loop.advanceTime(by: .seconds(20))
        for index in [0, 2, 3] { #expect(try connections[index].frames().last?.opcode == 0x9) }
        // Only connection 3 answers; 0 and 2 are dropped at the timeout, 3 stays.
        try connections[3].feed(TestFrames.client(0xA, []))
        loop.advanceTime(by: .seconds(10))
        #expect(!connections[0].isOpen && !connections[2].isOpen && connections[3].isOpen)
        #expect(scheduler.count == 1)
        _ = try connections[3].frames()
        loop.advanceTime(by: .seconds(10))
        #expect(try connections[3].frames().map(\.opcode) == [0x9])
    }

    @Test func anyFrameCountsAsProofOfLife() throws {
        let harness = try Harness(configure: {
            $0.heartbeatInterval = .seconds(20)
            $0.heartbeatTimeout = .seconds(10)
        })
        let loop = harness.channel.embeddedEventLoop
        for _ in 0..<5 {
            loop.advanceTime(by: .seconds(20))
            try harness.feed(TestFrames.text("still here"))
        }
        #expect(harness.isOpen)
    }

    @Test func outboundWaitsWhileNotWritableAndSlowConsumerIsClosedWith1013() throws {
        var harness = try Harness(configure: { $0.maxOutboundBytes = 10_000 })
        let connection = try #require(harness.app.delegate.connection)
        harness.channel.isWritable = false
        harness.channel.pipeline.fireChannelWritabilityChanged()
        #expect(harness.app.delegate.writabilityChanges == 1)
        connection.send(text: ByteBuffer(string: String(repeating: "x", count: 4000)))
        connection.send(text: ByteBuffer(string: String(repeating: "y", count: 4000)))
        #expect(try harness.writes().isEmpty)  // queued, not written
        // Reads are held back while the peer is behind.
        let readsBefore = harness.reads.reads
        harness.channel.read()
        #expect(harness.reads.reads == readsBefore)
        // Writable again: the queue goes out in one write, and the held read is issued.
        harness.channel.isWritable = true
        harness.channel.pipeline.fireChannelWritabilityChanged()
        #expect(try harness.frames().map(\.payload.count) == [4000, 4000])
        #expect(harness.reads.reads == readsBefore + 1)
        // Behind for good: past the bound the connection is closed with 1013.
        harness.channel.isWritable = false
        harness.channel.pipeline.fireChannelWritabilityChanged()
        for _ in 0..<3 { connection.send(text: ByteBuffer(string: String(repeating: "z", count: 4000))) }
        let frames = try harness.frames()
        #expect(frames.map(\.opcode) == [0x8])
        #expect(frames.first?.closeCode == 1013)
        #expect(!harness.isOpen)
        #expect(!connection.isOpen)
    }

    @Test func anUnflushedBatchOverTheBoundIsHandedOverWhileThePeerKeepsUp() throws {
        var harness = try Harness(configure: { $0.maxOutboundBytes = 10_000 })
        let connection = try #require(harness.app.delegate.connection)
        for _ in 0..<3 { connection.write(binary: ByteBuffer(repeating: 1, count: 4000)) }
        // The third write crossed the bound while writable: flushed, not closed.
        #expect(try harness.frames().map(\.payload.count) == [4000, 4000, 4000])
        #expect(harness.isOpen)
    }

    @Test func drainSendsClose1012AndWaitsForThePeer() throws {
        var harness = try Harness(configure: { $0.closeTimeout = .seconds(5) })
        harness.channel.pipeline.triggerUserOutboundEvent(
            WebSocketServerEvent.close(.serviceRestart, reason: "server restarting"), promise: nil)
        let frames = try harness.frames()
        #expect(frames.first?.closeCode == 1012)
        #expect(frames.first.map { String(decoding: $0.payload.dropFirst(2), as: UTF8.self) } == "server restarting")
        #expect(harness.isOpen)
        try harness.feed(TestFrames.close(code: 1012))
        #expect(!harness.isOpen)
        #expect(harness.app.delegate.closedWith == .serviceRestart)
    }

    @Test func drainDropsAPeerThatNeverAnswersAfterTheCloseTimeout() throws {
        var harness = try Harness(configure: { $0.closeTimeout = .seconds(5) })
        harness.channel.pipeline.triggerUserOutboundEvent(WebSocketServerEvent.close(.serviceRestart, reason: ""), promise: nil)
        _ = try harness.frames()
        try harness.feed(TestFrames.text("ignored after close"))
        #expect(harness.app.delegate.messages.isEmpty)
        harness.channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(!harness.isOpen)
    }

    @Test func compressedMessagesAreInflatedAndRepliesDeflated() throws {
        let agreement = PerMessageDeflateNegotiation.negotiate(offers: ["permessage-deflate"], configuration: .init())
        var harness = try Harness(configure: { $0.deflate.minSize = 10 }, deflate: agreement, echo: true)
        let clientCompressor = DeflateCompressor(level: 6, windowBits: 15, memoryLevel: 8)
        let inflater = DeflateDecompressor()
        for text in ["a long enough message, compressed", "a long enough message, compressed again", "short"] {
            var compressed = ByteBuffer()
            clientCompressor.compress(ByteBuffer(string: text), into: &compressed)
            try harness.feed(TestFrames.client(0x1, Array(compressed.readableBytesView), rsv1: true))
            let frame = try #require(try harness.frames().first)
            #expect(frame.rsv1 == (text.utf8.count >= 10))
            var payload = ByteBuffer(bytes: frame.payload)
            if frame.rsv1 {
                payload.writeBytes([0, 0, 0xFF, 0xFF])
                var inflated = ByteBuffer()
                try inflater.inflate(payload, into: &inflated, limit: 1 << 20)
                payload = inflated
            }
            #expect(String(buffer: payload) == text)
        }
    }

    @Test func aZipBombIsClosedWith1009() throws {
        let agreement = PerMessageDeflateNegotiation.negotiate(offers: ["permessage-deflate"], configuration: .init())
        var harness = try Harness(configure: { $0.maxMessageSize = 1 << 20 }, deflate: agreement)
        var bomb = ByteBuffer()
        DeflateCompressor(level: 9, windowBits: 15, memoryLevel: 8).compress(ByteBuffer(repeating: 0x61, count: 64 << 20), into: &bomb)
        try harness.feed(TestFrames.client(0x2, Array(bomb.readableBytesView), rsv1: true))
        #expect(try harness.frames().first?.closeCode == 1009)
        #expect(harness.app.delegate.messages.isEmpty)
    }
}

/// Random and mutated input: the handler must never crash, must end every bad connection with
/// a legal close code, and must keep its buffers bounded.
@Suite struct ConnectionHandlerFuzzTests {
    /// xorshift64*: deterministic, so a failure can be replayed from its seed.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state ^= self.state >> 12
            self.state ^= self.state << 25
            self.state ^= self.state >> 27
            return self.state &* 2_685_821_657_736_338_717
        }
    }

    @Test(arguments: 1...4)
    func mutatedFramesNeverCrashAndCloseWithALegalCode(seed: UInt64) throws {
        var random = SeededGenerator(state: seed &* 0x9E37_79B9_7F4A_7C15 | 1)
        let allowedCodes: Set<UInt16> = [1000, 1002, 1007, 1009, 4000]
        let agreement = PerMessageDeflateNegotiation.negotiate(offers: ["permessage-deflate"], configuration: .init())
        for round in 0..<300 {
            var harness = try ConnectionHandlerTests.Harness(
                configure: { $0.maxMessageSize = 4096; $0.maxFrameSize = 2048 },
                deflate: round % 2 == 0 ? agreement : nil, echo: true)
            // A valid frame, then bytes of it flipped, cut or garbage appended.
            let opcode: UInt8 = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3][Int(random.next() % 7)]
            let payload = (0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            var bytes = TestFrames.client(opcode, payload, fin: random.next() % 4 != 0, rsv1: random.next() % 8 == 0)
            for _ in 0..<Int(random.next() % 4) {
                let index = Int(random.next() % UInt64(bytes.count))
                bytes[index] ^= UInt8(truncatingIfNeeded: random.next() | 1)
            }
            if random.next() % 3 == 0 { bytes += (0..<Int(random.next() % 64)).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
            // Delivered in random pieces.
            var offset = 0
            while offset < bytes.count && harness.isOpen {
                let piece = min(bytes.count - offset, Int(random.next() % 40) + 1)
                try harness.feed(Array(bytes[offset..<offset + piece]))
                offset += piece
            }
            for frame in try harness.frames() where frame.opcode == 0x8 {
                if let code = frame.closeCode {
                    #expect(allowedCodes.contains(code) || WebSocketCloseCode(rawValue: code).isValidOnWire,
                            "seed \(seed) round \(round): close \(code)")
                }
            }
            _ = try? harness.channel.finish()
        }
    }
}

@Suite struct DirectEncodeTests {
    @Test(arguments: [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
    func writeTextEncodesInPlaceWithTheRightHeader(length: Int) throws {
        var harness = try ConnectionHandlerTests.Harness()
        let connection = try #require(harness.app.delegate.connection)
        let payload = String(repeating: "é", count: length / 2) + String(repeating: "a", count: length % 2)
        connection.writeText { $0.writeString(payload) }
        connection.writeText { $0.writeString("next") }
        connection.flush()
        let frames = try harness.frames()
        #expect(frames.map(\.opcode) == [0x1, 0x1])
        #expect(frames.first?.text == payload)
        #expect(frames.last?.text == "next")
    }
}
