import Foundation

/// Why a cron expression could not be read.
public struct CronScheduleError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String

    public init(message: String) {
        self.message = message
    }

    public var description: String { self.message }
}

/// A five-field cron expression (minute hour day-of-month month day-of-week), evaluated in UTC.
///
/// Fields take `*`, numbers, ranges `a-b`, steps `*/s`, `a-b/s` and `a/s` (a to the field's
/// maximum), and lists `a,b,c-d`; months take `jan`-`dec` and days of the week `sun`-`sat`
/// (any case); day-of-week 7 is Sunday, like 0. The macros `@yearly` (`@annually`), `@monthly`,
/// `@weekly`, `@daily` (`@midnight`) and `@hourly` stand for their usual expressions.
///
/// As in Vixie cron, when both day-of-month and day-of-week are restricted (neither starts with
/// `*`), a day matches if either does: `0 0 13 * fri` runs on every 13th and every Friday.
///
/// Dates use the proleptic Gregorian calendar in UTC, computed directly from the time since 1970
/// (the same answers as `Calendar(identifier: .gregorian)` in UTC for any modern date), so
/// `next(after:)` can move a day at a time without a calendar per step.
public struct CronSchedule: Sendable, Equatable, CustomStringConvertible {
    /// The longest expression accepted, in UTF-8 bytes.
    public static let maximumLength = 1024
    /// How far `next(after:)` looks: five years, however many leap days they hold.
    public static let searchDays = 5 * 365 + 2

    private let expression: String
    /// Bit n set when value n is allowed (day-of-week: bit 0 is Sunday).
    private let minutes: UInt64
    private let hours: UInt64
    private let daysOfMonth: UInt64
    private let months: UInt64
    private let daysOfWeek: UInt64
    /// Whether both day fields are restricted, so either may match (the Vixie cron rule).
    private let eitherDayMatches: Bool

    /// The original expression.
    public var description: String { self.expression }

    public init(_ expression: String) throws(CronScheduleError) {
        guard expression.utf8.count <= Self.maximumLength else {
            throw CronScheduleError(message: "cron expression is too long (at most \(Self.maximumLength) bytes)")
        }
        let trimmed = expression.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { throw CronScheduleError(message: "cron expression is empty") }

        var fieldsText = trimmed
        if trimmed.hasPrefix("@") {
            guard let expanded = Self.macros[trimmed.lowercased()] else {
                throw CronScheduleError(
                    message: "unknown macro '\(trimmed)' (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)")
            }
            fieldsText = expanded
        }
        let fields = fieldsText.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count == 5 else {
            throw CronScheduleError(
                message: "expected 5 fields (minute hour day-of-month month day-of-week), got \(fields.count)")
        }

        self.expression = expression
        self.minutes = try Field.minute.parse(fields[0])
        self.hours = try Field.hour.parse(fields[1])
        self.daysOfMonth = try Field.dayOfMonth.parse(fields[2])
        self.months = try Field.month.parse(fields[3])
        self.daysOfWeek = try Field.dayOfWeek.parse(fields[4])
        self.eitherDayMatches = !fields[2].hasPrefix("*") && !fields[4].hasPrefix("*")
    }

    private static let macros: [String: String] = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    ]

    /// Whether `date` (its minute, in UTC) matches.
    public func matches(_ date: Date) -> Bool {
        guard let minute = UTCMinute(date) else { return false }
        let minuteOfDay = minute.minuteOfDay
        return Self.contains(self.hours, minuteOfDay / 60)
            && Self.contains(self.minutes, minuteOfDay % 60)
            && self.matchesDay(CivilDate(daysSince1970: minute.day))
    }

    /// The first minute strictly after `date` that matches (seconds zero), or nil when none
    /// falls within five years (`searchDays`), as for "0 0 30 2 *".
    public func next(after date: Date) -> Date? {
        guard let start = UTCMinute(date) else { return nil }
        var day = start.day
        var earliestMinute = start.minuteOfDay + 1  // strictly after: a later minute of this day
        let lastDay = start.day + Int64(Self.searchDays)

        // At most one pass per day (plus one per skipped month): a few thousand steps at most.
        while day <= lastDay {
            let civil = CivilDate(daysSince1970: day)
            if !Self.contains(self.months, civil.month) {
                day = civil.firstDayOfNextMonth
                earliestMinute = 0
                continue
            }
            if self.matchesDay(civil), let minuteOfDay = self.firstTime(atOrAfter: earliestMinute) {
                return UTCMinute(day: day, minuteOfDay: minuteOfDay).date
            }
            day += 1
            earliestMinute = 0
        }
        return nil
    }

    private func matchesDay(_ civil: CivilDate) -> Bool {
        guard Self.contains(self.months, civil.month) else { return false }
        let dayOfMonth = Self.contains(self.daysOfMonth, civil.day)
        let dayOfWeek = Self.contains(self.daysOfWeek, civil.weekday)
        return self.eitherDayMatches ? dayOfMonth || dayOfWeek : dayOfMonth && dayOfWeek
    }

    /// The first allowed minute of the day (0...1439) at or after `minuteOfDay`.
    private func firstTime(atOrAfter minuteOfDay: Int) -> Int? {
        guard minuteOfDay < 24 * 60 else { return nil }
        let hour = minuteOfDay / 60
        if Self.contains(self.hours, hour), let minute = Self.lowest(self.minutes, atOrAbove: minuteOfDay % 60) {
            return hour * 60 + minute
        }
        guard let laterHour = Self.lowest(self.hours, atOrAbove: hour + 1),
              let minute = Self.lowest(self.minutes, atOrAbove: 0)
        else { return nil }
        return laterHour * 60 + minute
    }

    private static func contains(_ set: UInt64, _ value: Int) -> Bool {
        value >= 0 && value < 64 && set & (1 << UInt64(value)) != 0
    }

    /// The smallest value in `set` that is at least `floor`.
    private static func lowest(_ set: UInt64, atOrAbove floor: Int) -> Int? {
        guard floor < 64 else { return nil }
        let candidates = set & (UInt64.max << UInt64(max(floor, 0)))
        return candidates == 0 ? nil : candidates.trailingZeroBitCount
    }
}

// MARK: - Fields

extension CronSchedule {
    /// One of the five fields: its name for messages, its range, and the names it accepts.
    fileprivate struct Field {
        let name: String
        let range: ClosedRange<Int>
        /// Value names, lowercase; the first stands for `range.lowerBound`.
        var names: [String] = []
        /// The range `*` and open-ended steps cover (day-of-week: 0-6, since 7 repeats Sunday).
        var wildcardRange: ClosedRange<Int>?
        /// Day-of-week: 7 is another name for 0 (Sunday).
        var sevenIsZero = false

        static let minute = Field(name: "minute", range: 0...59)
        static let hour = Field(name: "hour", range: 0...23)
        static let dayOfMonth = Field(name: "day-of-month", range: 1...31)
        static let month = Field(
            name: "month", range: 1...12,
            names: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
        static let dayOfWeek = Field(
            name: "day-of-week", range: 0...7,
            names: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"], wildcardRange: 0...6, sevenIsZero: true)

        /// The allowed values as a bit set.
        func parse(_ text: String) throws(CronScheduleError) -> UInt64 {
            var set: UInt64 = 0
            for item in text.split(separator: ",", omittingEmptySubsequences: false) {
                guard !item.isEmpty else { throw self.error("empty item in list '\(text)'") }
                set |= try self.parseItem(item)
            }
            return set
        }

        /// One list item: `*`, `a`, `a-b`, optionally followed by `/step`.
        private func parseItem(_ item: Substring) throws(CronScheduleError) -> UInt64 {
            let parts = item.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { throw self.error("too many '/' in '\(item)'") }
            let spanText = parts[0]
            var step = 1
            if parts.count == 2 {
                guard let value = Self.number(parts[1]), value >= 1, value <= self.range.count else {
                    throw self.error("step '\(parts[1])' must be a number from 1 to \(self.range.count)")
                }
                step = value
            }
            let wildcard = self.wildcardRange ?? self.range
            let span: ClosedRange<Int>
            if spanText == "*" {
                span = wildcard
            } else if let dash = spanText.firstIndex(of: "-") {
                let first = try self.value(spanText[..<dash])
                let last = try self.value(spanText[spanText.index(after: dash)...])
                guard first <= last else { throw self.error("range '\(spanText)' runs backwards") }
                span = first...last
            } else {
                let first = try self.value(spanText)
                // "a/s" runs from a to the field's maximum.
                span = parts.count == 2 ? first...max(first, wildcard.upperBound) : first...first
            }
            var set: UInt64 = 0
            for value in stride(from: span.lowerBound, through: span.upperBound, by: step) {
                set |= 1 << UInt64(self.sevenIsZero && value == 7 ? 0 : value)
            }
            return set
        }

        /// A number or a name, checked against the field's range.
        private func value(_ text: Substring) throws(CronScheduleError) -> Int {
            if let number = Self.number(text) {
                guard self.range.contains(number) else {
                    throw self.error("\(text) is out of range \(self.range.lowerBound)-\(self.range.upperBound)")
                }
                return number
            }
            if let index = self.names.firstIndex(of: text.lowercased()) {
                return self.range.lowerBound + index
            }
            if text.isEmpty { throw self.error("missing value") }
            throw self.error("'\(text)' is not a number" + (self.names.isEmpty ? "" : " or a \(self.name) name"))
        }

        /// A decimal number of a few digits (so it cannot overflow), or nil.
        private static func number(_ text: Substring) -> Int? {
            guard !text.isEmpty, text.count <= 4, text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            return Int(text)
        }

        private func error(_ message: String) -> CronScheduleError {
            CronScheduleError(message: "\(self.name): \(message)")
        }
    }
}

// MARK: - Dates

extension CronSchedule {
    /// A date truncated to its minute, as whole days since 1970-01-01 UTC and the minute of that day.
    fileprivate struct UTCMinute {
        /// ±10,000 years: beyond this no Date is meaningful, and the arithmetic stays far from overflow.
        static let limitSeconds = 10_000.0 * 366 * 86_400

        let day: Int64
        let minuteOfDay: Int

        init(day: Int64, minuteOfDay: Int) {
            self.day = day
            self.minuteOfDay = minuteOfDay
        }

        /// nil for a date that is not finite or is beyond ±10,000 years.
        init?(_ date: Date) {
            let seconds = date.timeIntervalSince1970
            guard seconds.isFinite, abs(seconds) < Self.limitSeconds else { return nil }
            let minutes = Int64((seconds / 60).rounded(.down))
            // Floor division, so dates before 1970 land on the right day.
            let day = minutes >= 0 ? minutes / 1440 : (minutes - 1439) / 1440
            self.day = day
            self.minuteOfDay = Int(minutes - day * 1440)
        }

        var date: Date {
            Date(timeIntervalSince1970: Double(self.day * 86_400 + Int64(self.minuteOfDay) * 60))
        }
    }

    /// A proleptic Gregorian date (Howard Hinnant's days-from-civil algorithms).
    fileprivate struct CivilDate {
        let daysSince1970: Int64
        let year: Int64
        let month: Int
        let day: Int

        init(daysSince1970 days: Int64) {
            self.daysSince1970 = days
            let shifted = days + 719_468  // days since 0000-03-01
            let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
            let dayOfEra = shifted - era * 146_097
            let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
            let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
            let monthIndex = (5 * dayOfYear + 2) / 153  // March = 0
            self.day = Int(dayOfYear - (153 * monthIndex + 2) / 5 + 1)
            self.month = Int(monthIndex < 10 ? monthIndex + 3 : monthIndex - 9)
            self.year = yearOfEra + era * 400 + (self.month <= 2 ? 1 : 0)
        }

        /// 0 = Sunday; 1970-01-01 was a Thursday.
        var weekday: Int {
            let remainder = (self.daysSince1970 + 4) % 7
            return Int(remainder < 0 ? remainder + 7 : remainder)
        }

        var firstDayOfNextMonth: Int64 {
            self.month == 12
                ? Self.days(year: self.year + 1, month: 1, day: 1)
                : Self.days(year: self.year, month: self.month + 1, day: 1)
        }

        static func days(year: Int64, month: Int, day: Int) -> Int64 {
            let year = month <= 2 ? year - 1 : year
            let era = (year >= 0 ? year : year - 399) / 400
            let yearOfEra = year - era * 400
            let monthIndex = Int64(month > 2 ? month - 3 : month + 9)
            let dayOfYear = (153 * monthIndex + 2) / 5 + Int64(day) - 1
            let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
            return era * 146_097 + dayOfEra - 719_468
        }
    }
}
