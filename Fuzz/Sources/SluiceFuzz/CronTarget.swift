import Foundation
import Jobs

/// `CronSchedule` on any expression, against a cron reading written out here and Foundation's
/// Gregorian calendar: it accepts exactly the expressions the reference accepts; `matches` agrees
/// with the reference on sample dates; `next(after:)` is strictly later, on a whole minute, matches,
/// and no matching minute lies between (checked minute by minute over the first day); and no date,
/// however extreme, traps.
///
/// Input: [8 bytes: the date] expression...
enum CronTarget {
    /// 1600-01-01 and 2400-01-01: Foundation's calendar is Julian before 1582, so the reference
    /// stays within the Gregorian centuries.
    static let firstSecond: Int64 = -11_676_096_000
    static let lastSecond: Int64 = 13_569_465_600

    static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let seed = input.uint64()
        let expression = String(decoding: input.rest(), as: UTF8.self)

        let schedule = try? CronSchedule(expression)
        let reference = ReferenceCron(expression)
        require((schedule != nil) == (reference != nil),
                "CronSchedule says \(schedule != nil ? "valid" : "invalid"), the reference says \(reference != nil ? "valid" : "invalid") for \(expression.debugDescription)")
        guard let schedule, let reference else { return }

        let span = UInt64(Self.lastSecond - Self.firstSecond)
        let seconds = Self.firstSecond + Int64(seed % span)
        let date = Date(timeIntervalSince1970: Double(seconds) + Double(seed >> 56) / 256)
        for probe in [date, date.addingTimeInterval(59), date.addingTimeInterval(86_400 * 31)] {
            require(schedule.matches(probe) == reference.matches(probe), "matches(\(probe)) differs from the reference")
        }

        if let next = schedule.next(after: date) {
            require(next > date, "next(after: \(date)) = \(next) is not later")
            require(next.timeIntervalSince1970.truncatingRemainder(dividingBy: 60) == 0, "next fire \(next) is not on a whole minute")
            require(schedule.matches(next) && reference.matches(next), "next fire \(next) does not match \(expression)")
            if let first = reference.firstMatch(after: date, withinMinutes: 1500) {
                require(first == next, "next(after: \(date)) = \(next), but \(first) matches earlier")
            } else {
                require(next.timeIntervalSince(date) > 1499 * 60, "next fire \(next) within a day that the reference does not match")
            }
        } else {
            require(reference.firstMatch(after: date, withinMinutes: 1500) == nil, "next(after:) found nothing, but a minute matches within a day")
        }

        // No trap at the edges of time.
        for edge in [Date.distantPast, Date.distantFuture, Date(timeIntervalSince1970: .nan), Date(timeIntervalSince1970: .infinity),
                     Date(timeIntervalSince1970: -315_537_897_600), Date(timeIntervalSince1970: 315_537_897_599),
                     Date(timeIntervalSince1970: 10_000 * 366 * 86_400 - 1), Date(timeIntervalSince1970: -10_000 * 366 * 86_400 + 1)] {
            if let next = schedule.next(after: edge) { require(next > edge, "next(after: \(edge)) is not later") }
            _ = schedule.matches(edge)
        }
    }
}

/// Cron as the man page describes it, evaluated with Foundation's Gregorian calendar in UTC.
struct ReferenceCron {
    var minutes: Set<Int>, hours: Set<Int>, days: Set<Int>, months: Set<Int>, weekdays: Set<Int>
    var eitherDay: Bool

    static let macros = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]
    static let monthNames = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    init?(_ expression: String) {
        guard expression.utf8.count <= 1024 else { return nil }
        var text = expression.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.hasPrefix("@") {
            guard let expanded = Self.macros[text.lowercased()] else { return nil }
            text = expanded
        }
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count == 5,
              let minutes = Self.field(fields[0], 0, 59, names: []),
              let hours = Self.field(fields[1], 0, 23, names: []),
              let days = Self.field(fields[2], 1, 31, names: []),
              let months = Self.field(fields[3], 1, 12, names: Self.monthNames),
              let weekdays = Self.field(fields[4], 0, 7, names: Self.dayNames, wildcardTop: 6)
        else { return nil }
        self.minutes = minutes
        self.hours = hours
        self.days = days
        self.months = months
        self.weekdays = Set(weekdays.map { $0 == 7 ? 0 : $0 })
        self.eitherDay = !fields[2].hasPrefix("*") && !fields[4].hasPrefix("*")
    }

    static func field(_ text: Substring, _ low: Int, _ high: Int, names: [String], wildcardTop: Int? = nil) -> Set<Int>? {
        var set = Set<Int>()
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "/", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count) else { return nil }
            var step = 1
            if parts.count == 2 {
                guard let value = Self.number(parts[1]), value >= 1, value <= high - low + 1 else { return nil }
                step = value
            }
            func value(_ text: Substring) -> Int? {
                if let number = Self.number(text) { return (low...high).contains(number) ? number : nil }
                return names.firstIndex(of: text.lowercased()).map { low + $0 }
            }
            let top = wildcardTop ?? high
            var first: Int, last: Int
            if parts[0] == "*" {
                (first, last) = (low, top)
            } else if let dash = parts[0].firstIndex(of: "-") {
                guard let a = value(parts[0][..<dash]), let b = value(parts[0][parts[0].index(after: dash)...]), a <= b else { return nil }
                (first, last) = (a, b)
            } else {
                guard let a = value(parts[0]) else { return nil }
                (first, last) = (a, parts.count == 2 ? max(a, top) : a)
            }
            set.formUnion(stride(from: first, through: last, by: step))
        }
        return set
    }

    static func number(_ text: Substring) -> Int? {
        guard !text.isEmpty, text.count <= 4, text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(text)
    }

    static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    func matches(_ date: Date) -> Bool {
        let c = Self.calendar.dateComponents([.minute, .hour, .day, .month, .weekday], from: date)
        return self.matches(minute: c.minute!, hour: c.hour!, day: c.day!, month: c.month!, weekday: c.weekday! - 1)
    }

    func matches(minute: Int, hour: Int, day: Int, month: Int, weekday: Int) -> Bool {
        guard self.minutes.contains(minute), self.hours.contains(hour), self.months.contains(month) else { return false }
        let dayOfMonth = self.days.contains(day), dayOfWeek = self.weekdays.contains(weekday)
        return self.eitherDay ? dayOfMonth || dayOfWeek : dayOfMonth && dayOfWeek
    }

    /// The first matching minute strictly after `date`, stepping a clock minute by minute.
    func firstMatch(after date: Date, withinMinutes count: Int) -> Date? {
        let start = (date.timeIntervalSince1970 / 60).rounded(.down) * 60
        let c = Self.calendar.dateComponents([.year, .minute, .hour, .day, .month, .weekday], from: Date(timeIntervalSince1970: start))
        var (year, month, day, hour, minute, weekday) = (c.year!, c.month!, c.day!, c.hour!, c.minute!, c.weekday! - 1)
        for step in 1...count {
            minute += 1
            if minute == 60 { minute = 0; hour += 1 }
            if hour == 24 {
                hour = 0
                day += 1
                weekday = (weekday + 1) % 7
                let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
                let length = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
                if day > length { day = 1; month += 1 }
                if month == 13 { month = 1; year += 1 }
            }
            if self.matches(minute: minute, hour: hour, day: day, month: month, weekday: weekday) {
                return Date(timeIntervalSince1970: start + Double(step) * 60)
            }
        }
        return nil
    }
}
