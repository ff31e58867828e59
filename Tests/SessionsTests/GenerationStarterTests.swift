import Foundation
import Inference
import Logging
import NIOCore
import NIOEmbedded
import Policy
@testable import Sessions
import SluiceProtocol
import Testing
import Tools

/// The one pipeline every front door uses, driven without sockets: an embedded event loop, an
/// engine the test scripts, and a front door that records what it is told.
@Suite struct GenerationStarterTests {
    /// An upstream whose generations the test drives through their sinks.
    final class ScriptedEngine: InferenceEngine, @unchecked Sendable {
        final class Handle: GenerationHandle {
            var cancelled = false
            func cancel() { self.cancelled = true }
        }

        var requests: [GenerationRequest] = []
        var sinks: [any GenerationSink] = []
        var handles: [Handle] = []
        var defaultModel: String { "scripted" }

        func startGeneration(_ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink) -> any GenerationHandle {
            self.requests.append(request)
            self.sinks.append(sink)
            let handle = Handle()
            self.handles.append(handle)
            return handle
        }

        /// The upstream accepts, streams `tokens` in one read, then finishes.
        func answer(_ index: Int, _ tokens: [Substring], reason: FinishReason = .stop) {
            let sink = self.sinks[index]
            sink.generationDidConnect()
            for token in tokens { sink.generationDidProduce(token) }
            sink.generationDidEndBatch()
            sink.generationDidFinish(reason)
        }
    }

    /// A front door that records the pipeline's answers and the generation's events in order.
    final class RecordingDoor: GenerationRequester {
        enum Event: Equatable {
            case starting
            case refused(GenerationRefusal)
            case started(id: String)
            case delta(seq: Int64, text: String)
            case held(first: Int64, last: Int64, text: String)
            case toolCalls([String])
            case toolResults([String])
            case clientToolCalls([ToolCall])
            case done(FinishReason, seq: Int64)
            case ended
            case failedToStart(ErrorCode)
        }

        var events: [Event] = []
        var generations: [ChatGeneration] = []
        var isConnected = true
        var isWritable = true
        var lastCheck: GenerationStartCheck?

        func readyToStart(_ order: GenerationOrder) -> GenerationStartCheck {
            self.lastCheck ?? (self.isConnected ? .ready : .gone)
        }
        func generationStarting(_ generation: ChatGeneration) {
            self.generations.append(generation)
            self.events.append(.starting)
        }
        func generationRefused(_ refusal: GenerationRefusal) { self.events.append(.refused(refusal)) }
        func writeStarted(_ generation: ChatGeneration) { self.events.append(.started(id: generation.id)) }
        func writeDeltaIfWritable(_ generation: ChatGeneration, seq: Int64, text: Substring) -> Bool {
            guard self.isWritable else { return false }
            self.events.append(.delta(seq: seq, text: String(text)))
            return true
        }
        func writeHeldDelta(_ generation: ChatGeneration, _ held: DeltaMerger.PendingDelta) {
            self.events.append(.held(first: held.firstSeq, last: held.lastSeq, text: String(held.text)))
        }
        func writeToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall]) { self.events.append(.toolCalls(calls.map(\.name))) }
        func writeToolResults(_ generation: ChatGeneration, _ runs: [ToolRun]) { self.events.append(.toolResults(runs.map(\.output))) }
        func writeClientToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall]) { self.events.append(.clientToolCalls(calls)) }
        func writeDone(_ generation: ChatGeneration, _ end: GenerationEnd, cached: Bool, budgetNotice: GenerationStateMachine.BudgetNotice?) {
            self.events.append(.done(end.finishReason, seq: end.seq))
        }
        func flush() {}
        func generationEnded(_ generation: ChatGeneration) { self.events.append(.ended) }
        func generationFailedToStart(_ generation: ChatGeneration, error: InferenceError) { self.events.append(.failedToStart(error.code)) }
    }

    struct Fixture {
        let loop = EmbeddedEventLoop()
        let engine = ScriptedEngine()
        let application: ChatApplication

        init(tools: ToolRegistry = .empty) {
            var logger = Logger(label: "sluice.starter-test")
            logger.logLevel = .critical
            // Two upstreams: a `model` naming neither is refused (one alone would get any model passed through).
            let router = InferenceRouter(upstreams: [.init(name: "scripted", engine: self.engine), .init(name: "other", engine: self.engine)])
            self.application = ChatApplication(
                configuration: ChatConfiguration(instanceID: "test"), router: router, conversations: ConversationMemory(),
                tools: tools, logger: logger)
        }

        var caller: GenerationCaller {
            GenerationCaller(user: "ada", address: "127.0.0.1", sessionID: "sess_test", trace: .topLevel)
        }

        func start(_ order: GenerationOrder, _ door: RecordingDoor) {
            self.application.starter.start(order, for: self.caller, output: door, on: self.loop)
            self.loop.run()
        }
    }

    static func clock() throws -> ToolRegistry {
        var registry = ToolRegistry()
        try registry.register(CurrentTimeTool())
        return registry
    }

    static func stored(_ content: String, in conversationID: String? = nil, requestID: String? = "r1") -> GenerationOrder {
        GenerationOrder(conversation: .stored(conversationID: conversationID, content: content), requestID: requestID)
    }

    @Test func aStoredOrderStreamsThroughTheDoorAndTheNextTurnContinuesTheConversation() throws {
        let fixture = Fixture()
        let door = RecordingDoor()
        fixture.start(Self.stored("hello"), door)
        #expect(door.events == [.starting])
        #expect(fixture.engine.requests.map(\.messages) == [[ChatMessage(role: .user, content: "hello")]])
        #expect(fixture.engine.requests.first?.user == "ada")
        let generation = try #require(door.generations.first)
        #expect(generation.id.hasPrefix("gen_") && generation.requestID == "r1")
        fixture.engine.answer(0, ["hi", " there"])
        #expect(door.events == [
            .starting, .started(id: generation.id), .delta(seq: 1, text: "hi"), .delta(seq: 2, text: " there"), .done(.stop, seq: 2), .ended,
        ])
        // The hub keeps the answer for resuming; the conversation holds both turns.
        guard case .finished? = fixture.application.hub.lookup(generation.id)?.state else {
            Issue.record("the ended generation is not in the hub")
            return
        }
        let next = RecordingDoor()
        fixture.start(Self.stored("and then?", in: generation.conversationID), next)
        #expect(fixture.engine.requests.last?.messages == [
            ChatMessage(role: .user, content: "hello"), ChatMessage(role: .assistant, content: "hi there"),
            ChatMessage(role: .user, content: "and then?"),
        ])
        #expect(next.generations.first?.conversationID == generation.conversationID)
    }

    @Test func anEphemeralOrderSendsItsMessagesAsTheyAreAndKeepsNoConversation() throws {
        let fixture = Fixture()
        let door = RecordingDoor()
        let messages = [ChatMessage(role: .system, content: "Be brief."), ChatMessage(role: .user, content: "hello")]
        fixture.start(GenerationOrder(conversation: .ephemeral(messages: messages), idPrefix: "chatcmpl-"), door)
        #expect(fixture.engine.requests.map(\.messages) == [messages])
        let generation = try #require(door.generations.first)
        #expect(generation.id.hasPrefix("chatcmpl-"))
        fixture.engine.answer(0, ["ok"])
        #expect(door.events.suffix(2) == [.done(.stop, seq: 1), .ended])
        // Registered in the hub like any generation (cancel and resume by id), but no conversation was kept.
        #expect(fixture.application.hub.lookup(generation.id) != nil)
        let next = RecordingDoor()
        fixture.start(Self.stored("again", in: generation.conversationID), next)
        #expect(next.events == [.refused(GenerationRefusal(
            code: .notFound, message: "unknown conversation \(generation.conversationID)", requestID: "r1"))])
        #expect(fixture.engine.requests.count == 1)
    }

    @Test func anUnknownConversationOrModelIsRefusedWithTheRequestIDAndStartsNothing() {
        let fixture = Fixture()
        let unknownConversation = RecordingDoor()
        let id = UUID().uuidString.lowercased()
        fixture.start(Self.stored("hi", in: id, requestID: "r7"), unknownConversation)
        #expect(unknownConversation.events == [.refused(GenerationRefusal(code: .notFound, message: "unknown conversation \(id)", requestID: "r7"))])
        let unknownModel = RecordingDoor()
        var order = Self.stored("hi", requestID: "r8")
        order.model = "no-such-model"
        fixture.start(order, unknownModel)
        guard case .refused(let refusal)? = unknownModel.events.first, unknownModel.events.count == 1 else {
            Issue.record("\(unknownModel.events)")
            return
        }
        #expect(refusal.code == .notFound && refusal.requestID == "r8" && refusal.message.contains("no-such-model"))
        #expect(fixture.engine.requests.isEmpty)
    }

    @Test func aDoorThatLeftOrRefusesAtTheLastCheckStartsNothing() {
        let fixture = Fixture()
        let gone = RecordingDoor()
        gone.isConnected = false
        fixture.start(Self.stored("hi"), gone)
        #expect(gone.events.isEmpty)
        let busy = RecordingDoor()
        let refusal = GenerationRefusal(code: .overloaded, message: "busy", retryAfterMs: 1000, requestID: "r1")
        busy.lastCheck = .refused(refusal)
        fixture.start(Self.stored("hi"), busy)
        #expect(busy.events == [.refused(refusal)])
        #expect(fixture.engine.requests.isEmpty)
    }

    @Test func anUpstreamThatFailsBeforeAcceptingGivesFailedToStartAndNoGeneration() throws {
        let fixture = Fixture()
        let door = RecordingDoor()
        fixture.start(Self.stored("hi"), door)
        fixture.engine.sinks[0].generationDidFail(InferenceError(.unavailable, "connection refused"))
        #expect(door.events == [.starting, .failedToStart(.upstreamUnavailable)])
        let generation = try #require(door.generations.first)
        #expect(fixture.application.hub.lookup(generation.id) == nil)
    }

    @Test func theClientsToolsAreOfferedInsteadOfTheGatewaysAndTheirCallsComeBackToIt() throws {
        let fixture = try Fixture(tools: Self.clock())
        let door = RecordingDoor()
        let lookup = ToolDefinition(name: "lookup", description: "Finds a word", parameters: #"{"type":"object"}"#)
        var order = GenerationOrder(conversation: .ephemeral(messages: [ChatMessage(role: .user, content: "define x")]), idPrefix: "chatcmpl-")
        order.clientTools = [lookup]
        order.toolChoice = ToolChoice.required
        fixture.start(order, door)
        let request = try #require(fixture.engine.requests.first)
        #expect(request.tools == [lookup] && request.toolChoice == .required)
        let call = ToolCall(id: "call_1", name: "lookup", arguments: #"{"word":"x"}"#)
        let sink = fixture.engine.sinks[0]
        sink.generationDidConnect()
        sink.generationDidRequestToolCalls([call])
        sink.generationDidEndBatch()
        sink.generationDidFinish(.stop)
        let id = try #require(door.generations.first?.id)
        #expect(door.events == [.starting, .started(id: id), .clientToolCalls([call]), .done(.toolCalls, seq: 0), .ended])
        // Nothing ran here: one upstream request.
        #expect(fixture.engine.requests.count == 1)
    }

    @Test func withoutClientToolsTheGatewaysAreOfferedAndRunHere() throws {
        let fixture = try Fixture(tools: Self.clock())
        let door = RecordingDoor()
        fixture.start(GenerationOrder(conversation: .ephemeral(messages: [ChatMessage(role: .user, content: "time?")])), door)
        let request = try #require(fixture.engine.requests.first)
        #expect(request.tools.map(\.name) == ["current_time"] && request.toolChoice == nil)
        let sink = fixture.engine.sinks[0]
        sink.generationDidConnect()
        sink.generationDidRequestToolCalls([ToolCall(id: "c1", name: "current_time", arguments: "{}")])
        sink.generationDidEndBatch()
        sink.generationDidFinish(.stop)
        // The calls go out as the gateway's (`tool.call`), and the tools run off the loop.
        #expect(door.events.last == .toolCalls(["current_time"]))
    }

    @Test func aWriteTheDoorCannotTakeIsMergedAndWrittenWhenItCan() throws {
        let fixture = Fixture()
        let door = RecordingDoor()
        fixture.start(Self.stored("hi"), door)
        let sink = fixture.engine.sinks[0]
        sink.generationDidConnect()
        door.isWritable = false
        sink.generationDidProduce("a")
        sink.generationDidProduce("b")
        sink.generationDidEndBatch()
        door.isWritable = true
        sink.generationDidProduce("c")
        sink.generationDidEndBatch()
        sink.generationDidFinish(.stop)
        let id = try #require(door.generations.first?.id)
        #expect(door.events == [.starting, .started(id: id), .held(first: 1, last: 3, text: "abc"), .done(.stop, seq: 3), .ended])
    }

    @Test func aCancelEndsTheGenerationOnceAndClosesTheUpstreamRequest() throws {
        let fixture = Fixture()
        let door = RecordingDoor()
        fixture.start(Self.stored("hi"), door)
        let generation = try #require(door.generations.first)
        fixture.engine.sinks[0].generationDidConnect()
        fixture.engine.sinks[0].generationDidProduce("a")
        generation.cancel()
        generation.cancel()
        #expect(fixture.engine.handles[0].cancelled)
        #expect(door.events == [.starting, .started(id: generation.id), .delta(seq: 1, text: "a"), .done(.cancelled, seq: 1), .ended])
    }
}
