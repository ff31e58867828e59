import Foundation
import NIOCore
@testable import SluiceTestSupport

/// RFC 6455 violations, oversized and compressed frames, and hostile upgrade requests.
enum WebSocketCases {
    static let maxMessageSize = CatalogueConfiguration.maxMessageSize

    static func frame(_ name: String, _ action: String, _ bytes: @escaping @Sendable () -> [UInt8], _ expected: Expected, deflate: Bool = false) -> HostileCase {
        HostileCase(name: name, surface: .frames, action: action, expected: expected) { context in
            try await context.afterFrames(bytes(), deflate: deflate)
        }
    }

    static func closeWith(_ code: UInt16, reason: [UInt8] = []) -> [UInt8] {
        TestFrames.closeRaw([UInt8(code >> 8), UInt8(code & 0xFF)] + reason)
    }

    static var frames: [HostileCase] {
        let text = Array(#"{"type":"ping","id":"f"}"#.utf8)
        var cases: [HostileCase] = [
            frame("frames.rsv2", "a text frame with RSV2 set", { TestFrames.raw(opcode: 0x1, payload: text, rsv2: true) }, .close(1002)),
            frame("frames.rsv3", "a text frame with RSV3 set", { TestFrames.raw(opcode: 0x1, payload: text, rsv3: true) }, .close(1002)),
            frame("frames.rsv1-without-deflate", "RSV1 on a connection that agreed no extension", { TestFrames.raw(opcode: 0x1, payload: text, rsv1: true) }, .close(1002)),
            frame("frames.opcode-3", "reserved data opcode 0x3", { TestFrames.raw(opcode: 0x3, payload: text) }, .close(1002)),
            frame("frames.opcode-7", "reserved data opcode 0x7", { TestFrames.raw(opcode: 0x7, payload: [1]) }, .close(1002)),
            frame("frames.opcode-B", "reserved control opcode 0xB", { TestFrames.raw(opcode: 0xB, payload: []) }, .close(1002)),
            frame("frames.opcode-F", "reserved control opcode 0xF with RSV bits", { TestFrames.raw(opcode: 0xF, payload: [], rsv1: true, rsv2: true, rsv3: true) }, .close(1002)),
            frame("frames.unmasked", "an unmasked client text frame", { TestFrames.raw(opcode: 0x1, payload: text, mask: nil) }, .close(1002)),
            frame("frames.unmasked-close", "an unmasked Close", { TestFrames.raw(opcode: 0x8, payload: [0x03, 0xE8], mask: nil) }, .close(1002)),
            frame("frames.length-2^63", "a 64-bit length with the top bit set (2^63)", { TestFrames.raw(opcode: 0x2, declaredLength: 1 << 63) }, .close(1002)),
            frame("frames.length-2^64-1", "a 64-bit length of 2^64-1", { TestFrames.raw(opcode: 0x1, declaredLength: UInt64.max) }, .close(1002)),
            frame("frames.length-2^63-1", "a declared length of 2^63-1 bytes", { TestFrames.raw(opcode: 0x2, declaredLength: UInt64(Int64.max)) }, .close(1009)),
            frame("frames.length-over-max-frame", "a frame declaring one byte more than websocket.max_frame_size", {
                TestFrames.raw(opcode: 0x1, declaredLength: UInt64(CatalogueConfiguration.maxFrameSize + 1))
            }, .close(1009)),
            frame("frames.ping-fragmented", "a Ping without FIN (fragmented control frame)", { TestFrames.raw(opcode: 0x9, payload: [1, 2], fin: false) }, .close(1002)),
            frame("frames.close-fragmented", "a Close without FIN", { TestFrames.raw(opcode: 0x8, payload: [0x03, 0xE8], fin: false) }, .close(1002)),
            frame("frames.ping-126-bytes", "a Ping with a 126-byte payload (control frames hold at most 125)", {
                TestFrames.raw(opcode: 0x9, payload: Array(repeating: 7, count: 126))
            }, .close(1002)),
            frame("frames.continuation-without-start", "a continuation frame with no message open", { TestFrames.raw(opcode: 0x0, payload: text) }, .close(1002)),
            frame("frames.interleaved-text", "a new text frame inside a fragmented text message", {
                TestFrames.raw(opcode: 0x1, payload: Array(text.prefix(5)), fin: false) + TestFrames.raw(opcode: 0x1, payload: text)
            }, .close(1002)),
            frame("frames.interleaved-binary", "a binary frame inside a fragmented text message", {
                TestFrames.raw(opcode: 0x1, payload: Array(text.prefix(5)), fin: false) + TestFrames.raw(opcode: 0x2, payload: [1], fin: false)
            }, .close(1002)),
            frame("frames.close-one-byte", "a Close whose payload is one byte", { TestFrames.closeRaw([0x03]) }, .close(1002)),
            frame("frames.close-bad-utf8-reason", "a Close 1000 whose reason is not UTF-8", { Self.closeWith(1000, reason: [0xC3, 0x28, 0xFF]) }, .close(1007)),
            frame("frames.close-reason-lone-surrogate", "a Close reason holding an encoded surrogate (ED A0 80)", { Self.closeWith(1000, reason: [0xED, 0xA0, 0x80]) }, .close(1007)),
            frame("frames.text-invalid-utf8", "a text frame with C3 28", { TestFrames.raw(opcode: 0x1, payload: [0x7B, 0xC3, 0x28, 0x7D]) }, .close(1007)),
            frame("frames.text-surrogate", "a text frame with an encoded lone surrogate (ED A0 80)", { TestFrames.raw(opcode: 0x1, payload: [0x61, 0xED, 0xA0, 0x80]) }, .close(1007)),
            frame("frames.text-overlong", "an overlong encoding of / (C0 AF)", { TestFrames.raw(opcode: 0x1, payload: [0xC0, 0xAF]) }, .close(1007)),
            frame("frames.text-above-10FFFF", "a code point above U+10FFFF (F4 90 80 80)", { TestFrames.raw(opcode: 0x1, payload: [0xF4, 0x90, 0x80, 0x80]) }, .close(1007)),
            frame("frames.text-truncated-utf8", "a text message ending inside a UTF-8 sequence (E2 82)", { TestFrames.raw(opcode: 0x1, payload: [0x61, 0xE2, 0x82]) }, .close(1007)),
            frame("frames.text-invalid-across-fragments", "a UTF-8 sequence begun in one fragment and broken in the next", {
                TestFrames.raw(opcode: 0x1, payload: [0x61, 0xE2], fin: false) + TestFrames.raw(opcode: 0x0, payload: [0x28, 0x61])
            }, .close(1007)),
            frame("frames.oversized-message", "fragments adding up to websocket.max_message_size + 1", {
                TestFrames.fragments(0x1, Array(repeating: UInt8(ascii: "a"), count: Self.maxMessageSize + 1), size: 16 * 1024)
            }, .close(1009)),
            frame("frames.http-after-upgrade", "an HTTP request written on an upgraded connection", {
                Array("GET /health HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
            }, .close(1002)),
            frame("frames.binary", "a binary message", { TestFrames.raw(opcode: 0x2, payload: [0, 1, 2, 3]) }, .error("invalid_message")),
            frame("frames.empty-text", "an empty text message", { TestFrames.raw(opcode: 0x1, payload: []) }, .error("invalid_message")),
            frame("frames.blank-text", "a text message of spaces, tabs and newlines", { TestFrames.raw(opcode: 0x1, payload: Array(" \t\r\n \n".utf8)) }, .error("invalid_message")),
            frame("frames.json-in-one-byte-fragments", "a ping split into 1-byte fragments (2,060 frames)", {
                TestFrames.fragments(0x1, Array(#"{"type":"ping","id":"\#(String(repeating: "f", count: 2_030))"}"#.utf8), size: 1)
            }, .reply("pong")),
            frame("frames.text-at-max-message-size", "a JSON text message of exactly websocket.max_message_size bytes", {
                let padding = String(repeating: "p", count: Self.maxMessageSize - #"{"type":"ping","id":""}"#.utf8.count)
                return TestFrames.fragments(0x1, Array(#"{"type":"ping","id":"\#(padding)"}"#.utf8), size: 64 * 1024)
            }, .error("too_large")),
            frame("frames.plain-text-over-content-limit", "100 KiB of plain text (a chat.send past chat.max_content_bytes)", {
                TestFrames.fragments(0x1, Array(repeating: UInt8(ascii: "w"), count: 100 * 1024), size: 32 * 1024)
            }, .error("too_large")),
            frame("frames.close-then-data", "a Close 1000 followed by a text frame", {
                Self.closeWith(1000) + TestFrames.raw(opcode: 0x1, payload: text)
            }, .close(1000)),
        ]
        for code: UInt16 in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
            cases.append(frame("frames.close-code-\(code)", "a Close with code \(code) (not valid on the wire)", { Self.closeWith(code) }, .close(1002)))
        }
        cases += Self.customFrames + Self.deflate
        return cases
    }

    static var customFrames: [HostileCase] {
        [
            HostileCase(name: "frames.ping-flood", surface: .frames, action: "600 Pings of 125 bytes in one write",
                        expected: .verified("Pongs come back (the last Ping's payload among them) and the session still answers")) { context in
                let client = try await context.session()
                defer { Task { await client.close() } }
                var bytes: [UInt8] = []
                for index in 0..<600 {
                    var payload = Array(repeating: UInt8(ascii: "p"), count: 125)
                    payload.replaceSubrange(0..<4, with: Array(String(format: "%04d", index).utf8))
                    bytes += TestFrames.raw(opcode: 0x9, payload: payload)
                }
                try await client.send(bytes)
                let lastTag: [UInt8] = Array("0599".utf8)
                _ = try await client.waitForFrame(timeout: .seconds(10)) { $0.opcode == 0xA && Array($0.payload.prefix(4)) == lastTag }
                var observed = try await CaseContext.observeSession(client, settle: .milliseconds(200))
                if !observed.sentinelAnswered { observed.problem = "the session did not answer after the Ping flood" }
                return observed
            },
            HostileCase(name: "frames.unsolicited-pongs", surface: .frames, action: "1,000 unsolicited Pongs",
                        expected: .verified("ignored; the session still answers")) { context in
                let client = try await context.session()
                defer { Task { await client.close() } }
                var bytes: [UInt8] = []
                for _ in 0..<1_000 { bytes += TestFrames.raw(opcode: 0xA, payload: [1, 2, 3]) }
                try await client.send(bytes)
                var observed = try await CaseContext.observeSession(client, settle: .milliseconds(300))
                if !observed.sentinelAnswered || observed.closed { observed.problem = "the session did not survive unsolicited Pongs" }
                return observed
            },
            HostileCase(name: "frames.stalled-frame", surface: .frames, action: "a frame header announcing 100 bytes, 10 sent, then silence",
                        expected: .verified("the heartbeat drops the connection (no Pong can come) within interval + timeout")) { context in
                let client = try await context.session()
                defer { Task { await client.close() } }
                let started = ContinuousClock.now
                try await client.send(Array(TestFrames.raw(opcode: 0x1, payload: Array(repeating: 0x61, count: 100)).prefix(16)))
                // Not answering Pings: the raw client never replies.
                try await client.waitForClose(timeout: CatalogueConfiguration.heartbeatInterval + CatalogueConfiguration.heartbeatTimeout + .seconds(5))
                return .verified("closed after \(ContinuousClock.now - started)")
            },
        ]
    }

    static var deflate: [HostileCase] {
        [
            frame("frames.deflate-bomb", "permessage-deflate: 64 MiB of zeros in one compressed frame (~64 KiB)", {
                let compressed = ClientDeflate().compressRepeated(0x20, count: 64 << 20)
                return TestFrames.raw(opcode: 0x1, payload: compressed, rsv1: true)
            }, .close(1009), deflate: true),
            frame("frames.deflate-bomb-fragmented", "the same bomb in 4 KiB fragments", {
                let compressed = ClientDeflate().compressRepeated(0x20, count: 64 << 20)
                return TestFrames.fragments(0x1, compressed, size: 4096, rsv1: true)
            }, .close(1009), deflate: true),
            frame("frames.deflate-garbage", "RSV1 set on bytes that are not deflate data", {
                TestFrames.raw(opcode: 0x1, payload: [0xFF, 0xFF, 0xFF, 0x00, 0x13, 0x37, 0xAB], rsv1: true)
            }, .close(1007), deflate: true),
            frame("frames.deflate-rsv1-on-continuation", "RSV1 on a continuation frame", {
                TestFrames.raw(opcode: 0x1, payload: Array("{".utf8), fin: false) + TestFrames.raw(opcode: 0x0, payload: Array("}".utf8), rsv1: true)
            }, .close(1002), deflate: true),
            frame("frames.deflate-rsv1-on-ping", "RSV1 on a Ping", { TestFrames.raw(opcode: 0x9, payload: [1], rsv1: true) }, .close(1002), deflate: true),
            frame("frames.deflate-one-byte-fragments", "a compressed ping split into 1-byte fragments", {
                let compressed = ClientDeflate().compress(Array(#"{"type":"ping","id":"z"}"#.utf8))
                return TestFrames.fragments(0x1, compressed, size: 1, rsv1: true)
            }, .reply("pong"), deflate: true),
            frame("frames.deflate-invalid-utf8-inside", "valid deflate data that inflates to invalid UTF-8", {
                TestFrames.raw(opcode: 0x1, payload: ClientDeflate().compress([0x7B, 0xC0, 0xAF, 0x7D]), rsv1: true)
            }, .close(1007), deflate: true),
        ]
    }

    // MARK: Upgrades

    static func upgrade(
        _ name: String, _ action: String, path: String = "/v1/ws", _ headers: [(String, String)], _ expected: Expected,
        authenticated: Bool = true, withOrigin: Bool = true, subprotocol: Bool = true
    ) -> HostileCase {
        HostileCase(name: name, surface: .upgrade, action: action, expected: expected) { context in
            try await context.upgrade(path: path, headers: headers, authenticated: authenticated, withOrigin: withOrigin, subprotocol: subprotocol)
        }
    }

    /// A handshake written by hand (so every header is the case's to choose).
    static func rawUpgrade(_ name: String, _ action: String, _ expected: Expected, _ request: @escaping @Sendable (CaseContext) -> String) -> HostileCase {
        HostileCase(name: name, surface: .upgrade, action: action, expected: expected) { context in
            try await context.raw(request(context))
        }
    }

    static func head(_ context: CaseContext, method: String = "GET", path: String = "/v1/ws", version: String = "HTTP/1.1", key: String? = "dGhlIHNhbXBsZSBub25jZQ==",
                     versionHeader: String? = "13", connection: String = "Upgrade", upgrade: String = "websocket", extra: [(String, String)] = []) -> String {
        var text = "\(method) \(path) \(version)\r\nHost: 127.0.0.1\r\nUpgrade: \(upgrade)\r\nConnection: \(connection)\r\n"
        if let versionHeader { text += "Sec-WebSocket-Version: \(versionHeader)\r\n" }
        if let key { text += "Sec-WebSocket-Key: \(key)\r\n" }
        text += "Origin: \(CatalogueGateway.origin)\r\nAuthorization: Bearer \(context.token)\r\n"
        for (name, value) in extra { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }

    static func noDeflate(_ name: String, _ action: String, _ offer: String) -> HostileCase {
        HostileCase(name: name, surface: .upgrade, action: action, expected: .verified("101 without permessage-deflate (the offer is declined)")) { context in
            var observed = try await context.upgrade(headers: [("Sec-WebSocket-Extensions", offer)])
            if observed.status != 101 {
                observed.problem = "expected 101"
            } else if observed.note.contains("permessage-deflate") {
                observed.problem = "a hostile offer was agreed: \(observed.note)"
            }
            return observed
        }
    }

    static var upgrades: [HostileCase] {
        [
            rawUpgrade("upgrade.no-key", "no Sec-WebSocket-Key", .status(400)) { head($0, key: nil) },
            rawUpgrade("upgrade.key-not-base64", "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!", .status(400)) { head($0, key: String(repeating: "!", count: 24)) },
            rawUpgrade("upgrade.key-15-bytes", "a key of 15 bytes", .status(400)) { head($0, key: WebSocketKeys.encode(15)) },
            rawUpgrade("upgrade.key-64KiB", "a 64 KiB key", .status(400)) { head($0, key: String(repeating: "QUFB", count: 16 * 1024)) },
            rawUpgrade("upgrade.key-twice", "two Sec-WebSocket-Key headers", .status(400)) { head($0, extra: [("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA==")]) },
            rawUpgrade("upgrade.version-8", "Sec-WebSocket-Version: 8", .status(426)) { head($0, versionHeader: "8") },
            rawUpgrade("upgrade.version-list", "Sec-WebSocket-Version: 13, 8", .status(426)) { head($0, versionHeader: "13, 8") },
            rawUpgrade("upgrade.version-missing", "no Sec-WebSocket-Version", .status(400)) { head($0, versionHeader: nil) },
            rawUpgrade("upgrade.version-huge", "Sec-WebSocket-Version: 99999999999999999999999999", .status(426)) { head($0, versionHeader: "99999999999999999999999999") },
            rawUpgrade("upgrade.post", "an upgrade with POST", .status(405)) { head($0, method: "POST") },
            rawUpgrade("upgrade.http-1.0", "an upgrade over HTTP/1.0", .status(400)) { head($0, version: "HTTP/1.0") },
            rawUpgrade("upgrade.connection-keep-alive", "Upgrade: websocket but Connection: keep-alive", .status(400)) { head($0, connection: "keep-alive") },
            rawUpgrade("upgrade.h2c", "Upgrade: h2c", .status(400)) { head($0, upgrade: "h2c") },
            rawUpgrade("upgrade.plain-get", "a plain GET of the WebSocket path", .status(426)) { context in
                "GET /v1/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(context.token)\r\n\r\n"
            },
            rawUpgrade("upgrade.path-trailing-slash", "an upgrade of /v1/ws/", .status(404)) { head($0, path: "/v1/ws/") },
            rawUpgrade("upgrade.path-case", "an upgrade of /V1/WS", .status(404)) { head($0, path: "/V1/WS") },
            rawUpgrade("upgrade.path-dot-segment", "an upgrade of /v1/./ws", .status(404)) { head($0, path: "/v1/./ws") },
            rawUpgrade("upgrade.path-percent-encoded", "an upgrade of /v1/%77s", .status(404)) { head($0, path: "/v1/%77s") },
            rawUpgrade("upgrade.absolute-uri", "GET http://evil.test/v1/ws (absolute form)", .status(404)) { head($0, path: "http://evil.test/v1/ws") },
            rawUpgrade("upgrade.health-path", "upgrade headers on /health", .status(404)) { head($0, path: "/health") },
            upgrade("upgrade.query-junk", "a query of %00, %ff and empty pairs", path: "/v1/ws?%00=%ff&&&=&x", [], .status(101)),
            noDeflate("upgrade.deflate-window-bits-0", "permessage-deflate; server_max_window_bits=0", "permessage-deflate; server_max_window_bits=0"),
            noDeflate("upgrade.deflate-window-bits-huge", "client_max_window_bits=99999999999999999999999", "permessage-deflate; client_max_window_bits=99999999999999999999999"),
            noDeflate("upgrade.deflate-unknown-param", "permessage-deflate; foo=bar", "permessage-deflate; foo=bar"),
            noDeflate("upgrade.deflate-duplicate-param", "server_no_context_takeover twice", "permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            noDeflate("upgrade.deflate-quoted-junk", "server_max_window_bits=\"1a\" (a quoted non-number)", "permessage-deflate; server_max_window_bits=\"1a\""),
            rawUpgrade("upgrade.extension-with-DEL", "an extension offer holding a DEL byte (not a header character)", .status(400)) {
                head($0, extra: [("Sec-WebSocket-Extensions", "permessage-deflate; x=\u{7F}")])
            },
            HostileCase(name: "upgrade.deflate-2500-offers", surface: .upgrade, action: "2,500 extension offers in one header (~60 KiB)",
                        expected: .status(101)) { context in
                let offers = (0..<2_500).map { "x-ext-\($0); p=\($0)" }.joined(separator: ", ")
                return try await context.upgrade(headers: [("Sec-WebSocket-Extensions", offers)])
            },
            HostileCase(name: "upgrade.subprotocols-10000", surface: .upgrade, action: "a Sec-WebSocket-Protocol list of 10,000 entries, sluice.v1 last",
                        expected: .verified("101 choosing sluice.v1")) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                let list = (0..<9_999).map { "p\($0)" }.joined(separator: ", ") + ", sluice.v1"
                let (response, _) = try await client.handshake(extraHeaders: [
                    context.bearer, ("Origin", CatalogueGateway.origin), ("Sec-WebSocket-Protocol", list),
                ])
                var observed = Observed(status: response.status)
                if response.status != 101 || response.value("Sec-WebSocket-Protocol") != "sluice.v1" {
                    observed.problem = "expected 101 with sluice.v1, got \(response.status) \(response.value("Sec-WebSocket-Protocol") ?? "-")"
                }
                return observed
            },
            upgrade("upgrade.origin-suffix", "Origin: https://app.example.com.evil.test", [("Origin", "https://app.example.com.evil.test")], .status(403), withOrigin: false),
            upgrade("upgrade.origin-null", "Origin: null", [("Origin", "null")], .status(403), withOrigin: false),
            upgrade("upgrade.origin-trailing-slash", "Origin: https://app.example.com/", [("Origin", "https://app.example.com/")], .status(403), withOrigin: false),
            upgrade("upgrade.origin-userinfo", "Origin: https://app.example.com@evil.test", [("Origin", "https://app.example.com@evil.test")], .status(403), withOrigin: false),
            upgrade("upgrade.origin-case", "Origin in capitals (origins compare case-insensitively)", [("Origin", "HTTPS://APP.EXAMPLE.COM")], .status(101), withOrigin: false),
            upgrade("upgrade.origin-two-evil-first", "two Origin headers, a foreign one first", [("Origin", "https://evil.test"), ("Origin", CatalogueGateway.origin)], .status(403), withOrigin: false),
            upgrade("upgrade.origin-missing", "no Origin at all (not a browser)", [], .status(101), withOrigin: false),
            HostileCase(name: "upgrade.frames-behind-handshake", surface: .upgrade, action: "the handshake and three pings in one write",
                        expected: .verified("101, session.ready, then three pongs")) { context in
                let client = try await context.connect()
                defer { Task { await client.close() } }
                var bytes = Array(Self.head(context, extra: [("Sec-WebSocket-Protocol", "sluice.v1")]).utf8)
                for index in 0..<3 { bytes += TestFrames.text(#"{"type":"ping","id":"b\#(index)"}"#) }
                try await client.send(bytes)
                let response = try await client.readHTTPResponse()
                guard response.status == 101 else { return .failed("expected 101, got \(response.status)") }
                var ids: [String] = []
                while ids.count < 3 {
                    let message = try await CaseContext.nextMessage(client)
                    if message["type"] as? String == "pong" { ids.append(message["id"] as? String ?? "?") }
                }
                return ids == ["b0", "b1", "b2"] ? .verified("pongs \(ids)") : .failed("pongs \(ids)")
            },
        ]
    }
}

/// Sec-WebSocket-Key values of any decoded length.
enum WebSocketKeys {
    static func encode(_ count: Int) -> String {
        Data((0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37) }).base64EncodedString()
    }
}
