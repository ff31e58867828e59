import Foundation
import Jobs
import Inference
import NIOCore
import RedisClient
import Sessions
import Storage
import Policy
import Telemetry
import Tools
import WSServer

/// Everything `sluice` can be told at start-up. Plain values with defaults; `ConfigurationLoader`
/// fills it from a YAML file, `SLUICE_*` environment variables and command-line overrides.
///
/// New sections (redis, database, upstreams, ...) are added as further stored properties with
/// defaults, plus their rows in `ConfigurationLoader`'s settings table.
public struct SluiceConfiguration: Sendable, Equatable {
    /// The WebSocket data plane (`server:` and `websocket:` sections of the file).
    public var server: WebSocketServerConfiguration = .init()
    /// Echo every message back instead of routing it (Autobahn conformance runs).
    public var echo: Bool = false
    /// Minimum log level: one of `SluiceConfiguration.logLevels`.
    public var logLevel: String = "info"
    /// `auto` (text on a terminal, JSON otherwise), `text` or `json`.
    public var logFormat: LogFormat = .auto
    /// Name of this instance in logs and metrics; nil means one is generated at start-up.
    public var instanceID: String? = nil
    /// The chat protocol (`chat:` section); its `instanceID` is filled in at start-up.
    public var chat: ChatConfiguration = .init(instanceID: "")
    /// The built-in simulator engine (`simulator:` section), the upstream when none is configured.
    public var simulator: SimulatorEngine.Configuration = .init()
    /// The inference upstream (`upstream:` section); its timeouts apply to named upstreams too.
    public var upstream: UpstreamSettings = .init()
    /// Named upstreams (`upstreams:` list); when given, they replace `upstream`'s kind, URL, model
    /// and key, the first is the default, and a client's `model` picks one by name or model.
    public var upstreams: [NamedUpstream] = []
    /// Several instances sharing generations and conversations (`redis:` section).
    public var redis: RedisSettings = .init()
    /// Where conversations, messages and usage are kept (`storage:` section).
    public var storage: StorageSettings = .init()
    /// Who may connect (`auth:` section); off unless a key is configured.
    public var auth: AuthSettings = .init()
    /// Rate limits (`limits:` section): per user and address, shared through Redis.
    public var limits: GatewayLimits = .init()
    /// Checks on user input (`moderation:` section).
    public var moderation: ModerationSettings = .init()
    /// The response cache (`cache:` section): exact-match answers in Redis, deterministic requests only.
    public var cache: CacheSettings = .init()
    /// Token quotas per user (`quotas:` section; limits are set with `sluice quota set`).
    public var quotas: QuotaSettings = .init()
    /// `model: "auto"` (`routing.auto`): which pool serves simple, medium and complex prompts.
    public var autoRouting: AutoRouting = .init()
    /// OpenTelemetry traces (`tracing:` section); off unless an OTLP endpoint is set.
    public var tracing: TracingSettings = .init()
    /// The job queue and workers (`jobs:`); jobs need `redis.url`.
    public var jobs: JobSettings = .init()
    /// Tools offered to the model (`tools:`).
    public var tools: ToolSettings = .init()
    /// The admin listener (`admin:`): `/metrics`, `/v1/stats`, any user's presence; loopback by default.
    public var admin: AdminSettings = .init()

    /// Log levels accepted by `logLevel`, most verbose first (the names swift-log uses).
    public static let logLevels: [String] = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    public init() {}

    public init(server: WebSocketServerConfiguration, echo: Bool = false, logLevel: String = "info", instanceID: String? = nil) {
        self.server = server
        self.echo = echo
        self.logLevel = logLevel
        self.instanceID = instanceID
    }

    /// Checks rules that involve more than one value. Single values are checked as they are read
    /// (so the error can point at the file line); these can only be checked once every layer
    /// (file, environment, flags) has been applied, because a later layer may fix an earlier one.
    public func validate() throws(ConfigurationError) {
        _ = try self.redis.clientConfiguration(checkFiles: true)
        do {
            _ = try self.storage.backend
        } catch {
            throw ConfigurationError(kind: .invalidValue, key: "storage.database_url", value: self.storage.databaseURL, reason: "\(error)")
        }
        if self.auth.jwtSecret != nil && self.auth.jwtSecretFile != nil {
            throw ConfigurationError(kind: .inconsistent, key: "auth.jwt_secret_file", value: nil,
                                     reason: "give auth.jwt_secret or auth.jwt_secret_file, not both")
        }
        if let path = self.auth.jwtSecretFile {
            do {
                _ = try AuthSettings.readSecretFile(path)
            } catch {
                throw ConfigurationError(kind: .invalidValue, key: "auth.jwt_secret_file", value: path, reason: error.description)
            }
        }
        if let secret = self.auth.jwtSecret, secret.utf8.count < JWTKeySpec.minimumSecretBytes("HS256") {
            throw ConfigurationError(kind: .invalidValue, key: "auth.jwt_secret", value: nil, reason: "an HS256 secret needs at least 32 bytes (RFC 7518)")
        }
        if self.admin.enabled, self.admin.port != 0, self.admin.port == self.server.port {
            throw ConfigurationError(kind: .inconsistent, key: "admin.port", value: String(self.admin.port),
                                     reason: "must differ from server.port: the admin listener is a port of its own")
        }
        for key in self.auth.keys {
            if let secret = key.secret, secret.utf8.count < JWTKeySpec.minimumSecretBytes(key.algorithm) {
                throw ConfigurationError(kind: .invalidValue, key: "auth.keys", value: key.kid,
                                         reason: "an \(key.algorithm) secret needs at least \(JWTKeySpec.minimumSecretBytes(key.algorithm)) bytes (RFC 7518)")
            }
        }
        for entry in self.auth.apiKeys where APIKeySpec(entry: entry) == nil {
            throw ConfigurationError(kind: .invalidValue, key: "auth.api_keys", value: entry, reason: "expected user:sha256hex (64 hex digits)")
        }
        let pools = Set(self.upstreams.map(\.poolName))
        for (key, name) in [("routing.auto.simple", self.autoRouting.simple), ("routing.auto.medium", self.autoRouting.medium),
                            ("routing.auto.complex", self.autoRouting.complex)] {
            if let name, !pools.contains(name) {
                throw ConfigurationError(kind: .inconsistent, key: key, value: name,
                                         reason: "no upstream pool is named \(name) (pools: \(pools.sorted().joined(separator: ", ")))")
            }
        }
        do {
            _ = try InputFilter(rules: self.moderation.rules)
        } catch {
            throw ConfigurationError(kind: .invalidValue, key: "moderation.rules", value: nil, reason: "\(error)")
        }
        if let endpoint = self.moderation.endpoint, URL(string: endpoint)?.scheme == nil {
            throw ConfigurationError(kind: .invalidValue, key: "moderation.endpoint", value: endpoint, reason: "expected http(s)://host:port")
        }
        if let endpoint = self.tracing.otlpEndpoint {
            do {
                try OTLPExporter.checkEndpoint(endpoint)
            } catch {
                throw ConfigurationError(kind: .invalidValue, key: "tracing.otlp_endpoint", value: endpoint, reason: "\(error)")
            }
        }
        if case .failure(let invalid) = self.tracing.parsedHeaders {
            throw ConfigurationError(kind: .invalidValue, key: "tracing.headers", value: invalid.entry, reason: "expected Name=value")
        }
        for name in self.tools.enabled where !ToolSettings.builtins.contains(name) && !self.tools.webhooks.contains(where: { $0.name == name }) {
            throw ConfigurationError(kind: .invalidValue, key: "tools.enabled", value: name,
                                     reason: "no such tool (built in: \(ToolSettings.builtins.joined(separator: ", ")); or define it under tools.webhooks)")
        }
        do {
            _ = try HTTPGetPolicy(allowedHosts: self.tools.httpGetAllowedHosts, allowedNetworks: self.tools.httpGetAllowedNetworks)
        } catch {
            throw ConfigurationError(
                kind: .invalidValue, key: self.tools.httpGetAllowedHosts.contains(error.entry) ? "tools.http_get_allowed_hosts" : "tools.http_get_allowed_networks",
                value: error.entry, reason: error.reason)
        }
        if self.tools.enabled.contains("http_get") && self.tools.httpGetAllowedHosts.isEmpty {
            throw ConfigurationError(kind: .inconsistent, key: "tools.http_get_allowed_hosts", value: nil,
                                     reason: "http_get is enabled but no host is allowed; list the hosts it may fetch from")
        }
        if self.chat.defaultMaxTokens > self.chat.maxTokensLimit {
            throw ConfigurationError(
                kind: .inconsistent, key: "chat.default_max_tokens", value: String(self.chat.defaultMaxTokens),
                reason: "must not exceed chat.max_tokens_limit (\(self.chat.maxTokensLimit))")
        }
        let server = self.server
        if server.writeBufferLowWatermark > server.writeBufferHighWatermark {
            throw ConfigurationError(
                kind: .inconsistent,
                key: "websocket.write_buffer_low_watermark",
                value: String(server.writeBufferLowWatermark),
                reason: "must not exceed websocket.write_buffer_high_watermark (\(server.writeBufferHighWatermark))"
            )
        }
        if !self.upstreams.isEmpty && (self.upstream.baseURL != nil || self.upstream.kind != .sim) {
            throw ConfigurationError(
                kind: .inconsistent, key: "upstreams", value: nil,
                reason: "give either upstreams (a named list) or upstream.kind/base_url (one upstream), not both")
        }
        if self.upstream.kind != .sim && self.upstream.baseURL == nil {
            throw ConfigurationError(
                kind: .inconsistent, key: "upstream.base_url", value: nil,
                reason: "upstream.kind \(self.upstream.kind.rawValue) needs upstream.base_url")
        }
        // With only one of the two paths the listener would silently fall back to plain ws://.
        if (server.tls.certificatePath == nil) != (server.tls.privateKeyPath == nil) {
            throw ConfigurationError(
                kind: .inconsistent,
                key: server.tls.certificatePath == nil ? "server.tls.certificate_path" : "server.tls.private_key_path",
                value: nil,
                reason: "server.tls.certificate_path and server.tls.private_key_path must be set together"
            )
        }
    }
}

/// A configuration value that cannot be used, with enough context to find and fix it.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The configuration file could not be read.
        case unreadableFile
        /// The file is not valid YAML, or its top level is not a mapping.
        case invalidYAML
        /// A key in the file that sluice does not know (usually a typo).
        case unknownKey
        /// The value has the wrong shape or syntax for its key (e.g. text where a number belongs).
        case wrongType
        /// The value parses but is outside the allowed range.
        case outOfRange
        /// The value parses but is not one of the allowed values (e.g. an unknown log level).
        case invalidValue
        /// Two values contradict each other (e.g. low watermark above high watermark).
        case inconsistent
    }

    /// Where the bad value came from.
    public enum Source: Sendable, Equatable, CustomStringConvertible {
        /// A YAML file; line and column are 1-based and present when Yams reports them.
        case file(path: String, line: Int?, column: Int?)
        case environment(variable: String)
        case commandLine(option: String)

        public var description: String {
            switch self {
            case .file(let path, let line?, let column?): "\(path):\(line):\(column)"
            case .file(let path, let line?, nil): "\(path):\(line)"
            case .file(let path, _, _): path
            case .environment(let variable): "environment variable \(variable)"
            case .commandLine(let option): "option \(option)"
            }
        }
    }

    public var kind: Kind
    /// Dotted key path as written in the YAML file, e.g. `server.port`.
    public var key: String?
    /// The offending value as written; for secret-bearing keys masked (`***`, or a URL without
    /// its password: see `Redaction`).
    public var value: String?
    /// What is wrong, or what was expected.
    public var reason: String
    public var source: Source?

    public init(kind: Kind, key: String?, value: String?, reason: String, source: Source? = nil) {
        self.kind = kind
        self.key = key
        // Masked here, so no error (and no log line quoting it) ever holds a secret or a password;
        // a reason that quotes the value (a parser's message) is masked the same way.
        self.value = Redaction.configurationValue(value, key: key)
        self.reason = Redaction.configurationReason(reason, value: value, key: key)
        self.source = source
    }

    /// e.g. `sluice.yaml:4:9: server.port: invalid value "70000": must be between 0 and 65535`.
    public var description: String {
        var text = ""
        if let source = self.source {
            text += "\(source): "
        }
        if let key = self.key {
            text += "\(key): "
        }
        if let value = self.value {
            text += "invalid value \"\(value)\": "
        }
        return text + self.reason
    }
}


/// Which inference server answers, and how to reach it.
public struct UpstreamSettings: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// The built-in simulator (not a model).
        case sim
        /// OpenAI-compatible streaming chat completions: vLLM, TensorRT-LLM's trtllm-serve, SGLang, llama.cpp.
        case openai
        /// Triton / TensorRT-LLM `generate_stream`.
        case triton
    }

    public var kind: Kind = .sim
    /// Base URL, e.g. `http://127.0.0.1:8000` (without `/v1`).
    public var baseURL: String? = nil
    /// Model name sent upstream; nil asks an OpenAI-compatible server's `/v1/models` (Triton: `ensemble`).
    public var model: String? = nil
    /// Sent as `Authorization: Bearer …` when set.
    public var apiKey: String? = nil
    public var connectTimeout: TimeAmount = .seconds(5)
    public var firstTokenTimeout: TimeAmount = .seconds(60)
    public var betweenTokensTimeout: TimeAmount = .seconds(30)
    /// Failures in a row (before or during a generation) that take a replica out.
    public var circuitFailureThreshold: Int = 5
    /// How long a replica stays out before one probe request may try it (doubling, up to 2 min).
    public var circuitOpenDuration: TimeAmount = .seconds(10)
    /// How often replicas with a `health_path` are checked.
    public var healthCheckInterval: TimeAmount = .seconds(5)

    public init() {}
}

/// One entry of the `upstreams:` list.
public struct NamedUpstream: Sendable, Equatable {
    /// What clients put in `chat.send.model` to choose this upstream.
    public var name: String
    public var kind: UpstreamSettings.Kind
    public var baseURL: String?
    /// Model name sent upstream; nil asks an OpenAI-compatible server (Triton: `ensemble`).
    public var model: String?
    public var apiKey: String?
    /// Entries with the same pool are replicas of one model, and clients choose the pool by
    /// this name; nil: a pool of its own, named `name`.
    public var pool: String?
    /// Generations it may run at once; 0: no cap.
    public var maxConcurrency: Int = 0
    /// `GET` this path (e.g. `/health`) to check it; nil: no active checks (the circuit breaker
    /// still takes it out when requests fail).
    public var healthPath: String?

    public init(
        name: String, kind: UpstreamSettings.Kind, baseURL: String? = nil, model: String? = nil, apiKey: String? = nil,
        pool: String? = nil, maxConcurrency: Int = 0, healthPath: String? = nil
    ) {
        self.name = name
        self.kind = kind
        self.baseURL = baseURL
        self.model = model
        self.apiKey = apiKey
        self.pool = pool
        self.maxConcurrency = maxConcurrency
        self.healthPath = healthPath
    }

    /// The pool it belongs to.
    public var poolName: String { self.pool ?? self.name }
}

/// Redis for running several instances; without a URL the gateway is a single node.
public struct RedisSettings: Sendable, Equatable {
    /// `redis[s]://[user:password@]host:port/db`; nil keeps everything in process. The password
    /// (percent-encoded) is sent with AUTH on every connection and masked in every log line.
    public var url: String? = nil
    /// TLS for `rediss://` URLs: the server's certificate is always verified, host name included.
    public var tls: RedisTLSSettings = .init()
    /// How long one Redis command may wait for its reply (blocking reads: plus their block
    /// time). Past it the command fails like an outage (callers fall back), and a connection
    /// that answered nothing in that time is closed and made again.
    public var commandTimeout: TimeAmount = RedisConfiguration.defaultCommandTimeout
    /// Commands waiting for replies on one Redis connection, at most; more fail at once with a
    /// retryable error (callers fall back as when Redis is down).
    public var maxPendingCommands: Int = RedisConfiguration.defaultMaxPendingCommands
    /// Bytes one Redis reply may hold (its strings together); a bigger one closes the connection.
    public var maxReplyBytes: Int = RESPParser.Limits.default.maxReplyBytes
    /// Values one Redis reply may hold (array elements at every depth).
    public var maxReplyElements: Int = RESPParser.Limits.default.maxReplyElements
    /// `/ready` answers 503 while Redis is unreachable (so a load balancer prefers healthy
    /// instances); local chats keep working either way.
    public var readyRequiresRedis: Bool = true
    /// On SIGTERM, generations handed off to other instances may run this long before the
    /// process exits; those still running then end with `owner_lost`.
    public var handoffDeadline: TimeAmount = .seconds(60)
    public var broker: RedisBrokerConfiguration = .init()

    public init() {}

    /// The client settings for `url`, nil without one. Checks the URL, that TLS settings come
    /// with a `rediss://` URL, and with `checkFiles` that the TLS files load. Errors never show
    /// the password.
    public func clientConfiguration(checkFiles: Bool = false) throws(ConfigurationError) -> RedisConfiguration? {
        guard let text = self.url else { return nil }
        let url: RedisURL
        do {
            url = try RedisURL(text)
        } catch {
            throw ConfigurationError(kind: .invalidValue, key: "redis.url", value: error.url, reason: error.reason)
        }
        if !url.usesTLS, let key = self.tls.keysSet.first {
            throw ConfigurationError(kind: .inconsistent, key: key, value: nil,
                                     reason: "TLS settings need a rediss:// URL (redis.url is \(url))")
        }
        let configuration = RedisConfiguration(
            url: url, tls: self.tls.client, commandTimeout: self.commandTimeout, maxPendingCommands: self.maxPendingCommands,
            replyLimits: RESPParser.Limits(maxReplyBytes: self.maxReplyBytes, maxReplyElements: self.maxReplyElements))
        if checkFiles {
            do {
                try configuration.validate()
            } catch {
                throw ConfigurationError(kind: .invalidValue, key: "redis.tls", value: nil, reason: error.description)
            }
        }
        return configuration
    }
}

/// `redis.tls`: how a `rediss://` connection is verified and which client certificate it shows.
public struct RedisTLSSettings: Sendable, Equatable {
    /// PEM file of the certificate authorities to trust; unset: the system's trust roots.
    public var caFile: String? = nil
    /// PEM client certificate (chain) and its key, for a Redis with `tls-auth-clients yes`.
    public var certificateFile: String? = nil
    public var privateKeyFile: String? = nil
    /// SNI and the name the certificate must carry; unset: the URL's host.
    public var serverName: String? = nil
    /// False accepts any server certificate (encrypted, not authenticated: anyone on the path
    /// can pose as Redis). Never in production; a warning is logged at startup.
    public var verify: Bool = true

    public init() {}

    var client: RedisTLSConfiguration {
        RedisTLSConfiguration(
            caFile: self.caFile, certificateFile: self.certificateFile, privateKeyFile: self.privateKeyFile,
            serverName: self.serverName, verifiesCertificates: self.verify)
    }

    /// The keys set away from their defaults.
    var keysSet: [String] {
        var keys: [String] = []
        if self.caFile != nil { keys.append("redis.tls.ca_file") }
        if self.certificateFile != nil { keys.append("redis.tls.certificate_file") }
        if self.privateKeyFile != nil { keys.append("redis.tls.private_key_file") }
        if self.serverName != nil { keys.append("redis.tls.server_name") }
        if !self.verify { keys.append("redis.tls.verify") }
        return keys
    }
}

/// Conversations, messages and usage: PostgreSQL, an embedded SQLite file (the default), or
/// nowhere (`memory`).
public struct StorageSettings: Sendable, Equatable {
    /// `postgres://user:password@host:port/database[?sslmode=…]`; `memory` keeps nothing; unset
    /// (the default) uses SQLite at `<data_dir>/sluice.db`.
    public var databaseURL: String? = nil
    /// Where the embedded SQLite database lives.
    public var dataDirectory: String = "./.sluice"
    /// Messages waiting to be written, at most; when full, new generations are refused with a
    /// retryable error instead of losing history.
    public var queueCapacity: Int = 10_000
    /// Messages per write (one statement on PostgreSQL, one transaction on SQLite).
    public var batchSize: Int = 100
    /// PostgreSQL connections in the pool.
    public var maxConnections: Int = 8
    /// Monthly `messages` partitions kept ready ahead of the current month.
    public var partitionMonthsAhead: Int = 3
    /// On shutdown, how long queued writes may still take.
    public var drainTimeout: TimeAmount = .seconds(10)

    public init() {}

    public enum Backend: Sendable, Equatable {
        case postgres(String)
        case sqlite(path: String)
        case memory
    }

    public struct InvalidURL: Error, CustomStringConvertible {
        public var description: String
    }

    /// What `databaseURL` selects.
    public var backend: Backend {
        get throws {
            guard let url = self.databaseURL, !url.isEmpty else {
                return .sqlite(path: (self.dataDirectory as NSString).appendingPathComponent("sluice.db"))
            }
            if url == "memory" { return .memory }
            if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
                do {
                    _ = try PostgresURL(url)
                } catch {
                    throw InvalidURL(description: "\(error)")
                }
                return .postgres(url)
            }
            if url.hasPrefix("sqlite://") { return .sqlite(path: String(url.dropFirst("sqlite://".count))) }
            throw InvalidURL(description: "expected postgres://…, sqlite://PATH or memory")
        }
    }
}

/// Traces: one span per generation, exported over OTLP/HTTP (JSON) to a collector.
public struct TracingSettings: Sendable, Equatable {
    /// `http(s)://host:port[/path]` of an OTLP/HTTP collector; nil (the default) turns tracing
    /// off. A URL without a path gets `/v1/traces`.
    public var otlpEndpoint: String? = nil
    /// The `service.name` resource attribute.
    public var serviceName: String = "sluice"
    /// The share of new traces recorded (0…1); a client's `traceparent` decides for its own.
    public var sampleRatio: Double = 1
    /// Extra headers for the collector, as `Name=value`.
    public var headers: [String] = []

    public init() {}

    /// `headers` as (name, value) pairs; nil names the first entry that is not `Name=value`.
    public var parsedHeaders: Result<[String: String], InvalidHeader> {
        var parsed: [String: String] = [:]
        for entry in self.headers {
            guard let equals = entry.firstIndex(of: "="), equals != entry.startIndex else { return .failure(InvalidHeader(entry: entry)) }
            parsed[String(entry[..<equals]).trimmingCharacters(in: .whitespaces)] =
                String(entry[entry.index(after: equals)...]).trimmingCharacters(in: .whitespaces)
        }
        return .success(parsed)
    }

    public struct InvalidHeader: Error, Equatable {
        public var entry: String
    }
}

/// Authentication: JWTs (HS256 secrets, RS/ES public keys, a JWKS file) and static API keys.
/// With none of them configured, authentication is off (development: `?user=` names the user).
public struct AuthSettings: Sendable, Equatable {
    /// One HS256 secret (`SLUICE_JWT_SECRET`): the simple setup. Never on the command line
    /// (`ps` shows arguments to every user): see `jwtSecretFile`.
    public var jwtSecret: String? = nil
    /// A file holding the HS256 secret (`--jwt-secret-file`, `SLUICE_AUTH_JWT_SECRET_FILE`; a
    /// mounted Kubernetes or Docker secret). A final newline is not part of the secret.
    public var jwtSecretFile: String? = nil
    /// Further keys, each `{kid, alg, secret | public_key | public_key_file}`.
    public var keys: [JWTKeySetting] = []
    /// A JWKS document on disk (keys need `kid` and `alg`).
    public var jwksFile: String? = nil
    /// Static API keys as `user:sha256hex` (`sluice hash-key KEY` prints the hash).
    public var apiKeys: [String] = []
    /// Clock skew allowed on `exp` and `nbf`.
    public var leeway: TimeAmount = .seconds(30)
    public var issuer: String? = nil
    public var audience: String? = nil
    /// Query parameter that may carry a token (browsers cannot set headers on a WebSocket);
    /// nil, the default: none. Off unless asked for, because URLs end up in access logs and
    /// browser history; when on, keep tokens short-lived.
    public var queryParameter: String? = nil
    /// Tokens without `exp` are refused.
    public var requireExpiry: Bool = true
    /// A connection whose token expires is closed (1008) at expiry.
    public var closeOnExpiry: Bool = true

    public init() {}

    public var isEnabled: Bool {
        self.jwtSecret != nil || self.jwtSecretFile != nil || !self.keys.isEmpty || self.jwksFile != nil || !self.apiKeys.isEmpty
    }

    /// The HS256 secret, from `jwtSecret` or read from `jwtSecretFile`.
    public func resolvedJWTSecret() throws(SecretFileError) -> String? {
        if let secret = self.jwtSecret { return secret }
        return try self.jwtSecretFile.map { path throws(SecretFileError) in try Self.readSecretFile(path) }
    }

    /// A secret kept in a file: its text without the final newline, at least 32 bytes.
    public static func readSecretFile(_ path: String) throws(SecretFileError) -> String {
        guard let data = FileManager.default.contents(atPath: path), var text = String(data: data, encoding: .utf8) else {
            throw SecretFileError(description: "cannot read \(path)")
        }
        while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
        guard text.utf8.count >= JWTKeySpec.minimumSecretBytes("HS256") else {
            throw SecretFileError(description: "the secret in \(path) is shorter than 32 bytes (an HS256 secret needs at least 32, RFC 7518)")
        }
        return text
    }

    public struct SecretFileError: Error, CustomStringConvertible {
        public var description: String
    }
}

/// `admin:` — a second listener for operators: `/metrics`, `/v1/stats`, any user's presence
/// (`GET /v1/presence?user=`), `/health` and `/ready`. The public listener answers 404 for the
/// first three. Bound to loopback by default: expose it to Prometheus on a private network only.
public struct AdminSettings: Sendable, Equatable {
    /// Off: those routes are served nowhere.
    public var enabled: Bool = true
    public var host: String = "127.0.0.1"
    /// 9464 (the port OpenTelemetry gives a Prometheus endpoint), away from the public 8080 and
    /// the 8081, 8082 … that further local instances tend to take. 0 picks a free port (logged
    /// at start-up: `admin listener` with `sluice.admin_port`).
    public var port: Int = 9464

    public init() {}
}

public struct JWTKeySetting: Sendable, Equatable {
    public var kid: String?
    public var algorithm: String
    public var secret: String?
    public var publicKey: String?
    public var publicKeyFile: String?

    public init(kid: String? = nil, algorithm: String, secret: String? = nil, publicKey: String? = nil, publicKeyFile: String? = nil) {
        self.kid = kid
        self.algorithm = algorithm
        self.secret = secret
        self.publicKey = publicKey
        self.publicKeyFile = publicKeyFile
    }
}

/// Token quotas: each user's limit lives in `user_quotas` (`sluice quota set`); these say how
/// they reset.
public struct QuotaSettings: Sendable, Equatable {
    /// A quota's usage goes back to 0 at its `reset_at`, which then moves on by this much.
    public var period: TimeAmount = .hours(24 * 30)
    /// How often due resets are looked for.
    public var resetCheckInterval: TimeAmount = .seconds(60)

    public init() {}
}

/// The response cache: on when Redis is configured (and `enabled`).
public struct CacheSettings: Sendable, Equatable {
    public var enabled: Bool = true
    public var response: ResponseCacheSettings = .init()

    public init() {}
}

/// Checks on user input before it goes upstream.
public struct ModerationSettings: Sendable, Equatable {
    /// Case-insensitive substrings, or `re:` and a regular expression; a match is refused.
    public var rules: [String] = []
    /// Chat-template control tokens looked for in user input.
    public var injectionMarkers: [String] = InputFilter.defaultInjectionMarkers
    public var injectionAction: InputFilter.InjectionAction = .strip
    /// Base URL of an OpenAI-compatible `/v1/moderations` service; nil: none.
    public var endpoint: String? = nil
    public var apiKey: String? = nil
    public var model: String? = nil
    public var timeout: TimeAmount = .seconds(2)
    /// When the service fails: let the input through (true) or refuse it as `unavailable`.
    public var failOpen: Bool = true

    public init() {}
}

/// `jobs:` — the durable job queue (Redis Streams) and its workers.
public struct JobSettings: Sendable, Equatable {
    public var queue: JobQueueConfiguration = .init()
    /// Job slots run inside `sluice serve` (0: none; run `sluice worker` processes instead).
    public var workersInServe: Int = 0
    /// Slots of a `sluice worker` process (`--concurrency` overrides).
    public var workerConcurrency: Int = 4
    /// On SIGTERM a worker's running jobs get this long; then they are left for another worker.
    public var shutdownGrace: TimeAmount = .seconds(30)
    /// Sections of a `report` job written at once.
    public var reportParallelSections: Int = 4
    public var schedules: [JobSchedule] = []
}

/// `tools:` — what the model may call during a chat generation.
public struct ToolSettings: Sendable, Equatable {
    public static let builtins = ["current_time", "calculator", "http_get"]
    /// Tools offered to the model; none by default.
    public var enabled: [String] = []
    /// Per-call deadline.
    public var timeout: TimeAmount = .seconds(10)
    /// Hosts `http_get` may fetch from: `host` (default port), `host:port`, `[v6]:port`; it
    /// refuses every other, and any of them that resolves to a non-public address.
    public var httpGetAllowedHosts: [String] = []
    /// Networks (CIDR) `http_get` may reach although they are not public (loopback, private,
    /// link-local, ...). An allowed host that is an IP literal is allowed as well.
    public var httpGetAllowedNetworks: [String] = []
    public var webhooks: [WebhookToolSetting] = []
}

/// A tool defined in configuration, served by an HTTP endpoint.
public struct WebhookToolSetting: Sendable, Equatable {
    public var name: String
    public var description: String
    /// The arguments' JSON schema (JSON text).
    public var parameters: String
    public var url: String
    public var timeout: TimeAmount?
}
