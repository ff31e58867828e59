import Testing
@testable import SluiceTestSupport
@testable import WSServer

@Suite struct UTF8ValidatorTests {
    private func check(_ bytes: [UInt8]) -> Bool {
        var validator = UTF8Validator()
        return validator.validate(bytes) && validator.isAtBoundary
    }

    @Test func acceptsValidText() {
        #expect(check(Array("hello, world — κόσμε 𝄞 日本語".utf8)))
        #expect(check([]))
        #expect(check([0xF4, 0x8F, 0xBF, 0xBF]))  // U+10FFFF
        #expect(check([0xED, 0x9F, 0xBF]))  // U+D7FF, just below the surrogates
    }

    @Test func rejectsInvalidSequences() {
        #expect(!check([0xC0, 0xAF]))  // overlong '/'
        #expect(!check([0xE0, 0x80, 0xAF]))  // overlong
        #expect(!check([0xED, 0xA0, 0x80]))  // surrogate U+D800
        #expect(!check([0xF4, 0x90, 0x80, 0x80]))  // above U+10FFFF
        #expect(!check([0xFF]))
        #expect(!check([0x80]))  // lone continuation
        #expect(!check([0xCE, 0xBA, 0xE1]))  // truncated at the end
    }

    @Test func validatesAcrossSplitsAndFailsAtTheFirstBadByte() {
        let text = Array("κόσμε 𝄞 long ascii run to use the eight-byte path".utf8)
        for split in 0...text.count {
            var validator = UTF8Validator()
            let first = validator.validate(Array(text[..<split]))
            let second = validator.validate(Array(text[split...]))
            #expect(first && second)
            #expect(validator.isAtBoundary)
        }
        // Autobahn 6.4.1-style: the bad byte is detected in the chunk where it arrives.
        var validator = UTF8Validator()
        let prefixValid = validator.validate([0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5])
        let badChunkValid = validator.validate([0xF4, 0x90, 0x80, 0x80])
        #expect(prefixValid && !badChunkValid)
    }
}
