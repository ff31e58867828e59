/// Tests that start servers (redis-server, `sluice serve` processes, several instances) run one
/// at a time. On 2 cores, several of them at once starve the timing-sensitive tests that run
/// beside them (heartbeats, close timeouts), which then fail for no fault of the code.
enum HeavyTests {
    @TaskLocal static var holding = false

    private actor Gate {
        private var busy = false
        private var waiters: [CheckedContinuation<Void, Never>] = []

        func acquire() async {
            guard self.busy else {
                self.busy = true
                return
            }
            await withCheckedContinuation { self.waiters.append($0) }
        }

        func release() {
            if self.waiters.isEmpty {
                self.busy = false
            } else {
                self.waiters.removeFirst().resume()
            }
        }
    }

    private static let gate = Gate()

    /// Runs `body` alone among heavy tests (re-entrant: nested helpers share the turn).
    static func exclusively<T>(_ body: () async throws -> T) async throws -> T {
        if Self.holding { return try await body() }
        await Self.gate.acquire()
        do {
            let result = try await Self.$holding.withValue(true) { try await body() }
            await Self.gate.release()
            return result
        } catch {
            await Self.gate.release()
            throw error
        }
    }
}
