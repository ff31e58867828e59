import NIOCore

/// When to ping and when to give up on a silent peer. Time is an input (`now`), so tests drive
/// it with an `EmbeddedEventLoop` or plain deadlines.
///
/// States: waiting for the next ping time; or a ping is outstanding since `pingSentAt` and
/// any inbound frame after it answers it. An unanswered ping older than `timeout` ends the connection.
public struct HeartbeatStateMachine: Sendable {
    public enum Action: Equatable, Sendable {
        /// Send a Ping, then call `timerFired` again at the deadline.
        case sendPing(nextCheck: NIODeadline)
        /// Nothing to send; call `timerFired` again at the deadline.
        case wait(nextCheck: NIODeadline)
        /// The peer stayed silent past the timeout: drop the connection.
        case timedOut
    }

    public let interval: TimeAmount
    public let timeout: TimeAmount
    private var lastInbound: NIODeadline
    private var nextPingAt: NIODeadline
    private var pingSentAt: NIODeadline?

    public init(interval: TimeAmount, timeout: TimeAmount, now: NIODeadline) {
        self.interval = interval
        self.timeout = timeout
        self.lastInbound = now
        self.nextPingAt = now + interval
    }

    /// The first deadline to arm a timer for.
    public var firstCheck: NIODeadline { self.nextPingAt }

    /// Any inbound frame (Pong or not) proves the peer alive.
    public mutating func inboundActivity(now: NIODeadline) {
        self.lastInbound = now
    }

    public mutating func timerFired(now: NIODeadline) -> Action {
        if let sent = self.pingSentAt {
            if self.lastInbound >= sent {
                self.pingSentAt = nil
            } else if now >= sent + self.timeout {
                return .timedOut
            }
        }
        var shouldPing = false
        if now >= self.nextPingAt {
            shouldPing = true
            // Keep the older outstanding ping as the reference, so a silent peer cannot be
            // kept alive by our own pings.
            if self.pingSentAt == nil { self.pingSentAt = now }
            self.nextPingAt = now + self.interval
        }
        var next = self.nextPingAt
        if let sent = self.pingSentAt { next = min(next, sent + self.timeout) }
        return shouldPing ? .sendPing(nextCheck: next) : .wait(nextCheck: next)
    }
}
