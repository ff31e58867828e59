// Saturating arithmetic for limit, quota and Redis values (an internal copy of SluiceProtocol's
// helpers: Policy may not import that module, and internal keeps the two from clashing where
// both are visible).

extension FixedWidthInteger {
    /// `self + other`, or the bound it would have passed.
    func addingSaturating(_ other: Self) -> Self {
        let (sum, overflow) = self.addingReportingOverflow(other)
        guard overflow else { return sum }
        return other > 0 ? .max : .min
    }

    /// `self - other`, or the bound it would have passed.
    func subtractingSaturating(_ other: Self) -> Self {
        let (difference, overflow) = self.subtractingReportingOverflow(other)
        guard overflow else { return difference }
        return other > 0 ? .min : .max
    }

    /// `self * other`, or the bound it would have passed.
    func multipliedSaturating(by other: Self) -> Self {
        let (product, overflow) = self.multipliedReportingOverflow(by: other)
        guard overflow else { return product }
        return (self < 0) == (other < 0) ? .max : .min
    }
}

enum Saturating {
    /// The longest `retry_after_ms` a limit reports: a day. A request that could never fit (it
    /// wants more than a bucket holds) still gets a finite, sane wait.
    static let maximumRetryAfterMs: Int64 = 86_400_000

    /// `seconds` as whole milliseconds, rounded up, within 0...`maximumRetryAfterMs` (NaN: the maximum).
    static func retryAfterMs(seconds: Double) -> Int64 {
        let milliseconds = (seconds * 1000).rounded(.up)
        guard milliseconds == milliseconds else { return Self.maximumRetryAfterMs }
        guard milliseconds > 0 else { return 0 }
        guard milliseconds < Double(Self.maximumRetryAfterMs) else { return Self.maximumRetryAfterMs }
        return Int64(milliseconds)
    }

    /// `value` rounded down to an `Int`, clamped to `Int`'s range (NaN: 0).
    static func int(roundingDown value: Double) -> Int {
        let rounded = value.rounded(.down)
        guard rounded == rounded else { return 0 }
        if rounded >= 9_223_372_036_854_775_808.0 { return .max }
        if rounded <= -9_223_372_036_854_775_808.0 { return .min }
        return Int(rounded)
    }
}
