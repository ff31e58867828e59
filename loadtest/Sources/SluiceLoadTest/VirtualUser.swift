import Histogram
import NIOCore
import SluiceProtocol
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization

/// Where virtual users connect: `ws://host:port/path?query`.
struct Target: Sendable, CustomStringConvertible {
    var host: String
    var port: Int
    var requestURI: String

    init?(_ url: String) {
        guard url.hasPrefix("ws://") else { return nil }
        let rest = url.dropFirst("ws://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        self.requestURI = slash == rest.endIndex ? "/v1/ws" : String(rest[slash...])
        if let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]) {
            self.host = String(authority[..<colon])
            self.port = port
        } else {
            self.host = String(authority)
            self.port = 80
        }
        guard !self.host.isEmpty else { return nil }
    }

    var description: String { "ws://\(self.host):\(self.port)\(self.requestURI)" }
}

enum Scenario: String, CaseIterable, Sendable {
    case chat, cancel, resume, idle, echo, chaos
}

/// What every virtual user shares: the settings, the clock that ends the run, and the count of
/// answers still to take (with `--count`).
final class Run: Sendable {
    let scenario: Scenario
    let targets: [Target]
    let users: Int
    let endAt: NIODeadline
    let rampUp: TimeAmount
    let thinkTime: TimeAmount
    let maxTokens: Int?
    let prompt: String
    let cancelAfter: Int
    let disconnectAfter: Int
    let messageSize: Int
    let chaos: ChaosSettings
    /// When the run began (records give times relative to it).
    let startedAt: NIODeadline
    private let remaining: Atomic<Int>
    private let counted: Bool
    private let nextTarget = Atomic<Int>(0)
    private let finishedUsers = Atomic<Int>(0)
    let allFinished: EventLoopPromise<Void>

    init(
        scenario: Scenario, targets: [Target], users: Int, duration: TimeAmount, count: Int?, rampUp: TimeAmount,
        thinkTime: TimeAmount, maxTokens: Int?, prompt: String, cancelAfter: Int, disconnectAfter: Int, messageSize: Int,
        chaos: ChaosSettings = ChaosSettings(), allFinished: EventLoopPromise<Void>
    ) {
        self.chaos = chaos
        self.startedAt = .now()
        self.scenario = scenario
        self.targets = targets
        self.users = users
        self.endAt = .now() + duration
        self.rampUp = rampUp
        self.thinkTime = thinkTime
        self.maxTokens = maxTokens
        self.prompt = prompt
        self.cancelAfter = cancelAfter
        self.disconnectAfter = disconnectAfter
        self.messageSize = messageSize
        self.remaining = Atomic(count ?? Int.max)
        self.counted = count != nil
        self.allFinished = allFinished
    }

    /// Round-robin over the targets: each connection (and reconnection) goes to the next.
    func target() -> Target {
        self.targets[self.nextTarget.add(1, ordering: .relaxed).oldValue % self.targets.count]
    }

    /// Whether another request may start (time left and, with `--count`, a ticket taken).
    func takeTicket() -> Bool {
        guard NIODeadline.now() < self.endAt else { return false }
        guard self.counted else { return true }
        return self.remaining.subtract(1, ordering: .relaxed).newValue >= 0
    }

    var timeIsUp: Bool { NIODeadline.now() >= self.endAt }

    func userFinished() {
        if self.finishedUsers.add(1, ordering: .relaxed).newValue == self.users {
            self.allFinished.succeed(())
        }
    }
}

/// One event loop's measurements (a `Totals` of its own): touched only on that loop, merged at
/// the end. Fields are reached through `Totals`' key paths, modified in place (no copy of a
/// histogram per sample).
@dynamicMemberLookup
final class LoopStats {
    var totals = Totals()

    subscript<Value>(dynamicMember keyPath: WritableKeyPath<Totals, Value>) -> Value {
        get { self.totals[keyPath: keyPath] }
        _modify { yield &self.totals[keyPath: keyPath] }
    }

    func error(_ code: String) { self.totals.errors[code, default: 0] += 1 }
}

/// What a connection of the harness reports to (a virtual user of any scenario), on its loop.
protocol WebSocketUser: AnyObject {
    func connected(_ channel: any Channel)
    func received(_ payload: ByteBuffer, now: NIODeadline)
    func disconnected()
}

/// Forwards WebSocket frames to its user; answers pings.
final class UserFrameHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    private let user: any WebSocketUser

    init(user: any WebSocketUser) {
        self.user = user
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.user.connected(context.channel)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        if debugFrames { print("frame", frame.opcode, String(buffer: frame.unmaskedData)) }
        switch frame.opcode {
        case .text, .binary:
            self.user.received(frame.unmaskedData, now: .now())
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
            context.writeAndFlush(self.wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            context.close(promise: nil)
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.user.disconnected()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if debugFrames { print("error", error) }
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension UserFrameHandler: Sendable {}

/// Opens one `sluice.v1` WebSocket connection for a user, on the user's loop.
enum WebSocketDial {
    /// Connects to `target`; the user hears `connected`, then frames, then `disconnected`.
    /// `failed` runs (on `loop`) when no connection could be made.
    static func connect(
        _ target: Target, on loop: any EventLoop, user: any WebSocketUser, headers extraHeaders: [(String, String)] = [],
        failed: @escaping @Sendable () -> Void
    ) {
        let bound = NIOLoopBound(user, eventLoop: loop)
        let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 24, upgradePipelineHandler: { channel, _ in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(UserFrameHandler(user: bound.value))
            }
        })
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "\(target.host):\(target.port)")
        headers.add(name: "Sec-WebSocket-Protocol", value: "sluice.v1")
        headers.add(name: "Content-Length", value: "0")
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.requestURI, headers: headers)
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                let configuration: NIOHTTPClientUpgradeSendableConfiguration = (upgraders: [upgrader], completionHandler: { _ in })
                return channel.pipeline.addHTTPClientHandlers(leftOverBytesStrategy: .forwardBytes, withClientUpgrade: configuration).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(CloseOnError())
                    try channel.pipeline.syncOperations.addHandler(UpgradeRequester(head: head))
                }
            }
            .connect(host: target.host, port: target.port)
            .whenFailure { _ in failed() }
    }
}

/// One simulated client: connects, runs its scenario on its own event loop until the run
/// ends, checking every answer's seqs as it goes.
final class VirtualUser: WebSocketUser {
    let index: Int
    let loop: any EventLoop
    let run: Run
    let stats: LoopStats
    private var channel: (any Channel)?
    private var finished = false
    /// Closed on purpose (resume scenario): reconnect and resume instead of counting an error.
    private var reconnectToResume = false

    // The answer in progress.
    private var requestSentAt: NIODeadline?
    private var lastDeltaAt: NIODeadline?
    private var lastSeq: Int64 = 0
    private var generationID: Substring?
    private var deltasThisAnswer = 0
    private var cancelSentAt: NIODeadline?
    private var echoSentAt: NIODeadline?

    init(index: Int, loop: any EventLoop, run: Run, stats: LoopStats) {
        self.index = index
        self.loop = loop
        self.run = run
        self.stats = stats
    }

    func start() {
        let delay = self.run.users > 1 ? TimeAmount.nanoseconds(self.run.rampUp.nanoseconds * Int64(self.index) / Int64(self.run.users)) : .zero
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        self.loop.scheduleTask(in: delay) { bound.value.connect() }
    }

    // MARK: Connection

    private func connect() {
        guard !self.finished else { return }
        if self.run.timeIsUp && !self.reconnectToResume {
            self.finish()
            return
        }
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        WebSocketDial.connect(self.run.target(), on: self.loop, user: self) {
            bound.value.stats.connectFailures += 1
            // Try again shortly while the run lasts (a restarting instance, a full backlog).
            bound.eventLoop.scheduleTask(in: .milliseconds(100)) { bound.value.connect() }
        }
    }

    func connected(_ channel: any Channel) {
        self.channel = channel
        self.stats.connections += 1
        switch self.run.scenario {
        case .idle:
            let bound = NIOLoopBound(self, eventLoop: self.loop)
            self.loop.scheduleTask(deadline: self.run.endAt) { bound.value.finish() }
        case .echo:
            self.sendEcho()
        case .chat, .cancel, .resume, .chaos:
            break  // the first message is session.ready; the request goes out after it
        }
    }

    func disconnected() {
        self.channel = nil
        guard !self.finished else { return }
        if self.reconnectToResume {
            self.connect()
            return
        }
        // The server went away (a drain: Close 1012, a crash, a proxy): reconnect, as a real
        // client would, and resume the answer in progress from the last seq seen.
        self.stats.unexpectedDisconnects += 1
        if self.generationID != nil && (self.run.scenario == .chat || self.run.scenario == .resume) {
            self.reconnectToResume = true
            self.requestSentAt = nil
            self.lastDeltaAt = nil
            self.connect()
            return
        }
        if self.run.timeIsUp {
            self.finish()
            return
        }
        self.resetAnswer()
        self.connect()
    }

    private func finish() {
        guard !self.finished else { return }
        self.finished = true
        if let channel = self.channel {
            var data = channel.allocator.buffer(capacity: 2)
            data.write(webSocketErrorCode: .normalClosure)
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data), promise: nil)
            channel.close(promise: nil)
        }
        self.run.userFinished()
    }

    private func send(_ text: String) {
        guard let channel = self.channel else { return }
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: channel.allocator.buffer(string: text))
        channel.writeAndFlush(frame, promise: nil)
    }

    /// A `sluice.v1` message, encoded (and escaped) by `SluiceProtocol`, as the server decodes it.
    private func send(_ message: ClientMessage) {
        guard let channel = self.channel else { return }
        var buffer = channel.allocator.buffer(capacity: 128)
        ClientMessageEncoder.encode(message, into: &buffer)
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: buffer), promise: nil)
    }

    // MARK: Scenarios

    private func sendPrompt() {
        guard self.run.takeTicket() else {
            self.finish()
            return
        }
        self.resetAnswer()
        self.requestSentAt = .now()
        self.send(.chatSend(.init(content: "\(self.run.prompt) #\(self.index)", maxTokens: self.run.maxTokens)))
    }

    private func sendEcho() {
        guard self.run.takeTicket() else {
            self.finish()
            return
        }
        self.echoSentAt = .now()
        self.send(String(repeating: "x", count: self.run.messageSize))
    }

    private func resetAnswer() {
        self.requestSentAt = nil
        self.lastDeltaAt = nil
        self.lastSeq = 0
        self.generationID = nil
        self.deltasThisAnswer = 0
        self.cancelSentAt = nil
    }

    func received(_ payload: ByteBuffer, now: NIODeadline) {
        if self.run.scenario == .echo {
            if let sent = self.echoSentAt {
                _ = self.stats.echoRoundTrip.record(Self.micros(now - sent))
                self.stats.echoes += 1
            }
            self.afterThinkTime { $0.sendEcho() }
            return
        }
        let fields = ServerMessageScanner(payload)
        switch fields.type {
        case "session.ready":
            if self.reconnectToResume, let generationID = self.generationID {
                self.reconnectToResume = false
                self.stats.resumes += 1
                self.send(.generationResume(generationID: String(generationID), afterSeq: self.lastSeq))
            } else if self.run.scenario != .idle {
                self.sendPrompt()
            }
        case "generation.started":
            self.generationID = fields.string("generation_id")
        case "generation.delta":
            self.delta(fields, now: now)
        case "generation.done":
            self.done(fields, now: now)
        case "error":
            self.stats.error(fields.string("code").map(String.init) ?? "unknown")
            // A refused request (overloaded, unavailable…) or a resume that cannot be served
            // (not_found, resume_gap): the answer is over for this user; go on with the next.
            if self.generationID == nil || fields.string("generation_id") == self.generationID {
                self.resetAnswer()
                self.afterThinkTime { $0.sendPrompt() }
            }
        default:
            break
        }
    }

    private func delta(_ fields: ServerMessageScanner, now: NIODeadline) {
        guard let seq = fields.integer("seq") else {
            self.stats.seqViolations += 1
            return
        }
        let first = fields.integer("first_seq") ?? seq
        // Every seq exactly once, in order: a merged delta starts right after the last one.
        if first != self.lastSeq + 1 || seq < first { self.stats.seqViolations += 1 }
        if let last = self.lastDeltaAt {
            _ = self.stats.interTokenGap.record(Self.micros(now - last))
        } else if let sent = self.requestSentAt {
            _ = self.stats.timeToFirstToken.record(Self.micros(now - sent))
        }
        self.lastDeltaAt = now
        self.lastSeq = seq
        let count = Int(seq - first + 1)
        self.stats.deltas += count
        self.stats.deltaMessages += 1
        self.deltasThisAnswer += count
        switch self.run.scenario {
        case .cancel where self.cancelSentAt == nil && self.deltasThisAnswer >= self.run.cancelAfter:
            if let generationID = self.generationID {
                self.cancelSentAt = now
                self.send(.generationCancel(generationID: String(generationID)))
            }
        case .resume where self.deltasThisAnswer >= self.run.disconnectAfter && !self.reconnectToResume:
            // Drop the connection mid-answer; `disconnected` reconnects (to the next target)
            // and resumes after the last seq seen.
            self.deltasThisAnswer = Int.min / 2  // once per answer
            self.reconnectToResume = true
            self.requestSentAt = nil
            self.lastDeltaAt = nil
            self.channel?.close(promise: nil)
        default:
            break
        }
    }

    private func done(_ fields: ServerMessageScanner, now: NIODeadline) {
        let reason = fields.string("finish_reason").map(String.init) ?? "?"
        self.stats.finishReasons[reason, default: 0] += 1
        if let seq = fields.integer("seq"), seq != self.lastSeq { self.stats.seqViolations += 1 }
        if let code = fields.string("code") { self.stats.error(String(code)) }
        if let sent = self.requestSentAt { _ = self.stats.wholeAnswer.record(Self.micros(now - sent)) }
        if let cancelled = self.cancelSentAt { _ = self.stats.cancelToDone.record(Self.micros(now - cancelled)) }
        self.stats.answers += 1
        self.resetAnswer()
        self.afterThinkTime { $0.sendPrompt() }
    }

    private func afterThinkTime(_ next: @escaping (VirtualUser) -> Void) {
        guard self.run.thinkTime > .zero else {
            next(self)
            return
        }
        let bound = NIOLoopBound(self, eventLoop: self.loop)
        let action = NIOLoopBound(next, eventLoop: self.loop)
        self.loop.scheduleTask(in: self.run.thinkTime) { action.value(bound.value) }
    }

    static func micros(_ amount: TimeAmount) -> UInt64 {
        UInt64(max(0, amount.nanoseconds / 1000))
    }
}

@available(*, unavailable)
extension VirtualUser: Sendable {}

/// Sends the upgrade request once the HTTP handlers are in place.
final class UpgradeRequester: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let head: HTTPRequestHead
    private var sent = false

    init(head: HTTPRequestHead) {
        self.head = head
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.sent { self.sendRequest(context: context) }
        context.fireChannelActive()
    }

    private func sendRequest(context: ChannelHandlerContext) {
        self.sent = true
        context.write(self.wrapOutboundOut(.head(self.head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        // Its job is done; WebSocket frames must not pass through it after the upgrade.
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive && !self.sent { self.sendRequest(context: context) }
    }
}

/// Closes the connection on any error (a refused upgrade, a protocol error); passes reads on.
final class CloseOnError: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if debugFrames { print("error", error) }
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension CloseOnError: Sendable {}

@available(*, unavailable)
extension UpgradeRequester: Sendable {}

import Foundation
let debugFrames = ProcessInfo.processInfo.environment["LOADTEST_DEBUG"] != nil
