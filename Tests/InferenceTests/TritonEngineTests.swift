import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import SluiceProtocol
import SluiceTestSupport
import Testing

@testable import Inference

/// The Triton engine against a scripted generate-stream endpoint over loopback.
@Suite struct TritonEngineTests {
    static func engine(port: Int) throws -> TritonEngine {
        try TritonEngine(configuration: .init(
            baseURL: URL(string: "http://127.0.0.1:\(port)/")!, timeouts: UpstreamTimeouts(connect: .seconds(2))))
    }

    static func output(_ text: String, _ extra: String = "") -> String {
        FakeUpstream.event(#"{"model_name":"ensemble","model_version":"1","text_output":"\#(text)"\#(extra)}"#)
    }

    @Test func streamsTextOutputUntilTheResponseEnds() async throws {
        let upstream = try await FakeUpstream.start { _ in
            [
                .write(FakeUpstream.chunkedHead() + FakeUpstream.chunk(Self.output("Hel"))),
                .pause(.milliseconds(10)),
                .write(FakeUpstream.chunk(Self.output("lo") + Self.output(""))),
                .pause(.milliseconds(10)),
                .write(FakeUpstream.chunk(Self.output(" thére")) + FakeUpstream.lastChunk),
                .hang,
            ]
        }
        defer { Task { await upstream.stop() } }
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
        defer { withExtendedLifetime(generation) {} }
        await generation.log.waitForEnd()
        // No usage: Triton reports none.
        #expect(generation.log.withoutBatches == [.text("Hel"), .text("lo"), .text(" thére"), .finish(.stop)])
        #expect(generation.log.batchesAreWellPlaced())
        let request = try #require(upstream.requests.first)
        #expect(request.method == .POST)
        #expect(request.uri == "/v2/models/ensemble/generate_stream")
        let json = try #require(request.json)
        #expect(json["text_input"] as? String == "system: Be brief.\nuser: Hi \"there\"\n\nassistant:")
        #expect(json["max_tokens"] as? Int == 64)
        #expect(json["stream"] as? Bool == true)
        #expect(json["temperature"] as? Double == 0.5)
    }

    @Test func finalEventsAndErrors() async throws {
        let cases: [(String, [SinkEvent])] = [
            (Self.output("x", #","is_final":true"#), [.text("x"), .batch, .finish(.stop)]),
            (Self.output("y", #","finish_reason":"length""#), [.text("y"), .batch, .finish(.length)]),
            (Self.output("z") + FakeUpstream.event(#"{"error":"in ensemble 'ensemble': request cancelled"}"#),
             [.text("z"), .batch, .fail(.upstreamError(status: nil))]),
        ]
        for (body, expected) in cases {
            let upstream = try await FakeUpstream.start { _ in [.write(FakeUpstream.head() + body), .hang] }
            defer { Task { await upstream.stop() } }
            let generation = try await TestGeneration.start(try Self.engine(port: upstream.port))
            defer { withExtendedLifetime(generation) {} }
            #expect(await generation.log.waitForEnd() == expected)
            // The upstream kept the connection open; the engine closed it at the end.
            #expect(await upstream.wait { $0.closedConnections == 1 })
        }
    }

    @Test func httpErrorAndModelInThePath() async throws {
        let body = #"{"error":"Request for unknown model: 'my model/v2' is not found"}"#
        let upstream = try await FakeUpstream.start { _ in
            [.write("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body), .hang]
        }
        defer { Task { await upstream.stop() } }
        let request = GenerationRequest(messages: [ChatMessage(role: .user, content: "Hi")], model: "my model/v2", maxTokens: 8)
        let generation = try await TestGeneration.start(try Self.engine(port: upstream.port), request)
        defer { withExtendedLifetime(generation) {} }
        #expect(await generation.log.waitForEnd() == [.fail(.upstreamError(status: 400))])
        #expect(generation.log.error?.message == "upstream returned HTTP 400: Request for unknown model: 'my model/v2' is not found")
        let sent = try #require(upstream.requests.first)
        #expect(sent.uri == "/v2/models/my%20model%2Fv2/generate_stream")
        #expect(sent.json?["temperature"] == nil)
        #expect(sent.json?["text_input"] as? String == "user: Hi\nassistant:")
    }
}

/// `https://` upstreams: NIOSSL on the client, a self-signed certificate made with openssl.
@Suite struct UpstreamTLSTests {
    static func makeCertificate() throws -> (NIOSSLCertificate, NIOSSLPrivateKey) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-inference-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let certificate = directory.appendingPathComponent("cert.pem").path
        let key = directory.appendingPathComponent("key.pem").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate,
            "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return (try #require(try NIOSSLCertificate.fromPEMFile(certificate).first), try NIOSSLPrivateKey(file: key, format: .pem))
    }

    @Test func streamsOverTLSAndRejectsAnUntrustedCertificate() async throws {
        let (certificate, key) = try Self.makeCertificate()
        let serverContext = try NIOSSLContext(configuration: .makeServerConfiguration(
            certificateChain: [.certificate(certificate)], privateKey: .privateKey(key)))
        let upstream = try await FakeUpstream.start(tls: serverContext) { _ in
            [.write(FakeUpstream.head() + FakeUpstream.delta("secure") + "data: [DONE]\n\n"), .hang]
        }
        defer { Task { await upstream.stop() } }
        // "localhost": resolved, raced over IPv6 and IPv4 (only IPv4 listens), SNI and name checked.
        var configuration = OpenAICompatibleEngine.Configuration(
            baseURL: URL(string: "https://localhost:\(upstream.port)")!, model: "m",
            timeouts: UpstreamTimeouts(connect: .seconds(2), timeToFirstToken: .seconds(5)))
        configuration.trustRoots = .certificates([certificate])
        let trusted = try await TestGeneration.start(try OpenAICompatibleEngine(configuration: configuration))
        defer { withExtendedLifetime(trusted) {} }
        #expect(await trusted.log.waitForEnd() == [.text("secure"), .batch, .finish(.stop)])

        configuration.trustRoots = .certificates([try Self.makeCertificate().0])
        let untrusted = try await TestGeneration.start(try OpenAICompatibleEngine(configuration: configuration))
        defer { withExtendedLifetime(untrusted) {} }
        #expect(await untrusted.log.waitForEnd() == [.fail(.unavailable)])
    }
}
