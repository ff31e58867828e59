import Metrics
import Synchronization

/// One process-wide bound on the bytes held on behalf of clients: inbound messages being
/// assembled, outbound bytes queued for slow readers, HTTP request bodies and responses that
/// wait for the socket, running answers and the answers kept for `generation.resume`.
///
/// Holders reserve before they hold and release when they let go; a reservation that does not
/// fit is refused (the holder answers `overloaded`, HTTP 503 or Close 1013), so the sum never
/// passes `limit`. Lock-free on the common path (one compare-and-swap); the count never goes
/// below zero and never overflows, whatever the holders ask. Holders whose bytes are only a
/// convenience (retained answers) register a reclaimer: when a reservation does not fit, they
/// are asked to give bytes back first.
public final class MemoryBudget: Sendable {
    /// What the bytes are held for: a label on the metrics, and where refusals come from.
    public enum Use: Int, Sendable, CaseIterable {
        /// A WebSocket message being reassembled or inflated.
        case webSocketInbound
        /// WebSocket frames queued while the peer does not read.
        case webSocketOutbound
        /// An HTTP request body of an application route.
        case httpRequestBody
        /// Streamed HTTP response bytes handed to a socket that is not writable.
        case httpResponse
        /// A running generation's answer (its resume log) and the text held back for a slow client.
        case generation
        /// Ended answers kept for `generation.resume` (reclaimable).
        case retainedGeneration
        /// zlib state of permessage-deflate connections (about 300 KiB to compress, 40 KiB to inflate).
        case compression

        public var label: String {
            switch self {
            case .webSocketInbound: "ws_inbound"
            case .webSocketOutbound: "ws_outbound"
            case .httpRequestBody: "http_request_body"
            case .httpResponse: "http_response"
            case .generation: "generation"
            case .retainedGeneration: "retained_generation"
            case .compression: "compression"
            }
        }
    }

    /// Bytes that may be held at once.
    public let limit: Int
    private let total = Atomic<Int>(0)
    private let byUse: [Cell]
    private let reclaimers = Mutex<[@Sendable (Int) -> Int]>([])
    private let metrics: MemoryBudgetMetrics

    public init(limit: Int) {
        self.limit = max(0, limit)
        self.byUse = Use.allCases.map { _ in Cell() }
        self.metrics = MemoryBudgetMetrics()
    }

    /// A budget that never refuses (tests and embedders that bound memory elsewhere).
    public static func unlimited() -> MemoryBudget { MemoryBudget(limit: .max) }

    /// Bytes held now.
    public var used: Int { self.total.load(ordering: .relaxed) }
    /// Bytes held now for `use`.
    public func used(by use: Use) -> Int { self.byUse[use.rawValue].value.load(ordering: .relaxed) }
    /// Bytes that could still be reserved without reclaiming anything.
    public var available: Int { max(0, self.limit - self.used) }

    /// Takes `bytes` for `use` if they fit; if not, asks the reclaimers for room first. Returns
    /// whether they were taken (a refusal is counted). Zero or negative: nothing to take, true.
    public func reserve(_ bytes: Int, for use: Use) -> Bool {
        guard bytes > 0 else { return true }
        if self.take(bytes, for: use) { return true }
        let reclaimers = self.reclaimers.withLock { $0 }
        for reclaim in reclaimers {
            // Asked for the shortfall only: what is free now stays counted.
            _ = reclaim(max(1, bytes - self.available))
            if self.take(bytes, for: use) { return true }
        }
        self.metrics.refused(use)
        return false
    }

    /// `reserve` without asking the reclaimers (for a reclaimer itself, which must not be
    /// called back while it holds its own lock).
    public func reserveWithoutReclaiming(_ bytes: Int, for use: Use) -> Bool {
        guard bytes > 0 else { return true }
        return self.take(bytes, for: use)
    }

    /// Gives back `bytes` taken for `use`. Never goes below zero (a release of more than was
    /// taken is clamped rather than trusted).
    public func release(_ bytes: Int, for use: Use) {
        guard bytes > 0 else { return }
        Self.subtractClamped(bytes, from: self.total)
        Self.subtractClamped(bytes, from: self.byUse[use.rawValue].value)
    }

    /// Moves `bytes` already held from one use to another (a running answer becoming a
    /// retained one) without giving them up in between.
    public func move(_ bytes: Int, from: Use, to: Use) {
        guard bytes > 0, from != to else { return }
        Self.subtractClamped(bytes, from: self.byUse[from.rawValue].value)
        self.byUse[to.rawValue].value.add(bytes, ordering: .relaxed)
    }

    /// `reclaim(wanted)` is called when a reservation does not fit, with the bytes missing; it
    /// frees what it can (releasing through this budget) and returns how much it freed.
    public func addReclaimer(_ reclaim: @escaping @Sendable (_ wanted: Int) -> Int) {
        self.reclaimers.withLock { $0.append(reclaim) }
    }

    /// Sets the `/metrics` gauges to the current figures (called when metrics are scraped).
    public func recordMetrics() {
        self.metrics.record(limit: self.limit, used: self.used, byUse: Use.allCases.map { self.used(by: $0) })
    }

    private func take(_ bytes: Int, for use: Use) -> Bool {
        var current = self.total.load(ordering: .relaxed)
        while true {
            let (sum, overflow) = current.addingReportingOverflow(bytes)
            guard !overflow, sum <= self.limit else { return false }
            let (exchanged, original) = self.total.weakCompareExchange(
                expected: current, desired: sum, successOrdering: .relaxed, failureOrdering: .relaxed)
            if exchanged { break }
            current = original
        }
        // The per-use figure is for metrics only: it cannot overflow (it is at most the total).
        self.byUse[use.rawValue].value.add(bytes, ordering: .relaxed)
        return true
    }

    /// An atomic in an array (`Atomic` cannot be copied into one).
    private final class Cell: Sendable {
        let value = Atomic<Int>(0)
    }

    private static func subtractClamped(_ bytes: Int, from value: borrowing Atomic<Int>) {
        var current = value.load(ordering: .relaxed)
        while true {
            let desired = current > bytes ? current - bytes : 0
            let (exchanged, original) = value.weakCompareExchange(
                expected: current, desired: desired, successOrdering: .relaxed, failureOrdering: .relaxed)
            if exchanged { return }
            current = original
        }
    }
}

/// What one holder has reserved of a `MemoryBudget`: grown as its buffer grows, given back
/// at once when the buffer goes. A plain value kept by its (single-threaded) owner.
public struct MemoryCharge: Sendable {
    public let use: MemoryBudget.Use
    /// Bytes reserved now.
    public private(set) var held = 0

    public init(_ use: MemoryBudget.Use) {
        self.use = use
    }

    /// Makes sure at least `bytes` are reserved; false (and nothing more reserved) when the
    /// budget has no room.
    public mutating func grow(to bytes: Int, in budget: MemoryBudget) -> Bool {
        guard bytes > self.held else { return true }
        guard budget.reserve(bytes - self.held, for: self.use) else { return false }
        self.held = bytes
        return true
    }

    /// Reserves up to `bytes` rounded up to `granule`, so a buffer growing a little at a time
    /// costs one reservation per granule rather than one per append.
    public mutating func grow(to bytes: Int, granule: Int, in budget: MemoryBudget) -> Bool {
        guard bytes > self.held else { return true }
        let (rounded, overflow) = bytes.addingReportingOverflow(granule - 1)
        let target = overflow || granule <= 1 ? bytes : rounded - rounded % granule
        if budget.reserve(target - self.held, for: self.use) {
            self.held = target
            return true
        }
        // The rounding may be what does not fit.
        return self.grow(to: bytes, in: budget)
    }

    /// Gives back what is held beyond `bytes`.
    public mutating func shrink(to bytes: Int, in budget: MemoryBudget) {
        let keep = max(0, bytes)
        guard self.held > keep else { return }
        budget.release(self.held - keep, for: self.use)
        self.held = keep
    }

    /// Gives everything back.
    public mutating func releaseAll(to budget: MemoryBudget) {
        self.shrink(to: 0, in: budget)
    }

    /// Hands what is held over to another holder (who releases it later); this one holds nothing.
    public mutating func transfer() -> Int {
        defer { self.held = 0 }
        return self.held
    }

    /// Adopts bytes another holder reserved (see `transfer`).
    public mutating func adopt(_ bytes: Int) {
        self.held += max(0, bytes)
    }
}

/// `sluice_memory_budget_*`: the limit, what is held (in total and per use) and refusals.
final class MemoryBudgetMetrics: Sendable {
    private let limit = Gauge(label: "sluice_memory_budget_limit_bytes")
    private let used = Gauge(label: "sluice_memory_budget_used_bytes", dimensions: [("use", "all")])
    private let usedByUse: [Gauge]
    private let refusals: [Counter]

    init() {
        self.usedByUse = MemoryBudget.Use.allCases.map { Gauge(label: "sluice_memory_budget_used_bytes", dimensions: [("use", $0.label)]) }
        self.refusals = MemoryBudget.Use.allCases.map {
            Counter(label: "sluice_memory_budget_refusals_total", dimensions: [("use", $0.label)])
        }
    }

    func refused(_ use: MemoryBudget.Use) { self.refusals[use.rawValue].increment() }

    func record(limit: Int, used: Int, byUse: [Int]) {
        self.limit.record(limit)
        self.used.record(used)
        for (gauge, value) in zip(self.usedByUse, byUse) { gauge.record(value) }
    }
}
