import NIOCore
@testable import Inference

/// `SSEParser` fed an upstream's event stream in arbitrary reads, against a plain reading of the
/// WHATWG event-stream rules over the whole input: the same events, and the size limit enforced
/// (an event over the limit always fails; a failure only where some event or line reaches it).
///
/// Input: [limit] [split seed] stream...
enum SSETarget {
    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let limit = 8 + Int(input.byte()) * 8
        var splitter = Splitter(seed: input.byte())
        let stream = input.rest()

        var parser = SSEParser(maximumEventSize: limit)
        var events: [SSEEvent] = []
        var failed = false
        reads: for piece in splitter.split(stream) {
            parser.append(ByteBuffer(bytes: piece))
            while true {
                do {
                    guard let event = try parser.next() else { break }
                    events.append(event)
                } catch {
                    require(error == .eventTooLarge(limit: limit), "unexpected error \(error)")
                    failed = true
                    break reads
                }
            }
        }
        if failed {
            do {
                _ = try parser.next()
                fatalError("the parser recovered after failing")
            } catch {}
        }

        let reference = ReferenceSSE.parse(stream, limit: limit)
        if failed {
            require(reference.mayFail, "failed where no event or line reaches the limit of \(limit)")
            require(events.count <= reference.events.count && Array(reference.events.prefix(events.count)) == events,
                    "events before the failure differ from the reference")
        } else {
            require(!reference.mustFail, "an event over the limit of \(limit) bytes was accepted")
            require(events == reference.events, "events differ from the reference: \(events) vs \(reference.events)")
        }
        for event in events {
            // Invalid UTF-8 becomes U+FFFD (3 bytes for 1): the bound on the text is three times the limit.
            require(event.data.utf8.count <= 3 * limit && event.type.utf8.count <= 3 * limit, "an event over the limit")
        }
    }
}

/// The WHATWG "event stream interpretation", line by line over the whole stream.
enum ReferenceSSE {
    struct Result {
        var events: [SSEEvent] = []
        /// Some event's fields (data lines + 1 each, the event name) exceed the limit.
        var mustFail = false
        /// Some point where the fields so far plus a line being read exceed the limit.
        var mayFail = false
    }

    static func parse(_ stream: [UInt8], limit: Int) -> Result {
        var bytes = stream[...]
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes = bytes.dropFirst(3) }
        // Lines end at \r\n, \r or \n; the last piece has no line end (never dispatched).
        var lines: [ArraySlice<UInt8>] = []
        var start = bytes.startIndex
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == 0x0A || byte == 0x0D {
                lines.append(bytes[start..<index])
                if byte == 0x0D && index + 1 < bytes.endIndex && bytes[index + 1] == 0x0A { index += 1 }
                start = index + 1
            }
            index += 1
        }
        let unterminated = bytes[start...]

        var result = Result()
        var data: [UInt8] = []
        var type: String?
        var lastID: String?
        var size = 0
        for line in lines {
            if size + line.count > limit { result.mayFail = true }
            if line.isEmpty {
                if !data.isEmpty {
                    let name = type.flatMap { $0.isEmpty ? nil : $0 } ?? "message"
                    result.events.append(SSEEvent(type: name, data: String(decoding: data.dropLast(), as: UTF8.self), id: lastID))
                }
                data = []
                type = nil
                size = 0
                continue
            }
            if line.first == UInt8(ascii: ":") { continue }
            let name: ArraySlice<UInt8>
            var value: ArraySlice<UInt8>
            if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
                name = line[..<colon]
                value = line[(colon + 1)...]
                if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
            } else {
                name = line
                value = []
            }
            switch String(decoding: name, as: UTF8.self) {
            case "data" where name.count == 4:
                size += value.count + 1
                data += value
                data.append(0x0A)
            case "event" where name.count == 5:
                size += value.count
                type = String(decoding: value, as: UTF8.self)
            case "id" where name.count == 2:
                if !value.contains(0) { lastID = String(decoding: value, as: UTF8.self) }
            default:
                break
            }
            if size > limit { result.mustFail = true }
        }
        if size + unterminated.count > limit { result.mayFail = true }
        result.mayFail = result.mayFail || result.mustFail
        return result
    }
}
