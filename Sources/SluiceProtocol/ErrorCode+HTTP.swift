/// The one mapping from the protocol's error codes to HTTP statuses, used by every HTTP route
/// (SSE, history, jobs, the OpenAI-compatible door, refusals before a body is read). The
/// WebSocket protocol carries the code itself; HTTP clients read the status first.
extension ErrorCode {
    public var httpStatus: Int {
        switch self {
        case .unauthorized: 401
        case .notFound: 404
        case .tooLarge: 413
        case .rateLimited, .quotaExceeded: 429
        case .overloaded, .upstreamUnavailable, .unavailable: 503
        case .upstreamError: 502
        case .upstreamTimeout: 504
        // What the client sent or asked for cannot be served as it is.
        case .invalidMessage, .unknownType, .contentRejected, .resumeGap, .ownerLost: 400
        }
    }
}

/// `Retry-After` (RFC 9110 §10.2.3) from the protocol's `retry_after_ms`: whole seconds, rounded
/// up, at least 1 (a client told 0 retries at once, which is what the hint is there to prevent).
public enum RetryAfter {
    public static func headerValue(milliseconds: Int64) -> String {
        String(max(1, milliseconds.addingSaturating(999) / 1000))
    }
}
