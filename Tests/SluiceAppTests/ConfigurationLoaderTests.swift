import Foundation
import NIOCore
import Jobs
import RedisClient
@testable import SluiceApp
import Storage
import Testing
import WSServer

/// The repository's `config/` directory, found from this file so tests work from any working directory.
private let configDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent()  // SluiceAppTests
    .deletingLastPathComponent()  // Tests
    .deletingLastPathComponent()  // package root
    .appendingPathComponent("config")

/// Applies YAML text on top of the defaults.
private func configuration(fromYAML yaml: String) throws -> SluiceConfiguration {
    var configuration = SluiceConfiguration()
    try ConfigurationLoader.applyYAML(yaml, path: "test.yaml", to: &configuration)
    return configuration
}

/// Runs `body` and returns the `ConfigurationError` it throws (failing the test if it throws nothing).
private func configurationError(_ body: () throws -> Void) -> ConfigurationError? {
    do {
        try body()
        Issue.record("expected a ConfigurationError")
        return nil
    } catch let error as ConfigurationError {
        return error
    } catch {
        Issue.record("expected a ConfigurationError, got \(error)")
        return nil
    }
}

@Suite struct DefaultsTests {
    @Test func builtInDefaults() throws {
        let configuration = try ConfigurationLoader.load(filePath: nil, environment: [:])
        #expect(configuration == SluiceConfiguration())
        #expect(configuration.echo == false)
        #expect(configuration.logLevel == "info")
        #expect(configuration.instanceID == nil)
        #expect(configuration.server.port == 8080)
        #expect(configuration.server.heartbeatInterval == .seconds(20))
        #expect(configuration.server.deflate.enabled)
    }

    @Test func shippedDefaultFileEqualsDefaults() throws {
        let path = configDirectory.appendingPathComponent("sluice.yaml").path
        let configuration = try ConfigurationLoader.load(filePath: path, environment: [:])
        #expect(configuration == SluiceConfiguration())
    }

    @Test func shippedDefaultFileMentionsEveryKey() throws {
        let text = try String(contentsOfFile: configDirectory.appendingPathComponent("sluice.yaml").path, encoding: .utf8)
        for key in ConfigurationLoader.keys {
            let leaf = key.split(separator: ".").last.map(String.init) ?? key
            #expect(text.contains("\(leaf):"), "config/sluice.yaml does not document \(key)")
        }
    }

    /// The production example loads and says what it claims to.
    @Test func productionExampleFile() throws {
        let path = configDirectory.appendingPathComponent("sluice.production.yaml").path
        let configuration = try ConfigurationLoader.load(filePath: path, environment: [
            "SLUICE_STORAGE_DATABASE_URL": "postgres://sluice:pw@postgres:5432/sluice?sslmode=verify-full&sslrootcert=/etc/sluice/tls/postgres-ca.pem",
            "SLUICE_REDIS_URL": "redis://sluice:pw@redis:6379/0",
        ])
        #expect(configuration.upstreams.map(\.poolName) == ["small", "small", "large"])
        #expect(configuration.autoRouting.complex == "large" && configuration.autoRouting.simple == "small")
        #expect(configuration.auth.keys.first?.algorithm == "RS256" && configuration.auth.queryParameter == nil)
        #expect(configuration.auth.isEnabled && configuration.limits.limitsGenerations && configuration.limits.forwardedForHops == 1)
        #expect(configuration.quotas.period == .hours(24 * 30) && configuration.cache.enabled)
        #expect(configuration.chat.maxTokensLimit == 8192)
        #expect(configuration.tracing.sampleRatio == 0.1)
        // Redis: the URL with its password comes from the environment; certificates are verified.
        let redis = try #require(try configuration.redis.clientConfiguration())
        #expect(redis.url.user == "sluice" && redis.url.hasCredentials && redis.tls.verifiesCertificates)
        #expect(redis.commandTimeout == .seconds(2))
        #expect(try configuration.storage.backend == .postgres("postgres://sluice:pw@postgres:5432/sluice?sslmode=verify-full&sslrootcert=/etc/sluice/tls/postgres-ca.pem"))
        // Safe on the internet: the admin listener is its own port, tokens never in URLs, only its own pages.
        #expect(configuration.admin.enabled && configuration.admin.port != configuration.server.port)
        #expect(!configuration.server.allowedOrigins.isEmpty && !configuration.server.allowedOrigins.contains("*"))
    }

    /// What the production example tells operators to put in SLUICE_STORAGE_DATABASE_URL
    /// verifies the server (and the example says so).
    @Test func productionExampleVerifiesPostgreSQL() throws {
        let text = try String(contentsOfFile: configDirectory.appendingPathComponent("sluice.production.yaml").path, encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.contains("SLUICE_STORAGE_DATABASE_URL") })
        let url = try #require(line.split(separator: " ").first { $0.hasPrefix("postgres://") })
        #expect(try PostgresURL(String(url)).verification == .full)
    }

    @Test func autobahnFile() throws {
        let path = configDirectory.appendingPathComponent("autobahn.yaml").path
        let configuration = try ConfigurationLoader.load(filePath: path, environment: [:])
        var expected = SluiceConfiguration()
        expected.echo = true
        expected.server.port = 9001
        expected.server.maxFrameSize = 16_777_216
        expected.server.maxMessageSize = 16_777_216
        expected.server.maxOutboundBytes = 67_108_864
        expected.server.heartbeatInterval = .seconds(60)
        expected.server.deflate.enabled = true
        expected.server.deflate.minSize = 0
        #expect(configuration == expected)
    }

    @Test func environmentVariableNamesAreUnique() {
        let names = ConfigurationLoader.keys.map(ConfigurationLoader.environmentVariable(forKey:))
        #expect(Set(names).count == names.count)
        #expect(ConfigurationLoader.environmentVariable(forKey: "websocket.deflate.enabled") == "SLUICE_WEBSOCKET_DEFLATE_ENABLED")
    }
}

@Suite struct LayeringTests {
    @Test func yamlOverridesDefaults() throws {
        let configuration = try configuration(fromYAML: """
            log_level: DEBUG
            echo: true
            instance_id: gw-1
            server:
              host: 0.0.0.0
              port: 9000
              subprotocols: [sluice.v2, sluice.v1]
              allowed_origins:
                - https://a.example
              tls:
                certificate_path: /etc/cert.pem
                private_key_path: /etc/key.pem
              drain:
                deadline: 1m
            websocket:
              max_message_size: 8MiB
              heartbeat_interval: 2.5
              deflate:
                enabled: false
                level: 9
            """)
        var expected = SluiceConfiguration()
        expected.logLevel = "debug"
        expected.echo = true
        expected.instanceID = "gw-1"
        expected.server.host = "0.0.0.0"
        expected.server.port = 9000
        expected.server.subprotocols = ["sluice.v2", "sluice.v1"]
        expected.server.allowedOrigins = ["https://a.example"]
        expected.server.tls.certificatePath = "/etc/cert.pem"
        expected.server.tls.privateKeyPath = "/etc/key.pem"
        expected.server.drain.deadline = .minutes(1)
        expected.server.maxMessageSize = 8 << 20
        expected.server.heartbeatInterval = .milliseconds(2500)
        expected.server.deflate.enabled = false
        expected.server.deflate.level = 9
        #expect(configuration == expected)
    }

    @Test func emptyFileAndEmptySectionsChangeNothing() throws {
        #expect(try configuration(fromYAML: "") == SluiceConfiguration())
        #expect(try configuration(fromYAML: "# only a comment\n") == SluiceConfiguration())
        #expect(try configuration(fromYAML: "server:\n  tls:\n") == SluiceConfiguration())
    }

    @Test func environmentOverridesYAML() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-env-\(UUID().uuidString).yaml")
        try "server:\n  port: 9000\nlog_level: warning\nwebsocket:\n  heartbeat_interval: 30s\n"
            .write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }

        let configuration = try ConfigurationLoader.load(filePath: file.path, environment: [
            "SLUICE_SERVER_PORT": "9100",
            "SLUICE_WEBSOCKET_HEARTBEAT_INTERVAL": "5s",
            "SLUICE_WEBSOCKET_DEFLATE_ENABLED": "false",
            "SLUICE_LOG_LEVEL": "debug",
            "SLUICE_ECHO": "true",
            "SLUICE_SERVER_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "SLUICE_WEBSOCKET_MAX_FRAME_SIZE": "64KiB",
            "SLUICE_CONFIG": "/not/read/by/load",
        ])
        #expect(configuration.server.port == 9100)
        #expect(configuration.server.heartbeatInterval == .seconds(5))
        #expect(configuration.server.deflate.enabled == false)
        #expect(configuration.logLevel == "debug")
        #expect(configuration.echo)
        #expect(configuration.server.allowedOrigins == ["https://a.example", "https://b.example"])
        #expect(configuration.server.maxFrameSize == 65536)
    }

    @Test func emptyEnvironmentValueClearsOptionalsAndLists() throws {
        var configuration = try configuration(fromYAML: "instance_id: gw-1\nserver:\n  subprotocols: [a]\n")
        try ConfigurationLoader.applyEnvironment(["SLUICE_INSTANCE_ID": "", "SLUICE_SERVER_SUBPROTOCOLS": ""], to: &configuration)
        #expect(configuration.instanceID == nil)
        #expect(configuration.server.subprotocols == [])
    }

    @Test func badEnvironmentValueNamesTheVariable() {
        let error = configurationError {
            var configuration = SluiceConfiguration()
            try ConfigurationLoader.applyEnvironment(["SLUICE_SERVER_PORT": "eighty"], to: &configuration)
        }
        #expect(error?.kind == .wrongType)
        #expect(error?.key == "server.port")
        #expect(error?.value == "eighty")
        #expect(error?.source == .environment(variable: "SLUICE_SERVER_PORT"))
        #expect(error?.description.contains("SLUICE_SERVER_PORT") == true)
    }

    @Test func flagsOverrideEnvironment() throws {
        var overrides = ConfigurationOverrides()
        overrides.port = 9200
        overrides.host = "0.0.0.0"
        overrides.eventLoopThreads = 2
        overrides.echo = true
        overrides.logLevel = "error"
        overrides.maxConnections = 50
        overrides.maxMessageSize = "1MiB"
        overrides.deflateEnabled = false
        overrides.tlsCertificatePath = "/c.pem"
        overrides.tlsPrivateKeyPath = "/k.pem"
        overrides.allowedOrigins = ["https://c.example"]
        overrides.heartbeatInterval = "500ms"

        let configuration = try ConfigurationLoader.load(
            filePath: nil,
            environment: [
                "SLUICE_SERVER_PORT": "9100",
                "SLUICE_LOG_LEVEL": "debug",
                "SLUICE_WEBSOCKET_DEFLATE_ENABLED": "true",
                "SLUICE_SERVER_ALLOWED_ORIGINS": "https://a.example",
                "SLUICE_WEBSOCKET_HEARTBEAT_INTERVAL": "5s",
                "SLUICE_SERVER_MAX_CONNECTIONS": "7",
            ],
            overrides: overrides
        )
        #expect(configuration.server.port == 9200)
        #expect(configuration.server.host == "0.0.0.0")
        #expect(configuration.server.eventLoopThreads == 2)
        #expect(configuration.echo)
        #expect(configuration.logLevel == "error")
        #expect(configuration.server.maxConnections == 50)
        #expect(configuration.server.maxMessageSize == 1 << 20)
        #expect(configuration.server.deflate.enabled == false)
        #expect(configuration.server.tls.isEnabled)
        #expect(configuration.server.allowedOrigins == ["https://c.example"])
        #expect(configuration.server.heartbeatInterval == .milliseconds(500))
    }

    @Test func unsetFlagsKeepEnvironmentValues() throws {
        var configuration = SluiceConfiguration()
        try ConfigurationLoader.applyEnvironment(["SLUICE_SERVER_PORT": "9100"], to: &configuration)
        try ConfigurationLoader.applyOverrides(ConfigurationOverrides(), to: &configuration)
        #expect(configuration.server.port == 9100)
    }

    @Test func badFlagNamesTheOption() {
        var overrides = ConfigurationOverrides()
        overrides.port = 70000
        let error = configurationError {
            _ = try ConfigurationLoader.load(filePath: nil, environment: [:], overrides: overrides)
        }
        #expect(error?.kind == .outOfRange)
        #expect(error?.source == .commandLine(option: "--port"))
    }

    @Test func configurationFilePathPrefersTheOption() {
        let environment = ["SLUICE_CONFIG": "/from/env.yaml"]
        #expect(ConfigurationLoader.configurationFilePath(option: "/from/flag.yaml", environment: environment) == "/from/flag.yaml")
        #expect(ConfigurationLoader.configurationFilePath(option: nil, environment: environment) == "/from/env.yaml")
        #expect(ConfigurationLoader.configurationFilePath(option: nil, environment: [:]) == nil)
    }
}

@Suite struct ValueParsingTests {
    @Test(arguments: [
        ("20s", TimeAmount.seconds(20)),
        ("500ms", .milliseconds(500)),
        ("2m", .minutes(2)),
        ("1h", .hours(1)),
        ("1.5s", .milliseconds(1500)),
        ("5", .seconds(5)),
        ("0.25", .milliseconds(250)),
        (" 10 s ", .seconds(10)),
        ("0", .zero),
    ])
    func goodDurations(text: String, expected: TimeAmount) throws {
        #expect(try ConfigurationLoader.parseDuration(text) == expected)
    }

    @Test(arguments: ["", "s", "20x", "ten seconds", "1e3", "inf", "0x10", "1:30", "20S", "-5s"])
    func badDurations(text: String) {
        let error = configurationError { _ = try ConfigurationLoader.parseDuration(text) }
        #expect(error?.value == text)
    }

    @Test func yamlNumbersAreSeconds() throws {
        let configuration = try configuration(fromYAML: "websocket:\n  heartbeat_interval: 3\n  close_timeout: 0.5\n")
        #expect(configuration.server.heartbeatInterval == .seconds(3))
        #expect(configuration.server.closeTimeout == .milliseconds(500))
    }

    @Test(arguments: [
        ("65536", 65536),
        ("64KiB", 65536),
        ("4MiB", 4 << 20),
        ("1GiB", 1 << 30),
        ("512KB", 512_000),
        ("4MB", 4_000_000),
        ("2GB", 2_000_000_000),
        ("100B", 100),
        ("64kib", 65536),
        ("0", 0),
    ])
    func goodSizes(text: String, expected: Int) throws {
        #expect(try ConfigurationLoader.parseSize(text) == expected)
    }

    @Test(arguments: ["", "KiB", "4 MiBs", "1.5MiB", "four", "4TiB", "99999999999999999999", "9223372036854775807KiB"])
    func badSizes(text: String) {
        let error = configurationError { _ = try ConfigurationLoader.parseSize(text) }
        #expect(error?.value == text)
    }

    @Test func booleansAcceptCommonSpellings() throws {
        for (text, expected) in [("true", true), ("FALSE", false), ("yes", true), ("off", false), ("1", true), ("0", false)] {
            var configuration = SluiceConfiguration()
            try ConfigurationLoader.applyEnvironment(["SLUICE_ECHO": text], to: &configuration)
            #expect(configuration.echo == expected, "\(text)")
        }
    }
}

@Suite struct ErrorTests {
    @Test func unknownKeyIsNamedWithLineAndSuggestion() {
        let error = configurationError {
            _ = try configuration(fromYAML: "server:\n  host: 0.0.0.0\n  prot: 9000\n")
        }
        #expect(error?.kind == .unknownKey)
        #expect(error?.key == "server.prot")
        #expect(error?.source == .file(path: "test.yaml", line: 3, column: 3))
        #expect(error?.description.contains("server.prot") == true)
        #expect(error?.description.contains("did you mean server.port?") == true)
    }

    @Test func unknownTopLevelKeyAndSection() {
        #expect(configurationError { _ = try configuration(fromYAML: "loglevel: info\n") }?.key == "loglevel")
        #expect(configurationError { _ = try configuration(fromYAML: "database:\n  url: x\n") }?.key == "database")
        #expect(configurationError { _ = try configuration(fromYAML: "websocket:\n  deflate:\n    window: 3\n") }?.key == "websocket.deflate.window")
    }

    @Test func wrongTypes() {
        let cases: [(yaml: String, key: String)] = [
            ("server:\n  port: eighty\n", "server.port"),
            ("server:\n  port: 80.5\n", "server.port"),
            ("server:\n  port: [80]\n", "server.port"),
            ("server:\n  port:\n", "server.port"),
            ("echo: maybe\n", "echo"),
            ("server:\n  subprotocols: sluice.v1\n", "server.subprotocols"),
            ("server:\n  tls: yes\n", "server.tls"),
            ("server: 8080\n", "server"),
            ("websocket:\n  deflate:\n    level:\n      value: 3\n", "websocket.deflate.level"),
            ("websocket:\n  heartbeat_interval: soon\n", "websocket.heartbeat_interval"),
            ("websocket:\n  max_frame_size: big\n", "websocket.max_frame_size"),
        ]
        for (yaml, key) in cases {
            let error = configurationError { _ = try configuration(fromYAML: yaml) }
            #expect(error?.kind == .wrongType, "\(yaml)")
            #expect(error?.key == key, "\(yaml)")
        }
    }

    @Test func wrongTypeErrorGivesValueAndLine() {
        let error = configurationError {
            _ = try configuration(fromYAML: "log_level: info\nwebsocket:\n  heartbeat_interval: 20x\n")
        }
        #expect(error?.value == "20x")
        #expect(error?.source == .file(path: "test.yaml", line: 3, column: 23))
        #expect(error?.description.hasPrefix("test.yaml:3:23: websocket.heartbeat_interval: invalid value \"20x\"") == true)
    }

    @Test func outOfRangeValues() {
        let cases: [(yaml: String, key: String)] = [
            ("server:\n  port: 65536\n", "server.port"),
            ("server:\n  port: -1\n", "server.port"),
            ("server:\n  max_connections: 0\n", "server.max_connections"),
            ("server:\n  handshake_timeout: 0s\n", "server.handshake_timeout"),
            ("server:\n  idle_timeout: 0s\n", "server.idle_timeout"),
            ("server:\n  max_connections_per_address: -1\n", "server.max_connections_per_address"),
            ("server:\n  memory_budget: 64000\n", "server.memory_budget"),
            ("websocket:\n  deflate:\n    server_max_window_bits: 8\n", "websocket.deflate.server_max_window_bits"),
            ("websocket:\n  deflate:\n    server_max_window_bits: 16\n", "websocket.deflate.server_max_window_bits"),
            ("websocket:\n  deflate:\n    level: 0\n", "websocket.deflate.level"),
            ("websocket:\n  deflate:\n    level: 10\n", "websocket.deflate.level"),
            ("websocket:\n  deflate:\n    memory_level: 0\n", "websocket.deflate.memory_level"),
            ("websocket:\n  deflate:\n    min_size: -1\n", "websocket.deflate.min_size"),
            ("websocket:\n  max_frame_size: 0\n", "websocket.max_frame_size"),
            ("websocket:\n  max_message_size: 0KiB\n", "websocket.max_message_size"),
            ("websocket:\n  max_outbound_bytes: -5\n", "websocket.max_outbound_bytes"),
            ("websocket:\n  heartbeat_timeout: 0\n", "websocket.heartbeat_timeout"),
            ("websocket:\n  heartbeat_timeout: -1s\n", "websocket.heartbeat_timeout"),
        ]
        for (yaml, key) in cases {
            let error = configurationError { _ = try configuration(fromYAML: yaml) }
            #expect(error?.kind == .outOfRange, "\(yaml)")
            #expect(error?.key == key, "\(yaml)")
        }
    }

    @Test func edgeLimitsFromTheFileAndTheEnvironment() throws {
        let edge = try configuration(fromYAML: """
            server:
              memory_budget: 2GiB
              max_connections_per_address: 0
              idle_timeout: 2m
            """)
        #expect(edge.server.memoryBudget == 2 << 30)
        #expect(edge.server.maxConnectionsPerAddress == 0)
        #expect(edge.server.idleTimeout == .minutes(2))
        let defaults = SluiceConfiguration().server
        #expect(defaults.memoryBudget == 512 << 20 && defaults.maxConnectionsPerAddress == 256 && defaults.idleTimeout == .seconds(75))
        let fromEnvironment = try ConfigurationLoader.load(filePath: nil, environment: [
            "SLUICE_SERVER_MEMORY_BUDGET": "64MiB", "SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "20", "SLUICE_SERVER_IDLE_TIMEOUT": "5s",
        ])
        #expect(fromEnvironment.server.memoryBudget == 64 << 20)
        #expect(fromEnvironment.server.maxConnectionsPerAddress == 20)
        #expect(fromEnvironment.server.idleTimeout == .seconds(5))
        // The smallest budget accepted, and a size that does not fit is refused rather than wrapped.
        #expect(try configuration(fromYAML: "server:\n  memory_budget: 64KiB\n").server.memoryBudget == 65536)
        #expect(configurationError { _ = try configuration(fromYAML: "server:\n  memory_budget: 9223372036854775807KiB\n") } != nil)
    }

    @Test func rangeBoundsAreAccepted() throws {
        let configuration = try configuration(fromYAML: """
            server:
              port: 65535
            websocket:
              deflate:
                server_max_window_bits: 9
                level: 1
                memory_level: 9
            """)
        #expect(configuration.server.port == 65535)
        #expect(configuration.server.deflate.serverMaxWindowBits == 9)
    }

    @Test func invalidValues() {
        #expect(configurationError { _ = try configuration(fromYAML: "log_level: verbose\n") }?.kind == .invalidValue)
        #expect(configurationError { _ = try configuration(fromYAML: "server:\n  path: v1/ws\n") }?.kind == .invalidValue)
        #expect(configurationError { _ = try configuration(fromYAML: "server:\n  host: ''\n") }?.kind == .invalidValue)
    }

    @Test func lowWatermarkAboveHighIsRejectedAfterAllLayers() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-wm-\(UUID().uuidString).yaml")
        try "websocket:\n  write_buffer_low_watermark: 512KiB\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }

        let error = configurationError { _ = try ConfigurationLoader.load(filePath: file.path, environment: [:]) }
        #expect(error?.kind == .inconsistent)
        #expect(error?.key == "websocket.write_buffer_low_watermark")

        // A later layer can repair what an earlier one got wrong.
        let repaired = try ConfigurationLoader.load(
            filePath: file.path,
            environment: ["SLUICE_WEBSOCKET_WRITE_BUFFER_HIGH_WATERMARK": "1MiB"]
        )
        #expect(repaired.server.writeBufferLowWatermark == 512 * 1024)
    }

    /// `chat.max_tokens_limit`: the ceiling for a client's max_tokens on every front door.
    @Test func maxTokensLimitIsParsedAndBoundsTheDefault() throws {
        #expect(SluiceConfiguration().chat.maxTokensLimit == 32_768)
        #expect(try configuration(fromYAML: "chat:\n  max_tokens_limit: 4096\n").chat.requestLimits.maxTokensLimit == 4096)
        let fromEnvironment = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_CHAT_MAX_TOKENS_LIMIT": "2048"])
        #expect(fromEnvironment.chat.maxTokensLimit == 2048)
        for bad in ["0", "1000001", "-5"] {
            let error = configurationError { _ = try configuration(fromYAML: "chat:\n  max_tokens_limit: \(bad)\n") }
            #expect(error?.kind == .outOfRange && error?.key == "chat.max_tokens_limit", "\(bad)")
        }
        // The default max_tokens must itself be within the limit.
        let error = configurationError {
            _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_CHAT_MAX_TOKENS_LIMIT": "512"])
        }
        #expect(error?.kind == .inconsistent && error?.key == "chat.default_max_tokens")
    }

    @Test func tlsNeedsBothPaths() {
        var overrides = ConfigurationOverrides()
        overrides.tlsCertificatePath = "/c.pem"
        let error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: [:], overrides: overrides) }
        #expect(error?.kind == .inconsistent)
    }

    @Test func invalidYAMLReportsLine() {
        let error = configurationError { _ = try configuration(fromYAML: "server:\n  port: 1\n  host: [a\n") }
        #expect(error?.kind == .invalidYAML)
        if case .file(let path, let line, _)? = error?.source {
            #expect(path == "test.yaml")
            #expect(line != nil)
        } else {
            Issue.record("expected a file source, got \(String(describing: error?.source))")
        }
    }

    @Test func duplicateKeysAreRejected() {
        #expect(configurationError { _ = try configuration(fromYAML: "echo: true\necho: false\n") }?.kind == .invalidYAML)
    }

    @Test func topLevelMustBeAMapping() {
        #expect(configurationError { _ = try configuration(fromYAML: "- a\n- b\n") }?.kind == .invalidYAML)
    }

    @Test func missingFileIsUnreadable() {
        let error = configurationError { _ = try ConfigurationLoader.load(filePath: "/nonexistent/sluice.yaml", environment: [:]) }
        #expect(error?.kind == .unreadableFile)
        #expect(error?.description.contains("/nonexistent/sluice.yaml") == true)
    }
}

@Suite struct NamedUpstreamsTests {
    @Test func listInTheFile() throws {
        let configuration = try configuration(fromYAML: """
            upstreams:
              - name: llama
                kind: openai
                base_url: http://10.0.0.5:8000
                model: meta-llama/Llama-3.1-8B-Instruct
                api_key: secret
              - name: trt
                kind: triton
                base_url: http://10.0.0.6:8000
              - name: demo
                kind: sim
            """)
        #expect(configuration.upstreams == [
            NamedUpstream(name: "llama", kind: .openai, baseURL: "http://10.0.0.5:8000", model: "meta-llama/Llama-3.1-8B-Instruct", apiKey: "secret"),
            NamedUpstream(name: "trt", kind: .triton, baseURL: "http://10.0.0.6:8000"),
            NamedUpstream(name: "demo", kind: .sim),
        ])
        try configuration.validate()
    }

    @Test func listInTheEnvironmentAsJSONOrFlowYAML() throws {
        let json = try ConfigurationLoader.load(filePath: nil, environment: [
            "SLUICE_UPSTREAMS": #"[{"name": "a", "kind": "openai", "base_url": "http://127.0.0.1:8000"}, {"name": "b", "kind": "sim"}]"#,
        ])
        #expect(json.upstreams.map(\.name) == ["a", "b"])
        let flow = try ConfigurationLoader.load(filePath: nil, environment: [
            "SLUICE_UPSTREAMS": #"[{name: a, kind: triton, base_url: "http://127.0.0.1:8000", model: m}]"#,
        ])
        #expect(flow.upstreams == [NamedUpstream(name: "a", kind: .triton, baseURL: "http://127.0.0.1:8000", model: "m")])
        let cleared = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_UPSTREAMS": ""])
        #expect(cleared.upstreams.isEmpty)
    }

    @Test(arguments: [
        ("upstreams:\n  - kind: sim\n", "needs a name"),
        ("upstreams:\n  - {name: a, kind: sim}\n  - {name: a, kind: sim}\n", "used twice"),
        ("upstreams:\n  - {name: a, kind: vllm}\n", "kind must be one of"),
        ("upstreams:\n  - {name: a, kind: openai}\n", "needs base_url"),
        ("upstreams:\n  - {name: a, kind: sim, bse_url: x}\n", "unknown key bse_url"),
        ("upstreams:\n  - just-a-name\n", "must be mappings"),
        ("upstreams: llama\n", "expected a list of upstreams"),
    ])
    func badEntriesAreNamed(yaml: String, expected: String) {
        let error = configurationError { _ = try configuration(fromYAML: yaml) }
        #expect(error?.key?.hasPrefix("upstreams") == true)
        #expect(error?.description.contains(expected) == true, "\(error?.description ?? "no error")")
        #expect(error?.description.contains("test.yaml") == true)
    }

    @Test func eitherTheListOrTheSingleUpstream() {
        let error = configurationError {
            _ = try ConfigurationLoader.load(filePath: nil, environment: [
                "SLUICE_UPSTREAMS": "[{name: a, kind: sim}]", "SLUICE_UPSTREAM_BASE_URL": "http://127.0.0.1:8000",
            ])
        }
        #expect(error?.kind == .inconsistent && error?.key == "upstreams")
    }
}

@Suite struct RedisSettingsTests {
    @Test func fileEnvironmentAndFlag() throws {
        var configuration = try configuration(fromYAML: "redis:\n  url: redis://127.0.0.1:6380/2\n  stream_max_entries: 500\n  owner_ttl: 2s\n")
        #expect(configuration.redis.url == "redis://127.0.0.1:6380/2")
        #expect(configuration.redis.broker.streamMaxEntries == 500 && configuration.redis.broker.ownerTTL == .seconds(2))
        configuration = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_REDIS_URL": "redis://10.0.0.1:6379/0"])
        #expect(configuration.redis.url == "redis://10.0.0.1:6379/0")
        var overrides = ConfigurationOverrides()
        overrides.redisURL = "redis://127.0.0.1:7000"
        overrides.instanceID = "gw-7"
        configuration = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_REDIS_URL": "redis://10.0.0.1:6379/0"], overrides: overrides)
        #expect(configuration.redis.url == "redis://127.0.0.1:7000" && configuration.instanceID == "gw-7")
    }

    @Test func aBadURLIsNamed() {
        let error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_REDIS_URL": "http://x"]) }
        #expect(error?.key == "redis.url" && error?.kind == .invalidValue)
    }

    @Test func aBadURLsPasswordIsNotInTheError() {
        let error = configurationError {
            _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_REDIS_URL": "redis://app:hunter2-secret@redis:notaport/0"])
        }
        #expect(error?.key == "redis.url" && error?.kind == .invalidValue)
        #expect(error.map { "\($0)" }?.contains("hunter2") == false, "\(String(describing: error))")
        #expect(error?.value == "redis://app:***@redis:notaport/0")
    }

    @Test func credentialsTLSDeadlinesAndBoundsReachTheClient() throws {
        let yaml = """
            redis:
              url: rediss://sluice:p%40ss@redis.internal:6380/2
              tls:
                server_name: redis.example.com
                verify: true
              command_timeout: 750ms
              max_pending_commands: 500
              max_reply_bytes: 8MiB
              max_reply_elements: 4096
            """
        let client = try #require(try configuration(fromYAML: yaml).redis.clientConfiguration())
        #expect(client.url == RedisURL(host: "redis.internal", port: 6380, database: 2, user: "sluice", password: "p@ss", usesTLS: true))
        #expect(client.tls.serverName == "redis.example.com" && client.tls.verifiesCertificates && client.tls.caFile == nil)
        #expect(client.commandTimeout == .milliseconds(750) && client.maxPendingCommands == 500)
        #expect(client.replyLimits == RESPParser.Limits(maxReplyBytes: 8 << 20, maxReplyElements: 4096))
        // The same from the environment.
        // (Not validated: the files do not exist here.)
        var environment = SluiceConfiguration()
        try ConfigurationLoader.applyEnvironment([
            "SLUICE_REDIS_URL": "rediss://:pw@r:6380", "SLUICE_REDIS_TLS_CA_FILE": "/etc/ca.pem",
            "SLUICE_REDIS_TLS_CERTIFICATE_FILE": "/etc/c.pem", "SLUICE_REDIS_TLS_PRIVATE_KEY_FILE": "/etc/k.pem",
            "SLUICE_REDIS_TLS_VERIFY": "false", "SLUICE_REDIS_COMMAND_TIMEOUT": "5s",
        ], to: &environment)
        let tls = environment.redis.tls
        #expect(tls.caFile == "/etc/ca.pem" && tls.certificateFile == "/etc/c.pem" && tls.privateKeyFile == "/etc/k.pem" && !tls.verify)
        #expect(environment.redis.commandTimeout == .seconds(5))
    }

    @Test func defaultsAreDocumented() throws {
        let defaults = SluiceConfiguration().redis
        #expect(defaults.commandTimeout == .seconds(2) && defaults.maxPendingCommands == 10_000)
        #expect(defaults.maxReplyBytes == 64 << 20 && defaults.maxReplyElements == 1 << 20)
        #expect(defaults.tls == RedisTLSSettings() && defaults.tls.verify)
    }

    @Test func tlsSettingsWithoutARedissURLAreAMistake() {
        let error = configurationError {
            _ = try ConfigurationLoader.load(filePath: nil, environment: [
                "SLUICE_REDIS_URL": "redis://:pw@r:6379", "SLUICE_REDIS_TLS_CA_FILE": "/etc/ca.pem",
            ])
        }
        #expect(error?.kind == .inconsistent && error?.key == "redis.tls.ca_file")
        #expect(error.map { "\($0)" }?.contains("redis://:***@r:6379/0") == true, "\(String(describing: error))")
    }

    @Test func tlsFilesThatCannotBeLoadedStopTheStart() {
        let missing = configurationError {
            _ = try ConfigurationLoader.load(filePath: nil, environment: [
                "SLUICE_REDIS_URL": "rediss://r:6380", "SLUICE_REDIS_TLS_CA_FILE": "/nonexistent/redis-ca.pem",
            ])
        }
        #expect(missing?.key == "redis.tls" && missing?.reason.contains("/nonexistent/redis-ca.pem") == true, "\(String(describing: missing))")
        let halfPair = configurationError {
            _ = try ConfigurationLoader.load(filePath: nil, environment: [
                "SLUICE_REDIS_URL": "rediss://r:6380", "SLUICE_REDIS_TLS_CERTIFICATE_FILE": "/etc/c.pem",
            ])
        }
        #expect(halfPair?.reason.contains("private_key_file") == true, "\(String(describing: halfPair))")
    }

    @Test(arguments: [
        ("SLUICE_REDIS_COMMAND_TIMEOUT", "0s"),
        ("SLUICE_REDIS_MAX_PENDING_COMMANDS", "0"),
        ("SLUICE_REDIS_MAX_REPLY_BYTES", "10"),
        ("SLUICE_REDIS_MAX_REPLY_ELEMENTS", "1"),
        ("SLUICE_REDIS_TLS_VERIFY", "maybe"),
    ])
    func outOfRangeValuesAreRefused(variable: String, value: String) {
        let error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: [variable: value]) }
        #expect(error != nil, "\(variable)=\(value) was accepted")
    }
}

@Suite struct StorageSettingsTests {
    @Test func theEmbeddedSQLiteFileIsTheDefault() throws {
        let configuration = try ConfigurationLoader.load(filePath: nil, environment: [:])
        #expect(try configuration.storage.backend == .sqlite(path: "./.sluice/sluice.db"))
        #expect(configuration.storage.queueCapacity == 10_000 && configuration.storage.batchSize == 100)
    }

    @Test func fileEnvironmentAndFlagsChooseTheBackend() throws {
        var configuration = try configuration(fromYAML: "storage:\n  data_dir: /var/lib/sluice\n  queue_capacity: 500\n")
        #expect(try configuration.storage.backend == .sqlite(path: "/var/lib/sluice/sluice.db"))
        #expect(configuration.storage.queueCapacity == 500)
        configuration = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_STORAGE_DATABASE_URL": "memory"])
        #expect(try configuration.storage.backend == .memory)
        var overrides = ConfigurationOverrides()
        overrides.databaseURL = "postgres://u@127.0.0.1:5433/chat"
        configuration = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_STORAGE_DATABASE_URL": "memory"], overrides: overrides)
        #expect(try configuration.storage.backend == .postgres("postgres://u@127.0.0.1:5433/chat"))
        overrides = ConfigurationOverrides()
        overrides.databaseURL = "sqlite:///tmp/x.db"
        overrides.dataDirectory = "/ignored"
        configuration = try ConfigurationLoader.load(filePath: nil, environment: [:], overrides: overrides)
        #expect(try configuration.storage.backend == .sqlite(path: "/tmp/x.db"))
    }

    @Test func aBadDatabaseURLIsNamed() {
        for url in ["mysql://x", "postgres://"] {
            let error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_STORAGE_DATABASE_URL": url]) }
            #expect(error?.key == "storage.database_url" && error?.kind == .invalidValue, "\(url)")
        }
    }
}

@Suite struct TracingSettingsTests {
    @Test func tracingIsOffByDefault() throws {
        let configuration = try ConfigurationLoader.load(filePath: nil, environment: [:])
        #expect(configuration.tracing.otlpEndpoint == nil && configuration.tracing.sampleRatio == 1)
    }

    @Test func fileSluiceVariablesAndOpenTelemetryVariables() throws {
        var configuration = try configuration(fromYAML: """
            tracing:
              otlp_endpoint: http://collector:4318
              service_name: chat-gateway
              sample_ratio: 0.25
              headers: ["X-Key=abc"]
            """)
        #expect(configuration.tracing.otlpEndpoint == "http://collector:4318")
        #expect(configuration.tracing.serviceName == "chat-gateway" && configuration.tracing.sampleRatio == 0.25)
        #expect(try configuration.tracing.parsedHeaders.get() == ["X-Key": "abc"])
        // OpenTelemetry's own variables: the base endpoint gets the signal path.
        configuration = try ConfigurationLoader.load(filePath: nil, environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318/", "OTEL_SERVICE_NAME": "gw", "OTEL_TRACES_SAMPLER_ARG": "0.5",
            "OTEL_EXPORTER_OTLP_HEADERS": "a=1, b=2",
        ])
        #expect(configuration.tracing.otlpEndpoint == "http://otel:4318/v1/traces")
        #expect(configuration.tracing.serviceName == "gw" && configuration.tracing.sampleRatio == 0.5)
        #expect(try configuration.tracing.parsedHeaders.get() == ["a": "1", "b": "2"])
        // The traces-specific one is used as is, and SLUICE_* wins over both.
        configuration = try ConfigurationLoader.load(filePath: nil, environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom",
        ])
        #expect(configuration.tracing.otlpEndpoint == "http://traces:4318/custom")
        var overrides = ConfigurationOverrides()
        overrides.otlpEndpoint = "http://flag:4318"
        configuration = try ConfigurationLoader.load(
            filePath: nil, environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "SLUICE_TRACING_OTLP_ENDPOINT": "http://env:4318"],
            overrides: overrides)
        #expect(configuration.tracing.otlpEndpoint == "http://flag:4318")
    }

    @Test func badTracingValuesAreNamed() {
        var error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_TRACING_OTLP_ENDPOINT": "grpc://x:4317"]) }
        #expect(error?.key == "tracing.otlp_endpoint" && error?.kind == .invalidValue)
        error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_TRACING_SAMPLE_RATIO": "1.5"]) }
        #expect(error?.key == "tracing.sample_ratio" && error?.kind == .outOfRange)
        error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: ["OTEL_TRACES_SAMPLER_ARG": "lots"]) }
        #expect(error?.key == "tracing.sample_ratio" && error?.kind == .wrongType)
        error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_TRACING_HEADERS": "novalue"]) }
        #expect(error?.key == "tracing.headers" && error?.kind == .invalidValue)
    }
}

@Suite struct LogOutputTests {
    @Test func jsonFieldsAreEscapedAndTimestampsAreRFC3339() throws {
        let quoted = JSONLogHandler.quoted("a \"b\"\n\\c\u{01}é")
        let decoded = try JSONSerialization.jsonObject(with: Data("[\(quoted)]".utf8)) as? [String]
        #expect(decoded == ["a \"b\"\n\\c\u{01}é"])
        let timestamp = JSONLogHandler.timestamp()
        #expect(timestamp.count == 27 && timestamp.hasSuffix("Z"))
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let parsed = try #require(formatter.date(from: String(timestamp.prefix(23)) + "Z"))
        #expect(abs(parsed.timeIntervalSinceNow) < 60)
    }

    @Test func theFormatIsASetting() throws {
        #expect(try ConfigurationLoader.load(filePath: nil, environment: [:]).logFormat == .auto)
        #expect(try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_LOG_FORMAT": "json"]).logFormat == .json)
        var overrides = ConfigurationOverrides()
        overrides.logFormat = "text"
        #expect(try ConfigurationLoader.load(filePath: nil, environment: [:], overrides: overrides).logFormat == .text)
        let error = configurationError { _ = try ConfigurationLoader.load(filePath: nil, environment: ["SLUICE_LOG_FORMAT": "xml"]) }
        #expect(error?.key == "log_format")
    }
}

@Suite struct JobAndToolSettingsTests {
    @Test func schedulesAndQueueSettingsInTheFile() throws {
        let configuration = try configuration(fromYAML: """
            jobs:
              visibility_timeout: 5s
              max_attempts: 5
              retry_backoff: 250ms
              workers_in_serve: 2
              schedules:
                - name: nightly-report
                  cron: "0 3 * * *"
                  kind: report
                  input: '{"prompt": "yesterday"}'
                  priority: low
                  user: ops
                - name: tick
                  every: 15m
                  kind: echo
            """)
        #expect(configuration.jobs.queue.visibilityTimeout == .seconds(5))
        #expect(configuration.jobs.queue.maxAttempts == 5)
        #expect(configuration.jobs.queue.retryBackoff == .milliseconds(250))
        #expect(configuration.jobs.workersInServe == 2)
        #expect(configuration.jobs.schedules.map(\.name) == ["nightly-report", "tick"])
        #expect(configuration.jobs.schedules[0].timing == .cron(try CronSchedule("0 3 * * *")))
        #expect(configuration.jobs.schedules[0].priority == .low && configuration.jobs.schedules[0].user == "ops")
        #expect(configuration.jobs.schedules[0].input == #"{"prompt": "yesterday"}"#)
        #expect(configuration.jobs.schedules[1].timing == .every(.minutes(15)) && configuration.jobs.schedules[1].input == "{}")
        try configuration.validate()
    }

    @Test(arguments: [
        ("jobs:\n  schedules:\n    - {name: a, kind: echo}\n", "exactly one of every, cron"),
        ("jobs:\n  schedules:\n    - {name: a, kind: echo, cron: '61 * * * *'}\n", "minute"),
        ("jobs:\n  schedules:\n    - {name: a, kind: echo, every: 500ms}\n", "at least 1s"),
        ("jobs:\n  schedules:\n    - {name: a, kind: echo, every: 1m, input: '{oops'}\n", "input must be JSON"),
        ("jobs:\n  schedules:\n    - {name: a, kind: echo, every: 1m}\n    - {name: a, kind: echo, every: 1m}\n", "used twice"),
        ("tools:\n  webhooks:\n    - {name: calculator, url: 'http://x/'}\n", "taken"),
        ("tools:\n  webhooks:\n    - {name: w, url: 'ftp://x/'}\n", "http(s) URL"),
        ("tools:\n  webhooks:\n    - {name: w, url: 'http://x/', parameters: '[1]'}\n", "JSON schema object"),
    ])
    func badEntriesAreNamed(yaml: String, expected: String) {
        let error = configurationError { _ = try configuration(fromYAML: yaml) }
        #expect(error?.description.contains(expected) == true, "\(error?.description ?? "no error")")
    }

    @Test func toolsMustExistAndHttpGetNeedsHosts() throws {
        let unknown = try configuration(fromYAML: "tools:\n  enabled: [calculator, weather]\n")
        #expect(configurationError { try unknown.validate() }?.key == "tools.enabled")
        let noHosts = try configuration(fromYAML: "tools:\n  enabled: [http_get]\n")
        #expect(configurationError { try noHosts.validate() }?.key == "tools.http_get_allowed_hosts")
        let fine = try ConfigurationLoader.load(filePath: nil, environment: [
            "SLUICE_TOOLS_ENABLED": "calculator, http_get, lookup", "SLUICE_TOOLS_HTTP_GET_ALLOWED_HOSTS": "example.com",
            "SLUICE_TOOLS_WEBHOOKS": #"[{"name": "lookup", "url": "http://127.0.0.1:9000/lookup", "timeout": "2s"}]"#,
        ])
        #expect(fine.tools.enabled == ["calculator", "http_get", "lookup"])
        #expect(fine.tools.webhooks.first?.timeout == .seconds(2))
        try fine.validate()
    }
}
