import NIOCore

/// Whether a replica gets requests, from how its recent requests went. A plain state machine
/// (the clock is passed in), so it is tested without sockets or sleeps.
///
/// - closed: requests flow; `failureThreshold` failures in a row open it.
/// - open: no requests until `openDuration` has passed since it opened.
/// - halfOpen: one probe request at a time; its success closes the circuit, its failure opens
///   it again for twice as long (up to `maximumOpenDuration`).
public struct CircuitBreaker: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case closed(consecutiveFailures: Int)
        case open(until: NIODeadline)
        case halfOpen(probeInFlight: Bool)

        /// For the `sluice_upstream_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
        public var gaugeValue: Int {
            switch self {
            case .closed: return 0
            case .halfOpen: return 1
            case .open: return 2
            }
        }
    }

    public struct Settings: Sendable, Equatable {
        public var failureThreshold: Int = 5
        public var openDuration: TimeAmount = .seconds(10)
        public var maximumOpenDuration: TimeAmount = .seconds(120)
        public init() {}
    }

    public private(set) var state: State = .closed(consecutiveFailures: 0)
    public let settings: Settings
    /// How long the next opening lasts (doubles after a failed probe).
    private var nextOpenDuration: TimeAmount

    public init(settings: Settings = .init()) {
        self.settings = settings
        self.nextOpenDuration = settings.openDuration
    }

    /// Whether a request may go to this replica now; a half-open circuit lets one probe through
    /// (and this call reserves it).
    public mutating func allowRequest(now: NIODeadline) -> Bool {
        switch self.state {
        case .closed:
            return true
        case .open(let until):
            guard now >= until else { return false }
            self.state = .halfOpen(probeInFlight: true)
            return true
        case .halfOpen(let probeInFlight):
            guard !probeInFlight else { return false }
            self.state = .halfOpen(probeInFlight: true)
            return true
        }
    }

    /// Would `allowRequest` say yes (without reserving a probe)?
    public func wouldAllow(now: NIODeadline) -> Bool {
        switch self.state {
        case .closed: return true
        case .open(let until): return now >= until
        case .halfOpen(let probeInFlight): return !probeInFlight
        }
    }

    public mutating func recordSuccess() {
        self.state = .closed(consecutiveFailures: 0)
        self.nextOpenDuration = self.settings.openDuration
    }

    public mutating func recordFailure(now: NIODeadline) {
        switch self.state {
        case .closed(let failures):
            if failures + 1 >= self.settings.failureThreshold {
                self.state = .open(until: now + self.nextOpenDuration)
            } else {
                self.state = .closed(consecutiveFailures: failures + 1)
            }
        case .halfOpen:
            self.nextOpenDuration = min(self.nextOpenDuration * 2, self.settings.maximumOpenDuration)
            self.state = .open(until: now + self.nextOpenDuration)
        case .open:
            break
        }
    }

    /// A request that neither succeeded nor failed (cancelled before the upstream answered):
    /// a probe slot it held is free again.
    public mutating func recordAbandoned() {
        if case .halfOpen(true) = self.state { self.state = .halfOpen(probeInFlight: false) }
    }
}
