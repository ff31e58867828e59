import NIOCore
@testable import WSServer

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
