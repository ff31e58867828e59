import Foundation
import NIOCore
import SluiceProtocol
import Testing

/// `OpenAIChatRequestDecoder`: the `POST /v1/chat/completions` body, rule by rule.
@Suite struct OpenAIChatRequestDecoderTests {
    private func decode(_ body: String, limits: RequestLimits = RequestLimits()) -> Result<OpenAIChatRequest, OpenAIRequestProblem> {
        OpenAIChatRequestDecoder.decode(ByteBuffer(string: body), limits: limits)
    }

    private func problem(_ body: String, limits: RequestLimits = RequestLimits()) -> OpenAIRequestProblem? {
        guard case .failure(let problem) = self.decode(body, limits: limits) else { return nil }
        return problem
    }

    private static let hello = #""messages":[{"role":"user","content":"hi"}]"#

    @Test func everyAcceptedField() throws {
        let body = #"""
            {"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":64,"temperature":0.5,"top_p":0.9,"n":1,
             "messages":[{"role":"developer","content":"be brief"},{"role":"system","content":"s"},
                         {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]},
                         {"role":"assistant","content":null},{"role":"tool","content":"42"}],
             "unknown":{"ignored":true}}
            """#
        let request = try self.decode(body).get()
        #expect(request == OpenAIChatRequest(
            model: "m",
            messages: [.init(role: .system, content: "be brief"), .init(role: .system, content: "s"), .init(role: .user, content: "ab"),
                       .init(role: .assistant, content: ""), .init(role: .tool, content: "42")],
            stream: true, includeUsage: true, maxTokens: 64, temperature: 0.5, topP: 0.9))
    }

    @Test func defaults() throws {
        #expect(try self.decode("{\(Self.hello)}").get() == OpenAIChatRequest(messages: [.init(role: .user, content: "hi")]))
        let nulls = try self.decode(#"{\#(Self.hello),"model":null,"stream":null,"max_tokens":null,"temperature":null,"top_p":null,"n":null,"stream_options":null}"#).get()
        #expect(nulls == OpenAIChatRequest(messages: [.init(role: .user, content: "hi")]))
    }

    @Test(arguments: ["max_tokens", "max_completion_tokens"])
    func tokenLimitsAreRangeChecked(name: String) throws {
        for value in ["4611686018427387904", "9223372036854775807", "9223372036854775808", "1e30", "32769", "0", "-1"] {
            let refused = try #require(self.problem(#"{\#(Self.hello),"\#(name)":\#(value)}"#), "accepted \(name)=\(value)")
            #expect(refused.param == name && !refused.tooLarge, "\(name)=\(value)")
            #expect(refused.message.contains("from 1 to 32768"), "\(refused.message)")
        }
        for value in ["true", #""64""#, "1.5"] {
            #expect(self.problem(#"{\#(Self.hello),"\#(name)":\#(value)}"#)?.param == name, "accepted \(name)=\(value)")
        }
        #expect(try self.decode(#"{\#(Self.hello),"\#(name)":32768}"#).get().maxTokens == 32768)
        #expect(self.problem(#"{\#(Self.hello),"\#(name)":4097}"#, limits: RequestLimits(maxTokensLimit: 4096))?.message.contains("4096") == true)
    }

    @Test func maxCompletionTokensWinsButBothAreChecked() throws {
        #expect(try self.decode(#"{\#(Self.hello),"max_tokens":10,"max_completion_tokens":20}"#).get().maxTokens == 20)
        #expect(self.problem(#"{\#(Self.hello),"max_tokens":9223372036854775807,"max_completion_tokens":20}"#)?.param == "max_tokens")
    }

    @Test func onlyOneChoiceIsSupported() throws {
        #expect(try self.decode(#"{\#(Self.hello),"n":1}"#).get().messages.count == 1)
        for value in ["2", "0", "-1", "1e30", "true", #""1""#, "1.5"] {
            let refused = self.problem(#"{\#(Self.hello),"n":\#(value)}"#)
            #expect(refused?.param == "n" && refused?.message.contains("n=1") == true, "accepted n=\(value)")
        }
    }

    @Test func samplingParametersAreFiniteAndInRange() {
        for (name, value) in [("temperature", "2.5"), ("temperature", "-1"), ("temperature", "1e308"), ("temperature", "true"),
                              ("top_p", "1.01"), ("top_p", "-0.5"), ("top_p", #""0.5""#), ("top_p", "false")] {
            #expect(self.problem(#"{\#(Self.hello),"\#(name)":\#(value)}"#)?.param == name, "accepted \(name)=\(value)")
        }
    }

    @Test func streamAndStreamOptionsMustHaveTheirTypes() {
        for (extra, param) in [(#""stream":"yes""#, "stream"), (#""stream":1"#, "stream"), (#""stream_options":"x""#, "stream_options"),
                               (#""stream_options":{"include_usage":"yes"}"#, "stream_options"), (#""model":5"#, "model")] {
            #expect(self.problem(#"{\#(Self.hello),\#(extra)}"#)?.param == param, "accepted \(extra)")
        }
    }

    @Test func messagesMustBeWellFormed() throws {
        for body in [#"{}"#, #"{"messages":[]}"#, #"{"messages":{}}"#, #"{"messages":[5]}"#, #"{"messages":[{"content":"x"}]}"#,
                     #"{"messages":[{"role":7,"content":"x"}]}"#, #"{"messages":[{"role":"user","content":5}]}"#,
                     #"{"messages":[{"role":"user"}]}"#, #"{"messages":[{"role":"user","content":[5]}]}"#,
                     #"{"messages":[{"role":"user","content":[{"type":"text","text":7}]}]}"#] {
            let refused = try #require(self.problem(body), "accepted \(body)")
            #expect(refused.param == "messages" && !refused.tooLarge, "\(body): \(refused.message)")
        }
        // The client's text is not echoed in the error.
        let role = try #require(self.problem(#"{"messages":[{"role":"<script>evil</script>","content":"x"}]}"#))
        #expect(!role.message.contains("evil"))
        for body in ["[]", "5", "not json", "", "{\"messages\":"] {
            #expect(self.problem(body)?.message == "the body must be a JSON object", "\(body)")
        }
    }

    @Test func sizesAreBounded() throws {
        let limits = RequestLimits(maxContentBytes: 100)
        #expect(limits.maxMessagesBytes == 800)
        let many = (0..<9).map { _ in #"{"role":"user","content":"\#(String(repeating: "x", count: 100))"}"# }.joined(separator: ",")
        let tooMuchText = try #require(self.problem(#"{"messages":[\#(many)]}"#, limits: limits))
        #expect(tooMuchText.tooLarge && tooMuchText.param == "messages")
        let countOver = (0...RequestLimits.maxMessages).map { _ in #"{"role":"user","content":""}"# }.joined(separator: ",")
        #expect(self.problem(#"{"messages":[\#(countOver)]}"#)?.tooLarge == true)
        let parts = (0...RequestLimits.maxContentParts).map { _ in #"{"type":"text","text":""}"# }.joined(separator: ",")
        #expect(self.problem(#"{"messages":[{"role":"user","content":[\#(parts)]}]}"#)?.param == "messages")
        // The body's bytes are checked before it is parsed: broken JSON past the budget is too large.
        let broken = "{" + String(repeating: " ", count: limits.maxOpenAIBodyBytes)
        #expect(self.problem(broken, limits: limits)?.tooLarge == true)
    }

    // MARK: Client tools

    @Test func toolsToolChoiceAndEarlierToolTurns() throws {
        let body = #"""
            {"messages":[{"role":"user","content":"weather?"},
                         {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},
                         {"role":"tool","tool_call_id":"call_1","content":"-3 C"}],
             "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather now",
                       "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
                      {"type":"function","function":{"name":"no-schema_2"}}],
             "tool_choice":{"type":"function","function":{"name":"get_weather"}}}
            """#
        let request = try self.decode(body).get()
        #expect(request.messages == [
            .init(role: .user, content: "weather?"),
            .init(role: .assistant, content: "", toolCalls: [.init(id: "call_1", name: "get_weather", arguments: #"{"city":"Oslo"}"#)]),
            .init(role: .tool, content: "-3 C", toolCallID: "call_1"),
        ])
        // The schema is kept as compact JSON with sorted keys: valid JSON whatever the client wrote.
        #expect(request.tools == [
            .init(name: "get_weather", description: "Weather now",
                  parameters: #"{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"}"#),
            .init(name: "no-schema_2"),
        ])
        #expect(request.toolChoice == .function("get_weather"))
        for (text, choice) in [("none", OpenAIChatRequest.ToolChoice.none), ("auto", .auto), ("required", .required)] {
            let tools = #""tools":[{"type":"function","function":{"name":"f"}}]"#
            #expect(try self.decode(#"{\#(Self.hello),\#(tools),"tool_choice":"\#(text)"}"#).get().toolChoice == choice)
        }
        // tool_choice none without tools is harmless; null fields are absent.
        #expect(try self.decode(#"{\#(Self.hello),"tool_choice":"none","tools":null}"#).get().toolChoice == OpenAIChatRequest.ToolChoice.none)
    }

    @Test func hostileTools() {
        let tool = { (name: String) in #"{"type":"function","function":{"name":"\#(name)"}}"# }
        let refused: [(String, String)] = [
            (#""tools":{}"#, "tools"),
            (#""tools":[{"type":"retrieval"}]"#, "tools"),
            (#""tools":[{"type":"function"}]"#, "tools"),
            (#""tools":[\#(tool(""))]"#, "tools"),
            (#""tools":[\#(tool("has space"))]"#, "tools"),
            (#""tools":[\#(tool("ünïcode"))]"#, "tools"),
            (#""tools":[\#(tool(String(repeating: "a", count: 65)))]"#, "tools"),
            (#""tools":[\#(tool("f")),\#(tool("f"))]"#, "tools"),
            (#""tools":[\#(Array(repeating: 0, count: 129).enumerated().map { tool("f\($0.offset)") }.joined(separator: ","))]"#, "tools"),
            (#""tools":[{"type":"function","function":{"name":"f","parameters":"{}"}}]"#, "tools"),
            (#""tools":[{"type":"function","function":{"name":"f","parameters":{"x":"\#(String(repeating: "y", count: 16 * 1024))"}}}]"#, "tools"),
            (#""tools":[{"type":"function","function":{"name":"f","description":7}}]"#, "tools"),
            (#""tool_choice":"auto""#, "tool_choice"),
            (#""tool_choice":"sometimes","tools":[\#(tool("f"))]"#, "tool_choice"),
            (#""tool_choice":{"type":"function","function":{"name":"g"}},"tools":[\#(tool("f"))]"#, "tool_choice"),
            (#""tool_choice":7,"tools":[\#(tool("f"))]"#, "tool_choice"),
        ]
        for (fields, param) in refused {
            let problem = self.problem(#"{\#(Self.hello),\#(fields)}"#)
            #expect(problem?.param == param, "\(fields.prefix(120))")
            #expect(problem?.tooLarge == false)
            // The client's names are not echoed.
            #expect(problem?.message.contains("has space") == false)
        }
    }

    @Test func hostileToolTurns() {
        let call = { (id: String) in #"{"id":"\#(id)","type":"function","function":{"name":"f","arguments":"{}"}}"# }
        let refused = [
            // tool_calls only on an assistant message, tool_call_id only on a tool message.
            #"{"role":"user","content":"x","tool_calls":[\#(call("c"))]}"#,
            #"{"role":"user","content":"x","tool_call_id":"c"}"#,
            #"{"role":"assistant","content":"x","tool_calls":{}}"#,
            #"{"role":"assistant","content":"x","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":{}}}]}"#,
            #"{"role":"assistant","content":"x","tool_calls":[\#(call(""))]}"#,
            #"{"role":"assistant","content":"x","tool_calls":[\#(call(String(repeating: "i", count: 257)))]}"#,
            #"{"role":"assistant","content":"x","tool_calls":[\#(Array(repeating: call("c"), count: 17).joined(separator: ","))]}"#,
            #"{"role":"tool","content":"x","tool_call_id":5}"#,
        ]
        for message in refused {
            #expect(self.problem(#"{"messages":[\#(message)]}"#)?.param == "messages", "\(message.prefix(120))")
        }
        // A call's arguments count with the messages' text.
        let limits = RequestLimits(maxContentBytes: 64)
        let big = #"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"\#(String(repeating: "a", count: limits.maxMessagesBytes))"}}]}"#
        #expect(self.problem(#"{"messages":[\#(big)]}"#, limits: limits)?.tooLarge == true)
    }
}
