import Foundation
import Logging
import NIOConcurrencyHelpers
import Policy
@testable import Sessions
import SluiceTestSupport
import Storage
import Testing

/// The quota guard while the database does not answer: chats go on unchecked (quotas catch up),
/// and without waiting the storage's own 10 s per chat — found by the chaos run, where time to
/// `generation.started` went from 0.2 s to 4–10 s during a PostgreSQL outage.
@Suite struct QuotaGuardOutageTests {
    /// A storage whose quota reads never answer (a database that accepted the connection and
    /// then went silent), counting them.
    final class SilentStorage: StubQuotaStore {
        let quotaReads = NIOLockedValueBox(0)
        func quota(userExternalID: String) async throws(StorageError) -> QuotaRecord? {
            self.quotaReads.withLockedValue { $0 += 1 }
            // Silent until cancelled, and then still late: as a request waiting for a pooled
            // connection that ignores cancellation.
            try? await Task.sleep(for: .seconds(3600))
            return QuotaRecord(tokensUsed: 0, tokensLimit: 1, resetAt: nil)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aSilentDatabaseLetsChatsGoOnAndIsNotAskedAgainAtOnce() async throws {
        let storage = SilentStorage()
        let guardian = QuotaGuard(quotas: storage, queue: nil, period: .hours(1), logger: Logger(label: "test"))
        // The first chat waits for the read's own deadline (not the hour the storage would take),
        // then goes on unchecked.
        let first = await guardian.admit(user: "uma", promptTokens: 10, grant: .unlimited(maxTokens: 100))
        #expect((try? first.get())?.0.maxTokens == 100)
        #expect(storage.quotaReads.withLockedValue { $0 } == 1)
        // The next ones, right after, do not ask the silent storage at all.
        for user in ["uma", "vic", "wes"] {
            let next = await guardian.admit(user: user, promptTokens: 10, grant: .unlimited(maxTokens: 100))
            #expect((try? next.get())?.0.maxTokens == 100)
        }
        #expect(storage.quotaReads.withLockedValue { $0 } == 1, "the storage was asked again during its outage")
        // Jobs too.
        #expect((try? await guardian.admitJob(user: "vic", tokens: 500).get()) != nil)
    }
}
