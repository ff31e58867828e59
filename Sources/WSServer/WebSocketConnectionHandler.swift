#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore

/// Runs one upgraded WebSocket connection: parses frames straight from the socket's bytes,
/// reassembles and inflates messages, answers pings, runs the close handshake and heartbeats,
/// and coalesces outbound frames into one buffer that is flushed once per read burst.
///
/// Backpressure: outbound bytes are handed to the channel only while it is writable; while it
/// is not, they wait in one buffer bounded by `maxOutboundBytes` (beyond it: Close 1013) and
/// the handler stops reading from the socket, so a peer that does not read cannot make the
/// server buffer without bound.
///
/// Memory budget: a message assembled in a buffer of its own (fragmented, split across reads,
/// or compressed) reserves its bytes from the process-wide `MemoryBudget` before they arrive
/// (the frame header announces an uncompressed frame's length; an inflating message reserves
/// before each step), and outbound bytes waiting for a slow reader are charged while they
/// wait. No room: Close 1013 (try again later). A message that arrives whole in one read is
/// a slice of the read buffer and is not charged (NIO's reads are at most 64 KiB).
final class WebSocketConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        case open
        /// We sent Close and wait for the peer's Close (or the close timeout).
        case closeSent
        case closed
    }

    private let settings: ConnectionSettings
    /// permessage-deflate as agreed for this connection; nil when not negotiated.
    private let deflate: DeflateParameters?
    /// Outbound messages are compressed (the server's window bits were agreed).
    private let compressesOutbound: Bool
    /// `settings.maxOutboundBytes`, kept here: read per message, and a class's property read
    /// through another class costs a retain and a release.
    private let maxOutboundBytes: Int
    /// The channel's writability as its last `channelWritabilityChanged` said: read per message
    /// on the streaming path, where asking the channel costs a pipeline lookup and refcounting.
    private var channelIsWritable = false
    private var info: WebSocketConnectionInfo?
    private var delegate: (any WebSocketConnectionDelegate)?
    private var context: ChannelHandlerContext?
    private var heartbeatScheduler: HeartbeatScheduler?
    /// This connection's index in its event loop's `HeartbeatScheduler`.
    var heartbeatSlot: Int?

    private var state: State = .open
    private var parser: WebSocketFrameParser
    /// Bytes of a partial frame header or control frame left over from the last read.
    private var cumulation: ByteBuffer?

    // The message being assembled.
    private var messageOpcode: WebSocketOpcode?
    private var messageIsCompressed = false
    private var messageBuffer: ByteBuffer?
    private var messageSize = 0
    private var utf8 = UTF8Validator()
    /// What the message being assembled holds of the memory budget.
    private var inboundCharge = MemoryCharge(.webSocketInbound)
    private var decompressor: DeflateDecompressor?
    private var compressor: DeflateCompressor?
    /// What the zlib state of `compressor` and `decompressor` holds of the memory budget.
    private var deflateCharge = MemoryCharge(.compression)
    private var inflateCharge = MemoryCharge(.compression)

    /// Frames not yet handed to the channel.
    private var outbound: ByteBuffer?
    /// What `outbound` holds of the memory budget (charged while the channel is not writable).
    private var outboundCharge = MemoryCharge(.webSocketOutbound)
    private var inReadBurst = false
    private var readPending = false

    private var heartbeat: HeartbeatStateMachine?
    private var nextHeartbeatCheck: NIODeadline = .distantFuture
    private var closeTimer: Scheduled<Void>?
    /// The code reported to the delegate when the connection ends.
    private var closeCode: WebSocketCloseCode = .abnormalClosure

    init(settings: ConnectionSettings, deflate: DeflateParameters?, info: WebSocketConnectionInfo) {
        self.settings = settings
        self.deflate = deflate
        self.compressesOutbound = deflate?.serverWindowBits != nil
        self.maxOutboundBytes = settings.maxOutboundBytes
        self.info = info
        self.parser = WebSocketFrameParser(maxFrameSize: settings.maxFrameSize, allowsRSV1: deflate != nil)
    }

    // MARK: Facts for `WebSocketConnection`

    private var connectionEventLoop: (any EventLoop)?
    var eventLoop: any EventLoop { self.connectionEventLoop! }
    var allocator: ByteBufferAllocator { self.context?.channel.allocator ?? ByteBufferAllocator() }
    var isWritable: Bool { self.channelIsWritable }
    var isOpen: Bool { if case .open = self.state { return true } else { return false } }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.channelIsWritable = context.channel.isWritable
        self.settings.metrics.connectionOpened()
        self.connectionEventLoop = context.eventLoop
        let heartbeat = HeartbeatStateMachine(
            interval: self.settings.heartbeatInterval, timeout: self.settings.heartbeatTimeout, now: context.eventLoop.now)
        self.heartbeat = heartbeat
        self.nextHeartbeatCheck = heartbeat.firstCheck
        let scheduler = self.settings.heartbeats.scheduler(for: context.eventLoop)
        scheduler.add(self)
        self.heartbeatScheduler = scheduler
        // The request head is only needed to make the delegate; dropping it keeps idle connections small.
        let info = self.info!
        self.info = nil
        let delegate = self.settings.application.makeDelegate(for: info)
        self.delegate = delegate
        delegate.connectionOpened(WebSocketConnection(handler: self))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.finish(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(context: context)
        context.fireChannelInactive()
    }

    private func reportTraffic() {
        guard !self.traffic.isEmpty else { return }
        self.settings.metrics.add(self.traffic)
        self.traffic = WebSocketTraffic()
    }

    /// Tears down once: timers, zlib state, the delegate.
    private func finish(context: ChannelHandlerContext) {
        self.reportTraffic()
        guard self.context != nil else { return }
        self.state = .closed
        self.heartbeatScheduler?.remove(self)
        self.heartbeatScheduler = nil
        self.closeTimer?.cancel()
        self.closeTimer = nil
        self.compressor?.release()
        self.decompressor?.release()
        self.deflateCharge.releaseAll(to: self.settings.budget)
        self.inflateCharge.releaseAll(to: self.settings.budget)
        self.outbound = nil
        self.outboundCharge.releaseAll(to: self.settings.budget)
        self.cumulation = nil
        self.messageBuffer = nil
        self.inboundCharge.releaseAll(to: self.settings.budget)
        self.settings.metrics.connectionClosed(code: self.closeCode)
        let delegate = self.delegate
        self.delegate = nil
        delegate?.connectionClosed(WebSocketConnection(handler: self), code: self.closeCode)
        self.context = nil
    }

    // MARK: Inbound

    /// Traffic since it was last added to the server's counters (once per read burst or flush,
    /// not per message: the counters are shared by every connection).
    private var traffic = WebSocketTraffic()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        self.traffic.wireBytesIn += buffer.readableBytes
        guard case .open = self.state else {
            // After our Close we only look for the peer's Close; keep parsing control frames.
            if case .closeSent = self.state { self.parseWhileClosing(context: context, buffer: &buffer) }
            return
        }
        self.inReadBurst = true
        self.heartbeat?.inboundActivity(now: context.eventLoop.now)
        if var pending = self.cumulation {
            self.cumulation = nil
            pending.writeBuffer(&buffer)
            buffer = pending
        }
        do {
            while case .open = self.state, let event = try self.parser.next(from: &buffer) {
                try self.handle(event, context: context)
            }
        } catch let error as WebSocketProtocolError {
            self.fail(context: context, error)
            return
        } catch {
            self.fail(context: context, WebSocketProtocolError(.internalError, "\(error)"))
            return
        }
        self.keepLeftover(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.inReadBurst = false
        self.flushOutbound()
        self.reportTraffic()
        context.fireChannelReadComplete()
    }

    private func keepLeftover(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        // A leftover is at most a frame header or a control frame; copy it out so the
        // (possibly large) read buffer is freed.
        if buffer.capacity > 1024 {
            var small = self.allocator.buffer(capacity: buffer.readableBytes)
            small.writeImmutableBuffer(buffer)
            self.cumulation = small
        } else {
            self.cumulation = buffer
        }
    }

    private func handle(_ event: WebSocketFrameEvent, context: ChannelHandlerContext) throws {
        switch event {
        case .control(let opcode, let payload):
            try self.handleControl(opcode, payload, context: context)
        case .data(let header, var chunk, let isFrameStart, let isFrameEnd):
            if isFrameStart {
                try self.beginFrame(header)
            }
            let isWholeMessage = isFrameStart && isFrameEnd && header.fin && header.opcode != .continuation
            if isFrameStart && !isWholeMessage && !self.messageIsCompressed {
                // Assembled in a buffer of its own: reserve what the header announces before the bytes arrive.
                try self.chargeInbound(self.messageSize + header.payloadLength)
            }
            try self.appendChunk(&chunk, header: header, isWholeMessage: isWholeMessage)
            if isFrameEnd && header.fin {
                try self.endMessage()
            }
        }
    }

    private func beginFrame(_ header: WebSocketFrameHeader) throws(WebSocketProtocolError) {
        if header.opcode == .continuation {
            guard self.messageOpcode != nil else {
                throw WebSocketProtocolError(.protocolError, "continuation frame without a message to continue")
            }
        } else {
            guard self.messageOpcode == nil else {
                throw WebSocketProtocolError(.protocolError, "new data frame while a fragmented message is open")
            }
            self.messageOpcode = header.opcode
            self.messageIsCompressed = header.rsv1
            self.messageSize = 0
            self.utf8 = UTF8Validator()
        }
        // Fail fast on an uncompressed message that announces itself too big.
        if !self.messageIsCompressed && self.messageSize + header.payloadLength > self.settings.maxMessageSize {
            throw WebSocketProtocolError(.messageTooBig, "message exceeds \(self.settings.maxMessageSize) bytes")
        }
    }

    /// Makes sure the message being assembled holds `bytes` of the memory budget.
    private func chargeInbound(_ bytes: Int) throws(WebSocketProtocolError) {
        guard self.inboundCharge.grow(to: bytes, in: self.settings.budget) else {
            self.settings.metrics.memoryBudgetClosed()
            throw WebSocketProtocolError(.tryAgainLater, "server memory budget exhausted; retry later")
        }
    }

    private func appendChunk(_ chunk: inout ByteBuffer, header: WebSocketFrameHeader, isWholeMessage: Bool) throws(WebSocketProtocolError) {
        let isText = self.messageOpcode == .text
        if self.messageIsCompressed {
            var message = self.messageBuffer ?? self.allocator.buffer(capacity: max(chunk.readableBytes * 2, 256))
            let before = message.writerIndex
            try self.inflate(chunk, into: &message)
            if isText { try self.validateUTF8(message, from: before) }
            self.messageBuffer = message
            return
        }
        self.messageSize += chunk.readableBytes
        if isText {
            let valid = chunk.withUnsafeReadableBytes { self.utf8.validate($0) }
            if !valid { throw WebSocketProtocolError(.invalidPayload, "invalid UTF-8 in a text message") }
        }
        if isWholeMessage {
            // The common case: the whole message is one slice of the read buffer; no copy.
            self.messageBuffer = chunk
        } else if self.messageBuffer == nil {
            var message = self.allocator.buffer(capacity: header.fin ? header.payloadLength : max(header.payloadLength, 1024))
            message.writeBuffer(&chunk)
            self.messageBuffer = message
            try self.chargeInbound(message.capacity)
        } else {
            self.messageBuffer!.writeBuffer(&chunk)
            try self.chargeInbound(self.messageBuffer!.capacity)
        }
    }

    private func inflate(_ input: ByteBuffer, into message: inout ByteBuffer) throws(WebSocketProtocolError) {
        let decompressor = self.decompressor ?? DeflateDecompressor()
        self.decompressor = decompressor
        // zlib's state is allocated on first use: it must fit the budget like the message.
        if !decompressor.holdsState && !self.inflateCharge.grow(to: DeflateDecompressor.stateBytes, in: self.settings.budget) {
            self.settings.metrics.memoryBudgetClosed()
            throw WebSocketProtocolError(.tryAgainLater, "server memory budget exhausted; retry later")
        }
        let limit = self.settings.maxMessageSize
        let budget = self.settings.budget
        var charge = self.inboundCharge
        let result = Result { () throws(DeflateDecompressor.InflateError) in
            // Each step of inflating reserves its room first.
            try decompressor.inflate(input, into: &message, limit: limit) { charge.grow(to: $0, in: budget) }
        }
        self.inboundCharge = charge
        switch result {
        case .success:
            return
        case .failure(.overBudget):
            self.settings.metrics.memoryBudgetClosed()
            throw WebSocketProtocolError(.tryAgainLater, "server memory budget exhausted; retry later")
        case .failure(.tooLarge):
            throw WebSocketProtocolError(.messageTooBig, "decompressed message exceeds \(limit) bytes")
        case .failure(.corrupt(let reason)):
            throw WebSocketProtocolError(.invalidPayload, "bad deflate data: \(reason)")
        }
    }

    private func validateUTF8(_ message: ByteBuffer, from offset: Int) throws(WebSocketProtocolError) {
        let count = message.writerIndex - offset
        guard count > 0 else { return }
        let valid = message.withUnsafeReadableBytes { bytes in
            self.utf8.validate(UnsafeRawBufferPointer(rebasing: bytes[(offset - message.readerIndex)...]))
        }
        if !valid { throw WebSocketProtocolError(.invalidPayload, "invalid UTF-8 in a text message") }
    }

    private static let deflateTail: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

    private func endMessage() throws(WebSocketProtocolError) {
        let opcode = self.messageOpcode!
        var message = self.messageBuffer ?? self.allocator.buffer(capacity: 0)
        if self.messageIsCompressed {
            let before = message.writerIndex
            let tail = ByteBuffer(bytes: Self.deflateTail)
            try self.inflate(tail, into: &message)
            if opcode == .text { try self.validateUTF8(message, from: before) }
            if self.deflate?.clientNoContextTakeover == true {
                self.decompressor?.release()
                self.inflateCharge.releaseAll(to: self.settings.budget)
            }
        }
        if opcode == .text && !self.utf8.isAtBoundary {
            throw WebSocketProtocolError(.invalidPayload, "text message ends inside a UTF-8 sequence")
        }
        self.messageOpcode = nil
        self.messageBuffer = nil
        self.messageIsCompressed = false
        self.traffic.received(payloadBytes: message.readableBytes)
        // Released once the application has it (what it keeps is its own to bound).
        defer { self.inboundCharge.releaseAll(to: self.settings.budget) }
        guard let delegate = self.delegate else { return }
        let connection = WebSocketConnection(handler: self)
        delegate.connection(connection, didReceive: opcode == .text ? .text(message) : .binary(message))
    }

    private func handleControl(_ opcode: WebSocketOpcode, _ payload: ByteBuffer, context: ChannelHandlerContext) throws(WebSocketProtocolError) {
        switch opcode {
        case .ping:
            self.appendFrame(opcode: .pong, rsv1: false, payload: payload)
        case .pong:
            break  // inbound activity is already recorded
        case .close:
            let (code, _) = try Self.parseClosePayload(payload)
            // Echo the peer's code (1000 when it sent none) and close TCP once it is written.
            self.closeCode = code ?? .noStatusReceived
            self.appendCloseFrame(code: code, reason: "")
            self.state = .closeSent
            self.closeAfterFlush(context: context)
        default:
            break
        }
    }

    /// Validates a Close payload: empty, or a valid code plus UTF-8 reason.
    static func parseClosePayload(_ payload: ByteBuffer) throws(WebSocketProtocolError) -> (WebSocketCloseCode?, String) {
        var payload = payload
        if payload.readableBytes == 0 { return (nil, "") }
        guard let raw = payload.readInteger(as: UInt16.self) else {
            throw WebSocketProtocolError(.protocolError, "close payload of one byte")
        }
        let code = WebSocketCloseCode(rawValue: raw)
        guard code.isValidOnWire else { throw WebSocketProtocolError(.protocolError, "invalid close code \(raw)") }
        var validator = UTF8Validator()
        let valid = payload.withUnsafeReadableBytes { validator.validate($0) } && validator.isAtBoundary
        guard valid else { throw WebSocketProtocolError(.invalidPayload, "close reason is not UTF-8") }
        return (code, payload.readString(length: payload.readableBytes) ?? "")
    }

    /// After our own Close: only the peer's Close matters; anything malformed just ends it.
    private func parseWhileClosing(context: ChannelHandlerContext, buffer: inout ByteBuffer) {
        if var pending = self.cumulation {
            self.cumulation = nil
            pending.writeBuffer(&buffer)
            buffer = pending
        }
        do {
            while let event = try self.parser.next(from: &buffer) {
                if case .control(.close, _) = event {
                    context.close(promise: nil)
                    return
                }
            }
            self.keepLeftover(buffer)
        } catch {
            context.close(promise: nil)
        }
    }

    // MARK: Outbound

    func sendMessage(_ opcode: WebSocketOpcode, _ payload: ByteBuffer, flush: Bool) {
        guard case .open = self.state, let context = self.context else { return }
        self.traffic.sent(payloadBytes: payload.readableBytes)
        if let deflate = self.deflate, deflate.serverWindowBits != nil,
           payload.readableBytes >= self.settings.deflateMinSize
        {
            let compressor = self.compressor ?? DeflateCompressor(
                level: self.settings.deflateLevel,
                windowBits: Int(deflate.serverWindowBits!),
                memoryLevel: self.settings.deflateMemoryLevel)
            self.compressor = compressor
            var compressed = self.allocator.buffer(capacity: payload.readableBytes / 2 + 64)
            // zlib's state must fit the budget; when it does not (or zlib cannot allocate it),
            // the message goes uncompressed, which the extension always allows.
            if (compressor.holdsState || self.deflateCharge.grow(to: compressor.stateBytes, in: self.settings.budget))
                && compressor.compress(payload, into: &compressed) {
                if deflate.serverNoContextTakeover {
                    compressor.release()
                    self.deflateCharge.releaseAll(to: self.settings.budget)
                }
                self.appendFrame(opcode: opcode, rsv1: true, payload: compressed)
            } else {
                if !compressor.holdsState { self.deflateCharge.releaseAll(to: self.settings.budget) }
                self.appendFrame(opcode: opcode, rsv1: false, payload: payload)
            }
        } else {
            self.appendFrame(opcode: opcode, rsv1: false, payload: payload)
        }
        self.outboundGrew(context: context, flush: flush)
    }

    /// After a frame was queued: enforce the outbound bound and the memory budget, and flush if asked.
    private func outboundGrew(context: ChannelHandlerContext, flush: Bool) {
        if let pending = self.outbound?.readableBytes, pending > self.settings.maxOutboundBytes {
            if context.channel.isWritable {
                // A big batch while the peer keeps up: hand it over now rather than holding it.
                self.flushOutbound()
            } else {
                self.settings.metrics.slowConsumerClosed()
                self.dropOutbound()
                self.fail(context: context, WebSocketProtocolError(
                    .tryAgainLater, "slow consumer: outbound queue over \(self.settings.maxOutboundBytes) bytes"))
                return
            }
        }
        if !self.channelIsWritable && !self.chargeOutbound() {
            if context.channel.isWritable {
                self.flushOutbound()
            } else {
                self.settings.metrics.memoryBudgetClosed()
                self.dropOutbound()
                self.fail(context: context, WebSocketProtocolError(.tryAgainLater, "server memory budget exhausted; retry later"))
                return
            }
        }
        if flush && !self.inReadBurst { self.flushOutbound() }
    }

    /// Charges the queued bytes (their buffer's capacity) to the memory budget; false when it has no room.
    private func chargeOutbound() -> Bool {
        guard let capacity = self.outbound?.capacity, capacity > self.outboundCharge.held else { return true }
        return self.outboundCharge.grow(to: capacity, in: self.settings.budget)
    }

    /// Forgets the queued bytes (the connection is being failed).
    private func dropOutbound() {
        self.outbound = nil
        self.outboundCharge.releaseAll(to: self.settings.budget)
    }

    /// Scratch space for `writeEncoded`, kept while small.
    private var scratch: ByteBuffer?

    func writeEncoded(_ opcode: WebSocketOpcode, _ body: (inout ByteBuffer) -> Void) {
        guard case .open = self.state else { return }
        if !self.compressesOutbound {
            // No outbound compression: encode straight into the outbound buffer behind a
            // 2-byte header, then fix the header (moving the payload for longer lengths).
            // Work on a local copy (moved out, so still uniquely referenced): inout access to a
            // class property would pay a dynamic exclusivity check per message.
            var outbound = self.outbound.take() ?? self.allocator.buffer(capacity: 512)
            let headerIndex = outbound.writerIndex
            outbound.writeInteger(UInt16(0))
            body(&outbound)
            let length = outbound.writerIndex - headerIndex - 2
            outbound.fixWebSocketFrameHeader(at: headerIndex, opcode: opcode, payloadLength: length)
            self.traffic.sent(payloadBytes: length)
            let pending = outbound.readableBytes
            self.outbound = outbound
            if pending > self.maxOutboundBytes || !self.channelIsWritable, let context = self.context {
                self.outboundGrew(context: context, flush: false)
            }
            return
        }
        var scratch = self.scratch ?? self.allocator.buffer(capacity: 256)
        self.scratch = nil
        scratch.clear()
        body(&scratch)
        self.sendMessage(opcode, scratch, flush: false)
        if scratch.capacity <= 16 * 1024 { self.scratch = scratch }
    }

    /// `writeEncoded` only while the channel is writable; says whether it wrote.
    func writeEncodedIfWritable(_ opcode: WebSocketOpcode, _ body: (inout ByteBuffer) -> Void) -> Bool {
        guard self.channelIsWritable, case .open = self.state else { return false }
        self.writeEncoded(opcode, body)
        return true
    }

    /// Hands queued frames to the channel if it can take them.
    func flushOutbound() {
        guard let context = self.context, self.outbound != nil, context.channel.isWritable else { return }
        let buffer = self.outbound!
        self.outbound = nil
        self.outboundCharge.releaseAll(to: self.settings.budget)
        self.traffic.wireBytesOut += buffer.readableBytes
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
        if !self.inReadBurst { self.reportTraffic() }
    }

    private func appendFrame(opcode: WebSocketOpcode, rsv1: Bool, payload: ByteBuffer) {
        let length = payload.readableBytes
        if self.outbound == nil {
            self.outbound = self.allocator.buffer(capacity: max(length + 10, 512))
        }
        self.outbound!.writeWebSocketFrameHeader(opcode: opcode, fin: true, rsv1: rsv1, length: length)
        self.outbound!.writeImmutableBuffer(payload)
    }

    private func appendCloseFrame(code: WebSocketCloseCode?, reason: String) {
        var payload = self.allocator.buffer(capacity: 2 + reason.utf8.count)
        if let code {
            payload.writeInteger(code.rawValue)
            // Close payloads are at most 125 bytes; cut the reason on a character boundary.
            var reasonBytes = Substring(reason)
            while reasonBytes.utf8.count > 123 { reasonBytes.removeLast() }
            payload.writeString(String(reasonBytes))
        }
        self.appendFrame(opcode: .close, rsv1: false, payload: payload)
    }

    // MARK: Closing

    /// Protocol error or policy close: send Close with the code, then drop TCP once written.
    private func fail(context: ChannelHandlerContext, _ error: WebSocketProtocolError) {
        guard case .open = self.state else { return }
        // The message being assembled is abandoned.
        self.messageBuffer = nil
        self.inboundCharge.releaseAll(to: self.settings.budget)
        self.closeCode = error.closeCode
        self.appendCloseFrame(code: error.closeCode, reason: error.reason)
        self.state = .closeSent
        self.closeAfterFlush(context: context)
    }

    /// Server-initiated close (application, drain): send Close, wait for the peer's Close.
    func initiateClose(code: WebSocketCloseCode, reason: String) {
        guard case .open = self.state, let context = self.context else { return }
        self.delegate?.connectionWillClose(WebSocketConnection(handler: self), code: code)
        guard case .open = self.state else { return }
        self.closeCode = code
        self.appendCloseFrame(code: code, reason: reason)
        self.state = .closeSent
        self.forceWrite(context: context)
        let closeTimeout = self.settings.closeTimeout
        self.closeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: closeTimeout) {
            context.close(promise: nil)
        }
    }

    private func closeAfterFlush(context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.forceWrite(context: context, promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// Writes queued bytes even when the channel is not writable (a Close must go out).
    private func forceWrite(context: ChannelHandlerContext, promise: EventLoopPromise<Void>? = nil) {
        if let buffer = self.outbound {
            self.outbound = nil
            self.outboundCharge.releaseAll(to: self.settings.budget)
            context.writeAndFlush(self.wrapOutboundOut(buffer), promise: promise)
        } else {
            promise?.succeed()
        }
    }

    // MARK: Heartbeat

    /// Called by the event loop's `HeartbeatScheduler` every tick.
    func heartbeatTick(now: NIODeadline) {
        guard now >= self.nextHeartbeatCheck, case .open = self.state, let context = self.context,
              var heartbeat = self.heartbeat
        else { return }
        let action = heartbeat.timerFired(now: now)
        self.heartbeat = heartbeat
        switch action {
        case .sendPing(let next):
            self.appendFrame(opcode: .ping, rsv1: false, payload: ByteBuffer())
            self.flushOutbound()
            self.nextHeartbeatCheck = next
        case .wait(let next):
            self.nextHeartbeatCheck = next
        case .timedOut:
            // The peer is gone or stuck; a close handshake would only wait longer.
            self.settings.metrics.heartbeatTimedOut()
            self.closeCode = .abnormalClosure
            self.state = .closed
            context.close(promise: nil)
        }
    }

    // MARK: Backpressure

    func read(context: ChannelHandlerContext) {
        // Stop reading while the peer does not take what we send.
        if context.channel.isWritable && self.outbound == nil {
            context.read()
        } else if !self.readPending {
            self.readPending = true
            self.settings.metrics.readPaused()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.channelIsWritable = context.channel.isWritable
        if !self.channelIsWritable, self.outbound != nil, case .open = self.state, !self.chargeOutbound() {
            // What waits now must fit the memory budget.
            self.settings.metrics.memoryBudgetClosed()
            self.dropOutbound()
            self.fail(context: context, WebSocketProtocolError(.tryAgainLater, "server memory budget exhausted; retry later"))
        }
        if self.channelIsWritable {
            self.flushOutbound()
            if self.readPending && self.outbound == nil {
                self.readPending = false
                context.read()
            }
        }
        if let delegate = self.delegate {
            delegate.connectionWritabilityChanged(WebSocketConnection(handler: self))
        }
        context.fireChannelWritabilityChanged()
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let event = event as? WebSocketServerEvent {
            switch event {
            case .close(let code, let reason):
                self.initiateClose(code: code, reason: reason)
            }
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // I/O errors (reset by peer and the like) end the connection.
        self.closeCode = .abnormalClosure
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension WebSocketConnectionHandler: Sendable {}

extension ByteBuffer {
    /// Turns the 2 bytes reserved at `index` before a `payloadLength`-byte payload into the frame
    /// header, moving the payload when the length needs the 4- or 10-byte form.
    mutating func fixWebSocketFrameHeader(at index: Int, opcode: WebSocketOpcode, payloadLength: Int) {
        let first = 0x80 | opcode.rawValue
        if payloadLength < 126 {
            self.setInteger(UInt16(first) << 8 | UInt16(payloadLength), at: index)
            return
        }
        let extra = payloadLength <= 0xFFFF ? 2 : 8
        self.writeRepeatingByte(0, count: extra)
        let payloadStart = index - self.readerIndex + 2
        self.withUnsafeMutableReadableBytes { bytes in
            let base = bytes.baseAddress!
            memmove(base + payloadStart + extra, base + payloadStart, payloadLength)
        }
        if extra == 2 {
            self.setInteger(UInt32(first) << 24 | UInt32(126) << 16 | UInt32(payloadLength), at: index)
        } else {
            self.setInteger(UInt16(first) << 8 | 127, at: index)
            self.setInteger(UInt64(payloadLength), at: index + 2)
        }
    }

    /// Writes a server frame header (never masked).
    @inlinable
    mutating func writeWebSocketFrameHeader(opcode: WebSocketOpcode, fin: Bool, rsv1: Bool, length: Int) {
        var first = opcode.rawValue
        if fin { first |= 0x80 }
        if rsv1 { first |= 0x40 }
        if length < 126 {
            self.writeInteger(UInt16(first) << 8 | UInt16(length))
        } else if length <= 0xFFFF {
            self.writeInteger(UInt32(first) << 24 | UInt32(126) << 16 | UInt32(length))
        } else {
            self.writeInteger(UInt16(first) << 8 | 127)
            self.writeInteger(UInt64(length))
        }
    }
}
