import Foundation
import Inference
import NIOCore
import NIOPosix
import SluiceProtocol
import Synchronization

/// One sink call, as recorded.
enum SinkEvent: Equatable, Sendable, CustomStringConvertible {
    case text(String)
    case usage(Int, Int)
    case batch
    case finish(FinishReason)
    case fail(InferenceError.Kind)
    /// A call off the generation's event loop (must never happen).
    case offLoop

    var isTerminal: Bool {
        switch self {
        case .finish, .fail: return true
        default: return false
        }
    }

    var description: String {
        switch self {
        case .text(let text): return "text(\(text.debugDescription))"
        case .usage(let prompt, let completion): return "usage(\(prompt),\(completion))"
        case .batch: return "batch"
        case .finish(let reason): return "finish(\(reason))"
        case .fail(let kind): return "fail(\(kind))"
        case .offLoop: return "offLoop"
        }
    }
}

/// What a sink heard, readable from the test's thread.
final class SinkLog: Sendable {
    private let state = Mutex<(events: [SinkEvent], error: InferenceError?)>(([], nil))

    var events: [SinkEvent] { self.state.withLock { $0.events } }
    var error: InferenceError? { self.state.withLock { $0.error } }
    var withoutBatches: [SinkEvent] { self.events.filter { $0 != .batch } }

    func append(_ event: SinkEvent, error: InferenceError? = nil) {
        self.state.withLock {
            $0.events.append(event)
            if let error { $0.error = error }
        }
    }

    /// Polls until `condition` holds or the timeout passes; returns the events either way.
    @discardableResult
    func wait(timeout: Duration = .seconds(5), until condition: ([SinkEvent]) -> Bool) async -> [SinkEvent] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(self.events) { break }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return self.events
    }

    @discardableResult
    func waitForEnd(timeout: Duration = .seconds(5)) async -> [SinkEvent] {
        await self.wait(timeout: timeout) { $0.contains(where: \.isTerminal) }
    }

    /// Batches only ever close a read that produced text: never first, never twice in a row,
    /// and the last text is flushed before the terminal event.
    func batchesAreWellPlaced() -> Bool {
        var textSinceBatch = false
        for event in self.events {
            switch event {
            case .text: textSinceBatch = true
            case .batch:
                guard textSinceBatch else { return false }
                textSinceBatch = false
            case .finish, .fail:
                return !textSinceBatch
            case .usage, .offLoop: break
            }
        }
        return !textSinceBatch
    }
}

/// A sink living on the generation's event loop; it may cancel its own generation after a number
/// of chunks (from inside the sink call, the hardest case).
final class RecordingSink: GenerationSink {
    let log: SinkLog
    let eventLoop: any EventLoop
    var handle: (any GenerationHandle)?
    private let cancelAfterChunks: Int?
    private var chunks = 0

    init(log: SinkLog, eventLoop: any EventLoop, cancelAfterChunks: Int?) {
        self.log = log
        self.eventLoop = eventLoop
        self.cancelAfterChunks = cancelAfterChunks
    }

    private func record(_ event: SinkEvent, error: InferenceError? = nil) {
        if !self.eventLoop.inEventLoop { self.log.append(.offLoop) }
        self.log.append(event, error: error)
    }

    func generationDidProduce(_ text: Substring) {
        self.record(.text(String(text)))
        self.chunks += 1
        if self.chunks == self.cancelAfterChunks { self.handle?.cancel() }
    }

    func generationDidReportUsage(promptTokens: Int, completionTokens: Int) {
        self.record(.usage(promptTokens, completionTokens))
    }

    func generationDidEndBatch() { self.record(.batch) }
    func generationDidFinish(_ reason: FinishReason) { self.record(.finish(reason)) }
    func generationDidFail(_ error: InferenceError) { self.record(.fail(error.kind), error: error) }
}

/// A started generation and its sink (which the engine holds until the end or a cancel).
struct TestGeneration: Sendable {
    let sink: NIOLoopBound<RecordingSink>
    let log: SinkLog
    let eventLoop: any EventLoop

    static func start(
        _ engine: some InferenceEngine, _ request: GenerationRequest = .sample, cancelAfterChunks: Int? = nil,
        cancelAtOnce: Bool = false
    ) async throws -> TestGeneration {
        let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
        let log = SinkLog()
        let sink = try await eventLoop.submit {
            let sink = RecordingSink(log: log, eventLoop: eventLoop, cancelAfterChunks: cancelAfterChunks)
            sink.handle = engine.startGeneration(request, on: eventLoop, sink: sink)
            if cancelAtOnce { sink.handle?.cancel() }
            return NIOLoopBound(sink, eventLoop: eventLoop)
        }.get()
        return TestGeneration(sink: sink, log: log, eventLoop: eventLoop)
    }

    func cancel() async throws {
        let sink = self.sink
        try await self.eventLoop.submit { sink.value.handle?.cancel() }.get()
    }
}

extension GenerationRequest {
    static let sample = GenerationRequest(
        messages: [ChatMessage(role: .system, content: "Be brief."), ChatMessage(role: .user, content: "Hi \"there\"\n")],
        maxTokens: 64, temperature: 0.5)
}
