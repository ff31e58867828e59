import NIOCore
import Testing
@testable import SluiceTestSupport
@testable import WSServer

@Suite struct DeflateNegotiationTests {
    typealias Config = WebSocketServerConfiguration.DeflateConfiguration

    private func negotiate(_ offer: String, _ configuration: Config = .init()) -> PerMessageDeflateAgreement? {
        PerMessageDeflateNegotiation.negotiate(offers: [offer], configuration: configuration)
    }

    @Test func plainOffer() {
        let agreement = negotiate("permessage-deflate")
        #expect(agreement?.responseHeader == "permessage-deflate")
        #expect(agreement?.serverWindowBits == 15)
        #expect(agreement?.clientNoContextTakeover == false)
    }

    @Test func contextTakeoverAndWindowParameters() {
        let agreement = negotiate("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12")
        #expect(agreement?.serverNoContextTakeover == true)
        #expect(agreement?.clientNoContextTakeover == true)
        #expect(agreement?.serverWindowBits == 10)
        #expect(agreement?.responseHeader == "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12")
        // A bare client_max_window_bits is only a hint that the client supports it.
        #expect(negotiate("permessage-deflate; client_max_window_bits")?.responseHeader == "permessage-deflate")
        #expect(negotiate("permessage-deflate; server_max_window_bits=\"11\"")?.serverWindowBits == 11)
    }

    @Test func aWindowOfEightIsAgreedButNeverUsedForCompression() {
        let agreement = negotiate("permessage-deflate; server_max_window_bits=8")
        #expect(agreement?.responseHeader == "permessage-deflate; server_max_window_bits=8")
        #expect(agreement?.serverWindowBits == nil)
    }

    @Test func serverConfigurationCanAskForLess() {
        var configuration = Config()
        configuration.serverNoContextTakeover = true
        configuration.clientNoContextTakeover = true
        configuration.serverMaxWindowBits = 12
        #expect(negotiate("permessage-deflate", configuration)?.responseHeader
            == "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12")
        configuration.enabled = false
        #expect(negotiate("permessage-deflate", configuration) == nil)
    }

    @Test func invalidOffersAreDeclinedAndTheNextOneIsTried() {
        #expect(negotiate("permessage-deflate; server_max_window_bits=7") == nil)
        #expect(negotiate("permessage-deflate; server_max_window_bits") == nil)
        #expect(negotiate("permessage-deflate; client_max_window_bits=16") == nil)
        #expect(negotiate("permessage-deflate; unknown_param") == nil)
        #expect(negotiate("permessage-deflate; server_no_context_takeover; server_no_context_takeover") == nil)
        #expect(negotiate("permessage-deflate; server_no_context_takeover=1") == nil)
        #expect(negotiate("x-webkit-deflate-frame") == nil)
        let second = negotiate("permessage-deflate; bogus, permessage-deflate; client_no_context_takeover")
        #expect(second?.responseHeader == "permessage-deflate; client_no_context_takeover")
    }
}

@Suite struct DeflateCodecTests {
    @Test func roundTripsWithContextTakeover() throws {
        let compressor = DeflateCompressor(level: 6, windowBits: 15, memoryLevel: 8)
        let decompressor = DeflateDecompressor()
        for message in ["hello hello hello hello", "", String(repeating: "token ", count: 5000), "κόσμε"] {
            var compressed = ByteBuffer()
            compressor.compress(ByteBuffer(string: message), into: &compressed)
            compressed.writeBytes([0, 0, 0xFF, 0xFF])
            var output = ByteBuffer()
            try decompressor.inflate(compressed, into: &output, limit: 1 << 20)
            #expect(String(buffer: output) == message)
        }
    }

    @Test func aZipBombStopsAtTheLimit() {
        let compressor = DeflateCompressor(level: 9, windowBits: 15, memoryLevel: 8)
        var bomb = ByteBuffer()
        compressor.compress(ByteBuffer(repeating: 0, count: 50_000_000), into: &bomb)
        #expect(bomb.readableBytes < 100_000)
        let decompressor = DeflateDecompressor()
        var output = ByteBuffer()
        #expect(throws: DeflateDecompressor.InflateError.self) {
            try decompressor.inflate(bomb, into: &output, limit: 1_000_000)
        }
        // It stopped near the limit instead of inflating all 50 MB.
        #expect(output.readableBytes <= 1_000_001)
    }

    @Test func garbageIsReportedAsCorrupt() {
        let decompressor = DeflateDecompressor()
        var output = ByteBuffer()
        do {
            try decompressor.inflate(ByteBuffer(repeating: 0xFF, count: 64), into: &output, limit: 1 << 20)
            Issue.record("accepted garbage")
        } catch {
            if case DeflateDecompressor.InflateError.corrupt = error {} else { Issue.record("wrong error \(error)") }
        }
    }
}
