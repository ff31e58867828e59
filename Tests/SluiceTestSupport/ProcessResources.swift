import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a process holds, read from /proc (Linux), and this process's descriptor limit.
enum ProcessResources {
    /// Resident set size in bytes (`VmRSS` of /proc/PID/status); nil when the process is gone.
    static func residentBytes(_ pid: pid_t) -> Int? {
        Self.statusValue(pid, "VmRSS:").map { $0 * 1024 }
    }

    /// Peak resident set size in bytes (`VmHWM`).
    static func peakResidentBytes(_ pid: pid_t) -> Int? {
        Self.statusValue(pid, "VmHWM:").map { $0 * 1024 }
    }

    /// Open file descriptors of the process.
    static func openDescriptors(_ pid: pid_t) -> Int? {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count
    }

    /// The soft and hard `Max open files` of the process (/proc/PID/limits).
    static func descriptorLimits(_ pid: pid_t) -> (soft: Int, hard: Int)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Max open files") {
            let fields = line.dropFirst("Max open files".count).split(separator: " ")
            guard fields.count >= 2 else { return nil }
            let soft = fields[0] == "unlimited" ? Int.max : Int(fields[0]) ?? 0
            let hard = fields[1] == "unlimited" ? Int.max : Int(fields[1]) ?? 0
            return (soft, hard)
        }
        return nil
    }

    private static func statusValue(_ pid: pid_t, _ key: String) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix(key) {
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        }
        return nil
    }

    /// The kernel's state of this host's IPv4 TCP socket bound to `localPort` (/proc/net/tcp):
    /// 1 ESTABLISHED, 8 CLOSE_WAIT (the peer closed), …; nil when there is none (closed and
    /// gone). Lets a test that does not read see the server hang up.
    static func tcpState(localPort: Int) -> Int? {
        guard let table = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return nil }
        let suffix = ":" + String(format: "%04X", localPort)
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count > 3, fields[1].hasSuffix(suffix) else { continue }
            return Int(fields[3], radix: 16)
        }
        return nil
    }

    /// Raises this process's soft RLIMIT_NOFILE to its hard limit (children inherit it);
    /// returns the soft limit now in force.
    @discardableResult
    static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }
}
