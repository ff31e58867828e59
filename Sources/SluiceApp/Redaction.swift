/// Secrets taken out of text that gets printed (log lines, error messages, `ps`-visible
/// arguments): the one place that knows what a secret looks like in a URL or a setting.
public enum Redaction {
    /// What stands where a secret was.
    public static let mask = "***"

    /// Query parameters whose values are credentials (compared case-insensitively).
    static let secretQueryParameters: Set<String> = [
        "password", "pass", "pwd", "secret", "token", "access_token", "api_key", "apikey", "key", "auth", "sslpassword",
    ]

    /// `url` with its password, and any credential-like query parameter, replaced by `***`:
    /// `postgres://sluice:***@db:5432/sluice`, `redis://:***@cache:6379/0`,
    /// `http://host/v1?api_key=***`. The user name stays (it helps to find the account and is not
    /// a secret). Text without "://" comes back unchanged unless it has an "@", before which
    /// everything is masked.
    public static func url(_ url: String) -> String {
        guard let schemeEnd = url.firstRange(of: "://") else {
            // Not a URL (a typo such as `postgres:/u:pw@h`): whatever precedes an "@" may be
            // credentials, so none of it is shown.
            guard let at = url.lastIndex(of: "@") else { return url }
            return Self.mask + url[at...]
        }
        var result = String(url[..<schemeEnd.upperBound])
        var rest = url[schemeEnd.upperBound...]
        // The query is split off first so an "@" in it cannot pass for the credentials' end;
        // the last "@" before it ends the credentials (an unencoded "@" in a password is common).
        var query: Substring?
        if let question = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: question)...]
            rest = rest[..<question]
        }
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            if let colon = credentials.firstIndex(of: ":") {
                result += credentials[..<colon] + ":" + Self.mask
            } else {
                result += credentials
            }
            result += rest[at...]
        } else {
            result += rest
        }
        if let query {
            result += "?" + Self.query(query)
        }
        return result
    }

    /// `a=1&token=***&b=2`: the values of credential-like parameters masked.
    static func query(_ query: Substring) -> String {
        query.split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            guard let equals = pair.firstIndex(of: "=") else { return String(pair) }
            let name = pair[..<equals].lowercased()
            return self.secretQueryParameters.contains(name) ? "\(pair[..<equals])=\(Self.mask)" : String(pair)
        }.joined(separator: "&")
    }

    /// Whether `url` carries a password (`user:password@`) or a credential-like query parameter:
    /// such a URL must not be given on the command line, where `ps` shows it to every user.
    public static func containsSecret(url: String) -> Bool {
        self.url(url) != url
    }

    /// How a configuration value is shown in an error about `key`: secrets not at all, URLs
    /// without their password, everything else as written.
    static func configurationValue(_ value: String?, key: String?) -> String? {
        guard let value, let key else { return value }
        if Self.secretKeys.contains(key) || Self.secretKeys.contains(where: { key.hasPrefix($0 + ".") }) {
            return Self.mask
        }
        if key == "auth.api_keys" {
            // `user:sha256hex`; a raw key pasted by mistake must not be echoed back.
            guard let colon = value.firstIndex(of: ":") else { return Self.mask }
            return value[..<colon] + ":" + Self.mask
        }
        if Self.urlKeys.contains(key) {
            return Self.url(value)
        }
        return value
    }

    /// `reason` without the secret parts of `value` (a URL parser's message quotes the URL).
    static func configurationReason(_ reason: String, value: String?, key: String?) -> String {
        guard let value, let key, !value.isEmpty else { return reason }
        var reason = reason
        if Self.urlKeys.contains(key) {
            reason = reason.replacingOccurrences(of: value, with: Self.url(value))
            for secret in Self.secrets(inURL: value) where secret.count >= 3 {
                reason = reason.replacingOccurrences(of: secret, with: Self.mask)
            }
        } else if Self.configurationValue(value, key: key) != value, value.count >= 3 {
            reason = reason.replacingOccurrences(of: value, with: Self.mask)
        }
        return reason
    }

    /// Settings whose values are secrets, or lists that may hold some (`upstreams` has api keys,
    /// `tracing.headers` authorization headers, webhook URLs tokens).
    static let secretKeys: Set<String> = [
        "auth.jwt_secret", "auth.keys", "upstream.api_key", "upstreams", "moderation.api_key", "tracing.headers",
        "tools.webhooks",
    ]

    /// Settings holding URLs, which may carry a password.
    static let urlKeys: Set<String> = [
        "redis.url", "storage.database_url", "upstream.base_url", "moderation.endpoint", "tracing.otlp_endpoint",
    ]
}
