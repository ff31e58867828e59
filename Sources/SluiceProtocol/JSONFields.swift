import Foundation

/// Typed, range-checked access to the fields of a JSON object from `JSONSerialization`, with
/// errors that name the field. Numbers need care there: integers arrive as `NSNumber`s of an
/// integer type (`q`, or `Q` past `Int64.max`), larger ones as doubles or `NSDecimalNumber`s,
/// fractions as doubles, and booleans are `NSNumber`s too (`true as? Int` is 1). Every integer
/// read here is exact and inside its range, every double finite and inside its range.
struct JSONFields {
    let object: [String: Any]
    var requestID: String?

    init(object: [String: Any]) { self.object = object }

    /// The value of `name`, or nil when absent or `null`.
    func value(_ name: String) -> Any? {
        guard let value = self.object[name], !(value is NSNull) else { return nil }
        return value
    }

    func optionalString(_ name: String, maxBytes: Int? = nil) throws(ProtocolViolation) -> String? {
        guard let value = self.value(name) else { return nil }
        guard let string = value as? String else {
            throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be a string")
        }
        if let maxBytes, string.utf8.count > maxBytes {
            throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be at most \(maxBytes) bytes")
        }
        return string
    }

    func requiredString(_ name: String, maxBytes: Int? = nil) throws(ProtocolViolation) -> String {
        guard let string = try self.optionalString(name, maxBytes: maxBytes) else {
            throw ProtocolViolation(.invalidMessage, "missing field \"\(name)\"")
        }
        return string
    }

    func optionalStringArray(_ name: String, maxCount: Int = 64) throws(ProtocolViolation) -> [String]? {
        guard let value = self.value(name) else { return nil }
        guard let array = value as? [Any], array.count <= maxCount, let strings = array as? [String] else {
            throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be an array of at most \(maxCount) strings")
        }
        return strings
    }

    func optionalBool(_ name: String) throws(ProtocolViolation) -> Bool? {
        guard let value = self.value(name) else { return nil }
        guard let number = value as? NSNumber, Self.isBool(number) else {
            throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be true or false")
        }
        return number.boolValue
    }

    /// An integer within `range`: a boolean, a fraction, a non-number or a value outside the
    /// range (however large) is refused. `rangeMessage` replaces the default range message.
    func optionalInteger(_ name: String, in range: ClosedRange<Int64>, rangeMessage: String? = nil) throws(ProtocolViolation) -> Int64? {
        guard let value = self.value(name) else { return nil }
        switch Self.integer(value) {
        case .notAnInteger:
            throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be an integer")
        case .outOfRange:
            throw ProtocolViolation(.invalidMessage, rangeMessage ?? Self.rangeMessage(name, range))
        case .value(let integer):
            guard range.contains(integer) else {
                throw ProtocolViolation(.invalidMessage, rangeMessage ?? Self.rangeMessage(name, range))
            }
            return integer
        }
    }

    /// A finite number within `range` (integers are numbers too).
    func optionalNumber(_ name: String, in range: ClosedRange<Double>) throws(ProtocolViolation) -> Double? {
        guard let value = self.value(name) else { return nil }
        guard let number = value as? NSNumber, !Self.isBool(number) else {
            throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be a number")
        }
        let double = number.doubleValue
        guard double.isFinite, range.contains(double) else {
            throw ProtocolViolation(.invalidMessage, "field \"\(name)\" must be a number from \(Self.format(range.lowerBound)) to \(Self.format(range.upperBound))")
        }
        return double
    }

    static func rangeMessage(_ name: String, _ range: ClosedRange<Int64>) -> String {
        "field \"\(name)\" must be an integer from \(range.lowerBound) to \(range.upperBound)"
    }

    private static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    enum Integer: Equatable {
        case value(Int64)
        /// An integer, but not one `Int64` holds.
        case outOfRange
        case notAnInteger
    }

    /// Reads a JSON number as an exact integer, without trapping on any input.
    static func integer(_ value: Any) -> Integer {
        guard let number = value as? NSNumber, !Self.isBool(number) else { return .notAnInteger }
        if !(number is NSDecimalNumber) {
            switch Self.objCType(number) {
            case "q", "l", "i", "s":
                return .value(number.int64Value)
            case "Q", "L", "I", "S", "C":
                let unsigned = number.uint64Value
                return unsigned <= UInt64(Int64.max) ? .value(Int64(unsigned)) : .outOfRange
            default:
                break
            }
        }
        // A double (or a decimal): integral and finite, then exact in Int64, else out of range.
        let double = number.doubleValue
        guard double.isFinite, double == double.rounded(.towardZero) else { return .notAnInteger }
        guard let exact = Int64(exactly: double) else { return .outOfRange }
        return .value(exact)
    }

    static func isBool(_ number: NSNumber) -> Bool {
        Self.objCType(number) == "c"
    }

    private static func objCType(_ number: NSNumber) -> String {
        String(cString: number.objCType)
    }
}

extension Usage {
    /// A token count as an upstream reported it in JSON (`usage.prompt_tokens`…): a non-negative
    /// integer, clamped to `maximumTokens` (1e30 is the maximum); a negative number, a
    /// fraction, a boolean or a string is no count (nil).
    public static func count(fromJSON value: Any?) -> Int? {
        guard let value else { return nil }
        switch JSONFields.integer(value) {
        case .value(let count) where count >= 0: return Self.clamped(Int(count))
        case .outOfRange:
            guard let number = value as? NSNumber, number.doubleValue > 0 else { return nil }
            return Self.maximumTokens
        default: return nil
        }
    }
}

/// Reading numbers from `JSONSerialization` output without traps (for upstream replies too).
public enum JSONNumber {
    /// The exact integer `value` holds, or nil: not a number, a boolean, a fraction, or out of
    /// `Int`'s range (where `Int(someDouble)` would trap).
    public static func integer(_ value: Any) -> Int? {
        guard case .value(let integer) = JSONFields.integer(value) else { return nil }
        return Int(exactly: integer)
    }
}
