import NIOCore

/// One Server-Sent Event, as the WHATWG "event stream interpretation" dispatches it.
struct SSEEvent: Equatable, Sendable {
    /// The `event:` field; "message" when the event named none.
    var type: String
    /// The `data:` lines, joined with "\n".
    var data: String
    /// The last `id:` seen on the stream (it carries over to later events, as the spec says); nil if none.
    var id: String?

    init(type: String = "message", data: String, id: String? = nil) {
        self.type = type
        self.data = data
        self.id = id
    }
}

enum SSEParserError: Error, Equatable {
    /// One event (its fields, or a line still being read) grew beyond the limit.
    case eventTooLarge(limit: Int)
}

/// An incremental `text/event-stream` parser with no I/O: `append` bytes as they arrive (split
/// anywhere: mid-line, mid-UTF-8, between `\r` and `\n`), then call `next()` until it returns nil.
///
/// Follows the WHATWG grammar: lines end with `\r\n`, `\n` or `\r`; a line starting with `:` is a
/// comment; `field: value` loses one leading space of the value; `data` lines are joined with
/// `\n`; an event is dispatched only at a blank line, and only if it had data; a partial event at
/// the end of the stream is dropped. Bytes are kept until an event is complete, so UTF-8 split
/// across reads decodes whole; invalid UTF-8 becomes U+FFFD, as the spec's decoder does.
struct SSEParser {
    /// The most bytes one event may hold (data, event name, and a line not yet complete).
    let maximumEventSize: Int

    /// Bytes not parsed yet; at most one partial line is left between reads.
    private var buffer = ByteBuffer()
    /// How many of the readable bytes are known to hold no line end: a long line arriving in
    /// many reads is scanned once, not once per read.
    private var scanned = 0
    private var data: [UInt8] = []
    private var type: String?
    private var lastEventID: String?
    private var eventSize = 0
    /// The last line ended with `\r`: a `\n` that follows (perhaps in the next read) belongs to it.
    private var skipLineFeed = false
    /// A UTF-8 byte order mark may open the stream, and is dropped.
    private var atStreamStart = true
    private var failure: SSEParserError?

    init(maximumEventSize: Int = 1 << 20) {
        self.maximumEventSize = maximumEventSize
    }

    mutating func append(_ bytes: ByteBuffer) {
        if self.buffer.readableBytes == 0 {
            // The common case (reads end at event boundaries): adopt the buffer, no copy.
            self.buffer = bytes
        } else {
            self.buffer.discardReadBytes()
            self.buffer.writeImmutableBuffer(bytes)
        }
    }

    /// The next complete event, or nil when more bytes are needed. Once it throws, it keeps throwing.
    mutating func next() throws(SSEParserError) -> SSEEvent? {
        if let failure = self.failure { throw failure }
        while true {
            if self.atStreamStart {
                guard self.skipByteOrderMark() else { return nil }
            }
            if self.skipLineFeed, let first = self.buffer.readableBytesView.first {
                self.skipLineFeed = false
                if first == .lineFeed { self.buffer.moveReaderIndex(forwardBy: 1) }
            }
            let view = self.buffer.readableBytesView
            let unscanned = view[(view.startIndex + self.scanned)...]
            guard let end = unscanned.firstIndex(where: { $0 == .lineFeed || $0 == .carriageReturn }) else {
                // No complete line: what is buffered still counts towards the event's bound.
                if self.eventSize + view.count > self.maximumEventSize {
                    throw self.fail()
                }
                self.scanned = view.count
                return nil
            }
            self.scanned = 0
            let line = view[view.startIndex..<end]
            self.skipLineFeed = view[end] == .carriageReturn
            self.buffer.moveReaderIndex(forwardBy: line.count + 1)
            if let event = try self.process(line) {
                return event
            }
        }
    }

    /// Drops a leading BOM; false while too few bytes have arrived to tell.
    private mutating func skipByteOrderMark() -> Bool {
        let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
        let view = self.buffer.readableBytesView
        let prefix = view.prefix(3)
        if prefix.count < 3 && prefix.elementsEqual(bom.prefix(prefix.count)) { return false }
        self.atStreamStart = false
        if prefix.elementsEqual(bom) { self.buffer.moveReaderIndex(forwardBy: 3) }
        return true
    }

    private mutating func process(_ line: ByteBufferView) throws(SSEParserError) -> SSEEvent? {
        guard let first = line.first else { return self.dispatch() }
        if first == .colon { return nil }  // comment, e.g. ": keep-alive"
        let name: ByteBufferView
        var value: ByteBufferView
        if let colon = line.firstIndex(of: .colon) {
            name = line[line.startIndex..<colon]
            value = line[line.index(after: colon)..<line.endIndex]
            if value.first == .space { value = value.dropFirst() }
        } else {
            name = line
            value = line[line.endIndex..<line.endIndex]
        }
        if name.elementsEqual("data".utf8) {
            self.eventSize += value.count + 1
            guard self.eventSize <= self.maximumEventSize else { throw self.fail() }
            self.data.append(contentsOf: value)
            self.data.append(.lineFeed)
        } else if name.elementsEqual("event".utf8) {
            self.eventSize += value.count
            guard self.eventSize <= self.maximumEventSize else { throw self.fail() }
            self.type = String(decoding: value, as: UTF8.self)
        } else if name.elementsEqual("id".utf8) {
            if !value.contains(0) { self.lastEventID = String(decoding: value, as: UTF8.self) }
        }
        // `retry` and unknown fields are ignored: nothing here reconnects.
        return nil
    }

    private mutating func dispatch() -> SSEEvent? {
        defer {
            self.data.removeAll(keepingCapacity: true)
            self.type = nil
            self.eventSize = 0
        }
        guard !self.data.isEmpty else { return nil }
        let type = self.type.flatMap { $0.isEmpty ? nil : $0 } ?? "message"
        let data = String(decoding: self.data.dropLast(), as: UTF8.self)
        return SSEEvent(type: type, data: data, id: self.lastEventID)
    }

    private mutating func fail() -> SSEParserError {
        let error = SSEParserError.eventTooLarge(limit: self.maximumEventSize)
        self.failure = error
        self.buffer.clear()
        self.data = []
        return error
    }
}

extension UInt8 {
    fileprivate static let lineFeed = UInt8(ascii: "\n")
    fileprivate static let carriageReturn = UInt8(ascii: "\r")
    fileprivate static let colon = UInt8(ascii: ":")
    fileprivate static let space = UInt8(ascii: " ")
}
