import Foundation
@testable import SluiceApp
import Testing

/// docs/security.md's production checklist (`sluice check-config --production`): the shipped
/// production example passes it with the secrets its deployment puts in the environment, and
/// the laptop defaults fail where they are meant to.
@Suite struct ProductionChecklistTests {
    static let production = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/sluice.production.yaml").path

    /// What deploy/ puts in the environment (compose and the Kubernetes Secret).
    static let deployEnvironment = [
        "SLUICE_STORAGE_DATABASE_URL": "postgres://sluice:pw@postgres:5432/sluice?sslmode=verify-full&sslrootcert=/etc/sluice/tls/postgres-ca.pem",
        "SLUICE_REDIS_URL": "redis://sluice:pw@redis:6379/0",
    ]

    static func failed(_ items: [ProductionChecklist.Item]) -> [String] { items.filter { !$0.passed }.map(\.name) }

    @Test func theShippedProductionConfigurationPassesEveryItem() throws {
        let configuration = try ConfigurationLoader.load(filePath: Self.production, environment: Self.deployEnvironment)
        var fileOnly = SluiceConfiguration()
        try ConfigurationLoader.applyFile(at: Self.production, to: &fileOnly)
        let items = ProductionChecklist.evaluate(configuration, fileOnly: fileOnly)
        #expect(Self.failed(items).isEmpty, "\(items.filter { !$0.passed })")
        // Every area is looked at, the stores included.
        let names = Set(items.map(\.name))
        for name in ["authentication", "no-query-token", "allowed-origins", "tls", "admin-listener", "rate-limits", "connection-caps",
                     "max-tokens-limit", "redis-credentials", "database-tls", "log-level", "secrets-outside-the-file"] {
            #expect(names.contains(name), "\(name) not checked")
        }
    }

    @Test func theLaptopDefaultsFailWhatAnInternetGatewayNeeds() {
        let failed = Self.failed(ProductionChecklist.evaluate(SluiceConfiguration()))
        #expect(failed == ["authentication", "allowed-origins", "tls", "rate-limits"], "\(failed)")
    }

    @Test func eachWeakSettingIsCaught() throws {
        func failed(_ environment: [String: String]) throws -> [String] {
            let configuration = try ConfigurationLoader.load(filePath: Self.production, environment: Self.deployEnvironment.merging(environment) { $1 })
            return Self.failed(ProductionChecklist.evaluate(configuration))
        }
        #expect(try failed(["SLUICE_STORAGE_DATABASE_URL": "postgres://sluice:pw@db.internal:5432/sluice?sslmode=require"]) == ["database-tls"])
        #expect(try failed(["SLUICE_REDIS_URL": "redis://redis:6379/0"]) == ["redis-credentials"])
        #expect(try failed(["SLUICE_AUTH_QUERY_PARAMETER": "token"]) == ["no-query-token"])
        #expect(try failed(["SLUICE_SERVER_ALLOWED_ORIGINS": "*"]) == ["allowed-origins"])
        #expect(try failed(["SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_USER": "0"]) == ["rate-limits"])
        #expect(try failed(["SLUICE_LOG_LEVEL": "debug"]) == ["log-level"])
        #expect(try failed(["SLUICE_CHAT_MAX_TOKENS_LIMIT": "1000000"]) == ["max-tokens-limit"])
        // A secret written in the file itself.
        var file = SluiceConfiguration()
        try ConfigurationLoader.applyYAML("redis:\n  url: redis://u:secret@redis:6379/0\n", path: "x.yaml", to: &file)
        let configuration = try ConfigurationLoader.load(filePath: Self.production, environment: Self.deployEnvironment)
        #expect(Self.failed(ProductionChecklist.evaluate(configuration, fileOnly: file)) == ["secrets-outside-the-file"])
    }
}
