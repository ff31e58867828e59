import ServiceLifecycle

/// In a `ServiceGroup`, a client lives until the group shuts down: `run()` waits for graceful
/// shutdown (or cancellation) and then closes the connection, so nobody shuts it down by hand
/// and the group's order decides who may still use it (put it before its users: it stops after).
extension RedisClient: Service {
    public func run() async throws {
        // Throws only on cancellation, which ends the wait the same way.
        try? await gracefulShutdown()
        await self.shutdown()
    }
}

extension RedisSubscriber: Service {
    public func run() async throws {
        try? await gracefulShutdown()
        await self.shutdown()
    }
}
