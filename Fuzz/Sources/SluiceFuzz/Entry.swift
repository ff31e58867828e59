#if canImport(Glibc)
import Glibc
#endif

/// One libFuzzer binary, many targets: `SLUICE_FUZZ_TARGET=<name>` picks the one to run (one
/// binary builds much faster than eleven). `SLUICE_FUZZ_TARGET=list` prints the names.
enum FuzzTargets {
    /// Name, what it feeds, and the function that checks one input.
    static let all: [(name: String, summary: String, run: @Sendable (UnsafeRawBufferPointer) -> Void)] = [
        ("frame", "WebSocket frame parser + message assembly, UTF-8 validation and inflate, against reference decoders",
         FrameTarget.run),
        ("utf8", "UTF8Validator against Swift's own UTF-8 decoding, split anywhere, failing at the first bad byte",
         UTF8Target.run),
        ("inflate", "permessage-deflate inflate with a size limit, against zlib fed in one piece", InflateTarget.run),
        ("upgrade", "the whole server pipeline (HTTP parser, handshake, routes, upgrade, WebSocket handler) on an EmbeddedChannel",
         UpgradeTarget.run),
        ("sse", "the SSE parser, split anywhere, against a whole-input parse", SSETarget.run),
        ("resp", "the RESP reader (hiredis), split anywhere, values re-encoded and re-read", RESPTarget.run),
        ("client-message", "the sluice.v1 client message decoder: wire codes, limits, re-encoding", ClientMessageTarget.run),
        ("openai-request", "the OpenAI /v1/chat/completions request decoder", OpenAIRequestTarget.run),
        ("traceparent", "W3C traceparent parsing against a reference grammar, round trip", TraceparentTarget.run),
        ("cron", "cron expressions against a reference parser and calendar; next(after:) is later and matches",
         CronTarget.run),
        ("config", "the configuration loader (YAML text + SLUICE_* environment): ConfigurationError or a valid configuration",
         ConfigurationTarget.run),
    ]

    nonisolated(unsafe) static var selected: ((UnsafeRawBufferPointer) -> Void)?

    static func select() {
        let name = getenv("SLUICE_FUZZ_TARGET").map { String(cString: $0) } ?? ""
        if let target = Self.all.first(where: { $0.name == name }) {
            Self.selected = target.run
            return
        }
        if name != "list" {
            let message = "sluice-fuzz: set SLUICE_FUZZ_TARGET to one of these (got \"\(name)\"):\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
        }
        for target in Self.all {
            print("\(target.name)\t\(target.summary)")
        }
        exit(name == "list" ? 0 : 2)
    }
}

@_cdecl("LLVMFuzzerInitialize")
public func sluiceFuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    FuzzTargets.select()
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func sluiceFuzzTestOneInput(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let run = FuzzTargets.selected else { return 0 }
    run(UnsafeRawBufferPointer(start: count > 0 ? start : nil, count: count))
    return 0
}

/// A line on stderr (stdout may be closed by `-close_fd_mask`): for `SLUICE_FUZZ_VERBOSE` runs.
func debugLog(_ message: String) {
    let line = message + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

/// An invariant of a target: a violation is a finding, reported as a crash with this message.
func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition() {
        fatalError("invariant violated: \(message())", file: file, line: line)
    }
}

/// Reads structured choices off the front of a fuzz input (like LLVM's FuzzedDataProvider):
/// an exhausted input reads as zeros, so every input is valid.
struct FuzzInput {
    private(set) var bytes: UnsafeRawBufferPointer.SubSequence

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes[...]
    }

    var isEmpty: Bool { self.bytes.isEmpty }
    var count: Int { self.bytes.count }

    mutating func byte() -> UInt8 {
        guard let first = self.bytes.first else { return 0 }
        self.bytes = self.bytes.dropFirst()
        return first
    }

    mutating func bool() -> Bool { self.byte() & 1 == 1 }

    /// Two bytes, big-endian.
    mutating func uint16() -> UInt16 { UInt16(self.byte()) << 8 | UInt16(self.byte()) }

    mutating func uint64() -> UInt64 {
        var value: UInt64 = 0
        for _ in 0..<8 { value = value << 8 | UInt64(self.byte()) }
        return value
    }

    /// Up to `count` bytes.
    mutating func take(_ count: Int) -> [UInt8] {
        let taken = self.bytes.prefix(max(count, 0))
        self.bytes = self.bytes.dropFirst(taken.count)
        return Array(taken)
    }

    /// Everything left.
    mutating func rest() -> [UInt8] { self.take(self.bytes.count) }
}

/// Cuts a byte sequence into reads the way a socket might, from a seed byte: the low two bits
/// choose the style (all at once, single bytes, small or larger random pieces).
struct Splitter {
    private var state: UInt32
    private let style: UInt8

    init(seed: UInt8) {
        self.state = UInt32(seed) &* 2_654_435_761 | 1
        self.style = seed & 3
    }

    private mutating func random() -> UInt32 {
        // xorshift32: deterministic, so a reproducer replays the same cuts.
        self.state ^= self.state << 13
        self.state ^= self.state >> 17
        self.state ^= self.state << 5
        return self.state
    }

    mutating func nextLength(remaining: Int) -> Int {
        let length: Int
        switch self.style {
        case 0: length = remaining
        case 1: length = 1
        case 2: length = 1 + Int(self.random() % 7)
        default: length = 1 + Int(self.random() % 200)
        }
        return min(length, remaining)
    }

    mutating func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var pieces: [ArraySlice<UInt8>] = []
        var index = 0
        while index < bytes.count {
            let length = self.nextLength(remaining: bytes.count - index)
            pieces.append(bytes[index..<index + length])
            index += length
        }
        return pieces
    }
}
