import Foundation
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a `SluiceProcess` could not do what was asked.
struct SluiceProcessError: Error, CustomStringConvertible {
    var description: String
}

/// The real `sluice serve` executable as a child process, for multi-instance and signal tests.
///
/// Binds 127.0.0.1 on port 0 and reads the port the kernel picked from its `listening` log line
/// (`sluice.port`), so no port is chosen before the child holds it. The child's environment is this process's minus every `SLUICE_*`
/// variable (so a developer's settings cannot leak in) plus the variables passed to `start`;
/// stdout and stderr go to a log file in a temporary directory (`logTail(lines:)`). The child is
/// spawned with posix_spawn with an empty signal mask (Foundation's `Process` would pass on the
/// blocked SIGTERM of Swift's worker threads) in its own process group (a terminal's Ctrl-C does
/// not reach it). Prefer `withProcesses`, which always kills what is left; `deinit` SIGKILLs a
/// child left running.
final class SluiceProcess: Sendable {
    static let defaultTimeout: Duration = .seconds(30)

    /// How a child ended.
    enum ExitStatus: Equatable, Sendable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        init(waitStatus status: Int32) {
            let signal = status & 0x7F
            self = signal == 0 ? .exited((status >> 8) & 0xFF) : .signaled(signal)
        }

        var description: String {
            switch self {
            case .exited(let code): "exit status \(code)"
            case .signaled(let signal): "killed by signal \(signal)"
            }
        }
    }

    /// The public listener's port, from the `listening` log line (`port(inLog:)`).
    var port: Int { self.publicPort.withLock { $0 } }
    /// The admin listener's port (`/metrics`, `/v1/stats`, anyone's presence), read from the
    /// `admin listener` log line; 0 for a process without one (`sluice worker`, `admin.enabled` off).
    var adminPort: Int { self.admin.withLock { $0 } }
    let pid: pid_t
    /// Temporary directory holding `sluice.log`; removed by `withProcesses` when the body succeeds.
    let directory: URL
    var logFile: URL { self.directory.appendingPathComponent("sluice.log") }
    /// `ws://127.0.0.1:port/v1/ws`.
    var url: String { "ws://127.0.0.1:\(self.port)/v1/ws" }

    /// nil while running; the status once reaped.
    private let exitStatus = Mutex<ExitStatus?>(nil)
    private let publicPort = Mutex(0)
    private let admin = Mutex(0)

    private init(pid: pid_t, directory: URL) {
        self.pid = pid
        self.directory = directory
    }

    deinit {
        if self.isRunning {
            sendSignal(SIGKILL, to: self.pid)
            var status: Int32 = 0
            while waitpid(self.pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    // MARK: Starting

    /// Starts `sluice serve --host 127.0.0.1 --port 0 --admin-port 0 --log-level info` plus
    /// `arguments` (and a `--data-dir` of its own unless `arguments` choose the storage), reads
    /// the ports it bound from its log (`port`, `adminPort`) and waits until `GET /health` answers 200.
    /// `launcher` runs first and must exec sluice in the same process (e.g. `prlimit ... --`).
    static func start(
        command: String = "serve",
        arguments: [String] = [],
        environment: [String: String] = [:],
        timeout: Duration = SluiceProcess.defaultTimeout,
        launcher: [String] = []
    ) async throws -> SluiceProcess {
        let executable = try Self.findExecutable()
        var childEnvironment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") }
        childEnvironment.merge(environment) { _, given in given }
        let deadline = ContinuousClock.now + timeout
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("sluice-process-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var argv = [executable, command, "--host", "127.0.0.1", "--port", "0", "--log-level", "info"]
        if command == "serve" && !arguments.contains("--admin-port") { argv += ["--admin-port", "0"] }
        argv += arguments
        // History goes to this process's own directory unless the test chose where.
        if !arguments.contains("--data-dir") && !arguments.contains("--database-url") {
            argv += ["--data-dir", directory.appendingPathComponent("data").path]
        }
        let pid = try Self.spawn(
            launcher.first ?? executable, arguments: launcher + argv, environment: childEnvironment,
            logPath: directory.appendingPathComponent("sluice.log").path)
        let process = SluiceProcess(pid: pid, directory: directory)
        do {
            try await process.waitForPort(deadline: deadline)
            try await process.waitUntilHealthy(deadline: deadline)
            if command == "serve" && environment["SLUICE_ADMIN_ENABLED"] != "false" {
                try await process.waitForAdminPort(deadline: deadline)
            }
            return process
        } catch let error as EarlyExit {
            let log = process.logTail(lines: 50)
            try? FileManager.default.removeItem(at: directory)
            throw SluiceProcessError(description: "sluice exited at startup (\(error.status)):\n\(log)")
        } catch {
            await process.kill()
            let log = process.logTail(lines: 20)
            try? FileManager.default.removeItem(at: directory)
            throw SluiceProcessError(description: "\(error)\nlog tail:\n\(log)")
        }
    }

    private struct EarlyExit: Error {
        var status: ExitStatus
    }

    /// The public listener's port, from its `listening` line; exits at startup surface as `EarlyExit`.
    private func waitForPort(deadline: ContinuousClock.Instant) async throws {
        while true {
            let log = (try? String(contentsOf: self.logFile, encoding: .utf8)) ?? ""
            if let port = Self.port(inLog: log) {
                self.publicPort.withLock { $0 = port }
                return
            }
            if let status = self.reapIfExited() { throw EarlyExit(status: status) }
            if ContinuousClock.now >= deadline {
                throw SluiceProcessError(description: "sluice (pid \(self.pid)) did not log the port it listens on in time")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The public listener's port: `sluice.port` on a line that is not the admin listener's
    /// (that one carries `sluice.listener`), JSON or text logs.
    static func port(inLog log: String) -> Int? {
        for line in log.split(separator: "\n") where !line.contains("sluice.listener") {
            guard let key = line.range(of: "sluice.port") else { continue }
            let digits = line[key.upperBound...].drop { !$0.isNumber }.prefix { $0.isNumber }
            if let port = Int(digits), port > 0 { return port }
        }
        return nil
    }

    private func waitUntilHealthy(deadline: ContinuousClock.Instant) async throws {
        var lastProblem = "no answer yet"
        while true {
            if let status = self.reapIfExited() { throw EarlyExit(status: status) }
            do {
                let (status, body) = try await self.httpGet(path: "/health", timeout: .seconds(2))
                // The port was bound by this child (port 0), so whoever answers is this process.
                if status == 200 && body.trimmingCharacters(in: .whitespacesAndNewlines) == "ok" { return }
                lastProblem = "GET /health answered \(status)"
            } catch {
                lastProblem = "\(error)"
            }
            if ContinuousClock.now >= deadline {
                throw SluiceProcessError(
                    description: "sluice (pid \(self.pid)) on port \(self.port) did not answer GET /health with 200 in time (\(lastProblem))")
            }
            try await Task.sleep(for: .milliseconds(25))
        }
    }

    /// The admin listener's port, from the `admin listener` line (`sluice.admin_port`, JSON or text logs).
    private func waitForAdminPort(deadline: ContinuousClock.Instant) async throws {
        while true {
            let log = (try? String(contentsOf: self.logFile, encoding: .utf8)) ?? ""
            if let port = Self.adminPort(inLog: log) {
                self.admin.withLock { $0 = port }
                return
            }
            if ContinuousClock.now >= deadline {
                throw SluiceProcessError(description: "sluice (pid \(self.pid)) did not log its admin listener's port in time")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    static func adminPort(inLog log: String) -> Int? {
        guard let key = log.range(of: "sluice.admin_port") else { return nil }
        let digits = log[key.upperBound...].drop { !$0.isNumber }.prefix { $0.isNumber }
        return Int(digits)
    }

    /// Runs `sluice <arguments>` (or another `executable`) to completion (a one-shot command such
    /// as `migrate`), with `environment` added to this process's (minus its `SLUICE_*`
    /// variables) and `input` on its stdin: its exit code (128 + signal if killed) and output.
    /// SIGKILLed after `timeout`.
    static func runCommand(
        _ arguments: [String], executable: String? = nil, environment extra: [String: String] = [:], input: String? = nil,
        timeout: Duration = .seconds(60)
    ) async throws -> (status: Int32, output: String) {
        let executable = try executable ?? Self.findExecutable()
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-command-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        var stdin: String?
        if let input {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-command-\(UUID().uuidString).in").path
            try Data(input.utf8).write(to: URL(fileURLWithPath: path))
            stdin = path
        }
        defer { if let stdin { try? FileManager.default.removeItem(atPath: stdin) } }
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") }
        environment.merge(extra) { _, given in given }
        var child = SpawnedChild(pid: try ChildSpawn.spawn(
            executable, arguments: [executable] + arguments, environment: environment, stdin: stdin, output: log))
        let deadline = ContinuousClock.now + timeout
        while child.isRunning() {
            if ContinuousClock.now >= deadline {
                sendSignal(SIGKILL, to: child.pid)
                child.reap()
                break
            }
            do {
                try await Task.sleep(for: .milliseconds(20))
            } catch {
                // Cancelled (a test's time limit): the child must not outlive it (a `serve` would
                // keep its ports).
                sendSignal(SIGKILL, to: child.pid)
                child.reap()
                throw error
            }
        }
        return (child.exitStatus() ?? -1, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }

    /// Starts `count` processes (`environment` for all, merged with `instanceEnvironment(i)` for the
    /// i-th), runs `body`, then SIGKILLs whatever is still running — also when starting one of them
    /// or the body throws. Log directories are removed only when the body succeeds.
    static func withProcesses<T>(
        count: Int,
        arguments: [String] = [],
        environment: [String: String] = [:],
        instanceEnvironment: (Int) -> [String: String] = { _ in [:] },
        timeout: Duration = SluiceProcess.defaultTimeout,
        launcher: [String] = [],
        _ body: ([SluiceProcess]) async throws -> T
    ) async throws -> T {
        try await HeavyTests.exclusively {
            var processes: [SluiceProcess] = []
            do {
                for index in 0..<count {
                    // One event loop each: the tests need no more, and the machine has 2 cores.
                    let merged = ["SLUICE_SERVER_EVENT_LOOP_THREADS": "1"]
                        .merging(environment) { _, given in given }
                        .merging(instanceEnvironment(index)) { _, specific in specific }
                    processes.append(try await Self.start(arguments: arguments, environment: merged, timeout: timeout, launcher: launcher))
                }
                let result = try await body(processes)
                for process in processes {
                    await process.kill()
                    try? FileManager.default.removeItem(at: process.directory)
                }
                return result
            } catch {
                for process in processes { await process.kill() }
                throw error
            }
        }
    }

    // MARK: Binary

    /// `SLUICE_BINARY` if set; else `sluice` next to the running test binary (the same build);
    /// else `<package root>/.build/debug/sluice`; else `<package root>/.build/<triple>/debug/sluice`.
    static func findExecutable() throws -> String {
        let fileManager = FileManager.default
        if let explicit = ProcessInfo.processInfo.environment["SLUICE_BINARY"], !explicit.isEmpty {
            guard fileManager.isExecutableFile(atPath: explicit) else {
                throw SluiceProcessError(description: "SLUICE_BINARY=\(explicit) is not an executable file")
            }
            return explicit
        }
        var candidates: [String] = []
        // `swift test` runs <scratch>/<triple>/debug/<package>PackageTests.xctest; the product is beside it.
        let testBinary = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
        if testBinary.path.contains("/debug/") || testBinary.path.contains("/release/") {
            candidates.append(testBinary.deletingLastPathComponent().appendingPathComponent("sluice").path)
        }
        // This file is <package root>/Tests/SluiceTestSupport/SluiceProcess.swift.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let build = root.appendingPathComponent(".build")
        candidates.append(build.appendingPathComponent("debug/sluice").path)
        if let triples = try? fileManager.contentsOfDirectory(atPath: build.path) {
            for triple in triples.sorted() where triple.contains("-") {
                candidates.append(build.appendingPathComponent("\(triple)/debug/sluice").path)
            }
        }
        if let found = candidates.first(where: { fileManager.isExecutableFile(atPath: $0) }) {
            return found
        }
        throw SluiceProcessError(description: """
            the sluice executable was not found (looked at \(candidates.joined(separator: ", "))); \
            run `swift build` (or `swift build --build-tests`) first, or set SLUICE_BINARY
            """)
    }

    // MARK: State and signals

    var isRunning: Bool { self.reapIfExited() == nil }

    /// Reaps the child if it exited (never blocks); the exit status once it has.
    private func reapIfExited() -> ExitStatus? {
        self.exitStatus.withLock { exitStatus in
            if let exitStatus { return exitStatus }
            var status: Int32 = 0
            let result = waitpid(self.pid, &status, WNOHANG)
            if result == self.pid {
                exitStatus = ExitStatus(waitStatus: status)
            } else if result < 0 && errno == ECHILD {
                exitStatus = .exited(-1)  // reaped elsewhere; the status is lost
            }
            return exitStatus
        }
    }

    /// Waits until the child exited; throws (leaving it running) after `timeout`.
    @discardableResult
    func waitForExit(timeout: Duration = SluiceProcess.defaultTimeout) async throws -> ExitStatus {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let status = self.reapIfExited() { return status }
            if ContinuousClock.now >= deadline {
                throw SluiceProcessError(description: "sluice (pid \(self.pid)) did not exit within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// SIGTERM (graceful drain: `/ready` 503, then Close 1012 to every client) and waits for the exit.
    @discardableResult
    func terminate(timeout: Duration = SluiceProcess.defaultTimeout) async throws -> ExitStatus {
        if let status = self.reapIfExited() { return status }
        self.signal(SIGTERM)
        return try await self.waitForExit(timeout: timeout)
    }

    /// SIGKILL (a crash: the kernel resets every socket) and reaps the child. nil only if it was
    /// somehow not reaped within 10 s.
    @discardableResult
    func kill() async -> ExitStatus? {
        if let status = self.reapIfExited() { return status }
        self.signal(SIGKILL)
        return try? await self.waitForExit(timeout: .seconds(10))
    }

    /// Sends `signal` to the child (only while it has not been reaped, so the pid is still ours).
    func signal(_ signal: Int32) {
        if self.isRunning { sendSignal(signal, to: self.pid) }
    }

    // MARK: Observing

    /// The last `lines` lines of the child's stdout and stderr.
    func logTail(lines: Int = 20) -> String {
        let log = (try? String(contentsOf: self.logFile, encoding: .utf8)) ?? ""
        return log.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// `GET path` over a fresh loopback connection (`Connection: close`).
    func httpGet(path: String, timeout: Duration = .seconds(5)) async throws -> (status: Int, body: String) {
        try await self.httpRequest("GET", path: path, timeout: timeout)
    }

    /// `GET path` on the admin listener (`/metrics`, `/v1/stats`, `/v1/presence?user=`).
    func adminGet(path: String, timeout: Duration = .seconds(5)) async throws -> (status: Int, body: String) {
        try await self.httpRequest("GET", path: path, port: self.adminPort, timeout: timeout)
    }

    /// Any request over a fresh loopback connection (`Connection: close`) to the public
    /// listener, or to `port`.
    func httpRequest(
        _ method: String, path: String, headers: [String: String] = [:], body: String? = nil, port: Int? = nil,
        timeout: Duration = .seconds(10)
    ) async throws -> (status: Int, body: String) {
        let port = port ?? self.port
        let client = try await RawClient.connect(port: port, group: MultiThreadedEventLoopGroup.singleton)
        do {
            var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
            for (name, value) in headers { request += "\(name): \(value)\r\n" }
            if let body {
                request += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            } else {
                request += "\r\n"
            }
            try await client.send(request)
            let response = try await client.readHTTPResponse(timeout: timeout)
            await client.close()
            return (response.status, response.body)
        } catch {
            await client.close()
            throw error
        }
    }

    // MARK: Helpers

    /// A port where connections are refused for as long as the returned value lives: bound
    /// (so no other test's server can take it) but not listening.
    static func deadPort() throws -> DeadPort { try DeadPort() }

    /// A port the kernel just handed out for 127.0.0.1 (free at that moment, not reserved): only
    /// for servers that cannot bind port 0 and report it (nginx, Prometheus); they must retry.
    static func freePort() throws -> Int {
        try RedisServerProcess.freePort()
    }

    /// Its own process group; stdin from /dev/null, stdout and stderr appended to `logPath`.
    private static func spawn(
        _ executable: String, arguments: [String], environment: [String: String], logPath: String
    ) throws -> pid_t {
        do {
            return try ChildSpawn.spawn(executable, arguments: arguments, environment: environment, output: logPath, newProcessGroup: true)
        } catch {
            throw SluiceProcessError(description: error.description)
        }
    }
}

/// `kill(2)`, outside the class whose `kill()` method would shadow it.
private func sendSignal(_ signal: Int32, to pid: pid_t) {
    _ = kill(pid, signal)
}

/// A TCP port bound on 127.0.0.1 without listening: connecting is refused, and nothing else
/// can bind it until this is released.
final class DeadPort: Sendable {
    let port: Int
    private let descriptor: Int32

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw SluiceProcessError(description: "socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
        }
        guard bound else {
            close(descriptor)
            throw SluiceProcessError(description: "bind() failed")
        }
        self.descriptor = descriptor
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { close(self.descriptor) }
}
