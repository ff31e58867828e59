import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceProtocol

/// How an upstream stream ends.
enum UpstreamStreamEnd: Equatable {
    case finish(FinishReason)
    case fail(InferenceError)
}

/// What one SSE event means to the generation, in delivery order: text, usage, end.
struct UpstreamStreamOutput {
    var text: Substring?
    var usage: (promptTokens: Int, completionTokens: Int)?
    /// Complete tool calls, delivered with the end.
    var toolCalls: [ToolCall]?
    var end: UpstreamStreamEnd?

    init(text: Substring? = nil, usage: (promptTokens: Int, completionTokens: Int)? = nil, end: UpstreamStreamEnd? = nil) {
        self.text = text
        self.usage = usage
        self.end = end
    }
}

/// An upstream's wire dialect: turns its SSE events into generation events. A plain struct per
/// engine; everything else (HTTP, SSE, timeouts, cancel) is shared.
protocol UpstreamStreamDecoder: Sendable {
    mutating func decode(_ event: SSEEvent) -> UpstreamStreamOutput
    /// The response body ended cleanly without `decode` having ended the stream.
    func endOfStream() -> UpstreamStreamEnd
}

/// The protocol logic of one streaming request, with no I/O: HTTP status, SSE parsing, the
/// dialect, timeouts. The owner feeds it channel events and carries out what it returns.
struct StreamingHTTPRequestStateMachine<Decoder: UpstreamStreamDecoder> {
    enum State {
        case connecting
        case awaitingHead
        case streaming
        case readingErrorBody(status: Int)
        /// An end was returned (or the request was cancelled): nothing more is reported.
        case ended
    }

    enum TimerAction {
        case rearm(NIODeadline)
        case end(UpstreamStreamEnd)
        case none
    }

    private var state: State = .connecting
    private var parser: SSEParser
    private var decoder: Decoder
    private var errorBody = ByteBuffer()
    private let timeouts: UpstreamTimeouts
    private var requestSentAt: NIODeadline = .distantPast
    /// When the last event arrived; nil before the first (the first-token timeout applies).
    private var lastEventAt: NIODeadline?
    /// Set by the first event when the between-tokens deadline comes before the armed one.
    private var earlierDeadline: NIODeadline?

    init(decoder: Decoder, timeouts: UpstreamTimeouts, maximumEventSize: Int) {
        self.decoder = decoder
        self.timeouts = timeouts
        self.parser = SSEParser(maximumEventSize: maximumEventSize)
    }

    /// Connected: returns when the timer should first fire, or nil if the request already ended.
    mutating func connected(now: NIODeadline) -> NIODeadline? {
        guard case .connecting = self.state else { return nil }
        self.state = .awaitingHead
        self.requestSentAt = now
        return now + self.timeouts.timeToFirstToken
    }

    mutating func connectFailed(_ error: any Error, endpoint: String) -> UpstreamStreamEnd? {
        guard case .connecting = self.state else { return nil }
        self.state = .ended
        return .fail(InferenceError(.unavailable, "cannot connect to \(endpoint): \(error)"))
    }

    mutating func receivedHead(status: Int) {
        guard case .awaitingHead = self.state else { return }
        if (200..<300).contains(status) {
            self.state = .streaming
        } else {
            self.state = .readingErrorBody(status: status)
        }
    }

    /// Body bytes; for a stream, `nextOutput` then yields the events they complete.
    mutating func receivedBody(_ bytes: ByteBuffer) {
        switch self.state {
        case .streaming:
            self.parser.append(bytes)
        case .readingErrorBody:
            // Bounded: an error page can be large, the message is at the start.
            var bytes = bytes
            let room = UpstreamErrorMessage.maximumBodySize - self.errorBody.readableBytes
            if room > 0, let slice = bytes.readSlice(length: min(room, bytes.readableBytes)) {
                self.errorBody.writeImmutableBuffer(slice)
            }
        case .connecting, .awaitingHead, .ended:
            break
        }
    }

    /// The next event's meaning, or nil when more bytes are needed (or the stream ended).
    mutating func nextOutput(now: NIODeadline) -> UpstreamStreamOutput? {
        guard case .streaming = self.state else { return nil }
        let event: SSEEvent
        do {
            guard let next = try self.parser.next() else { return nil }
            event = next
        } catch {
            self.state = .ended
            return UpstreamStreamOutput(
                end: .fail(InferenceError(.upstreamError(status: nil), "upstream event larger than \(self.maximumEventSize) bytes")))
        }
        if self.lastEventAt == nil {
            let deadline = now + self.timeouts.betweenTokens
            if deadline < self.requestSentAt + self.timeouts.timeToFirstToken { self.earlierDeadline = deadline }
        }
        self.lastEventAt = now
        let output = self.decoder.decode(event)
        if output.end != nil { self.state = .ended }
        return output
    }

    private var maximumEventSize: Int { self.parser.maximumEventSize }

    /// A deadline sooner than the armed timer's, once: the timer must move to it.
    mutating func takeEarlierDeadline() -> NIODeadline? {
        defer { self.earlierDeadline = nil }
        return self.earlierDeadline
    }

    /// The response is complete.
    mutating func receivedEnd() -> UpstreamStreamEnd? {
        switch self.state {
        case .streaming:
            self.state = .ended
            return self.decoder.endOfStream()
        case .readingErrorBody(let status):
            self.state = .ended
            return self.httpError(status: status)
        case .connecting, .awaitingHead, .ended:
            // An informational (1xx) response ends before the real one.
            return nil
        }
    }

    /// The connection closed, or broke (`error`), before the response was complete.
    mutating func connectionLost(error: (any Error)?) -> UpstreamStreamEnd? {
        let cause = error.map { ": \($0)" } ?? ""
        switch self.state {
        case .connecting, .ended:
            return nil
        case .awaitingHead:
            self.state = .ended
            if let error, error is NIOSSLError {
                // The TLS handshake comes before any response: a connect failure.
                return .fail(InferenceError(.unavailable, "TLS with the upstream failed\(cause)"))
            }
            return .fail(InferenceError(.upstreamError(status: nil), "upstream closed the connection before responding\(cause)"))
        case .streaming:
            self.state = .ended
            return .fail(InferenceError(.upstreamError(status: nil), "stream ended early\(cause)"))
        case .readingErrorBody(let status):
            self.state = .ended
            return self.httpError(status: status)
        }
    }

    mutating func timerFired(now: NIODeadline) -> TimerAction {
        switch self.state {
        case .awaitingHead, .streaming, .readingErrorBody:
            let deadline: NIODeadline
            let message: String
            if let lastEventAt = self.lastEventAt {
                deadline = lastEventAt + self.timeouts.betweenTokens
                message = "no token from the upstream for \(self.timeouts.betweenTokens.milliseconds)"
            } else {
                deadline = self.requestSentAt + self.timeouts.timeToFirstToken
                message = "no first token from the upstream within \(self.timeouts.timeToFirstToken.milliseconds)"
            }
            guard now >= deadline else { return .rearm(deadline) }
            self.state = .ended
            return .end(.fail(InferenceError(.timeout, message)))
        case .connecting, .ended:
            return .none
        }
    }

    mutating func cancel() {
        self.state = .ended
    }

    private func httpError(status: Int) -> UpstreamStreamEnd {
        let message = UpstreamErrorMessage.from(body: self.errorBody)
        return .fail(InferenceError(.upstreamError(status: status), "upstream returned HTTP \(status): \(message)"))
    }
}

/// One generation over one HTTP/1.1 connection whose response is an SSE stream: the
/// `GenerationHandle`. Lives on its event loop; the channel's handler forwards to it.
///
/// The sink is held strongly until the terminal event or `cancel()`, which set it to nil: that
/// guarantees no call after either and ends the sink ↔ handle cycle. (Not weak: an object that
/// is referenced weakly pays the runtime's slow side-table path on every retain and release,
/// and the sink is retained per token.)
final class StreamingHTTPRequest<Decoder: UpstreamStreamDecoder>: GenerationHandle {
    private let eventLoop: any EventLoop
    private let endpoint: UpstreamEndpoint
    private let head: HTTPRequestHead
    private let body: ByteBuffer
    private let connectTimeout: TimeAmount
    private var sink: (any GenerationSink)?
    private var stateMachine: StreamingHTTPRequestStateMachine<Decoder>
    /// The connected channel; nil before the connect completes and after the end.
    private var channel: (any Channel)?
    private var timer: Scheduled<Void>?
    /// The current read delivered text, so a batch end is due.
    private var producedInRead = false
    /// A connection was asked for (false when cancelled before the connect step ran).
    private(set) var connectAttempted = false

    init(
        endpoint: UpstreamEndpoint, head: HTTPRequestHead, body: ByteBuffer, decoder: Decoder,
        timeouts: UpstreamTimeouts, maximumEventSize: Int, eventLoop: any EventLoop, sink: any GenerationSink
    ) {
        self.eventLoop = eventLoop
        self.endpoint = endpoint
        self.head = head
        self.body = body
        self.connectTimeout = timeouts.connect
        self.sink = sink
        self.stateMachine = StreamingHTTPRequestStateMachine(decoder: decoder, timeouts: timeouts, maximumEventSize: maximumEventSize)
    }

    /// Over once the sink has heard its terminal event, or was cancelled.
    var isOver: Bool { self.sink == nil }

    func start() {
        self.eventLoop.preconditionInEventLoop()
        // Connect on the next tick: the sink never hears anything inside `startGeneration`.
        self.eventLoop.assumeIsolated().execute { self.connect() }
    }

    func cancel() {
        self.eventLoop.preconditionInEventLoop()
        self.stateMachine.cancel()
        self.tearDown()
    }

    // MARK: Connection

    private func connect() {
        guard !self.isOver else { return }
        self.connectAttempted = true
        let request = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.endpoint.connect(on: self.eventLoop, timeout: self.connectTimeout) { channel in
            try channel.pipeline.syncOperations.addHandler(StreamingHTTPRequestHandler(request: request.value))
        }.hop(to: self.eventLoop).assumeIsolated().whenComplete { result in
            self.connectCompleted(result)
        }
    }

    private func connectCompleted(_ result: Result<any Channel, any Error>) {
        switch result {
        case .success(let channel):
            guard !self.isOver, let firstDeadline = self.stateMachine.connected(now: .now()) else {
                channel.close(promise: nil)
                return
            }
            self.channel = channel
            channel.write(HTTPClientRequestPart.head(self.head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(self.body)), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            self.armTimer(at: firstDeadline)
            // It may have closed before we got hold of it; its inactive event was ignored then.
            if !channel.isActive { self.connectionLost(error: nil, on: channel) }
        case .failure(let error):
            if let end = self.stateMachine.connectFailed(error, endpoint: self.endpoint.hostHeader) {
                self.end(end)
            }
        }
    }

    // MARK: Channel events (from `StreamingHTTPRequestHandler`)

    func received(_ part: HTTPClientResponsePart, on channel: any Channel) {
        guard channel === self.channel else { return }
        switch part {
        case .head(let head):
            self.stateMachine.receivedHead(status: Int(head.status.code))
            if (200..<300).contains(Int(head.status.code)) { self.sink?.generationDidConnect() }
        case .body(let bytes):
            self.stateMachine.receivedBody(bytes)
            self.deliverEvents()
        case .end:
            if let end = self.stateMachine.receivedEnd() { self.end(end) }
        }
    }

    func readComplete(on channel: any Channel) {
        guard channel === self.channel, self.producedInRead else { return }
        self.producedInRead = false
        self.sink?.generationDidEndBatch()
    }

    func connectionLost(error: (any Error)?, on channel: any Channel) {
        guard channel === self.channel else { return }
        if let end = self.stateMachine.connectionLost(error: error) { self.end(end) }
    }

    private func deliverEvents() {
        // One clock read per body part, not per event.
        let now = NIODeadline.now()
        while true {
            guard let sink = self.sink else {
                // Released without an end: stop the upstream instead of streaming into nothing.
                return self.tearDown()
            }
            guard let output = self.stateMachine.nextOutput(now: now) else {
                if let deadline = self.stateMachine.takeEarlierDeadline() {
                    self.timer?.cancel()
                    self.armTimer(at: deadline)
                }
                return
            }
            if let text = output.text, !text.isEmpty {
                self.producedInRead = true
                sink.generationDidProduce(text)
            }
            if let usage = output.usage {
                self.sink?.generationDidReportUsage(promptTokens: usage.promptTokens, completionTokens: usage.completionTokens)
            }
            if let calls = output.toolCalls, !calls.isEmpty { self.sink?.generationDidRequestToolCalls(calls) }
            if let end = output.end { return self.end(end) }
        }
    }

    // MARK: Ending

    /// Delivers the terminal event once: the batch so far is flushed first, as after every read.
    private func end(_ end: UpstreamStreamEnd) {
        if self.producedInRead {
            self.producedInRead = false
            self.sink?.generationDidEndBatch()
        }
        // Cancelled during that flush: `tearDown` already ran and the sink is gone.
        guard let sink = self.sink else { return }
        self.tearDown()
        switch end {
        case .finish(let reason): sink.generationDidFinish(reason)
        case .fail(let error): sink.generationDidFail(error)
        }
    }

    /// Stops everything at once: closing the connection is what stops the upstream generating.
    private func tearDown() {
        self.sink = nil
        self.stateMachine.cancel()
        self.timer?.cancel()
        self.timer = nil
        if let channel = self.channel {
            self.channel = nil
            channel.close(promise: nil)
        }
    }

    /// One timer per timeout period, not per token: events only record their time, and the
    /// timer moves itself to the latest deadline when it fires early.
    private func armTimer(at deadline: NIODeadline) {
        self.timer = self.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.timer = nil
            switch self.stateMachine.timerFired(now: .now()) {
            case .rearm(let next): self.armTimer(at: next)
            case .end(let end): self.end(end)
            case .none: break
            }
        }
    }
}

@available(*, unavailable)
extension StreamingHTTPRequest: Sendable {}

/// Forwards a connection's events to its `StreamingHTTPRequest`; one per channel (Happy
/// Eyeballs may try several channels, and only the one that won is listened to).
final class StreamingHTTPRequestHandler<Decoder: UpstreamStreamDecoder>: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let request: StreamingHTTPRequest<Decoder>

    init(request: StreamingHTTPRequest<Decoder>) {
        self.request = request
    }

    func channelActive(context: ChannelHandlerContext) {
        // Cancelled while connecting: close without waiting for the connect to be reported.
        if self.request.isOver { context.close(promise: nil) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.request.received(self.unwrapInboundIn(data), on: context.channel)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.request.readComplete(on: context.channel)
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.request.connectionLost(error: nil, on: context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.request.connectionLost(error: error, on: context.channel)
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension StreamingHTTPRequestHandler: Sendable {}
