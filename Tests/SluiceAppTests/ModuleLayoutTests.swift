import Foundation
import Testing

/// Imports point down only (docs and /work/shared/DESIGN.md "Modules"): every module directory
/// has an allow-list of what its files may import, and the test reads the `import` lines (the
/// `#include` lines of the C shims) of every file. A directory without an entry fails, so a new
/// module cannot slip past; so does an entry whose directory is gone.
@Suite struct ModuleLayoutTests {
    /// The platform, allowed everywhere.
    static let platform: Set<String> = ["Foundation", "Dispatch", "Glibc", "Musl", "Darwin", "Synchronization"]
    /// SwiftNIO and its siblings ("NIO*" in DESIGN).
    static let nio: Set<String> = [
        "NIOCore", "NIOPosix", "NIOHTTP1", "NIOSSL", "NIOTLS", "NIOConcurrencyHelpers", "NIOFoundationCompat", "NIOWebSocket",
    ]
    /// Logging and metrics APIs that libraries take (only SluiceApp bootstraps the backends).
    static let observability: Set<String> = ["Logging", "Metrics"]

    /// What the files under each directory (relative to the repository) may import, besides
    /// `platform`. Sluice's own modules are listed by name; the order of the map is the layering,
    /// lowest first.
    static let allowed: [String: Set<String>] = [
        // C shims: the system library headers they wrap, nothing else.
        "Sources/CZlib": ["zlib.h"],
        "Sources/CHiredis": ["stdlib.h", "hiredis/hiredis.h", "hiredis/read.h"],
        // The wire messages: values only.
        "Sources/SluiceProtocol": ["NIOCore"],
        // Sockets, HTTP, WebSocket frames, drain. Never Sessions, Inference, Storage or RedisClient.
        // Crypto (SHA-1 of Sec-WebSocket-Accept) is beyond DESIGN's list.
        "Sources/WSServer": nio.union(observability).union(["SluiceProtocol", "CZlib", "ServiceLifecycle", "Crypto"]),
        // Upstream engines over their own HTTP client. Never WSServer or Sessions.
        "Sources/Inference": nio.union(observability).union(["SluiceProtocol"]),
        // Redis over NIO: knows nothing of Sluice. Crypto (SHA-1 of Lua scripts for EVALSHA) is
        // beyond DESIGN's list.
        "Sources/RedisClient": nio.union(["CHiredis", "ServiceLifecycle", "Logging", "Crypto"]),
        // Storage knows nothing of chats, sockets or Redis: Sessions decides what to store.
        "Sources/Storage": nio.union(observability).union(["PostgresNIO", "SQLiteNIO", "ServiceLifecycle"]),
        // Policy decides (who, how much); Sessions applies it to chats and sockets.
        "Sources/Policy": nio.union(observability).union(["RedisClient", "Crypto", "JWTKit"]),
        // Telemetry is a leaf: a tracer and an exporter, for whoever wires them.
        "Sources/Telemetry": nio.union(observability).union(["Tracing", "ServiceLifecycle"]),
        // Tools are called by generations; they know nothing of sockets, queues or storage.
        "Sources/Tools": nio.union(["Inference", "Logging"]),
        // Jobs runs work (queue, workers, kinds); gateways talk to clients about it. Its live
        // `job.*` events are written with SluiceProtocol's encoder (the protocol is written once).
        "Sources/Jobs": nio.union(observability).union(["RedisClient", "Storage", "Inference", "SluiceProtocol", "ServiceLifecycle"]),
        // Everything above, speaking the swift-distributed-tracing API only (the exporter,
        // Telemetry, is wired in SluiceApp).
        "Sources/Sessions": nio.union(observability).union([
            "WSServer", "Inference", "SluiceProtocol", "RedisClient", "Storage", "Policy", "Jobs", "Tools",
            "Tracing", "Crypto", "ServiceLifecycle",
        ]),
        // The HTTP routes: adapters between their wire formats and Sessions' generation pipeline and
        // stores (SSE, OpenAI-compatible, history, jobs, presence, admin). Never RedisClient or
        // Storage directly: what they read goes through Sessions.
        "Sources/HTTPAPI": nio.union(["Sessions", "WSServer", "Inference", "SluiceProtocol", "Policy", "Jobs", "Tools", "Tracing"]),
        // Configuration, backends and the service group: everything above.
        "Sources/SluiceApp": nio.union(observability).union([
            "WSServer", "Inference", "SluiceProtocol", "RedisClient", "Storage", "Policy", "Jobs", "Tools", "Sessions", "HTTPAPI", "Telemetry",
            "Tracing", "ServiceLifecycle", "CoreMetrics", "Prometheus", "Yams",
        ]),
        // The terminal chat client: the protocol and a socket.
        "Sources/ChatClient": nio.union(["SluiceProtocol"]),
        // The executable only parses arguments.
        "Sources/sluice": ["SluiceApp", "ChatClient", "ArgumentParser"],
        // The load-test harness: the protocol and a socket.
        "loadtest/Sources/SluiceLoadTest": nio.union(["SluiceProtocol", "ArgumentParser", "Histogram"]),
        // Test support: loopback clients, fake upstreams, server processes, storage stubs. A regular
        // target (built by `swift build -c release` too), so no `@testable import` (checked below).
        // Crypto signs test JWTs.
        "Tests/SluiceTestSupport": nio.union(["CZlib", "Crypto", "Storage"]),
        // Process tests: the real binaries as child processes. The libraries only for expected
        // values and to read what the processes left in Redis or a database; Crypto signs JWTs.
        "Tests/ProcessTests": [
            "Testing", "SluiceTestSupport", "SluiceProtocol", "Inference", "RedisClient", "Storage",
            "NIOCore", "NIOPosix", "Logging", "Crypto",
        ],
    ]

    /// What a test target's files may `@testable import` (regular targets: nothing). Process tests
    /// reach the gateway through its processes, never its internals; SluiceTestSupport's helpers
    /// are internal to it.
    static let testableImports: [String: Set<String>] = [
        "Tests/ProcessTests": ["SluiceTestSupport"],
    ]

    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The module directories that exist: `Sources/*`, `loadtest/Sources/*`, `Tests/SluiceTestSupport`,
    /// `Tests/ProcessTests`.
    static func moduleDirectories() throws -> [String] {
        var directories: [String] = []
        for parent in ["Sources", "loadtest/Sources"] {
            let url = Self.repository.appendingPathComponent(parent)
            for name in try FileManager.default.contentsOfDirectory(atPath: url.path) {
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: url.appendingPathComponent(name).path, isDirectory: &isDirectory),
                   isDirectory.boolValue {
                    directories.append("\(parent)/\(name)")
                }
            }
        }
        directories += ["Tests/SluiceTestSupport", "Tests/ProcessTests"]
        return directories.sorted()
    }

    /// One `import` (or `#include`) of a source line: the module (or header) and whether it is
    /// `@testable`; nil for any other line.
    static func imported(by line: Substring, swift: Bool) -> (name: String, testable: Bool)? {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        if !swift {
            guard words.count >= 2, words[0] == "#include" else { return nil }
            return (String(words[1].dropFirst().dropLast()), false)  // <zlib.h> or "shim.h"
        }
        guard let importIndex = words.firstIndex(of: "import"), importIndex + 1 < words.count else { return nil }
        let modifiers = ["public", "package", "internal", "fileprivate", "private"]
        guard words[..<importIndex].allSatisfy({ $0.hasPrefix("@") || modifiers.contains(String($0)) }) else { return nil }
        var nameIndex = importIndex + 1
        // `import struct NIOCore.ByteBuffer`: the module is before the dot.
        if ["struct", "class", "enum", "protocol", "func", "typealias", "var", "let"].contains(String(words[nameIndex])) {
            nameIndex += 1
            guard nameIndex < words.count else { return nil }
        }
        let module = words[nameIndex].split(separator: ".").first.map(String.init) ?? ""
        return (module, words[..<importIndex].contains("@testable"))
    }

    @Test func everyModuleHasAnAllowList() throws {
        let directories = try Self.moduleDirectories()
        #expect(directories.count >= 16, "found \(directories)")
        for directory in directories {
            #expect(Self.allowed[directory] != nil, "\(directory) has no entry in ModuleLayoutTests.allowed: say what it may import")
        }
        for directory in Self.allowed.keys {
            #expect(directories.contains(directory), "\(directory) is listed in ModuleLayoutTests.allowed but does not exist")
        }
    }

    @Test func importsAreAllowed() throws {
        var checked = 0
        for directory in try Self.moduleDirectories() {
            guard let allowed = Self.allowed[directory] else { continue }  // reported by everyModuleHasAnAllowList
            let root = Self.repository.appendingPathComponent(directory)
            let files = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)?
                .compactMap { $0 as? URL }.filter { ["swift", "h", "c"].contains($0.pathExtension) } ?? []
            #expect(!files.isEmpty, "no sources found in \(directory)")
            for file in files {
                let swift = file.pathExtension == "swift"
                let text = try String(contentsOf: file, encoding: .utf8)
                for line in text.split(separator: "\n") {
                    guard let (name, testable) = Self.imported(by: line, swift: swift) else { continue }
                    #expect(allowed.contains(name) || (swift && Self.platform.contains(name)),
                            "\(directory)/\(file.lastPathComponent) imports \(name), which is not in its allow-list")
                    // A regular target is built in release too, where nothing is compiled for testing.
                    #expect(!testable || Self.testableImports[directory, default: []].contains(name),
                            "\(directory)/\(file.lastPathComponent) uses @testable import \(name)")
                }
                checked += 1
            }
        }
        #expect(checked > 100)
    }

    /// The reader itself: the forms of `import` the code uses are recognised.
    @Test func importLinesAreRecognised() {
        func read(_ line: Substring, swift: Bool = true) -> String? {
            Self.imported(by: line, swift: swift).map { "\($0.testable ? "@testable " : "")\($0.name)" }
        }
        #expect(read("import NIOCore") == "NIOCore")
        #expect(read("    import Glibc") == "Glibc")
        #expect(read("@testable import WSServer") == "@testable WSServer")
        #expect(read("@preconcurrency public import Foo") == "Foo")
        #expect(read("import struct NIOCore.ByteBuffer") == "NIOCore")
        #expect(read("#include <hiredis/read.h>", swift: false) == "hiredis/read.h")
        #expect(read("// import Sessions") == nil)
        #expect(read("let x = 1") == nil)
    }
}
