import NIOCore

/// What the parser yields. Data frames arrive as payload chunks as soon as bytes are there
/// (so a long frame streams through, and UTF-8 can fail fast inside it); control frames
/// arrive whole (they are at most 125 bytes).
public enum WebSocketFrameEvent: Equatable {
    /// A chunk of a data frame's payload, already unmasked. `isFrameStart` marks the first
    /// chunk of a frame (it carries the frame's opcode, FIN and RSV1 bits), `isFrameEnd` the last.
    case data(header: WebSocketFrameHeader, chunk: ByteBuffer, isFrameStart: Bool, isFrameEnd: Bool)
    /// A whole control frame, unmasked.
    case control(opcode: WebSocketOpcode, payload: ByteBuffer)
}

public struct WebSocketFrameHeader: Equatable, Sendable {
    public var fin: Bool
    public var rsv1: Bool
    public var opcode: WebSocketOpcode
    public var payloadLength: Int
}

/// A protocol violation found while parsing or assembling frames, with the close code it maps to.
public struct WebSocketProtocolError: Error, Equatable, CustomStringConvertible {
    public var closeCode: WebSocketCloseCode
    public var reason: String
    public init(_ closeCode: WebSocketCloseCode, _ reason: String) {
        self.closeCode = closeCode
        self.reason = reason
    }
    public var description: String { "\(self.closeCode.rawValue): \(self.reason)" }
}

/// RFC 6455 §5.2 frame parser for frames sent by a client: masking required, reserved bits
/// and opcodes rejected, sizes bounded. A plain struct: feed it bytes, take events out.
public struct WebSocketFrameParser {
    private enum State {
        case header
        case payload(header: WebSocketFrameHeader, remaining: Int, maskKey: UInt32, maskOffset: Int)
    }

    private var state: State = .header
    /// Largest frame payload accepted.
    public var maxFrameSize: Int
    /// Whether RSV1 is legal (permessage-deflate negotiated).
    public var allowsRSV1: Bool

    public init(maxFrameSize: Int, allowsRSV1: Bool) {
        self.maxFrameSize = maxFrameSize
        self.allowsRSV1 = allowsRSV1
    }

    /// Parses the next event out of `buffer`, unmasking payload bytes in place. Returns nil
    /// when more bytes are needed; consumed bytes are read from `buffer`.
    public mutating func next(from buffer: inout ByteBuffer) throws(WebSocketProtocolError) -> WebSocketFrameEvent? {
        switch self.state {
        case .header:
            guard let (header, maskKey, headerLength) = try self.parseHeader(buffer) else { return nil }
            if header.opcode.isControl {
                // Control frames are delivered whole.
                guard buffer.readableBytes >= headerLength + header.payloadLength else { return nil }
                buffer.moveReaderIndex(forwardBy: headerLength)
                Self.unmask(&buffer, length: header.payloadLength, key: maskKey, offset: 0)
                let payload = buffer.readSlice(length: header.payloadLength)!
                return .control(opcode: header.opcode, payload: payload)
            }
            buffer.moveReaderIndex(forwardBy: headerLength)
            if header.payloadLength == 0 {
                return .data(header: header, chunk: buffer.getSlice(at: buffer.readerIndex, length: 0)!,
                             isFrameStart: true, isFrameEnd: true)
            }
            self.state = .payload(header: header, remaining: header.payloadLength, maskKey: maskKey, maskOffset: 0)
            return self.nextChunk(from: &buffer, isFrameStart: true)
        case .payload:
            return self.nextChunk(from: &buffer, isFrameStart: false)
        }
    }

    private mutating func nextChunk(from buffer: inout ByteBuffer, isFrameStart: Bool) -> WebSocketFrameEvent? {
        guard case .payload(let header, let remaining, let maskKey, let maskOffset) = self.state else { return nil }
        let available = min(remaining, buffer.readableBytes)
        // A frame start is reported even with no payload bytes yet, so its opcode is known early.
        guard available > 0 || isFrameStart else { return nil }
        Self.unmask(&buffer, length: available, key: maskKey, offset: maskOffset)
        let chunk = buffer.readSlice(length: available)!
        let left = remaining - available
        if left == 0 {
            self.state = .header
        } else {
            self.state = .payload(header: header, remaining: left, maskKey: maskKey, maskOffset: (maskOffset + available) & 3)
        }
        return .data(header: header, chunk: chunk, isFrameStart: isFrameStart, isFrameEnd: left == 0)
    }

    /// Reads a header without consuming it: (header, mask key, header length) or nil if incomplete.
    private func parseHeader(_ buffer: ByteBuffer) throws(WebSocketProtocolError) -> (WebSocketFrameHeader, UInt32, Int)? {
        let start = buffer.readerIndex
        guard buffer.readableBytes >= 2,
              let first = buffer.getInteger(at: start, as: UInt8.self),
              let second = buffer.getInteger(at: start + 1, as: UInt8.self)
        else { return nil }

        let fin = first & 0x80 != 0
        let rsv1 = first & 0x40 != 0
        if first & 0x30 != 0 { throw WebSocketProtocolError(.protocolError, "reserved bits RSV2/RSV3 set") }
        guard let opcode = WebSocketOpcode(rawValue: first & 0x0F) else {
            throw WebSocketProtocolError(.protocolError, "reserved opcode \(first & 0x0F)")
        }
        if rsv1 && (!self.allowsRSV1 || opcode.isControl || opcode == .continuation) {
            throw WebSocketProtocolError(.protocolError, "RSV1 set without permessage-deflate or on a control/continuation frame")
        }
        guard second & 0x80 != 0 else { throw WebSocketProtocolError(.protocolError, "client frame not masked") }

        var length = Int(second & 0x7F)
        var offset = 2
        switch length {
        case 126:
            guard let extended = buffer.getInteger(at: start + 2, as: UInt16.self) else { return nil }
            length = Int(extended)
            offset = 4
        case 127:
            guard let extended = buffer.getInteger(at: start + 2, as: UInt64.self) else { return nil }
            if extended & (1 << 63) != 0 { throw WebSocketProtocolError(.protocolError, "64-bit length with the top bit set") }
            guard extended <= UInt64(Int.max) else { throw WebSocketProtocolError(.messageTooBig, "frame too large") }
            length = Int(extended)
            offset = 10
        default:
            break
        }
        if opcode.isControl {
            if !fin { throw WebSocketProtocolError(.protocolError, "fragmented control frame") }
            if length > 125 { throw WebSocketProtocolError(.protocolError, "control frame payload over 125 bytes") }
        } else if length > self.maxFrameSize {
            throw WebSocketProtocolError(.messageTooBig, "frame of \(length) bytes exceeds the limit of \(self.maxFrameSize)")
        }
        guard let maskKey = buffer.getInteger(at: start + offset, as: UInt32.self) else { return nil }
        return (WebSocketFrameHeader(fin: fin, rsv1: rsv1, opcode: opcode, payloadLength: length), maskKey, offset + 4)
    }

    /// XORs `length` readable bytes in place with the (big-endian) mask key, starting at byte
    /// `offset` of the key. Works a machine word at a time.
    static func unmask(_ buffer: inout ByteBuffer, length: Int, key: UInt32, offset: Int) {
        guard length > 0 else { return }
        // Mask bytes in wire order, rotated so that byte 0 of the rotation applies to the first byte.
        let k0 = UInt8(truncatingIfNeeded: key >> 24)
        let k1 = UInt8(truncatingIfNeeded: key >> 16)
        let k2 = UInt8(truncatingIfNeeded: key >> 8)
        let k3 = UInt8(truncatingIfNeeded: key)
        let keyBytes: (UInt8, UInt8, UInt8, UInt8)
        switch offset & 3 {
        case 0: keyBytes = (k0, k1, k2, k3)
        case 1: keyBytes = (k1, k2, k3, k0)
        case 2: keyBytes = (k2, k3, k0, k1)
        default: keyBytes = (k3, k0, k1, k2)
        }
        buffer.withUnsafeMutableReadableBytes { bytes in
            let base = bytes.baseAddress!
            // Little-endian word whose byte i is keyBytes[i % 4].
            let word32 = UInt32(keyBytes.0) | UInt32(keyBytes.1) << 8 | UInt32(keyBytes.2) << 16 | UInt32(keyBytes.3) << 24
            let word64 = UInt64(word32) | UInt64(word32) << 32
            var index = 0
            while index + 8 <= length {
                let value = base.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                base.storeBytes(of: (value.littleEndian ^ word64).littleEndian, toByteOffset: index, as: UInt64.self)
                index += 8
            }
            while index < length {
                let k: UInt8
                switch index & 3 {
                case 0: k = keyBytes.0
                case 1: k = keyBytes.1
                case 2: k = keyBytes.2
                default: k = keyBytes.3
                }
                base.storeBytes(of: base.load(fromByteOffset: index, as: UInt8.self) ^ k, toByteOffset: index, as: UInt8.self)
                index += 1
            }
        }
    }
}
