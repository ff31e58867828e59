import Logging
import Metrics
import NIOConcurrencyHelpers
import SluiceProtocol
import Storage

/// Writes the usage of generations that store no message (the OpenAI-compatible front door) to
/// the storage (`recordUsage`), so that it reaches `user_quotas.tokens_used` as a chat's usage
/// does with its answer.
///
/// `record` only queues (no database round trip on the caller's event loop); a task writes what
/// is queued, in batches, while there is any. A failed batch is tried again with exponential
/// backoff (`initialBackoff` doubling up to `maximumBackoff`): the storage counts each record once
/// by its id, so a retry after a lost reply adds nothing. Bounds: a record whose write failed and
/// that is still not stored `giveUpAfter` after it was queued is dropped (logged at error), and while `capacity` records
/// wait new ones are dropped (a warning at most every 10 s); both are counted in
/// `sluice_usage_records_dropped_total{reason="gave_up"|"full"}`. The `settled` closure of an
/// accepted record runs exactly once: when it is stored, given up, or left at shutdown.
///
/// Nothing needs to run for it to write; at shutdown `drain()` writes what is left (call it after
/// the server stopped taking requests and before the storage closes).
public final class UsageRecorder: Sendable {
    public struct Configuration: Sendable {
        /// Records waiting or being written, at most.
        public var capacity: Int
        public var batchSize: Int
        public var initialBackoff: Duration
        public var maximumBackoff: Duration
        /// How long a record is retried before it is dropped: far below `UsageRecord.retention`
        /// (48 h), which is what makes a late retry count once.
        public var giveUpAfter: Duration
        /// How long `drain()` keeps writing what is left.
        public var drainTimeout: Duration

        public init(
            capacity: Int = 100_000,
            batchSize: Int = 500,
            initialBackoff: Duration = .milliseconds(100),
            maximumBackoff: Duration = .seconds(30),
            giveUpAfter: Duration = .seconds(15 * 60),
            drainTimeout: Duration = .seconds(10)
        ) {
            self.capacity = max(1, capacity)
            self.batchSize = max(1, batchSize)
            self.initialBackoff = max(.zero, initialBackoff)
            self.maximumBackoff = max(self.initialBackoff, maximumBackoff)
            self.giveUpAfter = giveUpAfter
            self.drainTimeout = drainTimeout
        }
    }

    public struct Counters: Sendable, Hashable {
        /// Records accepted by `record`.
        public var accepted = 0
        /// Records the storage has taken (new, or already there from an attempt whose reply was lost).
        public var stored = 0
        /// Failed `recordUsage` attempts (each followed by another, or by giving up).
        public var retries = 0
        /// Records refused because `capacity` were waiting, or after `drain()`.
        public var droppedFull = 0
        /// Records dropped after `giveUpAfter`, or left when `drain()` ran out of time.
        public var gaveUp = 0
        /// Records waiting or being written.
        public var pending = 0
    }

    private struct Pending: Sendable {
        var record: UsageRecord
        var settled: @Sendable () -> Void
        var queuedAt: ContinuousClock.Instant
        /// Writes of it that failed: only a record that was tried is given up (a busy machine
        /// may start the writer late; that is no reason to drop a record).
        var failedAttempts = 0
    }

    private struct State {
        var queue: [Pending] = []
        /// The batch being written: still pending until the storage took it (or it is put back).
        var inFlight: [Pending] = []
        /// A writer is running (at most one at a time).
        var writing = false
        var writer: Task<Void, Never>?
        /// `drain()` began: it writes from now on, no new writer is started.
        var draining = false
        /// `drain()` ended: nothing is accepted any more.
        var stopped = false
        var lastFullWarning: ContinuousClock.Instant?
        var counters = Counters()

        var pending: Int { self.queue.count + self.inFlight.count }
    }

    public let configuration: Configuration
    private let storage: any QuotaStore
    private let logger: Logger
    private let state = NIOLockedValueBox(State())
    private let pendingGauge = Gauge(label: "sluice_usage_records_pending")
    private let droppedFull = Counter(label: "sluice_usage_records_dropped_total", dimensions: [("reason", "full")])
    private let droppedGaveUp = Counter(label: "sluice_usage_records_dropped_total", dimensions: [("reason", "gave_up")])
    private let writeFailures = Counter(label: "sluice_usage_record_write_failures_total")

    public init(storage: any QuotaStore, configuration: Configuration = Configuration(), logger: Logger) {
        self.storage = storage
        self.configuration = configuration
        self.logger = logger
    }

    public var counters: Counters {
        self.state.withLockedValue { state in
            var counters = state.counters
            counters.pending = state.pending
            return counters
        }
    }

    /// Queues `record`; `settled` runs once, when it is stored or given up. `false` when it was
    /// dropped instead (`capacity` records are waiting, or `drain()` has ended): then `settled`
    /// never runs.
    @discardableResult
    public func record(_ record: UsageRecord, settled: @escaping @Sendable () -> Void) -> Bool {
        let now = ContinuousClock.now
        let (accepted, warn, depth) = self.state.withLockedValue { state -> (Bool, Bool, Int) in
            guard !state.stopped, state.pending < self.configuration.capacity else {
                state.counters.droppedFull += 1
                let warn = state.lastFullWarning.map { now - $0 >= .seconds(10) } ?? true
                if warn { state.lastFullWarning = now }
                return (false, warn, state.pending)
            }
            state.queue.append(Pending(record: record, settled: settled, queuedAt: now))
            state.counters.accepted += 1
            if !state.writing && !state.draining {
                state.writing = true
                // Off the caller's thread (an event loop): the writer runs on the global executor.
                state.writer = Task { await self.writeWhileQueued(until: nil) }
            }
            return (true, false, state.pending)
        }
        self.pendingGauge.record(depth)
        if !accepted {
            self.droppedFull.increment()
            if warn {
                self.logger.warning("usage records dropped: too many wait for the storage (is the database down?)", metadata: [
                    "sluice.pending": "\(depth)", "sluice.dropped": "\(self.counters.droppedFull)"])
            }
        }
        return accepted
    }

    /// Waits until nothing is waiting or being written, at most `timeout`. `true` if so. (It
    /// polls every few milliseconds: a test helper, not a hot path.)
    public func flush(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if self.state.withLockedValue({ $0.pending == 0 }) { return true }
            guard ContinuousClock.now < deadline, !Task.isCancelled else { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// At shutdown: writes what is left, for at most `drainTimeout` (a writer waiting out a
    /// backoff is woken for it), then stops. What could not be written is dropped, logged at
    /// error; later records are refused.
    public func drain() async {
        let writer = self.state.withLockedValue { state in
            state.draining = true
            return state.writer
        }
        writer?.cancel()
        await writer?.value
        await self.writeWhileQueued(until: .now + self.configuration.drainTimeout)
        let left = self.state.withLockedValue { state in
            state.stopped = true
            let left = state.inFlight + state.queue
            state.inFlight = []
            state.queue = []
            state.counters.gaveUp += left.count
            return left
        }
        self.pendingGauge.record(0)
        guard !left.isEmpty else { return }
        self.droppedGaveUp.increment(by: left.count)
        self.logger.error("usage records not stored at shutdown; their tokens do not count against quotas", metadata: [
            "sluice.records": "\(left.count)", "sluice.tokens": "\(left.reduce(0) { $0.addingSaturating($1.record.tokens) })"])
        for pending in left { pending.settled() }
    }

    /// The next batch, after dropping the records retried for too long (into `expired`); nil
    /// (and the writer is done) when nothing is left, or when this writer must stop.
    private func nextBatch(expired: inout [Pending], draining: Bool) -> [Pending]? {
        let now = ContinuousClock.now
        let cancelled = Task.isCancelled
        return self.state.withLockedValue { state in
            // Oldest first: the ones to give up on are at the head (failed ones are put back there).
            let stale = state.queue.prefix { $0.failedAttempts > 0 && now - $0.queuedAt >= self.configuration.giveUpAfter }.count
            if stale > 0 {
                expired = Array(state.queue.prefix(stale))
                state.queue.removeFirst(stale)
                state.counters.gaveUp += stale
            }
            guard !state.queue.isEmpty, !cancelled, draining || !state.draining else {
                if !draining { state.writing = false }
                return nil
            }
            let count = min(state.queue.count, self.configuration.batchSize)
            state.inFlight = Array(state.queue.prefix(count))
            state.queue.removeFirst(count)
            return state.inFlight
        }
    }

    /// Writes batches until the queue is empty; with a `deadline` (the drain), not past it.
    private func writeWhileQueued(until deadline: ContinuousClock.Instant?) async {
        var backoff = self.configuration.initialBackoff
        var failures = 0
        while deadline.map({ ContinuousClock.now < $0 }) ?? true {
            var expired: [Pending] = []
            let batch = self.nextBatch(expired: &expired, draining: deadline != nil)
            if !expired.isEmpty {
                self.droppedGaveUp.increment(by: expired.count)
                self.logger.error("usage records dropped after retrying; their tokens do not count against quotas", metadata: [
                    "sluice.records": "\(expired.count)",
                    "sluice.tokens": "\(expired.reduce(0) { $0.addingSaturating($1.record.tokens) })"])
                for pending in expired { pending.settled() }
            }
            guard let batch else { return }
            do {
                try await self.storage.recordUsage(batch.map(\.record))
                let depth = self.state.withLockedValue { state in
                    state.inFlight = []
                    state.counters.stored += batch.count
                    return state.pending
                }
                self.pendingGauge.record(depth)
                if failures > 0 {
                    self.logger.notice("usage records stored after retries", metadata: ["sluice.failures": "\(failures)"])
                }
                failures = 0
                backoff = self.configuration.initialBackoff
                for pending in batch { pending.settled() }
            } catch {
                failures += 1
                self.writeFailures.increment()
                // Back at the head, oldest first: taken again (or given up) after the pause.
                self.state.withLockedValue { state in
                    for index in state.inFlight.indices { state.inFlight[index].failedAttempts += 1 }
                    state.queue.insert(contentsOf: state.inFlight, at: 0)
                    state.inFlight = []
                    state.counters.retries += 1
                }
                let metadata: Logger.Metadata = [
                    "sluice.error": "\(error)", "sluice.records": "\(batch.count)", "sluice.attempt": "\(failures)"]
                if !error.isRetryable {
                    self.logger.error("the storage refused usage records; retrying", metadata: metadata)
                } else if failures == 1 {
                    self.logger.warning("storing usage records failed; retrying", metadata: metadata)
                }
                var pause = backoff
                if let deadline { pause = min(pause, max(.zero, deadline - .now)) }
                do {
                    try await Task.sleep(for: pause)
                } catch {
                    // Cancelled (the drain takes over): leave the queue as it is.
                    self.state.withLockedValue { $0.writing = false }
                    return
                }
                backoff = min(backoff * 2, self.configuration.maximumBackoff)
            }
        }
    }
}
