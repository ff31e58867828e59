/// Arithmetic that stops at the type's bounds instead of trapping, for values that come from
/// outside (clients, upstreams, Redis, storage): a huge count must give a huge answer (and a
/// refusal further on), never a crashed process. Policy keeps its own internal copy (it may not
/// import this module).
extension FixedWidthInteger {
    /// `self + other`, or the bound it would have passed.
    @inlinable
    public func addingSaturating(_ other: Self) -> Self {
        let (sum, overflow) = self.addingReportingOverflow(other)
        guard overflow else { return sum }
        return other > 0 ? .max : .min
    }

    /// `self - other`, or the bound it would have passed.
    @inlinable
    public func subtractingSaturating(_ other: Self) -> Self {
        let (difference, overflow) = self.subtractingReportingOverflow(other)
        guard overflow else { return difference }
        return other > 0 ? .min : .max
    }

    /// `self * other`, or the bound it would have passed.
    @inlinable
    public func multipliedSaturating(by other: Self) -> Self {
        let (product, overflow) = self.multipliedReportingOverflow(by: other)
        guard overflow else { return product }
        return (self < 0) == (other < 0) ? .max : .min
    }
}

extension Int64 {
    /// `value` rounded toward zero and clamped to `Int64`'s range; NaN is 0. (`Int64(value)`
    /// traps on NaN, infinities and anything from 2^63 up.)
    @inlinable
    public init(saturating value: Double) {
        if value.isNaN {
            self = 0
        } else if value >= 9_223_372_036_854_775_808.0 {  // 2^63, the first Double past Int64.max
            self = .max
        } else if value <= -9_223_372_036_854_775_808.0 {
            self = .min
        } else {
            self = Int64(value)
        }
    }
}

extension Int {
    /// `value` rounded toward zero and clamped to `Int`'s range; NaN is 0.
    @inlinable
    public init(saturating value: Double) {
        self = Int(truncatingIfNeeded: Int64(saturating: value))
    }
}
