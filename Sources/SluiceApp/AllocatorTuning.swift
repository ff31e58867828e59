#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging

/// glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB),
/// after which large blocks (a client's 1 MiB message, a response body) come from the heap and,
/// once freed, mostly stay in the process: resident memory then runs well past what
/// `server.memory_budget` holds live (measured: 10,000 clients each sending 1 MiB at once to a
/// 256 MiB budget peaked at +311 MiB, and kept +36 MiB after). Fixing the threshold at glibc's
/// default (128 KiB) turns that adjustment off: large blocks are mapped and unmapped, and
/// resident memory follows the budget (+141 MiB peak, back to idle after). Small allocations,
/// the hot path, are unaffected. `MALLOC_MMAP_THRESHOLD_` in the environment takes precedence.
enum AllocatorTuning {
    static let mmapThreshold: Int32 = 128 * 1024

    /// glibc's `M_MMAP_THRESHOLD` (malloc.h; not in Swift's Glibc module, hence dlsym).
    private static let mmapThresholdOption: Int32 = -3
    private typealias MallOpt = @convention(c) (Int32, Int32) -> Int32

    /// Whether the threshold was fixed (false: not glibc, or the environment chose one).
    @discardableResult
    static func fixMmapThreshold(environment: [String: String] = ProcessInfo.processInfo.environment, logger: Logger? = nil) -> Bool {
        #if canImport(Glibc)
        guard environment["MALLOC_MMAP_THRESHOLD_"] == nil else { return false }
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "mallopt") else { return false }
        let mallopt = unsafeBitCast(symbol, to: MallOpt.self)
        guard mallopt(Self.mmapThresholdOption, Self.mmapThreshold) == 1 else {
            logger?.debug("could not fix malloc's mmap threshold")
            return false
        }
        return true
        #else
        return false
        #endif
    }
}
