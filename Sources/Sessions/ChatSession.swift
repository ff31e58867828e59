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
    /// Generations this connection follows without having started them: resumed, in a watched
    /// conversation, or cancelled from here.
    private var follows: [String: Follow] = [:]
    /// Conversations this connection watches (`conversation.subscribe`).
    private var watching: [String: ConversationWatcher] = [:]

    private struct Follow {
        let follower: GenerationFollower
        /// Where to detach it; nil once the generation has finished.
        let generation: NIOLoopBound<ChatGeneration>?
        let ownerLoop: (any EventLoop)?
        let endOnly: Bool
        /// Set when following because of a watched conversation.
        let conversationID: String?
        let deltaPrefix: ByteBuffer
        var lastSeq: Int64 = 0
        var pendingFirstSeq: Int64?
        var pendingText = ""
    }

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
            case .success(.generationResume(let generationID, let afterSeq)):
                self.resume(generationID, afterSeq: afterSeq)
            case .success(.conversationSubscribe(let conversationID)):
                self.subscribe(conversationID)
            case .success(.conversationUnsubscribe(let conversationID)):
                self.unsubscribe(conversationID)
            case .success(.chatSend(let send)):
                self.start(send)
            }
        }
    }

    func connectionWritabilityChanged(_ connection: WebSocketConnection) {
        guard connection.isWritable else { return }
        for generation in self.generations.values { generation.writePending() }
        for id in Array(self.follows.keys) { self.writeFollowPending(id) }
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
        for (conversationID, watcher) in self.watching { self.application.hub.unwatch(conversationID, watcher) }
        self.watching = [:]
        for id in Array(self.follows.keys) { self.stopFollowing(id) }
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
        switch self.application.beginGeneration(send, output: self, sessionID: self.sessionID, on: connection.eventLoop) {
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
            return
        }
        guard let entry = self.application.hub.lookup(generationID) else {
            if !self.recentlyEnded.contains(generationID) {
                self.sendError(.notFound, "unknown generation \(generationID)", generationID: generationID)
            }
            return
        }
        // Another connection's generation: cancelling an ended one is a no-op; a running one is
        // cancelled on its loop, and this connection gets its `generation.done` too.
        guard case .running(let loop, let generation) = entry.state else { return }
        if self.follows[generationID] == nil {
            self.follow(entry, afterSeq: 0, endOnly: true, conversationID: nil)
        }
        loop.execute { generation.value.cancel() }
    }

    private func resume(_ generationID: String, afterSeq: Int64) {
        guard self.generations[generationID] == nil, self.follows[generationID] == nil else {
            self.sendError(.invalidMessage, "generation \(generationID) is already streaming on this connection", generationID: generationID)
            return
        }
        guard let entry = self.application.hub.lookup(generationID) else {
            self.sendError(.notFound, "unknown or expired generation \(generationID)", generationID: generationID)
            return
        }
        self.follow(entry, afterSeq: afterSeq, endOnly: false, conversationID: nil)
    }

    private func subscribe(_ conversationID: String) {
        guard let connection = self.connection else { return }
        guard self.application.conversations.exists(conversationID) else {
            self.sendError(.notFound, "unknown conversation \(conversationID)", conversationID: conversationID)
            return
        }
        if self.watching[conversationID] == nil {
            let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
            let watcher = ConversationWatcher(sessionID: self.sessionID, eventLoop: connection.eventLoop) { entry in
                session.value.watchedGenerationStarted(entry, conversationID: conversationID)
            }
            self.watching[conversationID] = watcher
            let running = self.application.hub.watch(conversationID, watcher)
            self.writeSubscription(subscribed: true, conversationID)
            for entry in running { self.watchedGenerationStarted(entry, conversationID: conversationID) }
        } else {
            self.writeSubscription(subscribed: true, conversationID)
        }
    }

    private func unsubscribe(_ conversationID: String) {
        if let watcher = self.watching.removeValue(forKey: conversationID) {
            self.application.hub.unwatch(conversationID, watcher)
            for (id, follow) in self.follows where follow.conversationID == conversationID { self.stopFollowing(id) }
        }
        self.writeSubscription(subscribed: false, conversationID)
    }

    private func writeSubscription(subscribed: Bool, _ conversationID: String) {
        guard let connection = self.connection else { return }
        connection.writeText { ServerMessageEncoder.conversationSubscription(subscribed: subscribed, conversationID: conversationID, into: &$0) }
        connection.flush()
    }

    private func watchedGenerationStarted(_ entry: GenerationHub.Entry, conversationID: String) {
        guard self.watching[conversationID] != nil, self.generations[entry.generationID] == nil,
              self.follows[entry.generationID] == nil
        else { return }
        self.follow(entry, afterSeq: 0, endOnly: false, conversationID: conversationID)
    }

    // MARK: Following generations of other connections

    private func follow(_ entry: GenerationHub.Entry, afterSeq: Int64, endOnly: Bool, conversationID: String?) {
        guard let connection = self.connection else { return }
        let generationID = entry.generationID
        let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
        let follower = GenerationFollower(eventLoop: connection.eventLoop) { update in
            session.value.receive(update, generationID: generationID)
        }
        var prefix = ByteBuffer()
        ServerMessageEncoder.generationDeltaPrefix(generationID: generationID, into: &prefix)
        switch entry.state {
        case .finished(let finished):
            self.follows[generationID] = Follow(
                follower: follower, generation: nil, ownerLoop: nil, endOnly: endOnly, conversationID: conversationID,
                deltaPrefix: prefix, lastSeq: afterSeq)
            follower.send(endOnly ? .endOnly(finished.end) : finished.replay(after: afterSeq))
        case .running(let loop, let generation):
            self.follows[generationID] = Follow(
                follower: follower, generation: generation, ownerLoop: loop, endOnly: endOnly, conversationID: conversationID,
                deltaPrefix: prefix, lastSeq: afterSeq)
            loop.execute { generation.value.attach(follower, afterSeq: afterSeq, endOnly: endOnly) }
        }
    }

    private func stopFollowing(_ generationID: String) {
        guard let follow = self.follows.removeValue(forKey: generationID) else { return }
        if let loop = follow.ownerLoop, let generation = follow.generation {
            let follower = follow.follower
            loop.execute { generation.value.detach(follower) }
        }
    }

    /// An update of a followed generation, on this connection's loop. Seqs at or below what was
    /// delivered already are dropped (a replay may overlap); the rest go out like the owner's
    /// deltas: merged while the connection is behind.
    private func receive(_ update: FollowUpdate, generationID: String) {
        guard var follow = self.follows[generationID] else { return }
        guard let connection = self.connection else {
            self.stopFollowing(generationID)
            return
        }
        if let started = update.started {
            connection.writeText { buffer in
                ServerMessageEncoder.generationStarted(
                    generationID: started.generationID, conversationID: started.conversationID, requestID: started.requestID,
                    model: started.model, into: &buffer)
            }
        }
        let fresh = update.dropping(through: follow.lastSeq)
        if fresh.hasText {
            // Updates continue where the last one ended; a gap would be a bug upstream of here,
            // and is delivered as it is rather than hidden.
            assert(fresh.firstSeq == follow.lastSeq + 1, "a follow update skipped seqs")
            if follow.pendingFirstSeq == nil {
                let prefix = follow.deltaPrefix
                let written = connection.writeTextIfWritable { buffer in
                    ServerMessageEncoder.generationDelta(
                        prefix: prefix, seq: fresh.lastSeq, firstSeq: fresh.firstSeq, text: Substring(fresh.text).utf8, into: &buffer)
                }
                if !written {
                    follow.pendingFirstSeq = fresh.firstSeq
                    follow.pendingText = fresh.text
                }
            } else {
                follow.pendingText += fresh.text
            }
            follow.lastSeq = fresh.lastSeq
        }
        self.follows[generationID] = follow
        if let end = update.end {
            self.writeFollowPending(generationID)
            connection.writeText { buffer in
                ServerMessageEncoder.generationDone(
                    generationID: generationID, seq: end.seq, finishReason: end.finishReason, usage: end.usage,
                    error: end.error.map { ($0.code, $0.message) }, into: &buffer)
            }
            self.follows[generationID] = nil
            self.recentlyEnded.insert(generationID)
        }
        connection.flush()
    }

    private func writeFollowPending(_ generationID: String) {
        guard var follow = self.follows[generationID], let firstSeq = follow.pendingFirstSeq, let connection = self.connection else { return }
        let prefix = follow.deltaPrefix
        let text = follow.pendingText
        let seq = follow.lastSeq
        connection.writeText { buffer in
            ServerMessageEncoder.generationDelta(prefix: prefix, seq: seq, firstSeq: firstSeq, text: Substring(text).utf8, into: &buffer)
        }
        follow.pendingFirstSeq = nil
        follow.pendingText = ""
        self.follows[generationID] = follow
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

    func sendError(
        _ code: ErrorCode, _ message: String, requestID: String? = nil, generationID: String? = nil,
        conversationID: String? = nil, earliestSeq: Int64? = nil, retryAfterMs: Int64? = nil
    ) {
        guard let connection = self.connection else { return }
        connection.writeText { buffer in
            ServerMessageEncoder.error(code: code, message: message, requestID: requestID, generationID: generationID,
                                       conversationID: conversationID, earliestSeq: earliestSeq, retryAfterMs: retryAfterMs, into: &buffer)
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
