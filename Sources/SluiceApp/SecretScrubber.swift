import Foundation
import Logging
import Synchronization

/// The safety net behind `Redaction`: the configured secrets themselves (passwords in the
/// database, Redis and upstream URLs, api keys, JWT secrets, tracing headers), removed from
/// every log line and from the error a command ends with, whatever library wrote them. Each
/// place that prints a URL or a key masks it on purpose; this catches the text nobody thought
/// of (a driver's error quoting its connection string).
public enum SecretScrubber {
    /// Shorter strings are not scrubbed (they would mangle ordinary words); the places that
    /// print secrets mask them whatever their length.
    static let minimumLength = 4

    private static let registered = Mutex<[String]>([])

    /// Adds the secrets of `configuration` (called at start-up, before anything is logged).
    public static func register(_ configuration: SluiceConfiguration) {
        self.register(configuration.secretValues)
    }

    static func register(_ secrets: [String]) {
        let usable = secrets.filter { $0.count >= Self.minimumLength }
        guard !usable.isEmpty else { return }
        self.registered.withLock { list in
            for secret in usable where !list.contains(secret) { list.append(secret) }
            // Longest first, so a secret containing another is replaced whole.
            list.sort { $0.count > $1.count }
        }
    }

    /// `text` with every registered secret replaced by `***`.
    public static func scrub(_ text: String) -> String {
        let secrets = self.registered.withLock { $0 }
        return Self.scrub(text, secrets: secrets)
    }

    static func scrub(_ text: String, secrets: [String]) -> String {
        var text = text
        for secret in secrets where text.contains(secret) {
            text = text.replacingOccurrences(of: secret, with: Redaction.mask)
        }
        return text
    }

    static func scrub(_ value: Logger.MetadataValue, secrets: [String]) -> Logger.MetadataValue {
        switch value {
        case .string(let text): .string(Self.scrub(text, secrets: secrets))
        case .stringConvertible(let convertible): .string(Self.scrub(convertible.description, secrets: secrets))
        case .array(let values): .array(values.map { Self.scrub($0, secrets: secrets) })
        case .dictionary(let values): .dictionary(values.mapValues { Self.scrub($0, secrets: secrets) })
        }
    }

    static var secrets: [String] { self.registered.withLock { $0 } }
}

/// Wraps the process's log handler: message and metadata go through `SecretScrubber` first.
struct ScrubbingLogHandler: LogHandler {
    var wrapped: any LogHandler

    var logLevel: Logger.Level {
        get { self.wrapped.logLevel }
        set { self.wrapped.logLevel = newValue }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { self.wrapped.metadataProvider }
        set { self.wrapped.metadataProvider = newValue }
    }

    var metadata: Logger.Metadata {
        get { self.wrapped.metadata }
        set {
            let secrets = SecretScrubber.secrets
            self.wrapped.metadata = secrets.isEmpty ? newValue : newValue.mapValues { SecretScrubber.scrub($0, secrets: secrets) }
        }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.wrapped[metadataKey: key] }
        set {
            let secrets = SecretScrubber.secrets
            self.wrapped[metadataKey: key] = secrets.isEmpty ? newValue : newValue.map { SecretScrubber.scrub($0, secrets: secrets) }
        }
    }

    func log(event: LogEvent) {
        let secrets = SecretScrubber.secrets
        guard !secrets.isEmpty else {
            self.wrapped.log(event: event)
            return
        }
        var event = event
        event.message = "\(SecretScrubber.scrub(event.message.description, secrets: secrets))"
        event.metadata = event.metadata?.mapValues { SecretScrubber.scrub($0, secrets: secrets) }
        self.wrapped.log(event: event)
    }
}

extension SluiceConfiguration {
    /// Every secret this configuration holds, as it may appear in text: passwords of the URLs it
    /// connects to (as written and percent-decoded), api keys, JWT secrets, header values.
    var secretValues: [String] {
        var secrets: [String] = []
        let urls = [self.redis.url, self.storage.databaseURL, self.upstream.baseURL, self.moderation.endpoint, self.tracing.otlpEndpoint]
            + self.upstreams.map(\.baseURL) + self.tools.webhooks.map(\.url)
        for url in urls.compactMap({ $0 }) {
            secrets += Redaction.secrets(inURL: url)
        }
        secrets += [self.auth.jwtSecret, self.upstream.apiKey, self.moderation.apiKey].compactMap { $0 }
        secrets += self.upstreams.compactMap(\.apiKey)
        secrets += self.auth.keys.compactMap(\.secret)
        if case .success(let headers) = self.tracing.parsedHeaders { secrets += headers.values }
        return secrets
    }
}

extension Redaction {
    /// The password and credential-like query values of `url`, raw and percent-decoded.
    static func secrets(inURL url: String) -> [String] {
        var found: [String] = []
        var rest = Substring(url)
        if let schemeEnd = url.firstRange(of: "://") { rest = url[schemeEnd.upperBound...] }
        if let question = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: question)...].split(separator: "&") {
                guard let equals = pair.firstIndex(of: "="),
                      Self.secretQueryParameters.contains(pair[..<equals].lowercased()) else { continue }
                found.append(String(pair[pair.index(after: equals)...]))
            }
            rest = rest[..<question]
        }
        // Only a password: a user name alone (`postgres://sluice@db/sluice`) is not a secret, and
        // scrubbing it would blank an ordinary word from every line.
        if let at = rest.lastIndex(of: "@"), let colon = rest[..<at].firstIndex(of: ":") {
            found.append(String(rest[rest.index(after: colon)..<at]))
        }
        return found.flatMap { [$0, $0.removingPercentEncoding].compactMap { $0 } }.filter { !$0.isEmpty }
    }
}
