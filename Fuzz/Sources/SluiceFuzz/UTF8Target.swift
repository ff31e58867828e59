@testable import WSServer

/// `UTF8Validator` against Swift's own UTF-8 decoding: fed in arbitrary pieces it accepts
/// exactly the valid texts, and it refuses at the first byte after which no valid text can follow
/// (fail fast), never earlier or later.
///
/// Input: [split seed] text...
enum UTF8Target {
    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        var splitter = Splitter(seed: input.byte())
        let text = input.rest()

        var validator = UTF8Validator()
        var accepted = 0
        var refused = false
        for piece in splitter.split(text) {
            if piece.withUnsafeBytes({ validator.validate($0) }) {
                accepted += piece.count
            } else {
                refused = true
                break
            }
        }
        let valid = String(validating: text, as: UTF8.self) != nil
        if !refused {
            require(valid == validator.isAtBoundary, "validator says \(validator.isAtBoundary), Swift says \(valid)")
            return
        }
        require(!valid, "validator refused valid UTF-8")
        // Byte at a time, the refusal comes at the first byte that no valid text can follow.
        var single = UTF8Validator()
        var firstBad = -1
        for (index, byte) in text.enumerated() where !single.validate(CollectionOfOne(byte)) {
            firstBad = index
            break
        }
        require(firstBad >= 0, "refused in pieces, accepted byte at a time")
        require(firstBad >= accepted, "refused before the piece holding the bad byte")
        require(Self.isValidPrefix(text[..<firstBad]), "refused at byte \(firstBad), but the text was already bad before it")
        require(!Self.isValidPrefix(text[...firstBad]), "refused at byte \(firstBad), but valid text can still follow")
    }

    /// Whether some valid UTF-8 text starts with `bytes`: it is valid as it is, or a cut-off
    /// sequence at its end can be completed (at most three continuation bytes; one of these four
    /// fits every position that has a legal continuation, E0/ED/F0/F4's narrower ranges included).
    static func isValidPrefix(_ bytes: ArraySlice<UInt8>) -> Bool {
        if String(validating: bytes, as: UTF8.self) != nil { return true }
        for count in 1...3 {
            for filler: UInt8 in [0x80, 0x90, 0xA0, 0xBF] {
                if String(validating: bytes + repeatElement(filler, count: count), as: UTF8.self) != nil { return true }
            }
        }
        return false
    }
}
