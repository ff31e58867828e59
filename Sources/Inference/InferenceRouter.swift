/// Named upstreams, and which one serves a request: the client's `model` picks an upstream by
/// its name or by the model it serves; no `model` means the first (the default).
///
/// With a single upstream, any other `model` is passed through to it unchanged (the upstream
/// decides whether it knows the model), which is how `--upstream URL` has always behaved.
/// With several, a `model` that names none of them is refused before anything is sent.
public struct InferenceRouter: Sendable {
    public struct Upstream: Sendable {
        public var name: String
        public var engine: any InferenceEngine
        public init(name: String, engine: any InferenceEngine) {
            self.name = name
            self.engine = engine
        }
    }

    /// Where a request goes, and the model name to send there (nil: the engine's own).
    public struct Route: Sendable {
        public var upstream: Upstream
        public var model: String?
    }

    public struct UnknownModel: Error, Equatable, Sendable {
        public var model: String
        public var available: [String]
        public var message: String { "unknown model \(self.model) (available: \(self.available.joined(separator: ", ")))" }
    }

    public let upstreams: [Upstream]
    /// `model: "auto"`: which upstream by how demanding the prompt looks.
    public let auto: AutoRouting

    /// `upstreams` must not be empty; the first is the default.
    public init(upstreams: [Upstream], auto: AutoRouting = .init()) {
        precondition(!upstreams.isEmpty, "an InferenceRouter needs at least one upstream")
        self.upstreams = upstreams
        self.auto = auto
    }

    public init(single engine: any InferenceEngine, name: String = "default") {
        self.init(upstreams: [Upstream(name: name, engine: engine)])
    }

    public var defaultUpstream: Upstream { self.upstreams[0] }

    public func route(model: String?, prompt: String = "") -> Result<Route, UnknownModel> {
        guard let model else { return .success(Route(upstream: self.defaultUpstream, model: nil)) }
        if model == "auto" {
            let tier = self.auto.tier(for: prompt)
            // A tier without an upstream falls back to medium, then to the default.
            for name in [self.auto.upstream(for: tier), self.auto.medium].compactMap({ $0 }) {
                if let named = self.upstreams.first(where: { $0.name == name }) { return .success(Route(upstream: named, model: nil)) }
            }
            return .success(Route(upstream: self.defaultUpstream, model: nil))
        }
        // A name chooses the upstream and leaves the model to its configuration.
        if let named = self.upstreams.first(where: { $0.name == model }) {
            return .success(Route(upstream: named, model: nil))
        }
        if let serving = self.upstreams.first(where: { $0.engine.defaultModel == model }) {
            return .success(Route(upstream: serving, model: model))
        }
        if self.upstreams.count == 1 {
            return .success(Route(upstream: self.defaultUpstream, model: model))
        }
        return .failure(UnknownModel(model: model, available: self.upstreams.map(\.name)))
    }
}

/// The seed's `ModelRouter` rule, configurable: a short question is `simple`, a prompt with one
/// of the `complexKeywords` is `complex`, anything else `medium`; each tier names an upstream.
public struct AutoRouting: Sendable, Equatable {
    public enum Tier: String, Sendable { case simple, medium, complex }

    public var simple: String?
    public var medium: String?
    public var complex: String?
    /// At most this many characters, with a `?`, is simple.
    public var simpleMaxCharacters: Int = 100
    public var complexKeywords: [String] = ["analyze", "research", "compare"]

    public init() {}

    public func tier(for prompt: String) -> Tier {
        if prompt.count < self.simpleMaxCharacters && prompt.contains("?") { return .simple }
        let lowered = prompt.lowercased()
        if self.complexKeywords.contains(where: { lowered.contains($0.lowercased()) }) { return .complex }
        return .medium
    }

    func upstream(for tier: Tier) -> String? {
        switch tier {
        case .simple: return self.simple
        case .medium: return self.medium
        case .complex: return self.complex
        }
    }
}
