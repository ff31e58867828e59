import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a `PostgresServerProcess` could not do what was asked.
struct PostgresServerProcessError: Error, CustomStringConvertible {
    var description: String
}

/// A real PostgreSQL server for integration tests: `initdb` into a temporary directory, then
/// `postgres` on 127.0.0.1 and a free random port (socket in the same directory), fsync off.
/// Superuser `sluice` with a random password (SCRAM over TCP, trust on the socket) and a
/// database `sluice`: see `url`. `stop()` (fast shutdown) and `kill()` (immediate shutdown,
/// crash-like) simulate outages; `restart()` brings it back on the same port with the same data.
/// Prefer `withServer`, which always stops the server and removes its directory; `deinit`
/// ends a server left running.
///
/// initdb and postgres refuse to run as root: as root, both run as the `postgres` system user
/// (through `setpriv`, which execs, so the process id is the server's own) in a directory
/// owned by that user. Binaries: `$SLUICE_PG_BINDIR`, else the newest /usr/lib/postgresql/*/bin
/// (Debian's `postgresql` package), else PATH.
final class PostgresServerProcess: Sendable {
    static let defaultTimeout: Duration = .seconds(60)
    static let user = "sluice"
    static let database = "sluice"

    /// Fixed once the server has started (a start retries on another port if its pick was taken).
    var port: Int { self.chosenPort.withLock { $0 } }
    /// Temporary root: `data/` (the cluster), the socket, `postgres.log`, `initdb.log`.
    let directory: URL
    let password: String
    private let binDirectory: String
    private let runAs: SystemUser?
    private let child = Mutex<SpawnedChild?>(nil)
    private let chosenPort: Mutex<Int>
    /// With TLS on (`start(tls:)`): `ssl=on` with this certificate and key, and client
    /// certificates checked against `clientCA` when given.
    private let tls: TLSFiles?

    /// A server certificate and key (PEM) for `ssl=on`, and optionally the CA that client
    /// certificates are checked against (`ssl_ca_file`: a client may then present one).
    struct TLSFiles: Sendable {
        var certificate: String
        var key: String
        var clientCA: String?
    }

    /// `postgres://sluice:<password>@127.0.0.1:<port>/sluice?sslmode=disable`
    var url: String {
        "postgres://\(Self.user):\(self.password)@127.0.0.1:\(self.port)/\(Self.database)?sslmode=disable"
    }

    var dataDirectory: URL { self.directory.appendingPathComponent("data", isDirectory: true) }

    private init(binDirectory: String, runAs: SystemUser?, port: Int, directory: URL, tls: TLSFiles?) {
        self.binDirectory = binDirectory
        self.runAs = runAs
        self.chosenPort = Mutex(port)
        self.directory = directory
        self.tls = tls
        self.password = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
    }

    deinit {
        self.child.withLock { child in
            if var running = child, running.isRunning() {
                // Immediate shutdown ends the backends too; SIGKILL would orphan them.
                sendSignal(SIGQUIT, to: running.pid)
                if !running.waitForExit(seconds: 10) {
                    sendSignal(SIGKILL, to: running.pid)
                    running.reap()
                }
            }
        }
        try? FileManager.default.removeItem(at: self.directory)
    }

    /// The directory holding `initdb` and `postgres`, if any.
    static func findBinDirectory() -> String? {
        let fileManager = FileManager.default
        if let configured = ProcessInfo.processInfo.environment["SLUICE_PG_BINDIR"],
           fileManager.isExecutableFile(atPath: configured + "/postgres") {
            return configured
        }
        let versions = ((try? fileManager.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? [])
            .compactMap(Int.init).sorted(by: >)
        for version in versions where fileManager.isExecutableFile(atPath: "/usr/lib/postgresql/\(version)/bin/postgres") {
            return "/usr/lib/postgresql/\(version)/bin"
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        return path.split(separator: ":").map(String.init).first {
            fileManager.isExecutableFile(atPath: $0 + "/postgres") && fileManager.isExecutableFile(atPath: $0 + "/initdb")
        }
    }

    /// Creates a cluster and starts the server, waiting until it accepts connections. Retries on
    /// another port if the one picked was taken in the meantime.
    static func start(timeout: Duration = PostgresServerProcess.defaultTimeout, tls: TLSFiles? = nil) async throws -> PostgresServerProcess {
        guard let binDirectory = Self.findBinDirectory() else {
            throw PostgresServerProcessError(description: "PostgreSQL server binaries not found (apt-get install postgresql)")
        }
        var runAs: SystemUser?
        if getuid() == 0 {
            guard let user = SystemUser(name: "postgres") else {
                throw PostgresServerProcessError(description: "running as root, and there is no postgres user to run the server as")
            }
            runAs = user
        }
        // As root, /tmp rather than $TMPDIR: the postgres user must be able to reach it.
        let temporary = runAs == nil ? FileManager.default.temporaryDirectory : URL(fileURLWithPath: "/tmp")
        let directory = temporary.appendingPathComponent("sluice-pg-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // The server's copies: postgres insists its key be 0600 and owned by the user it runs as.
        var serverTLS: TLSFiles?
        if let tls {
            var copies = TLSFiles(certificate: directory.appendingPathComponent("server.crt").path,
                                  key: directory.appendingPathComponent("server.key").path)
            if tls.clientCA != nil { copies.clientCA = directory.appendingPathComponent("client-ca.crt").path }
            var files = [(tls.certificate, copies.certificate), (tls.key, copies.key)]
            if let from = tls.clientCA, let to = copies.clientCA { files.append((from, to)) }
            for (from, to) in files {
                try FileManager.default.copyItem(atPath: from, toPath: to)
                _ = chmod(to, 0o600)
                if let runAs { _ = chown(to, runAs.uid, runAs.gid) }
            }
            serverTLS = copies
        }
        let server = PostgresServerProcess(binDirectory: binDirectory, runAs: runAs, port: try Self.freePort(), directory: directory, tls: serverTLS)
        if let runAs {
            guard chown(directory.path, runAs.uid, runAs.gid) == 0 else {
                throw PostgresServerProcessError(description: "chown \(directory.path) failed: errno \(errno)")
            }
        }
        try await server.initializeCluster(timeout: timeout)
        var lastError: (any Error)?
        for attempt in 0..<5 {
            if attempt > 0 {
                let port = try Self.freePort()
                server.chosenPort.withLock { $0 = port }
            }
            do {
                try await server.launch(timeout: timeout)
                return server
            } catch {
                lastError = error
                await server.kill()
            }
        }
        throw lastError ?? PostgresServerProcessError(description: "postgres did not start")
    }

    /// Runs `body` with a fresh server, then stops it and removes its directory whatever happens.
    static func withServer<T>(
        timeout: Duration = PostgresServerProcess.defaultTimeout,
        tls: TLSFiles? = nil,
        _ body: (PostgresServerProcess) async throws -> T
    ) async throws -> T {
        try await HeavyTests.exclusively {
            let server = try await Self.start(timeout: timeout, tls: tls)
            do {
                let result = try await body(server)
                await server.kill()
                server.removeDirectory()
                return result
            } catch {
                await server.kill()
                server.removeDirectory()
                throw error
            }
        }
    }

    var isRunning: Bool {
        self.child.withLock { $0?.isRunning() ?? false }
    }

    /// The postmaster's process id, if running.
    var pid: Int32? {
        self.child.withLock { child in
            guard child?.isRunning() == true else { return nil }
            return child?.pid
        }
    }

    /// Fast shutdown (SIGINT): sessions are ended, a checkpoint is written, the server exits.
    func stop(timeout: Duration = PostgresServerProcess.defaultTimeout) async throws {
        try await self.terminate(with: SIGINT, timeout: timeout)
    }

    /// Immediate shutdown (SIGQUIT), like a crash: no checkpoint, recovery on the next start.
    /// SIGKILL after 10 s if it is still there.
    func kill() async {
        do {
            try await self.terminate(with: SIGQUIT, timeout: .seconds(10))
        } catch {
            try? await self.terminate(with: SIGKILL, timeout: .seconds(10))
        }
    }

    /// Starts the server again on the same port with the same data (after `stop()` or `kill()`).
    func restart(timeout: Duration = PostgresServerProcess.defaultTimeout) async throws {
        if self.isRunning { try await self.stop(timeout: timeout) }
        // The port is ours only by convention now; a test run on a busy machine could lose it.
        try await self.launch(timeout: timeout)
    }

    func removeDirectory() {
        try? FileManager.default.removeItem(at: self.directory)
    }

    // MARK: Setup

    /// initdb (C locale, UTF-8, no fsync), then `CREATE DATABASE sluice` in single-user mode, so
    /// no client program is needed.
    private func initializeCluster(timeout: Duration) async throws {
        let passwordFile = self.directory.appendingPathComponent("pwfile")
        try Data((self.password + "\n").utf8).write(to: passwordFile)
        defer { try? FileManager.default.removeItem(at: passwordFile) }
        if let runAs { _ = chown(passwordFile.path, runAs.uid, runAs.gid) }

        let initdbLog = self.directory.appendingPathComponent("initdb.log").path
        let status = try await self.runToCompletion(
            self.binDirectory + "/initdb",
            arguments: [
                "-D", self.dataDirectory.path, "-U", Self.user, "--pwfile=" + passwordFile.path,
                "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            ],
            stdin: nil, output: initdbLog, timeout: timeout
        )
        guard status == 0 else {
            throw PostgresServerProcessError(description: "initdb exited with \(status): \(Self.tail(initdbLog))")
        }

        let sqlFile = self.directory.appendingPathComponent("create.sql")
        try Data("CREATE DATABASE \(Self.database) OWNER \(Self.user);\n".utf8).write(to: sqlFile)
        defer { try? FileManager.default.removeItem(at: sqlFile) }
        let singleLog = self.directory.appendingPathComponent("single.log").path
        let created = try await self.runToCompletion(
            self.binDirectory + "/postgres",
            arguments: ["--single", "-D", self.dataDirectory.path, "-c", "fsync=off", "postgres"],
            stdin: sqlFile.path, output: singleLog, timeout: timeout
        )
        guard created == 0 else {
            throw PostgresServerProcessError(description: "CREATE DATABASE exited with \(created): \(Self.tail(singleLog))")
        }
    }

    private func launch(timeout: Duration) async throws {
        var arguments = [
            "-D", self.dataDirectory.path,
            "-p", String(self.port),
            "-k", self.directory.path,
            "-c", "listen_addresses=127.0.0.1",
            // fsync off is safe for kill(): the machine stays up, so the OS keeps what was
            // written. (synchronous_commit=off would not be: a kill would lose the last commits.)
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "shared_buffers=16MB",
            "-c", "max_connections=40",
        ]
        if let tls = self.tls {
            arguments += ["-c", "ssl=on", "-c", "ssl_cert_file=\(tls.certificate)", "-c", "ssl_key_file=\(tls.key)"]
            if let clientCA = tls.clientCA { arguments += ["-c", "ssl_ca_file=\(clientCA)"] }
        }
        let pid = try self.spawn(self.binDirectory + "/postgres", arguments: arguments,
                                 stdin: nil, output: self.logPath)
        self.child.withLock { $0 = SpawnedChild(pid: pid) }

        // postgres writes "ready" as the 8th line of postmaster.pid once it accepts connections
        // (what `pg_ctl -w` waits for); the pid on the first line tells a stale file apart.
        let pidFile = self.dataDirectory.appendingPathComponent("postmaster.pid")
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard self.isRunning else {
                throw PostgresServerProcessError(description: "postgres exited at startup on port \(self.port): \(self.logTail())")
            }
            if let text = try? String(contentsOf: pidFile, encoding: .utf8) {
                let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map {
                    $0.trimmingCharacters(in: .whitespaces)
                }
                if lines.count >= 8, lines[0] == String(pid), lines[7] == "ready" { return }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw PostgresServerProcessError(description: "postgres on port \(self.port) was not ready within \(timeout): \(self.logTail())")
    }

    private var logPath: String { self.directory.appendingPathComponent("postgres.log").path }

    private func terminate(with signal: Int32, timeout: Duration) async throws {
        guard let pid = self.pid else { return }
        sendSignal(signal, to: pid)
        let deadline = ContinuousClock.now + timeout
        while self.isRunning {
            if ContinuousClock.now >= deadline {
                throw PostgresServerProcessError(description: "postgres (pid \(pid)) did not exit within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The last lines of the server's log, for error messages.
    func logTail() -> String {
        Self.tail(self.logPath)
    }

    private static func tail(_ path: String) -> String {
        let log = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return log.split(separator: "\n").suffix(5).joined(separator: " | ")
    }

    /// Spawns `executable` (as the `postgres` user when root) and waits for its exit status.
    private func runToCompletion(
        _ executable: String, arguments: [String], stdin: String?, output: String, timeout: Duration
    ) async throws -> Int32 {
        var process = SpawnedChild(pid: try self.spawn(executable, arguments: arguments, stdin: stdin, output: output))
        let deadline = ContinuousClock.now + timeout
        while true {
            if let status = process.exitStatus() { return status }
            if ContinuousClock.now >= deadline {
                sendSignal(SIGKILL, to: process.pid)
                process.reap()
                throw PostgresServerProcessError(description: "\(executable) did not finish within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    private func spawn(_ executable: String, arguments: [String], stdin: String?, output: String) throws -> pid_t {
        var argv = [executable] + arguments
        var program = executable
        if let runAs {
            program = "/usr/bin/setpriv"
            argv = [program, "--reuid=\(runAs.uid)", "--regid=\(runAs.gid)", "--init-groups", "--"] + argv
        }
        var environment = ProcessInfo.processInfo.environment
        environment["LC_ALL"] = "C"
        // Home of the user it runs as; a root HOME would be unreadable for postgres.
        if let runAs { environment["HOME"] = runAs.home }
        do {
            return try ChildSpawn.spawn(program, arguments: argv, environment: environment, stdin: stdin, output: output)
        } catch {
            throw PostgresServerProcessError(description: error.description)
        }
    }

    /// A port the kernel just handed out for 127.0.0.1 (free at that moment).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw PostgresServerProcessError(description: "socket() failed: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw PostgresServerProcessError(description: "bind() failed: errno \(errno)") }
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw PostgresServerProcessError(description: "getsockname() failed: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// A system account to run the server as.
private struct SystemUser: Sendable {
    var uid: uid_t
    var gid: gid_t
    var home: String

    init?(name: String) {
        guard let entry = getpwnam(name) else { return nil }
        self.uid = entry.pointee.pw_uid
        self.gid = entry.pointee.pw_gid
        self.home = String(cString: entry.pointee.pw_dir)
    }
}

/// `kill(2)`, outside the class whose `kill()` method would shadow it.
private func sendSignal(_ signal: Int32, to pid: Int32) {
    _ = kill(pid, signal)
}
