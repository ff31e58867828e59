import Foundation
import NIOConcurrencyHelpers
import Testing
@testable import Storage

@Suite struct PostgresURLTests {
    @Test func parsesTheUsualForms() throws {
        let url = try PostgresURL("postgres://sluice:s3cret@db.internal:6543/chat")
        #expect(url == PostgresURL(host: "db.internal", port: 6543, username: "sluice", password: "s3cret", database: "chat"))
        #expect(url.tls == .prefer)

        let minimal = try PostgresURL("postgresql://me@localhost/db?sslmode=disable")
        #expect(minimal.port == 5432 && minimal.password == nil && minimal.tls == .disable)

        let encoded = try PostgresURL("postgres://us%40er:p%3Ass@[::1]:5433/my%20db?sslmode=verify-full")
        #expect(encoded.username == "us@er" && encoded.password == "p:ss" && encoded.host == "::1")
        #expect(encoded.port == 5433 && encoded.database == "my db" && encoded.tls == .verifyFull)

        // An unencoded "@" in the password: the last one separates the host.
        #expect(try PostgresURL("postgres://u:a@b@h/d").password == "a@b")
    }

    @Test func rejectsBadInputClearlyWithoutLeakingThePassword() {
        let cases = [
            ("mysql://u:p@h/d", "unsupported scheme"),
            ("postgres://h:5432/d", "missing user name"),
            ("postgres://u:p@h:5432", "missing database"),
            ("postgres://u:p@h:99999/d", "port must be"),
            ("postgres://u:p@h:x/d", "port must be"),
            ("postgres://u:p@:5432/d", "missing host"),
            ("postgres://u:p@h/d?sslmode=sometimes", "sslmode must be"),
            ("postgres://u:p@h/d?connect_timeout=3", "unsupported parameter"),
            ("localhost:5432", "expected postgres://"),
        ]
        for (text, reason) in cases {
            do {
                _ = try PostgresURL(text)
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.reason.contains(reason), "\(text): \(error.reason)")
                #expect(!error.description.contains(":p@"), "password masked: \(error.description)")
            }
        }
    }

    @Test func descriptionMasksThePassword() throws {
        let url = try PostgresURL("postgres://sluice:s3cret@h/d")
        #expect(url.description == "postgres://sluice:***@h:5432/d?sslmode=prefer")
        let verified = try PostgresURL("postgres://sluice:s3cret@h/d?sslmode=verify-full&sslrootcert=/etc/ca.crt")
        #expect(verified.description == "postgres://sluice:***@h:5432/d?sslmode=verify-full&sslrootcert=/etc/ca.crt")
    }

    /// libpq's sslmode, sslrootcert, sslcert and sslkey, and what each asks to be checked.
    @Test func tlsParametersAndWhatTheyVerify() throws {
        let cases: [(String, PostgresURL.TLSMode, PostgresURL.Verification)] = [
            ("", .prefer, .none),
            ("?sslmode=disable", .disable, .none),
            ("?sslmode=allow", .allow, .none),
            ("?sslmode=prefer", .prefer, .none),
            ("?sslmode=require", .require, .none),
            ("?sslmode=verify-ca", .verifyCA, .certificate),
            ("?sslmode=verify-full", .verifyFull, .full),
            // A root certificate makes the weaker modes verify the chain (libpq's rule).
            ("?sslmode=require&sslrootcert=/ca.pem", .require, .certificate),
            ("?sslmode=prefer&sslrootcert=/ca.pem", .prefer, .certificate),
            ("?sslrootcert=/ca.pem&sslmode=verify-full", .verifyFull, .full),
            // `system`: the system's trust store, as if none were given.
            ("?sslmode=require&sslrootcert=system", .require, .none),
        ]
        for (query, mode, verification) in cases {
            let url = try PostgresURL("postgres://u:p@h/d" + query)
            #expect(url.tls == mode, "\(query)")
            #expect(url.verification == verification, "\(query)")
        }
        let full = try PostgresURL("postgres://u@h/d?sslmode=verify-full&sslrootcert=/a%20b/ca.pem&sslcert=/c.pem&sslkey=/k.pem")
        #expect(full.rootCertificatePath == "/a b/ca.pem" && full.clientCertificatePath == "/c.pem" && full.clientKeyPath == "/k.pem")
    }

    @Test func contradictoryTLSParametersAreRefused() {
        let cases = [
            ("postgres://u:p@h/d?sslcert=/c.pem", "sslcert and sslkey go together"),
            ("postgres://u:p@h/d?sslkey=/k.pem", "sslcert and sslkey go together"),
            ("postgres://u:p@h/d?sslmode=disable&sslrootcert=/ca.pem", "sslmode=disable uses no TLS"),
            ("postgres://u:p@h/d?sslmode=require&sslmode=disable", "given twice"),
            ("postgres://u:p@h/d?sslrootcert=", "needs a value"),
            ("postgres://u:p@h/d?password=p", "unsupported parameter \"password\""),
        ]
        for (text, reason) in cases {
            do {
                _ = try PostgresURL(text)
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.reason.contains(reason), "\(text): \(error.reason)")
                #expect(!error.description.contains("=p") && !error.description.contains(":p@"), "\(error.description)")
            }
        }
    }

    @Test func theErrorMaskerCoversTyposToo() {
        #expect(PostgresURLError.masked("postgres://u:pw@h/d?sslrootcert=/x@y") == "postgres://u:***@h/d?sslrootcert=/x@y")
        #expect(PostgresURLError.masked("postgres:/u:pw@h/d") == "***@h/d")
        #expect(PostgresURLError.masked("postgres://u@h/d") == "postgres://u@h/d")
        #expect(PostgresURLError.masked("postgres://u@h/d?sslmode=require&password=pw&x") == "postgres://u@h/d?sslmode=require&password=***&x")
    }
}

@Suite struct PartitionMonthTests {
    @Test func namesAndBoundsAreUTCMonths() {
        let december = PartitionMonth(containing: utc(2026, 12, 31, 23, 59, 59, milliseconds: 999))
        #expect(december.tableName == "messages_y2026m12")
        #expect(december.lowerBound == "2026-12-01 00:00:00+00")
        #expect(december.upperBound == "2027-01-01 00:00:00+00")
        #expect(PartitionMonth(containing: utc(2027, 1, 1)).tableName == "messages_y2027m01")
        #expect(december.adding(months: -12).tableName == "messages_y2025m12")
        #expect(december.adding(months: 14).tableName == "messages_y2028m02")
    }

    @Test func rangeCoversTheStartMonthAndThoseAhead() {
        let months = PartitionMonth.range(from: utc(2026, 11, 30), monthsAhead: 3).map(\.tableName)
        #expect(months == ["messages_y2026m11", "messages_y2026m12", "messages_y2027m01", "messages_y2027m02"])
        #expect(PostgresSchema.ensurePartitions(PartitionMonth.range(from: utc(2026, 1, 5), monthsAhead: 0))
            .contains("CREATE TABLE messages_y2026m01 PARTITION OF messages\n      FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')"))
    }
}

@Suite struct CursorTests {
    @Test func tokensRoundTripAndRejectGarbage() {
        let cursor = MessageCursor(createdAtMicroseconds: 1_790_000_000_123_456, id: UUID())
        #expect(MessageCursor(token: cursor.token) == cursor)
        let conversation = ConversationCursor(updatedAtMicroseconds: -5, id: UUID())
        #expect(ConversationCursor(token: conversation.token) == conversation)
        for garbage in ["", "12", "abc_\(UUID())", "1_2_3", "1_not-a-uuid"] {
            #expect(MessageCursor(token: garbage) == nil, "\(garbage)")
        }
    }

    @Test func microsecondsSurviveTheRoundTripThroughDate() {
        for micros: Int64 in [0, 1, 999_999, 1_790_000_000_123_456, 1_924_991_999_999_000] {
            #expect(Date(microsecondsSince1970: micros).microsecondsSince1970 == micros)
        }
    }
}

@Suite struct OperationDeadlineTests {
    /// A database call that ignores cancellation (a pooled-connection request while the database
    /// is down) must not hold the caller past its deadline: that stalled the write queue once.
    @Test(.timeLimit(.minutes(15))) func aBodyThatIgnoresCancellationIsAbandonedAtTheDeadline() async throws {
        let finished = NIOLockedValueBox(false)
        do {
            _ = try await PostgresStorage.withDeadline(.milliseconds(100)) { () async throws -> Int in
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    DispatchQueue.global().asyncAfter(deadline: .now() + 10) { continuation.resume() }
                }
                finished.withLockedValue { $0 = true }
                return 1
            }
            Issue.record("the deadline did not fire")
        } catch let error as StorageError {
            #expect("\(error)".contains("no answer within"))
        }
        #expect(!finished.withLockedValue { $0 }, "answered while the body was still running")
        #expect(try await PostgresStorage.withDeadline(.seconds(10)) { 42 } == 42)
        await #expect(throws: StorageError.self) {
            try await PostgresStorage.withDeadline(.seconds(10)) { () async throws -> Int in throw StorageError.unavailable("down") }
        }
    }
}
