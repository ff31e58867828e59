import CZlib
import NIOCore
import NIOPosix
import NIOSSL
import Foundation
import Synchronization

/// Why a `RawClient` wait failed.
struct RawClientError: Error, CustomStringConvertible {
    var description: String
}

/// A parsed HTTP/1.1 response as it came off the socket.
struct RawHTTPResponse: Sendable {
    var status: Int
    /// Header lines in arrival order.
    var headers: [(name: String, value: String)]
    var body: String

    /// All values of a header (case-insensitive name).
    func values(_ name: String) -> [String] {
        self.headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    func value(_ name: String) -> String? { self.values(name).first }
}

/// A deliberately dumb TCP (optionally TLS) client for integration tests: it writes whatever
/// bytes it is given and records every byte the server sends, so tests assert on the wire
/// exactly. Every wait has a deadline so a broken server fails a test instead of hanging it.
final class RawClient: Sendable {
    static let defaultTimeout: Duration = .seconds(5)

    private let channel: any Channel
    private let state: RawClientState

    private init(channel: any Channel, state: RawClientState) {
        self.channel = channel
        self.state = state
    }

    /// Connects to 127.0.0.1:`port`. With `trustedCertificate`, speaks TLS and trusts only that
    /// certificate (no hostname check). With `autoRead` false the client does not read from the
    /// socket until `resumeReading()`, so the server sees a peer whose receive window fills up.
    /// `socketBufferSize` fixes SO_RCVBUF/SO_SNDBUF (no kernel autotuning) so that window stays small.
    /// `localAddress` binds the client's end first: any 127.x.y.z is this host, so a test can
    /// be many client addresses (per-address limits) without any network setup.
    static func connect(
        port: Int,
        group: any EventLoopGroup,
        trustedCertificate: NIOSSLCertificate? = nil,
        autoRead: Bool = true,
        socketBufferSize: Int? = nil,
        localAddress: String? = nil
    ) async throws -> RawClient {
        let state = RawClientState()
        var sslContext: NIOSSLContext?
        if let trustedCertificate {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates([trustedCertificate])
            tls.certificateVerification = .noHostnameVerification
            sslContext = try NIOSSLContext(configuration: tls)
        }
        let context = sslContext
        var bootstrap = ClientBootstrap(group: group)
            .channelOption(.autoRead, value: autoRead)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
        if let socketBufferSize {
            bootstrap = bootstrap
                .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(socketBufferSize))
                .channelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(socketBufferSize))
        }
        if let localAddress {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: localAddress, port: 0))
        }
        let channel = try await bootstrap
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let context {
                        try pipeline.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    }
                    try pipeline.addHandler(ByteCollector(state: state))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return RawClient(channel: channel, state: state)
    }

    // MARK: Sending

    /// Writes the bytes and waits until they are handed to the kernel.
    func send(_ bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    /// Writes without waiting; the future completes once the kernel took every byte.
    func sendWithoutWaiting(_ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        self.channel.writeAndFlush(buffer)
    }

    func send(_ string: String) async throws {
        try await self.send(Array(string.utf8))
    }

    /// Stops reading from the socket: the server's bytes pile up in the kernel until `resumeReading()`.
    func pauseReading() async throws {
        try await self.channel.setOption(.autoRead, value: false).get()
    }

    /// Lets a client made with `autoRead: false` (or paused) read again.
    func resumeReading() async throws {
        try await self.channel.setOption(.autoRead, value: true).get()
    }

    /// Closes TCP from our side.
    func close() async {
        try? await self.channel.close().get()
    }

    /// This end's port (for /proc/net/tcp).
    var localPort: Int? { self.channel.localAddress?.port }

    /// Whether the server has hung up (sent FIN or reset), seen from the kernel's socket state,
    /// so a client that is not reading can tell.
    var serverHasHungUp: Bool {
        guard let port = self.localPort else { return true }
        guard let state = ProcessResources.tcpState(localPort: port) else { return true }
        return state != 1  // anything but ESTABLISHED: CLOSE_WAIT, CLOSE, …
    }

    var isClosed: Bool { self.state.bytes.withLock { $0.isClosed } }
    var totalBytesReceived: Int { self.state.bytes.withLock { $0.totalBytesReceived } }
    /// When the connection closed (either side), if it did.
    var closedAt: ContinuousClock.Instant? { self.state.bytes.withLock { $0.closedAt } }

    // MARK: Waiting

    /// Polls `attempt` against the received bytes until it yields a value, the connection
    /// closes with nothing left to yield, or the deadline passes.
    private func waitFor<T: Sendable>(
        _ what: String,
        timeout: Duration,
        _ attempt: (inout RawClientState.Bytes) -> T?
    ) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (value, isClosed) = self.state.bytes.withLock { state in (attempt(&state), state.isClosed) }
            if let value { return value }
            if isClosed { throw RawClientError(description: "connection closed while waiting for \(what)") }
            if ContinuousClock.now >= deadline { throw RawClientError(description: "timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    /// What was received and not consumed, as text, once it contains `marker` (a streamed
    /// response read while it is still going; nothing is consumed).
    func waitForText(containing marker: String, timeout: Duration = RawClient.defaultTimeout) async throws -> String {
        try await self.waitFor("\(marker)", timeout: timeout) { state in
            let text = String(decoding: state.received[state.readIndex...], as: UTF8.self)
            return text.contains(marker) ? text : nil
        }
    }

    /// Reads one HTTP response (headers plus a `Content-Length` body) off the front of the stream.
    func readHTTPResponse(timeout: Duration = RawClient.defaultTimeout) async throws -> RawHTTPResponse {
        try await self.waitFor("an HTTP response", timeout: timeout) { state in
            Self.takeHTTPResponse(from: &state)
        }
    }

    /// The next HTTP response, or nil when the server closed the connection without (another)
    /// one. Throws only on timeout.
    func readHTTPResponseOrClose(timeout: Duration = RawClient.defaultTimeout) async throws -> RawHTTPResponse? {
        do {
            return try await self.readHTTPResponse(timeout: timeout)
        } catch let error as RawClientError {
            if self.isClosed, let response = self.state.bytes.withLock({ Self.takeHTTPResponse(from: &$0) }) { return response }
            if self.isClosed { return nil }
            throw error
        }
    }

    /// Bytes received and not consumed by a response or frame yet.
    var unconsumedBytes: [UInt8] {
        self.state.bytes.withLock { Array($0.received[$0.readIndex...]) }
    }

    /// A slow writer: `bytes` one chunk of `chunkSize` at a time with `pause` between chunks,
    /// until all are sent or the server closes the connection. Returns how many bytes went out
    /// and whether the server closed first. The pauses pace the writer (they are the attack),
    /// they never stand in for waiting on an event.
    func trickle(_ bytes: [UInt8], chunkSize: Int = 1, pause: Duration) async -> (sent: Int, closedByServer: Bool) {
        var sent = 0
        while sent < bytes.count {
            if self.isClosed { return (sent, true) }
            let end = min(bytes.count, sent + max(1, chunkSize))
            do {
                try await self.send(Array(bytes[sent..<end]))
            } catch {
                return (sent, true)
            }
            sent = end
            if sent < bytes.count { try? await Task.sleep(for: pause) }
        }
        return (sent, self.isClosed)
    }

    private static func takeHTTPResponse(from bytes: inout RawClientState.Bytes) -> RawHTTPResponse? {
        let data = bytes.received
        let start = bytes.readIndex
        guard data.count - start >= 4,
              let headerEnd = (start...(data.count - 4)).first(where: {
                  data[$0] == 13 && data[$0 + 1] == 10 && data[$0 + 2] == 13 && data[$0 + 3] == 10
              })
        else { return nil }
        let headText = String(decoding: data[start..<headerEnd], as: UTF8.self)
        var lines = headText.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.removeFirst()
        let statusParts = statusLine.split(separator: " ", maxSplits: 2)
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { return nil }
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = String(line[..<colon])
            let value = line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
            headers.append((name, String(value)))
        }
        let bodyStart = headerEnd + 4
        if headers.contains(where: { $0.name.lowercased() == "transfer-encoding" && $0.value.lowercased() == "chunked" }) {
            // Whole chunked body, up to the last (empty) chunk.
            var index = bodyStart
            var body: [UInt8] = []
            while true {
                guard let lineEnd = (index..<max(index, data.count - 1)).first(where: { data[$0] == 13 && data[$0 + 1] == 10 }),
                      let size = Int(String(decoding: data[index..<lineEnd], as: UTF8.self).split(separator: ";")[0], radix: 16)
                else { return nil }
                let chunkStart = lineEnd + 2
                guard data.count >= chunkStart + size + 2 else { return nil }
                if size == 0 {
                    bytes.consume(upTo: chunkStart + 2)
                    return RawHTTPResponse(status: status, headers: headers, body: String(decoding: body, as: UTF8.self))
                }
                body += data[chunkStart..<chunkStart + size]
                index = chunkStart + size + 2
            }
        }
        let contentLength = headers.first { $0.name.lowercased() == "content-length" }.flatMap { Int($0.value) } ?? 0
        guard data.count >= bodyStart + contentLength else { return nil }
        let body = String(decoding: data[bodyStart..<bodyStart + contentLength], as: UTF8.self)
        bytes.consume(upTo: bodyStart + contentLength)
        return RawHTTPResponse(status: status, headers: headers, body: body)
    }

    /// Sends a WebSocket upgrade request with a fresh random key and reads the response.
    /// Returns the response and the key that was sent.
    func handshake(
        path: String = "/v1/ws",
        extraHeaders: [(String, String)] = [],
        includeKey: Bool = true
    ) async throws -> (response: RawHTTPResponse, key: String) {
        let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Version: 13\r\n"
        if includeKey { request += "Sec-WebSocket-Key: \(key)\r\n" }
        for (name, value) in extraHeaders { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        try await self.send(request)
        let response = try await self.readHTTPResponse()
        return (response, key)
    }

    /// The next whole frame from the server.
    func nextFrame(timeout: Duration = RawClient.defaultTimeout) async throws -> TestFrames.ServerFrame {
        try await self.waitFor("a frame", timeout: timeout) { state in
            Self.takeFrame(from: &state)
        }
    }

    private static func takeFrame(from bytes: inout RawClientState.Bytes) -> TestFrames.ServerFrame? {
        // Decode a copy of exactly one frame, so the rest stays queued.
        guard let end = Self.endOfFirstFrame(bytes.received, from: bytes.readIndex) else { return nil }
        var one = Array(bytes.received[bytes.readIndex..<end])
        let frames = TestFrames.decode(&one)
        precondition(frames.count == 1 && one.isEmpty)
        bytes.consume(upTo: end)
        return frames[0]
    }

    /// End index of the frame starting at `start` if all of it is there.
    private static func endOfFirstFrame(_ bytes: [UInt8], from start: Int) -> Int? {
        guard bytes.count - start >= 2 else { return nil }
        var length = Int(bytes[start + 1] & 0x7F)
        var offset = 2
        if length == 126 {
            guard bytes.count - start >= 4 else { return nil }
            length = Int(bytes[start + 2]) << 8 | Int(bytes[start + 3])
            offset = 4
        } else if length == 127 {
            guard bytes.count - start >= 10 else { return nil }
            length = 0
            for index in 2..<10 { length = length << 8 | Int(bytes[start + index]) }
            offset = 10
        }
        let end = start + offset + length
        return bytes.count >= end ? end : nil
    }

    /// Frames until one matches; the skipped ones are returned too (in order).
    func waitForFrame(
        timeout: Duration = RawClient.defaultTimeout,
        where predicate: (TestFrames.ServerFrame) -> Bool
    ) async throws -> (frame: TestFrames.ServerFrame, skipped: [TestFrames.ServerFrame]) {
        let deadline = ContinuousClock.now + timeout
        var skipped: [TestFrames.ServerFrame] = []
        while true {
            let frame = try await self.nextFrame(timeout: max(deadline - ContinuousClock.now, .zero))
            if predicate(frame) { return (frame, skipped) }
            skipped.append(frame)
        }
    }

    /// The next `count` frames, skipping Pings (heartbeats) unless asked to keep them.
    func nextFrames(_ count: Int, timeout: Duration = RawClient.defaultTimeout) async throws -> [TestFrames.ServerFrame] {
        let deadline = ContinuousClock.now + timeout
        var frames: [TestFrames.ServerFrame] = []
        while frames.count < count {
            let frame = try await self.nextFrame(timeout: max(deadline - ContinuousClock.now, .zero))
            if frame.opcode != 0x9 { frames.append(frame) }
        }
        return frames
    }

    /// Waits until the server closed TCP. Returns the frames that arrived and were not consumed.
    @discardableResult
    func waitForClose(timeout: Duration = RawClient.defaultTimeout) async throws -> [TestFrames.ServerFrame] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let isClosed = self.isClosed
            if isClosed { break }
            if ContinuousClock.now >= deadline { throw RawClientError(description: "timed out waiting for the server to close TCP") }
            try await Task.sleep(for: .milliseconds(2))
        }
        return self.state.bytes.withLock { state in
            var frames: [TestFrames.ServerFrame] = []
            while let frame = Self.takeFrame(from: &state) { frames.append(frame) }
            return frames
        }
    }

    /// Expects a Close frame (skipping anything before it), then TCP closed by the server.
    /// Returns the close code.
    func expectCloseThenEOF(timeout: Duration = RawClient.defaultTimeout) async throws -> UInt16? {
        let (close, _) = try await self.waitForFrame(timeout: timeout) { $0.opcode == 0x8 }
        try await self.waitForClose(timeout: timeout)
        return close.closeCode
    }
}

/// What a client's channel received, shared between its event loop and the test.
private final class RawClientState: Sendable {
    struct Bytes {
        /// Bytes received; those before `readIndex` were consumed by an HTTP response or a frame.
        var received: [UInt8] = []
        var readIndex = 0
        var closedAt: ContinuousClock.Instant?
        var totalBytesReceived = 0

        var isClosed: Bool { self.closedAt != nil }

        /// Marks bytes up to `end` consumed; compacts now and then so consuming stays cheap.
        mutating func consume(upTo end: Int) {
            self.readIndex = end
            if self.readIndex == self.received.count {
                self.received.removeAll(keepingCapacity: true)
                self.readIndex = 0
            } else if self.readIndex > 1 << 20 && self.readIndex > self.received.count / 2 {
                self.received.removeFirst(self.readIndex)
                self.readIndex = 0
            }
        }
    }

    let bytes = Mutex(Bytes())
}

/// Records inbound bytes and the close into the shared state.
private final class ByteCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    private let state: RawClientState

    init(state: RawClientState) {
        self.state = state
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.state.bytes.withLock { state in
            state.received.append(contentsOf: buffer.readableBytesView)
            state.totalBytesReceived += buffer.readableBytes
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.state.bytes.withLock { $0.closedAt = ContinuousClock.now }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Reset by peer and TLS errors just end the connection, which tests observe as a close.
        context.close(promise: nil)
    }
}

// MARK: - Client-side permessage-deflate

/// Raw deflate/inflate with a persistent context, as a permessage-deflate client would keep.
final class ClientDeflate {
    private var deflateStream = z_stream()
    private var inflateStream = z_stream()

    init() {
        precondition(sluice_deflateInit2(&self.deflateStream, 6, -15, 8) == Z_OK)
        precondition(sluice_inflateInit2(&self.inflateStream, -15) == Z_OK)
    }

    deinit {
        deflateEnd(&self.deflateStream)
        inflateEnd(&self.inflateStream)
    }

    /// Compresses one message: sync flush, trailing 00 00 FF FF removed (RFC 7692 §7.2.1).
    func compress(_ input: [UInt8], level: Int32? = nil) -> [UInt8] {
        if let level { _ = deflateParams(&self.deflateStream, level, Z_DEFAULT_STRATEGY) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        input.withUnsafeBufferPointer { inBytes in
            self.deflateStream.next_in = UnsafeMutablePointer(mutating: inBytes.baseAddress)
            self.deflateStream.avail_in = uInt(inBytes.count)
            repeat {
                let produced = chunk.withUnsafeMutableBufferPointer { out -> Int in
                    self.deflateStream.next_out = out.baseAddress
                    self.deflateStream.avail_out = uInt(out.count)
                    _ = deflate(&self.deflateStream, Z_SYNC_FLUSH)
                    return out.count - Int(self.deflateStream.avail_out)
                }
                output.append(contentsOf: chunk[..<produced])
            } while self.deflateStream.avail_out == 0
        }
        precondition(output.suffix(4) == [0x00, 0x00, 0xFF, 0xFF], "sync flush must end with an empty stored block")
        return Array(output.dropLast(4))
    }

    /// A deflate bomb: `count` copies of `byte` compressed as one message (a few hundred bytes
    /// per MiB), fed to zlib a MiB at a time so the test never holds the inflated size.
    func compressRepeated(_ byte: UInt8, count: Int) -> [UInt8] {
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        let block = [UInt8](repeating: byte, count: 1 << 20)
        var remaining = count
        while remaining > 0 {
            let take = min(remaining, block.count)
            remaining -= take
            let flush = remaining == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH
            block.withUnsafeBufferPointer { inBytes in
                self.deflateStream.next_in = UnsafeMutablePointer(mutating: inBytes.baseAddress)
                self.deflateStream.avail_in = uInt(take)
                repeat {
                    let produced = chunk.withUnsafeMutableBufferPointer { out -> Int in
                        self.deflateStream.next_out = out.baseAddress
                        self.deflateStream.avail_out = uInt(out.count)
                        _ = deflate(&self.deflateStream, flush)
                        return out.count - Int(self.deflateStream.avail_out)
                    }
                    output.append(contentsOf: chunk[..<produced])
                } while self.deflateStream.avail_out == 0 || self.deflateStream.avail_in > 0
            }
        }
        precondition(output.suffix(4) == [0x00, 0x00, 0xFF, 0xFF], "sync flush must end with an empty stored block")
        return Array(output.dropLast(4))
    }

    /// Inflates one message's payload (appending the 00 00 FF FF the sender stripped).
    func inflateMessage(_ payload: [UInt8]) throws -> [UInt8] {
        let input = payload + [0x00, 0x00, 0xFF, 0xFF]
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var status: Int32 = Z_OK
        input.withUnsafeBufferPointer { inBytes in
            self.inflateStream.next_in = UnsafeMutablePointer(mutating: inBytes.baseAddress)
            self.inflateStream.avail_in = uInt(inBytes.count)
            repeat {
                let produced = chunk.withUnsafeMutableBufferPointer { out -> Int in
                    self.inflateStream.next_out = out.baseAddress
                    self.inflateStream.avail_out = uInt(out.count)
                    status = inflate(&self.inflateStream, Z_SYNC_FLUSH)
                    return out.count - Int(self.inflateStream.avail_out)
                }
                output.append(contentsOf: chunk[..<produced])
            } while status == Z_OK && (self.inflateStream.avail_in > 0 || self.inflateStream.avail_out == 0)
        }
        guard status == Z_OK || status == Z_BUF_ERROR || status == Z_STREAM_END else {
            throw RawClientError(description: "inflate failed with status \(status)")
        }
        return output
    }
}

@available(*, unavailable)
extension ClientDeflate: Sendable {}
