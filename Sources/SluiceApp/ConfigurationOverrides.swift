/// Values given on the command line; nil means "not given, keep what the file or environment said".
/// Applied last by `ConfigurationLoader.applyOverrides(_:to:)`, through the same parsing and range
/// checks as the file, so `--port 70000` fails exactly like `port: 70000` would.
public struct ConfigurationOverrides: Sendable, Equatable {
    /// `--host`
    public var host: String?
    /// `--port`
    public var port: Int?
    /// `--threads`
    public var eventLoopThreads: Int?
    /// `--echo` (the flag can only turn echo on).
    public var echo: Bool?
    /// `--log-level`
    public var logLevel: String?
    /// `--log-format auto|text|json`
    public var logFormat: String?
    /// `--max-connections`
    public var maxConnections: Int?
    /// `--max-message-size`, as written (`4MiB`, `1048576`).
    public var maxMessageSize: String?
    /// `--no-deflate` sets this to false.
    public var deflateEnabled: Bool?
    /// `--tls-cert`
    public var tlsCertificatePath: String?
    /// `--tls-key`
    public var tlsPrivateKeyPath: String?
    /// `--allowed-origin`, repeatable; replaces the configured list as a whole.
    public var allowedOrigins: [String]?
    /// `--heartbeat-interval`, as written (`20s`, `500ms`).
    public var heartbeatInterval: String?
    /// `--upstream URL` (an OpenAI-compatible server unless `--upstream-kind` says otherwise) or `sim`.
    public var upstream: String?
    /// `--upstream-kind sim|openai|triton`
    public var upstreamKind: String?
    /// `--model`
    public var upstreamModel: String?
    /// `--redis-url redis://host:port/db`
    public var redisURL: String?
    /// `--instance-id`
    public var instanceID: String?
    /// `--database-url postgres://…`, `sqlite://PATH` or `memory`
    public var databaseURL: String?
    /// `--data-dir`
    public var dataDirectory: String?
    /// `--jwt-secret-file PATH`: a file holding the HS256 key (never the key itself: `ps` shows
    /// arguments to every user).
    public var jwtSecretFile: String?
    /// `--admin-host`
    public var adminHost: String?
    /// `--admin-port` (0 picks a free one)
    public var adminPort: Int?
    /// `--otlp-endpoint http://collector:4318`
    public var otlpEndpoint: String?

    public init() {}

    /// The set fields as (option, key, value) rows, in the order the options are documented.
    var entries: [(option: String, key: String, value: RawValue)] {
        var entries: [(option: String, key: String, value: RawValue)] = []
        func add(_ option: String, _ key: String, _ text: String?) {
            if let text {
                entries.append((option, key, .scalar(text)))
            }
        }
        add("--host", "server.host", self.host)
        add("--port", "server.port", self.port.map(String.init))
        add("--threads", "server.event_loop_threads", self.eventLoopThreads.map(String.init))
        add("--echo", "echo", self.echo.map(String.init))
        add("--log-level", "log_level", self.logLevel)
        add("--log-format", "log_format", self.logFormat)
        add("--max-connections", "server.max_connections", self.maxConnections.map(String.init))
        add("--max-message-size", "websocket.max_message_size", self.maxMessageSize)
        add("--no-deflate", "websocket.deflate.enabled", self.deflateEnabled.map(String.init))
        add("--tls-cert", "server.tls.certificate_path", self.tlsCertificatePath)
        add("--tls-key", "server.tls.private_key_path", self.tlsPrivateKeyPath)
        if let allowedOrigins = self.allowedOrigins {
            entries.append(("--allowed-origin", "server.allowed_origins", .list(allowedOrigins)))
        }
        add("--heartbeat-interval", "websocket.heartbeat_interval", self.heartbeatInterval)
        if let upstream = self.upstream {
            if upstream.lowercased() == "sim" {
                add("--upstream", "upstream.kind", "sim")
            } else {
                add("--upstream", "upstream.base_url", upstream)
                if self.upstreamKind == nil { add("--upstream", "upstream.kind", "openai") }
            }
        }
        add("--upstream-kind", "upstream.kind", self.upstreamKind)
        add("--model", "upstream.model", self.upstreamModel)
        add("--redis-url", "redis.url", self.redisURL)
        add("--instance-id", "instance_id", self.instanceID)
        add("--database-url", "storage.database_url", self.databaseURL)
        add("--data-dir", "storage.data_dir", self.dataDirectory)
        add("--otlp-endpoint", "tracing.otlp_endpoint", self.otlpEndpoint)
        add("--jwt-secret-file", "auth.jwt_secret_file", self.jwtSecretFile)
        add("--admin-host", "admin.host", self.adminHost)
        add("--admin-port", "admin.port", self.adminPort.map(String.init))
        return entries
    }
}
