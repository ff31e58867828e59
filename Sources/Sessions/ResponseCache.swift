import Crypto
import Foundation
import Inference
import Logging
import Metrics
import NIOCore
import RedisClient
import SluiceProtocol

/// Exact-match cache of completed answers in Redis, in front of an engine. Only deterministic
/// requests are cached (temperature 0, unless `allowNondeterministic`): the key is a SHA-256 of
/// the request's cache scope (its user, or the configured tenant), the upstream, the model,
/// every message and the sampling parameters, so one user's answer is never replayed to another
/// (it may carry what their earlier messages or a tool told the model). A hit is replayed with
/// the same chunks (so the same seqs) as the answer that filled it, and no upstream is asked.
/// Answers are stored only when they ended normally (`stop` or `length`). Redis being slow or
/// down never fails a generation: the lookup then counts as a miss.
public struct ResponseCacheSettings: Sendable, Equatable {
    public var ttl: TimeAmount = .hours(1)
    public var allowNondeterministic: Bool = false
    /// Answers bigger than this are not stored.
    public var maxEntryBytes: Int = 256 * 1024
    /// How long a lookup may take before it counts as a miss.
    public var lookupTimeout: TimeAmount = .milliseconds(50)
    /// nil (the default): answers are cached per user. A name: every user of this gateway is
    /// one tenant of that name and shares cached answers (for a single-tenant deployment whose
    /// users may see each other's answers to identical requests).
    public var tenant: String? = nil

    public init() {}
}

public final class ResponseCachingEngine: InferenceEngine, Sendable {
    private let inner: any InferenceEngine
    private let upstream: String
    private let redis: any RedisCommandExecutor
    private let settings: ResponseCacheSettings
    private let keyPrefix: String
    private let lookups: (hit: Counter, miss: Counter, skipped: Counter)

    public init(wrapping inner: any InferenceEngine, upstream: String, redis: any RedisCommandExecutor, keyPrefix: String, settings: ResponseCacheSettings) {
        self.inner = inner
        self.upstream = upstream
        self.redis = redis
        self.settings = settings
        self.keyPrefix = keyPrefix + "rc:"
        self.lookups = (
            Counter(label: "sluice_response_cache_lookups_total", dimensions: [("result", "hit")]),
            Counter(label: "sluice_response_cache_lookups_total", dimensions: [("result", "miss")]),
            Counter(label: "sluice_response_cache_lookups_total", dimensions: [("result", "not_cacheable")]))
    }

    public var defaultModel: String { self.inner.defaultModel }

    func isCacheable(_ request: GenerationRequest) -> Bool {
        // With tools the answer depends on what they return (the time, a web page): not cached.
        // Without a scope nobody is known to be allowed to see a stored answer.
        self.scope(of: request) != nil && request.tools.isEmpty && (self.settings.allowNondeterministic || request.temperature == 0)
    }

    /// Who may share the request's answer: its user, or everyone of the configured tenant.
    func scope(of request: GenerationRequest) -> String? {
        if let tenant = self.settings.tenant { return "tenant:" + tenant }
        return request.user.map { "user:" + $0 }
    }

    /// The request's cache key: who may see it and what decides the answer, nothing else (not
    /// trace headers).
    func key(for request: GenerationRequest) -> String {
        var hasher = SHA256()
        func add(_ text: String) {
            hasher.update(data: Data(text.utf8))
            hasher.update(data: Data([0]))
        }
        add(self.scope(of: request) ?? "")
        add(self.upstream)
        add(request.model ?? self.inner.defaultModel)
        add(String(request.maxTokens))
        add(request.temperature.map { String($0) } ?? "default")
        for message in request.messages {
            add(message.role.rawValue)
            add(message.content)
        }
        return self.keyPrefix + hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    public func startGeneration(_ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink) -> any GenerationHandle {
        guard self.isCacheable(request) else {
            self.lookups.skipped.increment()
            return self.inner.startGeneration(request, on: eventLoop, sink: sink)
        }
        let attempt = CachedAttempt(engine: self, inner: self.inner, request: request, key: self.key(for: request), eventLoop: eventLoop, sink: sink)
        // Called on `eventLoop` (the engine contract), so the attempt can be bound to it.
        let bound = NIOLoopBound(attempt, eventLoop: eventLoop)
        let timeout = eventLoop.scheduleTask(in: self.settings.lookupTimeout) { bound.value.lookupAnswered(nil) }
        self.redis.send(RedisCommand("GET", attempt.key)).hop(to: eventLoop).whenComplete { result in
            timeout.cancel()
            bound.value.lookupAnswered((try? result.get())?.bytes)
        }
        return attempt
    }

    func recordLookup(hit: Bool) {
        (hit ? self.lookups.hit : self.lookups.miss).increment()
    }

    func store(_ entry: CachedAnswer, key: String) {
        guard let data = try? JSONEncoder().encode(entry), data.count <= self.settings.maxEntryBytes else { return }
        let milliseconds = max(1, self.settings.ttl.nanoseconds / 1_000_000)
        _ = self.redis.send(RedisCommand("SET", arguments: [key, String(decoding: data, as: UTF8.self), "PX", String(milliseconds)]))
    }
}

/// What is kept per answer.
struct CachedAnswer: Codable {
    var text: String
    /// Where each chunk ends in `text` (UTF-8 offsets), so a replay has the same seqs.
    var chunkEnds: [Int]
    var finishReason: String
    var promptTokens: Int?
    var completionTokens: Int?
}

/// One cacheable generation: waits for the lookup, then replays a hit or runs the upstream and
/// records what it says. On the generation's event loop.
final class CachedAttempt: GenerationSink, GenerationHandle {
    private let engine: ResponseCachingEngine
    private let inner: any InferenceEngine
    private let request: GenerationRequest
    let key: String
    private let eventLoop: any EventLoop
    private let sink: any GenerationSink
    private var handle: (any GenerationHandle)?
    private var answered = false
    private var cancelled = false
    private var text = ""
    private var chunkEnds: [Int] = []
    private var usage: (Int, Int)?
    private var askedForTools = false

    init(engine: ResponseCachingEngine, inner: any InferenceEngine, request: GenerationRequest, key: String, eventLoop: any EventLoop, sink: any GenerationSink) {
        self.engine = engine
        self.inner = inner
        self.request = request
        self.key = key
        self.eventLoop = eventLoop
        self.sink = sink
    }

    func lookupAnswered(_ bytes: [UInt8]?) {
        guard !self.answered else { return }
        self.answered = true
        guard !self.cancelled else { return }
        if let bytes, let entry = try? JSONDecoder().decode(CachedAnswer.self, from: Data(bytes)),
           let reason = FinishReason(rawValue: entry.finishReason) {
            self.engine.recordLookup(hit: true)
            self.replay(entry, reason: reason)
            return
        }
        self.engine.recordLookup(hit: false)
        self.handle = self.inner.startGeneration(self.request, on: self.eventLoop, sink: self)
    }

    private func replay(_ entry: CachedAnswer, reason: FinishReason) {
        self.sink.generationWasCached()
        self.sink.generationDidConnect()
        let utf8 = Array(entry.text.utf8)
        var start = 0
        for end in entry.chunkEnds where end > start && end <= utf8.count {
            guard !self.cancelled else { return }
            self.sink.generationDidProduce(Substring(String(decoding: utf8[start..<end], as: UTF8.self)))
            start = end
        }
        guard !self.cancelled else { return }
        if let prompt = entry.promptTokens, let completion = entry.completionTokens {
            self.sink.generationDidReportUsage(promptTokens: prompt, completionTokens: completion)
        }
        self.sink.generationDidEndBatch()
        guard !self.cancelled else { return }
        self.sink.generationDidFinish(reason)
    }

    func cancel() {
        self.cancelled = true
        self.handle?.cancel()
        self.handle = nil
    }

    // MARK: GenerationSink (the upstream, on a miss)

    func generationDidConnect() { self.sink.generationDidConnect() }

    func generationDidProduce(_ text: Substring) {
        self.text += text
        self.chunkEnds.append(self.text.utf8.count)
        self.sink.generationDidProduce(text)
    }

    func generationDidReportUsage(promptTokens: Int, completionTokens: Int) {
        self.usage = (promptTokens, completionTokens)
        self.sink.generationDidReportUsage(promptTokens: promptTokens, completionTokens: completionTokens)
    }

    func generationDidEndBatch() { self.sink.generationDidEndBatch() }

    func generationDidRequestToolCalls(_ calls: [ToolCall]) {
        self.askedForTools = true
        self.sink.generationDidRequestToolCalls(calls)
    }

    func generationDidFinish(_ reason: FinishReason) {
        self.handle = nil
        // A turn that asked for tools is not an answer: never replay it.
        if (reason == .stop || reason == .length) && !self.askedForTools {
            self.engine.store(
                CachedAnswer(text: self.text, chunkEnds: self.chunkEnds, finishReason: reason.rawValue,
                             promptTokens: self.usage?.0, completionTokens: self.usage?.1),
                key: self.key)
        }
        self.sink.generationDidFinish(reason)
    }

    func generationDidFail(_ error: InferenceError) {
        self.handle = nil
        self.sink.generationDidFail(error)
    }
}

@available(*, unavailable)
extension CachedAttempt: Sendable {}
