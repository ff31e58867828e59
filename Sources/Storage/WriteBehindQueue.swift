import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import ServiceLifecycle

/// A bounded queue of message writes in front of a `ConversationStore`: the chat path only
/// enqueues (no database round trip, no write per token), and `run()` writes in batches.
///
/// A batch that fails is retried, the same batch, with exponential backoff until it succeeds:
/// while the database is down nothing is lost as long as the queue has room, and since
/// `appendMessages` is idempotent a retry after a lost reply stores nothing twice. When the
/// queue is full `enqueue` returns `false`: refuse the new generation with a retryable error
/// rather than drop history. A batch the database keeps refusing (a bug, not an outage) is
/// retried forever too, logged at error level each time; the queue then fills and generations
/// are refused, which is loud rather than silent.
///
/// A generation writes twice: its user message when it starts and its assistant message when it
/// ends. `enqueue(_:reservingFollowUps: 1)` takes room for both at the start, so the end never
/// finds the queue full: `enqueueReserved(_:)` always succeeds (call `cancelReservation()` if the
/// generation ends with nothing to store).
///
/// A process killed with messages still queued would lose them; with a `WriteJournal` (with
/// Redis: `RedisWriteJournal`) every accepted message is also recorded outside the process until it
/// is written, and another instance writes what a dead one left (`enqueueRecovered`). The
/// storage's idempotence makes that safe even when the dead one had written some of them.
///
/// `run()` is a swift-service-lifecycle `Service`: on graceful shutdown (or `finish()`) it stops
/// accepting new messages (reserved ones still come in) and returns once everything is written or
/// `drainTimeout` has passed. Cancelling it stops at once. In a `ServiceGroup`, list it after the
/// storage so it stops first.
/// Where the queue records what it holds, outside the process (see `WriteBehindQueue`). Calls
/// come from any thread, must not block, and may fail silently (the journal is a safety net).
public protocol WriteJournal: Sendable {
    /// Accepted into the queue, not yet written.
    func recorded(_ messages: [NewMessage])
    /// Taken by the storage.
    func written(_ messages: [NewMessage])
    /// Holds exactly `messages` from now on (after it missed some records or removals).
    func replace(with messages: [NewMessage])
}

public final class WriteBehindQueue: Service, Sendable {
    public struct Configuration: Sendable {
        /// Messages queued, being written, or reserved, at most.
        public var capacity: Int
        public var batchSize: Int
        public var initialBackoff: Duration
        public var maximumBackoff: Duration
        /// How long a graceful shutdown keeps writing what is left.
        public var drainTimeout: Duration

        public init(
            capacity: Int = 10_000,
            batchSize: Int = 100,
            initialBackoff: Duration = .milliseconds(100),
            maximumBackoff: Duration = .seconds(5),
            drainTimeout: Duration = .seconds(10)
        ) {
            self.capacity = max(1, capacity)
            self.batchSize = max(1, batchSize)
            self.initialBackoff = initialBackoff
            self.maximumBackoff = maximumBackoff
            self.drainTimeout = drainTimeout
        }
    }

    public struct Counters: Sendable, Hashable {
        /// Messages accepted by `enqueue`/`enqueueReserved`.
        public var enqueued = 0
        /// Messages the storage has taken (stored now, already stored, or rejected as another
        /// user's conversation).
        public var written = 0
        /// Of `written`: not stored because the conversation belongs to another user.
        public var rejected = 0
        /// Failed `appendMessages` attempts (each followed by a retry of the same batch).
        public var retries = 0
        /// `enqueue` calls refused because the queue was full (or finishing).
        public var refusedFull = 0
        /// Messages queued or being written.
        public var pending = 0
        /// Room held for messages announced with `reservingFollowUps`.
        public var reserved = 0
        /// `appendMessages` calls that succeeded.
        public var batches = 0
        /// Messages taken over from a dead instance's journal (`enqueueRecovered`).
        public var recovered = 0
    }

    private struct State {
        var queue: [NewMessage] = []
        /// Index of the first message not yet taken (compacted as batches go).
        var head = 0
        /// The batch being written (its messages count as pending until it is taken).
        var inFlightBatch: [NewMessage] = []
        var inFlight: Int { self.inFlightBatch.count }
        var reserved = 0
        var finishing = false
        /// `run()` has returned: nothing will be written any more.
        var stopped = false
        var drainDeadline: ContinuousClock.Instant?
        var counters = Counters()

        var queued: Int { self.queue.count - self.head }
        var pending: Int { self.queued + self.inFlight }
    }

    public let configuration: Configuration
    private let storage: any ConversationStore
    private let logger: Logger
    private let state = NIOLockedValueBox(State())
    /// Messages queued or being written (`sluice_storage_queue_depth`), write time per batch, and
    /// failed attempts, for the operator's dashboards.
    private let depthGauge = Gauge(label: "sluice_storage_queue_depth")
    private let writeLatency = Timer(label: "sluice_storage_write_seconds")
    private let writeFailures = Counter(label: "sluice_storage_write_failures_total")
    private let refusals = Counter(label: "sluice_storage_queue_refusals_total")
    /// Wakes `run()` when there is something to do; one buffered element is enough.
    private let wakeUp = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    private let journal = NIOLockedValueBox<(any WriteJournal)?>(nil)

    public init(
        storage: any ConversationStore,
        configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "sluice.storage.queue")
    ) {
        self.storage = storage
        self.configuration = configuration
        self.logger = logger
    }

    /// Records every message accepted from now on in `journal` (and, once written, its removal).
    /// Its `recorded` is called under the queue's lock (before the writer can take the message),
    /// so it must only hand the work on.
    public func setJournal(_ journal: (any WriteJournal)?) {
        self.journal.withLockedValue { $0 = journal }
    }

    private var currentJournal: (any WriteJournal)? { self.journal.withLockedValue { $0 } }

    /// Makes the journal exactly what is queued or being written (it missed records or
    /// removals while Redis was unreachable), under the lock so that nothing written meanwhile
    /// is recorded after its removal. O(queue length).
    public func rebuildJournal() {
        guard let journal = self.currentJournal else { return }
        self.state.withLockedValue { state in
            journal.replace(with: state.inFlightBatch + state.queue[state.head...])
        }
    }

    /// Queues messages another instance accepted and could not write (it died): never refused,
    /// like reserved room, since they were acknowledged already. Writing them again is safe: the
    /// storage ignores an (id, created_at) it has.
    public func enqueueRecovered(_ messages: [NewMessage]) {
        guard !messages.isEmpty else { return }
        let journal = self.currentJournal
        let stopped = self.state.withLockedValue { state in
            guard !state.stopped else { return true }
            state.queue.append(contentsOf: messages)
            state.counters.enqueued += messages.count
            state.counters.recovered += messages.count
            journal?.recorded(messages)
            return false
        }
        if stopped {
            self.logger.error("recovered messages arrived after the write-behind queue stopped; they stay in the journal",
                              metadata: ["messages": "\(messages.count)"])
            return
        }
        self.logger.notice("writing messages a dead instance left", metadata: ["messages": "\(messages.count)"])
        self.wakeUp.continuation.yield()
    }

    public var counters: Counters {
        self.state.withLockedValue { state in
            var counters = state.counters
            counters.pending = state.pending
            counters.reserved = state.reserved
            return counters
        }
    }

    // MARK: Producers

    /// Queues `message` and holds room for `reservingFollowUps` more (see `enqueueReserved`).
    /// `false` (nothing queued, nothing held) when there is not room for all of them, or after
    /// `finish()`.
    public func enqueue(_ message: NewMessage, reservingFollowUps: Int = 0) -> Bool {
        let follow = max(0, reservingFollowUps)
        let journal = self.currentJournal
        let (accepted, depth) = self.state.withLockedValue { state in
            guard !state.finishing, state.pending + state.reserved + 1 + follow <= self.configuration.capacity else {
                state.counters.refusedFull += 1
                return (false, state.pending)
            }
            state.queue.append(message)
            state.reserved += follow
            state.counters.enqueued += 1
            // Under the lock: recorded before the writer can take it (and forget it).
            journal?.recorded([message])
            return (true, state.pending)
        }
        self.depthGauge.record(depth)
        if accepted { self.wakeUp.continuation.yield() } else { self.refusals.increment() }
        return accepted
    }

    /// Queues `message` in room held by an earlier `enqueue(_:reservingFollowUps:)`. Never
    /// refused: without a reservation it goes over capacity rather than lose history (logged).
    public func enqueueReserved(_ message: NewMessage) {
        let journal = self.currentJournal
        let (hadReservation, stopped) = self.state.withLockedValue { state in
            let had = state.reserved > 0
            if had { state.reserved -= 1 }
            state.queue.append(message)
            state.counters.enqueued += 1
            journal?.recorded([message])
            return (had, state.stopped)
        }
        if stopped {
            self.logger.error("message enqueued after the write-behind queue stopped; it will not be stored",
                              metadata: ["conversation": "\(message.conversationID)"])
        } else if !hadReservation {
            self.logger.warning("enqueueReserved without a reservation; queued over capacity")
        }
        self.wakeUp.continuation.yield()
    }

    /// Gives back room held for a follow-up that will not come.
    public func cancelReservation(_ count: Int = 1) {
        self.state.withLockedValue { $0.reserved = max(0, $0.reserved - count) }
    }

    /// The conversation's messages not yet written (queued or being written), oldest first:
    /// what a read from the storage does not see yet. O(queue length); for cache misses only.
    public func pendingMessages(conversationID: UUID) -> [NewMessage] {
        self.state.withLockedValue { state in
            state.inFlightBatch.filter { $0.conversationID == conversationID }
                + state.queue[state.head...].filter { $0.conversationID == conversationID }
        }
    }

    /// Waits until every message enqueued before this call has been written (the queue is
    /// first in, first out), at most `timeout`: a read after it sees this instance's writes.
    /// `true` if so. Polls every 2 ms: for history reads, not the token path.
    public func waitForEarlierWrites(timeout: Duration) async -> Bool {
        let target = self.state.withLockedValue { $0.counters.enqueued }
        let deadline = ContinuousClock.now + timeout
        while true {
            if self.state.withLockedValue({ $0.counters.written >= target }) { return true }
            guard ContinuousClock.now < deadline, !Task.isCancelled else { return false }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    // MARK: Lifecycle

    /// Stops accepting new messages (reserved ones still come in); `run()` returns once all is
    /// written or `drainTimeout` has passed.
    public func finish() {
        self.state.withLockedValue { state in
            guard !state.finishing else { return }
            state.finishing = true
            state.drainDeadline = .now + self.configuration.drainTimeout
        }
        self.wakeUp.continuation.yield()
    }

    /// Waits until nothing is queued or being written, at most `timeout`. `true` if so.
    /// (It polls every few milliseconds: a shutdown and test helper, not a hot path.)
    public func flush(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if self.state.withLockedValue({ $0.pending == 0 }) { return true }
            guard ContinuousClock.now < deadline, !Task.isCancelled else { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Writes batches until `finish()` (or a graceful shutdown) has drained the queue, or until
    /// cancelled. Call it once.
    public func run() async {
        await withGracefulShutdownHandler {
            await self.writeLoop()
        } onGracefulShutdown: {
            self.finish()
        }
        let (pending, reserved) = self.state.withLockedValue { state in
            state.stopped = true
            return (state.pending, state.reserved)
        }
        if pending > 0 || reserved > 0 {
            self.logger.error("write-behind queue stopped before everything was written",
                              metadata: ["messages": "\(pending)", "announced": "\(reserved)"])
        }
    }

    private enum Next {
        case batch([NewMessage])
        case wait
        /// Finishing with generations still holding reservations: look again shortly (their
        /// messages wake the loop too, but the drain deadline does not).
        case waitForReserved
        case done
    }

    private func writeLoop() async {
        var wakeUps = self.wakeUp.stream.makeAsyncIterator()
        while !Task.isCancelled {
            switch self.takeBatch() {
            case .done:
                return
            case .wait:
                // nil: cancelled.
                guard await wakeUps.next() != nil else { return }
            case .waitForReserved:
                do {
                    try await Task.sleep(for: .milliseconds(10))
                } catch {
                    return
                }
            case .batch(let batch):
                guard await self.write(batch) else { return }
            }
        }
    }

    private func takeBatch() -> Next {
        self.state.withLockedValue { state in
            if state.queued == 0 {
                guard state.finishing else { return .wait }
                let drained = state.reserved == 0 || Self.pastDeadline(state.drainDeadline)
                return drained ? .done : .waitForReserved
            }
            let end = min(state.queue.count, state.head + self.configuration.batchSize)
            let batch = Array(state.queue[state.head..<end])
            state.head = end
            state.inFlightBatch = batch
            if state.head == state.queue.count {
                state.queue.removeAll(keepingCapacity: true)
                state.head = 0
            } else if state.head > 1024 && state.head * 2 > state.queue.count {
                state.queue.removeFirst(state.head)
                state.head = 0
            }
            return .batch(batch)
        }
    }

    /// Writes `batch`, retrying until it is taken; `false` if the loop must stop (cancelled, or
    /// the drain deadline passed).
    private func write(_ batch: [NewMessage]) async -> Bool {
        var backoff = self.configuration.initialBackoff
        var failures = 0
        while true {
            do {
                let started = ContinuousClock.now
                let result = try await self.storage.appendMessages(batch)
                self.writeLatency.recordNanoseconds(Int64((ContinuousClock.now - started) / .nanoseconds(1)))
                let depth = self.state.withLockedValue { state in
                    state.inFlightBatch = []
                    state.counters.written += batch.count
                    state.counters.rejected += result.rejected
                    state.counters.batches += 1
                    return state.pending
                }
                self.depthGauge.record(depth)
                self.currentJournal?.written(batch)
                if failures > 0 {
                    self.logger.notice("storage write succeeded after retries", metadata: ["failures": "\(failures)"])
                }
                if result.rejected > 0 {
                    self.logger.warning("messages for another user's conversation were not stored", metadata: ["count": "\(result.rejected)"])
                }
                return true
            } catch {
                failures += 1
                self.writeFailures.increment()
                self.state.withLockedValue { $0.counters.retries += 1 }
                let metadata: Logger.Metadata = ["error": "\(error)", "messages": "\(batch.count)", "attempt": "\(failures)"]
                if error.isRetryable {
                    // The first failure of an outage is worth a line; the rest are noise.
                    if failures == 1 { self.logger.warning("storage write failed; retrying", metadata: metadata) }
                } else {
                    self.logger.error("storage refused a write; retrying", metadata: metadata)
                }
            }
            let deadline = self.state.withLockedValue { $0.drainDeadline }
            if Task.isCancelled || Self.pastDeadline(deadline) { return false }
            var sleep = backoff
            if let deadline { sleep = min(sleep, max(.zero, deadline - .now)) }
            do {
                try await Task.sleep(for: sleep)
            } catch {
                return false
            }
            backoff = min(backoff * 2, self.configuration.maximumBackoff)
        }
    }

    private static func pastDeadline(_ deadline: ContinuousClock.Instant?) -> Bool {
        deadline.map { ContinuousClock.now >= $0 } ?? false
    }
}
