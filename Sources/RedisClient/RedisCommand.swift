import CHiredis
import NIOCore

/// A value that can be one argument of a Redis command. Arguments are binary-safe: the bytes
/// are sent as they are (hiredis encodes them as bulk strings).
public protocol RedisArgumentConvertible: Sendable {
    /// Appends exactly this argument's bytes.
    func writeRedisArgument(into buffer: inout ByteBuffer)
}

extension String: RedisArgumentConvertible {
    public func writeRedisArgument(into buffer: inout ByteBuffer) { buffer.writeString(self) }
}

extension Substring: RedisArgumentConvertible {
    public func writeRedisArgument(into buffer: inout ByteBuffer) { buffer.writeSubstring(self) }
}

extension ByteBuffer: RedisArgumentConvertible {
    public func writeRedisArgument(into buffer: inout ByteBuffer) { buffer.writeImmutableBuffer(self) }
}

extension Array: RedisArgumentConvertible where Element == UInt8 {
    public func writeRedisArgument(into buffer: inout ByteBuffer) { buffer.writeBytes(self) }
}

extension Int: RedisArgumentConvertible {
    public func writeRedisArgument(into buffer: inout ByteBuffer) { buffer.writeString(String(self)) }
}

extension Double: RedisArgumentConvertible {
    public func writeRedisArgument(into buffer: inout ByteBuffer) { buffer.writeString(String(self)) }
}

/// One command: its name and arguments, stored back to back in a single buffer (one allocation
/// however many arguments) until hiredis formats it.
public struct RedisCommand: Sendable, Hashable, CustomStringConvertible {
    private var storage: ByteBuffer
    private var lengths: [Int]
    /// How long Redis may hold the command before answering (the BLOCK of XREAD): added to the
    /// connection's command timeout to make this command's deadline.
    public var blockTime: TimeAmount = .zero

    public init(_ name: String, _ arguments: any RedisArgumentConvertible...) {
        self.init(name, arguments: arguments)
    }

    public init(_ name: String, arguments: [any RedisArgumentConvertible]) {
        self.storage = ByteBuffer()
        self.lengths = []
        self.append(name)
        for argument in arguments { self.append(argument) }
    }

    public mutating func append(_ argument: some RedisArgumentConvertible) {
        let before = self.storage.writerIndex
        argument.writeRedisArgument(into: &self.storage)
        self.lengths.append(self.storage.writerIndex - before)
    }

    public mutating func append(contentsOf arguments: [any RedisArgumentConvertible]) {
        for argument in arguments { self.append(argument) }
    }

    /// The command name as given (`"GET"`).
    public var name: String {
        String(buffer: self.storage.getSlice(at: self.storage.readerIndex, length: self.lengths[0])!)
    }

    /// Name and arguments, each as its own buffer.
    public var arguments: [ByteBuffer] {
        var offset = self.storage.readerIndex
        return self.lengths.map { length in
            defer { offset += length }
            return self.storage.getSlice(at: offset, length: length)!
        }
    }

    /// Name and arguments for logs; long or binary arguments are not escaped, only cut. The
    /// arguments of AUTH (credentials) are never shown.
    public var description: String {
        if self.name.uppercased() == "AUTH" { return "AUTH ***" }
        return self.arguments.map { argument in
            argument.readableBytes > 64 ? "\(String(buffer: argument.getSlice(at: argument.readerIndex, length: 64)!))…" : String(buffer: argument)
        }.joined(separator: " ")
    }

    /// Appends the command's RESP encoding (`*n` then one `$len` bulk string per argument),
    /// produced by hiredis' `redisFormatCommandArgv`, to `buffer`.
    public func encode(into buffer: inout ByteBuffer) throws(RedisClientError) {
        let lengths = self.lengths
        let written: Bool = self.storage.withUnsafeReadableBytes { raw in
            // The command name is never empty in practice, but an all-empty command must not
            // hand hiredis a nil base pointer.
            let base = raw.baseAddress ?? UnsafeRawPointer(("" as StaticString).utf8Start)
            var argv: [UnsafePointer<CChar>?] = []
            argv.reserveCapacity(lengths.count)
            var offset = 0
            for length in lengths {
                argv.append((base + offset).assumingMemoryBound(to: CChar.self))
                offset += length
            }
            var target: UnsafeMutablePointer<CChar>?
            let count = argv.withUnsafeMutableBufferPointer { argvPointer in
                lengths.withUnsafeBufferPointer { lengthsPointer in
                    redisFormatCommandArgv(&target, Int32(lengths.count), argvPointer.baseAddress, lengthsPointer.baseAddress)
                }
            }
            guard let target else { return false }
            // hiredis mallocs the encoding; copy it out and free it with hiredis' own free.
            defer { redisFreeCommand(target) }
            guard count > 0 else { return false }
            buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(count)))
            return true
        }
        if !written { throw .encodingFailed }
    }
}
