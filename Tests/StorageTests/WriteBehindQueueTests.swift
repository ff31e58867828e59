import Foundation
import NIOConcurrencyHelpers
import Testing
@testable import SluiceTestSupport
@testable import Storage

/// The queue on its own, in front of a storage that fails when told to.
@Suite struct WriteBehindQueueTests {
    @Test func refusesWhenFullAndKeepsRoomForReservedAnswers() async throws {
        let storage = ScriptedStorage()
        storage.failing = true
        let queue = WriteBehindQueue(storage: storage, configuration: .init(capacity: 4), logger: testLogger)
        let conversation = UUID()
        func message(_ role: MessageRole = .user) -> NewMessage {
            NewMessage(conversationID: conversation, userExternalID: "u", role: role, content: "x")
        }
        // Two generations: 2 queued + 2 reserved = full.
        #expect(queue.enqueue(message(), reservingFollowUps: 1))
        #expect(queue.enqueue(message(), reservingFollowUps: 1))
        #expect(!queue.enqueue(message()), "full: the new generation is refused")
        #expect(queue.counters.refusedFull == 1)
        // The running generations can still store their answers.
        queue.enqueueReserved(message(.assistant))
        queue.enqueueReserved(message(.assistant))
        #expect(queue.counters.pending == 4 && queue.counters.reserved == 0)
        #expect(!queue.enqueue(message()))

        // A generation that ends without an answer gives its room back.
        let roomy = WriteBehindQueue(storage: storage, configuration: .init(capacity: 2), logger: testLogger)
        #expect(roomy.enqueue(message(), reservingFollowUps: 1))
        #expect(!roomy.enqueue(message()))
        roomy.cancelReservation()
        #expect(roomy.enqueue(message()))
    }

    @Test func retriesTheSameBatchUntilItIsTaken() async throws {
        let storage = ScriptedStorage()
        storage.failing = true
        let queue = WriteBehindQueue(
            storage: storage,
            configuration: .init(batchSize: 3, initialBackoff: .milliseconds(5), maximumBackoff: .milliseconds(20)),
            logger: testLogger
        )
        let runner = Task { await queue.run() }
        defer { runner.cancel() }
        let messages = (0..<7).map { NewMessage(conversationID: UUID(), userExternalID: "u", role: .user, content: "\($0)") }
        for message in messages { #expect(queue.enqueue(message)) }

        // Wait for a few retries (bounded, not timed: a loaded machine may be slow).
        let deadline = ContinuousClock.now + .seconds(10)
        while queue.counters.retries < 3 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(queue.counters.retries >= 3)
        #expect(queue.counters.pending == 7)
        let attempts = storage.attempts
        #expect(Set(attempts.map { $0.map(\.id) }).count == 1, "every attempt is the same batch")
        #expect(attempts.first?.count == 3)

        storage.failing = false
        #expect(await queue.flush(timeout: .seconds(5)))
        #expect(storage.stored.map(\.id) == messages.map(\.id), "in order, each once")
        #expect(queue.counters.written == 7 && queue.counters.batches == 3)
    }

    @Test func finishDrainsAndReturns() async throws {
        let storage = ScriptedStorage()
        let queue = WriteBehindQueue(storage: storage, configuration: .init(drainTimeout: .seconds(5)), logger: testLogger)
        let conversation = UUID()
        #expect(queue.enqueue(NewMessage(conversationID: conversation, userExternalID: "u", role: .user, content: "q"), reservingFollowUps: 1))
        let runner = Task { await queue.run() }
        queue.finish()
        #expect(!queue.enqueue(NewMessage(conversationID: conversation, userExternalID: "u", role: .user, content: "late")))
        // A generation still running when the drain starts can store its answer. The drain is
        // under way once the question is written: the loop then waits for the reserved answer.
        try await eventually("the question is written") { queue.counters.written == 1 }
        #expect(storage.stored.map(\.content) == ["q"])
        queue.enqueueReserved(NewMessage(conversationID: conversation, userExternalID: "u", role: .assistant, content: "a"))
        await runner.value
        #expect(storage.stored.map(\.content) == ["q", "a"])
    }

    /// The drain returns (the time limit catches a hang) with the write still pending.
    @Test(.timeLimit(.minutes(15))) func aDrainGivesUpAtItsDeadline() async throws {
        let storage = ScriptedStorage()
        storage.failing = true
        let queue = WriteBehindQueue(
            storage: storage,
            configuration: .init(initialBackoff: .milliseconds(10), drainTimeout: .milliseconds(200)),
            logger: testLogger
        )
        #expect(queue.enqueue(NewMessage(conversationID: UUID(), userExternalID: "u", role: .user, content: "q")))
        let runner = Task { await queue.run() }
        queue.finish()
        await runner.value
        #expect(queue.counters.pending == 1)
    }
}

/// The journal as the queue drives it: what is accepted is recorded before the writer can take
/// it, what is written is removed, recovered messages are queued (beyond capacity) and written.
@Suite struct WriteBehindQueueJournalTests {
    final class RecordingJournal: WriteJournal {
        private let entries = NIOLockedValueBox<[String: NewMessage]>([:])
        private let log = NIOLockedValueBox<[String]>([])
        func recorded(_ messages: [NewMessage]) {
            self.entries.withLockedValue { entries in for message in messages { entries[message.content] = message } }
            self.log.withLockedValue { $0 += messages.map { "+" + $0.content } }
        }
        func written(_ messages: [NewMessage]) {
            self.entries.withLockedValue { entries in for message in messages { entries[message.content] = nil } }
            self.log.withLockedValue { $0 += messages.map { "-" + $0.content } }
        }
        func replace(with messages: [NewMessage]) {
            self.entries.withLockedValue { entries in
                entries = [:]
                for message in messages { entries[message.content] = message }
            }
        }
        /// An entry the journal kept by mistake (a removal that failed).
        func keepStale(_ message: NewMessage) { self.entries.withLockedValue { $0[message.content] = message } }
        var held: Set<String> { Set(self.entries.withLockedValue { $0.keys }) }
        var events: [String] { self.log.withLockedValue { $0 } }
    }

    @Test func theJournalHoldsExactlyWhatIsNotWrittenYet() async throws {
        let storage = ScriptedStorage()
        storage.failing = true
        let queue = WriteBehindQueue(
            storage: storage, configuration: .init(capacity: 2, initialBackoff: .milliseconds(5), maximumBackoff: .milliseconds(20)),
            logger: testLogger)
        let journal = RecordingJournal()
        queue.setJournal(journal)
        let conversation = UUID()
        #expect(queue.enqueue(NewMessage(conversationID: conversation, userExternalID: "u", role: .user, content: "q"), reservingFollowUps: 1))
        queue.enqueueReserved(NewMessage(conversationID: conversation, userExternalID: "u", role: .assistant, content: "a"))
        #expect(journal.held == ["q", "a"])
        // What a dead instance left: queued although the queue is full, and journaled here.
        let left = ["x", "y"].map { NewMessage(conversationID: UUID(), userExternalID: "v", role: .user, content: $0) }
        queue.enqueueRecovered(left)
        #expect(queue.counters.recovered == 2 && queue.counters.pending == 4)
        #expect(journal.held == ["q", "a", "x", "y"])
        // Made again from the queue (Redis came back): a stale entry goes, the queue stays.
        journal.keepStale(NewMessage(conversationID: conversation, userExternalID: "u", role: .user, content: "stale"))
        queue.rebuildJournal()
        #expect(journal.held == ["q", "a", "x", "y"])

        let runner = Task { await queue.run() }
        defer { runner.cancel() }
        storage.failing = false
        #expect(await queue.flush(timeout: .seconds(5)))
        #expect(storage.stored.map(\.content) == ["q", "a", "x", "y"])
        #expect(journal.held.isEmpty)
        // Every removal after its record.
        let events = journal.events
        for content in ["q", "a", "x", "y"] {
            let added = try #require(events.firstIndex(of: "+" + content))
            #expect(events.lastIndex(of: "-" + content).map { $0 > added } == true, "\(events)")
        }
    }
}

/// A storage that records what it is asked to append and fails while `failing` is set.
final class ScriptedStorage: StubConversationStore {
    private struct State {
        var failing = false
        var attempts: [[NewMessage]] = []
        var stored: [NewMessage] = []
    }

    private let state = NIOLockedValueBox(State())

    var failing: Bool {
        get { self.state.withLockedValue { $0.failing } }
        set { self.state.withLockedValue { $0.failing = newValue } }
    }

    var attempts: [[NewMessage]] { self.state.withLockedValue { $0.attempts } }
    var stored: [NewMessage] { self.state.withLockedValue { $0.stored } }

    func appendMessages(_ batch: [NewMessage]) async throws(StorageError) -> AppendResult {
        let failing = self.state.withLockedValue { state in
            state.attempts.append(batch)
            if !state.failing { state.stored += batch }
            return state.failing
        }
        if failing { throw StorageError.unavailable("scripted outage") }
        return AppendResult(inserted: batch.count)
    }
}
