import NIOHTTP1
import SluiceProtocol

extension HTTPResponseStatus {
    /// The status for a protocol error code: `ErrorCode.httpStatus` is the one mapping.
    package init(_ code: ErrorCode) {
        self.init(statusCode: code.httpStatus)
    }
}
