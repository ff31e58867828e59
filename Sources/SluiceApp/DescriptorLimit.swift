#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// The open-file limit (`RLIMIT_NOFILE`): every client connection is a descriptor, and so is
/// every upstream, Redis and database connection. Shells and service managers often start a
/// process with a soft limit of 1,024 under a much higher hard limit; `sluice serve` raises its
/// soft limit to the hard one at startup (any process may), and warns when even that cannot
/// hold `server.max_connections`: past it, accepting fails with "too many open files" instead
/// of the 503 the connection limit promises.
enum DescriptorLimit {
    /// Descriptors wanted beside the client connections: listeners, upstream requests of the
    /// generations running, Redis, the database pool, log files.
    static let reserve = 1_024

    struct Plan: Equatable {
        /// The soft limit to set (nil: keep it).
        var raiseTo: UInt64?
        /// Logged when the limit stays below what `server.max_connections` needs.
        var warning: String?
    }

    /// What to do with limits `soft`/`hard` for `maxConnections` client connections.
    static func plan(soft: UInt64, hard: UInt64, maxConnections: Int) -> Plan {
        let needed = UInt64(max(0, maxConnections)).addingReportingOverflow(UInt64(Self.reserve))
        let wanted = needed.overflow ? UInt64.max : needed.partialValue
        let target = max(soft, hard)
        var plan = Plan(raiseTo: soft < hard ? hard : nil)
        if target < wanted {
            plan.warning = "server.max_connections \(maxConnections) needs about \(wanted) file descriptors but the open-file limit is "
                + "\(target) (hard): connections past it fail with \"too many open files\" instead of a 503; raise it (ulimit -n, LimitNOFILE=, "
                + "or the container's nofile ulimit) or lower server.max_connections"
        }
        return plan
    }

    /// Raises the soft limit to the hard one; logs the outcome. Returns the soft limit in force.
    @discardableResult
    static func raise(maxConnections: Int, logger: Logger) -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Self.resource, &limit) == 0 else {
            logger.warning("could not read the open-file limit", metadata: ["sluice.errno": "\(errno)"])
            return 0
        }
        let plan = Self.plan(soft: UInt64(limit.rlim_cur), hard: UInt64(limit.rlim_max), maxConnections: maxConnections)
        if let target = plan.raiseTo {
            var raised = limit
            raised.rlim_cur = rlim_t(target)
            if setrlimit(Self.resource, &raised) == 0 {
                logger.info("raised the open-file limit", metadata: ["sluice.from": "\(limit.rlim_cur)", "sluice.to": "\(target)"])
                limit = raised
            } else {
                logger.warning("could not raise the open-file limit", metadata: ["sluice.limit": "\(limit.rlim_cur)", "sluice.errno": "\(errno)"])
            }
        }
        if let warning = plan.warning {
            logger.warning("\(warning)")
        }
        return UInt64(limit.rlim_cur)
    }

    #if canImport(Glibc)
    private static let resource = Int32(RLIMIT_NOFILE.rawValue)
    #else
    private static let resource = RLIMIT_NOFILE
    #endif
}
