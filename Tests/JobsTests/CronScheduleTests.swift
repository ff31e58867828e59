import Foundation
import Jobs
import Testing

/// "2024-05-01T10:07:00Z" as a Date; nil for a malformed literal (which then fails the test).
private func utc(_ text: String) -> Date? {
    let formatter = ISO8601DateFormatter()
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.date(from: text)
}

private func utcText(_ date: Date?) -> String? {
    guard let date else { return nil }
    let formatter = ISO8601DateFormatter()
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.string(from: date)
}

/// The next run of `expression` after `after`, as ISO 8601 text.
private func next(_ expression: String, after: String) throws -> String? {
    let schedule = try CronSchedule(expression)
    let start = try #require(utc(after))
    return utcText(schedule.next(after: start))
}

private func cronError(_ expression: String) -> CronScheduleError? {
    do {
        _ = try CronSchedule(expression)
        return nil
    } catch {
        return error
    }
}

@Suite struct CronScheduleNextTests {
    @Test func everyFifteenMinutes() throws {
        #expect(try next("*/15 * * * *", after: "2024-05-01T10:07:00Z") == "2024-05-01T10:15:00Z")
        #expect(try next("*/15 * * * *", after: "2024-05-01T10:15:00Z") == "2024-05-01T10:30:00Z")  // strictly after
        #expect(try next("*/15 * * * *", after: "2024-05-01T10:14:59Z") == "2024-05-01T10:15:00Z")
        #expect(try next("*/15 * * * *", after: "2024-05-01T23:50:00Z") == "2024-05-02T00:00:00Z")
        #expect(try next("* * * * *", after: "2024-05-01T10:07:30Z") == "2024-05-01T10:08:00Z")
    }

    @Test func weekdaysSkipTheWeekend() throws {
        // 2024-05-03 is a Friday.
        #expect(try next("0 9 * * mon-fri", after: "2024-05-03T09:00:00Z") == "2024-05-06T09:00:00Z")
        #expect(try next("0 9 * * mon-fri", after: "2024-05-04T08:00:00Z") == "2024-05-06T09:00:00Z")
        #expect(try next("0 9 * * 1-5", after: "2024-05-06T08:59:00Z") == "2024-05-06T09:00:00Z")
    }

    @Test func leapDays() throws {
        #expect(try next("0 0 29 2 *", after: "2024-03-01T00:00:00Z") == "2028-02-29T00:00:00Z")
        #expect(try next("0 0 29 2 *", after: "2023-01-01T00:00:00Z") == "2024-02-29T00:00:00Z")
        // 2100 is not a leap year, and 2104 is more than five years on.
        #expect(try next("0 0 29 2 *", after: "2096-03-01T00:00:00Z") == nil)
        #expect(try next("0 0 * * *", after: "1900-02-28T00:00:00Z") == "1900-03-01T00:00:00Z")
    }

    @Test func impossibleDatesGiveNil() throws {
        #expect(try next("0 0 30 2 *", after: "2024-01-01T00:00:00Z") == nil)
        #expect(try next("0 0 31 4 *", after: "2024-01-01T00:00:00Z") == nil)
    }

    @Test func dayOfMonthOrDayOfWeek() throws {
        // Both restricted: the 13th OR any Friday (2024-09-06 and 2024-09-13 are Fridays).
        #expect(try next("0 0 13 * fri", after: "2024-09-01T00:00:00Z") == "2024-09-06T00:00:00Z")
        #expect(try next("0 0 13 * fri", after: "2024-09-13T00:00:00Z") == "2024-09-20T00:00:00Z")
        #expect(try next("0 0 14 * fri", after: "2024-09-07T00:00:00Z") == "2024-09-13T00:00:00Z")
        #expect(try next("0 0 14 * fri", after: "2024-09-13T00:00:00Z") == "2024-09-14T00:00:00Z")
        // A field starting with "*" counts as unrestricted (Vixie cron): odd days AND Fridays.
        #expect(try next("0 0 */2 * fri", after: "2024-09-01T00:00:00Z") == "2024-09-13T00:00:00Z")
        // The month still applies to both.
        #expect(try next("0 0 29 2 mon", after: "2024-03-01T00:00:00Z") == "2025-02-03T00:00:00Z")

        let schedule = try CronSchedule("0 0 13 * fri")
        #expect(schedule.matches(try #require(utc("2024-09-06T00:00:00Z"))))
        #expect(schedule.matches(try #require(utc("2024-10-13T00:00:00Z"))))
        #expect(!schedule.matches(try #require(utc("2024-10-14T00:00:00Z"))))
        let dayOfMonthOnly = try CronSchedule("0 0 13 * *")
        #expect(!dayOfMonthOnly.matches(try #require(utc("2024-09-06T00:00:00Z"))))
    }

    @Test func sundayIsZeroOrSeven() throws {
        #expect(try next("0 0 * * 7", after: "2024-09-01T00:00:00Z") == "2024-09-08T00:00:00Z")
        #expect(try next("0 0 * * sun", after: "2024-09-01T00:00:00Z") == "2024-09-08T00:00:00Z")
        #expect(try next("0 0 * * 0", after: "2024-08-31T23:59:00Z") == "2024-09-01T00:00:00Z")
        let weekend = try CronSchedule("0 0 * * 5-7")
        #expect(weekend.matches(try #require(utc("2024-09-08T00:00:00Z"))))  // Sunday
        #expect(weekend.matches(try #require(utc("2024-09-07T00:00:00Z"))))  // Saturday
        #expect(!weekend.matches(try #require(utc("2024-09-09T00:00:00Z"))))  // Monday
    }

    @Test func listsRangesStepsAndNames() throws {
        #expect(try next("5,10-12 1-3/2 * * *", after: "2024-01-01T01:12:00Z") == "2024-01-01T03:05:00Z")
        #expect(try next("5,10-12 1-3/2 * * *", after: "2024-01-01T03:12:00Z") == "2024-01-02T01:05:00Z")
        #expect(try next("10/20 * * * *", after: "2024-01-01T00:50:00Z") == "2024-01-01T01:10:00Z")
        #expect(try next("0 0 1 */3 *", after: "2024-02-01T00:00:00Z") == "2024-04-01T00:00:00Z")
        #expect(try next("0 0 * JAN-Mar MON", after: "2024-03-26T00:00:00Z") == "2025-01-06T00:00:00Z")
        #expect(try next("30 2 1 jan *", after: "2024-01-01T02:30:00Z") == "2025-01-01T02:30:00Z")
        #expect(try next("59 23 31 12 *", after: "2024-12-31T23:59:00Z") == "2025-12-31T23:59:00Z")
        #expect(try next("0 12 * * *", after: "1969-12-31T13:00:00Z") == "1970-01-01T12:00:00Z")
    }

    @Test func macros() throws {
        #expect(try next("@yearly", after: "2024-06-15T12:00:00Z") == "2025-01-01T00:00:00Z")
        #expect(try next("@annually", after: "2024-06-15T12:00:00Z") == "2025-01-01T00:00:00Z")
        #expect(try next("@monthly", after: "2024-12-15T12:00:00Z") == "2025-01-01T00:00:00Z")
        #expect(try next("@weekly", after: "2024-09-04T12:00:00Z") == "2024-09-08T00:00:00Z")
        #expect(try next("@daily", after: "2024-02-28T12:00:00Z") == "2024-02-29T00:00:00Z")
        #expect(try next("@midnight", after: "2024-12-31T00:00:00Z") == "2025-01-01T00:00:00Z")
        #expect(try next("@hourly", after: "2024-12-31T23:00:00Z") == "2025-01-01T00:00:00Z")
        #expect(try CronSchedule("@daily").description == "@daily")
    }

    @Test func nextAlwaysMatchesAndNothingEarlierDoes() throws {
        let expressions = ["*/7 3-20/5 * * *", "0 0 13 * fri", "15 4 1,15 * *", "0 12 * jun-aug sat,sun", "5 * */3 * 2"]
        for expression in expressions {
            let schedule = try CronSchedule(expression)
            var start = try #require(utc("2024-01-01T00:00:00Z"))
            for _ in 0..<50 {
                let found = try #require(schedule.next(after: start))
                #expect(found > start && schedule.matches(found), "\(expression)")
                #expect(found.timeIntervalSince1970.truncatingRemainder(dividingBy: 60) == 0)
                start = found
            }
        }
    }

    @Test func unreachableDatesGiveNil() throws {
        let schedule = try CronSchedule("0 0 * * 1")
        #expect(schedule.next(after: Date(timeIntervalSince1970: .infinity)) == nil)
        #expect(schedule.next(after: Date(timeIntervalSince1970: .nan)) == nil)
        #expect(schedule.next(after: Date(timeIntervalSince1970: 1e300)) == nil)
        #expect(!schedule.matches(Date(timeIntervalSince1970: .infinity)))
    }
}

@Suite struct CronScheduleParsingTests {
    @Test func matchesIgnoresSeconds() throws {
        let schedule = try CronSchedule("30 10 * * *")
        #expect(schedule.matches(try #require(utc("2024-05-01T10:30:59Z"))))
        #expect(!schedule.matches(try #require(utc("2024-05-01T10:31:00Z"))))
    }

    @Test func descriptionAndEquality() throws {
        #expect(try CronSchedule(" 0 0 * * * ").description == " 0 0 * * * ")
        #expect(try CronSchedule("0 0 * * *") == CronSchedule("0 0 * * *"))
        #expect(try CronSchedule("0 0 * * *") != CronSchedule("0 1 * * *"))
        #expect(try CronSchedule("0\t0  *   * *").matches(try #require(utc("2024-01-01T00:00:00Z"))))
    }

    @Test(arguments: [
        ("", "empty"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "got 6"),
        ("@reboot", "unknown macro"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("*/0 * * * *", "minute: step"),
        ("5-3 * * * *", "minute: range '5-3' runs backwards"),
        ("1,,2 * * * *", "minute: empty item"),
        ("* * * foo *", "month: 'foo'"),
        ("* * * * funday", "day-of-week: 'funday'"),
        ("* * * * jan", "day-of-week"),
        ("* * * mon *", "month"),
        ("1/2/3 * * * *", "minute"),
        ("99999999999999999999 * * * *", "minute"),
    ])
    func invalidExpressions(expression: String, expected: String) {
        let error = cronError(expression)
        #expect(error?.message.contains(expected) == true, "\(String(describing: error))")
    }

    @Test func overlongExpressionIsRejected() {
        #expect(cronError(String(repeating: "* ", count: 600))?.message.contains("too long") == true)
        #expect(throws: CronScheduleError.self) { try CronSchedule("* * * *") }
    }
}
