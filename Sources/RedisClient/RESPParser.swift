import CHiredis
import NIOCore

/// Incremental RESP2 parser backed by hiredis' `redisReader`: feed it bytes as they arrive
/// (any split), take whole values out. A class because it owns the C reader (freed in deinit);
/// it is confined to one channel's event loop like the handler that holds it.
///
/// hiredis copies fed bytes into its own buffer, so the caller's buffer can be released right
/// after `feed`. Its limits apply: nesting deeper than 7 array levels is a protocol error
/// (no Redis command replies that deep), and so is an array announcing more than
/// `SLUICE_HIREDIS_MAX_ARRAY_ELEMENTS` (2^20) elements (hiredis would allocate it up front).
public final class RESPParser {
    private let reader: UnsafeMutablePointer<redisReader>
    private let allocator: ByteBufferAllocator

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        guard let reader = sluice_hiredis_readerCreate() else {
            fatalError("hiredis could not allocate a reader (out of memory)")
        }
        self.reader = reader
        self.allocator = allocator
    }

    deinit {
        sluice_hiredis_readerFree(self.reader)
    }

    /// Hands the readable bytes of `buffer` to hiredis (which copies them). Does not move
    /// `buffer`'s reader index.
    public func feed(_ buffer: ByteBuffer) throws(RESPProtocolError) {
        let status = buffer.withUnsafeReadableBytes { bytes in
            redisReaderFeed(self.reader, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        if status != REDIS_OK { throw self.readerError() }
    }

    /// The next complete value, or nil when more bytes are needed. After a protocol error every
    /// call throws again: RESP cannot be resynchronised mid-stream.
    public func next() throws(RESPProtocolError) -> RESPValue? {
        var object: UnsafeMutableRawPointer?
        guard redisReaderGetReply(self.reader, &object) == REDIS_OK else { throw self.readerError() }
        guard let object else { return nil }
        defer { freeReplyObject(object) }
        return self.convert(object.assumingMemoryBound(to: redisReply.self))
    }

    private func readerError() -> RESPProtocolError {
        if self.reader.pointee.err == REDIS_ERR_OOM {
            // Also what the shim's bounded createArray reports for an over-long `*n`.
            return RESPProtocolError("an array reply longer than \(SLUICE_HIREDIS_MAX_ARRAY_ELEMENTS) elements, or out of memory")
        }
        let message = withUnsafeBytes(of: self.reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return RESPProtocolError(message.isEmpty ? "hiredis reader error \(self.reader.pointee.err)" : message)
    }

    /// Copies a hiredis reply tree into a `RESPValue` (the tree is freed by the caller).
    private func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RESPValue {
        let reply = reply.pointee
        switch reply.type {
        case REDIS_REPLY_STATUS:
            return .simpleString(Self.text(reply))
        case REDIS_REPLY_ERROR:
            return .error(Self.text(reply))
        case REDIS_REPLY_INTEGER:
            return .integer(Int(reply.integer))
        case REDIS_REPLY_STRING:
            var buffer = self.allocator.buffer(capacity: reply.len)
            buffer.writeBytes(UnsafeRawBufferPointer(start: reply.str, count: reply.len))
            return .bulkString(buffer)
        case REDIS_REPLY_NIL:
            // sluice_hiredis_createNil marks `*-1` with integer 1 (hiredis itself does not tell).
            return reply.integer == 1 ? .nullArray : .null
        case REDIS_REPLY_ARRAY:
            var values: [RESPValue] = []
            values.reserveCapacity(reply.elements)
            for index in 0..<reply.elements {
                values.append(self.convert(reply.element[index]!))
            }
            return .array(values)
        default:
            // hiredis 0.14 speaks RESP2 only; nothing else can come out of its reader.
            preconditionFailure("unknown hiredis reply type \(reply.type)")
        }
    }

    private static func text(_ reply: redisReply) -> String {
        String(decoding: UnsafeRawBufferPointer(start: reply.str, count: reply.len), as: UTF8.self)
    }
}

@available(*, unavailable)
extension RESPParser: Sendable {}

/// Turns inbound bytes into `RESPValue`s. Everything readable is fed to hiredis at once and all
/// complete values are passed on; a protocol error is thrown (as `RESPProtocolError`), which
/// `ByteToMessageHandler` reports through `errorCaught` (the command handlers then close).
public struct RESPDecoder: ByteToMessageDecoder {
    public typealias InboundOut = RESPValue

    private let parser: RESPParser

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.parser = RESPParser(allocator: allocator)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        try self.parser.feed(buffer)
        buffer.moveReaderIndex(to: buffer.writerIndex)
        // Drain here: the handler only calls again when new bytes arrive.
        while let value = try self.parser.next() {
            context.fireChannelRead(self.wrapInboundOut(value))
        }
        return .needMoreData
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A partial reply left at EOF is dropped; the close fails whatever was waiting for it.
        try self.decode(context: context, buffer: &buffer)
    }
}
