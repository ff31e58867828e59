import Foundation
import Testing
@testable import ChatClient

/// The protocol-facing rules of `sluice chat`, driven without sockets or terminals.
@Suite struct ChatClientStateMachineTests {
    typealias Machine = ChatClientStateMachine

    static let ready = #"{"type":"session.ready","session_id":"s1","instance_id":"inst-1","protocol":"sluice.v1","heartbeat_ms":20000,"model":"sim"}"#

    static func started(_ generationID: String = "g1", conversation: String = "c1", request: String = "r1") -> String {
        #"{"type":"generation.started","generation_id":"\#(generationID)","conversation_id":"\#(conversation)","request_id":"\#(request)","model":"sim"}"#
    }

    static func delta(_ generationID: String = "g1", seq: Int, _ text: String) -> String {
        #"{"type":"generation.delta","generation_id":"\#(generationID)","seq":\#(seq),"text":"\#(text)"}"#
    }

    static func done(_ generationID: String = "g1", seq: Int, reason: String = "stop", completion: Int) -> String {
        #"{"type":"generation.done","generation_id":"\#(generationID)","seq":\#(seq),"finish_reason":"\#(reason)","usage":{"prompt_tokens":5,"completion_tokens":\#(completion),"total_tokens":\#(completion + 5),"usage_source":"upstream"}}"#
    }

    /// A machine that has seen `session.ready` and shown its prompt.
    static func connected(interactive: Bool = true, maxTokens: Int? = nil) -> Machine {
        var machine = Machine(configuration: .init(maxTokens: maxTokens, interactive: interactive, serverURL: "ws://test/v1/ws"))
        _ = machine.handle(.messageReceived(Self.ready))
        return machine
    }

    /// The JSON objects of the `send` actions.
    static func sent(_ actions: [Machine.Action]) -> [[String: Any]] {
        actions.compactMap { action in
            guard case .send(let text) = action else { return nil }
            return (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
        }
    }

    static func lines(_ actions: [Machine.Action]) -> [String] {
        actions.compactMap { action in
            guard case .printLine(let text, _) = action else { return nil }
            return text
        }
    }

    @Test func bannerThenPrompt() {
        var machine = Machine(configuration: .init(interactive: true, serverURL: "ws://test/v1/ws"))
        let actions = machine.handle(.messageReceived(Self.ready))
        #expect(actions.contains(.printLine("connected to ws://test/v1/ws · instance inst-1 · model sim", .plain)))
        #expect(actions.contains(.watchSilence(limit: .seconds(45))))
        #expect(actions.last == .prompt)
    }

    /// `heartbeat_ms` is the server's number: an absurd one is bounded (an hour) before the
    /// client computes its silence limit with it (2 × 2^63-1 used to trap).
    @Test func aServersAbsurdHeartbeatIsBounded() {
        for heartbeat in ["9223372036854775807", "4611686018427387904", "1e30"] {
            var machine = Machine(configuration: .init(interactive: true, serverURL: "ws://test/v1/ws"))
            let ready = Self.ready.replacingOccurrences(of: "20000", with: heartbeat)
            let actions = machine.handle(.messageReceived(ready))
            let watches = actions.compactMap { action -> Duration? in
                if case .watchSilence(let limit) = action { return limit }
                return nil
            }
            #expect(watches.allSatisfy { $0 <= .milliseconds(2 * Machine.maximumHeartbeatMs) + .seconds(5) }, "\(heartbeat): \(watches)")
            #expect(actions.last == .prompt, "\(heartbeat)")
        }
    }

    @Test func lineSendsChatSend() throws {
        var machine = Self.connected(maxTokens: 64)
        let actions = machine.handle(.lineEntered("hello there"))
        let sent = Self.sent(actions)
        try #require(sent.count == 1)
        #expect(sent[0]["type"] as? String == "chat.send")
        #expect(sent[0]["content"] as? String == "hello there")
        #expect(sent[0]["request_id"] as? String == "r1")
        #expect(sent[0]["max_tokens"] as? Int == 64)
        #expect(sent[0]["conversation_id"] == nil)
        #expect(!actions.contains(.prompt))  // No prompt while waiting for the answer.
    }

    @Test func answerStreamsThenStatusAndConversationIsKept() throws {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        #expect(machine.handle(.messageReceived(Self.started())).isEmpty)
        #expect(machine.handle(.messageReceived(Self.delta(seq: 1, "Hello"))) == [.print("Hello")])
        #expect(machine.handle(.messageReceived(Self.delta(seq: 2, " world"))) == [.print(" world")])
        // Deltas of other generations are not ours to show.
        #expect(machine.handle(.messageReceived(Self.delta("g9", seq: 1, "x"))).isEmpty)
        let done = machine.handle(.messageReceived(Self.done(seq: 2, completion: 2)))
        #expect(done == [.print("\n"), .printLine("[stop · 2 tokens]", .status), .prompt])
        #expect(machine.conversationID == "c1")

        let next = Self.sent(machine.handle(.lineEntered("and more")))
        try #require(next.count == 1)
        #expect(next[0]["conversation_id"] as? String == "c1")
        #expect(next[0]["request_id"] as? String == "r2")
    }

    @Test func interruptDuringAnswerCancelsThatGeneration() throws {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        _ = machine.handle(.messageReceived(Self.started("gen_42")))
        _ = machine.handle(.messageReceived(Self.delta("gen_42", seq: 1, "One")))
        let actions = machine.handle(.interrupt)
        let sent = Self.sent(actions)
        try #require(sent.count == 1)
        #expect(sent[0]["type"] as? String == "generation.cancel")
        #expect(sent[0]["generation_id"] as? String == "gen_42")
        #expect(!actions.contains { if case .quit = $0 { true } else { false } })

        let done = machine.handle(.messageReceived(Self.done("gen_42", seq: 1, reason: "cancelled", completion: 1)))
        #expect(done == [.print("\n"), .printLine("[cancelled · 1 token]", .status), .prompt])
    }

    @Test func interruptBeforeStartCancelsOnceTheIdIsKnown() throws {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        #expect(Self.sent(machine.handle(.interrupt)).isEmpty)
        let sent = Self.sent(machine.handle(.messageReceived(Self.started("g7"))))
        try #require(sent.count == 1)
        #expect(sent[0]["generation_id"] as? String == "g7")
    }

    @Test func secondInterruptAbandonsTheAnswer() {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        _ = machine.handle(.messageReceived(Self.started()))
        _ = machine.handle(.interrupt)
        let actions = machine.handle(.interrupt)
        #expect(actions == [.printLine("[abandoned]", .status), .prompt])
        #expect(machine.handle(.messageReceived(Self.delta(seq: 1, "late"))).isEmpty)
    }

    @Test func interruptAtPromptQuits() {
        var machine = Self.connected()
        #expect(machine.handle(.interrupt) == [.print("\n"), .quit(exitCode: 0)])
        // Nothing happens after quitting.
        #expect(machine.handle(.lineEntered("hi")).isEmpty)
    }

    @Test func endOfInputAtPromptQuits() {
        var machine = Self.connected()
        #expect(machine.handle(.endOfInput) == [.print("\n"), .quit(exitCode: 0)])
    }

    @Test func endOfInputDuringAnswerQuitsAfterIt() {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        _ = machine.handle(.messageReceived(Self.started()))
        #expect(machine.handle(.endOfInput).isEmpty)
        let done = machine.handle(.messageReceived(Self.done(seq: 0, completion: 0)))
        #expect(done == [.printLine("[stop · 0 tokens]", .status), .quit(exitCode: 0)])
    }

    @Test func newForgetsTheConversation() throws {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        _ = machine.handle(.messageReceived(Self.started()))
        _ = machine.handle(.messageReceived(Self.done(seq: 0, completion: 0)))
        #expect(machine.conversationID == "c1")
        #expect(machine.handle(.lineEntered("/new")) == [.printLine("(new conversation)", .status), .prompt])
        #expect(machine.conversationID == nil)
        let sent = Self.sent(machine.handle(.lineEntered("fresh start")))
        try #require(sent.count == 1)
        #expect(sent[0]["conversation_id"] == nil)
    }

    @Test func quitHelpAndUnknownCommands() {
        var machine = Self.connected()
        #expect(Self.lines(machine.handle(.lineEntered("/help"))) == Machine.helpText)
        #expect(machine.handle(.lineEntered("/nope")) == [.printLine("unknown command /nope (try /help)", .error), .prompt])
        #expect(machine.handle(.lineEntered("   ")) == [.prompt])
        #expect(machine.handle(.lineEntered("/quit")) == [.quit(exitCode: 0)])
    }

    @Test func errorFrameIsShownAndEndsTheRequest() throws {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        let error = #"{"type":"error","code":"overloaded","message":"at most 4 generations","request_id":"r1","retry_after_ms":1000}"#
        #expect(machine.handle(.messageReceived(error)) == [.printLine("error: overloaded: at most 4 generations", .error), .prompt])
        // Back at the prompt: the next line is sent.
        #expect(Self.sent(machine.handle(.lineEntered("again"))).count == 1)
    }

    @Test func notFoundConversationStartsANewOne() {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        _ = machine.handle(.messageReceived(Self.started()))
        _ = machine.handle(.messageReceived(Self.done(seq: 0, completion: 0)))
        _ = machine.handle(.lineEntered("more"))
        let error = #"{"type":"error","code":"not_found","message":"unknown conversation c1","request_id":"r2"}"#
        let actions = machine.handle(.messageReceived(error))
        #expect(actions == [
            .printLine("error: not_found: unknown conversation c1", .error), .printLine("(new conversation)", .status), .prompt,
        ])
        #expect(machine.conversationID == nil)
    }

    @Test func doneWithErrorShowsIt() {
        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        _ = machine.handle(.messageReceived(Self.started()))
        let done = #"{"type":"generation.done","generation_id":"g1","seq":0,"finish_reason":"error","usage":{"prompt_tokens":1,"completion_tokens":0,"total_tokens":1,"usage_source":"gateway"},"error":{"code":"upstream_timeout","message":"no answer in 30s"}}"#
        #expect(machine.handle(.messageReceived(done)) == [
            .printLine("[error · 0 tokens]", .status), .printLine("error: upstream_timeout: no answer in 30s", .error), .prompt,
        ])
    }

    @Test func unrelatedErrorAtPromptKeepsThePrompt() {
        var machine = Self.connected()
        let error = #"{"type":"error","code":"not_found","message":"unknown generation g0","generation_id":"g0"}"#
        #expect(machine.handle(.messageReceived(error)) == [
            .print("\n"), .printLine("error: not_found: unknown generation g0", .error), .prompt,
        ])
    }

    @Test func reconnectBacksOffAndResets() {
        #expect((0..<8).map { Machine.reconnectDelay(attempt: $0) } == [1, 2, 4, 8, 16, 30, 30, 30].map { .seconds($0) })

        var machine = Self.connected()
        _ = machine.handle(.lineEntered("hi"))
        _ = machine.handle(.messageReceived(Self.started()))
        _ = machine.handle(.messageReceived(Self.delta(seq: 1, "Partial")))
        let lost = machine.handle(.connectionLost)
        #expect(lost == [
            .print("\n"), .printLine("[interrupted · 1 token]", .status),
            .printLine("connection lost; reconnecting in 1s…", .error), .reconnect(after: .seconds(1)), .prompt,
        ])
        var delays: [Duration] = []
        for _ in 0..<6 {
            for case .reconnect(let delay) in machine.handle(.connectionFailed(reason: "connection refused")) { delays.append(delay) }
        }
        #expect(delays == [2, 4, 8, 16, 30, 30].map { .seconds($0) })

        let ready = machine.handle(.messageReceived(Self.ready))
        #expect(Self.lines(ready) == ["reconnected (new conversation)"])
        #expect(machine.conversationID == nil)
        #expect(machine.handle(.connectionLost).contains(.reconnect(after: .seconds(1))))
    }

    @Test func linesWaitForReconnect() throws {
        var machine = Self.connected()
        _ = machine.handle(.connectionLost)
        let typed = machine.handle(.lineEntered("queued"))
        #expect(Self.sent(typed).isEmpty)
        #expect(Self.lines(typed) == ["(not connected; will send after reconnecting)"])
        let sent = Self.sent(machine.handle(.messageReceived(Self.ready)))
        try #require(sent.count == 1)
        #expect(sent[0]["content"] as? String == "queued")
    }

    @Test func firstConnectionFailureQuits() {
        var machine = Machine(configuration: .init(interactive: true, serverURL: "ws://nowhere/v1/ws"))
        #expect(machine.handle(.connectionFailed(reason: "connection refused")) == [
            .printLine("error: cannot connect to ws://nowhere/v1/ws: connection refused", .error), .quit(exitCode: 1),
        ])
    }

    @Test func scriptedInputRunsInOrderWithoutPrompts() throws {
        var machine = Machine(configuration: .init(interactive: false, serverURL: "ws://test/v1/ws"))
        // Piped stdin can be read completely before the server is even ready.
        _ = machine.handle(.lineEntered("first"))
        _ = machine.handle(.lineEntered("second"))
        _ = machine.handle(.endOfInput)
        let ready = machine.handle(.messageReceived(Self.ready))
        #expect(!ready.contains(.prompt))
        #expect(Self.sent(ready).map { $0["content"] as? String } == ["first"])
        _ = machine.handle(.messageReceived(Self.started()))
        _ = machine.handle(.messageReceived(Self.delta(seq: 1, "A\\n")))  // Ends with a newline already.
        let firstDone = machine.handle(.messageReceived(Self.done(seq: 1, completion: 1)))
        #expect(firstDone.first == .printLine("[stop · 1 token]", .status))
        #expect(Self.sent(firstDone).map { $0["content"] as? String } == ["second"])
        _ = machine.handle(.messageReceived(Self.started("g2", request: "r2")))
        let secondDone = machine.handle(.messageReceived(Self.done("g2", seq: 0, completion: 0)))
        #expect(secondDone == [.printLine("[stop · 0 tokens]", .status), .quit(exitCode: 0)])
    }

    @Test func unreadableFramesAreReported() {
        var machine = Self.connected()
        #expect(Self.lines(machine.handle(.messageReceived("not json"))) == ["error: unreadable message from server"])
        #expect(machine.handle(.messageReceived(#"{"type":"future.thing"}"#)).isEmpty)
    }
}

@Suite struct WebSocketURLTests {
    @Test func parsesSchemesPortsAndTargets() throws {
        let plain = try #require(WebSocketURL("ws://127.0.0.1:8080/v1/ws"))
        #expect(!plain.secure && plain.host == "127.0.0.1" && plain.port == 8080 && plain.target == "/v1/ws")
        #expect(plain.hostHeader == "127.0.0.1:8080" && plain.hostIsIPAddress)

        let secure = try #require(WebSocketURL("wss://chat.example.com/v1/ws?token=a%20b"))
        #expect(secure.secure && secure.port == 443 && secure.target == "/v1/ws?token=a%20b")
        #expect(secure.hostHeader == "chat.example.com" && !secure.hostIsIPAddress)

        let bare = try #require(WebSocketURL("ws://[::1]:9000"))
        #expect(bare.host == "::1" && bare.target == "/" && bare.hostHeader == "[::1]:9000")

        #expect(WebSocketURL("http://example.com/") == nil)
        #expect(WebSocketURL("not a url") == nil)
    }
}
