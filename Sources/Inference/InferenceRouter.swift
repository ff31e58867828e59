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

    /// `upstreams` must not be empty; the first is the default.
    public init(upstreams: [Upstream]) {
        precondition(!upstreams.isEmpty, "an InferenceRouter needs at least one upstream")
        self.upstreams = upstreams
    }

    public init(single engine: any InferenceEngine, name: String = "default") {
        self.init(upstreams: [Upstream(name: name, engine: engine)])
    }

    public var defaultUpstream: Upstream { self.upstreams[0] }

    public func route(model: String?) -> Result<Route, UnknownModel> {
        guard let model else { return .success(Route(upstream: self.defaultUpstream, model: nil)) }
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
