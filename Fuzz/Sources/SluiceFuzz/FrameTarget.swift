import CZlib
import NIOCore
@testable import WSServer

/// `WebSocketFrameParser` fed a client's byte stream in arbitrary reads, checked against a
/// reference header decoder and byte-at-a-time unmasking; data frames are assembled into messages
/// with the connection handler's rules, text checked with `UTF8Validator` against Swift's own
/// decoding, compressed messages inflated with `DeflateDecompressor` against zlib fed in one piece.
///
/// Input: [options] [split seed] [inflate limit] stream...
/// options bit 0: RSV1 allowed (deflate agreed); bits 1-2: max frame size; bit 3: client resets
/// its context after every message.
enum FrameTarget {
    static let frameSizes = [125, 1000, 1 << 16, 1 << 20]

    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let options = input.byte()
        var splitter = Splitter(seed: input.byte())
        let inflateLimit = Int(input.byte()) * 64
        let allowsRSV1 = options & 1 != 0
        let maxFrameSize = Self.frameSizes[Int(options >> 1) & 3]
        let resetsContext = options & 8 != 0
        let stream = input.rest()

        var parser = WebSocketFrameParser(maxFrameSize: maxFrameSize, allowsRSV1: allowsRSV1)
        var messages = MessageChecker(inflateLimit: inflateLimit, resetsContext: resetsContext)
        var buffer = ByteBuffer()
        var fed = 0
        var atHeader = true
        var frame: (header: WebSocketFrameHeader, key: [UInt8], received: Int)?

        reads: for piece in splitter.split(stream) {
            buffer.writeBytes(piece)
            fed += piece.count
            while true {
                let consumed = buffer.readerIndex  // stream offset of the first unread byte
                // A header and a whole control frame fit in 14 + 125 bytes: the reference needs no more.
                let reference = atHeader
                    ? ReferenceHeader.decode(stream[consumed..<min(fed, consumed + 139)], allowsRSV1: allowsRSV1, maxFrameSize: maxFrameSize)
                    : nil
                let event: WebSocketFrameEvent?
                do {
                    event = try parser.next(from: &buffer)
                } catch {
                    guard case .invalid(let code)? = reference else {
                        fatalError("parser threw \(error) where the reference decoder says \(String(describing: reference))")
                    }
                    require(error.closeCode == code, "close code \(error.closeCode) for an error the reference maps to \(code)")
                    break reads
                }
                require(buffer.readerIndex <= fed, "parser consumed bytes it was not given")
                guard let event else {
                    if let reference {
                        require(reference == .incomplete, "parser waits where the reference decoder says \(reference)")
                    }
                    require(buffer.readerIndex == consumed, "parser consumed bytes without producing an event")
                    break
                }
                switch event {
                case .control(let opcode, let payload):
                    guard case .frame(let fin, let rsv1, let rawOpcode, let length, let key, let headerLength)? = reference else {
                        fatalError("control frame where the reference decoder says \(String(describing: reference))")
                    }
                    require(fin && !rsv1 && opcode.rawValue == rawOpcode && opcode.isControl, "control frame header differs")
                    require(payload.readableBytes == length && length <= 125, "control payload of \(payload.readableBytes) bytes, header says \(length)")
                    let start = consumed + headerLength
                    require(buffer.readerIndex == start + length, "control frame consumed the wrong number of bytes")
                    require(Array(payload.readableBytesView) == ReferenceHeader.unmask(stream[start..<start + length], key: key, offset: 0),
                            "control payload unmasked wrongly")
                    if opcode == .close {
                        // The handler's close-payload rules must not trap either.
                        _ = try? WebSocketConnectionHandler.parseClosePayload(payload)
                    }
                case .data(let header, let chunk, let isFrameStart, let isFrameEnd):
                    var payloadStart = consumed
                    if isFrameStart {
                        guard case .frame(let fin, let rsv1, let rawOpcode, let length, let key, let headerLength)? = reference else {
                            fatalError("data frame where the reference decoder says \(String(describing: reference))")
                        }
                        require(header.fin == fin && header.rsv1 == rsv1 && header.opcode.rawValue == rawOpcode
                                && header.payloadLength == length, "data frame header differs from the reference: \(header)")
                        require(length <= maxFrameSize, "frame over the size limit accepted")
                        frame = (header, key, 0)
                        payloadStart += headerLength
                    } else {
                        require(!atHeader, "continuation chunk where a header was expected")
                        require(chunk.readableBytes > 0, "empty chunk in the middle of a frame")
                    }
                    guard var current = frame else { fatalError("chunk without a frame") }
                    require(header == current.header, "chunk of a frame changed its header")
                    let count = chunk.readableBytes
                    require(current.received + count <= header.payloadLength, "more payload than the header announced")
                    require(buffer.readerIndex == payloadStart + count, "chunk and consumed bytes disagree")
                    let expected = ReferenceHeader.unmask(stream[payloadStart..<payloadStart + count], key: current.key, offset: current.received)
                    require(Array(chunk.readableBytesView) == expected, "payload unmasked wrongly")
                    current.received += count
                    frame = current
                    require(isFrameEnd == (current.received == header.payloadLength), "frame end reported wrongly")
                    atHeader = isFrameEnd
                    if !messages.take(header: header, chunk: expected, isFrameStart: isFrameStart, isFrameEnd: isFrameEnd) {
                        break reads
                    }
                }
            }
        }
    }
}

/// The frame header rules of RFC 6455 §5.2 for client frames, written out plainly, in the order
/// the parser applies them (so "needs more bytes" and "invalid" agree).
enum ReferenceHeader: Equatable {
    case incomplete
    case invalid(WebSocketCloseCode)
    case frame(fin: Bool, rsv1: Bool, opcode: UInt8, length: Int, key: [UInt8], headerLength: Int)

    static func decode(_ bytes: ArraySlice<UInt8>, allowsRSV1: Bool, maxFrameSize: Int) -> Self {
        let b = Array(bytes)
        guard b.count >= 2 else { return .incomplete }
        let fin = b[0] & 0x80 != 0
        let rsv1 = b[0] & 0x40 != 0
        if b[0] & 0x30 != 0 { return .invalid(.protocolError) }
        let opcode = b[0] & 0x0F
        guard [0, 1, 2, 8, 9, 10].contains(opcode) else { return .invalid(.protocolError) }
        let isControl = opcode >= 8
        if rsv1 && (!allowsRSV1 || isControl || opcode == 0) { return .invalid(.protocolError) }
        if b[1] & 0x80 == 0 { return .invalid(.protocolError) }
        var length = UInt64(b[1] & 0x7F)
        var headerLength = 2
        if length == 126 {
            guard b.count >= 4 else { return .incomplete }
            length = UInt64(b[2]) << 8 | UInt64(b[3])
            headerLength = 4
        } else if length == 127 {
            guard b.count >= 10 else { return .incomplete }
            length = b[2..<10].reduce(0) { $0 << 8 | UInt64($1) }
            if length >> 63 != 0 { return .invalid(.protocolError) }
            headerLength = 10
        }
        if isControl {
            if !fin || length > 125 { return .invalid(.protocolError) }
        } else if length > UInt64(maxFrameSize) {
            return .invalid(.messageTooBig)
        }
        guard b.count >= headerLength + 4 else { return .incomplete }
        let key = Array(b[headerLength..<headerLength + 4])
        if isControl && b.count < headerLength + 4 + Int(length) { return .incomplete }
        return .frame(fin: fin, rsv1: rsv1, opcode: opcode, length: Int(length), key: key, headerLength: headerLength + 4)
    }

    /// Byte `i` of the payload XOR key byte `(offset + i) % 4`.
    static func unmask(_ bytes: ArraySlice<UInt8>, key: [UInt8], offset: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in byte ^ key[(offset + index) % 4] }
    }
}

/// Message assembly as `WebSocketConnectionHandler` does it (continuation rules, UTF-8 across
/// frames, inflate per chunk), with each result checked against a whole-message reference.
struct MessageChecker {
    let inflateLimit: Int
    let resetsContext: Bool
    private var opcode: WebSocketOpcode?
    private var compressed = false
    /// The message's payload as it arrived (compressed bytes for a compressed message).
    private var raw: [UInt8] = []
    private var inflated = ByteBuffer()
    private var validator = UTF8Validator()
    private var utf8Failed = false
    private let decompressor = DeflateDecompressor()
    private let reference = ReferenceInflater()

    init(inflateLimit: Int, resetsContext: Bool) {
        self.inflateLimit = inflateLimit
        self.resetsContext = resetsContext
    }

    /// False when the connection would close here (protocol error, bad data).
    mutating func take(header: WebSocketFrameHeader, chunk: [UInt8], isFrameStart: Bool, isFrameEnd: Bool) -> Bool {
        if isFrameStart {
            if header.opcode == .continuation {
                guard self.opcode != nil else { return false }
            } else {
                guard self.opcode == nil else { return false }
                self.opcode = header.opcode
                self.compressed = header.rsv1
                self.raw = []
                self.inflated = ByteBuffer()
                self.validator = UTF8Validator()
                self.utf8Failed = false
            }
        }
        self.raw += chunk
        let isText = self.opcode == .text
        if self.compressed {
            let before = self.inflated.writerIndex
            do {
                try self.decompressor.inflate(ByteBuffer(bytes: chunk), into: &self.inflated, limit: self.inflateLimit)
            } catch {
                self.checkInflateFailure(error, input: self.raw)
                return false
            }
            require(self.inflated.readableBytes <= self.inflateLimit, "inflate went past its limit without failing")
            if isText && !self.validateInflated(from: before) { return false }
        } else if isText {
            if !chunk.withUnsafeBytes({ self.validator.validate($0) }) {
                self.checkUTF8Failure(prefix: self.raw)
                return false
            }
        }
        guard isFrameEnd && header.fin else { return true }
        return self.endMessage()
    }

    private mutating func endMessage() -> Bool {
        let isText = self.opcode == .text
        self.opcode = nil
        var message = self.raw
        if self.compressed {
            let before = self.inflated.writerIndex
            do {
                try self.decompressor.inflate(ByteBuffer(bytes: [0, 0, 0xFF, 0xFF]), into: &self.inflated, limit: self.inflateLimit)
            } catch {
                self.checkInflateFailure(error, input: self.raw + [0, 0, 0xFF, 0xFF])
                return false
            }
            if isText && !self.validateInflated(from: before) { return false }
            message = Array(self.inflated.readableBytesView)
            switch self.reference.inflate(self.raw + [0, 0, 0xFF, 0xFF], limit: self.inflateLimit) {
            case .ok(let expected):
                require(message == expected, "inflated \(message.count) bytes differ from zlib's \(expected.count)")
            case let other:
                fatalError("inflate succeeded where zlib in one piece says \(other)")
            }
            if self.resetsContext {
                self.decompressor.release()
                self.reference.reset()
            }
        }
        let valid = String(validating: message, as: UTF8.self) != nil
        if isText {
            require(valid == self.validator.isAtBoundary,
                    "validator says \(self.validator.isAtBoundary ? "complete" : "cut short"), Swift says \(valid ? "valid" : "invalid")")
            return valid
        }
        return true
    }

    private mutating func validateInflated(from offset: Int) -> Bool {
        let valid = self.inflated.withUnsafeReadableBytes { bytes in
            self.validator.validate(UnsafeRawBufferPointer(rebasing: bytes[(offset - self.inflated.readerIndex)...]))
        }
        if !valid { self.checkUTF8Failure(prefix: Array(self.inflated.readableBytesView)) }
        return valid
    }

    /// The validator said no: the bytes so far must not begin any valid UTF-8 text.
    private func checkUTF8Failure(prefix: [UInt8]) {
        require(!UTF8Target.isValidPrefix(prefix[...]), "validator refused \(prefix.count) bytes that begin valid UTF-8")
    }

    private func checkInflateFailure(_ error: DeflateDecompressor.InflateError, input: [UInt8]) {
        let outcome = self.reference.inflate(input, limit: self.inflateLimit)
        switch (error, outcome) {
        case (.tooLarge, .tooLarge), (.corrupt, .corrupt): break
        default: fatalError("inflate failed with \(error) where zlib in one piece says \(outcome)")
        }
    }
}

/// zlib's inflate given a whole message at once and one output buffer of `limit + 1` bytes:
/// the reference for `DeflateDecompressor`, which gets the message in pieces.
final class ReferenceInflater {
    enum Outcome: Equatable {
        case ok([UInt8])
        case tooLarge
        case corrupt
    }

    /// The stream as of the last completed message (context takeover), as compressed bytes
    /// replayed into a fresh stream: each call inflates `history + message` and drops the
    /// history's output, so the reference has no state that could hide a bug in the real one.
    private var history: [UInt8] = []
    private var historyOutput = 0

    func reset() {
        self.history = []
        self.historyOutput = 0
    }

    func inflate(_ message: [UInt8], limit: Int) -> Outcome {
        let input = self.history + message
        var output = [UInt8](repeating: 0, count: self.historyOutput + limit + 1)
        var stream = z_stream()
        guard sluice_inflateInit2(&stream, -15) == Z_OK else { fatalError("inflateInit2") }
        defer { inflateEnd(&stream) }
        var produced = 0
        var consumed = 0
        var outcome: Outcome?
        input.withUnsafeBufferPointer { inputBytes in
            output.withUnsafeMutableBufferPointer { outputBytes in
                while outcome == nil {
                    stream.next_in = UnsafeMutablePointer(mutating: inputBytes.baseAddress! + consumed)
                    stream.avail_in = uInt(input.count - consumed)
                    stream.next_out = outputBytes.baseAddress! + produced
                    stream.avail_out = uInt(outputBytes.count - produced)
                    let status = CZlib.inflate(&stream, Z_SYNC_FLUSH)
                    let progress = (input.count - consumed - Int(stream.avail_in)) + (outputBytes.count - produced - Int(stream.avail_out))
                    consumed = input.count - Int(stream.avail_in)
                    produced = outputBytes.count - Int(stream.avail_out)
                    if produced - self.historyOutput > limit {
                        outcome = .tooLarge
                        break
                    }
                    switch status {
                    case Z_STREAM_END:
                        inflateReset(&stream)
                        if consumed == input.count { outcome = .ok([]) }
                    case Z_OK, Z_BUF_ERROR:
                        if consumed == input.count || progress == 0 { outcome = .ok([]) }
                    default:
                        outcome = .corrupt
                    }
                }
            }
        }
        guard case .ok = outcome else { return outcome! }
        let result = Array(output[self.historyOutput..<produced])
        self.history = input
        self.historyOutput = produced
        return .ok(result)
    }
}
