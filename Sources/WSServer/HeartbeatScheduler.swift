import NIOCore
import Synchronization

/// One timer per event loop drives the heartbeats of all its connections. A timer per
/// connection would cost a scheduled task (closure, promise) per idle connection, and NIO
/// cancels scheduled tasks by a linear scan of its queue, which grows with the connection count.
/// Deadlines are honoured to within one `tick`.
final class HeartbeatScheduler {
    private let eventLoop: any EventLoop
    private let tick: TimeAmount
    private var members: [WebSocketConnectionHandler] = []
    private var timer: Scheduled<Void>?

    init(eventLoop: any EventLoop, tick: TimeAmount) {
        self.eventLoop = eventLoop
        self.tick = tick
    }

    func add(_ handler: WebSocketConnectionHandler) {
        self.eventLoop.preconditionInEventLoop()
        handler.heartbeatSlot = self.members.count
        self.members.append(handler)
        if self.timer == nil { self.arm() }
    }

    func remove(_ handler: WebSocketConnectionHandler) {
        guard let slot = handler.heartbeatSlot, slot < self.members.count, self.members[slot] === handler else { return }
        // Swap-remove keeps removal O(1); the moved member learns its new slot.
        let last = self.members.removeLast()
        if last !== handler {
            self.members[slot] = last
            last.heartbeatSlot = slot
        }
        handler.heartbeatSlot = nil
        if self.members.isEmpty {
            self.timer?.cancel()
            self.timer = nil
        }
    }

    var count: Int { self.members.count }

    private func arm() {
        self.timer = self.eventLoop.assumeIsolated().scheduleTask(in: self.tick) { [self] in
            self.timer = nil
            self.fire()
            if !self.members.isEmpty && self.timer == nil { self.arm() }
        }
    }

    private func fire() {
        let now = self.eventLoop.now
        // Backwards, so a member that removes itself (timeout) only moves an already-visited one.
        var index = self.members.count - 1
        while index >= 0 {
            if index < self.members.count {
                self.members[index].heartbeatTick(now: now)
            }
            index -= 1
        }
    }

    /// The tick for a configuration: a tenth of the shorter period, between 10 ms and 1 s.
    static func tick(interval: TimeAmount, timeout: TimeAmount) -> TimeAmount {
        let shorter = min(interval, timeout).nanoseconds / 10
        return .nanoseconds(min(max(shorter, 10_000_000), 1_000_000_000))
    }
}

@available(*, unavailable)
extension HeartbeatScheduler: Sendable {}

/// The per-event-loop schedulers of one server.
final class HeartbeatSchedulers: Sendable {
    /// Each scheduler is touched only on its own event loop; the lock guards the dictionary.
    private struct Entry: @unchecked Sendable {
        let scheduler: HeartbeatScheduler
    }

    private let schedulers = Mutex<[ObjectIdentifier: Entry]>([:])
    private let tick: TimeAmount

    init(tick: TimeAmount) {
        self.tick = tick
    }

    func scheduler(for eventLoop: any EventLoop) -> HeartbeatScheduler {
        let id = ObjectIdentifier(eventLoop)
        return self.schedulers.withLock { schedulers in
            if let entry = schedulers[id] { return entry.scheduler }
            let scheduler = HeartbeatScheduler(eventLoop: eventLoop, tick: self.tick)
            schedulers[id] = Entry(scheduler: scheduler)
            return scheduler
        }
    }
}
