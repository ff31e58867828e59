import Testing
@testable import RedisClient

@Suite struct RedisURLTests {
    @Test func fullURL() throws {
        let url = try RedisURL("redis://cache.internal:6380/3")
        #expect(url == RedisURL(host: "cache.internal", port: 6380, database: 3))
        #expect(url.description == "redis://cache.internal:6380/3")
        #expect(!url.usesTLS && !url.hasCredentials)
    }

    @Test func defaults() throws {
        #expect(try RedisURL("redis://localhost") == RedisURL(host: "localhost", port: 6379, database: 0))
        #expect(try RedisURL("redis://localhost/") == RedisURL(host: "localhost", port: 6379, database: 0))
        #expect(try RedisURL("redis://10.0.0.5:7000") == RedisURL(host: "10.0.0.5", port: 7000, database: 0))
        #expect(try RedisURL("REDIS://h/2") == RedisURL(host: "h", database: 2))
    }

    @Test func ipv6() throws {
        let url = try RedisURL("redis://[::1]:6390/1")
        #expect(url == RedisURL(host: "::1", port: 6390, database: 1))
        #expect(url.description == "redis://[::1]:6390/1")
        let secured = try RedisURL("rediss://u:p@[2001:db8::7]/2")
        #expect(secured == RedisURL(host: "2001:db8::7", port: 6379, database: 2, user: "u", password: "p", usesTLS: true))
        #expect(secured.description == "rediss://u:***@[2001:db8::7]:6379/2")
    }

    @Test func aclUserAndPassword() throws {
        let url = try RedisURL("redis://sluice:s3cret@cache.internal:6380/4")
        #expect(url.user == "sluice" && url.password == "s3cret" && url.host == "cache.internal" && url.port == 6380 && url.database == 4)
        #expect(url.hasCredentials)
        #expect(url.description == "redis://sluice:***@cache.internal:6380/4")
    }

    @Test func passwordWithoutUserMeansAuthWithThePasswordOnly() throws {
        let url = try RedisURL("redis://:only-a-password@localhost")
        #expect(url.user == nil && url.password == "only-a-password")
        #expect(url.description == "redis://:***@localhost:6379/0")
        // Nothing at all before the @: nothing to send.
        let empty = try RedisURL("redis://:@localhost")
        #expect(empty.user == nil && empty.password == nil && !empty.hasCredentials)
        #expect(empty.description == "redis://localhost:6379/0")
    }

    @Test func credentialsArePercentDecoded() throws {
        let url = try RedisURL("redis://app%40team:p%3Aw%2Fd%25%20%C3%A9@h")
        #expect(url.user == "app@team")
        #expect(url.password == "p:w/d% é")
        // Unencoded @, /, ? and # in the password are taken as they are: the last @ ends it.
        let raw = try RedisURL("redis://:a@b/c?d#e@h:1/2")
        #expect(raw.password == "a@b/c?d#e" && raw.host == "h" && raw.port == 1 && raw.database == 2)
        #expect(raw.description == "redis://:***@h:1/2")
    }

    @Test func tls() throws {
        let url = try RedisURL("rediss://default:pw@redis.example.com")
        #expect(url.usesTLS && url.port == 6379)
        #expect(url.description == "rediss://default:***@redis.example.com:6379/0")
        #expect(try RedisURL("REDISS://h:6390").usesTLS)
    }

    @Test(arguments: [
        ("localhost:6379", "expected redis://"),
        ("http://localhost", "unsupported scheme"),
        ("redis://:6379", "missing host"),
        ("redis://user@localhost", "needs a password"),
        ("redis://localhost:port", "port must be"),
        ("redis://localhost:70000", "port must be"),
        ("redis://localhost:-1", "port must be"),
        ("redis://localhost:99999999999999999999999", "port must be"),
        ("redis://localhost/db1", "database must be"),
        ("redis://localhost/1/2", "database must be"),
        ("redis://localhost/99999999999999999999999", "database must be"),
        ("redis://localhost/2147483648", "database must be"),
        ("redis://localhost?db=1", "query"),
        ("redis://[::1", "IPv6"),
        ("redis://:bad%zzescape@localhost", "percent-encoded"),
        ("redis://:bad%FFutf8@localhost", "percent-encoded"),
        ("redis://:trailing%2@localhost", "percent-encoded"),
    ])
    func rejectsMalformedInput(input: String, reason: String) {
        do {
            let url = try RedisURL(input)
            Issue.record("\(input) parsed as \(url)")
        } catch {
            #expect(error.reason.contains(reason), "\(input): \(error.reason)")
            #expect(error.description.contains(RedisURL.masked(input)))
        }
    }

    /// Every way a URL reaches a log line or an error shows no password.
    @Test(arguments: [
        "redis://:hunter2-secret@localhost:6379/0",
        "redis://app:hunter2-secret@localhost",
        "rediss://app:hunter2-secret@[::1]:6390/3",
        "redis://:hunter2-secret@localhost:badport",
        "redis://app:hunter2-secret@localhost/not-a-db",
        "redis://app:hunter2-secret@localhost?x=1",
        "redis://hunter2-secret@localhost",
        "redis://:hunter2%2Dsecret@localhost/x",
    ])
    func passwordsNeverShow(input: String) {
        do {
            let url = try RedisURL(input)
            #expect(!url.description.contains("hunter2"))
            #expect(!String(reflecting: url).contains("hunter2"))
            #expect(!"\(RedisConfiguration(url: url).url)".contains("hunter2"))
        } catch {
            #expect(!error.description.contains("hunter2"), "\(error)")
            #expect(!error.url.contains("hunter2"))
        }
        #expect(!RedisURL.masked(input).contains("hunter2"), "\(RedisURL.masked(input))")
    }

    @Test func maskedLeavesURLsWithoutCredentialsAlone() {
        #expect(RedisURL.masked("redis://localhost:6379/0") == "redis://localhost:6379/0")
        #expect(RedisURL.masked("not a url") == "not a url")
        #expect(RedisURL.masked("redis://u:p@h") == "redis://u:***@h")
    }

    @Test func authArgumentsNeverShowInACommandsDescription() {
        #expect(RedisCommand("AUTH", "app", "hunter2").description == "AUTH ***")
        #expect(RedisCommand("auth", "hunter2").description == "AUTH ***")
        #expect(RedisCommand("GET", "k").description == "GET k")
    }
}
