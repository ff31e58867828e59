import Foundation
import Inference
import Jobs
import NIOCore
import Policy
import Tracing
import SluiceProtocol
import WSServer

/// One client connection speaking `sluice.v1`. Lives on the connection's event loop; its
/// generations run on the same loop, so chunks reach the socket without a thread hop.
final class ChatSession: WebSocketConnectionDelegate, GenerationRequester, SluiceMessageOutput {
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
        /// Where to detach it; nil once the generation has finished, or when it runs on
        /// another instance (`remote`).
        let generation: NIOLoopBound<ChatGeneration>?
        let ownerLoop: (any EventLoop)?
        var remote = false
        let endOnly: Bool
        /// Set when following because of a watched conversation.
        let conversationID: String?
        let deltaPrefix: ByteBuffer
        /// What was delivered, and what waits while the connection is behind.
        var merger: DeltaMerger
    }

    /// The connection's event loop, kept after the connection is gone.
    private let eventLoop: any EventLoop

    /// Who this connection belongs to: the authenticated user, or without authentication the
    /// `user` query parameter or `X-Sluice-User`, if said.
    private let identity: Identity?
    private var user: String? { self.identity?.userID }
    /// The client's address (the peer, or from `X-Forwarded-For` behind our proxies).
    private let address: String
    /// Messages this connection may send per second (bursts of twice that).
    private var messageBudget: TokenBucket?
    /// Dropped messages: past ten seconds' worth of them, the connection is closed (1008).
    private var floodBudget: TokenBucket?
    /// The last `rate_limited` error for dropped messages (at most one a second is sent).
    private var lastFloodError: NIODeadline?
    /// Closes the connection when its token expires.
    private var expiryTimer: Scheduled<Void>?
    /// Whose conversations it reads and writes: the user, or the shared anonymous one.
    private var userID: String { self.user ?? ConversationHistory.anonymous }

    /// The trace this connection's generations continue (the upgrade request's `traceparent`).
    private let traceParent: InstrumentationContext

    init(application: ChatApplication, eventLoop: any EventLoop, admitted: ChatPolicy.Admitted?, trace: InstrumentationContext) {
        self.traceParent = trace
        self.application = application
        self.eventLoop = eventLoop
        self.identity = admitted?.identity
        self.address = admitted?.address ?? "unknown"
        let perSecond = Double(application.policy.limiter.limits.messagesPerSecondPerConnection)
        if perSecond > 0 {
            self.messageBudget = TokenBucket(capacity: perSecond * 2, ratePerSecond: perSecond)
            self.floodBudget = TokenBucket(capacity: perSecond * 10, ratePerSecond: perSecond)
        }
    }

    /// Whether this message may be handled; a flood gets throttled errors, then Close 1008.
    private func withinMessageRate(_ connection: WebSocketConnection) -> Bool {
        guard var budget = self.messageBudget else { return true }
        let now = NIODeadline.now()
        let decision = budget.take(1, now: now)
        self.messageBudget = budget
        guard case .limited(let retryAfterMs) = decision else { return true }
        let refusal = LimitRefusal(scope: .connection, limit: .messages, retryAfterMs: retryAfterMs,
                                   message: "over \(self.application.policy.limiter.limits.messagesPerSecondPerConnection) messages per second; message dropped")
        self.application.policy.limiter.countRejection(refusal)
        if var flood = self.floodBudget {
            let allowed = flood.take(1, now: now).isAllowed
            self.floodBudget = flood
            if !allowed {
                self.application.logger.notice("closing a connection that keeps flooding", metadata: [
                    "sluice.session": "\(self.sessionID)", "sluice.address": "\(self.address)"])
                connection.close(code: .policyViolation, reason: "message rate exceeded")
                return false
            }
        }
        if self.lastFloodError.map({ now - $0 >= .seconds(1) }) ?? true {
            self.lastFloodError = now
            self.sendError(.rateLimited, refusal.message, retryAfterMs: retryAfterMs)
        }
        return false
    }

    var configuration: ChatConfiguration { self.application.configuration }

    func connectionOpened(_ connection: WebSocketConnection) {
        self.connection = connection
        if self.identity?.expiresAt != nil, self.application.policy.closeOnExpiry {
            self.armExpiryTimer()
        }
        self.application.logger.debug("session opened", metadata: ["sluice.session": "\(self.sessionID)", "sluice.user": "\(self.userID)"])
        if let user = self.user {
            self.application.presence.opened(user: user, sessionID: self.sessionID)
            self.application.sharedPresence?.presenceOpened(user: user, sessionID: self.sessionID)
        }
        if let jobs = self.application.jobs {
            // Job events for this user, from any worker, reach every connection of theirs.
            let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
            jobs.addListener(user: self.userID, id: ObjectIdentifier(self), eventLoop: connection.eventLoop) { json in
                session.value.writeRawMessage(json)
            }
        }
        connection.writeText { buffer in
            ServerMessageEncoder.sessionReady(
                sessionID: self.sessionID, instanceID: self.configuration.instanceID,
                heartbeatMs: self.configuration.heartbeatMs, model: self.application.defaultModel, into: &buffer)
        }
        connection.flush()
    }

    func connection(_ connection: WebSocketConnection, didReceive message: WebSocketMessage) {
        // Before any decoding: a flood of tiny frames costs as little as possible.
        guard self.withinMessageRate(connection) else { return }
        switch message {
        case .binary:
            self.sendError(.invalidMessage, "binary frames are not part of sluice.v1; send JSON text")
        case .text(let text):
            switch ClientMessageDecoder.decode(text, limits: self.configuration.requestLimits) {
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
            case .success(.conversationList(let page)):
                self.listConversations(page)
            case .success(.conversationHistory(let conversationID, let page)):
                self.conversationHistory(conversationID, page)
            case .success(.chatSend(let send)):
                self.start(send)
            case .success(.jobSubmit(let submit)):
                self.submitJob(submit)
            case .success(.jobCancel(let jobID, let requestID)):
                self.cancelJob(jobID, requestID: requestID)
            case .success(.jobGet(let jobID, let requestID)):
                self.getJob(jobID, requestID: requestID)
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
        guard code == .serviceRestart || code == .goingAway else { return }
        if self.application.generationFanOut.isShared {
            // Drain with hand-off: the generations go on here and stream through Redis; the
            // client reconnects to another instance and resumes them there.
            connection.writeText { ServerMessageEncoder.sessionDraining(retryAfterMs: 0, into: &$0) }
        } else {
            // Single node: nobody could resume them, so end them cleanly (`generation.done`
            // cancelled) before Close 1012, which also closes their upstream requests.
            for generation in Array(self.generations.values) { generation.cancel() }
        }
    }

    /// The expiry timer waits at most this long at a time, then re-arms: a token valid for
    /// centuries (its `exp` is the client's to choose) needs no delay past what a timer holds.
    static let maximumExpiryDelay: TimeAmount = .hours(24)

    /// How long the expiry timer waits now: until `expiresAt`, within 0...`maximumExpiryDelay`.
    static func expiryDelay(until expiresAt: Date, now: Date) -> TimeAmount {
        let seconds = expiresAt.timeIntervalSince(now)
        guard seconds > 0 else { return .zero }  // also NaN
        let maximum = Double(Self.maximumExpiryDelay.nanoseconds) / 1_000_000_000
        return .nanoseconds(Int64(saturating: min(seconds, maximum) * 1_000_000_000))
    }

    private func armExpiryTimer() {
        guard let expiresAt = self.identity?.expiresAt, let connection = self.connection else { return }
        let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
        self.expiryTimer = connection.eventLoop.scheduleTask(in: Self.expiryDelay(until: expiresAt, now: Date())) {
            session.value.credentialExpired()
        }
    }

    /// The token this connection was opened with has expired: say so, then Close 1008.
    private func credentialExpired() {
        self.expiryTimer = nil
        guard let connection = self.connection else { return }
        if let expiresAt = self.identity?.expiresAt, expiresAt > Date() {
            self.armExpiryTimer()  // a bounded wait ended before the token's time
            return
        }
        self.application.logger.notice("closing a connection whose token expired", metadata: [
            "sluice.session": "\(self.sessionID)", "sluice.user": "\(self.userID)"])
        self.sendError(.unauthorized, "token expired; reconnect with a new one")
        connection.close(code: .policyViolation, reason: "token expired")
    }

    func connectionClosed(_ connection: WebSocketConnection, code: WebSocketCloseCode) {
        self.connection = nil
        self.expiryTimer?.cancel()
        self.expiryTimer = nil
        self.application.jobs?.removeListener(user: self.userID, id: ObjectIdentifier(self))
        self.application.logger.debug("session closed", metadata: [
            "sluice.session": "\(self.sessionID)", "sluice.close_code": "\(code.rawValue)", "sluice.generations": "\(self.generations.count)",
        ])
        if let user = self.user {
            self.application.presence.closed(user: user, sessionID: self.sessionID)
            self.application.sharedPresence?.presenceClosed(user: user, sessionID: self.sessionID)
        }
        for (conversationID, watcher) in self.watching {
            self.application.hub.unwatch(conversationID, watcher)
            self.application.generationFanOut.unwatch(conversationID: conversationID, watcher: watcher)
        }
        self.watching = [:]
        for id in Array(self.follows.keys) { self.stopFollowing(id) }
        if self.configuration.cancelOnDisconnect {
            for generation in Array(self.generations.values) { generation.cancel() }
        }
        // Otherwise generations run to their end and are kept in the conversation.
    }

    // MARK: Messages

    private func start(_ send: ClientMessage.ChatSend) {
        if let refusal = self.generationLimitRefusal(requestID: send.requestID) {
            self.generationRefused(refusal)
            return
        }
        guard self.connection != nil else { return }
        let order = GenerationOrder(
            conversation: .stored(conversationID: send.conversationID, content: send.content), requestID: send.requestID,
            model: send.model, maxTokens: send.maxTokens, temperature: send.temperature, gatewayTools: send.tools)
        let caller = GenerationCaller(user: self.userID, address: self.address, sessionID: self.sessionID, trace: self.traceParent)
        self.application.starter.start(order, for: caller, output: self, on: self.eventLoop)
    }

    /// `overloaded` when this connection runs as many generations as it may.
    private func generationLimitRefusal(requestID: String?) -> GenerationRefusal? {
        let limit = self.configuration.maxGenerationsPerConnection
        guard self.generations.count >= limit else { return nil }
        return GenerationRefusal(
            code: .overloaded, message: "at most \(limit) generations at once per connection", retryAfterMs: 1000, requestID: requestID)
    }

    // MARK: History

    private func listConversations(_ page: ClientMessage.HistoryPage) {
        guard let connection = self.connection else { return }
        let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
        let history = self.application.history
        let user = self.userID
        Task {
            let result = await history.listConversations(user: user, page: page)
            session.eventLoop.execute {
                let session = session.value
                switch result {
                case .success(let (storedPage, listings)):
                    session.connection?.writeText { buffer in
                        ServerMessageEncoder.conversationListResult(
                            requestID: page.requestID, conversations: listings, next: storedPage.next?.token, into: &buffer)
                    }
                    session.connection?.flush()
                case .failure(let failure):
                    session.sendHistoryFailure(failure, requestID: page.requestID, conversationID: nil)
                }
            }
        }
    }

    private func conversationHistory(_ conversationID: String, _ page: ClientMessage.HistoryPage) {
        guard let connection = self.connection else { return }
        let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
        let history = self.application.history
        let user = self.userID
        Task {
            let result = await history.messages(conversationID: conversationID, user: user, page: page)
            session.eventLoop.execute {
                let session = session.value
                switch result {
                case .success(let (storedPage, listings)):
                    let canonical = UUID(uuidString: conversationID)?.uuidString.lowercased() ?? conversationID
                    session.connection?.writeText { buffer in
                        ServerMessageEncoder.conversationHistoryResult(
                            requestID: page.requestID, conversationID: canonical, messages: listings,
                            next: storedPage.next?.token, into: &buffer)
                    }
                    session.connection?.flush()
                case .failure(let failure):
                    session.sendHistoryFailure(failure, requestID: page.requestID, conversationID: conversationID)
                }
            }
        }
    }

    private func sendHistoryFailure(_ failure: HistoryFailure, requestID: String?, conversationID: String?) {
        let (code, message, retryAfterMs) = failure.wireError(conversationID: conversationID)
        self.sendError(code, message, requestID: requestID, conversationID: conversationID, retryAfterMs: retryAfterMs)
    }

    private func cancel(_ generationID: String) {
        if let generation = self.generations[generationID] {
            generation.cancel()
            return
        }
        if let entry = self.application.hub.lookup(generationID), entry.user == self.userID {
            // Another connection's generation here: cancelling an ended one is a no-op; a running
            // one is cancelled on its loop, and this connection gets its `generation.done` too.
            guard case .running(let loop, let generation) = entry.state else { return }
            if self.follows[generationID] == nil {
                self.followLocal(entry, afterSeq: 0, endOnly: true, conversationID: nil)
            }
            loop.execute { generation.value.cancel() }
            return
        }
        guard self.application.generationFanOut.isShared else {
            if !self.recentlyEnded.contains(generationID) {
                self.sendError(.notFound, "unknown generation \(generationID)", generationID: generationID)
            }
            return
        }
        // Owned by another instance: ask its owner, then follow the end (from the hash if it
        // came first), unless it had ended already (then the cancel is a no-op).
        guard let connection = self.connection else { return }
        let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
        let fanOut = self.application.generationFanOut
        let user = self.userID
        Task {
            let result = await fanOut.cancel(generationID: generationID, user: user)
            session.eventLoop.execute { session.value.remoteCancelAnswered(generationID, result) }
        }
    }

    private func remoteCancelAnswered(_ generationID: String, _ outcome: CancelOutcome) {
        switch outcome {
        case .sent:
            guard self.follows[generationID] == nil, self.connection != nil else { return }  // a follow brings the done
            let following = self.startRemoteFollow(generationID, afterSeq: 0, endOnly: true, conversationID: nil)
            let session = NIOLoopBound(self, eventLoop: self.eventLoop)
            following.whenSuccess { outcome in
                guard outcome != .following else { return }
                session.value.remoteFollowFailed(generationID, outcome, cancelling: true)
            }
        case .alreadyEnded:
            break
        case .notFound:
            if !self.recentlyEnded.contains(generationID) {
                self.sendError(.notFound, "unknown generation \(generationID)", generationID: generationID)
            }
        case .unavailable:
            self.sendError(.unavailable, "cannot reach the instance running \(generationID) now", generationID: generationID, retryAfterMs: 1000)
        }
    }

    private func resume(_ generationID: String, afterSeq: Int64) {
        guard self.generations[generationID] == nil, self.follows[generationID] == nil else {
            self.sendError(.invalidMessage, "generation \(generationID) is already streaming on this connection", generationID: generationID)
            return
        }
        self.application.metrics.resumes.increment()
        self.followAnywhere(generationID, afterSeq: afterSeq, conversationID: nil, reportNotFound: true)
    }

    /// Follows a generation of this instance (through the hub) or of another (through the fan-out).
    private func followAnywhere(_ generationID: String, afterSeq: Int64, conversationID: String?, reportNotFound: Bool) {
        if let entry = self.application.hub.lookup(generationID), entry.user == self.userID {
            self.followLocal(entry, afterSeq: afterSeq, endOnly: false, conversationID: conversationID)
            return
        }
        guard self.application.generationFanOut.isShared, let connection = self.connection else {
            if reportNotFound { self.sendError(.notFound, "unknown or expired generation \(generationID)", generationID: generationID) }
            return
        }
        let outcome = self.startRemoteFollow(generationID, afterSeq: afterSeq, endOnly: false, conversationID: conversationID)
        let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
        Task {
            let result = (try? await outcome.get()) ?? .unavailable
            guard result != .following else { return }
            session.eventLoop.execute {
                if result == .notFound && !reportNotFound {
                    session.value.stopFollowing(generationID)
                } else {
                    session.value.remoteFollowFailed(generationID, result, cancelling: false)
                }
            }
        }
    }

    private func remoteFollowFailed(_ generationID: String, _ outcome: FollowOutcome, cancelling: Bool) {
        self.follows[generationID] = nil
        switch outcome {
        case .following:
            break
        case .notFound:
            if !(cancelling && self.recentlyEnded.contains(generationID)) {
                self.sendError(.notFound, "unknown or expired generation \(generationID)", generationID: generationID)
            }
        case .gap(let earliestSeq):
            self.sendError(.resumeGap, "the history of \(generationID) starts at seq \(earliestSeq) now",
                           generationID: generationID, earliestSeq: earliestSeq)
        case .unavailable:
            self.sendError(.unavailable, "cannot reach the shared store now", generationID: generationID, retryAfterMs: 1000)
        }
    }

    private func subscribe(_ requested: String) {
        guard let connection = self.connection else { return }
        let conversationID = UUID(uuidString: requested).map { $0.uuidString.lowercased() } ?? requested
        if self.watching[conversationID] != nil {
            self.writeSubscription(subscribed: true, conversationID)
            return
        }
        let session = NIOLoopBound(self, eventLoop: connection.eventLoop)
        let watcher = ConversationWatcher(sessionID: self.sessionID, eventLoop: connection.eventLoop) { generationID in
            session.value.watchedGenerationStarted(generationID, conversationID: conversationID)
        }
        let application = self.application
        let user = self.userID
        let shared = application.generationFanOut.isShared
        // Held here (single node): answer at once.
        if !shared, let owner = application.history.memory.owner(of: conversationID) {
            guard owner == user else {
                self.sendError(.notFound, "unknown conversation \(conversationID)", conversationID: conversationID)
                return
            }
            self.watchLocally(conversationID, watcher)
            return
        }
        // Otherwise ask the shared cache or the storage whose it is; with Redis, watch here and
        // through the fan-out (the conversation's generations may run elsewhere).
        Task {
            switch await application.history.isVisible(conversationID, to: user) {
            case .found:
                break
            case .notFound:
                session.eventLoop.execute {
                    session.value.sendError(.notFound, "unknown conversation \(conversationID)", conversationID: conversationID)
                }
                return
            case .unavailable(let reason):
                session.eventLoop.execute {
                    session.value.sendError(.unavailable, reason, conversationID: conversationID, retryAfterMs: 1000)
                }
                return
            }
            guard shared else {
                session.eventLoop.execute {
                    guard session.value.connection != nil, session.value.watching[conversationID] == nil else { return }
                    session.value.watchLocally(conversationID, watcher)
                }
                return
            }
            let remote = await application.generationFanOut.watch(conversationID: conversationID, watcher: watcher)
            session.eventLoop.execute {
                let session = session.value
                guard case .success(let running) = remote else {
                    session.sendError(.unavailable, "cannot watch conversations now", conversationID: conversationID, retryAfterMs: 1000)
                    return
                }
                guard session.connection != nil else {
                    application.generationFanOut.unwatch(conversationID: conversationID, watcher: watcher)
                    return
                }
                session.watching[conversationID] = watcher
                let local = application.hub.watch(conversationID, watcher)
                session.writeSubscription(subscribed: true, conversationID)
                for id in Set(local.map(\.generationID) + running) {
                    session.watchedGenerationStarted(id, conversationID: conversationID)
                }
            }
        }
    }

    private func watchLocally(_ conversationID: String, _ watcher: ConversationWatcher) {
        self.watching[conversationID] = watcher
        let running = self.application.hub.watch(conversationID, watcher)
        self.writeSubscription(subscribed: true, conversationID)
        for entry in running { self.watchedGenerationStarted(entry.generationID, conversationID: conversationID) }
    }

    private func unsubscribe(_ requested: String) {
        let conversationID = UUID(uuidString: requested).map { $0.uuidString.lowercased() } ?? requested
        if let watcher = self.watching.removeValue(forKey: conversationID) {
            self.application.hub.unwatch(conversationID, watcher)
            self.application.generationFanOut.unwatch(conversationID: conversationID, watcher: watcher)
            for (id, follow) in self.follows where follow.conversationID == conversationID { self.stopFollowing(id) }
        }
        self.writeSubscription(subscribed: false, conversationID)
    }

    private func writeSubscription(subscribed: Bool, _ conversationID: String) {
        guard let connection = self.connection else { return }
        connection.writeText { ServerMessageEncoder.conversationSubscription(subscribed: subscribed, conversationID: conversationID, into: &$0) }
        connection.flush()
    }

    private func watchedGenerationStarted(_ generationID: String, conversationID: String) {
        guard self.watching[conversationID] != nil, self.generations[generationID] == nil,
              self.follows[generationID] == nil
        else { return }
        self.followAnywhere(generationID, afterSeq: 0, conversationID: conversationID, reportNotFound: false)
    }

    // MARK: Following generations of other connections

    private func makeFollower(_ generationID: String) -> GenerationFollower? {
        guard let connection = self.connection else { return nil }
        return self.makeFollower(generationID, on: connection.eventLoop)
    }

    private func makeFollower(_ generationID: String, on eventLoop: any EventLoop) -> GenerationFollower {
        let session = NIOLoopBound(self, eventLoop: eventLoop)
        return GenerationFollower(eventLoop: eventLoop) { update in
            session.value.receive(update, generationID: generationID)
        }
    }

    private static func deltaPrefix(_ generationID: String) -> ByteBuffer {
        var prefix = ByteBuffer()
        ServerMessageEncoder.generationDeltaPrefix(generationID: generationID, into: &prefix)
        return prefix
    }

    private func followLocal(_ entry: GenerationHub.Entry, afterSeq: Int64, endOnly: Bool, conversationID: String?) {
        let generationID = entry.generationID
        guard let follower = self.makeFollower(generationID) else { return }
        let prefix = Self.deltaPrefix(generationID)
        switch entry.state {
        case .finished(let finished):
            self.follows[generationID] = Follow(
                follower: follower, generation: nil, ownerLoop: nil, endOnly: endOnly, conversationID: conversationID,
                deltaPrefix: prefix, merger: DeltaMerger(after: afterSeq))
            follower.send(endOnly ? .endOnly(finished.end) : finished.replay(after: afterSeq))
        case .running(let loop, let generation):
            self.follows[generationID] = Follow(
                follower: follower, generation: generation, ownerLoop: loop, endOnly: endOnly, conversationID: conversationID,
                deltaPrefix: prefix, merger: DeltaMerger(after: afterSeq))
            loop.execute { generation.value.attach(follower, afterSeq: afterSeq, endOnly: endOnly) }
        }
    }

    /// Registers the follow and asks the fan-out; the outcome says whether it is on.
    private func startRemoteFollow(_ generationID: String, afterSeq: Int64, endOnly: Bool, conversationID: String?) -> EventLoopFuture<FollowOutcome> {
        let eventLoop = self.eventLoop
        let follower = self.makeFollower(generationID, on: eventLoop)
        var follow = Follow(
            follower: follower, generation: nil, ownerLoop: nil, endOnly: endOnly, conversationID: conversationID,
            deltaPrefix: Self.deltaPrefix(generationID), merger: DeltaMerger(after: afterSeq))
        follow.remote = true
        self.follows[generationID] = follow
        let fanOut = self.application.generationFanOut
        let promise = eventLoop.makePromise(of: FollowOutcome.self)
        let user = self.userID
        promise.completeWithTask { await fanOut.follow(generationID: generationID, user: user, afterSeq: afterSeq, endOnly: endOnly, follower: follower) }
        return promise.futureResult
    }

    private func stopFollowing(_ generationID: String) {
        guard let follow = self.follows.removeValue(forKey: generationID) else { return }
        if follow.remote {
            self.application.generationFanOut.unfollow(generationID: generationID, follower: follow.follower)
            return
        }
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
        if case let (fresh, contiguous)? = follow.merger.fresh(update) {
            // Updates continue where the last one ended; a gap would be a bug upstream of here,
            // and is delivered as it is rather than hidden.
            assert(contiguous, "a follow update skipped seqs")
            var written = false
            if follow.merger.mayWriteDirectly {
                let prefix = follow.deltaPrefix
                written = connection.writeTextIfWritable { buffer in
                    ServerMessageEncoder.generationDelta(
                        prefix: prefix, seq: fresh.lastSeq, firstSeq: fresh.firstSeq, text: Substring(fresh.text).utf8, into: &buffer)
                }
            }
            if !written { follow.merger.hold(firstSeq: fresh.firstSeq, lastSeq: fresh.lastSeq, text: fresh.text) }
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
        guard var follow = self.follows[generationID], let connection = self.connection, let held = follow.merger.takePending() else { return }
        let prefix = follow.deltaPrefix
        connection.writeText { buffer in
            ServerMessageEncoder.generationDelta(
                prefix: prefix, seq: held.lastSeq, firstSeq: held.firstSeq, text: Substring(held.text).utf8, into: &buffer)
        }
        self.follows[generationID] = follow
    }

    // MARK: GenerationRequester

    func readyToStart(_ order: GenerationOrder) -> GenerationStartCheck {
        guard self.connection != nil else { return .gone }
        // Counted again: a lookup that waited on Redis or the storage may have let others start.
        return self.generationLimitRefusal(requestID: order.requestID).map { .refused($0) } ?? .ready
    }

    func generationStarting(_ generation: ChatGeneration) {
        self.generations[generation.id] = generation
    }

    func generationRefused(_ refusal: GenerationRefusal) {
        self.sendError(refusal.code, refusal.message, requestID: refusal.requestID, retryAfterMs: refusal.retryAfterMs)
    }

    // MARK: GenerationOutput

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

    // MARK: Jobs

    /// A message that is already JSON (job events from the queue).
    func writeRawMessage(_ json: Substring) {
        guard let connection = self.connection else { return }
        connection.writeText { $0.writeSubstring(json) }
        connection.flush()
    }

    /// Runs a job request off the loop and answers on it.
    private func withJobs(requestID: String?, _ body: @escaping @Sendable (JobsGateway, String) async -> String) {
        guard let jobs = self.application.jobs else {
            self.sendError(.unavailable, "jobs need Redis (redis.url); this gateway runs without it", requestID: requestID)
            return
        }
        let user = self.userID
        let session = NIOLoopBound(self, eventLoop: self.eventLoop)
        let eventLoop = self.eventLoop
        Task {
            let json = await body(jobs, user)
            eventLoop.execute { session.value.writeRawMessage(Substring(json)) }
        }
    }

    private func submitJob(_ submit: ClientMessage.JobSubmit) {
        let application = self.application
        let address = self.address
        self.withJobs(requestID: submit.requestID) { _, user in
            switch await application.submitJob(submit, user: user, address: address) {
            case .success(let (record, created)):
                return JobEvent.accepted(record, requestID: submit.requestID, deduplicated: !created)
            case .failure(let failure):
                return Self.errorJSON(failure, requestID: submit.requestID)
            }
        }
    }

    private func cancelJob(_ jobID: String, requestID: String?) {
        self.withJobs(requestID: requestID) { jobs, user in
            switch await jobs.cancel(jobID, user: user) {
            case .success(.notFound):
                return Self.errorJSON(.init(code: .notFound, message: "unknown job \(jobID)"), requestID: requestID)
            case .success(.cancelled(let record)), .success(.requested(let record)), .success(.alreadyEnded(let record)):
                // `job.done` (CANCELLED) follows as an event once it is; this says where it stands now.
                return Self.jobStatus(record, requestID: requestID, inlineResultLimit: jobs.queue.configuration.inlineResultLimit)
            case .failure(let failure):
                return Self.errorJSON(failure, requestID: requestID)
            }
        }
    }

    private func getJob(_ jobID: String, requestID: String?) {
        self.withJobs(requestID: requestID) { jobs, user in
            switch await jobs.record(jobID, user: user) {
            case .success(let record?):
                return Self.jobStatus(record, requestID: requestID, inlineResultLimit: jobs.queue.configuration.inlineResultLimit)
            case .success(nil):
                return Self.errorJSON(.init(code: .notFound, message: "unknown job \(jobID)"), requestID: requestID)
            case .failure(let failure):
                return Self.errorJSON(failure, requestID: requestID)
            }
        }
    }

    /// `{"type":"job.status","job":{…},"request_id":…}`
    static func jobStatus(_ record: JobRecord, requestID: String?, inlineResultLimit: Int) -> String {
        var buffer = ByteBuffer()
        JobMessageEncoder.status(record.snapshot(inlineResultLimit: inlineResultLimit), requestID: requestID, into: &buffer)
        return String(buffer: buffer)
    }

    static func errorJSON(_ failure: JobsGateway.Failure, requestID: String?) -> String {
        var buffer = ByteBuffer()
        ServerMessageEncoder.error(code: failure.code, message: failure.message, requestID: requestID, retryAfterMs: failure.retryAfterMs, into: &buffer)
        return String(buffer: buffer)
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
