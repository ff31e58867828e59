import NIOCore
@testable import WSServer

/// `DeflateDecompressor` (permessage-deflate inflate with an output limit) given raw deflate data
/// in arbitrary pieces, as frames deliver it: it never produces more than `limit` bytes, and it
/// agrees with zlib given the whole message at once (same bytes, or the same kind of failure).
///
/// Input: [options] [split seed] [limit / 257] [cut] compressed...
/// options bit 0: two messages (the data cut after `cut` bytes; context kept unless bit 1).
enum InflateTarget {
    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let options = input.byte()
        var splitter = Splitter(seed: input.byte())
        let limit = Int(input.byte()) * 257
        let cut = Int(input.byte())
        let compressed = input.rest()
        let messages = options & 1 != 0
            ? [Array(compressed.prefix(cut)), Array(compressed.dropFirst(cut))]
            : [compressed]

        let decompressor = DeflateDecompressor()
        let reference = ReferenceInflater()
        for message in messages {
            var output = ByteBuffer()
            let pieces = splitter.split(message) + [ArraySlice<UInt8>([0, 0, 0xFF, 0xFF])]
            var failure: DeflateDecompressor.InflateError?
            for piece in pieces {
                do {
                    try decompressor.inflate(ByteBuffer(bytes: piece), into: &output, limit: limit)
                } catch {
                    failure = error
                    break
                }
                require(output.readableBytes <= limit, "inflate returned \(output.readableBytes) bytes, over its limit of \(limit)")
            }
            // Failing, it may have written one byte past the limit (that is how it sees the limit crossed), no more.
            require(output.readableBytes <= limit + 1, "inflate wrote \(output.readableBytes) bytes with a limit of \(limit)")
            let expected = reference.inflate(message + [0, 0, 0xFF, 0xFF], limit: limit)
            switch (failure, expected) {
            case (nil, .ok(let bytes)):
                require(Array(output.readableBytesView) == bytes, "inflated bytes differ from zlib's")
            case (.tooLarge?, .tooLarge), (.corrupt?, .corrupt):
                return
            default:
                fatalError("inflate says \(String(describing: failure)), zlib in one piece says \(expected)")
            }
            if options & 2 != 0 {
                decompressor.release()
                reference.reset()
            }
        }
    }
}
