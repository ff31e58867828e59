import Foundation
@testable import Sessions
import Testing

/// The session's expiry timer waits at most a bounded delay (and re-arms), so a token valid
/// for centuries cannot overflow it.
@Suite struct ExpiryDelayTests {
    @Test func theDelayIsBounded() {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        #expect(ChatSession.expiryDelay(until: now.addingTimeInterval(10), now: now) == .seconds(10))
        #expect(ChatSession.expiryDelay(until: now.addingTimeInterval(-10), now: now) == .zero)
        #expect(ChatSession.expiryDelay(until: Date(timeIntervalSince1970: 13_569_465_600), now: now) == ChatSession.maximumExpiryDelay)
        #expect(ChatSession.expiryDelay(until: Date(timeIntervalSince1970: 1e30), now: now) == ChatSession.maximumExpiryDelay)
        #expect(ChatSession.expiryDelay(until: .distantFuture, now: now) == ChatSession.maximumExpiryDelay)
        #expect(ChatSession.expiryDelay(until: Date(timeIntervalSince1970: .nan), now: now) == .zero)
    }
}
