import Testing
@testable import RedisClient

@Suite struct RedisURLTests {
    @Test func fullURL() throws {
        let url = try RedisURL("redis://cache.internal:6380/3")
        #expect(url == RedisURL(host: "cache.internal", port: 6380, database: 3))
        #expect(url.description == "redis://cache.internal:6380/3")
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
    }

    @Test(arguments: [
        ("localhost:6379", "expected redis://"),
        ("http://localhost", "unsupported scheme"),
        ("rediss://localhost", "TLS"),
        ("redis://:6379", "missing host"),
        ("redis://user:pass@localhost", "credentials"),
        ("redis://localhost:port", "port must be"),
        ("redis://localhost:70000", "port must be"),
        ("redis://localhost:-1", "port must be"),
        ("redis://localhost/db1", "database must be"),
        ("redis://localhost/1/2", "database must be"),
        ("redis://localhost?db=1", "query"),
        ("redis://[::1", "IPv6"),
    ])
    func rejectsMalformedInput(input: String, reason: String) {
        do {
            let url = try RedisURL(input)
            Issue.record("\(input) parsed as \(url)")
        } catch {
            #expect(error.reason.contains(reason), "\(input): \(error.reason)")
            #expect(error.description.contains(input))
        }
    }
}
