import NIOCore

/// Client-side frame building and server-frame decoding for tests (the reverse of the server's job).
enum TestFrames {
    static let maskKey: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]

    /// A masked client frame.
    static func client(
        _ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, rsv1: Bool = false, rsv2: Bool = false,
        masked: Bool = true, lengthOverride: UInt64? = nil
    ) -> [UInt8] {
        var out: [UInt8] = []
        var first = opcode
        if fin { first |= 0x80 }
        if rsv1 { first |= 0x40 }
        if rsv2 { first |= 0x20 }
        out.append(first)
        let maskBit: UInt8 = masked ? 0x80 : 0
        let length = lengthOverride ?? UInt64(payload.count)
        if length < 126 {
            out.append(maskBit | UInt8(length))
        } else if length <= 0xFFFF {
            out.append(maskBit | 126)
            out.append(UInt8(length >> 8)); out.append(UInt8(length & 0xFF))
        } else {
            out.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((length >> UInt64(shift)) & 0xFF)) }
        }
        if masked {
            out.append(contentsOf: maskKey)
            for (i, byte) in payload.enumerated() { out.append(byte ^ maskKey[i % 4]) }
        } else {
            out.append(contentsOf: payload)
        }
        return out
    }

    /// Any frame a hostile client could write: every opcode (0...15, reserved ones too), every
    /// flag, a declared length that need not match the payload (up to 2^64-1), masked or not,
    /// with any mask key. `client` is the well-meaning special case.
    static func raw(
        opcode: UInt8, payload: [UInt8] = [], fin: Bool = true, rsv1: Bool = false, rsv2: Bool = false, rsv3: Bool = false,
        mask: [UInt8]? = TestFrames.maskKey, declaredLength: UInt64? = nil
    ) -> [UInt8] {
        var out: [UInt8] = []
        var first = opcode & 0x0F
        if fin { first |= 0x80 }
        if rsv1 { first |= 0x40 }
        if rsv2 { first |= 0x20 }
        if rsv3 { first |= 0x10 }
        out.append(first)
        let maskBit: UInt8 = mask == nil ? 0 : 0x80
        let length = declaredLength ?? UInt64(payload.count)
        if length < 126 {
            out.append(maskBit | UInt8(length))
        } else if length <= 0xFFFF {
            out.append(maskBit | 126)
            out.append(UInt8(length >> 8)); out.append(UInt8(length & 0xFF))
        } else {
            out.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((length >> UInt64(shift)) & 0xFF)) }
        }
        if let mask {
            out.append(contentsOf: mask)
            for (i, byte) in payload.enumerated() { out.append(byte ^ mask[i % 4]) }
        } else {
            out.append(contentsOf: payload)
        }
        return out
    }

    /// One message split into frames of `size` bytes: the first with `opcode`, the rest
    /// continuations, FIN on the last.
    static func fragments(_ opcode: UInt8, _ payload: [UInt8], size: Int, rsv1: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        var offset = 0
        repeat {
            let end = min(payload.count, offset + max(1, size))
            out += Self.raw(opcode: offset == 0 ? opcode : 0x0, payload: Array(payload[offset..<end]),
                            fin: end == payload.count, rsv1: rsv1 && offset == 0)
            offset = end
        } while offset < payload.count
        return out
    }

    /// A Close frame with any payload (a bad code, a one-byte body, a reason that is not UTF-8).
    static func closeRaw(_ payload: [UInt8]) -> [UInt8] { Self.raw(opcode: 0x8, payload: payload) }

    static func text(_ string: String, fin: Bool = true) -> [UInt8] { client(0x1, Array(string.utf8), fin: fin) }
    static func close(code: UInt16?, reason: String = "") -> [UInt8] {
        var payload: [UInt8] = []
        if let code { payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8) }
        return client(0x8, payload)
    }

    struct ServerFrame: Equatable {
        var fin: Bool
        var rsv1: Bool
        var opcode: UInt8
        var payload: [UInt8]
        var text: String { String(decoding: payload, as: UTF8.self) }
        var closeCode: UInt16? {
            guard opcode == 0x8, payload.count >= 2 else { return nil }
            return UInt16(payload[0]) << 8 | UInt16(payload[1])
        }
    }

    /// Decodes as many whole server frames as `bytes` holds; leaves the rest.
    static func decode(_ bytes: inout [UInt8]) -> [ServerFrame] {
        var frames: [ServerFrame] = []
        while bytes.count >= 2 {
            let first = bytes[0], second = bytes[1]
            precondition(second & 0x80 == 0, "server frames are never masked")
            var length = Int(second & 0x7F)
            var offset = 2
            if length == 126 {
                guard bytes.count >= 4 else { break }
                length = Int(bytes[2]) << 8 | Int(bytes[3]); offset = 4
            } else if length == 127 {
                guard bytes.count >= 10 else { break }
                length = 0
                for i in 2..<10 { length = length << 8 | Int(bytes[i]) }
                offset = 10
            }
            guard bytes.count >= offset + length else { break }
            frames.append(ServerFrame(fin: first & 0x80 != 0, rsv1: first & 0x40 != 0, opcode: first & 0x0F,
                                      payload: Array(bytes[offset..<offset + length])))
            bytes.removeFirst(offset + length)
        }
        return frames
    }
}
