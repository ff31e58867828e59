import NIOCore
import NIOEmbedded
import Testing
@testable import SluiceTestSupport
@testable import WSServer

/// The WebSocket handler against the process-wide memory budget: messages assembled in a buffer
/// of their own and bytes queued for a slow reader are charged, and Close 1013 answers a budget
/// that has no room, before the bytes are held.
@Suite struct WebSocketBudgetTests {
    typealias Harness = ConnectionHandlerTests.Harness

    static func harness(
        budget: MemoryBudget, deflate: Bool = false, configure: (inout WebSocketServerConfiguration) -> Void = { _ in }
    ) throws -> Harness {
        let agreement = deflate ? PerMessageDeflateNegotiation.negotiate(offers: ["permessage-deflate"], configuration: .init()) : nil
        return try Harness(configure: configure, deflate: agreement, budget: budget)
    }

    @Test func aFrameTheBudgetCannotHoldIsRefusedAtItsHeader() throws {
        let budget = MemoryBudget(limit: 100_000)
        var holder = try Self.harness(budget: budget)
        // The first client announces 60,000 bytes and sends a little: all 60,000 are reserved
        // (the buffer's whole capacity, in fact).
        let first = TestFrames.client(0x2, Array(repeating: 1, count: 60_000))
        try holder.feed(Array(first[..<1000]))
        let held = budget.used(by: .webSocketInbound)
        #expect(held >= 60_000 && held <= 65_536)
        // The second announces 60,000 too: refused with 1013 before any of its payload arrives.
        var refused = try Self.harness(budget: budget)
        let second = TestFrames.client(0x2, Array(repeating: 2, count: 60_000))
        try refused.feed(Array(second[..<14]))
        #expect(try refused.frames().first?.closeCode == 1013)
        #expect(!refused.isOpen)
        #expect(budget.used == held)
        // The first completes; its bytes go back once the application has the message.
        try holder.feed(Array(first[1000...]))
        #expect(holder.app.delegate.messages.count == 1)
        #expect(budget.used == 0)
        #expect(try holder.frames().isEmpty)
        #expect(holder.isOpen)
    }

    @Test func aFragmentedMessageReservesEachFrameAsItBegins() throws {
        let budget = MemoryBudget(limit: 1500)
        var harness = try Self.harness(budget: budget)
        try harness.feed(TestFrames.client(0x1, Array(repeating: 0x61, count: 600), fin: false))
        #expect(harness.isOpen)
        #expect(budget.used >= 600)
        // The next fragment's header alone: it does not fit beside the first.
        let next = TestFrames.client(0x0, Array(repeating: 0x61, count: 1000))
        try harness.feed(Array(next[..<8]))
        #expect(try harness.frames().first?.closeCode == 1013)
        #expect(budget.used == 0)
        #expect(harness.app.delegate.closedWith == .tryAgainLater)
    }

    @Test func aMessageWholeInOneReadIsASliceAndIsNotCharged() throws {
        // Even with no budget at all: a small message costs nothing but the read buffer.
        let harness = try Self.harness(budget: MemoryBudget(limit: 0))
        try harness.feed(TestFrames.text("hello"))
        #expect(harness.app.delegate.messages == [.text(ByteBuffer(string: "hello"))])
        #expect(harness.isOpen)
    }

    @Test func aCompressedMessageReservesAsItInflates() throws {
        let budget = MemoryBudget(limit: 64 * 1024)
        var harness = try Self.harness(budget: budget, deflate: true, configure: { $0.maxMessageSize = 16 << 20 })
        var compressed = ByteBuffer()
        DeflateCompressor(level: 9, windowBits: 15, memoryLevel: 8).compress(ByteBuffer(repeating: 0x61, count: 1 << 20), into: &compressed)
        #expect(compressed.readableBytes < 4096)
        try harness.feed(TestFrames.client(0x2, Array(compressed.readableBytesView), rsv1: true))
        // Within max_message_size, but not within the budget: 1013, not 1009.
        #expect(try harness.frames().first?.closeCode == 1013)
        #expect(budget.used == 0)
        #expect(harness.app.delegate.messages.isEmpty)
        // The same message fits a larger budget.
        let roomy = MemoryBudget(limit: 4 << 20)
        let fits = try Self.harness(budget: roomy, deflate: true, configure: { $0.maxMessageSize = 16 << 20 })
        try fits.feed(TestFrames.client(0x2, Array(compressed.readableBytesView), rsv1: true))
        #expect(fits.app.delegate.messages == [.binary(ByteBuffer(repeating: 0x61, count: 1 << 20))])
        // What stays is zlib's state, kept for the next message (context takeover).
        #expect(roomy.used == DeflateDecompressor.stateBytes && roomy.used(by: .compression) == roomy.used)
    }

    /// zlib's state is memory held for a client too (about 300 KiB to compress): it is charged,
    /// and when the budget cannot hold it the message simply goes uncompressed.
    @Test func outboundCompressionStateIsChargedAndWithoutRoomMessagesGoUncompressed() throws {
        let payload = ByteBuffer(repeating: 0x62, count: 4096)
        let stateBytes = DeflateCompressor.stateBytes(windowBits: 15, memoryLevel: 8)
        #expect(stateBytes == (1 << 17) + (1 << 17) + 6 * 1024)
        let roomy = MemoryBudget(limit: 1 << 20)
        var compressing = try Self.harness(budget: roomy, deflate: true)
        try #require(compressing.app.delegate.connection).send(binary: payload)
        #expect(try compressing.frames().map(\.rsv1) == [true])
        #expect(roomy.used(by: .compression) == stateBytes)
        compressing.channel.pipeline.fireChannelInactive()
        #expect(roomy.used == 0, "the state's charge outlived the connection")

        let tight = MemoryBudget(limit: stateBytes - 1)
        var plain = try Self.harness(budget: tight, deflate: true)
        try #require(plain.app.delegate.connection).send(binary: payload)
        let frames = try plain.frames()
        #expect(frames.map(\.rsv1) == [false] && frames.first?.payload == Array(payload.readableBytesView))
        #expect(tight.used == 0 && plain.isOpen)
    }

    @Test func inflateStateTheBudgetCannotHoldIsRefusedWith1013() throws {
        var compressed = ByteBuffer()
        DeflateCompressor(level: 6, windowBits: 15, memoryLevel: 8).compress(ByteBuffer(string: "hello"), into: &compressed)
        let tight = MemoryBudget(limit: DeflateDecompressor.stateBytes - 1)
        var harness = try Self.harness(budget: tight, deflate: true)
        try harness.feed(TestFrames.client(0x1, Array(compressed.readableBytesView), rsv1: true))
        #expect(try harness.frames().first?.closeCode == 1013)
        #expect(tight.used == 0 && harness.app.delegate.messages.isEmpty)
    }

    @Test func bytesQueuedForASlowReaderAreChargedAndOverTheBudgetClose1013() throws {
        let budget = MemoryBudget(limit: 20_000)
        var harness = try Self.harness(budget: budget, configure: { $0.maxOutboundBytes = 1 << 20 })
        let connection = try #require(harness.app.delegate.connection)
        // Sent while the peer keeps up: handed over at once, nothing charged.
        connection.send(binary: ByteBuffer(repeating: 1, count: 8000))
        #expect(budget.used == 0)
        #expect(try harness.frames().count == 1)
        harness.channel.isWritable = false
        harness.channel.pipeline.fireChannelWritabilityChanged()
        connection.send(binary: ByteBuffer(repeating: 2, count: 8000))
        #expect(budget.used(by: .webSocketOutbound) > 0)
        #expect(harness.isOpen)
        // The reader catches up: the queue goes out and its charge back.
        harness.channel.isWritable = true
        harness.channel.pipeline.fireChannelWritabilityChanged()
        #expect(try harness.frames().map(\.payload.count) == [8000])
        #expect(budget.used == 0)
        // Behind again, and the queue outgrows the budget (well under max_outbound_bytes): 1013.
        harness.channel.isWritable = false
        harness.channel.pipeline.fireChannelWritabilityChanged()
        for _ in 0..<4 { connection.send(binary: ByteBuffer(repeating: 3, count: 8000)) }
        #expect(try harness.frames().map(\.closeCode) == [1013])
        #expect(!harness.isOpen)
        #expect(budget.used == 0)
    }

    @Test func retainedBytesAreReclaimedBeforeAMessageIsRefused() throws {
        let budget = MemoryBudget(limit: 50_000)
        // Stands in for GenerationHub's retained answers: it gives back what it is asked for.
        #expect(budget.reserve(45_000, for: .retainedGeneration))
        budget.addReclaimer { wanted in
            let freed = min(wanted, budget.used(by: .retainedGeneration))
            budget.release(freed, for: .retainedGeneration)
            return freed
        }
        let harness = try Self.harness(budget: budget)
        let frame = TestFrames.client(0x2, Array(repeating: 7, count: 30_000))
        try harness.feed(Array(frame[..<100]))
        #expect(harness.isOpen)
        #expect(budget.used(by: .retainedGeneration) <= 20_000)
        try harness.feed(Array(frame[100...]))
        #expect(harness.app.delegate.messages.count == 1)
    }
}
