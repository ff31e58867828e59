import Foundation
import Jobs
import Policy
import NIOCore
import WSServer
import Yams

/// Builds a `SluiceConfiguration` in layers, each overriding the one before:
/// built-in defaults, then a YAML file, then `SLUICE_*` environment variables, then command-line
/// overrides. Every layer goes through the same settings table, so a key is parsed and range-checked
/// the same way wherever it comes from.
public enum ConfigurationLoader {
    /// Environment variable naming the configuration file when `--config` is not given.
    public static let configurationFileVariable = "SLUICE_CONFIG"

    /// All keys the YAML file accepts, as dotted paths (`server.port`), in file order.
    public static var keys: [String] { settings.map(\.key) }

    /// The environment variable for a dotted key: `websocket.deflate.enabled` -> `SLUICE_WEBSOCKET_DEFLATE_ENABLED`.
    public static func environmentVariable(forKey key: String) -> String {
        "SLUICE_" + key.split(separator: ".").joined(separator: "_").uppercased()
    }

    /// The file to load: the `--config` value if given, else `SLUICE_CONFIG`, else none.
    public static func configurationFilePath(option: String?, environment: [String: String]) -> String? {
        if let option, !option.isEmpty {
            return option
        }
        if let fromEnvironment = environment[self.configurationFileVariable], !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        return nil
    }

    /// The whole pipeline: defaults, the file at `filePath` (if any), environment, overrides, then the
    /// cross-field checks of `SluiceConfiguration.validate()`.
    public static func load(
        filePath: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        overrides: ConfigurationOverrides = .init()
    ) throws(ConfigurationError) -> SluiceConfiguration {
        var configuration = SluiceConfiguration()
        if let filePath {
            try self.applyFile(at: filePath, to: &configuration)
        }
        try self.applyEnvironment(environment, to: &configuration)
        try self.applyOverrides(overrides, to: &configuration)
        try configuration.validate()
        return configuration
    }

    /// Reads a YAML file and applies every key in it.
    public static func applyFile(at path: String, to configuration: inout SluiceConfiguration) throws(ConfigurationError) {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(
                kind: .unreadableFile, key: nil, value: nil,
                reason: "cannot read configuration file: \(error.localizedDescription)",
                source: .file(path: path, line: nil, column: nil)
            )
        }
        try self.applyYAML(text, path: path, to: &configuration)
    }

    /// Applies YAML text; `path` is only used in error messages.
    public static func applyYAML(_ yaml: String, path: String, to configuration: inout SluiceConfiguration) throws(ConfigurationError) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw ConfigurationError(
                kind: .invalidYAML, key: nil, value: nil,
                reason: "not valid YAML: \(error.problem)",
                source: .file(path: path, line: error.line, column: error.column)
            )
        } catch {
            throw ConfigurationError(
                kind: .invalidYAML, key: nil, value: nil, reason: "not valid YAML: \(error)",
                source: .file(path: path, line: nil, column: nil)
            )
        }
        switch root {
        case nil:
            return  // an empty file changes nothing
        case .mapping(let mapping)?:
            try self.applyMapping(mapping, section: nil, path: path, to: &configuration)
        case let other?:
            if other.null != nil {
                return  // a file holding only comments
            }
            throw ConfigurationError(
                kind: .invalidYAML, key: nil, value: nil,
                reason: "the top level of a configuration file must be a mapping of keys",
                source: Self.fileSource(path, other.mark)
            )
        }
    }

    /// `SLUICE_*` variables that are not settings yet are no mistake: the configuration file, the
    /// one-secret alias, and the variables of Sluice's own scripts and tests (which may be
    /// exported where `sluice` runs). Any other `SLUICE_*` variable is an error, like an unknown
    /// key in the file: a misspelt security setting must not be silently off.
    public static let otherVariables: [String: String] = [
        "SLUICE_CONFIG": "the configuration file when --config is not given",
        "SLUICE_JWT_SECRET": "auth.jwt_secret (the short name)",
        "SLUICE_BINARY": "tests: the sluice executable to start",
        "SLUICE_PG_BINDIR": "tests: PostgreSQL's bin directory",
        "SLUICE_STORAGE_TEST_LOG": "tests: the storage tests' log level",
        "SLUICE_BIN": "deploy/validate.sh: the sluice executable",
        "SLUICE_DEPLOY_VENV": "deploy/validate.sh: its Python tools",
        "SLUICE_DEPLOY_NO_SYSTEM_TOOLS": "deploy/validate.sh: ignore nginx and promtool on PATH",
        "SLUICE_SERVE_ARGS": "loadtest/run-wsbench.sh: sluice serve's arguments",
        "SLUICE_SERVE_ENV": "loadtest/run-wsbench.sh: sluice serve's settings",
        "SLUICE_HTTP_PORT": "deploy/docker-compose.prod.yaml: the published port",
        "SLUICE_IMAGE": "deploy/docker-compose.prod.yaml: the image",
        "SLUICE_NGINX_LISTEN": "deploy/nginx/sluice.conf.template: nginx's listen address",
        "SLUICE_UPSTREAM_SERVERS": "deploy/nginx/sluice.conf.template: the gateways",
        "SLUICE_FUZZ": "Package.swift: adds the libFuzzer binary (scripts/fuzz.sh sets it)",
        "SLUICE_FUZZ_TARGET": "the fuzz binary: which target to run",
        "SLUICE_FUZZ_VERBOSE": "the fuzz binary: the upgrade target prints what the server wrote",
    ]

    /// Every `SLUICE_*` variable that is not an error.
    static let knownVariables: Set<String> = Set(settings.map { environmentVariable(forKey: $0.key) })
        .union(otherVariables.keys)

    /// The first unknown `SLUICE_*` variable (in name order) is an `unknownKey` error naming it and,
    /// when one is close, the variable that was probably meant. Its value is never shown.
    public static func checkEnvironmentVariables(_ environment: [String: String]) throws(ConfigurationError) {
        for variable in environment.keys.sorted() where variable.hasPrefix("SLUICE_") && !self.knownVariables.contains(variable) {
            var reason = "unknown variable: no setting has this name"
            let suggestions = self.closestVariables(to: variable)
            if !suggestions.isEmpty {
                reason += " (did you mean \(suggestions.joined(separator: " or "))?)"
            }
            throw ConfigurationError(kind: .unknownKey, key: nil, value: nil, reason: reason, source: .environment(variable: variable))
        }
    }

    /// Known variables within three edits of `variable`; failing that, the settings whose
    /// variable ends like it (`SLUICE_DATABASE_URL` → `SLUICE_STORAGE_DATABASE_URL`), at most three.
    static func closestVariables(to variable: String) -> [String] {
        let candidates = self.knownVariables.subtracting(self.otherVariables.keys).union(["SLUICE_CONFIG", "SLUICE_JWT_SECRET"])
        let scored = candidates.map { (name: $0, distance: self.editDistance($0, variable)) }
        if let best = scored.min(by: { ($0.distance, $0.name) < ($1.distance, $1.name) }), best.distance <= 3 {
            return [best.name]
        }
        let tail = variable.dropFirst("SLUICE_".count)
        guard tail.count >= 3 else { return [] }
        return Array(candidates.filter { $0.hasSuffix("_" + tail) }.sorted().prefix(3))
    }

    /// Applies every `SLUICE_*` variable that names a known key, after `checkEnvironmentVariables`
    /// (an unknown one is an error). Lists are comma-separated; an empty value clears optional
    /// keys and lists.
    public static func applyEnvironment(_ environment: [String: String], to configuration: inout SluiceConfiguration) throws(ConfigurationError) {
        try self.checkEnvironmentVariables(environment)
        // The issue's (and most deployments') name for the one-secret setup.
        if let secret = environment["SLUICE_JWT_SECRET"], let setting = self.settingsByKey["auth.jwt_secret"] {
            try self.apply(setting, secret.isEmpty ? .null : .scalar(secret), source: .environment(variable: "SLUICE_JWT_SECRET"), to: &configuration)
        }
        for (variable, key, value) in self.openTelemetryEnvironment(environment) {
            guard let setting = self.settingsByKey[key] else { continue }
            try self.apply(setting, value, source: .environment(variable: variable), to: &configuration)
        }
        for setting in self.settings {
            let variable = self.environmentVariable(forKey: setting.key)
            guard let text = environment[variable] else {
                continue
            }
            let value: RawValue
            if setting.takesRecords {
                value = try self.recordsFromEnvironment(text, setting: setting, variable: variable)
            } else if setting.takesList {
                value = .list(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
            } else if text.isEmpty {
                value = .null
            } else {
                value = .scalar(text)
            }
            try self.apply(setting, value, source: .environment(variable: variable), to: &configuration)
        }
    }

    /// A records setting in an environment variable: flow YAML or JSON; empty means none.
    private static func recordsFromEnvironment(_ text: String, setting: ConfigurationSetting, variable: String) throws(ConfigurationError) -> RawValue {
        if text.trimmingCharacters(in: .whitespaces).isEmpty { return .records([]) }
        let source = ConfigurationError.Source.environment(variable: variable)
        let node: Node?
        // The text is never quoted back (nor Yams' description, which quotes it): these lists
        // hold api keys (`SLUICE_UPSTREAMS`).
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigurationError(kind: .wrongType, key: setting.key, value: nil, reason: "not valid YAML or JSON: \(error.problem)", source: source)
        } catch {
            throw ConfigurationError(kind: .wrongType, key: setting.key, value: nil, reason: "not valid YAML or JSON", source: source)
        }
        guard case .sequence(let sequence)? = node else {
            throw ConfigurationError(kind: .wrongType, key: setting.key, value: nil, reason: "expected \(setting.expected), as a YAML or JSON list", source: source)
        }
        do throws(ConfigurationError) {
            return .records(try self.records(of: sequence, for: setting, path: variable))
        } catch {
            throw ConfigurationError(kind: error.kind, key: error.key, value: error.value, reason: error.reason, source: source)
        }
    }

    /// Applies command-line overrides (the last layer). `sluice serve` builds `ConfigurationOverrides`
    /// from its flags; each set field goes through the same parsing and range checks as the file.
    /// A URL with a password is refused here: `ps` shows a process's arguments to every user of
    /// the machine, so credentials go in the environment or the file.
    public static func applyOverrides(_ overrides: ConfigurationOverrides, to configuration: inout SluiceConfiguration) throws(ConfigurationError) {
        for entry in overrides.entries {
            guard let setting = self.settingsByKey[entry.key] else {
                preconditionFailure("ConfigurationOverrides names unknown key \(entry.key)")
            }
            if Redaction.urlKeys.contains(entry.key), case .scalar(let url) = entry.value, Redaction.containsSecret(url: url) {
                throw ConfigurationError(
                    kind: .invalidValue, key: entry.key, value: url,
                    reason: "a password on the command line is visible to every user of the machine (ps); "
                        + "give this URL in \(self.environmentVariable(forKey: entry.key)) or the configuration file instead",
                    source: .commandLine(option: entry.option))
            }
            try self.apply(setting, entry.value, source: .commandLine(option: entry.option), to: &configuration)
        }
    }

    /// Parses a duration: `"20s"`, `"500ms"`, `"2m"`, `"1h"`, or a plain number of seconds (`5`, `0.25`).
    public static func parseDuration(_ text: String) throws(ConfigurationError) -> TimeAmount {
        do {
            return try ValueParser.duration(text)
        } catch {
            throw ConfigurationError(kind: error.kind, key: nil, value: text, reason: error.reason)
        }
    }

    /// Parses a byte size: `65536`, `"64KiB"`, `"4MiB"`, `"1GiB"`, `"512KB"` (KiB = 1024, KB = 1000).
    public static func parseSize(_ text: String) throws(ConfigurationError) -> Int {
        do {
            return try ValueParser.size(text)
        } catch {
            throw ConfigurationError(kind: error.kind, key: nil, value: text, reason: error.reason)
        }
    }

    // MARK: - Walking the YAML tree

    private static func applyMapping(
        _ mapping: Node.Mapping,
        section: String?,
        path: String,
        to configuration: inout SluiceConfiguration
    ) throws(ConfigurationError) {
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let keyScalar) = keyNode else {
                throw ConfigurationError(
                    kind: .wrongType, key: section, value: nil,
                    reason: "keys must be plain names",
                    source: self.fileSource(path, keyNode.mark)
                )
            }
            let key = section.map { "\($0).\(keyScalar.string)" } ?? keyScalar.string

            if let setting = self.settingsByKey[key] {
                let value = try self.rawValue(of: valueNode, for: setting, path: path)
                try self.apply(setting, value, source: self.fileSource(path, valueNode.mark ?? keyNode.mark), to: &configuration)
            } else if self.sectionKeys.contains(key) {
                switch valueNode {
                case .mapping(let child):
                    try self.applyMapping(child, section: key, path: path, to: &configuration)
                case _ where valueNode.null != nil:
                    continue  // `tls:` with nothing under it changes nothing
                default:
                    throw ConfigurationError(
                        kind: .wrongType, key: key, value: valueNode.scalar?.string,
                        reason: "expected a section (a mapping of keys)",
                        source: self.fileSource(path, valueNode.mark ?? keyNode.mark)
                    )
                }
            } else {
                var reason = "unknown key"
                if let suggestion = self.closestKey(to: key, section: section) {
                    reason += " (did you mean \(suggestion)?)"
                }
                throw ConfigurationError(
                    kind: .unknownKey, key: key, value: nil, reason: reason,
                    source: self.fileSource(path, keyNode.mark)
                )
            }
        }
    }

    /// Converts a YAML node into the source-neutral `RawValue`; anything that cannot be one is a type error.
    private static func rawValue(of node: Node, for setting: ConfigurationSetting, path: String) throws(ConfigurationError) -> RawValue {
        switch node {
        case .scalar(let scalar):
            return node.null != nil ? .null : .scalar(scalar.string)
        case .sequence(let sequence) where setting.takesRecords:
            return .records(try self.records(of: sequence, for: setting, path: path))
        case .sequence(let sequence):
            var items: [String] = []
            for item in sequence {
                guard case .scalar(let scalar) = item, item.null == nil else {
                    throw ConfigurationError(
                        kind: .wrongType, key: setting.key, value: nil,
                        reason: "list items must be plain values, expected \(setting.expected)",
                        source: self.fileSource(path, item.mark ?? node.mark)
                    )
                }
                items.append(scalar.string)
            }
            return .list(items)
        case .mapping:
            throw ConfigurationError(
                kind: .wrongType, key: setting.key, value: nil,
                reason: "expected \(setting.expected), got a mapping",
                source: self.fileSource(path, node.mark)
            )
        case .alias:
            throw ConfigurationError(
                kind: .wrongType, key: setting.key, value: nil,
                reason: "YAML aliases are not supported, expected \(setting.expected)",
                source: self.fileSource(path, node.mark)
            )
        }
    }

    /// A sequence of mappings of plain values.
    private static func records(of sequence: Node.Sequence, for setting: ConfigurationSetting, path: String) throws(ConfigurationError) -> [[String: String]] {
        var records: [[String: String]] = []
        for item in sequence {
            guard case .mapping(let mapping) = item else {
                throw ConfigurationError(
                    kind: .wrongType, key: setting.key, value: nil,
                    reason: "list items must be mappings, expected \(setting.expected)",
                    source: self.fileSource(path, item.mark))
            }
            var record: [String: String] = [:]
            for (keyNode, valueNode) in mapping {
                guard case .scalar(let key) = keyNode else {
                    throw ConfigurationError(kind: .wrongType, key: setting.key, value: nil, reason: "keys must be plain names",
                                             source: self.fileSource(path, keyNode.mark))
                }
                if valueNode.null != nil { continue }
                guard case .scalar(let value) = valueNode else {
                    throw ConfigurationError(kind: .wrongType, key: "\(setting.key).\(key.string)", value: nil,
                                             reason: "expected a plain value", source: self.fileSource(path, valueNode.mark))
                }
                record[key.string] = value.string
            }
            records.append(record)
        }
        return records
    }

    private static func apply(
        _ setting: ConfigurationSetting,
        _ value: RawValue,
        source: ConfigurationError.Source,
        to configuration: inout SluiceConfiguration
    ) throws(ConfigurationError) {
        do {
            try setting.apply(&configuration, value)
        } catch {
            throw ConfigurationError(kind: error.kind, key: setting.key, value: value.displayText, reason: error.reason, source: source)
        }
    }

    private static func fileSource(_ path: String, _ mark: Mark?) -> ConfigurationError.Source {
        .file(path: path, line: mark?.line, column: mark?.column)
    }

    /// The sibling key (same section) nearest to a misspelled one, if it is close enough to be a typo.
    private static func closestKey(to key: String, section: String?) -> String? {
        let prefix = section.map { $0 + "." } ?? ""
        let allKeys = Set(self.settingsByKey.keys).union(self.sectionKeys)
        let siblings = allKeys.filter { candidate in
            candidate.hasPrefix(prefix) && !candidate.dropFirst(prefix.count).contains(".")
        }
        let scored = siblings.map { (key: $0, distance: self.editDistance($0, key)) }
        guard let best = scored.min(by: { ($0.distance, $0.key) < ($1.distance, $1.key) }) else {
            return nil
        }
        return best.distance <= 3 ? best.key : nil
    }

    /// Levenshtein distance: the fewest single-character edits turning `a` into `b`.
    private static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        if a.isEmpty || b.isEmpty {
            return max(a.count, b.count)
        }
        var previousRow = Array(0...b.count)
        for i in 1...a.count {
            var row = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                let substitution = previousRow[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                row[j] = min(previousRow[j] + 1, row[j - 1] + 1, substitution)
            }
            previousRow = row
        }
        return previousRow[b.count]
    }
}

// MARK: - The settings table

extension ConfigurationLoader {
    /// One row per key: its dotted path, how to parse and check it, and where it goes.
    /// Adding a section later means adding rows here and a stored property on `SluiceConfiguration`.
    static let settings: [ConfigurationSetting] = [
        .oneOf("log_level", SluiceConfiguration.logLevels) { $0.logLevel = $1 },
        .oneOf("log_format", LogFormat.allCases.map(\.rawValue)) { $0.logFormat = LogFormat(rawValue: $1)! },
        .bool("echo") { $0.echo = $1 },
        .optionalString("instance_id") { $0.instanceID = $1 },

        .string("server.host", nonEmpty: true) { $0.server.host = $1 },
        .integer("server.port", in: 0...65535) { $0.server.port = $1 },
        .integer("server.event_loop_threads", in: 0...1024) { $0.server.eventLoopThreads = $1 },
        .path("server.path") { $0.server.path = $1 },
        .stringList("server.subprotocols") { $0.server.subprotocols = $1 },
        .stringList("server.allowed_origins") { $0.server.allowedOrigins = $1 },
        .integer("server.max_connections", in: 1...Int.max) { $0.server.maxConnections = $1 },
        .integer("server.max_connections_per_address", in: 0...Int.max) { $0.server.maxConnectionsPerAddress = $1 },
        .duration("server.handshake_timeout", mustBePositive: true) { $0.server.handshakeTimeout = $1 },
        .duration("server.idle_timeout", mustBePositive: true) { $0.server.idleTimeout = $1 },
        .size("server.memory_budget", in: 65536...Int.max) { $0.server.memoryBudget = $1 },
        .optionalString("server.tls.certificate_path") { $0.server.tls.certificatePath = $1 },
        .optionalString("server.tls.private_key_path") { $0.server.tls.privateKeyPath = $1 },
        .duration("server.drain.grace_period", mustBePositive: false) { $0.server.drain.gracePeriod = $1 },
        .duration("server.drain.deadline", mustBePositive: false) { $0.server.drain.deadline = $1 },

        .size("websocket.max_frame_size", in: 1...Int.max) { $0.server.maxFrameSize = $1 },
        .size("websocket.max_message_size", in: 1...Int.max) { $0.server.maxMessageSize = $1 },
        .duration("websocket.heartbeat_interval", mustBePositive: true) { $0.server.heartbeatInterval = $1 },
        .duration("websocket.heartbeat_timeout", mustBePositive: true) { $0.server.heartbeatTimeout = $1 },
        .duration("websocket.close_timeout", mustBePositive: false) { $0.server.closeTimeout = $1 },
        .size("websocket.max_outbound_bytes", in: 1...Int.max) { $0.server.maxOutboundBytes = $1 },
        .size("websocket.write_buffer_low_watermark", in: 1...Int.max) { $0.server.writeBufferLowWatermark = $1 },
        .size("websocket.write_buffer_high_watermark", in: 1...Int.max) { $0.server.writeBufferHighWatermark = $1 },
        .bool("websocket.deflate.enabled") { $0.server.deflate.enabled = $1 },
        .size("websocket.deflate.min_size", in: 0...Int.max) { $0.server.deflate.minSize = $1 },
        .bool("websocket.deflate.server_no_context_takeover") { $0.server.deflate.serverNoContextTakeover = $1 },
        .bool("websocket.deflate.client_no_context_takeover") { $0.server.deflate.clientNoContextTakeover = $1 },
        .integer("websocket.deflate.server_max_window_bits", in: 9...15) { $0.server.deflate.serverMaxWindowBits = $1 },
        .integer("websocket.deflate.level", in: 1...9) { $0.server.deflate.level = $1 },
        .integer("websocket.deflate.memory_level", in: 1...9) { $0.server.deflate.memoryLevel = $1 },

        .integer("chat.default_max_tokens", in: 1...1_000_000) { $0.chat.defaultMaxTokens = $1 },
        .size("chat.max_content_bytes", in: 1...Int.max) { $0.chat.maxContentBytes = $1 },
        .integer("chat.max_tokens_limit", in: 1...1_000_000) { $0.chat.maxTokensLimit = $1 },
        .integer("chat.max_generations_per_connection", in: 1...10_000) { $0.chat.maxGenerationsPerConnection = $1 },
        .bool("chat.cancel_on_disconnect") { $0.chat.cancelOnDisconnect = $1 },
        .duration("chat.resume_retention", mustBePositive: true) { $0.chat.resumeRetention = $1 },
        .integer("chat.max_retained_generations", in: 0...10_000_000) { $0.chat.maxRetainedGenerations = $1 },
        .integer("chat.context_max_characters", in: 1...100_000_000) { $0.chat.contextMaxCharacters = $1 },

        .duration("simulator.time_to_first_token", mustBePositive: false) { $0.simulator.timeToFirstToken = $1 },
        .integer("simulator.tokens_per_second", in: 0...100_000_000) { $0.simulator.tokensPerSecond = Double($1) },
        .integer("simulator.answer_tokens", in: 0...100_000_000) { $0.simulator.answerTokens = $1 },
        .integer("simulator.seed", in: 0...Int.max) { $0.simulator.seed = UInt64($1) },

        .oneOf("upstream.kind", UpstreamSettings.Kind.allCases.map(\.rawValue)) { $0.upstream.kind = UpstreamSettings.Kind(rawValue: $1)! },
        .optionalString("upstream.base_url") { $0.upstream.baseURL = $1 },
        .optionalString("upstream.model") { $0.upstream.model = $1 },
        .optionalString("upstream.api_key") { $0.upstream.apiKey = $1 },
        .duration("upstream.connect_timeout", mustBePositive: true) { $0.upstream.connectTimeout = $1 },
        .duration("upstream.first_token_timeout", mustBePositive: true) { $0.upstream.firstTokenTimeout = $1 },
        .duration("upstream.between_tokens_timeout", mustBePositive: true) { $0.upstream.betweenTokensTimeout = $1 },
        .integer("upstream.circuit_failure_threshold", in: 1...1_000) { $0.upstream.circuitFailureThreshold = $1 },
        .duration("upstream.circuit_open_duration", mustBePositive: true) { $0.upstream.circuitOpenDuration = $1 },
        .duration("upstream.health_check_interval", mustBePositive: true) { $0.upstream.healthCheckInterval = $1 },
        .upstreamList("upstreams") { $0.upstreams = $1 },
        .optionalString("routing.auto.simple") { $0.autoRouting.simple = $1 },
        .optionalString("routing.auto.medium") { $0.autoRouting.medium = $1 },
        .optionalString("routing.auto.complex") { $0.autoRouting.complex = $1 },
        .integer("routing.auto.simple_max_characters", in: 0...1_000_000) { $0.autoRouting.simpleMaxCharacters = $1 },
        .stringList("routing.auto.complex_keywords") { $0.autoRouting.complexKeywords = $1 },

        .optionalString("redis.url") { $0.redis.url = $1 },
        .optionalString("redis.tls.ca_file") { $0.redis.tls.caFile = $1 },
        .optionalString("redis.tls.certificate_file") { $0.redis.tls.certificateFile = $1 },
        .optionalString("redis.tls.private_key_file") { $0.redis.tls.privateKeyFile = $1 },
        .optionalString("redis.tls.server_name") { $0.redis.tls.serverName = $1 },
        .bool("redis.tls.verify") { $0.redis.tls.verify = $1 },
        .duration("redis.command_timeout", mustBePositive: true) { $0.redis.commandTimeout = $1 },
        .integer("redis.max_pending_commands", in: 1...10_000_000) { $0.redis.maxPendingCommands = $1 },
        .size("redis.max_reply_bytes", in: 1024...(1 << 34)) { $0.redis.maxReplyBytes = $1 },
        .integer("redis.max_reply_elements", in: 16...100_000_000) { $0.redis.maxReplyElements = $1 },
        .bool("redis.ready_requires_redis") { $0.redis.readyRequiresRedis = $1 },
        .duration("redis.handoff_deadline", mustBePositive: false) { $0.redis.handoffDeadline = $1 },
        .string("redis.key_prefix", nonEmpty: true) { $0.redis.broker.keyPrefix = $1 },
        .integer("redis.stream_max_entries", in: 10...10_000_000) { $0.redis.broker.streamMaxEntries = $1 },
        .duration("redis.retention_after_done", mustBePositive: true) { $0.redis.broker.retentionAfterDone = $1 },
        .duration("redis.owner_ttl", mustBePositive: true) { $0.redis.broker.ownerTTL = $1 },
        .duration("redis.liveness_interval", mustBePositive: true) { $0.redis.broker.livenessInterval = $1 },
        .integer("redis.conversation_max_messages", in: 1...100_000) { $0.redis.broker.conversationMaxMessages = $1 },
        .duration("redis.conversation_ttl", mustBePositive: true) { $0.redis.broker.conversationTTL = $1 },

        .optionalString("storage.database_url") { $0.storage.databaseURL = $1 },
        .string("storage.data_dir", nonEmpty: true) { $0.storage.dataDirectory = $1 },
        .integer("storage.queue_capacity", in: 2...100_000_000) { $0.storage.queueCapacity = $1 },
        .integer("storage.batch_size", in: 1...10_000) { $0.storage.batchSize = $1 },
        .integer("storage.max_connections", in: 1...1_000) { $0.storage.maxConnections = $1 },
        .integer("storage.partition_months_ahead", in: 1...120) { $0.storage.partitionMonthsAhead = $1 },
        .duration("storage.drain_timeout", mustBePositive: false) { $0.storage.drainTimeout = $1 },

        .optionalString("auth.jwt_secret") { $0.auth.jwtSecret = $1 },
        .optionalString("auth.jwt_secret_file") { $0.auth.jwtSecretFile = $1 },
        .jwtKeyList("auth.keys") { $0.auth.keys = $1 },
        .optionalString("auth.jwks_file") { $0.auth.jwksFile = $1 },
        .stringList("auth.api_keys") { $0.auth.apiKeys = $1 },
        .duration("auth.leeway", mustBePositive: false) { $0.auth.leeway = $1 },
        .optionalString("auth.issuer") { $0.auth.issuer = $1 },
        .optionalString("auth.audience") { $0.auth.audience = $1 },
        .optionalString("auth.query_parameter") { $0.auth.queryParameter = $1 },
        .bool("auth.require_exp") { $0.auth.requireExpiry = $1 },
        .bool("auth.close_on_expiry") { $0.auth.closeOnExpiry = $1 },

        .integer("limits.requests_per_minute_per_user", in: 0...100_000_000) { $0.limits.requestsPerMinutePerUser = $1 },
        .integer("limits.tokens_per_minute_per_user", in: 0...1_000_000_000) { $0.limits.tokensPerMinutePerUser = $1 },
        .integer("limits.requests_per_minute_per_ip", in: 0...100_000_000) { $0.limits.requestsPerMinutePerIP = $1 },
        .integer("limits.tokens_per_minute_per_ip", in: 0...1_000_000_000) { $0.limits.tokensPerMinutePerIP = $1 },
        .integer("limits.connections_per_second_per_ip", in: 0...1_000_000) { $0.limits.connectionsPerSecondPerIP = $1 },
        .integer("limits.messages_per_second_per_connection", in: 0...1_000_000) { $0.limits.messagesPerSecondPerConnection = $1 },
        .integer("limits.forwarded_for_hops", in: 0...10) { $0.limits.forwardedForHops = $1 },

        .stringList("moderation.rules") { $0.moderation.rules = $1 },
        .stringList("moderation.injection_markers") { $0.moderation.injectionMarkers = $1 },
        .oneOf("moderation.injection_action", InputFilter.InjectionAction.allCases.map(\.rawValue)) {
            $0.moderation.injectionAction = InputFilter.InjectionAction(rawValue: $1)!
        },
        .optionalString("moderation.endpoint") { $0.moderation.endpoint = $1 },
        .optionalString("moderation.api_key") { $0.moderation.apiKey = $1 },
        .optionalString("moderation.model") { $0.moderation.model = $1 },
        .duration("moderation.timeout", mustBePositive: true) { $0.moderation.timeout = $1 },
        .bool("moderation.fail_open") { $0.moderation.failOpen = $1 },

        .bool("cache.enabled") { $0.cache.enabled = $1 },
        .duration("cache.ttl", mustBePositive: true) { $0.cache.response.ttl = $1 },
        .bool("cache.allow_nondeterministic") { $0.cache.response.allowNondeterministic = $1 },
        .size("cache.max_entry_bytes", in: 1...Int.max) { $0.cache.response.maxEntryBytes = $1 },
        .duration("cache.lookup_timeout", mustBePositive: true) { $0.cache.response.lookupTimeout = $1 },
        .optionalString("cache.tenant") { $0.cache.response.tenant = $1 },

        .duration("quotas.period", mustBePositive: true) { $0.quotas.period = $1 },
        .duration("quotas.reset_check_interval", mustBePositive: true) { $0.quotas.resetCheckInterval = $1 },

        .duration("jobs.visibility_timeout", mustBePositive: true) { $0.jobs.queue.visibilityTimeout = $1 },
        .duration("jobs.heartbeat_interval", mustBePositive: true) { $0.jobs.queue.heartbeatInterval = $1 },
        .integer("jobs.max_attempts", in: 1...100) { $0.jobs.queue.maxAttempts = $1 },
        .duration("jobs.retry_backoff", mustBePositive: false) { $0.jobs.queue.retryBackoff = $1 },
        .duration("jobs.max_retry_backoff", mustBePositive: false) { $0.jobs.queue.maxRetryBackoff = $1 },
        .duration("jobs.retention", mustBePositive: true) { $0.jobs.queue.retention = $1 },
        .size("jobs.max_input_bytes", in: 1...Int.max) { $0.jobs.queue.maxInputBytes = $1 },
        .integer("jobs.workers_in_serve", in: 0...1_000) { $0.jobs.workersInServe = $1 },
        .integer("jobs.worker_concurrency", in: 1...1_000) { $0.jobs.workerConcurrency = $1 },
        .duration("jobs.shutdown_grace", mustBePositive: false) { $0.jobs.shutdownGrace = $1 },
        .integer("jobs.report_parallel_sections", in: 1...64) { $0.jobs.reportParallelSections = $1 },
        .scheduleList("jobs.schedules") { $0.jobs.schedules = $1 },

        .stringList("tools.enabled") { $0.tools.enabled = $1 },
        .duration("tools.timeout", mustBePositive: true) { $0.tools.timeout = $1 },
        .stringList("tools.http_get_allowed_hosts") { $0.tools.httpGetAllowedHosts = $1 },
        .stringList("tools.http_get_allowed_networks") { $0.tools.httpGetAllowedNetworks = $1 },
        .webhookList("tools.webhooks") { $0.tools.webhooks = $1 },

        .bool("admin.enabled") { $0.admin.enabled = $1 },
        .string("admin.host", nonEmpty: true) { $0.admin.host = $1 },
        .integer("admin.port", in: 0...65535) { $0.admin.port = $1 },

        .optionalString("tracing.otlp_endpoint") { $0.tracing.otlpEndpoint = $1 },
        .string("tracing.service_name", nonEmpty: true) { $0.tracing.serviceName = $1 },
        .fraction("tracing.sample_ratio") { $0.tracing.sampleRatio = $1 },
        .stringList("tracing.headers") { $0.tracing.headers = $1 },
    ]

    /// OpenTelemetry's own variables, honoured so a collector set up for other services needs no
    /// Sluice-specific setting; `SLUICE_TRACING_*` (applied after) wins over them.
    static func openTelemetryEnvironment(_ environment: [String: String]) -> [(variable: String, key: String, value: RawValue)] {
        var values: [(variable: String, key: String, value: RawValue)] = []
        if let endpoint = environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], !endpoint.isEmpty {
            values.append(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "tracing.otlp_endpoint", .scalar(endpoint)))
        } else if let base = environment["OTEL_EXPORTER_OTLP_ENDPOINT"], !base.isEmpty {
            // The base URL: the signal's path is appended, as the OpenTelemetry specification says.
            let trimmed = base.hasSuffix("/") ? String(base.dropLast()) : base
            values.append(("OTEL_EXPORTER_OTLP_ENDPOINT", "tracing.otlp_endpoint", .scalar(trimmed + "/v1/traces")))
        }
        if let name = environment["OTEL_SERVICE_NAME"], !name.isEmpty {
            values.append(("OTEL_SERVICE_NAME", "tracing.service_name", .scalar(name)))
        }
        if let ratio = environment["OTEL_TRACES_SAMPLER_ARG"], !ratio.isEmpty {
            values.append(("OTEL_TRACES_SAMPLER_ARG", "tracing.sample_ratio", .scalar(ratio)))
        }
        if let headers = environment["OTEL_EXPORTER_OTLP_HEADERS"], !headers.isEmpty {
            let list = headers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            values.append(("OTEL_EXPORTER_OTLP_HEADERS", "tracing.headers", .list(list)))
        }
        return values
    }

    static let settingsByKey: [String: ConfigurationSetting] = Dictionary(
        uniqueKeysWithValues: settings.map { ($0.key, $0) }
    )

    /// Every proper prefix of a key (`server`, `server.tls`, `websocket.deflate`, ...): keys that hold a mapping.
    static let sectionKeys: Set<String> = Set(settings.flatMap { setting in
        let parts = setting.key.split(separator: ".")
        return (1..<parts.count).map { parts.prefix($0).joined(separator: ".") }
    })
}

// MARK: - Settings and value parsing

/// A value as written in the file, environment or command line, before it is given a type.
enum RawValue: Sendable {
    /// YAML null (`key:` or `~`), or an empty environment variable.
    case null
    case scalar(String)
    /// A YAML sequence, a comma-separated environment variable, or a repeated option.
    case list([String])
    /// A list of mappings of plain values (`upstreams:`).
    case records([[String: String]])

    /// The value as shown in error messages; nil when there is nothing useful to show.
    var displayText: String? {
        switch self {
        case .null: nil
        case .scalar(let text): text
        case .list(let items): "[" + items.joined(separator: ", ") + "]"
        case .records(let records): "[" + records.map { "{" + $0.keys.sorted().joined(separator: ", ") + "}" }.joined(separator: ", ") + "]"
        }
    }
}

/// What is wrong with a value; the loader adds the key and where the value came from.
struct ValueProblem: Error {
    var kind: ConfigurationError.Kind
    var reason: String
}

/// One row of the settings table.
struct ConfigurationSetting: Sendable {
    /// Dotted path in the YAML file, e.g. `websocket.deflate.level`.
    let key: String
    /// What the value should look like, for error messages.
    let expected: String
    /// Lists are written differently in the environment (comma-separated).
    let takesList: Bool
    /// A list of mappings: in the file a YAML sequence of mappings, in the environment the same
    /// written as flow YAML or JSON (`[{name: a, kind: openai, base_url: "http://…"}]`).
    var takesRecords = false
    /// Parses and checks the value, then stores it.
    let apply: @Sendable (inout SluiceConfiguration, RawValue) throws(ValueProblem) -> Void

    init(key: String, expected: String, takesList: Bool, takesRecords: Bool = false,
         apply: @escaping @Sendable (inout SluiceConfiguration, RawValue) throws(ValueProblem) -> Void) {
        self.key = key
        self.expected = expected
        self.takesList = takesList
        self.takesRecords = takesRecords
        self.apply = apply
    }

    typealias Setter<Value> = @Sendable (inout SluiceConfiguration, Value) -> Void

    static func bool(_ key: String, _ set: @escaping Setter<Bool>) -> Self {
        let expected = "true or false"
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            set(&configuration, try ValueParser.bool(ValueParser.scalarText(raw, expected: expected)))
        }
    }

    static func integer(_ key: String, in range: ClosedRange<Int>, _ set: @escaping Setter<Int>) -> Self {
        let expected = "an integer"
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            let text = try ValueParser.scalarText(raw, expected: expected)
            guard let value = Int(text) else {
                throw ValueProblem(kind: .wrongType, reason: "expected \(expected)")
            }
            try ValueParser.check(value, in: range)
            set(&configuration, value)
        }
    }

    /// A number from 0 to 1.
    static func fraction(_ key: String, _ set: @escaping Setter<Double>) -> Self {
        let expected = "a number from 0 to 1"
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            let text = try ValueParser.scalarText(raw, expected: expected)
            guard let value = Double(text), value.isFinite else {
                throw ValueProblem(kind: .wrongType, reason: "expected \(expected)")
            }
            guard (0...1).contains(value) else {
                throw ValueProblem(kind: .outOfRange, reason: "expected \(expected)")
            }
            set(&configuration, value)
        }
    }

    static func size(_ key: String, in range: ClosedRange<Int>, _ set: @escaping Setter<Int>) -> Self {
        let expected = "a size in bytes such as 65536, 64KiB, 4MiB or 512KB"
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            let value = try ValueParser.size(ValueParser.scalarText(raw, expected: expected))
            try ValueParser.check(value, in: range)
            set(&configuration, value)
        }
    }

    static func duration(_ key: String, mustBePositive: Bool, _ set: @escaping Setter<TimeAmount>) -> Self {
        let expected = "a duration such as 20s, 500ms, 2m, 1h or a number of seconds"
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            let value = try ValueParser.duration(ValueParser.scalarText(raw, expected: expected))
            if mustBePositive, value <= .zero {
                throw ValueProblem(kind: .outOfRange, reason: "must be greater than zero")
            }
            set(&configuration, value)
        }
    }

    static func string(_ key: String, nonEmpty: Bool, _ set: @escaping Setter<String>) -> Self {
        let expected = "a string"
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            let text = try ValueParser.scalarText(raw, expected: expected)
            if nonEmpty, text.isEmpty {
                throw ValueProblem(kind: .invalidValue, reason: "must not be empty")
            }
            set(&configuration, text)
        }
    }

    /// An HTTP path; it must start with `/` or no request could ever match it.
    static func path(_ key: String, _ set: @escaping Setter<String>) -> Self {
        let expected = "a URL path starting with /"
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            let text = try ValueParser.scalarText(raw, expected: expected)
            guard text.hasPrefix("/") else {
                throw ValueProblem(kind: .invalidValue, reason: "expected \(expected)")
            }
            set(&configuration, text)
        }
    }

    /// A string that may be absent: null or empty means nil.
    static func optionalString(_ key: String, _ set: @escaping Setter<String?>) -> Self {
        Self(key: key, expected: "a string or nothing", takesList: false) { configuration, raw throws(ValueProblem) in
            switch raw {
            case .null:
                set(&configuration, nil)
            case .scalar(let text):
                set(&configuration, text.isEmpty ? nil : text)
            case .list, .records:
                throw ValueProblem(kind: .wrongType, reason: "expected a string or nothing, got a list")
            }
        }
    }

    static func stringList(_ key: String, _ set: @escaping Setter<[String]>) -> Self {
        let expected = "a list of strings"
        return Self(key: key, expected: expected, takesList: true) { configuration, raw throws(ValueProblem) in
            switch raw {
            case .list(let items):
                guard !items.contains(where: \.isEmpty) else {
                    throw ValueProblem(kind: .invalidValue, reason: "list items must not be empty")
                }
                set(&configuration, items)
            case .null, .scalar, .records:
                throw ValueProblem(kind: .wrongType, reason: "expected \(expected), e.g. [a, b] or []")
            }
        }
    }

    /// A string from a fixed set, matched case-insensitively and stored lowercased.
    /// A list of mappings (`upstreams:`, `auth.keys:`): each mapping's keys must be `allowedKeys`.
    static func records(_ raw: RawValue, expected: String, allowedKeys: [String]) throws(ValueProblem) -> [[String: String]] {
        let records: [[String: String]]
        switch raw {
        case .records(let items): records = items
        case .null: records = []
        case .list(let items) where items.isEmpty: records = []
        case .scalar, .list:
            throw ValueProblem(kind: .wrongType, reason: "expected \(expected)")
        }
        for (index, record) in records.enumerated() {
            if let unknown = record.keys.sorted().first(where: { !allowedKeys.contains($0) }) {
                throw ValueProblem(kind: .unknownKey, reason: "entry \(index + 1): unknown key \(unknown) (expected one of \(allowedKeys.joined(separator: ", ")))")
            }
        }
        return records
    }

    static func jwtKeyList(_ key: String, _ set: @escaping Setter<[JWTKeySetting]>) -> Self {
        let expected = "a list of keys, each with alg and one of secret, public_key, public_key_file (and kid)"
        let allowedKeys = ["kid", "alg", "secret", "public_key", "public_key_file"]
        return Self(key: key, expected: expected, takesList: false, takesRecords: true) { configuration, raw throws(ValueProblem) in
            let records = try Self.records(raw, expected: expected, allowedKeys: allowedKeys)
            var keys: [JWTKeySetting] = []
            for (index, record) in records.enumerated() {
                let at = "entry \(index + 1)"
                let nonEmpty: (String) -> String? = { record[$0].flatMap { $0.isEmpty ? nil : $0 } }
                guard let algorithm = nonEmpty("alg")?.uppercased(), JWTKeySpec.algorithms.contains(algorithm) else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): alg must be one of \(JWTKeySpec.algorithms.sorted().joined(separator: ", "))")
                }
                let materials = ["secret", "public_key", "public_key_file"].filter { nonEmpty($0) != nil }
                guard materials.count == 1 else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): give exactly one of secret, public_key, public_key_file")
                }
                guard algorithm.hasPrefix("HS") == (materials[0] == "secret") else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): \(algorithm) needs \(algorithm.hasPrefix("HS") ? "a secret" : "a public key")")
                }
                if let kid = nonEmpty("kid"), keys.contains(where: { $0.kid == kid }) {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): the kid \(kid) is used twice")
                }
                keys.append(JWTKeySetting(
                    kid: nonEmpty("kid"), algorithm: algorithm, secret: nonEmpty("secret"), publicKey: nonEmpty("public_key"),
                    publicKeyFile: nonEmpty("public_key_file")))
            }
            set(&configuration, keys)
        }
    }

    static func scheduleList(_ key: String, _ set: @escaping Setter<[JobSchedule]>) -> Self {
        let expected = "a list of schedules, each with name, kind, input (JSON), and every (a duration) or cron (five fields)"
        let allowedKeys = ["name", "kind", "input", "every", "cron", "priority", "user"]
        return Self(key: key, expected: expected, takesList: false, takesRecords: true) { configuration, raw throws(ValueProblem) in
            var schedules: [JobSchedule] = []
            for (index, record) in try Self.records(raw, expected: expected, allowedKeys: allowedKeys).enumerated() {
                let nonEmpty: (String) -> String? = { record[$0].flatMap { $0.isEmpty ? nil : $0 } }
                guard let name = nonEmpty("name"), name.range(of: "^[A-Za-z0-9_.-]{1,64}$", options: .regularExpression) != nil else {
                    throw ValueProblem(kind: .invalidValue, reason: "entry \(index + 1): needs a name (letters, digits, _ . -)")
                }
                let at = "entry \(index + 1) (\(name))"
                guard !schedules.contains(where: { $0.name == name }) else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): the name is used twice")
                }
                guard let kind = nonEmpty("kind") else { throw ValueProblem(kind: .invalidValue, reason: "\(at): needs a kind") }
                let timing: JobSchedule.Timing
                switch (nonEmpty("every"), nonEmpty("cron")) {
                case (let every?, nil):
                    let interval = try ValueParser.duration(every)
                    guard interval >= .seconds(1) else { throw ValueProblem(kind: .invalidValue, reason: "\(at): every must be at least 1s") }
                    timing = .every(interval)
                case (nil, let cron?):
                    do {
                        timing = .cron(try CronSchedule(cron))
                    } catch {
                        throw ValueProblem(kind: .invalidValue, reason: "\(at): \(error)")
                    }
                default:
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): give exactly one of every, cron")
                }
                let input = nonEmpty("input") ?? "{}"
                guard (try? JSONSerialization.jsonObject(with: Data(input.utf8), options: [.fragmentsAllowed])) != nil else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): input must be JSON")
                }
                var priority = JobPriority.normal
                if let text = nonEmpty("priority") {
                    guard let parsed = JobPriority(rawValue: text.lowercased()) else {
                        throw ValueProblem(kind: .invalidValue, reason: "\(at): priority must be high, normal or low")
                    }
                    priority = parsed
                }
                schedules.append(JobSchedule(name: name, timing: timing, kind: kind, input: input, priority: priority, user: nonEmpty("user") ?? "scheduler"))
            }
            set(&configuration, schedules)
        }
    }

    static func webhookList(_ key: String, _ set: @escaping Setter<[WebhookToolSetting]>) -> Self {
        let expected = "a list of tools, each with name, description, parameters (a JSON schema) and url (and timeout)"
        let allowedKeys = ["name", "description", "parameters", "url", "timeout"]
        return Self(key: key, expected: expected, takesList: false, takesRecords: true) { configuration, raw throws(ValueProblem) in
            var tools: [WebhookToolSetting] = []
            for (index, record) in try Self.records(raw, expected: expected, allowedKeys: allowedKeys).enumerated() {
                let nonEmpty: (String) -> String? = { record[$0].flatMap { $0.isEmpty ? nil : $0 } }
                guard let name = nonEmpty("name"), name.range(of: "^[a-zA-Z0-9_-]{1,64}$", options: .regularExpression) != nil else {
                    throw ValueProblem(kind: .invalidValue, reason: "entry \(index + 1): needs a name (letters, digits, _ -)")
                }
                let at = "entry \(index + 1) (\(name))"
                guard !ToolSettings.builtins.contains(name), !tools.contains(where: { $0.name == name }) else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): the name is taken")
                }
                guard let url = nonEmpty("url"), let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme?.lowercased() ?? "") else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): url must be an http(s) URL")
                }
                let parameters = nonEmpty("parameters") ?? #"{"type":"object","properties":{}}"#
                guard (try? JSONSerialization.jsonObject(with: Data(parameters.utf8))) is [String: Any] else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): parameters must be a JSON schema object")
                }
                let timeout = try nonEmpty("timeout").map { text throws(ValueProblem) in try ValueParser.duration(text) }
                tools.append(WebhookToolSetting(
                    name: name, description: nonEmpty("description") ?? name, parameters: parameters, url: url, timeout: timeout))
            }
            set(&configuration, tools)
        }
    }

    static func upstreamList(_ key: String, _ set: @escaping Setter<[NamedUpstream]>) -> Self {
        let expected = "a list of upstreams, each with name, kind (openai, triton or sim), base_url, model, api_key"
        let allowedKeys = ["name", "kind", "base_url", "model", "api_key", "pool", "max_concurrency", "health_path"]
        return Self(key: key, expected: expected, takesList: false, takesRecords: true) { configuration, raw throws(ValueProblem) in
            let records = try Self.records(raw, expected: expected, allowedKeys: allowedKeys)
            var upstreams: [NamedUpstream] = []
            for (index, record) in records.enumerated() {
                let at = "entry \(index + 1)"
                guard let name = record["name"], !name.isEmpty else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): needs a name")
                }
                guard !upstreams.contains(where: { $0.name == name }) else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at): the name \(name) is used twice")
                }
                let kinds = UpstreamSettings.Kind.allCases.map(\.rawValue)
                guard let kindText = record["kind"], let kind = UpstreamSettings.Kind(rawValue: kindText.lowercased()) else {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at) (\(name)): kind must be one of \(kinds.joined(separator: ", "))")
                }
                let nonEmpty: (String) -> String? = { record[$0].flatMap { $0.isEmpty ? nil : $0 } }
                let baseURL = nonEmpty("base_url")
                if kind != .sim && baseURL == nil {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at) (\(name)): kind \(kind.rawValue) needs base_url")
                }
                var maxConcurrency = 0
                if let text = nonEmpty("max_concurrency") {
                    guard let value = Int(text), value >= 0 else {
                        throw ValueProblem(kind: .invalidValue, reason: "\(at) (\(name)): max_concurrency must be a whole number, 0 for no cap")
                    }
                    maxConcurrency = value
                }
                if let path = nonEmpty("health_path"), !path.hasPrefix("/") {
                    throw ValueProblem(kind: .invalidValue, reason: "\(at) (\(name)): health_path must start with /")
                }
                upstreams.append(NamedUpstream(
                    name: name, kind: kind, baseURL: baseURL, model: nonEmpty("model"), apiKey: nonEmpty("api_key"),
                    pool: nonEmpty("pool"), maxConcurrency: maxConcurrency, healthPath: nonEmpty("health_path")))
            }
            set(&configuration, upstreams)
        }
    }

    static func oneOf(_ key: String, _ allowed: [String], _ set: @escaping Setter<String>) -> Self {
        let expected = "one of " + allowed.joined(separator: ", ")
        return Self(key: key, expected: expected, takesList: false) { configuration, raw throws(ValueProblem) in
            let text = try ValueParser.scalarText(raw, expected: expected).lowercased()
            guard allowed.contains(text) else {
                throw ValueProblem(kind: .invalidValue, reason: "expected \(expected)")
            }
            set(&configuration, text)
        }
    }
}

/// Text-to-value conversions shared by every source.
enum ValueParser {
    /// The trimmed text of a single value; null and lists are type errors.
    static func scalarText(_ raw: RawValue, expected: String) throws(ValueProblem) -> String {
        switch raw {
        case .scalar(let text):
            return text.trimmingCharacters(in: .whitespaces)
        case .null:
            throw ValueProblem(kind: .wrongType, reason: "expected \(expected), got nothing")
        case .list, .records:
            throw ValueProblem(kind: .wrongType, reason: "expected \(expected), got a list")
        }
    }

    static func check(_ value: Int, in range: ClosedRange<Int>) throws(ValueProblem) {
        guard !range.contains(value) else {
            return
        }
        let reason = range.upperBound == Int.max
            ? "must be at least \(range.lowerBound)"
            : "must be between \(range.lowerBound) and \(range.upperBound)"
        throw ValueProblem(kind: .outOfRange, reason: reason)
    }

    static func bool(_ text: String) throws(ValueProblem) -> Bool {
        switch text.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw ValueProblem(kind: .wrongType, reason: "expected true or false")
        }
    }

    /// Units in nanoseconds. `ms` comes before `s` and `m` because it ends with `s` and starts with `m`.
    private static let durationUnits: [(suffix: String, nanoseconds: Double)] = [
        ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9), ("d", 86_400e9),
    ]

    static func duration(_ text: String) throws(ValueProblem) -> TimeAmount {
        let expected = "expected a duration such as 20s, 500ms, 2m, 1h, 30d or a number of seconds"
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var number = Substring(trimmed)
        var nanosecondsPerUnit = 1e9  // a bare number is seconds
        if let unit = self.durationUnits.first(where: { trimmed.hasSuffix($0.suffix) }) {
            number = trimmed.dropLast(unit.suffix.count)
            nanosecondsPerUnit = unit.nanoseconds
        }
        number = Substring(number.trimmingCharacters(in: .whitespaces))  // "10 s" is fine too
        let isNegative = number.hasPrefix("-")
        let digits = isNegative ? number.dropFirst() : number
        // Checked by hand because Double("inf"), Double("0x1p3") and Double("1e3") would all parse.
        guard digits.contains(where: \.isNumber),
              digits.allSatisfy({ ("0"..."9").contains($0) || $0 == "." }),
              let value = Double(number)
        else {
            throw ValueProblem(kind: .wrongType, reason: expected)
        }
        if isNegative, value != 0 {
            throw ValueProblem(kind: .outOfRange, reason: "must not be negative")
        }
        let nanoseconds = (value * nanosecondsPerUnit).rounded()
        guard nanoseconds < Double(Int64.max) else {
            throw ValueProblem(kind: .outOfRange, reason: "is too long")
        }
        return .nanoseconds(Int64(nanoseconds))
    }

    /// Longer suffixes first, since `KiB` and `KB` both end with `B`. Matched case-insensitively.
    private static let sizeUnits: [(suffix: String, bytes: Int)] = [
        ("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30),
        ("kb", 1_000), ("mb", 1_000_000), ("gb", 1_000_000_000),
        ("b", 1),
    ]

    static func size(_ text: String) throws(ValueProblem) -> Int {
        let lowercased = text.trimmingCharacters(in: .whitespaces).lowercased()
        var number = Substring(lowercased)
        var bytesPerUnit = 1
        if let unit = self.sizeUnits.first(where: { lowercased.hasSuffix($0.suffix) }) {
            number = lowercased.dropLast(unit.suffix.count)
            bytesPerUnit = unit.bytes
        }
        guard let count = Int(number.trimmingCharacters(in: .whitespaces)) else {
            throw ValueProblem(kind: .wrongType, reason: "expected a size in bytes such as 65536, 64KiB, 4MiB, 1GiB or 512KB")
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: bytesPerUnit)
        guard !overflow else {
            throw ValueProblem(kind: .outOfRange, reason: "is too large")
        }
        return bytes
    }
}

extension YamlError {
    /// Where Yams located the problem, when it says.
    fileprivate var mark: Mark? {
        switch self {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            mark
        case .duplicatedKeysInMapping(_, let context):
            context.mark
        default:
            nil
        }
    }

    /// The problem without Yams' own position prefix and snippet (the source already gives the position).
    fileprivate var problem: String {
        switch self {
        case .scanner(let context?, let problem, _, _), .parser(let context?, let problem, _, _),
             .composer(let context?, let problem, _, _):
            "\(context.text) (line \(context.mark.line)): \(problem)"
        case .scanner(nil, let problem, _, _), .parser(nil, let problem, _, _), .composer(nil, let problem, _, _):
            problem
        default:
            // Other cases (e.g. duplicate keys) have no position prefix; one line is enough.
            String(describing: self).split(separator: "\n").first.map(String.init) ?? "\(self)"
        }
    }

    fileprivate var line: Int? { self.mark?.line }
    fileprivate var column: Int? { self.mark?.column }
}
