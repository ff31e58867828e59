import Foundation
import SluiceProtocol

/// Everything `sluice chat` decides, with no sockets, terminals or clocks: events in, actions
/// out. The NIO/terminal layer (`ChatClient`) only performs the actions, so every rule here is
/// unit-testable by feeding events.
///
/// One answer runs at a time. Lines typed while an answer streams (or piped in quickly) wait in
/// a queue and are sent in order, so `sluice chat < prompts.txt` works as a script.
public struct ChatClientStateMachine: Sendable {
    public struct Configuration: Sendable, Equatable {
        /// Sent as `max_tokens` with every `chat.send` when set.
        public var maxTokens: Int?
        /// Whether a person types at a terminal: then a `you> ` prompt is shown and the
        /// terminal's echo of Enter is assumed to have moved the cursor to a new line.
        public var interactive: Bool
        /// Shown in connection messages.
        public var serverURL: String

        public init(maxTokens: Int? = nil, interactive: Bool = true, serverURL: String = "") {
            self.maxTokens = maxTokens
            self.interactive = interactive
            self.serverURL = serverURL
        }
    }

    public enum Event: Equatable, Sendable {
        /// A line from stdin, without its newline.
        case lineEntered(String)
        /// Ctrl-C (SIGINT).
        case interrupt
        /// stdin reached its end (Ctrl-D at a terminal).
        case endOfInput
        /// One text frame from the server.
        case messageReceived(String)
        /// An established connection ended.
        case connectionLost
        /// A connection attempt failed before the WebSocket was open.
        case connectionFailed(reason: String)
    }

    public enum LineStyle: Equatable, Sendable {
        /// Banner and command output.
        case plain
        /// Status lines such as `[stop · 42 tokens]` (dim at a terminal).
        case status
        /// Errors and connection trouble (to stderr, red at a terminal).
        case error
    }

    public enum Action: Equatable, Sendable {
        /// Send one WebSocket text frame.
        case send(String)
        /// Write text to stdout as is (answer deltas, line breaks).
        case print(String)
        /// Write a whole line in a style.
        case printLine(String, LineStyle)
        /// Show the `you> ` prompt.
        case prompt
        /// Open a new connection after a delay (the old one is gone).
        case reconnect(after: Duration)
        /// Treat the current connection as lost if nothing arrives for this long.
        case watchSilence(limit: Duration)
        /// Close the connection (WebSocket Close) and exit with this status.
        case quit(exitCode: Int32)
    }

    enum Connection: Equatable {
        /// The first connection is being opened; failing it ends the program.
        case connecting
        /// `session.ready` arrived.
        case ready(instanceID: String)
        /// Lost; `attempt` counts failed reconnects so far (drives the backoff).
        case reconnecting(attempt: Int)

        var isReady: Bool {
            if case .ready = self { return true }
            return false
        }
    }

    enum Turn: Equatable {
        case idle
        /// `chat.send` went out; waiting for `generation.started`.
        case awaitingStart(requestID: String, cancelRequested: Bool)
        /// Deltas are arriving; `tokens` is the last `seq` seen (one per token).
        case streaming(generationID: String, cancelRequested: Bool, tokens: Int)
    }

    public let configuration: Configuration
    private(set) var connection: Connection = .connecting
    private(set) var turn: Turn = .idle
    public private(set) var conversationID: String?
    /// Lines that arrived while busy or disconnected, oldest first.
    private(set) var pendingLines: [String] = []
    private var quitWhenIdle = false
    private var quitting = false
    private var requestCounter = 0
    /// Whether our cursor sits at the start of a line, so async output never lands mid-line.
    private var atLineStart = true
    /// Whether `you> ` is on screen waiting for input (re-shown after async output).
    private var promptVisible = false

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Delays between reconnect attempts: 1, 2, 4, 8, 16, then 30 s.
    public static func reconnectDelay(attempt: Int) -> Duration {
        .seconds(min(30, 1 << min(max(attempt, 0), 5)))
    }

    /// The longest `heartbeat_ms` taken from a server's `session.ready` (an hour).
    static let maximumHeartbeatMs = 3_600_000

    public static let helpText = [
        "/new   start a new conversation",
        "/quit  quit (Ctrl-D at the prompt does too)",
        "/help  show this help",
        "Ctrl-C cancels a running answer; at the prompt it quits.",
    ]

    public mutating func handle(_ event: Event) -> [Action] {
        // After quitting nothing else may reach the screen or the socket.
        guard !self.quitting else { return [] }
        var actions: [Action] = []
        switch event {
        case .lineEntered(let line):
            self.lineEntered(line, into: &actions)
        case .interrupt:
            self.interrupt(into: &actions)
        case .endOfInput:
            self.quitWhenIdle = true
            self.continueIfIdle(into: &actions)
        case .messageReceived(let text):
            self.messageReceived(text, into: &actions)
        case .connectionLost:
            self.connectionLost(into: &actions)
        case .connectionFailed(let reason):
            self.connectionFailed(reason: reason, into: &actions)
        }
        return actions
    }

    // MARK: Input

    private mutating func lineEntered(_ line: String, into actions: inout [Action]) {
        if self.configuration.interactive {
            // The terminal echoed the Enter key.
            self.atLineStart = true
            self.promptVisible = false
        }
        // `/quit` must work while queued chat lines wait for a reconnect.
        if self.turn == .idle, line.trimmingCharacters(in: .whitespaces) == "/quit" {
            self.quit(exitCode: 0, into: &actions)
            return
        }
        self.pendingLines.append(line)
        self.continueIfIdle(into: &actions)
    }

    private mutating func interrupt(into actions: inout [Action]) {
        switch self.turn {
        case .idle:
            self.quit(exitCode: 0, into: &actions)
        case .awaitingStart(let requestID, cancelRequested: false):
            // No generation id yet: cancel as soon as `generation.started` names it.
            self.turn = .awaitingStart(requestID: requestID, cancelRequested: true)
            self.pendingLines.removeAll()
        case .streaming(let generationID, cancelRequested: false, let tokens):
            self.turn = .streaming(generationID: generationID, cancelRequested: true, tokens: tokens)
            self.pendingLines.removeAll()
            actions.append(.send(Self.cancelFrame(generationID: generationID)))
        case .awaitingStart(_, cancelRequested: true), .streaming(_, cancelRequested: true, _):
            // A second Ctrl-C: stop waiting for the server to confirm; later frames for that
            // generation are ignored because they no longer match `turn`.
            self.endLine(into: &actions)
            actions.append(.printLine("[abandoned]", .status))
            self.turn = .idle
            self.continueIfIdle(into: &actions)
        }
    }

    /// Runs queued lines while nothing is in flight; then quits (after end of input) or prompts.
    private mutating func continueIfIdle(into actions: inout [Action]) {
        while self.turn == .idle, !self.pendingLines.isEmpty {
            let line = self.pendingLines[0]
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("/") {
                self.pendingLines.removeFirst()
                self.command(trimmed, into: &actions)
                if self.quitting { return }
            } else if trimmed.isEmpty {
                self.pendingLines.removeFirst()
            } else if case .ready = self.connection {
                self.pendingLines.removeFirst()
                self.send(line, into: &actions)
            } else {
                // Kept until `session.ready`; say so only when a person is waiting.
                if case .reconnecting = self.connection, self.configuration.interactive {
                    self.endLine(into: &actions)
                    actions.append(.printLine("(not connected; will send after reconnecting)", .status))
                }
                break
            }
        }
        guard self.turn == .idle else { return }
        if self.quitWhenIdle, self.pendingLines.isEmpty {
            self.quit(exitCode: 0, into: &actions)
        } else {
            self.showPrompt(into: &actions)
        }
    }

    private mutating func command(_ command: String, into actions: inout [Action]) {
        self.endLine(into: &actions)
        switch command {
        case "/quit", "/exit":
            self.quit(exitCode: 0, into: &actions)
        case "/new":
            self.conversationID = nil
            actions.append(.printLine("(new conversation)", .status))
        case "/help":
            actions.append(contentsOf: Self.helpText.map { .printLine($0, .plain) })
        default:
            actions.append(.printLine("unknown command \(command) (try /help)", .error))
        }
    }

    private mutating func send(_ content: String, into actions: inout [Action]) {
        self.requestCounter += 1
        let requestID = "r\(self.requestCounter)"
        let send = ClientMessage.ChatSend(
            content: content, requestID: requestID, conversationID: self.conversationID, maxTokens: self.configuration.maxTokens)
        actions.append(.send(ClientMessageEncoder.string(.chatSend(send))))
        self.turn = .awaitingStart(requestID: requestID, cancelRequested: false)
    }

    // MARK: Server messages

    private mutating func messageReceived(_ text: String, into actions: inout [Action]) {
        guard let message = ServerMessageDecoder.decode(text) else {
            self.notice("error: unreadable message from server", .error, into: &actions)
            return
        }
        switch message {
        case .sessionReady(let instanceID, let model, let heartbeatMs):
            if let heartbeatMs, heartbeatMs > 0, !self.connection.isReady {
                // The server pings every heartbeat; two missed ones plus slack mean it is gone.
                // The server's number: bounded (an hour) before any arithmetic.
                actions.append(.watchSilence(limit: .milliseconds(2 * min(heartbeatMs, Self.maximumHeartbeatMs)) + .seconds(5)))
            }
            self.sessionReady(instanceID: instanceID, model: model, into: &actions)
        case .generationStarted(let generationID, let conversationID, let requestID):
            guard case .awaitingStart(let expected, let cancelRequested) = self.turn,
                  requestID == nil || requestID == expected else { return }
            self.conversationID = conversationID
            self.turn = .streaming(generationID: generationID, cancelRequested: cancelRequested, tokens: 0)
            if cancelRequested { actions.append(.send(Self.cancelFrame(generationID: generationID))) }
        case .generationDelta(let generationID, let seq, let text):
            guard case .streaming(generationID, let cancelRequested, _) = self.turn else { return }
            self.turn = .streaming(generationID: generationID, cancelRequested: cancelRequested, tokens: seq)
            guard !text.isEmpty else { return }
            actions.append(.print(text))
            self.atLineStart = text.hasSuffix("\n")
        case .generationDone(let generationID, let finishReason, let completionTokens, let error):
            guard case .streaming(generationID, _, let tokens) = self.turn else { return }
            self.endLine(into: &actions)
            actions.append(.printLine("[\(finishReason) · \(Self.tokens(completionTokens ?? tokens))]", .status))
            if let error { actions.append(.printLine("error: \(error.code): \(error.message)", .error)) }
            self.turn = .idle
            self.continueIfIdle(into: &actions)
        case .error(let code, let message, let requestID, let generationID):
            self.errorReceived(code: code, message: message, requestID: requestID, generationID: generationID, into: &actions)
        case .pong, .unknown:
            break
        }
    }

    private mutating func sessionReady(instanceID: String, model: String?, into actions: inout [Action]) {
        switch self.connection {
        case .connecting:
            var banner = "connected to \(self.configuration.serverURL) · instance \(instanceID)"
            if let model { banner += " · model \(model)" }
            self.notice(banner, .plain, into: &actions)
            if self.configuration.interactive {
                actions.append(.printLine("Type a message and press Enter; /help lists commands.", .status))
            }
        case .reconnecting:
            // Conversations live in the server's memory, so a fresh session cannot rely on
            // ours still being there: start over and say so.
            let hadConversation = self.conversationID != nil
            self.conversationID = nil
            self.notice(hadConversation ? "reconnected (new conversation)" : "reconnected", .status, into: &actions)
        case .ready:
            return
        }
        self.connection = .ready(instanceID: instanceID)
        self.continueIfIdle(into: &actions)
    }

    private mutating func errorReceived(
        code: String, message: String, requestID: String?, generationID: String?, into actions: inout [Action]
    ) {
        self.notice("error: \(code): \(message)", .error, into: &actions)
        // An error answering our `chat.send` (or naming nothing while one is pending) means no
        // generation will start: go back to the prompt instead of waiting forever.
        guard case .awaitingStart(let expected, _) = self.turn,
              requestID == expected || (requestID == nil && generationID == nil) else {
            self.showPromptIfIdle(into: &actions)
            return
        }
        self.turn = .idle
        if code == "not_found", self.conversationID != nil {
            self.conversationID = nil
            actions.append(.printLine("(new conversation)", .status))
        }
        self.continueIfIdle(into: &actions)
    }

    // MARK: Connection

    private mutating func connectionLost(into actions: inout [Action]) {
        if case .connecting = self.connection {
            self.connectionFailed(reason: "connection closed before the session was ready", into: &actions)
            return
        }
        self.endLine(into: &actions)
        if case .streaming(_, _, let tokens) = self.turn {
            actions.append(.printLine("[interrupted · \(Self.tokens(tokens))]", .status))
        }
        let interrupted = self.turn != .idle
        self.turn = .idle
        if self.quitWhenIdle, self.pendingLines.isEmpty {
            // Input is over and nothing waits to be sent: no point in reconnecting.
            actions.append(.printLine("connection lost", .error))
            self.quit(exitCode: interrupted ? 1 : 0, into: &actions)
            return
        }
        self.connection = .reconnecting(attempt: 0)
        let delay = Self.reconnectDelay(attempt: 0)
        actions.append(.printLine("connection lost; reconnecting in \(Self.seconds(delay))…", .error))
        actions.append(.reconnect(after: delay))
        self.continueIfIdle(into: &actions)
    }

    private mutating func connectionFailed(reason: String, into actions: inout [Action]) {
        switch self.connection {
        case .connecting:
            // Most likely a wrong URL or no server: fail fast rather than retry forever.
            self.notice("error: cannot connect to \(self.configuration.serverURL): \(reason)", .error, into: &actions)
            self.quit(exitCode: 1, into: &actions)
        case .reconnecting(let attempt):
            self.connection = .reconnecting(attempt: attempt + 1)
            let delay = Self.reconnectDelay(attempt: attempt + 1)
            self.notice("reconnect failed (\(reason)); retrying in \(Self.seconds(delay))…", .error, into: &actions)
            actions.append(.reconnect(after: delay))
            self.showPromptIfIdle(into: &actions)
        case .ready:
            self.connectionLost(into: &actions)
        }
    }

    // MARK: Output helpers

    private mutating func quit(exitCode: Int32, into actions: inout [Action]) {
        self.endLine(into: &actions)
        self.quitting = true
        self.pendingLines.removeAll()
        actions.append(.quit(exitCode: exitCode))
    }

    /// Moves to a fresh line if something (prompt, partial answer) is on the current one.
    private mutating func endLine(into actions: inout [Action]) {
        if !self.atLineStart { actions.append(.print("\n")) }
        self.atLineStart = true
        self.promptVisible = false
    }

    /// A line that may arrive at any time: kept off the prompt line, and the prompt is shown
    /// again afterwards if it was up.
    private mutating func notice(_ text: String, _ style: LineStyle, into actions: inout [Action]) {
        let hadPrompt = self.promptVisible
        self.endLine(into: &actions)
        actions.append(.printLine(text, style))
        if hadPrompt { self.showPromptIfIdle(into: &actions) }
    }

    private mutating func showPromptIfIdle(into actions: inout [Action]) {
        guard self.turn == .idle, self.pendingLines.isEmpty else { return }
        self.showPrompt(into: &actions)
    }

    private mutating func showPrompt(into actions: inout [Action]) {
        guard self.configuration.interactive, !self.promptVisible else { return }
        // Before the banner there is nothing to answer yet.
        if case .connecting = self.connection { return }
        self.endLine(into: &actions)
        actions.append(.prompt)
        self.atLineStart = false
        self.promptVisible = true
    }

    static func cancelFrame(generationID: String) -> String {
        ClientMessageEncoder.string(.generationCancel(generationID: generationID))
    }

    static func tokens(_ count: Int) -> String {
        count == 1 ? "1 token" : "\(count) tokens"
    }

    static func seconds(_ duration: Duration) -> String {
        "\(duration.components.seconds)s"
    }
}
