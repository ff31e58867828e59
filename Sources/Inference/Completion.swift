import NIOConcurrencyHelpers
import NIOCore
import SluiceProtocol

/// A whole answer, collected: for callers that need the text, not the stream (jobs).
public struct Completion: Sendable, Equatable {
    public var text: String
    public var finishReason: FinishReason
    public var toolCalls: [ToolCall]
    /// As the upstream reported them, when it did.
    public var promptTokens: Int?
    public var completionTokens: Int?
}

extension InferenceEngine {
    /// Runs `request` to its end and returns the collected answer. Cancelling the calling task
    /// cancels the generation (closing its upstream connection).
    public func complete(_ request: GenerationRequest, on eventLoop: any EventLoop) async throws -> Completion {
        let promise = eventLoop.makePromise(of: Completion.self)
        let running = NIOLockedValueBox<CollectingSink.Handle?>(nil)
        return try await withTaskCancellationHandler {
            eventLoop.execute {
                let sink = CollectingSink(promise: promise, maxTokens: request.maxTokens)
                sink.handle = self.startGeneration(request, on: eventLoop, sink: sink)
                running.withLockedValue { $0 = CollectingSink.Handle(sink: NIOLoopBound(sink, eventLoop: eventLoop)) }
            }
            return try await promise.futureResult.get()
        } onCancel: {
            eventLoop.execute {
                running.withLockedValue { $0 }?.sink.value.cancel()
            }
        }
    }
}

/// Gathers a generation's events into a `Completion`; lives on the generation's event loop.
final class CollectingSink: GenerationSink {
    struct Handle: Sendable {
        let sink: NIOLoopBound<CollectingSink>
    }

    private let promise: EventLoopPromise<Completion>
    var handle: (any GenerationHandle)?
    private var text = ""
    private var toolCalls: [ToolCall] = []
    private var usage: (Int, Int)?
    private var ended = false
    /// The request's max_tokens and byte bound: an upstream that sends more is cut there.
    private let maxTokens: Int
    private let maxBytes: Int
    private var deltas = 0

    init(promise: EventLoopPromise<Completion>, maxTokens: Int) {
        self.promise = promise
        self.maxTokens = maxTokens
        self.maxBytes = GenerationRequest.maxAnswerBytes(forTokens: maxTokens)
    }

    func cancel() {
        guard !self.ended else { return }
        self.handle?.cancel()
        self.ended = true
        self.handle = nil
        self.promise.fail(CancellationError())
    }

    func generationDidProduce(_ text: Substring) {
        guard !self.ended else { return }
        guard self.deltas < self.maxTokens, self.text.utf8.count + text.utf8.count <= self.maxBytes else {
            // More than was asked for: stop the upstream and keep what came within the bounds.
            self.handle?.cancel()
            self.handle = nil
            self.generationDidFinish(.length)
            return
        }
        self.deltas += 1
        self.text += text
    }
    func generationDidReportUsage(promptTokens: Int, completionTokens: Int) { self.usage = (promptTokens, completionTokens) }
    func generationDidEndBatch() {}
    func generationDidRequestToolCalls(_ calls: [ToolCall]) { self.toolCalls = calls }

    func generationDidFinish(_ reason: FinishReason) {
        guard !self.ended else { return }
        self.ended = true
        self.handle = nil
        self.promise.succeed(Completion(
            text: self.text, finishReason: reason, toolCalls: self.toolCalls,
            promptTokens: self.usage?.0, completionTokens: self.usage?.1))
    }

    func generationDidFail(_ error: InferenceError) {
        guard !self.ended else { return }
        self.ended = true
        self.handle = nil
        self.promise.fail(error)
    }
}
