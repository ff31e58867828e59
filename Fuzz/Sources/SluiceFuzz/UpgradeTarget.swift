#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOEmbedded
import NIOHTTP1
@testable import WSServer

/// The whole server pipeline of one connection (`WebSocketServer.configurePipeline`) on an
/// `EmbeddedChannel`, fed raw bytes in arbitrary reads: NIO's HTTP parser, the handshake, the
/// routes (`/health`, `/ready`, an application route with a body, 404/426), the upgrade on the
/// first or a later kept-alive request, then the WebSocket handler with the echo application,
/// timers (handshake timeout, heartbeats, close timeout) and backpressure.
///
/// Checks: what the server writes is well-formed HTTP responses, then after a 101 well-formed
/// unmasked server frames (text frames valid UTF-8, nothing after a Close), and once the channel
/// closes nothing of it is left behind: no registry entry, no heartbeat membership, no connection
/// counted (in total or per address), no byte held in the memory budget.
///
/// Input: [options] [more options] [split seed] bytes...
/// options bit 0: deflate offered by the server; 1: an Origin allow-list; 2: no connection slot
/// left; 3: draining; 4: small message limit; 5: small frame limit; 6: the peer stops reading
/// half-way; 7: the application refuses upgrades whose URI contains "refuse".
/// more options bit 0: one proxy in front (X-Forwarded-For counts); 1: one connection per address;
/// 2: a 16 KiB memory budget; 3: no per-address cap.
enum UpgradeTarget {
    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let options = input.byte()
        let moreOptions = input.byte()
        var splitter = Splitter(seed: input.byte())
        let bytes = input.rest()

        var configuration = WebSocketServerConfiguration()
        configuration.deflate.enabled = options & 1 != 0
        if options & 2 != 0 { configuration.allowedOrigins = ["https://chat.example"] }
        if options & 4 != 0 { configuration.maxConnections = 0 }
        if options & 16 != 0 { configuration.maxMessageSize = 1000 }
        if options & 32 != 0 { configuration.maxFrameSize = 125 }
        if moreOptions & 1 != 0 { configuration.forwardedForHops = 1 }
        if moreOptions & 2 != 0 { configuration.maxConnectionsPerAddress = 1 }
        if moreOptions & 4 != 0 { configuration.memoryBudget = 16 << 10 }
        if moreOptions & 8 != 0 { configuration.maxConnectionsPerAddress = 0 }
        let shared = ServerShared(
            configuration: configuration, application: FuzzApplication(refuses: options & 128 != 0),
            httpRoutes: FuzzRoutes(), readiness: nil)
        if options & 8 != 0 { shared.startDraining() }

        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        do {
            // As the listener's child channel initializer does (the peer is known, the channel not
            // active yet): count the connection, then build the pipeline; then it becomes active.
            let peer = try SocketAddress(ipAddress: "192.0.2.1", port: 50000)
            channel.remoteAddress = peer
            if WebSocketServer.admit(channel, shared: shared, tls: false) {
                try WebSocketServer.configurePipeline(channel, shared: shared, sslContext: nil)
            }
            try channel.connect(to: peer).wait()
        } catch {
            fatalError("pipeline setup failed: \(error)")
        }

        var output: [UInt8] = []
        let pieces = splitter.split(bytes)
        for (index, piece) in pieces.enumerated() {
            guard channel.isActive else { break }
            if options & 64 != 0 && index == pieces.count / 2 {
                channel.isWritable = false
                channel.pipeline.fireChannelWritabilityChanged()
            }
            // An error reaching the end of the pipeline is what NIO logs and drops; the
            // connection handling around it is what is under test.
            _ = try? channel.writeInbound(ByteBuffer(bytes: piece))
            loop.run()
            Self.drain(channel, into: &output)
        }
        if options & 64 != 0 && channel.isActive {
            channel.isWritable = true
            channel.pipeline.fireChannelWritabilityChanged()
        }
        // Timers: handshake timeout, heartbeats and their timeout, the close timeout.
        for _ in 0..<4 {
            loop.advanceTime(by: .seconds(15))
            Self.drain(channel, into: &output)
        }
        _ = try? channel.close().wait()
        loop.run()
        Self.drain(channel, into: &output)
        _ = try? channel.finish(acceptAlreadyClosed: true)

        require(shared.registry.count == 0, "a closed connection is still in the registry")
        require(shared.connections.total == 0, "a closed connection is still counted")
        require(shared.connections.count(for: "192.0.2.1") == 0, "a closed connection still counts against its address")
        require(shared.budget.used == 0, "a closed connection still holds \(shared.budget.used) bytes of the memory budget")
        require(shared.connectionSettings.heartbeats.scheduler(for: loop).count == 0,
                "a closed connection is still in the heartbeat scheduler")
        if getenv("SLUICE_FUZZ_VERBOSE") != nil {
            debugLog("server wrote: \(String(decoding: output, as: UTF8.self).debugDescription)")
        }
        // A response to HEAD has a Content-Length and no body; the checker needs to know one may come.
        let mayHaveHEAD = bytes.indices.contains { bytes[$0...].starts(with: "HEAD".utf8) }
        ServerOutputChecker(headRequests: mayHaveHEAD).check(output)
    }

    private static func drain(_ channel: EmbeddedChannel, into output: inout [UInt8]) {
        while let buffer = try? channel.readOutbound(as: ByteBuffer.self) {
            output += buffer.readableBytesView
        }
    }
}

/// Echo, with an optional refusal in `admit` (the application's own 4xx path).
struct FuzzApplication: WebSocketApplication {
    let refuses: Bool

    func admit(_ request: UpgradeRequest) -> UpgradeAdmission {
        if self.refuses && request.head.uri.contains("refuse") {
            return .refuse(HTTPRefusal(status: .unauthorized, body: #"{"error":"refused"}"#, headers: ["WWW-Authenticate": "Bearer"]))
        }
        return .admit(nil)
    }

    func makeDelegate(for connection: WebSocketConnectionInfo) -> any WebSocketConnectionDelegate {
        EchoDelegate.shared
    }
}

/// An application route that reads a body: `/echo` answers with the body's length, `/stream`
/// with a streamed response in three writes.
struct FuzzRoutes: HTTPRouteProvider {
    func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
        if head.uri.hasPrefix("/echo") { return Responder(streams: false) }
        if head.uri.hasPrefix("/stream") { return Responder(streams: true) }
        return nil
    }

    final class Responder: HTTPRouteResponder {
        let streams: Bool
        init(streams: Bool) { self.streams = streams }

        func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
            guard self.streams else {
                writer.respond(status: .ok, contentType: "text/plain", body: ByteBuffer(string: "\(body.readableBytes)\n"))
                return
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/event-stream")
            writer.writeHead(status: .ok, headers: headers)
            writer.writeBody(ByteBuffer(string: "data: \(body.readableBytes)\n\n"), flush: true)
            writer.writeBody(ByteBuffer(string: "data: [DONE]\n\n"), flush: false)
            writer.end()
        }

        func clientDisconnected() {}
    }
}

/// Reads what a server wrote to one connection: HTTP responses, and after a 101, WebSocket frames.
struct ServerOutputChecker {
    /// The client may have sent HEAD requests (whose responses have a Content-Length and no body).
    let headRequests: Bool

    func check(_ output: [UInt8]) {
        var index = 0
        while index < output.count {
            let (status, headers, headEnd) = Self.responseHead(output, from: index)
            index = headEnd
            if (100...199).contains(status) && status != 101 { continue }  // 100 Continue: the final answer follows
            if status == 101 {
                require(headers["upgrade"]?.lowercased() == "websocket", "101 without Upgrade: websocket")
                require(headers["sec-websocket-accept"] != nil, "101 without Sec-WebSocket-Accept")
                self.checkFrames(output[index...], compressed: headers["sec-websocket-extensions"] != nil)
                return
            }
            if let length = headers["content-length"] {
                if self.headRequests && (index == output.count || output[index...].starts(with: "HTTP/1.".utf8)) {
                    continue  // the answer to a HEAD request
                }
                guard let count = Int(length), count >= 0, index + count <= output.count else {
                    fatalError("Content-Length \(length) does not match the \(output.count - index) bytes written")
                }
                index += count
            } else if headers["transfer-encoding"]?.lowercased() == "chunked" {
                if self.headRequests && (index == output.count || output[index...].starts(with: "HTTP/1.".utf8)) {
                    continue  // the answer to a HEAD request: no body, not even the last chunk
                }
                index = Self.skipChunkedBody(output, from: index)
            } else {
                // Neither a length nor chunked (an HTTP/1.0 client's stream): the body is
                // everything up to the close, so nothing may follow it but more of it.
                require(headers["connection"]?.lowercased() == "close", "a response without a length on a connection kept open")
                return
            }
        }
    }

    /// Status, headers (lowercased names; the last value wins) and the index after the blank line.
    static func responseHead(_ output: [UInt8], from start: Int) -> (Int, [String: String], Int) {
        let terminator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = Self.find(terminator, in: output, from: start) else {
            fatalError("incomplete response head: \(String(decoding: output[start...].prefix(200), as: UTF8.self))")
        }
        let text = String(decoding: output[start..<end], as: UTF8.self)
        let lines = text.components(separatedBy: "\r\n")
        let statusLine = lines[0].split(separator: " ", maxSplits: 2)
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]), (100...599).contains(status) else {
            fatalError("not an HTTP status line: \(lines[0])")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { fatalError("malformed header line: \(line)") }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: " ")
        }
        return (status, headers, end + terminator.count)
    }

    static func skipChunkedBody(_ output: [UInt8], from start: Int) -> Int {
        var index = start
        while true {
            guard let lineEnd = Self.find(Array("\r\n".utf8), in: output, from: index),
                  let size = Int(String(decoding: output[index..<lineEnd], as: UTF8.self), radix: 16)
            else { fatalError("malformed chunk size") }
            index = lineEnd + 2 + size + 2
            require(index <= output.count, "chunk runs past the end of what was written")
            if size == 0 { return index }
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard haystack.count >= needle.count, start <= haystack.count - needle.count else { return nil }
        for index in start...(haystack.count - needle.count) where haystack[index..<index + needle.count].elementsEqual(needle) {
            return index
        }
        return nil
    }

    /// Server frames: never masked, known opcodes, control frames whole and short, Close codes
    /// valid, text valid UTF-8 (uncompressed), and nothing after a Close.
    func checkFrames(_ bytes: ArraySlice<UInt8>, compressed: Bool) {
        var index = bytes.startIndex
        var closed = false
        while index < bytes.endIndex {
            require(!closed, "a frame after the server's Close")
            require(bytes.endIndex - index >= 2, "a partial frame header")
            let first = bytes[index], second = bytes[index + 1]
            require(first & 0x30 == 0, "RSV2/RSV3 set by the server")
            require(first & 0x40 == 0 || compressed, "RSV1 without permessage-deflate")
            require(second & 0x80 == 0, "a masked server frame")
            let opcode = first & 0x0F
            require([1, 2, 8, 9, 10].contains(opcode), "server opcode \(opcode)")
            var length = Int(second & 0x7F)
            index += 2
            if length == 126 {
                require(bytes.endIndex - index >= 2, "a partial length")
                length = Int(bytes[index]) << 8 | Int(bytes[index + 1])
                require(length >= 126, "a length not in its shortest form")
                index += 2
            } else if length == 127 {
                require(bytes.endIndex - index >= 8, "a partial length")
                length = bytes[index..<index + 8].reduce(0) { $0 << 8 | Int($1) }
                require(length > 0xFFFF, "a length not in its shortest form")
                index += 8
            }
            require(bytes.endIndex - index >= length, "a frame longer than what was written")
            let payload = bytes[index..<index + length]
            index += length
            if opcode >= 8 {
                require(first & 0x80 != 0 && length <= 125, "a fragmented or long control frame")
            }
            if opcode == 8 {
                closed = true
                if length > 0 {
                    require(length >= 2, "a one-byte Close payload")
                    let code = WebSocketCloseCode(rawValue: UInt16(payload.first!) << 8 | UInt16(payload.dropFirst().first!))
                    require(code.isValidOnWire, "the server sent Close code \(code)")
                    require(String(validating: payload.dropFirst(2), as: UTF8.self) != nil, "a Close reason that is not UTF-8")
                }
            }
            if opcode == 1 && first & 0x40 == 0 {
                require(String(validating: payload, as: UTF8.self) != nil, "a text frame that is not UTF-8")
            }
        }
    }
}
