/// One holder at a time, first come first served, without blocking a thread while waiting.
/// SQLiteStorage has one connection: two transactions must not interleave on it, and its
/// statements are separate `await`s, so an actor's reentrancy alone would not keep them apart.
actor SerialGate {
    private var held = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func acquire() async {
        guard self.held else {
            self.held = true
            return
        }
        await withCheckedContinuation { self.waiters.append($0) }
    }

    /// Hands the gate to the next waiter, if any (it stays held).
    func release() {
        if self.waiters.isEmpty {
            self.held = false
        } else {
            self.waiters.removeFirst().resume()
        }
    }
}
