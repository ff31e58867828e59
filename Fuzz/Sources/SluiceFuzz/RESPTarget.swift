import NIOCore
@testable import RedisClient

/// `RESPParser` (hiredis' reader) fed a Redis server's replies in arbitrary reads: the values do
/// not depend on how the bytes were cut, a protocol error sticks, and every value re-encoded as
/// RESP reads back as itself. The accessors the client uses on replies (`string`, `int`, `array`,
/// `description`) run on every value.
///
/// Input: [split seed] replies...
enum RESPTarget {
    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        var splitter = Splitter(seed: input.byte())
        let stream = input.rest()

        let (pieceValues, pieceError) = Self.read(splitter.split(stream))
        let (wholeValues, wholeError) = Self.read([stream[...]])
        require(pieceValues == wholeValues, "values depend on how the bytes were cut")
        require((pieceError == nil) == (wholeError == nil), "an error depends on how the bytes were cut")

        for value in wholeValues {
            Self.touch(value)
            var encoded: [UInt8] = []
            Self.encode(value, into: &encoded)
            let (again, error) = Self.read([encoded[...]])
            require(error == nil && again == [value], "\(value) re-encoded does not read back as itself")
        }
    }

    static func read(_ pieces: [ArraySlice<UInt8>]) -> ([RESPValue], RESPProtocolError?) {
        let parser = RESPParser()
        var values: [RESPValue] = []
        do {
            for piece in pieces {
                try parser.feed(ByteBuffer(bytes: piece))
                while let value = try parser.next() { values.append(value) }
            }
        } catch {
            do {
                _ = try parser.next()
                fatalError("the reader recovered after a protocol error")
            } catch {}
            return (values, error)
        }
        return (values, nil)
    }

    static func touch(_ value: RESPValue) {
        _ = value.string
        _ = value.int
        _ = value.bytes
        _ = value.errorMessage
        _ = value.isNull
        _ = value.description
        for element in value.array ?? [] { Self.touch(element) }
    }

    static func encode(_ value: RESPValue, into out: inout [UInt8]) {
        switch value {
        case .simpleString(let text): out += Array("+\(text)\r\n".utf8)
        case .error(let text): out += Array("-\(text)\r\n".utf8)
        case .integer(let number): out += Array(":\(number)\r\n".utf8)
        case .bulkString(let buffer):
            out += Array("$\(buffer.readableBytes)\r\n".utf8)
            out += buffer.readableBytesView
            out += [13, 10]
        case .null: out += Array("$-1\r\n".utf8)
        case .nullArray: out += Array("*-1\r\n".utf8)
        case .array(let elements):
            out += Array("*\(elements.count)\r\n".utf8)
            for element in elements { Self.encode(element, into: &out) }
        }
    }
}
