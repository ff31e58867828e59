import Foundation
import Testing

/// Imports point down only (see README "Architecture"): checks the `import` lines of every
/// source file so the layout cannot drift silently.
@Suite struct ModuleLayoutTests {
    /// Modules each target must never import.
    static let forbidden: [String: Set<String>] = [
        "WSServer": ["Sessions", "Inference", "SluiceApp", "RedisClient"],
        "Inference": ["WSServer", "Sessions", "SluiceApp", "RedisClient"],
        "RedisClient": ["WSServer", "Sessions", "Inference", "SluiceApp", "SluiceProtocol"],
        "Sessions": ["SluiceApp", "Telemetry"],
        // Storage knows nothing of chats, sockets or Redis: Sessions decides what to store.
        "Storage": ["WSServer", "Sessions", "Inference", "SluiceApp", "RedisClient", "SluiceProtocol"],
        // Policy decides (who, how much); Sessions applies it to chats and sockets.
        "Policy": ["WSServer", "Sessions", "Inference", "SluiceApp", "Storage", "SluiceProtocol", "Telemetry"],
        // Telemetry is a leaf: a tracer and an exporter, for whoever wires them.
        "Telemetry": ["WSServer", "Sessions", "Inference", "SluiceApp", "RedisClient", "Storage", "SluiceProtocol"],
        // Jobs runs work (queue, workers, kinds); gateways talk to clients about it. Its live
        // `job.*` events are written with SluiceProtocol's encoder (the protocol is written once).
        "Jobs": ["WSServer", "Sessions", "SluiceApp", "Policy", "Telemetry", "Tools"],
        // Tools are called by generations; they know nothing of sockets, queues or storage.
        "Tools": ["WSServer", "Sessions", "SluiceApp", "RedisClient", "Storage", "Jobs", "Policy", "Telemetry"],
        // Sessions speaks the swift-distributed-tracing API only; the exporter is wired in SluiceApp.
        "sluice": ["WSServer", "Sessions", "Inference", "RedisClient", "Storage"],  // the executable only parses arguments
    ]

    @Test func importsPointDownOnly() throws {
        let sources = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources")
        var checked = 0
        for (target, banned) in Self.forbidden {
            let directory = sources.appendingPathComponent(target)
            let files = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil)?
                .compactMap { $0 as? URL }.filter { $0.pathExtension == "swift" } ?? []
            #expect(!files.isEmpty, "no sources found for \(target)")
            for file in files {
                let text = try String(contentsOf: file, encoding: .utf8)
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ")
                    guard let importIndex = words.firstIndex(of: "import"), importIndex + 1 < words.count else { continue }
                    guard words[..<importIndex].allSatisfy({ $0.hasPrefix("@") || ["public", "package", "internal"].contains($0) })
                    else { continue }
                    let module = String(words[importIndex + 1])
                    #expect(!banned.contains(module), "\(file.lastPathComponent) in \(target) imports \(module)")
                }
                checked += 1
            }
        }
        #expect(checked > 10)
    }
}
