import Dispatch
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOWebSocket

/// `sluice chat`: an interactive (or scripted) client for a `sluice.v1` server.
///
/// Every input — stdin lines (read on their own thread, never on an event loop), SIGINT,
/// frames, connection ends, timers — becomes an event in one `AsyncStream`. A single loop owns
/// the `ChatClientStateMachine` and performs its actions, so there is no shared mutable state.
public enum ChatClient {
    public static let defaultURL = "ws://127.0.0.1:8080/v1/ws"

    /// Runs until the user quits; returns the process exit status. `bearerToken` (a JWT or an
    /// API key) goes in the handshake's `Authorization` header.
    public static func run(url urlString: String = Self.defaultURL, maxTokens: Int? = nil, bearerToken: String? = nil) async -> Int32 {
        let output = TerminalOutput()
        guard let url = WebSocketURL(urlString) else {
            output.printLine("error: \(urlString) is not a ws:// or wss:// URL", .error)
            return 64  // EX_USAGE
        }
        let sslContext: NIOSSLContext?
        do {
            sslContext = url.secure ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
        } catch {
            output.printLine("error: TLS setup failed: \(error)", .error)
            return 1
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let (events, continuation) = AsyncStream.makeStream(of: DriverEvent.self)
        let signals = Self.trapInterrupts(into: continuation)
        Self.readLines(into: continuation)

        var driver = Driver(
            url: url, bearerToken: bearerToken, sslContext: sslContext, group: group, events: continuation, output: output,
            machine: ChatClientStateMachine(configuration: .init(
                maxTokens: maxTokens, interactive: isatty(STDIN_FILENO) == 1, serverURL: urlString)))
        let (exitCode, clean) = await driver.run(events)

        signals.cancel()
        continuation.finish()
        // After a timeout a connect may still be in flight; the process is about to exit, and
        // shutting the loop down under it would only print NIO complaints.
        if clean { try? await group.shutdownGracefully() }
        return exitCode
    }

    /// Ctrl-C must not kill the process: it cancels an answer or quits cleanly.
    private static func trapInterrupts(into events: AsyncStream<DriverEvent>.Continuation) -> any DispatchSourceSignal {
        signal(SIGINT, SIG_IGN)  // The dispatch source still sees the signal.
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: DispatchQueue(label: "sluice.chat.sigint"))
        source.setEventHandler { events.yield(.machine(.interrupt)) }
        source.resume()
        return source
    }

    /// A blocking `readLine` loop on a dedicated thread; the process exits without joining it.
    private static func readLines(into events: AsyncStream<DriverEvent>.Continuation) {
        let thread = Thread {
            while let line = readLine(strippingNewline: true) {
                events.yield(.machine(.lineEntered(line)))
            }
            events.yield(.machine(.endOfInput))
        }
        thread.name = "sluice.chat.stdin"
        thread.start()
    }
}

/// Events for the driver loop. Connection events carry the attempt number (`epoch`) so a late
/// event from an abandoned connection cannot be mistaken for the current one.
enum DriverEvent: Sendable {
    case machine(ChatClientStateMachine.Event)
    case connected(epoch: Int, ChatSocket)
    case received(epoch: Int, String)
    case disconnected(epoch: Int)
    case connectFailed(epoch: Int, reason: String)
    case closeTimedOut
}

/// Owns the state machine and the current connection; lives in one task (`run`).
private struct Driver {
    /// The current connection attempt.
    enum Link {
        /// Nothing open or in progress.
        case none
        /// Waiting to connect, or connecting.
        case attempting
        case open(ChatSocket)
    }

    let url: WebSocketURL
    let bearerToken: String?
    let sslContext: NIOSSLContext?
    let group: any EventLoopGroup
    let events: AsyncStream<DriverEvent>.Continuation
    let output: TerminalOutput
    var machine: ChatClientStateMachine

    private var epoch = 0
    private var link = Link.none
    private var connectionTask: Task<Void, Never>?
    /// Set once the machine says quit; then only the connection's end is awaited.
    private var exitCode: Int32?

    init(url: WebSocketURL, bearerToken: String?, sslContext: NIOSSLContext?, group: any EventLoopGroup,
         events: AsyncStream<DriverEvent>.Continuation, output: TerminalOutput, machine: ChatClientStateMachine) {
        self.url = url
        self.bearerToken = bearerToken
        self.sslContext = sslContext
        self.group = group
        self.events = events
        self.output = output
        self.machine = machine
    }

    private var socket: ChatSocket? {
        if case .open(let socket) = self.link { return socket }
        return nil
    }

    /// The exit status, and whether every connection ended (so the event loops can be shut
    /// down without stranding a connect in flight).
    mutating func run(_ stream: AsyncStream<DriverEvent>) async -> (exitCode: Int32, clean: Bool) {
        self.startConnection(after: .zero)
        for await event in stream {
            let machineEvent: ChatClientStateMachine.Event?
            switch event {
            case .machine(let event):
                machineEvent = event
            case .connected(self.epoch, let socket):
                self.link = .open(socket)
                machineEvent = nil
            case .received(self.epoch, let text):
                machineEvent = .messageReceived(text)
            case .disconnected(self.epoch):
                self.link = .none
                machineEvent = .connectionLost
            case .connectFailed(self.epoch, let reason):
                self.link = .none
                machineEvent = .connectionFailed(reason: reason)
            case .connected(_, let stale):
                await stale.sendClose()
                machineEvent = nil
            case .closeTimedOut:
                if let exitCode = self.exitCode { return (exitCode, false) }
                machineEvent = nil
            case .received, .disconnected, .connectFailed:
                machineEvent = nil  // From an earlier connection.
            }
            if let exitCode = self.exitCode {
                // Quitting: the machine is done; wait for the connection to end (or the timer).
                if case .open(let socket) = self.link { await socket.sendClose() }
                if case .none = self.link { return (exitCode, true) }
                continue
            }
            if let machineEvent {
                let actions = self.machine.handle(machineEvent)
                await self.perform(actions)
            }
            if let exitCode = self.exitCode, case .none = self.link { return (exitCode, true) }
        }
        return (self.exitCode ?? 0, true)
    }

    private mutating func perform(_ actions: [ChatClientStateMachine.Action]) async {
        for action in actions {
            switch action {
            case .send(let text):
                // A failed write means the connection is going; its end arrives as an event.
                try? await self.socket?.sendText(text)
            case .print(let text):
                self.output.print(text)
            case .printLine(let text, let style):
                self.output.printLine(text, style)
            case .prompt:
                self.output.prompt()
            case .reconnect(let delay):
                self.startConnection(after: delay)
            case .watchSilence(let limit):
                self.socket?.closeIfSilent(for: limit)
            case .quit(let exitCode):
                self.exitCode = exitCode
                switch self.link {
                case .none:
                    break
                case .attempting:
                    self.connectionTask?.cancel()  // Ends a pending reconnect; a connect in flight reports back.
                case .open(let socket):
                    await socket.sendClose()  // The server's Close reply ends the connection.
                }
                let events = self.events
                Task {
                    try? await Task.sleep(for: .seconds(1))
                    events.yield(.closeTimedOut)
                }
            }
        }
    }

    /// One attempt: connect, then forward frames until the connection ends. Every attempt ends
    /// with exactly one `connectFailed` or `disconnected` event.
    private mutating func startConnection(after delay: Duration) {
        self.epoch += 1
        self.link = .attempting
        let (epoch, url, sslContext, group, events) = (self.epoch, self.url, self.sslContext, self.group, self.events)
        let bearerToken = self.bearerToken
        self.connectionTask = Task {
            if delay > .zero {
                do {
                    try await Task.sleep(for: delay)
                } catch {
                    events.yield(.connectFailed(epoch: epoch, reason: "cancelled"))
                    return
                }
            }
            let channel: NIOAsyncChannel<WebSocketFrame, WebSocketFrame>
            do {
                channel = try await ChatConnector.connect(to: url, bearerToken: bearerToken, sslContext: sslContext, group: group)
            } catch {
                events.yield(.connectFailed(epoch: epoch, reason: "\(error)"))
                return
            }
            if Task.isCancelled {
                try? await channel.channel.close()
                events.yield(.connectFailed(epoch: epoch, reason: "cancelled"))
                return
            }
            try? await channel.executeThenClose { inbound, outbound in
                let socket = ChatSocket(channel: channel.channel, outbound: outbound)
                events.yield(.connected(epoch: epoch, socket))
                var message = ByteBuffer()
                var assemblingText = false
                for try await frame in inbound {
                    switch frame.opcode {
                    case .text, .binary, .continuation:
                        if frame.opcode != .continuation {
                            message.clear()
                            assemblingText = frame.opcode == .text
                        }
                        var data = frame.unmaskedData
                        message.writeBuffer(&data)
                        guard message.readableBytes <= ChatConnector.maxFrameSize else { return }
                        if frame.fin, assemblingText {
                            events.yield(.received(epoch: epoch, String(buffer: message)))
                        }
                    case .ping:
                        try await socket.sendPong(frame.unmaskedData)
                    case .connectionClose:
                        // Answer a server-initiated close; if we started it, this is the reply.
                        await socket.sendClose()
                        return
                    default:
                        break
                    }
                }
            }
            events.yield(.disconnected(epoch: epoch))
        }
    }
}
