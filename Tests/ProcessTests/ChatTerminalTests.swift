import Foundation
@testable import SluiceTestSupport
import Testing

/// `sluice chat` as a person uses it: a real `sluice serve` (built-in simulator) and the
/// client in a pseudo-terminal driven by tmux — type, watch the answer stream, Ctrl-C it,
/// `/new`, Ctrl-D. Needs `tmux` on PATH (CI installs it) and the built `sluice` binary
/// (`swift build --build-tests` builds it).
@Suite(.serialized, .timeLimit(.minutes(15)))
struct ChatTerminalTests {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let sluice = Self.packageRoot.appendingPathComponent(".build/debug/sluice").path

    @Test func typeStreamCancelNewAndQuit() async throws {
        guard let tmux = Self.findExecutable("tmux") else {
            Issue.record("tmux is not installed: this test drives `sluice chat` in a pseudo-terminal with tmux. Install it (e.g. `apt-get install tmux` or `brew install tmux`).")
            return
        }
        try #require(FileManager.default.isExecutableFile(atPath: Self.sluice),
                     "\(Self.sluice) is missing; run `swift build --build-tests` first")

        let server = try ServerProcess.start(executable: Self.sluice)
        defer { server.stop() }
        let port = try await server.port(timeout: .seconds(10))

        // A private tmux server (own socket, no user config), so nothing else is touched and
        // killing it at the end ends exactly what this test started.
        let terminal = Tmux(executable: tmux, socket: "sluice-chat-test-\(UUID().uuidString.prefix(8))")
        defer { terminal.killServer() }
        let command = "\(Self.shellQuoted(Self.sluice)) chat --url ws://127.0.0.1:\(port)/v1/ws"
        try terminal.run(["new-session", "-d", "-s", "chat", "-x", "120", "-y", "40", command])

        let banner = try await terminal.waitForPane("banner and prompt", timeout: .seconds(10)) {
            $0.contains("model sluice-simulator") && Self.lastLine($0) == "you>"
        }
        #expect(banner.contains("connected to ws://127.0.0.1:\(port)/v1/ws"))

        // The simulator answers 120 tokens at ~50/s after 200 ms: plenty of time to see it grow.
        let prompt = "tell me a long story"
        try terminal.sendKeys(literal: prompt)
        try terminal.sendKeys("Enter")
        let firstGlimpse = try await terminal.waitForPane("the answer to start", timeout: .seconds(5)) {
            Self.answer(in: $0, after: prompt).count >= 10
        }
        let seen = Self.answer(in: firstGlimpse, after: prompt)
        _ = try await terminal.waitForPane("the answer to grow while streaming", timeout: .seconds(5)) {
            Self.answer(in: $0, after: prompt).count > seen.count + 5
        }

        try terminal.sendKeys("C-c")
        let cancelled = try await terminal.waitForPane("[cancelled · N tokens] and a new prompt", timeout: .seconds(5)) {
            $0.contains("[cancelled · ") && Self.lastLine($0) == "you>"
        }
        // Cancelled mid-answer: fewer tokens than the full 120.
        let status = try #require(cancelled.firstMatch(of: /\[cancelled · (\d+) tokens?\]/))
        let tokens = try #require(Int(status.1))
        #expect(tokens > 0 && tokens < 120, "\(cancelled)")

        try terminal.sendKeys(literal: "/new")
        try terminal.sendKeys("Enter")
        _ = try await terminal.waitForPane("/new to confirm", timeout: .seconds(5)) {
            $0.contains("(new conversation)") && Self.lastLine($0) == "you>"
        }

        try terminal.sendKeys("C-d")
        try await terminal.waitForSessionEnd(timeout: .seconds(5))
    }

    // MARK: Helpers

    /// The text after the prompt line, joined across the pane's wrapped lines.
    static func answer(in pane: String, after prompt: String) -> String {
        let lines = pane.components(separatedBy: "\n")
        guard let index = lines.firstIndex(where: { $0.hasSuffix(prompt) }) else { return "" }
        return lines[(index + 1)...].prefix { !$0.hasPrefix("[") && !$0.hasPrefix("you>") }.joined()
    }

    static func lastLine(_ pane: String) -> String? {
        pane.components(separatedBy: "\n").last { !$0.trimmingCharacters(in: .whitespaces).isEmpty }?
            .trimmingCharacters(in: .whitespaces)
    }

    static func findExecutable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin:/usr/local/bin:/opt/homebrew/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func shellQuoted(_ string: String) -> String {
        "'" + string.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

/// `sluice serve` on a free port (`--port 0`), its log in a temporary file.
struct ServerProcess {
    let child: ChildProcess
    let logPath: String

    static func start(executable: String) throws -> ServerProcess {
        let logPath = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-chat-test-\(UUID().uuidString).log").path
        // Only built-in defaults: no config file or SLUICE_* settings from the environment.
        let environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") }
        let child = try ChildProcess(
            executable, ["serve", "--host", "127.0.0.1", "--port", "0", "--log-level", "info", "--log-format", "text", "--database-url", "memory", "--admin-port", "0"],
            environment: environment, outputPath: logPath)
        return ServerProcess(child: child, logPath: logPath)
    }

    /// The port from the public listener's `listening` log line (the admin listener's says
    /// `sluice.listener=admin`).
    func port(timeout: Duration) async throws -> Int {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let lines = self.log.split(separator: "\n").filter { $0.hasSuffix("listening") && !$0.contains("sluice.listener=") }
            if let line = lines.first, let match = line.firstMatch(of: /sluice\.address=\S*:(\d+)/), let port = Int(match.1) { return port }
            guard self.child.isRunning else { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("sluice serve did not report a port within \(timeout):\n\(self.log)")
    }

    var log: String { (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? "" }

    /// SIGTERM (the server drains), then SIGKILL if it lingers; only this PID.
    func stop() {
        self.child.stop(grace: 5)
        try? FileManager.default.removeItem(atPath: self.logPath)
    }
}

/// A child started with `posix_spawn` and a clean signal mask. (Foundation's `Process` on
/// Linux starts children with most signals blocked: tmux then never sees its own SIGCHLD and
/// hangs, and SIGTERM cannot stop the server.)
final class ChildProcess {
    let pid: pid_t
    private var exitStatus: Int32?

    init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil, outputPath: String) throws {
        #if os(Linux)
        var attributes = posix_spawnattr_t()
        var actions = posix_spawn_file_actions_t()
        #else
        var attributes: posix_spawnattr_t?
        var actions: posix_spawn_file_actions_t?
        #endif
        posix_spawnattr_init(&attributes)
        posix_spawn_file_actions_init(&actions)
        defer {
            posix_spawnattr_destroy(&attributes)
            posix_spawn_file_actions_destroy(&actions)
        }
        var mask = sigset_t()
        sigemptyset(&mask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &mask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        ChildSpawn.closeFrom3(&actions)  // no sockets of other tests go along

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw TestFailure("cannot start \(executable): \(String(cString: strerror(result)))") }
        self.pid = pid
    }

    var isRunning: Bool {
        guard self.exitStatus == nil else { return false }
        var status: Int32 = 0
        guard waitpid(self.pid, &status, WNOHANG) == self.pid else { return true }
        // Exit code when it exited normally, else 128 + signal (as shells report it).
        self.exitStatus = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        return false
    }

    /// Waits up to `timeout` seconds; the exit status, or nil if still running.
    func wait(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while self.isRunning && Date() < deadline { usleep(5_000) }
        return self.isRunning ? nil : self.exitStatus
    }

    func stop(grace: TimeInterval) {
        guard self.isRunning else { return }
        kill(self.pid, SIGTERM)
        if self.wait(timeout: grace) == nil {
            kill(self.pid, SIGKILL)
            _ = self.wait(timeout: 2)
        }
    }
}

/// A tmux server of our own (`-L socket`, `-f /dev/null`).
struct Tmux {
    let executable: String
    let socket: String

    @discardableResult
    func run(_ arguments: [String], timeout: TimeInterval = 5) throws -> (status: Int32, output: String) {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-tmux-\(UUID().uuidString).out").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let child = try ChildProcess(self.executable, ["-L", self.socket, "-f", "/dev/null"] + arguments, outputPath: outputPath)
        guard let status = child.wait(timeout: timeout) else {
            child.stop(grace: 1)
            throw TestFailure("tmux \(arguments.joined(separator: " ")) did not finish within \(timeout) s")
        }
        return (status, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    func sendKeys(_ key: String) throws {
        try self.run(["send-keys", "-t", "chat", key])
    }

    func sendKeys(literal text: String) throws {
        try self.run(["send-keys", "-t", "chat", "-l", text])
    }

    func capture() throws -> String {
        try self.run(["capture-pane", "-p", "-t", "chat"]).output
    }

    /// Polls the pane until `condition` holds; fails with the last screen after `timeout`.
    func waitForPane(_ what: String, timeout: Duration, until condition: (String) -> Bool) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        var pane = ""
        while ContinuousClock.now < deadline {
            pane = try self.capture()
            if condition(pane) { return pane }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("timed out after \(timeout) waiting for \(what); the screen was:\n\(pane)")
    }

    func waitForSessionEnd(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try self.run(["has-session", "-t", "chat"]).status != 0 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("the chat session did not end within \(timeout); the screen was:\n\((try? self.capture()) ?? "")")
    }

    func killServer() {
        _ = try? self.run(["kill-server"])
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
