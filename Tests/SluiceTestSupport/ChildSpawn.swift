import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How the test helpers start servers (redis-server, PostgreSQL, `sluice serve`): posix_spawn
/// with an empty signal mask and default signal handlers. Not Foundation's `Process`: it passes
/// on the spawning thread's mask, and Swift's worker threads block SIGTERM/SIGINT, so the child
/// would ignore a clean stop.
enum ChildSpawn {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), which Swift's Glibc module does not expose.
    private static let addCloseFrom: AddCloseFrom? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    /// Closes every descriptor from 3 up in the child.
    static func closeFrom3(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>) {
        _ = Self.addCloseFrom?(actions, 3)
    }

    /// stdin from `stdin` (or /dev/null); stdout and stderr appended to `output` (or /dev/null);
    /// `newProcessGroup` puts the child in a group of its own.
    static func spawn(
        _ executable: String, arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment,
        stdin: String? = nil, output: String? = nil, newProcessGroup: Bool = false
    ) throws(Failure) -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        if newProcessGroup {
            posix_spawnattr_setpgroup(&attributes, 0)
            flags |= POSIX_SPAWN_SETPGROUP
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin ?? "/dev/null", O_RDONLY, 0)
        if let output {
            posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of ours goes along: a socket of a test running beside (NIO does not open
        // every descriptor close-on-exec) would otherwise stay open in the child, and its peer
        // would never see it close.
        Self.closeFrom3(&actions)

        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw Failure(description: "posix_spawn \(executable) failed: \(String(cString: strerror(result)))")
        }
        return pid
    }
}

/// A spawned process and whether it has been reaped.
struct SpawnedChild {
    let pid: pid_t
    var exited = false
    var status: Int32?

    /// Reaps the process if it exited (never blocks).
    mutating func isRunning() -> Bool {
        self.poll()
        return !self.exited
    }

    /// The exit code once it has exited (128 + signal if a signal ended it).
    mutating func exitStatus() -> Int32? {
        self.poll()
        return self.exited ? (self.status ?? -1) : nil
    }

    private mutating func poll() {
        guard !self.exited else { return }
        var raw: Int32 = 0
        let result = waitpid(self.pid, &raw, WNOHANG)
        if result == self.pid {
            self.exited = true
            // WIFEXITED / WEXITSTATUS / WTERMSIG by hand: the C macros are not imported.
            let signal = raw & 0x7F
            self.status = signal == 0 ? (raw >> 8) & 0xFF : 128 + signal
        } else if result < 0 && errno == ECHILD {
            self.exited = true
        }
    }

    /// Waits up to `seconds` for the exit (blocking: for `deinit` only).
    mutating func waitForExit(seconds: Int) -> Bool {
        for _ in 0..<(seconds * 100) {
            if !self.isRunning() { return true }
            usleep(10_000)
        }
        return false
    }

    /// Waits for the exit (after SIGKILL, so briefly).
    mutating func reap() {
        guard !self.exited else { return }
        var raw: Int32 = 0
        while waitpid(self.pid, &raw, 0) < 0 && errno == EINTR {}
        self.exited = true
    }
}
