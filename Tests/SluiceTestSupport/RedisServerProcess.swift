import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a `RedisServerProcess` could not do what was asked.
struct RedisServerProcessError: Error, CustomStringConvertible {
    var description: String
}

/// A real `redis-server` for integration tests: 127.0.0.1 on a free random port, a temporary
/// working directory, no persistence (`--save "" --appendonly no`). `stop()`/`kill()` simulate an
/// outage, `stall()`/`resume()` a frozen server (SIGSTOP/SIGCONT: TCP stays open, nothing is
/// answered), and `restart()` brings it back on the same port. Extra `arguments` (a password,
/// ACL users) and TLS on a second port are optional. Prefer `withServer`, which always stops the
/// server and removes its directory; `deinit` SIGKILLs a server left running.
final class RedisServerProcess: Sendable {
    static let defaultTimeout: Duration = .seconds(10)

    /// TLS on a second port (`tlsPort`), with these files.
    struct TLSOptions: Sendable {
        var certificateFile: String
        var keyFile: String
        /// The CA that client certificates must chain to.
        var caFile: String
        /// `--tls-auth-clients yes`: a client without a certificate from `caFile` is refused.
        var requireClientCertificates = false

        init(certificateFile: String, keyFile: String, caFile: String, requireClientCertificates: Bool = false) {
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.caFile = caFile
            self.requireClientCertificates = requireClientCertificates
        }
    }

    let port: Int
    /// The TLS port, when started with `tls`.
    let tlsPort: Int?
    /// Extra `redis-server` arguments (kept for `restart()`).
    let arguments: [String]
    let tls: TLSOptions?
    /// Working directory (log file `redis.log` lives here).
    let directory: URL
    private let executable: String
    /// The running child, if any. Spawned with posix_spawn, not Foundation's `Process`: that one
    /// passes on the spawning thread's signal mask, and Swift's worker threads block SIGTERM, so
    /// the server would ignore `stop()`.
    private let child = Mutex<SpawnedChild?>(nil)

    /// `redis://127.0.0.1:port`.
    var url: String { "redis://127.0.0.1:\(self.port)" }

    /// `rediss://[credentials]host:tlsPort` (`host` defaults to the address the server listens on).
    func tlsURL(host: String = "127.0.0.1", credentials: String = "") -> String {
        "rediss://\(credentials)\(host):\(self.tlsPort ?? 0)"
    }

    /// Every write fsynced to an append-only file in `directory`, so a restart (even after
    /// SIGKILL) comes back with all data: what a job queue's Redis must do.
    let appendOnly: Bool

    private init(
        executable: String, port: Int, directory: URL, appendOnly: Bool = false,
        arguments: [String] = [], tls: TLSOptions? = nil, tlsPort: Int? = nil
    ) {
        self.appendOnly = appendOnly
        self.executable = executable
        self.port = port
        self.directory = directory
        self.arguments = arguments
        self.tls = tls
        self.tlsPort = tlsPort
    }

    deinit {
        self.child.withLock { child in
            if var running = child, running.isRunning() {
                sendSignal(SIGKILL, to: running.pid)
                running.reap()
            }
        }
        try? FileManager.default.removeItem(at: self.directory)
    }

    /// `redis-server` from PATH, else /usr/bin/redis-server.
    static func findExecutable() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let candidates = path.split(separator: ":").map { "\($0)/redis-server" } + ["/usr/bin/redis-server"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Starts a server and waits until it answers PING. Retries on another port if the one
    /// picked was taken in the meantime.
    static func start(
        timeout: Duration = RedisServerProcess.defaultTimeout, appendOnly: Bool = false,
        arguments: [String] = [], tls: TLSOptions? = nil
    ) async throws -> RedisServerProcess {
        guard let executable = Self.findExecutable() else {
            throw RedisServerProcessError(description: "redis-server not found (apt-get install redis-server)")
        }
        var lastError: (any Error)?
        for _ in 0..<5 {
            let directory = FileManager.default.temporaryDirectory
                .appendingPathComponent("sluice-redis-\(UUID().uuidString)", isDirectory: true)
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let server = RedisServerProcess(
                executable: executable, port: try Self.freePort(), directory: directory, appendOnly: appendOnly,
                arguments: arguments, tls: tls, tlsPort: tls == nil ? nil : try Self.freePort())
            do {
                try await server.launch(timeout: timeout)
                return server
            } catch {
                lastError = error
                await server.kill()
            }
        }
        throw lastError ?? RedisServerProcessError(description: "redis-server did not start")
    }

    /// Runs `body` with a fresh server, then stops it and removes its directory whatever happens.
    static func withServer<T>(
        timeout: Duration = RedisServerProcess.defaultTimeout,
        arguments: [String] = [],
        tls: TLSOptions? = nil,
        _ body: (RedisServerProcess) async throws -> T
    ) async throws -> T {
        try await HeavyTests.exclusively {
            let server = try await Self.start(timeout: timeout, arguments: arguments, tls: tls)
            do {
                let result = try await body(server)
                await server.kill()
                return result
            } catch {
                await server.kill()
                throw error
            }
        }
    }

    var isRunning: Bool {
        self.child.withLock { $0?.isRunning() ?? false }
    }

    /// The process id of the running server, if any.
    var pid: Int32? {
        self.child.withLock { child in
            guard child?.isRunning() == true else { return nil }
            return child?.pid
        }
    }

    /// SIGTERM (a clean shutdown: Redis closes client connections) and wait for the exit.
    func stop(timeout: Duration = RedisServerProcess.defaultTimeout) async throws {
        try await self.terminate(with: SIGTERM, timeout: timeout)
    }

    /// SIGKILL (a crash: sockets are reset by the kernel) and wait for the exit.
    func kill() async {
        try? await self.terminate(with: SIGKILL, timeout: Self.defaultTimeout)
    }

    /// SIGSTOP: the server freezes. Its sockets stay open and the kernel still accepts new
    /// connections, but nothing is read or answered until `resume()`. (`kill()` ends a stalled
    /// server too: SIGKILL needs no cooperation.)
    func stall() {
        if let pid = self.pid { sendSignal(SIGSTOP, to: pid) }
    }

    /// SIGCONT after `stall()`.
    func resume() {
        if let pid = self.pid { sendSignal(SIGCONT, to: pid) }
    }

    /// Starts the server again on the same port (after `stop()` or `kill()`).
    func restart(timeout: Duration = RedisServerProcess.defaultTimeout) async throws {
        if self.isRunning { try await self.stop(timeout: timeout) }
        // The port is ours only by convention now; a test run on a busy machine could lose it.
        try await self.launch(timeout: timeout)
    }

    private func launch(timeout: Duration) async throws {
        let arguments = [
            self.executable,
            "--port", String(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory.path,
            "--save", "",
            "--appendonly", self.appendOnly ? "yes" : "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", self.directory.appendingPathComponent("redis.log").path,
        ] + self.tlsArguments + self.arguments
        let pid = try Self.spawn(self.executable, arguments: arguments)
        self.child.withLock { $0 = SpawnedChild(pid: pid) }

        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard self.isRunning else {
                throw RedisServerProcessError(description: "redis-server exited at startup on port \(self.port): \(self.logTail())")
            }
            if Self.answersPing(port: self.port) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw RedisServerProcessError(description: "redis-server on port \(self.port) did not answer PING within \(timeout)")
    }

    private var tlsArguments: [String] {
        guard let tls = self.tls, let tlsPort = self.tlsPort else { return [] }
        return [
            "--tls-port", String(tlsPort),
            "--tls-cert-file", tls.certificateFile,
            "--tls-key-file", tls.keyFile,
            "--tls-ca-cert-file", tls.caFile,
            "--tls-auth-clients", tls.requireClientCertificates ? "yes" : "no",
        ]
    }

    private func terminate(with signal: Int32, timeout: Duration) async throws {
        guard let pid = self.pid else { return }
        sendSignal(signal, to: pid)
        let deadline = ContinuousClock.now + timeout
        while self.isRunning {
            if ContinuousClock.now >= deadline {
                throw RedisServerProcessError(description: "redis-server (pid \(pid)) did not exit within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The last lines of the server's log, for error messages.
    func logTail() -> String {
        let log = (try? String(contentsOf: self.directory.appendingPathComponent("redis.log"), encoding: .utf8)) ?? ""
        return log.split(separator: "\n").suffix(5).joined(separator: " | ")
    }

    /// A port the kernel just handed out for 127.0.0.1 (free at that moment).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RedisServerProcessError(description: "socket() failed: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw RedisServerProcessError(description: "bind() failed: errno \(errno)") }
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw RedisServerProcessError(description: "getsockname() failed: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Whether something on 127.0.0.1:`port` answers `PING`: `+PONG`, or `-NOAUTH` from a server
    /// with a password (blocking, 500 ms at most).
    static func answersPing(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 0, tv_usec: 500_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return false }
        let ping = Array("PING\r\n".utf8)
        guard send(fd, ping, ping.count, 0) == ping.count else { return false }
        var reply = [UInt8](repeating: 0, count: 16)
        let count = recv(fd, &reply, reply.count, 0)
        guard count >= 7 else { return false }
        return Array(reply[0..<7]) == Array("+PONG\r\n".utf8) || Array(reply[0..<7]) == Array("-NOAUTH".utf8)
    }
}

extension RedisServerProcess {
    /// Stdio on /dev/null.
    fileprivate static func spawn(_ executable: String, arguments: [String]) throws -> pid_t {
        do {
            return try ChildSpawn.spawn(executable, arguments: arguments)
        } catch {
            throw RedisServerProcessError(description: error.description)
        }
    }
}

/// `kill(2)`, outside the class whose `kill()` method would shadow it.
private func sendSignal(_ signal: Int32, to pid: Int32) {
    _ = kill(pid, signal)
}
