@testable import SluiceApp
import Testing

/// `sluice serve` raises its soft open-file limit to the hard one, and says so when even the
/// hard limit cannot hold `server.max_connections`.
@Suite struct DescriptorLimitTests {
    @Test func theSoftLimitIsRaisedToTheHardOne() {
        let plan = DescriptorLimit.plan(soft: 1_024, hard: 20_000, maxConnections: 10_000)
        #expect(plan == DescriptorLimit.Plan(raiseTo: 20_000, warning: nil))
    }

    @Test func nothingToDoWhenTheSoftLimitIsTheHardOne() {
        #expect(DescriptorLimit.plan(soft: 20_000, hard: 20_000, maxConnections: 10_000) == DescriptorLimit.Plan(raiseTo: nil, warning: nil))
    }

    @Test func aHardLimitBelowMaxConnectionsIsAWarning() {
        let plan = DescriptorLimit.plan(soft: 1_024, hard: 4_096, maxConnections: 10_000)
        #expect(plan.raiseTo == 4_096)
        #expect(plan.warning?.contains("server.max_connections 10000 needs about 11024 file descriptors") == true, "\(plan)")
        #expect(plan.warning?.contains("4096") == true)
        // The reserve counts too: 3,500 connections need 4,524.
        #expect(DescriptorLimit.plan(soft: 4_096, hard: 4_096, maxConnections: 3_500).warning != nil)
        #expect(DescriptorLimit.plan(soft: 4_096, hard: 4_096, maxConnections: 3_000).warning == nil)
    }

    @Test func extremeValuesDoNotTrap() {
        #expect(DescriptorLimit.plan(soft: .max, hard: .max, maxConnections: .max).warning == nil)
        #expect(DescriptorLimit.plan(soft: 0, hard: 0, maxConnections: .max).warning != nil)
        #expect(DescriptorLimit.plan(soft: 5, hard: 1, maxConnections: 0).raiseTo == nil)
    }
}

/// `sluice serve` fixes glibc's mmap threshold so freed large buffers leave the process.
@Suite struct AllocatorTuningTests {
    @Test func theThresholdIsFixedUnlessTheEnvironmentChoseOne() {
        #expect(AllocatorTuning.fixMmapThreshold(environment: [:]))
        #expect(!AllocatorTuning.fixMmapThreshold(environment: ["MALLOC_MMAP_THRESHOLD_": "65536"]))
    }
}
