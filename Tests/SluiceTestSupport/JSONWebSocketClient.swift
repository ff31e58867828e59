import Foundation
import NIOCore

/// A `sluice.v1` client for integration tests on top of `RawClient`: JSON objects in and out as
/// loosely typed `[String: Any]` (JSONSerialization), Pings answered automatically, and a Close
/// from the server (or the connection ending) surfaced as `JSONWebSocketClient.Closed`.
struct JSONWebSocketClient: Sendable {
    static let defaultTimeout: Duration = .seconds(5)

    /// The server closed the WebSocket (`code` from its Close frame; nil when it sent no code or
    /// the TCP connection ended without a Close frame, as after a crash — then `sawCloseFrame` is false).
    struct Closed: Error, CustomStringConvertible {
        var code: UInt16?
        var reason: String
        var sawCloseFrame: Bool

        var description: String {
            sawCloseFrame
                ? "server sent Close \(code.map(String.init) ?? "without code") \(reason)"
                : "connection ended without a Close frame"
        }
    }

    struct UnexpectedMessage: Error, CustomStringConvertible {
        var description: String
    }

    let raw: RawClient

    /// Connects to 127.0.0.1:`port`, upgrades `/v1/ws` + `query` (e.g. "?user=alice") offering
    /// `sluice.v1`, and checks for 101. Extra `headers` go into the upgrade request.
    static func connect(
        port: Int,
        group: any EventLoopGroup,
        query: String = "",
        headers: [(String, String)] = []
    ) async throws -> JSONWebSocketClient {
        let raw = try await RawClient.connect(port: port, group: group)
        do {
            let (response, _) = try await raw.handshake(
                path: "/v1/ws" + query, extraHeaders: [("Sec-WebSocket-Protocol", "sluice.v1")] + headers)
            guard response.status == 101 else {
                throw UnexpectedMessage(description: "upgrade answered \(response.status): \(response.body)")
            }
            return JSONWebSocketClient(raw: raw)
        } catch {
            await raw.close()
            throw error
        }
    }

    // MARK: Sending

    func send(_ object: [String: Any]) async throws {
        let data = try JSONSerialization.data(withJSONObject: object)
        try await self.send(text: String(decoding: data, as: UTF8.self))
    }

    /// One text frame (plain text is a `chat.send` in sluice.v1).
    func send(text: String) async throws {
        try await self.raw.send(TestFrames.text(text))
    }

    // MARK: Receiving

    /// The next text frame as a JSON object. Pings are answered and skipped, Pongs skipped; a Close
    /// is answered and thrown as `Closed`, as is the connection ending.
    func next(timeout: Duration = JSONWebSocketClient.defaultTimeout) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let frame: TestFrames.ServerFrame
            do {
                frame = try await self.raw.nextFrame(timeout: max(deadline - ContinuousClock.now, .zero))
            } catch {
                if self.raw.isClosed { throw Closed(code: nil, reason: "", sawCloseFrame: false) }
                throw error
            }
            switch frame.opcode {
            case 0x1:
                guard let object = try JSONSerialization.jsonObject(with: Data(frame.payload)) as? [String: Any] else {
                    throw UnexpectedMessage(description: "text frame is not a JSON object: \(frame.text)")
                }
                return object
            case 0x8:
                // Echo the Close so the server need not wait out its close timeout.
                try? await self.raw.send(TestFrames.close(code: frame.closeCode))
                let reason = frame.payload.count > 2 ? String(decoding: frame.payload.dropFirst(2), as: UTF8.self) : ""
                throw Closed(code: frame.closeCode, reason: reason, sawCloseFrame: true)
            case 0x9:
                try? await self.raw.send(TestFrames.client(0xA, frame.payload))
            case 0xA:
                continue
            default:
                throw UnexpectedMessage(description: "unexpected frame opcode \(frame.opcode)")
            }
        }
    }

    /// Reads messages until one whose `type` is `type` and returns it; the others are appended to
    /// `collected`. `timeout` bounds the whole wait.
    func until(
        type: String,
        collecting collected: inout [[String: Any]],
        timeout: Duration = JSONWebSocketClient.defaultTimeout
    ) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let message = try await self.next(timeout: max(deadline - ContinuousClock.now, .zero))
            if message["type"] as? String == type { return message }
            collected.append(message)
        }
    }

    /// `until(type:collecting:)` dropping the messages before.
    func until(type: String, timeout: Duration = JSONWebSocketClient.defaultTimeout) async throws -> [String: Any] {
        var skipped: [[String: Any]] = []
        return try await self.until(type: type, collecting: &skipped, timeout: timeout)
    }

    /// Reads (and drops) messages until the server closes; returns that `Closed`
    /// (`code` 1012 for a drain, `sawCloseFrame` false for a crash). Throws on timeout.
    func waitForClose(timeout: Duration = JSONWebSocketClient.defaultTimeout) async throws -> Closed {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                _ = try await self.next(timeout: max(deadline - ContinuousClock.now, .zero))
            } catch let closed as Closed {
                return closed
            }
        }
    }

    /// Sends Close (1000 by default) and closes TCP from our side.
    func close(code: UInt16? = 1000) async {
        if !self.raw.isClosed { try? await self.raw.send(TestFrames.close(code: code)) }
        await self.raw.close()
    }
}
