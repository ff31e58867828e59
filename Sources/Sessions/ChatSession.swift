import Inference
import NIOCore
import SluiceProtocol
import WSServer

/// One client connection speaking `sluice.v1`. Lives on the connection's event loop; its
/// generations run on the same loop, so chunks reach the socket without a thread hop.
final class ChatSession: WebSocketConnectionDelegate, ChatOutput {
    private let application: ChatApplication
    private let sessionID = Identifier.make("sess_")
    private(set) var connection: WebSocketConnection?
    private var generations: [String: ChatGeneration] = [:]
    /// Ids of generations that ended lately, so a late cancel is a no-op rather than `not_found`.
    private var recentlyEnded = RecentSet(capacity: 256)

    init(application: ChatApplication) {
        self.application = application
    }

    var configuration: ChatConfiguration { self.application.configuration }

    func connectionOpened(_ connection: WebSocketConnection) {
        self.connection = connection
        connection.writeText { buffer in
            ServerMessageEncoder.sessionReady(
                sessionID: self.sessionID, instanceID: self.configuration.instanceID,
                heartbeatMs: self.configuration.heartbeatMs, model: self.application.defaultModel, into: &buffer)
        }
        connection.flush()
    }

    func connection(_ connection: WebSocketConnection, didReceive message: WebSocketMessage) {
        switch message {
        case .binary:
            self.sendError(.invalidMessage, "binary frames are not part of sluice.v1; send JSON text")
        case .text(let text):
            switch ClientMessageDecoder.decode(text, maxContentBytes: self.configuration.maxContentBytes) {
            case .failure(let violation):
                self.sendError(violation.code, violation.message, requestID: violation.requestID)
            case .success(.ping(let id)):
                connection.writeText { ServerMessageEncoder.pong(id: id, into: &$0) }
            case .success(.generationCancel(let generationID)):
                self.cancel(generationID)
            case .success(.chatSend(let send)):
                self.start(send)
            }
        }
    }

    func connectionWritabilityChanged(_ connection: WebSocketConnection) {
        guard connection.isWritable else { return }
        for generation in self.generations.values { generation.writePending() }
        connection.flush()
    }

    func connectionWillClose(_ connection: WebSocketConnection, code: WebSocketCloseCode) {
        // Drain: end running generations cleanly (`generation.done` cancelled) before Close 1012,
        // which also closes their upstream requests.
        if code == .serviceRestart || code == .goingAway {
            for generation in Array(self.generations.values) { generation.cancel() }
        }
    }

    func connectionClosed(_ connection: WebSocketConnection, code: WebSocketCloseCode) {
        self.connection = nil
        if self.configuration.cancelOnDisconnect {
            for generation in Array(self.generations.values) { generation.cancel() }
        }
        // Otherwise generations run to their end and are kept in the conversation.
    }

    // MARK: Messages

    private func start(_ send: ClientMessage.ChatSend) {
        guard self.generations.count < self.configuration.maxGenerationsPerConnection else {
            self.sendError(.overloaded, "at most \(self.configuration.maxGenerationsPerConnection) generations at once per connection",
                           requestID: send.requestID, retryAfterMs: 1000)
            return
        }
        guard let connection = self.connection else { return }
        switch self.application.beginGeneration(send, output: self, on: connection.eventLoop) {
        case .success(let generation):
            self.generations[generation.id] = generation
            generation.startUpstream()
        case .failure(let violation):
            self.sendError(violation.code, violation.message, requestID: violation.requestID)
        }
    }

    private func cancel(_ generationID: String) {
        if let generation = self.generations[generationID] {
            generation.cancel()
        } else if !self.recentlyEnded.contains(generationID) {
            self.sendError(.notFound, "unknown generation \(generationID)", generationID: generationID)
        }
    }

    // MARK: ChatOutput

    var isConnected: Bool { self.connection?.isOpen ?? false }
    var isWritable: Bool { self.connection?.isWritable ?? false }
    func writeMessage(_ encode: (inout ByteBuffer) -> Void) { self.connection?.writeText(encode) }
    func writeMessageIfWritable(_ encode: (inout ByteBuffer) -> Void) -> Bool {
        self.connection?.writeTextIfWritable(encode) ?? false
    }
    func flush() { self.connection?.flush() }

    func generationEnded(_ generation: ChatGeneration) {
        self.generations.removeValue(forKey: generation.id)
        self.recentlyEnded.insert(generation.id)
    }

    func generationFailedToStart(_ generation: ChatGeneration, error: InferenceError) {
        self.generations.removeValue(forKey: generation.id)
        self.sendError(error.code, error.message, requestID: generation.requestID,
                       retryAfterMs: ChatGeneration.retryAfterMs(for: error))
    }

    func sendError(_ code: ErrorCode, _ message: String, requestID: String? = nil, generationID: String? = nil, retryAfterMs: Int64? = nil) {
        guard let connection = self.connection else { return }
        connection.writeText { buffer in
            ServerMessageEncoder.error(code: code, message: message, requestID: requestID, generationID: generationID,
                                       retryAfterMs: retryAfterMs, into: &buffer)
        }
        connection.flush()
    }
}

/// A bounded set of recent strings (oldest forgotten first).
struct RecentSet {
    private var members: Set<String> = []
    private var order: [String] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func contains(_ member: String) -> Bool { self.members.contains(member) }

    mutating func insert(_ member: String) {
        guard self.members.insert(member).inserted else { return }
        if self.order.count < self.capacity {
            self.order.append(member)
        } else {
            self.members.remove(self.order[self.next])
            self.order[self.next] = member
            self.next = (self.next + 1) % self.capacity
        }
    }
}
