import Foundation
import NIOCore
@testable import SluiceTestSupport

/// The catalogue's upstreams. `steady` answers every request briefly and correctly. `hostile`
/// is the second replica of the `chat` pool (it fails every plain request with a 500, so the
/// pool retries on `steady`) and, as the `wild` upstream, does what a request's marker asks:
/// absurd usage numbers, an endless stream, malformed SSE, a line past every limit, silence,
/// garbage instead of HTTP, hostile tool calls, invalid UTF-8.
enum HostileUpstreams {
    static func event(_ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object)) ?? Data()
        return FakeUpstream.event(String(decoding: data, as: UTF8.self))
    }

    static let stop = Self.event(["choices": [["index": 0, "delta": [:], "finish_reason": "stop"]],
                                  "usage": ["prompt_tokens": 3, "completion_tokens": 2]])

    /// The last user message's text (content strings or text parts).
    static func lastUserText(_ request: FakeUpstream.Request) -> String {
        let messages = request.json?["messages"] as? [[String: Any]] ?? []
        guard let last = messages.last(where: { $0["role"] as? String == "user" }) else { return "" }
        if let text = last["content"] as? String { return text }
        let parts = last["content"] as? [[String: Any]] ?? []
        return parts.compactMap { $0["text"] as? String }.joined()
    }

    static func steady(_ request: FakeUpstream.Request) -> [FakeUpstream.Step] {
        [
            .write(FakeUpstream.head()), .write(FakeUpstream.delta("steady ")), .write(FakeUpstream.delta("answer")),
            .write(Self.stop), .write(FakeUpstream.event("[DONE]")), .close,
        ]
    }

    static func toolCall(_ index: Int, id: String, name: String, arguments: String) -> String {
        Self.event(["choices": [["index": 0, "delta": ["tool_calls": [
            ["index": index, "id": id, "type": "function", "function": ["name": name, "arguments": arguments]],
        ]], "finish_reason": NSNull()]]])
    }

    static func hostile(_ request: FakeUpstream.Request) -> [FakeUpstream.Step] {
        let text = Self.lastUserText(request)
        let head = FakeUpstream.head()
        let done = FakeUpstream.event("[DONE]")
        switch text {
        case let marker where marker.hasPrefix("HOSTILE:usage"):
            // Counts no int holds, negative and fractional ones, strings.
            return [
                .write(head), .write(FakeUpstream.delta("ok")),
                .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1e308,"completion_tokens":-9223372036854775808,"total_tokens":"NaN"}}"#)),
                .write(done), .close,
            ]
        case let marker where marker.hasPrefix("HOSTILE:forever-kib"):
            // Deltas of 1 KiB without end (cut by max_tokens).
            return [.write(head), .forever(FakeUpstream.delta(String(repeating: "k", count: 1024)))]
        case let marker where marker.hasPrefix("HOSTILE:forever-big"):
            // Deltas of 16 KiB without end.
            return [.write(head), .forever(FakeUpstream.delta(String(repeating: "y", count: 16 * 1024)))]
        case let marker where marker.hasPrefix("HOSTILE:forever"):
            // Deltas without end, whatever max_tokens said.
            return [.write(head), .forever(FakeUpstream.delta("x"))]
        case let marker where marker.hasPrefix("HOSTILE:malformed"):
            return [
                .write(head), .write("data: {not json\n\n"), .write(#"data: {"choices":7}"# + "\n\n"),
                .write("event: surprise\ndata: [1,2,3]\n\n"), .write("data: \(String(repeating: "{", count: 5000))\n\n"),
                .write(FakeUpstream.delta("still")), .write(Self.stop), .write(done), .close,
            ]
        case let marker where marker.hasPrefix("HOSTILE:hugeline"):
            // One line of 2 MiB, no end of line: past the 1 MiB event bound.
            return [.write(head), .write("data: "), .bytes(Array(repeating: UInt8(ascii: "a"), count: 2 << 20)), .hang]
        case let marker where marker.hasPrefix("HOSTILE:silent"):
            // Accepts, then says nothing (first-token timeout).
            return [.write(head), .hang]
        case let marker where marker.hasPrefix("HOSTILE:garbage"):
            return [.bytes([0x00, 0xFF, 0xFE, 0x13, 0x37] + Array(repeating: 0x7F, count: 64)), .close]
        case let marker where marker.hasPrefix("HOSTILE:badlength"):
            return [.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 99999999999999999999999\r\n\r\n"), .hang]
        case let marker where marker.hasPrefix("HOSTILE:error-status"):
            // A 4xx with a 1 MiB error body.
            return [.write("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"),
                    .bytes(Array(#"{"error":{"message":""#.utf8) + Array(repeating: UInt8(ascii: "e"), count: 1 << 20)), .close]
        case let marker where marker.hasPrefix("HOSTILE:unicode"):
            // Lone surrogates in escapes and raw invalid UTF-8 in the text.
            var steps: [FakeUpstream.Step] = [.write(head), .write(FakeUpstream.event(#"{"choices":[{"index":0,"delta":{"content":"a\ud800b\udfffc"},"finish_reason":null}]}"#))]
            steps.append(.bytes(Array(#"data: {"choices":[{"index":0,"delta":{"content":"d"#.utf8) + [0xC3, 0x28, 0xED, 0xA0, 0x80, 0xFF] + Array(#"e"},"finish_reason":null}]}"#.utf8) + [0x0A, 0x0A]))
            return steps + [.write(Self.stop), .write(done), .close]
        case let marker where marker.hasPrefix("HOSTILE:tools"):
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            let results = messages.filter { $0["role"] as? String == "tool" }
            if !results.isEmpty {
                return [.write(head), .write(FakeUpstream.delta("tools done: \(results.count)")), .write(Self.stop), .write(done), .close]
            }
            let nested = String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000)
            return [
                .write(head),
                .write(Self.toolCall(0, id: "t1", name: "calculator", arguments: #"{"expression":"9^9^9^9^9"}"#)),
                .write(Self.toolCall(1, id: "t2", name: "calculator", arguments: #"{"expression":"\#(nested)"}"#)),
                .write(Self.toolCall(2, id: "t3", name: "http_get", arguments: #"{"url":"http://169.254.169.254/latest/meta-data/"}"#)),
                .write(Self.toolCall(3, id: "t4", name: "rm_rf", arguments: #"{"path":"/"}"#)),
                .write(Self.toolCall(4, id: "t5", name: "calculator", arguments: "not json at all")),
                .write(Self.event(["choices": [["index": 0, "delta": [:], "finish_reason": "tool_calls"]]])),
                .write(done), .close,
            ]
        default:
            // As the chat pool's second replica: a server error before the first token.
            return [.write("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"error\":{\"message\":\"replica on fire\"}}"), .close]
        }
    }
}
