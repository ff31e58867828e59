import NIOCore
import SluiceProtocol

/// A built-in engine for demos and load tests — not a model. It streams a deterministic text
/// for a prompt (same prompt and seed, same tokens) at a configured time to first token and
/// rate, honours `max_tokens` and cancel, and reports usage like an upstream would.
public struct SimulatorEngine: InferenceEngine {
    public struct Configuration: Sendable, Equatable {
        /// Delay before the first token.
        public var timeToFirstToken: TimeAmount = .milliseconds(200)
        /// Tokens per second per generation; 0 streams as fast as the server can.
        public var tokensPerSecond: Double = 50
        /// Tokens in a full answer (before `max_tokens` cuts it, which ends with `length`).
        public var answerTokens: Int = 120
        /// Varies the text for the same prompt.
        public var seed: UInt64 = 0
        public init() {}
    }

    public let configuration: Configuration
    public var defaultModel: String { "sluice-simulator" }

    public init(configuration: Configuration = .init()) {
        self.configuration = configuration
    }

    public func startGeneration(
        _ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink
    ) -> any GenerationHandle {
        let generation = SimulatedGeneration(
            configuration: self.configuration, request: request, eventLoop: eventLoop, sink: sink)
        generation.start()
        return generation
    }

    /// The deterministic token sequence for a prompt: words picked by a PRNG seeded from the
    /// prompt's bytes and the seed.
    public static func tokens(for prompt: String, seed: UInt64, count: Int) -> [String] {
        var generator = SplitMix64(seed: Self.hash(prompt) ^ seed)
        return (0..<count).map { index in
            let choice = Int(generator.next() % UInt64(Self.vocabulary.count))
            // Shared strings, so a long answer costs no string building per token.
            return index == 0 ? Self.vocabulary[choice].capitalizedFirst : Self.spacedVocabulary[choice]
        }
    }

    static let spacedVocabulary = vocabulary.map { " " + $0 }

    static func hash(_ text: String) -> UInt64 {
        // FNV-1a: stable across runs and platforms (Swift's Hasher is seeded per process).
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }

    static let vocabulary = [
        "the", "stream", "flows", "through", "a", "sluice", "gate", "and", "every", "token",
        "arrives", "in", "order", "while", "the", "gateway", "keeps", "its", "promises", "to",
        "clients", "who", "wait", "for", "answers", "from", "models", "running", "on", "GPUs",
        "far", "away", "quickly", "quietly", "with", "care", "so", "nothing", "is", "lost",
    ]
}

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension String {
    var capitalizedFirst: String { self.prefix(1).uppercased() + self.dropFirst() }
}

/// One simulated generation, living on its event loop.
final class SimulatedGeneration: GenerationHandle {
    private let configuration: SimulatorEngine.Configuration
    private let eventLoop: any EventLoop
    /// Strong until the end or `cancel()` (see `StreamingHTTPRequest` for why not weak).
    private var sink: (any GenerationSink)?
    private let tokens: [String]
    private let promptTokens: Int
    private let finishReason: FinishReason
    private var next = 0
    private var timer: Scheduled<Void>?
    private var isCancelled = false
    /// At full speed, tokens emitted per event-loop tick before yielding to other work.
    private static let batchSize = 256

    init(configuration: SimulatorEngine.Configuration, request: GenerationRequest, eventLoop: any EventLoop, sink: any GenerationSink) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.sink = sink
        let prompt = request.messages.last(where: { $0.role == .user })?.content ?? ""
        let count = min(configuration.answerTokens, request.maxTokens)
        self.finishReason = configuration.answerTokens > request.maxTokens ? .length : .stop
        self.tokens = SimulatorEngine.tokens(for: prompt, seed: configuration.seed, count: count)
        // Prompt "tokens": words of every message, a rough count like an upstream would give.
        self.promptTokens = request.messages.reduce(0) { $0 + $1.content.split(whereSeparator: \.isWhitespace).count + 4 }
    }

    func start() {
        // Accepted at once (on the next turn: the sink hears nothing inside startGeneration).
        self.eventLoop.assumeIsolated().execute {
            guard !self.isCancelled else { return }
            self.sink?.generationDidConnect()
        }
        self.schedule(in: self.configuration.timeToFirstToken)
    }

    func cancel() {
        self.eventLoop.preconditionInEventLoop()
        self.isCancelled = true
        self.sink = nil
        self.timer?.cancel()
        self.timer = nil
    }

    private func schedule(in delay: TimeAmount) {
        let loop = self.eventLoop.assumeIsolated()
        if delay <= .zero {
            loop.execute { self.emit() }
        } else {
            self.timer = loop.scheduleTask(in: delay) { self.emit() }
        }
    }

    private func emit() {
        self.timer = nil
        guard !self.isCancelled, let sink = self.sink else { return }
        let fullSpeed = self.configuration.tokensPerSecond <= 0
        let batch = fullSpeed ? Self.batchSize : 1
        var emitted = 0
        while emitted < batch && self.next < self.tokens.count && !self.isCancelled {
            sink.generationDidProduce(Substring(self.tokens[self.next]))
            self.next += 1
            emitted += 1
        }
        guard !self.isCancelled else { return }
        if self.next >= self.tokens.count {
            sink.generationDidReportUsage(promptTokens: self.promptTokens, completionTokens: self.tokens.count)
            sink.generationDidEndBatch()
            self.sink = nil
            sink.generationDidFinish(self.finishReason)
            return
        }
        sink.generationDidEndBatch()
        self.schedule(in: fullSpeed ? .zero : .nanoseconds(Int64(1e9 / self.configuration.tokensPerSecond)))
    }
}

@available(*, unavailable)
extension SimulatedGeneration: Sendable {}
