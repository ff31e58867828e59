import Foundation

/// Checks on user input before it goes upstream: a configurable rule list, and chat-template
/// control tokens (prompt-injection markers) stripped or refused. Plain and synchronous; an
/// external moderation service, when configured, is asked after these pass.
///
/// What this can do: stop known-bad strings and the template tokens a model would otherwise
/// read as a role switch. What it cannot: understand meaning. Paraphrases, other languages,
/// encodings and instructions hidden in documents pass a string filter; treat it as a tripwire,
/// not as safety.
public struct InputFilter: Sendable {
    public enum InjectionAction: String, Sendable, CaseIterable {
        case strip, reject
    }

    public struct Rule: Sendable {
        public var name: String
        fileprivate var matcher: Matcher
    }

    fileprivate enum Matcher: @unchecked Sendable {
        case substring(String)
        /// NSRegularExpression is immutable once made, so sharing it is safe.
        case regex(NSRegularExpression)
    }

    public struct InvalidRule: Error, CustomStringConvertible {
        public var description: String
    }

    public enum Verdict: Equatable, Sendable {
        /// Passes; the text to send (markers stripped when configured).
        case allowed(String)
        /// Refused, and by which rule (for the log; the client gets a generic message).
        case rejected(rule: String)
    }

    public let rules: [Rule]
    public let injectionMarkers: [String]
    public let injectionAction: InjectionAction

    /// Chat-template control tokens of common model families (ChatML, Llama 2/3, Mistral, Gemma, Phi).
    public static let defaultInjectionMarkers = [
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|begin_of_text|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",
        "<start_of_turn>", "<end_of_turn>",
    ]

    /// `rules`: each a case-insensitive substring, or `re:` and a regular expression.
    public init(rules: [String], injectionMarkers: [String] = InputFilter.defaultInjectionMarkers, injectionAction: InjectionAction = .strip) throws(InvalidRule) {
        var parsed: [Rule] = []
        for (index, rule) in rules.enumerated() {
            if rule.hasPrefix("re:") {
                do {
                    let expression = try NSRegularExpression(pattern: String(rule.dropFirst(3)), options: [.caseInsensitive])
                    parsed.append(Rule(name: "rule \(index + 1)", matcher: .regex(expression)))
                } catch {
                    throw InvalidRule(description: "rule \(index + 1) is not a regular expression: \(rule)")
                }
            } else if !rule.isEmpty {
                parsed.append(Rule(name: "rule \(index + 1)", matcher: .substring(rule.lowercased())))
            }
        }
        self.rules = parsed
        self.injectionMarkers = injectionMarkers.filter { !$0.isEmpty }
        self.injectionAction = injectionAction
    }

    public static let none = try! InputFilter(rules: [], injectionMarkers: [])

    public var isActive: Bool { !self.rules.isEmpty || !self.injectionMarkers.isEmpty }

    public func check(_ text: String) -> Verdict {
        var text = text
        for marker in self.injectionMarkers where text.range(of: marker, options: .caseInsensitive) != nil {
            switch self.injectionAction {
            case .reject: return .rejected(rule: "injection marker \(marker)")
            case .strip:
                while let range = text.range(of: marker, options: .caseInsensitive) { text.removeSubrange(range) }
            }
        }
        let lowered = text.lowercased()
        for rule in self.rules {
            switch rule.matcher {
            case .substring(let needle):
                if lowered.contains(needle) { return .rejected(rule: rule.name) }
            case .regex(let expression):
                if expression.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil { return .rejected(rule: rule.name) }
            }
        }
        return .allowed(text)
    }
}
