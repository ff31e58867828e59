/// Tests that start servers (redis-server, PostgreSQL, `sluice serve` processes, several
/// instances) run one at a time, and never beside the timing-sensitive tests (heartbeats,
/// close and handshake timeouts). On 2 cores those would otherwise be starved and fail for no
/// fault of the code. A reader/writer gate: heavy tests are writers, sensitive ones readers.
///
/// Swift Testing starts every test at once, so a test's `.timeLimit` also counts its wait at
/// this gate, behind every heavy test queued before it (minutes, in a full run). Tests that
/// pass the gate therefore take `.timeLimit(.minutes(15))`: a guard against a hang, not a
/// measure of speed (timings belong in loadtest/).
enum HeavyTests {
    @TaskLocal static var holding = false

    private actor Gate {
        private var writer = false
        private var readers = 0
        private var waiting: [(exclusive: Bool, continuation: CheckedContinuation<Void, Never>)] = []

        func acquire(exclusive: Bool) async {
            if self.canEnter(exclusive: exclusive) && self.waiting.isEmpty {
                self.enter(exclusive: exclusive)
                return
            }
            await withCheckedContinuation { self.waiting.append((exclusive, $0)) }
        }

        func release(exclusive: Bool) {
            if exclusive { self.writer = false } else { self.readers -= 1 }
            // First come, first served; readers queued together go in together.
            while let next = self.waiting.first, self.canEnter(exclusive: next.exclusive) {
                self.waiting.removeFirst()
                self.enter(exclusive: next.exclusive)
                next.continuation.resume()
            }
        }

        private func canEnter(exclusive: Bool) -> Bool {
            exclusive ? !self.writer && self.readers == 0 : !self.writer
        }

        private func enter(exclusive: Bool) {
            if exclusive { self.writer = true } else { self.readers += 1 }
        }
    }

    private static let gate = Gate()

    /// Runs `body` alone among heavy and sensitive tests (re-entrant: nested helpers share the turn).
    static func exclusively<T>(_ body: () async throws -> T) async throws -> T {
        try await Self.run(exclusive: true, body)
    }

    /// Runs a timing-sensitive test: beside other sensitive ones, never beside a heavy one.
    static func sensitive<T>(_ body: () async throws -> T) async throws -> T {
        try await Self.run(exclusive: false, body)
    }

    private static func run<T>(exclusive: Bool, _ body: () async throws -> T) async throws -> T {
        if Self.holding { return try await body() }
        await Self.gate.acquire(exclusive: exclusive)
        do {
            let result = try await Self.$holding.withValue(true) { try await body() }
            await Self.gate.release(exclusive: exclusive)
            return result
        } catch {
            await Self.gate.release(exclusive: exclusive)
            throw error
        }
    }
}

/// A condition that did not come true in time (the test fails with this description).
struct TimedOut: Error, CustomStringConvertible {
    var description: String
}

/// Polls `condition` every `poll` until it holds; throws `TimedOut` naming `what` after `timeout`.
func eventually(
    _ what: String, timeout: Duration = .seconds(10), poll: Duration = .milliseconds(20), _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: poll)
    }
    if try await condition() { return }
    throw TimedOut(description: "timed out after \(timeout) waiting for: \(what)")
}
