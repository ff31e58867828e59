import Foundation
import Inference
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SluiceTestSupport
import Testing

@testable import Tools

/// A tool that waits until `parties` calls are inside it at once (or gives up after 5 s): a
/// structural proof that calls run concurrently, with no timing threshold.
final class Rendezvous: Sendable {
    let parties: Int
    private let arrived = NIOLockedValueBox(0)

    init(parties: Int) { self.parties = parties }

    func arrive() async -> Bool {
        self.arrived.withLockedValue { $0 += 1 }
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if self.arrived.withLockedValue({ $0 }) >= self.parties { return true }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return false
    }
}

struct RendezvousTool: Tool {
    let name: String
    let description = "meets the others"
    let parameters = #"{"type":"object","properties":{}}"#
    let rendezvous: Rendezvous
    func run(_ arguments: ToolArguments) async throws -> String {
        await self.rendezvous.arrive() ? "together" : "alone"
    }
}

/// Ignores cancellation (a continuation resumed by a timer, not by cancellation) and answers
/// only after 10 s, without holding a thread meanwhile.
final class StubbornTool: Tool, Sendable {
    let name = "stubborn"
    let description = "sleeps through cancellation"
    let parameters = #"{"type":"object"}"#
    private let answered = NIOLockedValueBox(false)
    var hasAnswered: Bool { self.answered.withLockedValue { $0 } }

    func run(_ arguments: ToolArguments) async throws -> String {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().asyncAfter(deadline: .now() + 10) { continuation.resume() }
        }
        self.answered.withLockedValue { $0 = true }
        return "late"
    }
}

struct FailingTool: Tool {
    let name = "failing"
    let description = "always fails"
    let parameters = #"{"type":"object"}"#
    func run(_ arguments: ToolArguments) async throws -> String { throw ToolError("the service said no") }
}

struct ChattyTool: Tool {
    let name = "chatty"
    let description = "answers at length"
    let parameters = #"{"type":"object"}"#
    func run(_ arguments: ToolArguments) async throws -> String { String(repeating: "x", count: 100_000) }
}

@Suite struct ToolRegistryTests {
    @Test func allCallsOfATurnRunAtOnceAndComeBackInTheirOrder() async throws {
        let rendezvous = Rendezvous(parties: 3)
        var registry = ToolRegistry()
        try registry.register(RendezvousTool(name: "a", rendezvous: rendezvous))
        try registry.register(RendezvousTool(name: "b", rendezvous: rendezvous))
        let calls = [ToolCall(id: "1", name: "a", arguments: "{}"), ToolCall(id: "2", name: "b", arguments: ""), ToolCall(id: "3", name: "a", arguments: " {} ")]
        let runs = await registry.runAll(calls)
        #expect(runs.map(\.call.id) == ["1", "2", "3"])
        #expect(runs.map(\.status) == [.ok, .ok, .ok])
        // Each waited for the other two: they were all running at the same time.
        #expect(runs.map(\.output) == ["together", "together", "together"])
    }

    @Test func badCallsBecomeErrorResultsNotFailures() async throws {
        var registry = ToolRegistry()
        try registry.register(CalculatorTool())
        try registry.register(FailingTool())
        let runs = await registry.runAll([
            ToolCall(id: "1", name: "nope", arguments: "{}"),
            ToolCall(id: "2", name: "calculator", arguments: "{not json"),
            ToolCall(id: "3", name: "calculator", arguments: #"{"expression": 7}"#),
            ToolCall(id: "4", name: "calculator", arguments: #"{"expression": "1/0"}"#),
            ToolCall(id: "5", name: "failing", arguments: "{}"),
            ToolCall(id: "6", name: "calculator", arguments: #"{"expression": "2^10 - 24", "extra": 1}"#),
            ToolCall(id: "7", name: "calculator", arguments: #"{"expression": "(1+2)*sqrt(16)"}"#),
        ])
        #expect(runs.map(\.status) == [.unknownTool, .invalidArguments, .invalidArguments, .error, .error, .invalidArguments, .ok])
        #expect(runs[0].output.contains("unknown tool"))
        #expect(runs[0].output.contains("calculator"))
        #expect(runs[2].output.contains("expression"))
        #expect(runs[3].output.contains("division by zero"))
        #expect(runs[4].output == #"{"error":"the service said no"}"#)
        #expect(runs[6].output == "12")
        for run in runs.dropLast() {
            // What the model gets back for a failure is a JSON object with an error.
            let object = try #require(try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any])
            #expect(object["error"] is String)
        }
    }

    @Test func aToolThatIgnoresCancellationIsAnsweredAtItsDeadline() async throws {
        var registry = ToolRegistry()
        let stubborn = StubbornTool()
        try registry.register(stubborn, timeout: .milliseconds(200))
        let run = await registry.run(ToolCall(id: "1", name: "stubborn", arguments: "{}"))
        #expect(run.status == .timeout)
        #expect(run.output.contains("200 ms"))
        // Answered at the deadline, while the tool itself is still running.
        #expect(!stubborn.hasAnswered)
    }

    @Test func longAnswersAreCutWithANote() async throws {
        var registry = ToolRegistry()
        registry.maximumOutputBytes = 1000
        try registry.register(ChattyTool())
        let run = await registry.run(ToolCall(id: "1", name: "chatty", arguments: "{}"))
        #expect(run.status == .ok)
        #expect(run.output.utf8.count < 1100)
        #expect(run.output.hasSuffix("[truncated: the answer was 100000 bytes]"))
    }

    @Test func definitionsFollowRegistrationAndCanBeNarrowed() throws {
        var registry = ToolRegistry()
        try registry.register(CalculatorTool())
        try registry.register(CurrentTimeTool())
        #expect(registry.definitions().map(\.name) == ["calculator", "current_time"])
        #expect(registry.definitions(only: ["current_time", "missing"]).map(\.name) == ["current_time"])
        #expect(registry.definitions(only: []).isEmpty)
        #expect(throws: ToolError.self) { try registry.register(RendezvousTool(name: "bad name!", rendezvous: Rendezvous(parties: 1))) }
    }

    @Test func currentTimeAnswersInTheAskedZone() async throws {
        let fixed = Date(timeIntervalSince1970: 1_800_000_000)  // 2027-01-15T08:00:00Z
        let tool = CurrentTimeTool(clock: { fixed })
        let utc = try JSONSerialization.jsonObject(with: Data(try await tool.run(ToolArguments(json: "{}")).utf8)) as? [String: Any]
        #expect(utc?["iso8601"] as? String == "2027-01-15T08:00:00Z")
        #expect(utc?["unix"] as? Int == 1_800_000_000)
        let tokyo = try JSONSerialization.jsonObject(with: Data(try await tool.run(ToolArguments(json: #"{"timezone":"Asia/Tokyo"}"#)).utf8)) as? [String: Any]
        #expect(tokyo?["iso8601"] as? String == "2027-01-15T17:00:00+09:00")
        #expect(tokyo?["utc_offset_seconds"] as? Int == 9 * 3600)
        await #expect(throws: ToolError.self) { try await tool.run(ToolArguments(json: #"{"timezone":"Mars/Olympus"}"#)) }
    }

    @Test func httpGetFetchesOnlyFromAllowedHosts() async throws {
        let page = try await FakeUpstream.start { _ in
            [.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello tools"), .close]
        }
        defer { Task { await page.stop() } }
        let tool = try HTTPGetTool(allowedHosts: ["127.0.0.1:\(page.port)"], timeout: .seconds(5), eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        let answer = try await tool.run(ToolArguments(json: #"{"url":"http://127.0.0.1:\#(page.port)/readme?x=1"}"#))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any])
        #expect(object["status"] as? Int == 200)
        #expect(object["body"] as? String == "hello tools")
        #expect(page.requests.first?.uri == "/readme?x=1")
        await #expect(throws: ToolError.self) { try await tool.run(ToolArguments(json: #"{"url":"http://localhost:\#(page.port)/"}"#)) }
        await #expect(throws: ToolError.self) { try await tool.run(ToolArguments(json: #"{"url":"file:///etc/passwd"}"#)) }
        #expect(page.requests.count == 1)
    }

    @Test func aWebhookToolPostsItsArgumentsAndReturnsTheAnswer() async throws {
        let service = try await BarrierHTTPServer.start(parties: 1)
        defer { Task { await service.stop() } }
        let tool = WebhookTool(
            name: "lookup", description: "d", parameters: #"{"type":"object"}"#, url: URL(string: "http://127.0.0.1:\(service.port)/lookup")!,
            timeout: .seconds(5), eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        let answer = try await tool.run(ToolArguments(json: #"{"q":"sluice"}"#))
        #expect(answer.contains(#""together":true"#))
        #expect(service.bodies == [#"{"q":"sluice"}"#])
    }
}
