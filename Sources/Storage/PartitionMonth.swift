import Foundation

/// One monthly partition of `messages` (PostgreSQL): UTC calendar months, so a message at
/// 23:59:59.999 on the last day and one at 00:00:00 on the first land in neighbouring partitions.
struct PartitionMonth: Sendable, Hashable, Comparable, CustomStringConvertible {
    var year: Int
    /// 1...12
    var month: Int

    init(year: Int, month: Int) {
        self.year = year
        self.month = month
    }

    init(containing date: Date) {
        let components = Self.calendar.dateComponents([.year, .month], from: date)
        self.init(year: components.year!, month: components.month!)
    }

    init(containingMicroseconds microseconds: Int64) {
        self.init(containing: Date(microsecondsSince1970: microseconds))
    }

    func adding(months: Int) -> PartitionMonth {
        let index = self.year * 12 + (self.month - 1) + months
        return PartitionMonth(year: index.floorDivided(by: 12), month: index.floorModulo(12) + 1)
    }

    var next: PartitionMonth { self.adding(months: 1) }

    /// `messages_y2026m01`
    var tableName: String { "messages_y\(Self.pad(self.year, 4))m\(Self.pad(self.month, 2))" }

    /// `2026-01-01 00:00:00+00`, the inclusive lower bound.
    var lowerBound: String { "\(Self.pad(self.year, 4))-\(Self.pad(self.month, 2))-01 00:00:00+00" }

    /// The next month's lower bound (exclusive upper bound of this one).
    var upperBound: String { self.next.lowerBound }

    var description: String { self.tableName }

    static func < (lhs: PartitionMonth, rhs: PartitionMonth) -> Bool {
        (lhs.year, lhs.month) < (rhs.year, rhs.month)
    }

    /// The months from `start`'s through `monthsAhead` months later.
    static func range(from start: Date, monthsAhead: Int) -> [PartitionMonth] {
        let first = PartitionMonth(containing: start)
        return (0...max(0, monthsAhead)).map { first.adding(months: $0) }
    }

    private static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    private static func pad(_ value: Int, _ width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

extension Int {
    fileprivate func floorDivided(by divisor: Int) -> Int {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }

    fileprivate func floorModulo(_ divisor: Int) -> Int {
        let remainder = self % divisor
        return remainder < 0 ? remainder + divisor : remainder
    }
}
