import NIOCore
import Testing

@testable import Inference

@Suite struct SSEParserTests {
    /// Comments, multi-line data, names, ids (which carry over), a field with no colon, an
    /// empty data line, `retry`, multi-byte UTF-8 and a BOM; `\n` line ends.
    static let sample = "\u{FEFF}: keep-alive\n"
        + "data: {\"a\":1}\n\n"
        + "event: delta\nid: 7\ndata: first\ndata:second\ndata:  indented\n\n"
        + ": comment between events\nretry: 100\n\n"
        + "data: héllo 🌊 wörld\n\n"
        + "data\n\n"
        + "unknown: field\ndata: after unknown\nid\n\n"
        + "event: end\n\n"
        + "data: [DONE]\n\n"
        + "data: never dispatched, no blank line\n"

    static let expected: [SSEEvent] = [
        SSEEvent(data: #"{"a":1}"#),
        SSEEvent(type: "delta", data: "first\nsecond\n indented", id: "7"),
        SSEEvent(data: "héllo 🌊 wörld", id: "7"),
        SSEEvent(data: "", id: "7"),
        SSEEvent(data: "after unknown", id: ""),
        SSEEvent(data: "[DONE]", id: ""),
    ]

    static func parse(_ pieces: [[UInt8]], limit: Int = 1 << 20) throws -> [SSEEvent] {
        var parser = SSEParser(maximumEventSize: limit)
        var events: [SSEEvent] = []
        for piece in pieces {
            parser.append(ByteBuffer(bytes: piece))
            while let event = try parser.next() { events.append(event) }
        }
        return events
    }

    @Test func parsesWholeStream() throws {
        #expect(try Self.parse([Array(Self.sample.utf8)]) == Self.expected)
    }

    @Test func everySplitGivesTheSameEvents() throws {
        let bytes = Array(Self.sample.utf8)
        for split in 0...bytes.count {
            let events = try Self.parse([Array(bytes[..<split]), Array(bytes[split...])])
            #expect(events == Self.expected, "split at \(split)")
        }
        for first in stride(from: 0, through: bytes.count, by: 7) {
            for second in first...min(first + 9, bytes.count) {
                let events = try Self.parse([Array(bytes[..<first]), Array(bytes[first..<second]), Array(bytes[second...])])
                #expect(events == Self.expected, "splits at \(first), \(second)")
            }
        }
        #expect(try Self.parse(bytes.map { [$0] }) == Self.expected)
    }

    @Test(arguments: ["\r\n", "\r", "\n"])
    func lineEndings(_ ending: String) throws {
        let text = Self.sample.replacingOccurrences(of: "\n", with: ending)
        let bytes = Array(text.utf8)
        #expect(try Self.parse([bytes]) == Self.expected)
        #expect(try Self.parse(bytes.map { [$0] }) == Self.expected)
        for split in 0...bytes.count {
            #expect(try Self.parse([Array(bytes[..<split]), Array(bytes[split...])]) == Self.expected, "split at \(split)")
        }
    }

    @Test func mixedLineEndingsAndBlankLines() throws {
        // CR then LF in the next read is one line end, not two (which would dispatch early).
        let events = try Self.parse([Array("data: a\r".utf8), Array("\ndata: b\r\n\r\n\n\n".utf8), Array("data: c\r\r".utf8)])
        #expect(events == [SSEEvent(data: "a\nb"), SSEEvent(data: "c")])
    }

    @Test func commentsAloneDispatchNothing() throws {
        #expect(try Self.parse([Array(": ping\n\n: ping\r\n\r\n:\n\n".utf8)]).isEmpty)
    }

    @Test func oversizedEventFails() {
        // Many data lines adding up.
        let lines = String(repeating: "data: 0123456789\n", count: 10) + "\n"
        #expect(throws: SSEParserError.eventTooLarge(limit: 64)) { try Self.parse([Array(lines.utf8)], limit: 64) }
        // One line that never ends, fed in small pieces: fails as soon as it is too long.
        var parser = SSEParser(maximumEventSize: 64)
        var thrown: SSEParserError?
        var fed = 0
        while thrown == nil && fed < 10_000 {
            parser.append(ByteBuffer(string: fed == 0 ? "data: " : "xxxxxxxx"))
            fed += 1
            do { _ = try parser.next() } catch { thrown = error }
        }
        #expect(thrown == .eventTooLarge(limit: 64))
        #expect(fed < 12)
        // And it stays failed.
        #expect(throws: SSEParserError.self) { try parser.next() }
    }

    @Test func longLineInManyReads() throws {
        let payload = String(repeating: "0123456789", count: 1000)
        let bytes = Array("data: \(payload)\r\ndata: tail\r\n\r\n".utf8)
        let pieces = stride(from: 0, to: bytes.count, by: 100).map { Array(bytes[$0..<min($0 + 100, bytes.count)]) }
        #expect(try Self.parse(pieces, limit: 20_000) == [SSEEvent(data: payload + "\ntail")])
    }

    @Test func sizeBoundIsPerEvent() throws {
        let stream = String(repeating: "data: 0123456789012345678901234567890123456789\n\n", count: 100)
        let events = try Self.parse([Array(stream.utf8)], limit: 64)
        #expect(events.count == 100)
    }
}
