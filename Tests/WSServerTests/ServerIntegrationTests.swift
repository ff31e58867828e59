import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import Testing
@testable import SluiceTestSupport
@testable import WSServer

/// End-to-end tests: a real `WebSocketServer` on 127.0.0.1 and `RawClient`s over real sockets,
/// asserting on the bytes that cross the wire.
@Suite(.serialized)
struct ServerIntegrationTests {
    // MARK: HTTP routes

    @Test func httpRoutesAnswerOnOneKeepAliveConnection() async throws {
        try await ServerHarness.run { harness in
            let client = try await harness.connect()

            try await client.send("GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            let health = try await client.readHTTPResponse()
            #expect(health.status == 200)
            #expect(health.body == "ok\n")
            #expect(health.value("Connection") == "keep-alive")

            // Second request on the same TCP connection.
            try await client.send("GET /ready HTTP/1.1\r\nHost: test\r\n\r\n")
            let ready = try await client.readHTTPResponse()
            #expect(ready.status == 200)
            #expect(ready.body == "ready\n")

            try await client.send("GET /no-such-route HTTP/1.1\r\nHost: test\r\n\r\n")
            let missing = try await client.readHTTPResponse()
            #expect(missing.status == 404)

            try await client.send("GET /v1/ws HTTP/1.1\r\nHost: test\r\n\r\n")
            let upgradeRequired = try await client.readHTTPResponse()
            #expect(upgradeRequired.status == 426)
            #expect(upgradeRequired.value("Upgrade")?.lowercased() == "websocket")
            #expect(upgradeRequired.value("Sec-WebSocket-Version") == "13")

            // Two requests pipelined in one write come back in order.
            try await client.send("GET /ready HTTP/1.1\r\nHost: test\r\n\r\nGET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            let first = try await client.readHTTPResponse()
            let second = try await client.readHTTPResponse()
            #expect(first.body == "ready\n")
            #expect(second.body == "ok\n")
            #expect(!client.isClosed)

            // `Connection: close` is honoured.
            try await client.send("GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            let last = try await client.readHTTPResponse()
            #expect(last.status == 200)
            #expect(last.value("Connection") == "close")
            try await client.waitForClose()
        }
    }

    @Test func aHandshakeOnAKeptAliveConnectionUpgrades() async throws {
        // What nginx's upstream keep-alive pool does: plain requests, then an upgrade on the
        // same TCP connection, with a frame right behind the handshake in the same write.
        try await ServerHarness.run { harness in
            let client = try await harness.connect()
            try await client.send("GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            #expect(try await client.readHTTPResponse().status == 200)
            try await client.send("GET /ready HTTP/1.1\r\nHost: test\r\n\r\n")
            #expect(try await client.readHTTPResponse().status == 200)
            let key = "dGhlIHNhbXBsZSBub25jZQ=="
            let request = "GET /v1/ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sluice.v1\r\n\r\n"
            try await client.send(Array(request.utf8) + TestFrames.text("right behind"))
            let response = try await client.readHTTPResponse()
            #expect(response.status == 101)
            #expect(response.value("Sec-WebSocket-Accept") == WebSocketHandshake.acceptKey(for: key))
            #expect(response.value("Upgrade")?.lowercased() == "websocket")
            #expect(response.values("Sec-WebSocket-Protocol") == ["sluice.v1"])
            // Answered at once, not only when the next bytes arrive.
            let echoed = try await client.nextFrame()
            #expect(echoed.opcode == 0x1 && String(decoding: echoed.payload, as: UTF8.self) == "right behind")
            try await client.send(TestFrames.text("and more"))
            #expect(String(decoding: try await client.nextFrame().payload, as: UTF8.self) == "and more")

            // A bad handshake on a kept-alive connection is still refused with a status.
            let other = try await harness.connect()
            try await other.send("GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            #expect(try await other.readHTTPResponse().status == 200)
            try await other.send("GET /v1/ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
            #expect(try await other.readHTTPResponse().status == 400)
        }
    }

    // MARK: Handshake

    @Test func handshakeAcceptsAndEchoesTheSubprotocolOnlyWhenOffered() async throws {
        // Anchor the server's accept computation to the RFC 6455 §1.3 example.
        #expect(WebSocketHandshake.acceptKey(for: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        try await ServerHarness.run { harness in
            let offering = try await harness.connect()
            let (offered, key) = try await offering.handshake(
                extraHeaders: [("Sec-WebSocket-Protocol", "chat.v0, sluice.v1")])
            #expect(offered.status == 101)
            #expect(offered.value("Sec-WebSocket-Accept") == WebSocketHandshake.acceptKey(for: key))
            #expect(offered.value("Upgrade")?.lowercased() == "websocket")
            #expect(offered.value("Connection")?.lowercased() == "upgrade")
            #expect(offered.values("Sec-WebSocket-Protocol") == ["sluice.v1"])
            // No extension was offered, so none is agreed.
            #expect(offered.values("Sec-WebSocket-Extensions").isEmpty)

            let plain = try await harness.connect()
            let (notOffered, plainKey) = try await plain.handshake()
            #expect(notOffered.status == 101)
            #expect(notOffered.value("Sec-WebSocket-Accept") == WebSocketHandshake.acceptKey(for: plainKey))
            #expect(plainKey != key)
            #expect(notOffered.values("Sec-WebSocket-Protocol").isEmpty)

            // An unknown subprotocol is not echoed either.
            let unknown = try await harness.connect()
            let (unknownOffered, _) = try await unknown.handshake(extraHeaders: [("Sec-WebSocket-Protocol", "chat.v0")])
            #expect(unknownOffered.status == 101)
            #expect(unknownOffered.values("Sec-WebSocket-Protocol").isEmpty)

            // The upgraded connections really speak WebSocket now.
            try await expectEcho(offering, text: "after handshake")
            try await expectEcho(plain, text: "plain")

            let keyless = try await harness.connect()
            let (malformed, _) = try await keyless.handshake(includeKey: false)
            #expect(malformed.status == 400)
            try await keyless.waitForClose()
        }
    }

    @Test func disallowedOriginGets403() async throws {
        try await ServerHarness.run(configure: { $0.allowedOrigins = ["https://app.example"] }) { harness in
            let evil = try await harness.connect()
            let (refused, _) = try await evil.handshake(extraHeaders: [("Origin", "https://evil.example")])
            #expect(refused.status == 403)
            try await evil.waitForClose()

            // Not a browser: the Origin check does not apply (it could send any Origin).
            let originless = try await harness.connect()
            let (noOrigin, _) = try await originless.handshake()
            #expect(noOrigin.status == 101)

            let good = try await harness.connect()
            let (accepted, _) = try await good.handshake(extraHeaders: [("Origin", "HTTPS://APP.example")])
            #expect(accepted.status == 101)
            #expect(harness.server.connectionCount == 2)
        }
    }

    @Test func overMaxConnectionsGets503UntilASlotFrees() async throws {
        try await ServerHarness.run(configure: { $0.maxConnections = 1 }) { harness in
            let first = try await harness.connectWebSocket()
            #expect(harness.server.connectionCount == 1)

            // Refused as it is accepted, before it sends anything: every connection counts.
            let second = try await harness.connect()
            let refused = try await second.readHTTPResponse()
            #expect(refused.status == 503)
            #expect(refused.value("Retry-After") == "1")
            try await second.waitForClose()
            #expect(harness.server.openConnectionCount == 1)

            // The first client closes cleanly; the server echoes its code and drops TCP.
            try await first.send(TestFrames.close(code: 1000, reason: "bye"))
            #expect(try await first.expectCloseThenEOF() == 1000)
            try await waitUntil("the slot is released") { harness.server.connectionCount == 0 && harness.server.openConnectionCount == 0 }

            let third = try await harness.connectWebSocket()
            try await expectEcho(third, text: "third")
        }
    }

    // MARK: Echo

    @Test func echoesTextBinaryFragmentedAndLargeMessages() async throws {
        try await ServerHarness.run { harness in
            let client = try await harness.connectWebSocket()

            try await client.send(TestFrames.text("hello, sluice"))
            let text = try await client.nextFrame()
            #expect(text == TestFrames.ServerFrame(fin: true, rsv1: false, opcode: 0x1, payload: Array("hello, sluice".utf8)))

            let binary: [UInt8] = [0x00, 0x01, 0x80, 0xFF, 0xC3, 0x28]  // not UTF-8, fine for binary
            try await client.send(TestFrames.client(0x2, binary))
            let binaryEcho = try await client.nextFrame()
            #expect(binaryEcho.opcode == 0x2)
            #expect(binaryEcho.payload == binary)

            // Three fragments with a Ping between them: the Pong comes first, then the whole message.
            var fragmented = TestFrames.client(0x1, Array("frag-".utf8), fin: false)
            fragmented += TestFrames.client(0x9, Array("mid-ping".utf8))
            fragmented += TestFrames.client(0x0, Array("ment-".utf8), fin: false)
            fragmented += TestFrames.client(0x0, Array("ed ✓".utf8), fin: true)
            try await client.send(fragmented)
            let pong = try await client.nextFrame()
            #expect(pong.opcode == 0xA)
            #expect(pong.payload == Array("mid-ping".utf8))
            let reassembled = try await client.nextFrame()
            #expect(reassembled.opcode == 0x1)
            #expect(reassembled.fin)
            #expect(reassembled.text == "frag-ment-ed ✓")

            // 1 MiB (the default frame limit exactly) as one frame.
            let large = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
            try await client.send(TestFrames.client(0x2, large))
            let largeEcho = try await client.nextFrame()
            #expect(largeEcho.opcode == 0x2)
            #expect(largeEcho.payload.count == large.count)
            #expect(largeEcho.payload == large)

            try await client.send(TestFrames.close(code: 1000))
            #expect(try await client.expectCloseThenEOF() == 1000)
        }
    }

    @Test func pipelinedMessagesComeBackInOrder() async throws {
        try await ServerHarness.run { harness in
            let client = try await harness.connectWebSocket()
            let count = 1000
            var batch: [UInt8] = []
            for index in 0..<count { batch += TestFrames.text("message #\(index)") }
            try await client.send(batch)
            let echoes = try await client.nextFrames(count)
            #expect(echoes.map(\.text) == (0..<count).map { "message #\($0)" })
            #expect(echoes.allSatisfy { $0.opcode == 0x1 && $0.fin && !$0.rsv1 })
        }
    }

    @Test func framesSplitAcrossTCPSegmentsAreReassembled() async throws {
        try await ServerHarness.run { harness in
            let client = try await harness.connectWebSocket()
            // A text message whose fragments split a 3-byte UTF-8 character, a Ping, and a
            // 16-bit-length frame, all written one byte per TCP segment.
            let check = Array("✓".utf8)
            var bytes = TestFrames.client(0x1, Array("split ".utf8) + check[0..<1], fin: false)
            bytes += TestFrames.client(0x9, Array("p".utf8))
            bytes += TestFrames.client(0x0, Array(check[1...]) + Array(" done".utf8))
            let medium = String(repeating: "x", count: 300)
            bytes += TestFrames.text(medium)
            for byte in bytes {
                try await client.send([byte])
                try await Task.sleep(for: .microseconds(200))
            }
            let frames = try await client.nextFrames(3)
            #expect(frames[0].opcode == 0xA)
            #expect(frames[0].payload == Array("p".utf8))
            #expect(frames[1].text == "split ✓ done")
            #expect(frames[2].text == medium)
        }
    }

    // MARK: Protocol violations

    @Test func violationsCloseWithTheRightCodeAndTheServerKeepsServing() async throws {
        try await ServerHarness.run(configure: {
            $0.maxFrameSize = 1 << 20
            $0.maxMessageSize = 1 << 20
        }) { harness in
            // Invalid UTF-8 in a text message → 1007.
            let badUTF8 = try await harness.connectWebSocket()
            try await badUTF8.send(TestFrames.client(0x1, [0x68, 0x69, 0xC3, 0x28]))
            #expect(try await badUTF8.expectCloseThenEOF() == 1007)
            try await expectEcho(try await harness.connectWebSocket(), text: "after 1007")

            // A frame header announcing more than maxFrameSize → 1009 (before any payload arrives).
            let bigFrame = try await harness.connectWebSocket()
            try await bigFrame.send(TestFrames.client(0x2, [], lengthOverride: 2 << 20))
            #expect(try await bigFrame.expectCloseThenEOF() == 1009)
            try await expectEcho(try await harness.connectWebSocket(), text: "after frame 1009")

            // Frames each within the frame limit adding up past maxMessageSize → 1009.
            let bigMessage = try await harness.connectWebSocket()
            let fragment = [UInt8](repeating: 0x61, count: 700_000)
            try await bigMessage.send(TestFrames.client(0x2, fragment, fin: false) + TestFrames.client(0x0, fragment))
            #expect(try await bigMessage.expectCloseThenEOF() == 1009)
            try await expectEcho(try await harness.connectWebSocket(), text: "after message 1009")

            // Zip bomb: 50 MB of zeros deflates to a small frame; inflating must stop at the limit.
            let bomb = try await harness.connect()
            let (deflateAgreed, _) = try await bomb.handshake(extraHeaders: [("Sec-WebSocket-Extensions", "permessage-deflate")])
            #expect(deflateAgreed.status == 101)
            #expect(deflateAgreed.value("Sec-WebSocket-Extensions")?.hasPrefix("permessage-deflate") == true)
            let compressedZeros = ClientDeflate().compress([UInt8](repeating: 0, count: 50_000_000))
            #expect(compressedZeros.count < 1 << 20)
            try await bomb.send(TestFrames.client(0x2, compressedZeros, rsv1: true))
            #expect(try await bomb.expectCloseThenEOF() == 1009)
            try await expectEcho(try await harness.connectWebSocket(), text: "after zip bomb")

            // An unmasked client frame → 1002.
            let unmasked = try await harness.connectWebSocket()
            try await unmasked.send(TestFrames.client(0x1, Array("hi".utf8), masked: false))
            #expect(try await unmasked.expectCloseThenEOF() == 1002)
            try await expectEcho(try await harness.connectWebSocket(), text: "after unmasked")

            // Reserved bits: RSV2 always, RSV1 without permessage-deflate → 1002.
            let rsv2 = try await harness.connectWebSocket()
            try await rsv2.send(TestFrames.client(0x1, Array("hi".utf8), rsv2: true))
            #expect(try await rsv2.expectCloseThenEOF() == 1002)
            let rsv1 = try await harness.connectWebSocket()
            try await rsv1.send(TestFrames.client(0x1, Array("hi".utf8), rsv1: true))
            #expect(try await rsv1.expectCloseThenEOF() == 1002)
            try await expectEcho(try await harness.connectWebSocket(), text: "after reserved bits")

            try await waitUntil("only the echo connections are left") { harness.server.connectionCount == 6 }
        }
    }

    // MARK: permessage-deflate

    @Test func permessageDeflateCompressesAboveMinSizeWithContextTakeover() async throws {
        try await ServerHarness.run(configure: { $0.deflate.minSize = 128 }) { harness in
            let client = try await harness.connect()
            let (response, _) = try await client.handshake(
                extraHeaders: [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")])
            try #require(response.status == 101)
            #expect(response.value("Sec-WebSocket-Extensions") == "permessage-deflate")
            let codec = ClientDeflate()

            let longText = String(repeating: "sluice streams tokens over websockets; ", count: 20)
            var compressedEchoSizes: [Int] = []
            for round in 0..<5 {
                try await client.send(TestFrames.client(0x1, codec.compress(Array(longText.utf8)), rsv1: true))
                let echo = try await client.nextFrame()
                #expect(echo.opcode == 0x1)
                #expect(echo.rsv1, "round \(round): a message over minSize comes back compressed")
                #expect(echo.payload.count < longText.utf8.count)
                #expect(String(decoding: try codec.inflateMessage(echo.payload), as: UTF8.self) == longText)
                compressedEchoSizes.append(echo.payload.count)
            }
            // With context takeover, a repeat is a back-reference into the previous message.
            #expect(compressedEchoSizes[4] * 3 < compressedEchoSizes[0],
                    "compressed sizes \(compressedEchoSizes) do not show context takeover")

            // Below minSize: uncompressed, even though the client sent it compressed.
            try await client.send(TestFrames.client(0x1, codec.compress(Array("tiny".utf8)), rsv1: true))
            let tiny = try await client.nextFrame()
            #expect(!tiny.rsv1)
            #expect(tiny.text == "tiny")

            // The boundary: minSize - 1 is sent as is, minSize is compressed.
            let justBelow = String(repeating: "b", count: 127)
            try await client.send(TestFrames.text(justBelow))
            let belowEcho = try await client.nextFrame()
            #expect(!belowEcho.rsv1)
            #expect(belowEcho.text == justBelow)
            let atMinimum = String(repeating: "m", count: 128)
            try await client.send(TestFrames.text(atMinimum))
            let atMinimumEcho = try await client.nextFrame()
            #expect(atMinimumEcho.rsv1)
            #expect(String(decoding: try codec.inflateMessage(atMinimumEcho.payload), as: UTF8.self) == atMinimum)

            // Compressed messages still decode right after the uncompressed ones in between.
            try await client.send(TestFrames.client(0x1, codec.compress(Array(longText.utf8)), rsv1: true))
            let again = try await client.nextFrame()
            #expect(again.rsv1)
            #expect(String(decoding: try codec.inflateMessage(again.payload), as: UTF8.self) == longText)
        }
    }

    @Test func permessageDeflateAcceptsFragmentedCompressedMessagesAndLargeEchoes() async throws {
        try await ServerHarness.run { harness in
            let client = try await harness.connect()
            let (response, _) = try await client.handshake(
                extraHeaders: [("Sec-WebSocket-Extensions", "permessage-deflate")])
            try #require(response.status == 101)
            let codec = ClientDeflate()

            // One compressed message split over three frames: RSV1 on the first frame only.
            let text = (0..<400).map { "token-\($0) " }.joined()
            let compressed = codec.compress(Array(text.utf8))
            let third = compressed.count / 3
            var frames = TestFrames.client(0x1, Array(compressed[..<third]), fin: false, rsv1: true)
            frames += TestFrames.client(0x0, Array(compressed[third..<(2 * third)]), fin: false)
            frames += TestFrames.client(0x0, Array(compressed[(2 * third)...]))
            try await client.send(frames)
            let echo = try await client.nextFrame()
            #expect(echo.rsv1)
            #expect(String(decoding: try codec.inflateMessage(echo.payload), as: UTF8.self) == text)

            // An uncompressed message on a deflate connection is fine too.
            try await client.send(TestFrames.text("plain on a deflate connection"))
            let plainEcho = try await client.nextFrame()
            #expect(!plainEcho.rsv1)
            #expect(plainEcho.text == "plain on a deflate connection")

            // A large, poorly compressible binary message round-trips through both compressors.
            var generator = SystemRandomNumberGenerator()
            let noisy = (0..<300_000).map { _ in UInt8.random(in: 0...15, using: &generator) }
            try await client.send(TestFrames.client(0x2, codec.compress(noisy), rsv1: true))
            let noisyEcho = try await client.nextFrame()
            #expect(noisyEcho.opcode == 0x2)
            #expect(noisyEcho.rsv1)
            #expect(try codec.inflateMessage(noisyEcho.payload) == noisy)
        }
    }

    // MARK: Heartbeat

    @Test func heartbeatKeepsAnsweringClientsAndDropsSilentOnes() async throws {
        try await ServerHarness.run(configure: {
            $0.heartbeatInterval = .milliseconds(200)
            $0.heartbeatTimeout = .milliseconds(300)
        }) { harness in
            let responsive = try await harness.connectWebSocket()
            let silent = try await harness.connectWebSocket()
            let silentOpenedAt = ContinuousClock.now

            // The responsive client answers every Ping for 1.5 s.
            let until = ContinuousClock.now + .milliseconds(1500)
            var pingsAnswered = 0
            while ContinuousClock.now < until && !responsive.isClosed {
                guard let frame = try? await responsive.nextFrame(timeout: until - ContinuousClock.now) else { continue }
                #expect(frame.opcode == 0x9, "only Pings expected, got opcode \(frame.opcode)")
                if frame.opcode == 0x9 {
                    try await responsive.send(TestFrames.client(0xA, frame.payload))
                    pingsAnswered += 1
                }
            }
            #expect(!responsive.isClosed)
            #expect(pingsAnswered >= 4, "only \(pingsAnswered) Pings in 1.5 s at a 200 ms interval")
            try await expectEcho(responsive, text: "still here")

            // The silent one got a Ping and then lost its TCP connection, without a Close frame.
            let silentFrames = try await silent.waitForClose(timeout: .seconds(2))
            #expect(!silentFrames.isEmpty)
            #expect(silentFrames.allSatisfy { $0.opcode == 0x9 }, "\(silentFrames.map(\.opcode))")
            let silentLifetime = try #require(silent.closedAt) - silentOpenedAt
            #expect(silentLifetime >= .milliseconds(400), "dropped after \(silentLifetime), before interval + timeout")
            #expect(silentLifetime < .seconds(5), "dropped only after \(silentLifetime)")
            #expect(harness.server.connectionCount == 1)
        }
    }

    // MARK: Drain

    @Test func drainRefusesNewWorkThenClosesEveryConnectionWith1012() async throws {
        try await ServerHarness.run(configure: {
            // A grace period long enough for the checks below even on a loaded machine; the
            // deadline far beyond it, so returning early shows the clients' answers ended it.
            $0.drain.gracePeriod = .seconds(2)
            $0.drain.deadline = .seconds(20)
        }) { harness in
            let first = try await harness.connectWebSocket()
            let second = try await harness.connectWebSocket()
            let readyProbe = try await harness.connect()
            let lateUpgrade = try await harness.connect()
            #expect(harness.server.connectionCount == 2)

            let drainStarted = ContinuousClock.now
            let server = harness.server
            let drain = Task { await server.drain() }
            try await waitUntil("the server starts draining") { server.isDraining }

            // Grace period: not ready, no new upgrades, open connections still served.
            try await readyProbe.send("GET /ready HTTP/1.1\r\nHost: test\r\n\r\n")
            let ready = try await readyProbe.readHTTPResponse()
            #expect(ready.status == 503)
            #expect(ready.body == "draining\n")
            let (refused, _) = try await lateUpgrade.handshake()
            #expect(refused.status == 503)
            try await expectEcho(first, text: "during grace")
            #expect(ContinuousClock.now - drainStarted < .seconds(2), "grace checks ran too late to mean anything")

            // Then every connection gets Close 1012; they answer and the server closes TCP.
            for client in [first, second] {
                let (close, _) = try await client.waitForFrame(timeout: .seconds(5)) { $0.opcode == 0x8 }
                #expect(close.closeCode == 1012)
                #expect(ContinuousClock.now - drainStarted >= .seconds(2), "Close came before the grace period ended")
                try await client.send(TestFrames.close(code: 1012))
                try await client.waitForClose()
            }
            await drain.value
            let drainTook = ContinuousClock.now - drainStarted
            #expect(drainTook < .seconds(20), "drain waited for the deadline although every client answered")
            #expect(harness.server.connectionCount == 0)

            // The listener is closed.
            await #expect(throws: (any Error).self) {
                _ = try await harness.connect()
            }
        }
    }

    @Test func drainDeadlineDropsConnectionsThatNeverAnswerClose() async throws {
        try await ServerHarness.run(configure: {
            $0.drain.gracePeriod = .milliseconds(100)
            $0.drain.deadline = .milliseconds(600)
            $0.closeTimeout = .seconds(10)
        }) { harness in
            let stubborn = try await harness.connectWebSocket()
            let drainStarted = ContinuousClock.now
            await harness.server.drain()
            let drainTook = ContinuousClock.now - drainStarted
            #expect(drainTook >= .milliseconds(550), "drain returned after \(drainTook), before its deadline")
            #expect(drainTook < .milliseconds(1500), "drain returned only after \(drainTook)")
            let frames = try await stubborn.waitForClose(timeout: .seconds(2))
            #expect(frames.map(\.closeCode) == [1012])
            #expect(harness.server.connectionCount == 0)
        }
    }

    @Test func serverInitiatedCloseGivesUpAfterCloseTimeout() async throws {
        try await ServerHarness.run(configure: {
            $0.drain.gracePeriod = .milliseconds(50)
            $0.drain.deadline = .seconds(5)
            $0.closeTimeout = .milliseconds(300)
        }) { harness in
            let stubborn = try await harness.connectWebSocket()
            let drainStarted = ContinuousClock.now
            await harness.server.drain()
            let drainTook = ContinuousClock.now - drainStarted
            #expect(drainTook >= .milliseconds(300), "TCP dropped after \(drainTook), before the close timeout")
            #expect(drainTook < .seconds(2), "close timeout not honoured: drain took \(drainTook)")
            let frames = try await stubborn.waitForClose()
            #expect(frames.map(\.closeCode) == [1012])
        }
    }

    @Test func idleTCPConnectionIsClosedAfterHandshakeTimeout() async throws {
        try await ServerHarness.run(configure: { $0.handshakeTimeout = .milliseconds(200) }) { harness in
            // An upgraded connection is not subject to the handshake timeout. It connects first,
            // so its timer is due before the idle one's: the server has one event loop, and once
            // the idle connection is closed, the upgraded one's timer has had its turn too.
            let upgraded = try await harness.connectWebSocket()
            let idle = try await harness.connect()
            let connectedAt = ContinuousClock.now
            try await idle.waitForClose(timeout: .seconds(2))
            let lifetime = try #require(idle.closedAt) - connectedAt
            #expect(lifetime >= .milliseconds(150), "closed after \(lifetime)")
            #expect(idle.totalBytesReceived == 0)

            #expect(!upgraded.isClosed)
            try await expectEcho(upgraded, text: "outlived the handshake timeout")
        }
    }

    // MARK: TLS

    @Test func echoesOverTLS() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let certificatePath = directory.appendingPathComponent("cert.pem").path
        let keyPath = directory.appendingPathComponent("key.pem").path
        try await runOpenSSL([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", keyPath, "-out", certificatePath, "-days", "1", "-subj", "/CN=localhost",
        ])
        let certificate = try #require(try NIOSSLCertificate.fromPEMFile(certificatePath).first)

        try await ServerHarness.run(configure: {
            $0.tls.certificatePath = certificatePath
            $0.tls.privateKeyPath = keyPath
        }) { harness in
            let secure = try await harness.connectWebSocket(trustedCertificate: certificate)
            try await expectEcho(secure, text: "hello over wss")
            let big = [UInt8](repeating: 0x5A, count: 200_000)
            try await secure.send(TestFrames.client(0x2, big))
            let bigEcho = try await secure.nextFrame()
            #expect(bigEcho.payload == big)

            let health = try await harness.connect(trustedCertificate: certificate)
            try await health.send("GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            #expect(try await health.readHTTPResponse().body == "ok\n")

            // Plain text to the TLS port gets no HTTP answer.
            let plaintext = try await harness.connect()
            try await plaintext.send("GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            await #expect(throws: (any Error).self) {
                _ = try await plaintext.readHTTPResponse(timeout: .seconds(1))
            }
        }
    }

    // MARK: Backpressure

    @Test func aClientThatDoesNotReadStallsOnlyItself() async throws {
        try await ServerHarness.run { harness in
            // Small fixed socket buffers on the slow side so its window fills quickly.
            let slow = try await harness.connect(socketBufferSize: 64 * 1024)
            let (response, _) = try await slow.handshake()
            try #require(response.status == 101)
            try await slow.pauseReading()

            // 48 MiB of pipelined 64 KiB binary messages, each tagged with its index.
            let messageSize = 64 * 1024
            let messageCount = 768
            let template = TestFrames.client(0x2, [UInt8](repeating: 0x42, count: messageSize))
            let payloadStart = template.count - messageSize
            var batch = ByteBuffer()
            batch.reserveCapacity(template.count * messageCount)
            for index in 0..<messageCount {
                let frameStart = batch.writerIndex
                batch.writeBytes(template)
                for byte in 0..<4 {
                    let tag = UInt8(truncatingIfNeeded: index >> (24 - 8 * byte))
                    batch.setInteger(tag ^ TestFrames.maskKey[byte], at: frameStart + payloadStart + byte)
                }
            }
            let writeCompletion = WriteCompletion()
            slow.sendWithoutWaiting(batch).whenComplete { _ in writeCompletion.markDone() }
            try await waitUntil("the server stops reading the slow client") { harness.server.readsPausedForBackpressure >= 1 }

            // Another client is served promptly all the while.
            let fast = try await harness.connectWebSocket()
            var slowestRoundTrip: Duration = .zero
            for index in 0..<20 {
                let sent = ContinuousClock.now
                try await expectEcho(fast, text: "fast #\(index)")
                slowestRoundTrip = max(slowestRoundTrip, ContinuousClock.now - sent)
            }
            #expect(slowestRoundTrip < .milliseconds(500), "slowest round trip \(slowestRoundTrip)")

            // The server stopped reading the slow client instead of queueing 48 MiB of echoes:
            // the client's write is still stuck, yet the connection is open (not dropped).
            #expect(!writeCompletion.isDone, "the server read all 48 MiB although its echoes could not be sent")
            #expect(!slow.isClosed)
            #expect(harness.server.connectionCount == 2)

            // Once the client reads again, everything arrives, complete and in order.
            try await slow.resumeReading()
            let echoes = try await slow.nextFrames(messageCount, timeout: .seconds(20))
            var indices: [Int] = []
            for echo in echoes {
                #expect(echo.opcode == 0x2)
                #expect(echo.payload.count == messageSize)
                indices.append(echo.payload.prefix(4).reduce(0) { $0 << 8 | Int($1) })
            }
            #expect(indices == Array(0..<messageCount))
            #expect(echoes.last.map { $0.payload[4...].allSatisfy { $0 == 0x42 } } == true)
            try await waitUntil("the slow client's write completes") { writeCompletion.isDone }
        }
    }
}

// MARK: - Harness

/// One server on its own event loop group plus the clients a test opened; `run` tears all of
/// it down when the body returns or throws.
struct ServerHarness: Sendable {
    let server: WebSocketServer
    let port: Int
    private let clientGroup: any EventLoopGroup
    private let clients: ClientList

    static func run(
        configure: (inout WebSocketServerConfiguration) -> Void = { _ in },
        _ body: (ServerHarness) async throws -> Void
    ) async throws {
        // Timing-sensitive (heartbeats, timeouts): never beside the tests that start servers.
        try await HeavyTests.sensitive { try await Self.runServer(configure: configure, body) }
    }

    private static func runServer(
        configure: (inout WebSocketServerConfiguration) -> Void,
        _ body: (ServerHarness) async throws -> Void
    ) async throws {
        var configuration = WebSocketServerConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.drain.gracePeriod = .milliseconds(50)
        configuration.drain.deadline = .seconds(1)
        configure(&configuration)
        var logger = Logger(label: "sluice.integration-test")
        logger.logLevel = .warning

        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clients = ClientList()
        let outcome: Result<Void, any Error>
        do {
            let server = try WebSocketServer(
                configuration: configuration, application: EchoApplication(),
                eventLoopGroup: serverGroup, logger: logger)
            let address = try await server.start()
            let harness = ServerHarness(
                server: server, port: try #require(address.port), clientGroup: clientGroup, clients: clients)
            try await body(harness)
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        for client in clients.all() { await client.close() }
        // Shutting the server's group down closes the listener and every server-side channel.
        try? await clientGroup.shutdownGracefully()
        try? await serverGroup.shutdownGracefully()
        try outcome.get()
    }

    func connect(
        trustedCertificate: NIOSSLCertificate? = nil,
        socketBufferSize: Int? = nil
    ) async throws -> RawClient {
        let client = try await RawClient.connect(
            port: self.port, group: self.clientGroup, trustedCertificate: trustedCertificate,
            socketBufferSize: socketBufferSize)
        self.clients.add(client)
        return client
    }

    /// Connects and completes the upgrade, requiring 101.
    func connectWebSocket(
        extraHeaders: [(String, String)] = [],
        trustedCertificate: NIOSSLCertificate? = nil
    ) async throws -> RawClient {
        let client = try await self.connect(trustedCertificate: trustedCertificate)
        let (response, key) = try await client.handshake(extraHeaders: extraHeaders)
        try #require(response.status == 101)
        try #require(response.value("Sec-WebSocket-Accept") == WebSocketHandshake.acceptKey(for: key))
        return client
    }
}

/// The clients a test opened, so the harness can close them.
private final class ClientList: Sendable {
    private let clients = Mutex<[RawClient]>([])
    func add(_ client: RawClient) { self.clients.withLock { $0.append(client) } }
    func all() -> [RawClient] { self.clients.withLock { $0 } }
}

/// Set from an event loop when a write completes, read by the test.
private final class WriteCompletion: Sendable {
    private let done = Atomic<Bool>(false)
    func markDone() { self.done.store(true, ordering: .sequentiallyConsistent) }
    var isDone: Bool { self.done.load(ordering: .sequentiallyConsistent) }
}

// MARK: - Helpers

/// Sends one text message and expects the same text back (skipping heartbeat Pings).
private func expectEcho(_ client: RawClient, text: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    try await client.send(TestFrames.text(text))
    let echo = try await client.nextFrames(1)[0]
    #expect(echo.opcode == 0x1, sourceLocation: sourceLocation)
    #expect(echo.text == text, sourceLocation: sourceLocation)
}

/// Polls `condition` every few milliseconds; throws if it is still false after `timeout`.
private func waitUntil(
    _ what: String,
    timeout: Duration = .seconds(5),
    _ condition: () -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { throw RawClientError(description: "timed out waiting until \(what)") }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// Runs the `openssl` command line without blocking a thread while it works.
private func runOpenSSL(_ arguments: [String]) async throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["openssl"] + arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    let status: Int32 = try await withCheckedThrowingContinuation { continuation in
        process.terminationHandler = { finished in continuation.resume(returning: finished.terminationStatus) }
        do {
            try process.run()
        } catch {
            process.terminationHandler = nil
            continuation.resume(throwing: error)
        }
    }
    guard status == 0 else { throw RawClientError(description: "openssl \(arguments.joined(separator: " ")) exited with \(status)") }
}
