import SluiceProtocol
import Testing

/// The one mapping from error codes to HTTP statuses, and `Retry-After`.
@Suite struct ErrorCodeHTTPTests {
    @Test func everyCodeHasTheStatusAnHTTPClientExpects() {
        let expected: [ErrorCode: Int] = [
            .invalidMessage: 400, .unknownType: 400, .contentRejected: 400, .resumeGap: 400, .ownerLost: 400,
            .unauthorized: 401, .notFound: 404, .tooLarge: 413,
            .rateLimited: 429, .quotaExceeded: 429,
            .upstreamError: 502,
            .overloaded: 503, .upstreamUnavailable: 503, .unavailable: 503,
            .upstreamTimeout: 504,
        ]
        // A new code must be given its status here too.
        #expect(Set(ErrorCode.allCases) == Set(expected.keys))
        for code in ErrorCode.allCases {
            #expect(code.httpStatus == expected[code], "\(code.rawValue)")
        }
    }

    @Test func retryAfterIsWholeSecondsRoundedUpAndAtLeastOne() {
        #expect(RetryAfter.headerValue(milliseconds: 0) == "1")
        #expect(RetryAfter.headerValue(milliseconds: 1) == "1")
        #expect(RetryAfter.headerValue(milliseconds: 1000) == "1")
        #expect(RetryAfter.headerValue(milliseconds: 1001) == "2")
        #expect(RetryAfter.headerValue(milliseconds: -5) == "1")
        #expect(RetryAfter.headerValue(milliseconds: .max) == String(Int64.max / 1000))
    }
}
