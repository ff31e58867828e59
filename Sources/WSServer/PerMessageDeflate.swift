import CZlib
import NIOCore

/// The permessage-deflate parameters agreed for one connection (RFC 7692 §7).
public struct PerMessageDeflateAgreement: Equatable, Sendable {
    /// The server resets its compressor after every message.
    public var serverNoContextTakeover: Bool
    /// The client resets its compressor after every message (so the server may reset its decompressor).
    public var clientNoContextTakeover: Bool
    /// The window the server compresses with; `nil` means outbound messages are never compressed
    /// (zlib cannot produce a raw deflate stream with an 8-bit window, which a client may ask for).
    public var serverWindowBits: Int?
    /// The `Sec-WebSocket-Extensions` response value.
    public var responseHeader: String
}

/// RFC 7692 negotiation as a pure function: the first acceptable offer wins.
public enum PerMessageDeflateNegotiation {
    public static func negotiate(
        offers headerValues: [String],
        configuration: WebSocketServerConfiguration.DeflateConfiguration
    ) -> PerMessageDeflateAgreement? {
        guard configuration.enabled else { return nil }
        for offer in Self.parseOffers(headerValues) where offer.name == "permessage-deflate" {
            if let agreement = Self.accept(offer.parameters, configuration: configuration) {
                return agreement
            }
        }
        return nil
    }

    struct Offer {
        var name: String
        var parameters: [(name: String, value: String?)]
    }

    /// Splits `a; x=1, b` into offers. Quoted values (RFC 7692 allows `x="10"`) are unquoted.
    static func parseOffers(_ headerValues: [String]) -> [Offer] {
        var offers: [Offer] = []
        for headerValue in headerValues {
            for rawOffer in headerValue.split(separator: ",") {
                let parts = rawOffer.split(separator: ";", omittingEmptySubsequences: false)
                    .map { $0.trimmingCharacters(in: " \t") }
                guard let name = parts.first, !name.isEmpty else { continue }
                var parameters: [(String, String?)] = []
                for part in parts.dropFirst() where !part.isEmpty {
                    if let equals = part.firstIndex(of: "=") {
                        var value = part[part.index(after: equals)...].trimmingCharacters(in: " \t")
                        if value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") {
                            value = String(value.dropFirst().dropLast())
                        }
                        parameters.append((part[..<equals].trimmingCharacters(in: " \t").lowercased(), value))
                    } else {
                        parameters.append((part.lowercased(), nil))
                    }
                }
                offers.append(Offer(name: name.lowercased(), parameters: parameters))
            }
        }
        return offers
    }

    private static func accept(
        _ parameters: [(name: String, value: String?)],
        configuration: WebSocketServerConfiguration.DeflateConfiguration
    ) -> PerMessageDeflateAgreement? {
        var seen = Set<String>()
        var serverNoContextTakeover = configuration.serverNoContextTakeover
        var clientNoContextTakeover = configuration.clientNoContextTakeover
        var requestedServerWindow: Int?
        var clientWindowOffered = false
        var requestedClientWindow: Int?
        for (name, value) in parameters {
            // A repeated parameter makes the offer invalid (§7).
            guard seen.insert(name).inserted else { return nil }
            switch name {
            case "server_no_context_takeover":
                guard value == nil else { return nil }
                serverNoContextTakeover = true
            case "client_no_context_takeover":
                guard value == nil else { return nil }
                clientNoContextTakeover = true
            case "server_max_window_bits":
                guard let bits = Self.windowBits(value) else { return nil }
                requestedServerWindow = bits
            case "client_max_window_bits":
                clientWindowOffered = true
                if let value {
                    guard let bits = Self.windowBits(value) else { return nil }
                    requestedClientWindow = bits
                }
            default:
                return nil  // unknown parameter: decline this offer
            }
        }
        let configuredBits = min(max(configuration.serverMaxWindowBits, 9), 15)
        let serverBits = min(configuredBits, requestedServerWindow ?? 15)
        var response = "permessage-deflate"
        if serverNoContextTakeover { response += "; server_no_context_takeover" }
        if clientNoContextTakeover { response += "; client_no_context_takeover" }
        if requestedServerWindow != nil || serverBits < 15 {
            // If the client asked for a window we cannot produce (8), agree to it and never compress.
            response += "; server_max_window_bits=\(requestedServerWindow.map { min($0, serverBits) } ?? serverBits)"
        }
        if clientWindowOffered, let requestedClientWindow {
            // We inflate with a 15-bit window, which reads any smaller one; echo the client's limit.
            response += "; client_max_window_bits=\(requestedClientWindow)"
        }
        let effectiveServerBits = (requestedServerWindow ?? 15) < 9 ? nil : serverBits
        return PerMessageDeflateAgreement(
            serverNoContextTakeover: serverNoContextTakeover,
            clientNoContextTakeover: clientNoContextTakeover,
            serverWindowBits: effectiveServerBits,
            responseHeader: response
        )
    }

    private static func windowBits(_ value: String?) -> Int? {
        guard let value, value.allSatisfy({ $0.isASCII && $0.isNumber }), let bits = Int(value), (8...15).contains(bits) else {
            return nil
        }
        return bits
    }
}

extension StringProtocol {
    func trimmingCharacters(in characters: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, characters.contains(first) { slice.removeFirst() }
        while let last = slice.last, characters.contains(last) { slice.removeLast() }
        return String(slice)
    }
}

/// Raw-deflate decompressor with an output limit, so a small compressed message cannot expand
/// past the message size limit (zip bomb): it stops and reports as soon as the limit is crossed.
/// Lazily allocated; freed after every message when the client resets its context.
final class DeflateDecompressor {
    private var stream = z_stream()
    private var isInitialized = false

    enum InflateError: Error { case tooLarge, overBudget, corrupt(String) }

    /// What zlib allocates to inflate with a 15-bit window (zlib's tech notes: the window
    /// plus about 7 KiB of state), charged to the memory budget while it is held.
    static let stateBytes = (1 << 15) + 7 * 1024

    /// Whether zlib state is allocated now (released by `release()`).
    var holdsState: Bool { self.isInitialized }

    deinit { self.release() }

    func release() {
        if self.isInitialized {
            inflateEnd(&self.stream)
            self.isInitialized = false
        }
    }

    /// Inflates the readable bytes of `input` onto the end of `output`, failing if `output`
    /// would exceed `limit` bytes. Before each step `reserve(bytes)` is asked whether `output`
    /// may grow to `bytes` (the memory budget); no: `overBudget`, before anything is allocated.
    func inflate(
        _ input: ByteBuffer, into output: inout ByteBuffer, limit: Int, reserve: (Int) -> Bool = { _ in true }
    ) throws(InflateError) {
        let result: Result<Void, InflateError> = input.withUnsafeReadableBytes { bytes in
            Result { () throws(InflateError) in try self.inflate(bytes, into: &output, limit: limit, reserve: reserve) }
        }
        try result.get()
    }

    func inflate(
        _ input: UnsafeRawBufferPointer, into output: inout ByteBuffer, limit: Int, reserve: (Int) -> Bool = { _ in true }
    ) throws(InflateError) {
        guard input.count > 0 else { return }
        if !self.isInitialized {
            self.stream = z_stream()
            // 15 bits reads any window the client may have used.
            // Out of memory is the only way this fails with valid arguments.
            guard sluice_inflateInit2(&self.stream, -15) == Z_OK else { throw .overBudget }
            self.isInitialized = true
        }
        self.stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.assumingMemoryBound(to: Bytef.self))
        self.stream.avail_in = uInt(input.count)
        while true {
            let room = limit - output.readableBytes
            // Ask for one byte more than allowed so that crossing the limit is visible.
            let chunk = min(max(room + 1, 1), max(input.count * 4, 4096), 256 * 1024)
            guard reserve(output.writerIndex + chunk) else { throw .overBudget }
            output.reserveCapacity(minimumWritableBytes: chunk)
            var status: Int32 = Z_OK
            let produced = output.writeWithUnsafeMutableBytes(minimumWritableBytes: chunk) { out in
                self.stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
                self.stream.avail_out = uInt(chunk)
                status = CZlib.inflate(&self.stream, Z_SYNC_FLUSH)
                return chunk - Int(self.stream.avail_out)
            }
            if output.readableBytes > limit { throw .tooLarge }
            switch status {
            case Z_OK, Z_BUF_ERROR:
                // Done when all input is consumed and zlib had room left (nothing more buffered).
                if self.stream.avail_in == 0 && (self.stream.avail_out > 0 || produced == 0) { return }
            case Z_STREAM_END:
                // A final block: the next message starts a new stream.
                inflateReset(&self.stream)
                if self.stream.avail_in == 0 { return }
            default:
                let message = self.stream.msg.map { String(cString: $0) } ?? "status \(status)"
                throw .corrupt(message)
            }
        }
    }
}

/// Raw-deflate compressor for outbound messages (sync flush, trailing 00 00 FF FF removed).
final class DeflateCompressor {
    private var stream = z_stream()
    private var isInitialized = false
    private let level: Int32
    private let windowBits: Int32
    private let memoryLevel: Int32

    /// What zlib allocates to deflate (zlib's tech notes: `2^(windowBits+2) + 2^(memLevel+9)`
    /// plus about 6 KiB), charged to the memory budget while it is held.
    static func stateBytes(windowBits: Int, memoryLevel: Int) -> Int {
        (1 << (min(max(windowBits, 8), 15) + 2)) + (1 << (min(max(memoryLevel, 1), 9) + 9)) + 6 * 1024
    }

    var stateBytes: Int { Self.stateBytes(windowBits: Int(self.windowBits), memoryLevel: Int(self.memoryLevel)) }

    /// Whether zlib state is allocated now (released by `release()`).
    var holdsState: Bool { self.isInitialized }

    init(level: Int, windowBits: Int, memoryLevel: Int) {
        self.level = Int32(level)
        self.windowBits = Int32(windowBits)
        self.memoryLevel = Int32(memoryLevel)
    }

    deinit { self.release() }

    func release() {
        if self.isInitialized {
            deflateEnd(&self.stream)
            self.isInitialized = false
        }
    }

    /// Compresses `input` and appends the result to `output`; false (nothing written) when zlib
    /// could not set up its state (out of memory): the caller sends the message uncompressed.
    @discardableResult
    func compress(_ input: ByteBuffer, into output: inout ByteBuffer) -> Bool {
        if !self.isInitialized {
            self.stream = z_stream()
            guard sluice_deflateInit2(&self.stream, self.level, -self.windowBits, self.memoryLevel) == Z_OK else { return false }
            self.isInitialized = true
        }
        let start = output.writerIndex
        input.withUnsafeReadableBytes { inBytes in
            self.stream.next_in = UnsafeMutablePointer(mutating: inBytes.baseAddress?.assumingMemoryBound(to: Bytef.self))
            self.stream.avail_in = uInt(inBytes.count)
            repeat {
                let chunk = max(Int(deflateBound(&self.stream, uLong(self.stream.avail_in))) + 16, 64)
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: chunk) { out in
                    self.stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
                    self.stream.avail_out = uInt(chunk)
                    _ = deflate(&self.stream, Z_SYNC_FLUSH)
                    return chunk - Int(self.stream.avail_out)
                }
            } while self.stream.avail_out == 0
        }
        // Strip the 00 00 FF FF that the sync flush appended (RFC 7692 §7.2.1). zlib emits
        // nothing for an empty message after an earlier flush; send the one-byte empty block.
        if output.writerIndex - start >= 4 {
            output.moveWriterIndex(to: output.writerIndex - 4)
        } else {
            output.moveWriterIndex(to: start)
            output.writeInteger(UInt8(0))
        }
        return true
    }
}
