import CHiredis
import NIOCore

/// Incremental RESP2 parser backed by hiredis' `redisReader`: feed it bytes as they arrive
/// (any split), take whole values out. A class because it owns the C reader (freed in deinit);
/// it is confined to one channel's event loop like the handler that holds it.
///
/// hiredis copies fed bytes into its own buffer, so the caller's buffer can be released right
/// after `feed`. Limits: nesting deeper than 7 array levels is a protocol error (hiredis; no
/// Redis command replies that deep), and so is a reply past `Limits` (Redis replies are outside
/// input: a `*2147483647` header must not make us allocate 16 GiB).
public final class RESPParser {
    /// What one reply may make the parser hold.
    public struct Limits: Sendable, Hashable {
        /// Bytes of one reply: its string values together, and what is buffered of a value still
        /// arriving (a bulk string is kept whole until its last byte is in).
        public var maxReplyBytes: Int
        /// Values in one reply, every array element at any depth included.
        public var maxReplyElements: Int

        /// 64 MiB and 1,048,576 values: far above anything Sluice reads back (a resume log, a
        /// conversation cache, a cached answer), far below what would hurt the process.
        public static let `default` = Limits(maxReplyBytes: 64 << 20, maxReplyElements: 1 << 20)

        public init(maxReplyBytes: Int, maxReplyElements: Int) {
            self.maxReplyBytes = max(1, maxReplyBytes)
            self.maxReplyElements = max(1, maxReplyElements)
        }
    }

    private let reader: UnsafeMutablePointer<redisReader>
    private let allocator: ByteBufferAllocator
    public let limits: Limits

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator(), limits: Limits = .default) {
        guard let reader = sluice_hiredis_readerCreate(limits.maxReplyElements, limits.maxReplyBytes) else {
            fatalError("hiredis could not allocate a reader (out of memory)")
        }
        self.reader = reader
        self.allocator = allocator
        self.limits = limits
    }

    deinit {
        sluice_hiredis_readerFree(self.reader)
    }

    /// Hands the readable bytes of `buffer` to hiredis (which copies them). Does not move
    /// `buffer`'s reader index.
    public func feed(_ buffer: ByteBuffer) throws(RESPProtocolError) {
        if let failure = self.failure { throw failure }
        let status = buffer.withUnsafeReadableBytes { bytes in
            redisReaderFeed(self.reader, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        if status != REDIS_OK { throw self.readerError() }
    }

    /// The next complete value, or nil when more bytes are needed. After a protocol error every
    /// call throws again: RESP cannot be resynchronised mid-stream.
    public func next() throws(RESPProtocolError) -> RESPValue? {
        if let failure = self.failure { throw failure }
        var object: UnsafeMutableRawPointer?
        guard redisReaderGetReply(self.reader, &object) == REDIS_OK else { throw self.fail(self.readerError()) }
        guard let object else {
            // Incomplete: what is buffered of it (a bulk string waits whole) counts against the limit.
            if sluice_hiredis_readerBuffered(self.reader) > self.limits.maxReplyBytes {
                throw self.fail(RESPProtocolError("a reply is larger than \(self.limits.maxReplyBytes) bytes"))
            }
            return nil
        }
        defer { freeReplyObject(object) }
        do {
            return try self.convert(object.assumingMemoryBound(to: redisReply.self))
        } catch {
            throw self.fail(error)
        }
    }

    /// Set once the stream is unusable (a limit refused a reply hiredis had no quarrel with).
    private var failure: RESPProtocolError?

    private func fail(_ error: RESPProtocolError) -> RESPProtocolError {
        self.failure = error
        return error
    }

    private func readerError() -> RESPProtocolError {
        switch sluice_hiredis_readerExceeded(self.reader) {
        case SLUICE_HIREDIS_TOO_MANY_ELEMENTS:
            return RESPProtocolError("a reply has more than \(self.limits.maxReplyElements) values")
        case SLUICE_HIREDIS_TOO_MANY_BYTES:
            return RESPProtocolError("a reply is larger than \(self.limits.maxReplyBytes) bytes")
        default:
            break
        }
        let message = withUnsafeBytes(of: self.reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return RESPProtocolError(message.isEmpty ? "hiredis reader error \(self.reader.pointee.err)" : message)
    }

    /// Copies a hiredis reply tree into a `RESPValue` (the tree is freed by the caller).
    private func convert(_ reply: UnsafeMutablePointer<redisReply>) throws(RESPProtocolError) -> RESPValue {
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
                guard let element = reply.element[index] else { throw RESPProtocolError("an array element is missing") }
                values.append(try self.convert(element))
            }
            return .array(values)
        default:
            // hiredis 0.14 speaks RESP2 only; nothing else comes out of its reader.
            throw RESPProtocolError("unknown hiredis reply type \(reply.type)")
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

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator(), limits: RESPParser.Limits = .default) {
        self.parser = RESPParser(allocator: allocator, limits: limits)
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
