import ArgumentParser
import ChatClient
import Foundation
import SluiceApp

/// Entry point. Only parses arguments; everything else lives in `SluiceApp`.
@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "WebSocket gateway.",
        subcommands: [Serve.self, Worker.self, Jobs.self, Chat.self, Migrate.self, Quota.self, Token.self, HashKey.self, CheckConfig.self],
        defaultSubcommand: Serve.self
    )
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the WebSocket server.",
        discussion: """
            Settings are layered: built-in defaults, then the YAML file (--config or $SLUICE_CONFIG), \
            then SLUICE_* environment variables (e.g. SLUICE_SERVER_PORT=9000, \
            SLUICE_WEBSOCKET_HEARTBEAT_INTERVAL=5s), then the options below.
            """
    )

    @Option(
        name: .long,
        help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path")
    )
    var config: String?

    @Option(name: .long, help: .init("Address to bind.", valueName: "address"))
    var host: String?

    @Option(name: .long, help: .init("TCP port (0 picks a free one, logged as sluice.port on its listening line).", valueName: "port"))
    var port: Int?

    @Option(
        name: .long,
        help: .init("Event loop threads (0 = one per core).", valueName: "count")
    )
    var threads: Int?

    @Flag(name: .long, help: "Echo every message back (conformance testing).")
    var echo = false

    @Option(
        name: .long,
        help: .init("trace, debug, info, notice, warning, error or critical.", valueName: "level")
    )
    var logLevel: String?

    @Option(name: .long, help: .init("Log lines as text, json, or auto (text on a terminal, JSON otherwise).", valueName: "format"))
    var logFormat: String?

    @Option(
        name: .long,
        help: .init("Most WebSocket connections held at once.", valueName: "count")
    )
    var maxConnections: Int?

    @Option(
        name: .long,
        help: .init("Largest message accepted, e.g. 4MiB or 4194304.", valueName: "size")
    )
    var maxMessageSize: String?

    @Flag(name: .long, help: "Do not offer permessage-deflate.")
    var noDeflate = false

    @Option(
        name: .customLong("tls-cert"),
        help: .init("PEM certificate chain; with --tls-key enables wss://.", valueName: "path")
    )
    var tlsCertificatePath: String?

    @Option(name: .customLong("tls-key"), help: .init("PEM private key.", valueName: "path"))
    var tlsPrivateKeyPath: String?

    @Option(
        name: .customLong("allowed-origin"),
        help: .init("Allowed Origin header value; repeat for several.", valueName: "origin")
    )
    var allowedOrigins: [String] = []

    @Option(
        name: .long,
        help: .init("How often a Ping is sent, e.g. 20s or 500ms.", valueName: "duration")
    )
    var heartbeatInterval: String?

    @Option(name: .long, help: .init("Inference upstream: an OpenAI-compatible base URL (vLLM, TensorRT-LLM trtllm-serve, SGLang, llama.cpp), or \"sim\" for the built-in simulator.", valueName: "url"))
    var upstream: String?

    @Option(name: .long, help: .init("Upstream API: openai (default with --upstream URL), triton or sim.", valueName: "kind"))
    var upstreamKind: String?

    @Option(name: .long, help: .init("Model name sent upstream (default: the server's first /v1/models entry).", valueName: "name"))
    var model: String?

    @Option(name: .long, help: .init("Redis for several instances: redis[s]://[user:password@]host:port/db (default: none, a single node). A URL with a password belongs in SLUICE_REDIS_URL: arguments show in ps.", valueName: "url"))
    var redisURL: String?

    @Option(name: .long, help: .init("This instance's name (default: hostname-pid).", valueName: "name"))
    var instanceID: String?

    @Option(name: .long, help: .init("Send a span per generation to this OTLP/HTTP collector (e.g. http://127.0.0.1:4318); default: no tracing.", valueName: "url"))
    var otlpEndpoint: String?

    @Option(name: .long, help: .init("Require JWTs signed with the HS256 secret in this file (or SLUICE_JWT_SECRET); default: no authentication.", valueName: "path"))
    var jwtSecretFile: String?

    @Option(name: .long, help: .init("Address of the admin listener (/metrics, /v1/stats; default 127.0.0.1).", valueName: "address"))
    var adminHost: String?

    @Option(name: .long, help: .init("Port of the admin listener (default 9464; 0 picks a free one).", valueName: "port"))
    var adminPort: Int?

    /// Refused: see `refuseSecretInArguments`.
    @Option(name: .long, help: .hidden)
    var jwtSecret: String?

    @OptionGroup var storage: StorageOptions

    func validate() throws {
        try refuseSecretInArguments(self.jwtSecret, option: "--jwt-secret")
    }

    func run() async throws {
        let configuration = try loadConfiguration(file: self.config, overrides: self.overrides)
        try await scrubbingErrors { try await SluiceServer.run(configuration: configuration) }
    }

    /// Only flags actually given override anything; the Bool flags can only switch away from the default.
    private var overrides: ConfigurationOverrides {
        var overrides = ConfigurationOverrides()
        overrides.host = self.host
        overrides.port = self.port
        overrides.eventLoopThreads = self.threads
        overrides.echo = self.echo ? true : nil
        overrides.logLevel = self.logLevel
        overrides.logFormat = self.logFormat
        overrides.maxConnections = self.maxConnections
        overrides.upstream = self.upstream
        overrides.upstreamKind = self.upstreamKind
        overrides.upstreamModel = self.model
        overrides.redisURL = self.redisURL
        overrides.instanceID = self.instanceID
        overrides.otlpEndpoint = self.otlpEndpoint
        overrides.jwtSecretFile = self.jwtSecretFile
        overrides.adminHost = self.adminHost
        overrides.adminPort = self.adminPort
        self.storage.apply(to: &overrides)
        overrides.maxMessageSize = self.maxMessageSize
        overrides.deflateEnabled = self.noDeflate ? false : nil
        overrides.tlsCertificatePath = self.tlsCertificatePath
        overrides.tlsPrivateKeyPath = self.tlsPrivateKeyPath
        overrides.allowedOrigins = self.allowedOrigins.isEmpty ? nil : self.allowedOrigins
        overrides.heartbeatInterval = self.heartbeatInterval
        return overrides
    }
}

/// Where conversations are kept; the same options for `serve` and `migrate`.
struct StorageOptions: ParsableArguments {
    @Option(name: .long, help: .init("Where conversations are kept: postgres://user@host:port/db, sqlite://PATH, or memory (default: SQLite in --data-dir). A URL with a password is refused here (ps shows it): use SLUICE_STORAGE_DATABASE_URL.", valueName: "url"))
    var databaseURL: String?

    @Option(name: .long, help: .init("Directory of the embedded SQLite database (default: ./.sluice).", valueName: "path"))
    var dataDir: String?

    func apply(to overrides: inout ConfigurationOverrides) {
        overrides.databaseURL = self.databaseURL
        overrides.dataDirectory = self.dataDir
    }
}

/// Defaults, then the YAML file (`--config` or `$SLUICE_CONFIG`), then `SLUICE_*` variables,
/// then `overrides`. A bad setting is an operator error: it is named, without a usage dump, and
/// the exit status is 78 (EX_CONFIG from sysexits.h).
func loadConfiguration(file: String?, overrides: ConfigurationOverrides) throws -> SluiceConfiguration {
    let environment = ProcessInfo.processInfo.environment
    do {
        let configuration = try ConfigurationLoader.load(
            filePath: ConfigurationLoader.configurationFilePath(option: file, environment: environment),
            environment: environment, overrides: overrides)
        // From here on no message of this process can print one of its secrets.
        SecretScrubber.register(configuration)
        return configuration
    } catch {
        FileHandle.standardError.write(Data("sluice: configuration error: \(error)\n".utf8))
        throw ExitCode(78)
    }
}

/// A secret given as an argument is refused: `ps` (and /proc) show a process's arguments to
/// every user of the machine, and shells keep them in their history.
func refuseSecretInArguments(_ value: String?, option: String) throws {
    guard value != nil else { return }
    throw ValidationError("""
        \(option) is not accepted: a secret on the command line is visible to every user (ps) and kept in shell \
        history. Put it in a file and give --jwt-secret-file PATH (or SLUICE_AUTH_JWT_SECRET_FILE), or set SLUICE_JWT_SECRET.
        """)
}

/// Runs `body`; an error it ends with is printed without any configured secret in it.
func scrubbingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("sluice: \(SecretScrubber.scrub(String(describing: error)))\n".utf8))
        throw ExitCode(1)
    }
}

/// A secret from standard input: its first line (without the newline). On a terminal the
/// prompt goes to stderr and the typing is not echoed.
func readSecretFromStandardInput(prompt: String) -> String? {
    let terminal = isatty(STDIN_FILENO) == 1
    var saved = termios()
    if terminal {
        FileHandle.standardError.write(Data(prompt.utf8))
        tcgetattr(STDIN_FILENO, &saved)
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)
    }
    defer {
        if terminal {
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
            FileHandle.standardError.write(Data("\n".utf8))
        }
    }
    guard var line = readLine(strippingNewline: true) else { return nil }
    if line.hasSuffix("\r") { line.removeLast() }
    return line
}

/// `sluice migrate`: creates or upgrades the database schema (`sluice serve` does it at start too).
/// `sluice check-config`: loads the configuration as `serve` would (file, SLUICE_* variables)
/// and reports errors; with `--production`, also docs/security.md's production checklist.
struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Check the configuration (file and SLUICE_* variables); --production: against the production checklist.",
        discussion: "Exit status 0 when it loads (and, with --production, passes every item), 1 when an item fails, 78 when it does not load."
    )

    @Option(name: .long, help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path"))
    var config: String?

    @Flag(name: .long, help: "Also check the items a gateway on the internet needs (docs/security.md).")
    var production = false

    func run() throws {
        let configuration = try loadConfiguration(file: self.config, overrides: ConfigurationOverrides())
        print("configuration: ok")
        guard self.production else { return }
        let environment = ProcessInfo.processInfo.environment
        var fileOnly: SluiceConfiguration?
        if let path = ConfigurationLoader.configurationFilePath(option: self.config, environment: environment) {
            var file = SluiceConfiguration()
            try? ConfigurationLoader.applyFile(at: path, to: &file)
            fileOnly = file
        }
        let items = ProductionChecklist.evaluate(configuration, fileOnly: fileOnly)
        for item in items {
            print("\(item.passed ? "pass" : "FAIL")  \(item.name): \(item.detail)")
        }
        let failed = items.filter { !$0.passed }.count
        print(failed == 0 ? "production checklist: all \(items.count) items pass" : "production checklist: \(failed) of \(items.count) items fail")
        if failed > 0 { throw ExitCode(1) }
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create or upgrade the database schema, then exit.",
        discussion: "Uses the same storage settings as serve: --database-url, --data-dir, the YAML file and SLUICE_STORAGE_* variables."
    )

    @Option(name: .long, help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path"))
    var config: String?

    @OptionGroup var storage: StorageOptions

    @Option(name: .long, help: .init("Give up after this many seconds without the database.", valueName: "seconds"))
    var timeout: Int = 60

    func run() async throws {
        var overrides = ConfigurationOverrides()
        self.storage.apply(to: &overrides)
        let configuration = try loadConfiguration(file: self.config, overrides: overrides)
        do {
            try await StorageMigration.run(configuration: configuration, timeout: .seconds(max(1, self.timeout)))
        } catch {
            FileHandle.standardError.write(Data("sluice: migration failed: \(SecretScrubber.scrub("\(error)"))\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// `sluice chat`: talk to a running server from the terminal (or a script).
struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat with a sluice server over WebSocket.",
        discussion: """
            Type a message and press Enter; the answer streams as it arrives. Ctrl-C cancels a \
            running answer (at the prompt it quits), Ctrl-D quits, /new starts a new conversation, \
            /help lists commands. With stdin or stdout not a terminal it works as a plain filter.
            """
    )

    @Option(name: .long, help: .init("Server WebSocket URL (ws:// or wss://).", valueName: "url"))
    var url: String = ChatClient.defaultURL

    @Option(name: .long, help: .init("Most tokens per answer.", valueName: "count"))
    var maxTokens: Int?

    @Option(name: .long, help: .init("A file holding the token (JWT or API key) sent as Authorization: Bearer, for a gateway with authentication on.", valueName: "path"))
    var tokenFile: String?

    func validate() throws {
        if let maxTokens = self.maxTokens, maxTokens < 1 {
            throw ValidationError("--max-tokens must be at least 1.")
        }
        // A token in the URL would sit in argv (ps) and the gateway's access logs.
        if Redaction.containsSecret(url: self.url) {
            throw ValidationError("the URL carries a credential, which ps and access logs would show: put the token in a file and give --token-file PATH")
        }
    }

    func run() async throws {
        var token: String?
        if let path = self.tokenFile {
            guard let data = FileManager.default.contents(atPath: path), var text = String(data: data, encoding: .utf8) else {
                FileHandle.standardError.write(Data("sluice: cannot read --token-file \(path)\n".utf8))
                throw ExitCode(66)
            }
            while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
            token = text
        }
        let status = await ChatClient.run(url: self.url, maxTokens: self.maxTokens, bearerToken: token)
        if status != 0 { throw ExitCode(status) }
    }
}

/// `sluice token --sub alice`: an HS256 JWT for development (wscat, the terminal client, tests).
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print an HS256 JWT for a user (development; production tokens come from your identity provider).",
        discussion: """
            The secret is the gateway's: --jwt-secret-file, else auth.jwt_secret / auth.jwt_secret_file from the \
            configuration file or SLUICE_JWT_SECRET / SLUICE_AUTH_JWT_SECRET_FILE. Never an argument (ps shows those).
            """)

    @Option(name: .long, help: .init("The user id (the token's sub).", valueName: "user"))
    var sub: String

    @Option(name: .long, help: .init("A file holding the HS256 secret.", valueName: "path"))
    var jwtSecretFile: String?

    @Option(name: .long, help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path"))
    var config: String?

    @Option(name: .long, help: .init("Seconds until it expires.", valueName: "seconds"))
    var ttl: Int = 3600

    /// Refused: see `refuseSecretInArguments`.
    @Option(name: .long, help: .hidden)
    var jwtSecret: String?

    func validate() throws {
        try refuseSecretInArguments(self.jwtSecret, option: "--jwt-secret")
    }

    func run() async throws {
        var overrides = ConfigurationOverrides()
        overrides.jwtSecretFile = self.jwtSecretFile
        let configuration = try loadConfiguration(file: self.config, overrides: overrides)
        let secret: String?
        do {
            secret = try configuration.auth.resolvedJWTSecret()
        } catch {
            FileHandle.standardError.write(Data("sluice: \(error)\n".utf8))
            throw ExitCode(64)
        }
        guard let secret, !secret.isEmpty else {
            FileHandle.standardError.write(Data("sluice: no HS256 secret: give --jwt-secret-file PATH, or set SLUICE_AUTH_JWT_SECRET_FILE or SLUICE_JWT_SECRET\n".utf8))
            throw ExitCode(64)
        }
        print(try await Credentials.developmentToken(secret: secret, subject: self.sub, expiresIn: max(1, self.ttl)))
    }
}

/// `sluice hash-key < key.txt`: the SHA-256 that `auth.api_keys` holds instead of the key. The
/// key is read from standard input (typed without echo on a terminal), never from an argument.
struct HashKey: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash-key", abstract: "Print the SHA-256 of an API key read from stdin, for auth.api_keys (user:HASH).",
        discussion: "e.g. printf %s \"$KEY\" | sluice hash-key, or sluice hash-key < key.txt; on a terminal it asks without echoing.")

    /// Refused: a key given as an argument shows in `ps` and in shell history.
    @Argument(help: .hidden)
    var key: String?

    func validate() throws {
        if self.key != nil {
            throw ValidationError("the API key is read from standard input, not from an argument (ps and shell history would show it): printf %s \"$KEY\" | sluice hash-key")
        }
    }

    func run() throws {
        guard let key = readSecretFromStandardInput(prompt: "API key: "), !key.isEmpty else {
            FileHandle.standardError.write(Data("sluice: no API key on standard input\n".utf8))
            throw ExitCode(64)
        }
        print(Credentials.apiKeyHash(key))
    }
}

/// `sluice quota set USER --limit N` / `sluice quota show USER`.
struct Quota: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set or show a user's token quota (prompt + completion tokens until the next reset).",
        subcommands: [QuotaSet.self, QuotaShow.self])
}

struct QuotaSet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Set a user's token limit; generations stop where it ends, and usage resets at reset_at.",
        discussion: "Uses the same storage settings as serve: --database-url, --data-dir, the YAML file and SLUICE_STORAGE_* variables.")

    @Argument(help: "The user id (a JWT's sub, or the development ?user=).")
    var user: String

    @Option(name: .long, help: .init("Tokens allowed until the next reset; 'none' removes the limit.", valueName: "tokens"))
    var limit: String

    @Option(name: .long, help: .init("Next reset, RFC 3339 (default: quotas.period from now).", valueName: "time"))
    var resetAt: String?

    @Flag(name: .long, help: "Never reset (a lifetime budget).")
    var noReset = false

    @Flag(name: .long, help: "Also set the tokens used so far back to 0.")
    var resetUsage = false

    @Option(name: .long, help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path"))
    var config: String?

    @OptionGroup var storage: StorageOptions

    func run() async throws {
        let limit: Int?
        if self.limit.lowercased() == "none" {
            limit = nil
        } else if let value = Int(self.limit), value >= 0 {
            limit = value
        } else {
            FileHandle.standardError.write(Data("sluice: --limit must be a whole number of tokens or none\n".utf8))
            throw ExitCode(64)
        }
        var resetAt: Date?
        if let text = self.resetAt {
            guard let date = ISO8601DateFormatter().date(from: text) else {
                FileHandle.standardError.write(Data("sluice: --reset-at must be RFC 3339, e.g. 2026-12-01T00:00:00Z\n".utf8))
                throw ExitCode(64)
            }
            resetAt = date
        }
        var overrides = ConfigurationOverrides()
        self.storage.apply(to: &overrides)
        let configuration = try loadConfiguration(file: self.config, overrides: overrides)
        do {
            try await QuotaAdmin.set(
                configuration: configuration, user: self.user, limit: limit, resetAt: resetAt, noReset: self.noReset, resetUsage: self.resetUsage)
        } catch {
            FileHandle.standardError.write(Data("sluice: quota set failed: \(SecretScrubber.scrub("\(error)"))\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct QuotaShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a user's quota: used, limit, next reset.")

    @Argument(help: "The user id.")
    var user: String

    @Option(name: .long, help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path"))
    var config: String?

    @OptionGroup var storage: StorageOptions

    func run() async throws {
        var overrides = ConfigurationOverrides()
        self.storage.apply(to: &overrides)
        let configuration = try loadConfiguration(file: self.config, overrides: overrides)
        do {
            try await QuotaAdmin.show(configuration: configuration, user: self.user)
        } catch {
            FileHandle.standardError.write(Data("sluice: quota show failed: \(SecretScrubber.scrub("\(error)"))\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// `sluice worker`: runs jobs from the Redis queue.
struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run queued jobs (reports, scheduled jobs) from Redis; start as many as you like, anywhere.",
        discussion: "The same settings as serve (YAML file, SLUICE_* variables); it serves /health, /ready and /metrics on --port."
    )

    @Option(name: .long, help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path"))
    var config: String?

    @Option(name: .long, help: .init("Jobs run at once (default: jobs.worker_concurrency, 4).", valueName: "count"))
    var concurrency: Int?

    @Option(name: .long, help: .init("Address for /health and /metrics.", valueName: "address"))
    var host: String?

    @Option(name: .long, help: .init("Port for /health and /metrics (0 picks a free one, logged as sluice.port on its listening line).", valueName: "port"))
    var port: Int?

    @Option(name: .long, help: .init("Event loop threads (0 = one per core).", valueName: "count"))
    var threads: Int?

    @Option(name: .long, help: .init("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel: String?

    @Option(name: .long, help: .init("Log lines as text, json, or auto.", valueName: "format"))
    var logFormat: String?

    @Option(name: .long, help: .init("Inference upstream for report jobs: an OpenAI-compatible base URL, or \"sim\".", valueName: "url"))
    var upstream: String?

    @Option(name: .long, help: .init("Upstream API: openai, triton or sim.", valueName: "kind"))
    var upstreamKind: String?

    @Option(name: .long, help: .init("Model name sent upstream.", valueName: "name"))
    var model: String?

    @Option(name: .long, help: .init("The Redis holding the queue: redis://host:port/db.", valueName: "url"))
    var redisURL: String?

    @Option(name: .long, help: .init("This worker's name (default: hostname-pid).", valueName: "name"))
    var instanceID: String?

    @OptionGroup var storage: StorageOptions

    func validate() throws {
        if let concurrency = self.concurrency, !(1...1_000).contains(concurrency) {
            throw ValidationError("--concurrency must be from 1 to 1000")
        }
    }

    func run() async throws {
        var overrides = ConfigurationOverrides()
        overrides.host = self.host
        overrides.port = self.port
        overrides.eventLoopThreads = self.threads
        overrides.logLevel = self.logLevel
        overrides.logFormat = self.logFormat
        overrides.upstream = self.upstream
        overrides.upstreamKind = self.upstreamKind
        overrides.upstreamModel = self.model
        overrides.redisURL = self.redisURL
        overrides.instanceID = self.instanceID
        self.storage.apply(to: &overrides)
        let configuration = try loadConfiguration(file: self.config, overrides: overrides)
        try await scrubbingErrors { try await SluiceWorker.run(configuration: configuration, concurrency: self.concurrency) }
    }
}

/// `sluice jobs`: the queue from the terminal.
struct Jobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect and manage the job queue (Redis).",
        subcommands: [JobsList.self, JobsShow.self, JobsRetry.self, JobsCancel.self])
}

/// Where the queue is; shared by the `jobs` subcommands.
struct QueueOptions: ParsableArguments {
    @Option(name: .long, help: .init("YAML configuration file (default: $SLUICE_CONFIG, else none).", valueName: "path"))
    var config: String?

    @Option(name: .long, help: .init("The Redis holding the queue (default: redis.url).", valueName: "url"))
    var redisURL: String?

    @OptionGroup var storage: StorageOptions

    func run(_ command: JobsAdmin.Command, what: String) async throws {
        var overrides = ConfigurationOverrides()
        overrides.redisURL = self.redisURL
        self.storage.apply(to: &overrides)
        let configuration = try loadConfiguration(file: self.config, overrides: overrides)
        do {
            try await JobsAdmin.run(command, configuration: configuration)
        } catch {
            FileHandle.standardError.write(Data("sluice: jobs \(what): \(SecretScrubber.scrub("\(error)"))\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct JobsList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "Queue depth, workers, and the most recent jobs.")
    @Option(name: .long, help: "Only jobs in this state (pending, running, succeeded, failed, cancelled).") var state: String?
    @Option(name: .long, help: "Only this user's jobs.") var user: String?
    @Option(name: .long, help: "How many jobs.") var limit: Int = 20
    @OptionGroup var queue: QueueOptions
    func run() async throws { try await self.queue.run(.list(state: self.state, user: self.user, limit: max(1, self.limit)), what: "ls") }
}

struct JobsShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "A job's record as JSON.")
    @Argument(help: "The job id.") var id: String
    @OptionGroup var queue: QueueOptions
    func run() async throws { try await self.queue.run(.show(self.id), what: "show") }
}

struct JobsRetry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "retry", abstract: "Queue a FAILED or CANCELLED job again, with fresh attempts.")
    @Argument(help: "The job id.") var id: String
    @OptionGroup var queue: QueueOptions
    func run() async throws { try await self.queue.run(.retry(self.id), what: "retry") }
}

struct JobsCancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a job (any user's).")
    @Argument(help: "The job id.") var id: String
    @OptionGroup var queue: QueueOptions
    func run() async throws { try await self.queue.run(.cancel(self.id), what: "cancel") }
}
