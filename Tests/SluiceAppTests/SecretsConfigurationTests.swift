import Foundation
import Logging
@testable import SluiceApp
import Testing

private func loadError(
    environment: [String: String], overrides: ConfigurationOverrides = .init(), yaml: String? = nil
) -> ConfigurationError? {
    do {
        var path: String?
        if let yaml {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-secrets-\(UUID().uuidString).yaml")
            try yaml.write(to: file, atomically: true, encoding: .utf8)
            path = file.path
        }
        defer { if let path { try? FileManager.default.removeItem(atPath: path) } }
        _ = try ConfigurationLoader.load(filePath: path, environment: environment, overrides: overrides)
        Issue.record("expected a ConfigurationError")
        return nil
    } catch let error as ConfigurationError {
        return error
    } catch {
        Issue.record("expected a ConfigurationError, got \(error)")
        return nil
    }
}

/// An unknown `SLUICE_*` variable is an error, like an unknown key in the file.
@Suite struct UnknownEnvironmentVariableTests {
    @Test func aMisspeltVariableIsNamedWithTheOneMeant() {
        let error = loadError(environment: ["SLUICE_AUTH_JWT_SECERT_FILE": "/run/secrets/jwt", "SLUICE_SERVER_PORT": "9000"])
        #expect(error?.kind == .unknownKey)
        #expect(error?.source == .environment(variable: "SLUICE_AUTH_JWT_SECERT_FILE"))
        #expect(error?.description == "environment variable SLUICE_AUTH_JWT_SECERT_FILE: unknown variable: no setting has this name (did you mean SLUICE_AUTH_JWT_SECRET_FILE?)")
    }

    @Test func aVariableWithoutItsSectionGetsTheSettingsEndingLikeIt() {
        #expect(loadError(environment: ["SLUICE_DATABASE_URL": "memory"])?.description.contains("did you mean SLUICE_STORAGE_DATABASE_URL?") == true)
        #expect(loadError(environment: ["SLUICE_REDIS_URI": "redis://r"])?.description.contains("did you mean SLUICE_REDIS_URL?") == true)
        let port = loadError(environment: ["SLUICE_PORT": "9000"])?.description ?? ""
        #expect(port.contains("SLUICE_ADMIN_PORT") && port.contains("SLUICE_SERVER_PORT"), "\(port)")
        #expect(loadError(environment: ["SLUICE_WHATEVER_ELSE": "x"])?.description.contains("did you mean") == false)
    }

    @Test func theValueIsNeverShown() {
        let error = loadError(environment: ["SLUICE_JWT_SECRETT": "hunter2hunter2hunter2hunter2hunter2"])
        #expect(error?.value == nil)
        #expect(error?.description.contains("hunter2") == false)
        #expect(error?.description.contains("did you mean SLUICE_JWT_SECRET?") == true)
    }

    /// The variables of Sluice's own tools and tests, the file and the secret's short name.
    @Test func theDocumentedOtherVariablesAreNoMistake() throws {
        var environment = ConfigurationLoader.otherVariables.mapValues { _ in "x" }
        environment["SLUICE_JWT_SECRET"] = String(repeating: "k", count: 32)
        environment["NOT_SLUICE_AT_ALL"] = "x"
        let configuration = try ConfigurationLoader.load(filePath: nil, environment: environment)
        #expect(configuration.auth.jwtSecret == String(repeating: "k", count: 32))
        #expect(ConfigurationLoader.otherVariables.keys.sorted() == [
            "SLUICE_BIN", "SLUICE_BINARY", "SLUICE_CONFIG", "SLUICE_DEPLOY_NO_SYSTEM_TOOLS", "SLUICE_DEPLOY_VENV", "SLUICE_FUZZ", "SLUICE_FUZZ_TARGET",
            "SLUICE_FUZZ_VERBOSE", "SLUICE_HTTP_PORT",
            "SLUICE_IMAGE", "SLUICE_JWT_SECRET", "SLUICE_NGINX_LISTEN", "SLUICE_PG_BINDIR", "SLUICE_SERVE_ARGS", "SLUICE_SERVE_ENV",
            "SLUICE_STORAGE_TEST_LOG", "SLUICE_UPSTREAM_SERVERS",
        ])
    }

    /// Every `SLUICE_*` name the repository's scripts, tests and deployment files use is a setting
    /// or on the list: none of them stops a gateway started where it is exported.
    @Test func everyVariableTheRepositoryUsesIsKnown() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var used: Set<String> = []
        // C headers name constants and include guards (used from Swift too), not variables.
        var inHeaders: Set<String> = []
        let pattern = try Regex("SLUICE_[A-Z0-9_]*[A-Z0-9]")
        for folder in ["Sources", "Tests", "loadtest", "scripts", "deploy", "docs", "config", ".ci"] {
            guard let files = FileManager.default.enumerator(atPath: root.appendingPathComponent(folder).path) else { continue }
            for case let file as String in files {
                guard let text = try? String(contentsOfFile: root.appendingPathComponent(folder).appendingPathComponent(file).path, encoding: .utf8) else { continue }
                for match in text.matches(of: pattern) {
                    if file.hasSuffix(".h") { inHeaders.insert(String(text[match.range])) } else { used.insert(String(text[match.range])) }
                }
            }
        }
        // This file's own misspellings.
        let notVariables: Set<String> = [
            "SLUICE_AUTH_JWT_SECERT_FILE", "SLUICE_DATABASE_URL", "SLUICE_REDIS_URI",
            "SLUICE_PORT", "SLUICE_WHATEVER_ELSE", "SLUICE_JWT_SECRETT", "SLUICE_AT_ALL", "SLUICE_AUTH_API_KEY",
        ]
        let unknown = used.subtracting(notVariables).subtracting(inHeaders).filter { name in
            !ConfigurationLoader.knownVariables.contains(name)
                // Prefixes in prose ("SLUICE_STORAGE_*").
                && !ConfigurationLoader.knownVariables.contains(where: { $0.hasPrefix(name + "_") })
        }
        #expect(unknown.isEmpty, "\(unknown.sorted())")
    }
}

/// Configuration errors never quote a secret: URLs lose their password, secret keys their value.
@Suite struct SecretMaskingTests {
    @Test func urlsInErrorsLoseTheirPassword() {
        let redis = loadError(environment: ["SLUICE_REDIS_URL": "rediss://default:hunter2@cache:notaport/0"])
        #expect(redis?.key == "redis.url")
        #expect(redis?.description.contains("hunter2") == false, "\(redis?.description ?? "")")
        let database = loadError(environment: ["SLUICE_STORAGE_DATABASE_URL": "postgres://sluice:hunter2@db:99999/sluice"])
        #expect(database?.key == "storage.database_url")
        #expect(database?.value == "postgres://sluice:***@db:99999/sluice")
        #expect(database?.description.contains("hunter2") == false, "\(database?.description ?? "")")
        // A typo that is no URL at all: nothing before the "@" is shown.
        let typo = loadError(environment: ["SLUICE_STORAGE_DATABASE_URL": "postgres:/sluice:hunter2@db/sluice"])
        #expect(typo?.value == "***@db/sluice" && typo?.description.contains("hunter2") == false)
    }

    @Test func upstreamListsInTheEnvironmentAreNeverQuoted() {
        // Broken JSON: Yams would quote the line, api key and all.
        let broken = loadError(environment: ["SLUICE_UPSTREAMS": #"[{"name": "a", "kind": "openai", "api_key": "sk-hunter2", "base_url": "http://x"}"#])
        #expect(broken?.key == "upstreams" && broken?.value == nil)
        #expect(broken?.description.contains("sk-hunter2") == false, "\(broken?.description ?? "")")
        let wrongShape = loadError(environment: ["SLUICE_UPSTREAMS": #"{"api_key": "sk-hunter2"}"#])
        #expect(wrongShape?.description.contains("sk-hunter2") == false)
        let badEntry = loadError(environment: ["SLUICE_UPSTREAMS": #"[{"name": "a", "kind": "gpt", "api_key": "sk-hunter2"}]"#])
        #expect(badEntry?.description.contains("sk-hunter2") == false && badEntry?.description.contains("kind must be") == true)
    }

    @Test func secretSettingsAreMaskedWhateverTheirMistake() {
        let header = loadError(environment: ["SLUICE_TRACING_HEADERS": "Authorization Bearer hunter2"])
        #expect(header?.key == "tracing.headers" && header?.value == "***")
        #expect(header?.description.contains("hunter2") == false)
        let apiKeys = loadError(environment: ["SLUICE_AUTH_API_KEYS": "batch:sk-raw-key-pasted-by-mistake"])
        #expect(apiKeys?.value == "batch:***" && apiKeys?.description.contains("sk-raw") == false)
        let short = loadError(environment: ["SLUICE_JWT_SECRET": "hunter2"])
        #expect(short?.key == "auth.jwt_secret" && short?.description.contains("hunter2") == false)
        #expect(Redaction.configurationValue("sk-1", key: "upstreams.api_key") == "***")
        #expect(Redaction.configurationValue("8080", key: "server.port") == "8080")
    }

    /// `ps` shows arguments to every user: a URL with a password is refused as a flag.
    @Test func aPasswordOnTheCommandLineIsRefused() {
        var overrides = ConfigurationOverrides()
        overrides.databaseURL = "postgres://sluice:hunter2@db/sluice"
        let database = loadError(environment: [:], overrides: overrides)
        #expect(database?.source == .commandLine(option: "--database-url"))
        #expect(database?.description.contains("SLUICE_STORAGE_DATABASE_URL") == true)
        #expect(database?.description.contains("hunter2") == false)
        overrides = ConfigurationOverrides()
        overrides.redisURL = "redis://:hunter2@cache:6379/0"
        #expect(loadError(environment: [:], overrides: overrides)?.description.contains("SLUICE_REDIS_URL") == true)
        overrides = ConfigurationOverrides()
        overrides.upstream = "http://u:hunter2@vllm:8000"
        #expect(loadError(environment: [:], overrides: overrides)?.source == .commandLine(option: "--upstream"))
        // The same URLs are fine in the environment and without a password on the command line.
        overrides = ConfigurationOverrides()
        overrides.databaseURL = "postgres://sluice@db/sluice"
        #expect((try? ConfigurationLoader.load(filePath: nil, environment: [:], overrides: overrides)) != nil)
        #expect((try? ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_STORAGE_DATABASE_URL": "postgres://sluice:pw@db/sluice"])) != nil)
    }
}

@Suite struct JWTSecretFileTests {
    @Test func theSecretComesFromTheFileWithoutItsNewline() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-jwt-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: file) }
        let secret = String(repeating: "s", count: 40)
        try (secret + "\n").write(to: file, atomically: true, encoding: .utf8)
        let configuration = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_AUTH_JWT_SECRET_FILE": file.path])
        #expect(configuration.auth.isEnabled && configuration.auth.jwtSecret == nil)
        #expect(try configuration.auth.resolvedJWTSecret() == secret)
        var overrides = ConfigurationOverrides()
        overrides.jwtSecretFile = file.path
        #expect(try ConfigurationLoader.load(filePath: nil, environment: [:], overrides: overrides).auth.resolvedJWTSecret() == secret)
    }

    @Test func aMissingShortOrDoubledSecretIsAnError() throws {
        let missing = loadError(environment: ["SLUICE_AUTH_JWT_SECRET_FILE": "/nonexistent/jwt"])
        #expect(missing?.key == "auth.jwt_secret_file" && missing?.description.contains("cannot read") == true)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-jwt-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: file) }
        try "short-secret\n".write(to: file, atomically: true, encoding: .utf8)
        let short = loadError(environment: ["SLUICE_AUTH_JWT_SECRET_FILE": file.path])
        #expect(short?.description.contains("shorter than 32 bytes") == true && short?.description.contains("short-secret") == false)
        let both = loadError(environment: ["SLUICE_AUTH_JWT_SECRET_FILE": file.path, "SLUICE_JWT_SECRET": String(repeating: "k", count: 32)])
        #expect(both?.kind == .inconsistent)
    }
}

@Suite struct SafeDefaultsTests {
    /// Tokens in URLs end up in access logs and browser history: opt-in only.
    @Test func noQueryParameterTokenUnlessAskedFor() throws {
        #expect(try ConfigurationLoader.load(filePath: nil, environment: [:]).auth.queryParameter == nil)
        let on = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_AUTH_QUERY_PARAMETER": "token"])
        #expect(on.auth.queryParameter == "token")
    }
}

@Suite struct AdminSettingsTests {
    @Test func loopbackByDefaultAndEverySource() throws {
        #expect(try ConfigurationLoader.load(filePath: nil, environment: [:]).admin == AdminSettings())
        #expect(AdminSettings().enabled && AdminSettings().host == "127.0.0.1" && AdminSettings().port == 9464)
        var overrides = ConfigurationOverrides()
        overrides.adminPort = 0
        overrides.adminHost = "10.0.0.1"
        let configuration = try ConfigurationLoader.load(
            filePath: nil, environment: ["SLUICE_ADMIN_PORT": "9100", "SLUICE_ADMIN_ENABLED": "false"], overrides: overrides)
        #expect(configuration.admin.port == 0 && configuration.admin.host == "10.0.0.1" && !configuration.admin.enabled)
    }

    @Test func theAdminPortIsNotThePublicOne() {
        let error = loadError(environment: ["SLUICE_ADMIN_PORT": "8080"])
        #expect(error?.key == "admin.port" && error?.kind == .inconsistent)
    }
}

@Suite struct RedactionTests {
    @Test(arguments: [
        ("postgres://sluice:hunter2@db:5432/sluice?sslmode=verify-full", "postgres://sluice:***@db:5432/sluice?sslmode=verify-full"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:p@ss:word@cache", "rediss://default:***@cache"),
        ("postgres://sluice@db/sluice", "postgres://sluice@db/sluice"),
        ("http://vllm:8000/v1?api_key=sk-1&x=2", "http://vllm:8000/v1?api_key=***&x=2"),
        ("http://h/p?a=b@c", "http://h/p?a=b@c"),
        ("memory", "memory"),
        ("u:hunter2@host", "***@host"),
    ])
    func urls(input: String, expected: String) {
        #expect(Redaction.url(input) == expected)
        #expect(Redaction.containsSecret(url: input) == (input != expected))
    }

    @Test func theConfiguredSecretsAreScrubbedFromLogLines() throws {
        var configuration = SluiceConfiguration()
        configuration.storage.databaseURL = "postgres://sluice:p%40ss-hunter2@db/sluice"
        configuration.upstream.apiKey = "sk-upstream-key"
        configuration.redis.url = "redis://sluice@cache:6379"
        configuration.tracing.headers = ["Authorization=Bearer otlp-token"]
        let secrets = configuration.secretValues
        #expect(Set(secrets) == ["p%40ss-hunter2", "p@ss-hunter2", "sk-upstream-key", "Bearer otlp-token"], "a user name is no secret")
        #expect(SecretScrubber.scrub("connect to postgres failed: password p@ss-hunter2 rejected", secrets: secrets)
                == "connect to postgres failed: password *** rejected")

        let recorder = RecordingLogHandler()
        var handler = ScrubbingLogHandler(wrapped: recorder)
        SecretScrubber.register(["a-registered-secret"])
        handler[metadataKey: "sluice.url"] = "x-a-registered-secret-y"
        handler.log(event: LogEvent(level: .error, message: "failed: a-registered-secret", metadata: ["e": .array(["a-registered-secret"])],
                                    source: "t", file: #fileID, function: #function, line: #line))
        #expect(recorder.lines.withLock { $0 } == ["failed: *** e=[\"***\"]"])
        #expect(handler[metadataKey: "sluice.url"] == "x-***-y")
        #expect(SecretScrubber.scrub("short ab") == "short ab")
    }
}

/// Keeps what it would print.
final class RecordingLogHandler: LogHandler, @unchecked Sendable {  // test only; lines behind a lock
    let lines = NIOLockedLines()
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        self.lines.withLock { $0.append(([event.message.description] + fields).joined(separator: " ")) }
    }
}

final class NIOLockedLines: @unchecked Sendable {  // test only: a lock around an array
    private let lock = NSLock()
    private var lines: [String] = []

    func withLock<T>(_ body: (inout [String]) -> T) -> T {
        self.lock.lock()
        defer { self.lock.unlock() }
        return body(&self.lines)
    }
}
