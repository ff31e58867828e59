import Synchronization
import Testing
@testable import WSServer

/// The process-wide byte budget: reserve and release, never past the limit, never below zero,
/// no overflow whatever is asked, reclaimers asked before a refusal.
@Suite struct MemoryBudgetTests {
    @Test func reservesUpToTheLimitAndNoFurther() {
        let budget = MemoryBudget(limit: 1000)
        #expect(budget.reserve(600, for: .webSocketInbound))
        #expect(budget.reserve(400, for: .webSocketOutbound))
        #expect(budget.used == 1000)
        #expect(budget.available == 0)
        #expect(!budget.reserve(1, for: .httpRequestBody))
        #expect(budget.used == 1000)
        budget.release(400, for: .webSocketOutbound)
        #expect(budget.used(by: .webSocketOutbound) == 0)
        #expect(budget.used(by: .webSocketInbound) == 600)
        #expect(budget.reserve(400, for: .httpRequestBody))
        #expect(!budget.reserve(1, for: .httpRequestBody))
    }

    @Test func zeroAndNegativeAmountsChangeNothing() {
        let budget = MemoryBudget(limit: 10)
        #expect(budget.reserve(0, for: .generation))
        #expect(budget.reserve(-5, for: .generation))
        budget.release(-5, for: .generation)
        #expect(budget.used == 0)
    }

    @Test func releasingMoreThanHeldStopsAtZero() {
        let budget = MemoryBudget(limit: 100)
        #expect(budget.reserve(10, for: .generation))
        budget.release(50, for: .generation)
        #expect(budget.used == 0)
        #expect(budget.used(by: .generation) == 0)
        budget.release(.max, for: .generation)
        #expect(budget.used == 0)
        #expect(budget.reserve(100, for: .generation))
    }

    @Test func hugeRequestsNeitherOverflowNorFit() {
        let budget = MemoryBudget(limit: .max)
        #expect(budget.reserve(.max - 1, for: .webSocketInbound))
        // used + Int.max overflows: refused, not wrapped around.
        #expect(!budget.reserve(.max, for: .webSocketInbound))
        #expect(budget.reserve(1, for: .webSocketInbound))
        #expect(!budget.reserve(1, for: .webSocketInbound))
        #expect(budget.used == .max)
        let small = MemoryBudget(limit: 10)
        #expect(!small.reserve(.max, for: .httpRequestBody))
        #expect(small.used == 0)
        // A negative limit is no budget at all.
        #expect(!MemoryBudget(limit: -1).reserve(1, for: .generation))
    }

    @Test func reclaimersAreAskedBeforeARefusal() {
        let budget = MemoryBudget(limit: 100)
        #expect(budget.reserve(80, for: .retainedGeneration))
        let asked = Mutex<[Int]>([])
        budget.addReclaimer { wanted in
            asked.withLock { $0.append(wanted) }
            budget.release(30, for: .retainedGeneration)
            return 30
        }
        #expect(budget.reserve(20, for: .webSocketInbound))  // fits: nobody asked
        var seen = asked.withLock { $0 }
        #expect(seen.isEmpty)
        #expect(budget.reserve(25, for: .webSocketInbound))  // 100 used: asked for the 25 missing, frees 30
        seen = asked.withLock { $0 }
        #expect(seen == [25])
        #expect(budget.used == 95)
        #expect(budget.used(by: .retainedGeneration) == 50)
        // reserveWithoutReclaiming never asks.
        #expect(!budget.reserveWithoutReclaiming(10, for: .generation))
        seen = asked.withLock { $0 }
        #expect(seen.count == 1)
    }

    @Test func moveKeepsTheTotal() {
        let budget = MemoryBudget(limit: 100)
        #expect(budget.reserve(40, for: .generation))
        budget.move(30, from: .generation, to: .retainedGeneration)
        #expect(budget.used == 40)
        #expect(budget.used(by: .generation) == 10)
        #expect(budget.used(by: .retainedGeneration) == 30)
    }

    @Test func concurrentHoldersNeverPassTheLimit() async {
        let budget = MemoryBudget(limit: 10_000)
        final class Peak: Sendable { let value = Atomic<Int>(0) }
        let peak = Peak()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    for round in 0..<20_000 {
                        let bytes = 1 + round % 700
                        if budget.reserve(bytes, for: .webSocketInbound) {
                            peak.value.max(budget.used, ordering: .relaxed)
                            budget.release(bytes, for: .webSocketInbound)
                        }
                    }
                }
            }
        }
        #expect(peak.value.load(ordering: .relaxed) <= 10_000)
        #expect(budget.used == 0)
    }

    @Test func aChargeGrowsInGranulesAndGivesEverythingBack() {
        let budget = MemoryBudget(limit: 100_000)
        var charge = MemoryCharge(.generation)
        do { let grew = charge.grow(to: 100, granule: 16 * 1024, in: budget); #expect(grew) }
        #expect(charge.held == 16 * 1024)
        do { let grew = charge.grow(to: 16 * 1024, granule: 16 * 1024, in: budget); #expect(grew) }  // already held: nothing reserved
        #expect(budget.used == 16 * 1024)
        do { let grew = charge.grow(to: 16 * 1024 + 1, granule: 16 * 1024, in: budget); #expect(grew) }
        #expect(charge.held == 32 * 1024)
        // The rounding does not fit but the bytes themselves do.
        do { let grew = charge.grow(to: 99_000, granule: 64 * 1024, in: budget); #expect(grew) }
        #expect(charge.held == 99_000)
        do { let grew = charge.grow(to: 100_001, in: budget); #expect(!grew) }
        #expect(charge.held == 99_000)
        charge.shrink(to: 1000, in: budget)
        #expect(budget.used == 1000)
        let handed = charge.transfer()
        #expect(handed == 1000 && charge.held == 0)
        var other = MemoryCharge(.retainedGeneration)
        other.adopt(handed)
        other.releaseAll(to: budget)
        #expect(budget.used == 0)
        // Granule arithmetic near Int.max does not trap.
        var huge = MemoryCharge(.generation)
        do { let grew = huge.grow(to: .max, granule: 16 * 1024, in: budget); #expect(!grew) }
    }
}
