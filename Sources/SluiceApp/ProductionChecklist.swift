import Foundation
import RedisClient
import Storage

/// What a gateway on the internet needs, checked against a configuration: `sluice check-config
/// --production` and `docs/security.md`'s checklist are the same list. Each item says what it
/// protects against; the defaults (a developer's laptop) fail several of them on purpose.
public enum ProductionChecklist {
    public struct Item: Sendable, Equatable {
        /// Short and stable, e.g. `authentication`.
        public var name: String
        public var passed: Bool
        /// What is wrong, or what is in place.
        public var detail: String
    }

    /// `configuration` is what the process would run with (file, environment, flags);
    /// `fileOnly` is the file alone, to tell where a secret was written.
    public static func evaluate(_ configuration: SluiceConfiguration, fileOnly: SluiceConfiguration? = nil) -> [Item] {
        var items: [Item] = []
        func check(_ name: String, _ passed: Bool, _ ok: String, _ problem: String) {
            items.append(Item(name: name, passed: passed, detail: passed ? ok : problem))
        }
        let auth = configuration.auth
        check("authentication", auth.isEnabled,
              "clients must present a JWT or an API key",
              "authentication is off: anyone can connect and name themselves with ?user= (configure auth.keys, auth.jwks_file, a JWT secret file or auth.api_keys)")
        check("no-query-token", (auth.queryParameter ?? "").isEmpty,
              "tokens are never taken from URLs",
              "auth.query_parameter lets tokens ride in URLs, which proxies, browsers and logs keep: leave it empty (browsers use the bearer.<token> subprotocol)")
        let origins = configuration.server.allowedOrigins
        check("allowed-origins", !origins.isEmpty && !origins.contains("*"),
              "only \(origins.joined(separator: ", ")) may open connections from a browser",
              "server.allowed_origins should list the web origins of your clients (not empty, not *), so another site's page cannot use a visitor's browser against the gateway")
        let behindProxy = configuration.limits.forwardedForHops > 0
        check("tls", configuration.server.tls.isEnabled || behindProxy,
              configuration.server.tls.isEnabled ? "the listener speaks TLS" : "a proxy in front terminates TLS (limits.forwarded_for_hops \(configuration.limits.forwardedForHops))",
              "no TLS: set server.tls, or put a TLS-terminating proxy in front and set limits.forwarded_for_hops")
        let admin = configuration.admin
        check("admin-listener", !admin.enabled || admin.port != configuration.server.port,
              admin.enabled ? "metrics, stats and presence are on their own port (\(admin.host):\(admin.port)); keep it off the public load balancer" : "admin routes are off",
              "the admin listener must not share the public port")
        let limits = configuration.limits
        check("rate-limits", limits.requestsPerMinutePerUser > 0 && limits.tokensPerMinutePerUser > 0 && limits.connectionsPerSecondPerIP > 0
                && limits.messagesPerSecondPerConnection > 0,
              "requests and tokens per user, connections per address and messages per connection are limited",
              "set limits.requests_per_minute_per_user, tokens_per_minute_per_user, connections_per_second_per_ip and messages_per_second_per_connection")
        check("connection-caps", configuration.server.maxConnectionsPerAddress > 0 && configuration.server.maxConnections > 0,
              "at most \(configuration.server.maxConnections) connections, \(configuration.server.maxConnectionsPerAddress) per client",
              "set server.max_connections_per_address (0 turns the per-client cap off)")
        check("max-tokens-limit", configuration.chat.maxTokensLimit <= 32_768,
              "no request may ask for more than \(configuration.chat.maxTokensLimit) tokens",
              "chat.max_tokens_limit is \(configuration.chat.maxTokensLimit): set it to what your models should ever answer")
        if let url = configuration.redis.url, let parsed = try? RedisURL(url) {
            let secured = parsed.password != nil || parsed.usesTLS
            check("redis-credentials", secured,
                  parsed.usesTLS ? "Redis is reached over TLS" : "Redis requires a password",
                  "redis.url has no password: run Redis with requirepass or ACL users and put the credentials in SLUICE_REDIS_URL")
            if parsed.usesTLS {
                check("redis-tls-verified", configuration.redis.tls.verify,
                      "Redis's certificate is verified", "redis.tls.verify is false: anyone on the path can impersonate Redis")
            }
        }
        if case .postgres(let url)? = try? configuration.storage.backend, let parsed = try? PostgresURL(url) {
            let local = ["127.0.0.1", "::1", "localhost"].contains(parsed.host) || parsed.host.hasPrefix("/")
            check("database-tls", local || parsed.verification == .full,
                  local ? "the database is on this host" : "the database's certificate and name are verified (sslmode=verify-full)",
                  "storage.database_url should use sslmode=verify-full (with sslrootcert for a private CA): otherwise a man in the middle reads every conversation")
        }
        for tool in configuration.tools.enabled where tool == "http_get" {
            check("http-get-networks", configuration.tools.httpGetAllowedNetworks.isEmpty,
                  "http_get reaches public addresses only",
                  "tools.http_get_allowed_networks opens internal networks to whatever the model is talked into fetching: list single hosts instead")
        }
        check("log-level", !["trace", "debug"].contains(configuration.logLevel),
              "log level \(configuration.logLevel)",
              "log_level \(configuration.logLevel) writes request details to the logs: use info or above")
        if let fileOnly {
            var written: [String] = []
            if fileOnly.auth.jwtSecret != nil { written.append("auth.jwt_secret") }
            if let url = fileOnly.redis.url, (try? RedisURL(url))?.password != nil { written.append("redis.url") }
            if let url = fileOnly.storage.databaseURL, (try? PostgresURL(url))?.password != nil { written.append("storage.database_url") }
            if fileOnly.upstreams.contains(where: { $0.apiKey != nil }) || fileOnly.upstream.apiKey != nil { written.append("upstream API keys") }
            if fileOnly.moderation.apiKey != nil { written.append("moderation.api_key") }
            check("secrets-outside-the-file", written.isEmpty,
                  "no secret is written in the configuration file",
                  "\(written.joined(separator: ", ")) in the file: put secrets in the environment or in files only the service can read")
        }
        return items
    }
}
