import Foundation
@testable import SluiceTestSupport
import Testing

/// `sluice check-config`: what an operator runs before deploying.
@Suite struct CheckConfigProcessTests {
    static let production = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/sluice.production.yaml").path

    @Test(.timeLimit(.minutes(15)))
    func theProductionExamplePassesAndTheDefaultsDoNot() async throws {
        let environment = [
            "SLUICE_STORAGE_DATABASE_URL": "postgres://sluice:pw@postgres:5432/sluice?sslmode=verify-full",
            "SLUICE_REDIS_URL": "redis://sluice:pw@redis:6379/0",
        ]
        let passing = try await SluiceProcess.runCommand(["check-config", "--production", "--config", Self.production], environment: environment)
        #expect(passing.status == 0 && passing.output.contains("production checklist: all"), "\(passing.output)")
        #expect(!passing.output.contains("pw@"), "a secret was printed: \(passing.output)")
        let defaults = try await SluiceProcess.runCommand(["check-config", "--production"])
        #expect(defaults.status == 1, "\(defaults.output)")
        #expect(defaults.output.contains("FAIL  authentication") && defaults.output.contains("FAIL  allowed-origins"), "\(defaults.output)")
        // Without --production it only loads (and refuses what cannot load).
        #expect(try await SluiceProcess.runCommand(["check-config"]).status == 0)
        let broken = try await SluiceProcess.runCommand(["check-config"], environment: ["SLUICE_SERVER_PORT": "70000"])
        #expect(broken.status == 78 && broken.output.contains("server.port"), "\(broken.output)")
    }
}
