import Foundation
import Inference
import Logging
import NIOConcurrencyHelpers
import NIOPosix
@testable import Sessions
@testable import SluiceTestSupport
import Storage
import Testing

/// The OpenAI front door's usage on its way to `user_quotas`: the recorder's retries, bounds and
/// drain, and the quota holding the tokens until they are stored.
@Suite struct UsageRecorderTests {
    /// A storage keeping usage records like the real ones do (once per id, summed per user), with
    /// a quota limit per user, that fails `recordUsage` while told to.
    final class LedgerStorage: StubStorage {
        private struct State {
            var records: [String: UsageRecord] = [:]
            var limits: [String: Int] = [:]
            var failing = false
            /// Fail this many more attempts, then work (unless `failing`).
            var failuresLeft = 0
            var attempts = 0
            /// While set, a write waits here until `release()`.
            var holding = false
            var held: [CheckedContinuation<Void, Never>] = []
        }

        private let state = NIOLockedValueBox(State())

        var failing: Bool {
            get { self.state.withLockedValue { $0.failing } }
            set { self.state.withLockedValue { $0.failing = newValue } }
        }

        func hold() { self.state.withLockedValue { $0.holding = true } }
        func release() {
            let waiting = self.state.withLockedValue { state in
                state.holding = false
                defer { state.held = [] }
                return state.held
            }
            for continuation in waiting { continuation.resume() }
        }

        func failNext(_ attempts: Int) { self.state.withLockedValue { $0.failuresLeft = attempts } }
        func setLimit(_ limit: Int, for user: String) { self.state.withLockedValue { $0.limits[user] = limit } }
        var attempts: Int { self.state.withLockedValue { $0.attempts } }
        func used(by user: String) -> Int {
            self.state.withLockedValue { $0.records.values.filter { $0.userExternalID == user }.reduce(0) { $0 + $1.tokens } }
        }

        func recordUsage(_ records: [UsageRecord]) async throws(StorageError) -> Int {
            await withCheckedContinuation { continuation in
                let wait = self.state.withLockedValue { state in
                    state.attempts += 1
                    if state.holding { state.held.append(continuation) }
                    return state.holding
                }
                if !wait { continuation.resume() }
            }
            let failed = self.state.withLockedValue { state -> Bool in
                if state.failuresLeft > 0 {
                    state.failuresLeft -= 1
                    return true
                }
                guard !state.failing else { return true }
                for record in records where state.records[record.id] == nil { state.records[record.id] = record }
                return false
            }
            if failed { throw StorageError.unavailable("scripted outage") }
            return records.count
        }

        func quota(userExternalID: String) async throws(StorageError) -> QuotaRecord? {
            let limit = self.state.withLockedValue { $0.limits[userExternalID] }
            return QuotaRecord(tokensUsed: self.used(by: userExternalID), tokensLimit: limit, resetAt: nil)
        }
    }

    static let logger: Logger = {
        var logger = Logger(label: "test.usage")
        logger.logLevel = .critical
        return logger
    }()

    /// Fast retries, so that the tests wait for events, not for backoff.
    static func quick(capacity: Int = 100, giveUpAfter: Duration = .seconds(600), drainTimeout: Duration = .seconds(10)) -> UsageRecorder.Configuration {
        UsageRecorder.Configuration(
            capacity: capacity, initialBackoff: .milliseconds(5), maximumBackoff: .milliseconds(20), giveUpAfter: giveUpAfter,
            drainTimeout: drainTimeout)
    }

    static func record(_ id: String, _ tokens: Int = 10, user: String = "ann") -> UsageRecord {
        UsageRecord(id: id, userExternalID: user, tokens: tokens)
    }

    @Test(.timeLimit(.minutes(1)))
    func aFailedWriteIsRetriedUntilStoredAndSettledOnce() async throws {
        let storage = LedgerStorage()
        storage.failNext(2)
        let recorder = UsageRecorder(storage: storage, configuration: Self.quick(), logger: Self.logger)
        let settled = NIOLockedValueBox(0)
        #expect(recorder.record(Self.record("chatcmpl-1", 40)) { settled.withLockedValue { $0 += 1 } })
        try await eventually("the record is stored") { recorder.counters.stored == 1 }
        #expect(await recorder.flush(timeout: .seconds(5)))
        #expect(settled.withLockedValue { $0 } == 1)
        #expect(storage.attempts == 3 && recorder.counters.retries == 2)
        #expect(storage.used(by: "ann") == 40)
    }

    @Test(.timeLimit(.minutes(1)))
    func pastItsCapacityNewRecordsAreDroppedAndNeverSettled() async throws {
        let storage = LedgerStorage()
        storage.failing = true
        let recorder = UsageRecorder(storage: storage, configuration: Self.quick(capacity: 2), logger: Self.logger)
        let settled = NIOLockedValueBox<[String]>([])
        for id in ["a", "b"] {
            #expect(recorder.record(Self.record(id)) { settled.withLockedValue { $0.append(id) } })
        }
        #expect(!recorder.record(Self.record("c")) { settled.withLockedValue { $0.append("c") } })
        #expect(recorder.counters.droppedFull == 1 && recorder.counters.pending == 2)
        storage.failing = false
        try await eventually("the two are stored") { recorder.counters.stored == 2 }
        #expect(settled.withLockedValue { $0 }.sorted() == ["a", "b"])
        #expect(storage.used(by: "ann") == 20)
    }

    @Test(.timeLimit(.minutes(1)))
    func aRecordThatWaitedButWasNeverTriedIsNotGivenUp() async throws {
        // Found by CI on a loaded machine: a record older than giveUpAfter was dropped before its
        // first write (the writer was busy, or started late), as if it had been retried too long.
        let storage = LedgerStorage()
        storage.hold()
        let recorder = UsageRecorder(storage: storage, configuration: Self.quick(giveUpAfter: .milliseconds(50)), logger: Self.logger)
        #expect(recorder.record(Self.record("first")) {})
        try await eventually("the first write is under way") { storage.attempts == 1 }
        #expect(recorder.record(Self.record("second")) {})
        // The second record's age passing giveUpAfter is the condition itself, not an event to wait for.
        try await Task.sleep(for: .milliseconds(80))
        storage.release()
        try await eventually("both are stored") { recorder.counters.stored == 2 }
        #expect(recorder.counters.gaveUp == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func aRecordRetriedTooLongIsGivenUpAndSettled() async throws {
        let storage = LedgerStorage()
        storage.failing = true
        let recorder = UsageRecorder(storage: storage, configuration: Self.quick(giveUpAfter: .milliseconds(50)), logger: Self.logger)
        let settled = NIOLockedValueBox(0)
        #expect(recorder.record(Self.record("chatcmpl-1")) { settled.withLockedValue { $0 += 1 } })
        try await eventually("the record is given up") { settled.withLockedValue { $0 } == 1 }
        #expect(recorder.counters.gaveUp == 1 && recorder.counters.pending == 0 && recorder.counters.stored == 0)
        #expect(storage.attempts >= 1)
        // The writer stopped with the queue empty; a later record starts it again.
        storage.failing = false
        #expect(recorder.record(Self.record("chatcmpl-2")) { settled.withLockedValue { $0 += 1 } })
        try await eventually("the next one is stored") { recorder.counters.stored == 1 }
        #expect(settled.withLockedValue { $0 } == 2)
    }

    /// At shutdown the drain writes what waits, without waiting out a writer's backoff, then
    /// refuses more; what it cannot write in time is settled and counted as given up.
    @Test(.timeLimit(.minutes(1)))
    func theDrainWritesWhatIsLeftThenStops() async throws {
        let storage = LedgerStorage()
        storage.failNext(1)
        // After its failure the writer would sleep an hour.
        let configuration = UsageRecorder.Configuration(initialBackoff: .seconds(3600), maximumBackoff: .seconds(3600))
        let recorder = UsageRecorder(storage: storage, configuration: configuration, logger: Self.logger)
        let settled = NIOLockedValueBox(0)
        #expect(recorder.record(Self.record("chatcmpl-1", 7)) { settled.withLockedValue { $0 += 1 } })
        try await eventually("the first attempt failed") { recorder.counters.retries == 1 }
        await recorder.drain()
        #expect(recorder.counters.stored == 1 && settled.withLockedValue { $0 } == 1)
        #expect(storage.used(by: "ann") == 7)
        #expect(!recorder.record(Self.record("chatcmpl-2")) { settled.withLockedValue { $0 += 1 } })

        // A database that stays down: the drain ends at its deadline and lets go of the records.
        let down = LedgerStorage()
        down.failing = true
        let stuck = UsageRecorder(storage: down, configuration: Self.quick(drainTimeout: .milliseconds(100)), logger: Self.logger)
        let released = NIOLockedValueBox(0)
        for index in 0..<3 {
            #expect(stuck.record(Self.record("chatcmpl-\(index)")) { released.withLockedValue { $0 += 1 } })
        }
        await stuck.drain()
        #expect(released.withLockedValue { $0 } == 3)
        #expect(stuck.counters.gaveUp == 3 && stuck.counters.pending == 0)
    }

    /// Admission through the application, as the front door does it.
    static func admit(
        _ application: ChatApplication, maxTokens: Int
    ) async -> Result<GenerationAdmission, GenerationRefusal> {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return await withCheckedContinuation { continuation in
            // On the loop, as a responder does it.
            loop.execute {
                application.starter.admit(
                    user: "ann", address: "127.0.0.1", context: [ChatMessage(role: .user, content: "hi")], maxTokens: maxTokens, on: loop
                ) { continuation.resume(returning: $0) }
            }
        }
    }

    /// While the database takes no usage, what the front door's requests spent stays counted
    /// on this instance: the next request gets only what is left, then none; once the records
    /// are stored the reservation goes and the stored usage counts instead.
    @Test(.timeLimit(.minutes(1)))
    func usageNotStoredYetStillCountsAgainstTheQuota() async throws {
        let storage = LedgerStorage()
        storage.setLimit(100, for: "ann")
        storage.failing = true
        let recorder = UsageRecorder(storage: storage, configuration: Self.quick(), logger: Self.logger)
        let application = ChatApplication(
            configuration: ChatConfiguration(instanceID: "test"), engine: SimulatorEngine(),
            conversations: ConversationMemory(), persistence: Persistence(storage: storage, queue: nil, usage: recorder), logger: Self.logger)
        // "hi" is 4 prompt tokens by the gateway's estimate.
        let first = try #require(try? await Self.admit(application, maxTokens: 50).get())
        #expect(first.grant.maxTokens == 50)
        application.starter.settle(first, user: "ann", usedTokens: 54, recordingAs: "chatcmpl-1")
        let second = try #require(try? await Self.admit(application, maxTokens: 50).get())
        #expect(second.grant.maxTokens == 42, "100 - 54 used - 4 prompt")
        application.starter.settle(second, user: "ann", usedTokens: 46, recordingAs: "chatcmpl-2")
        guard case .failure(let refusal) = await Self.admit(application, maxTokens: 50) else {
            Issue.record("admitted with the quota spent")
            return
        }
        #expect(refusal.code == .quotaExceeded)
        #expect(application.quotas.reservedTokens(user: "ann") == 100)

        storage.failing = false
        try await eventually("the usage is stored and no longer held") {
            storage.used(by: "ann") == 100 && application.quotas.reservedTokens(user: "ann") == 0
        }
        guard case .failure = await Self.admit(application, maxTokens: 50) else {
            Issue.record("admitted after the usage was stored")
            return
        }
    }

    /// A record the recorder has no room for is not held either (nothing would release it).
    @Test(.timeLimit(.minutes(1)))
    func aDroppedRecordHoldsNothing() async throws {
        let storage = LedgerStorage()
        storage.setLimit(1_000, for: "ann")
        storage.failing = true
        let recorder = UsageRecorder(
            storage: storage, configuration: Self.quick(capacity: 1, drainTimeout: .milliseconds(100)), logger: Self.logger)
        let application = ChatApplication(
            configuration: ChatConfiguration(instanceID: "test"), engine: SimulatorEngine(),
            conversations: ConversationMemory(), persistence: Persistence(storage: storage, queue: nil, usage: recorder), logger: Self.logger)
        for id in ["chatcmpl-1", "chatcmpl-2"] {
            let admission = try #require(try? await Self.admit(application, maxTokens: 10).get())
            application.starter.settle(admission, user: "ann", usedTokens: 14, recordingAs: id)
        }
        #expect(recorder.counters.droppedFull == 1)
        #expect(application.quotas.reservedTokens(user: "ann") == 14)
        await recorder.drain()
        #expect(application.quotas.reservedTokens(user: "ann") == 0)
    }
}
