import Foundation
import NIOCore
import SluiceProtocol
import Testing

@testable import Inference

/// Numbers an upstream reports are outside input too: token counts are read exactly, clamped,
/// or ignored; tool-call indexes are keys, never sizes.
@Suite struct UpstreamNumbersTests {
    static func usage(_ prompt: String, _ completion: String) -> (promptTokens: Int, completionTokens: Int)? {
        var decoder = OpenAIStreamDecoder()
        let event = #"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}],"usage":{"prompt_tokens":\#(prompt),"completion_tokens":\#(completion)}}"#
        let output = decoder.decode(SSEEvent(data: event))
        #expect(output.end == nil && output.text == "x")
        return output.usage
    }

    @Test func usageCountsAreClampedOrIgnored() {
        #expect(Self.usage("9", "2").map { [$0.promptTokens, $0.completionTokens] } == [9, 2])
        // An upstream echoing a client's 2^63-1, or reporting 10^30: clamped, so sums cannot overflow.
        #expect(Self.usage("9223372036854775807", "1e30").map { [$0.promptTokens, $0.completionTokens] }
            == [Usage.maximumTokens, Usage.maximumTokens])
        #expect(Self.usage("18446744073709551615", "1").map(\.promptTokens) == Usage.maximumTokens)
        // Not counts at all: no usage (the gateway counts instead).
        for (prompt, completion) in [("-1", "2"), ("1.5", "2"), ("true", "2"), (#""9""#, "2"), ("9", "null"), ("-1e30", "1")] {
            #expect(Self.usage(prompt, completion) == nil, "\(prompt), \(completion)")
        }
    }

    /// The pieces are kept in a dictionary bounded by `maximumToolCalls`: an index of 10^9 is
    /// one entry, not an array of that size; an index that is not an integer falls back to the
    /// piece's position.
    @Test func toolCallIndexesAreKeysNotSizes() {
        var decoder = OpenAIStreamDecoder()
        for index in ["1000000000", "9223372036854775807", "1e30", "-5", "true", #""0""#] {
            let piece = #"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":\#(index),"id":"id\#(index.count)","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#
            let output = decoder.decode(SSEEvent(data: piece))
            #expect(output.end == nil, "\(index)")
        }
        let done = decoder.decode(SSEEvent(data: "[DONE]"))
        let calls = done.toolCalls ?? []
        // 10^9, 2^63-1 and -5 are keys of their own; 1e30, true and "0" fall back to position 0.
        #expect(calls.count == 4, "\(calls)")
        #expect(calls.map(\.arguments).allSatisfy { $0.hasPrefix("{}") })
    }
}
