import Foundation
import Logging
import Synchronization

/// How log lines look: `text` (swift-log's readable stream handler, for a terminal), `json` (one
/// object per line, for a log pipeline), or `auto`: text on a terminal, JSON otherwise.
public enum LogFormat: String, Sendable, CaseIterable {
    case auto, text, json

    /// What `auto` means for this process.
    var resolved: LogFormat {
        guard self == .auto else { return self }
        return isatty(STDERR_FILENO) == 1 ? .text : .json
    }
}

enum LogOutput {
    private static let bootstrapped = Mutex(false)

    /// Installs the log handler (once per process: swift-log allows one bootstrap).
    static func bootstrap(_ format: LogFormat) {
        let first = Self.bootstrapped.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        // Every line goes through the scrubber: no configured secret is ever printed.
        switch format.resolved {
        case .json: LoggingSystem.bootstrap { label in ScrubbingLogHandler(wrapped: JSONLogHandler(label: label)) }
        case .text, .auto: LoggingSystem.bootstrap { label in ScrubbingLogHandler(wrapped: StreamLogHandler.standardError(label: label)) }
        }
    }
}

/// One JSON object per line on stderr: `ts` (RFC 3339, UTC, microseconds), `level`, `label`,
/// `msg`, `source`, and every metadata key (`sluice.generation`, `sluice.instance`, …) as a
/// string field. Lines are written whole, under a lock, so concurrent loggers do not interleave.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    private static let output = Mutex(())

    init(label: String) {
        self.label = label
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: String] = [:]
        for (key, value) in self.metadata { fields[key] = "\(value)" }
        if let provided = self.metadataProvider?.get() {
            for (key, value) in provided { fields[key] = "\(value)" }
        }
        if let extra = event.metadata {
            for (key, value) in extra { fields[key] = "\(value)" }
        }
        var line = "{\"ts\":" + Self.quoted(Self.timestamp()) + ",\"level\":" + Self.quoted(event.level.rawValue)
        line += ",\"label\":" + Self.quoted(self.label) + ",\"msg\":" + Self.quoted("\(event.message)")
        line += ",\"source\":" + Self.quoted(event.source)
        for key in fields.keys.sorted() {
            line += "," + Self.quoted(key) + ":" + Self.quoted(fields[key]!)
        }
        line += "}\n"
        Self.output.withLock { _ in
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    static func timestamp() -> String {
        let now = Date().timeIntervalSince1970
        let seconds = Int64(now.rounded(.down))
        let micros = Int64(((now - Double(seconds)) * 1_000_000).rounded(.down))
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), micros)
    }

    /// A JSON string literal (RFC 8259 escaping).
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
