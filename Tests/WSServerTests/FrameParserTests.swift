import NIOCore
import Testing
@testable import SluiceTestSupport
@testable import WSServer

@Suite struct FrameParserTests {
    private func parse(_ bytes: [UInt8], maxFrameSize: Int = 1 << 20, deflate: Bool = false) throws(WebSocketProtocolError) -> [WebSocketFrameEvent] {
        var parser = WebSocketFrameParser(maxFrameSize: maxFrameSize, allowsRSV1: deflate)
        var buffer = ByteBuffer(bytes: bytes)
        var events: [WebSocketFrameEvent] = []
        while let event = try parser.next(from: &buffer) { events.append(event) }
        return events
    }

    @Test func unmasksATextFrame() throws {
        let events = try parse(TestFrames.text("Hello, WebSocket!"))
        guard case .data(let header, let chunk, true, true) = events.first else { Issue.record("\(events)"); return }
        #expect(header.opcode == .text && header.fin)
        #expect(String(buffer: chunk) == "Hello, WebSocket!")
    }

    @Test func unmaskIsCorrectForEveryLengthAndOffset() {
        let payload = (0..<67).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let key: UInt32 = 0xA1B2_C3D4
        let keyBytes: [UInt8] = [0xA1, 0xB2, 0xC3, 0xD4]
        for offset in 0..<4 {
            for length in 0..<payload.count {
                var buffer = ByteBuffer(bytes: payload[..<length].enumerated().map { $1 ^ keyBytes[($0 + offset) % 4] })
                WebSocketFrameParser.unmask(&buffer, length: length, key: key, offset: offset)
                #expect(Array(buffer.readableBytesView) == Array(payload[..<length]))
            }
        }
    }

    @Test func streamsPayloadInChunksAsBytesArrive() throws {
        var parser = WebSocketFrameParser(maxFrameSize: 1 << 20, allowsRSV1: false)
        let frame = TestFrames.client(0x2, Array(repeating: 0xAB, count: 300))
        var buffer = ByteBuffer(bytes: frame[..<100])
        var received = 0
        var starts = 0
        while let event = try parser.next(from: &buffer) {
            if case .data(_, let chunk, let start, _) = event { received += chunk.readableBytes; starts += start ? 1 : 0 }
        }
        #expect(received == 100 - 8)  // 4-byte header + 4-byte mask key
        buffer.writeBytes(frame[100...])
        var ended = false
        while let event = try parser.next(from: &buffer) {
            if case .data(_, let chunk, _, let end) = event {
                #expect(chunk.readableBytesView.allSatisfy { $0 == 0xAB })
                received += chunk.readableBytes
                ended = end
            }
        }
        #expect(received == 300 && ended && starts == 1)
    }

    @Test func waitsForAWholeHeader() throws {
        let frame = TestFrames.client(0x2, Array(repeating: 1, count: 70_000))
        for cut in 0..<14 {
            #expect(try parse(Array(frame[..<cut])).isEmpty || cut >= 14)
        }
    }

    @Test(arguments: [
        (TestFrames.client(0x1, [0x41], rsv2: true), "reserved bits"),
        (TestFrames.client(0x3, []), "reserved opcode"),
        (TestFrames.client(0xB, []), "reserved control opcode"),
        (TestFrames.client(0x1, [0x41], masked: false), "unmasked"),
        (TestFrames.client(0x9, Array(repeating: 0, count: 126)), "long control"),
        (TestFrames.client(0x9, [], fin: false), "fragmented control"),
        (TestFrames.client(0x1, [0x41], rsv1: true), "RSV1 without deflate"),
    ])
    func rejectsProtocolViolationsWith1002(frame: [UInt8], what: String) {
        #expect(throws: WebSocketProtocolError.self) { try parse(frame) }
        do { _ = try parse(frame) } catch { #expect(error.closeCode == .protocolError, "\(what)") }
    }

    @Test func rsv1IsAllowedOnlyOnFirstDataFrameWithDeflate() throws {
        _ = try parse(TestFrames.client(0x1, [0x41], rsv1: true), deflate: true)
        do { _ = try parse(TestFrames.client(0x0, [0x41], rsv1: true), deflate: true); Issue.record("accepted") } catch {
            #expect(error.closeCode == .protocolError)
        }
        do { _ = try parse(TestFrames.client(0x9, [], rsv1: true), deflate: true); Issue.record("accepted") } catch {
            #expect(error.closeCode == .protocolError)
        }
    }

    @Test func oversizedFrameIs1009BeforeItsPayloadArrives() {
        // Header only: the announced length alone is enough to refuse.
        let header = Array(TestFrames.client(0x2, [], lengthOverride: 5_000_000)[...])
        do { _ = try parse(header, maxFrameSize: 1_000_000); Issue.record("accepted") } catch {
            #expect(error.closeCode == .messageTooBig)
        }
        let huge = TestFrames.client(0x2, [], lengthOverride: 1 << 63)
        do { _ = try parse(huge); Issue.record("accepted") } catch { #expect(error.closeCode == .protocolError) }
    }
}
