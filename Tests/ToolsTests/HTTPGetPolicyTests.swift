import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import SluiceTestSupport
import Testing

@testable import Tools

/// `http_get` against server-side request forgery: the allow-list matches host and port, and
/// every resolved address is checked before a connection, which goes to the checked address.
@Suite struct HTTPGetPolicyTests {
    static func address(_ text: String) -> IPAddressBytes { IPAddressBytes(text)! }

    @Test func entriesMatchHostAndPortAndAnEntryWithoutPortMeansTheDefaultPort() throws {
        let policy = try HTTPGetPolicy(allowedHosts: ["Example.com", "api.example.com:8443", "[2001:db8::5]:8080"])
        func allowed(_ url: String) -> Bool { (try? policy.target(of: URL(string: url)!).get()) != nil }
        #expect(allowed("http://example.com/x") && allowed("https://EXAMPLE.com/") && allowed("http://example.com:80/"))
        #expect(!allowed("http://example.com:8080/"), "a listed host on another port")
        #expect(!allowed("https://example.com:80/"), "the default port is the scheme's own")
        #expect(allowed("https://api.example.com:8443/v1") && !allowed("https://api.example.com/v1"))
        #expect(allowed("http://[2001:db8::5]:8080/") && !allowed("http://[2001:db8::5]/"))
        #expect(!allowed("http://sub.example.com/") && !allowed("http://example.com.evil.test/"))
        #expect(!allowed("http://user:pw@example.com/"), "credentials in the URL")
        #expect(!allowed("ftp://example.com/") && !allowed("file:///etc/passwd") && !allowed("gopher://example.com:70/"))
        for bad in ["", "host:0", "host:65536", "host:x", "2001:db8::1", "[::1", "a/b", "u@host"] {
            #expect(throws: HTTPGetPolicy.InvalidEntry.self) { try HTTPGetPolicy(allowedHosts: [bad]) }
        }
        #expect(throws: HTTPGetPolicy.InvalidEntry.self) { try HTTPGetPolicy(allowedHosts: [], allowedNetworks: ["10.0.0.0/33"]) }
        #expect(throws: HTTPGetPolicy.InvalidEntry.self) { try HTTPGetPolicy(allowedHosts: [], allowedNetworks: ["10.0.0.0"]) }
    }

    @Test func nonPublicAddressesAreRecognisedInEveryForm() {
        let refused = [
            "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
            "0.0.0.0", "224.0.0.1", "255.255.255.255", "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
            "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "2001:db8::1",
        ]
        for text in refused { #expect(!Self.address(text).isPublic, "\(text) counted as public") }
        let publicOnes = ["93.184.216.34", "8.8.8.8", "172.32.0.1", "192.169.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
        for text in publicOnes { #expect(Self.address(text).isPublic, "\(text) counted as not public") }
    }

    @Test func aNonPublicAddressIsReachedOnlyWhenListed() throws {
        let policy = try HTTPGetPolicy(allowedHosts: ["10.0.0.5:8080", "svc.internal:80"], allowedNetworks: ["10.20.0.0/16", "fd00::/8"])
        #expect(policy.permits(Self.address("10.0.0.5"), host: "10.0.0.5"), "the entry is this IP literal")
        #expect(!policy.permits(Self.address("10.0.0.6"), host: "svc.internal"))
        #expect(policy.permits(Self.address("10.20.3.4"), host: "svc.internal"))
        #expect(policy.permits(Self.address("fd00::7"), host: "svc.internal"))
        #expect(!policy.permits(Self.address("127.0.0.1"), host: "svc.internal"))
        #expect(policy.permits(Self.address("93.184.216.34"), host: "svc.internal"))
    }

    /// A served page and a tool whose resolver answers what the test says (counting its calls).
    static func withPage(_ body: (_ port: Int, _ requests: @escaping @Sendable () -> Int) async throws -> Void) async throws {
        let page = try await FakeUpstream.start { _ in
            [.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"), .close]
        }
        defer { Task { await page.stop() } }
        try await body(page.port) { page.requests.count }
    }

    static func tool(hosts: [String], networks: [String] = [], resolve: @escaping @Sendable (String, Int) async throws -> [IPAddressBytes]) throws -> HTTPGetTool {
        HTTPGetTool(
            policy: try HTTPGetPolicy(allowedHosts: hosts, allowedNetworks: networks), timeout: .seconds(5), maximumBytes: 1024,
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton, resolve: resolve)
    }

    @Test func aListedNameThatResolvesToLoopbackOrTheMetadataServiceIsRefusedWithoutAConnection() async throws {
        try await Self.withPage { port, requests in
            for target in ["127.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "10.0.0.1"] {
                let tool = try Self.tool(hosts: ["rebound.example:\(port)"]) { _, _ in [Self.address(target)] }
                await #expect(throws: ToolError.self) {
                    try await tool.run(ToolArguments(json: #"{"url":"http://rebound.example:\#(port)/"}"#))
                }
            }
            // The real resolver: localhost is loopback.
            let real = try HTTPGetTool(allowedHosts: ["localhost:\(port)"], timeout: .seconds(5), eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
            await #expect(throws: ToolError.self) { try await real.run(ToolArguments(json: #"{"url":"http://localhost:\#(port)/"}"#)) }
            #expect(requests() == 0, "a refused fetch reached the server")
        }
    }

    @Test func theConnectionGoesToTheCheckedAddressNotToASecondResolution() async throws {
        try await Self.withPage { port, requests in
            let resolutions = NIOLockedValueBox(0)
            // `svc.invalid` resolves nowhere in real DNS: the fetch can only work if the checked
            // address is the one connected to.
            let tool = try Self.tool(hosts: ["svc.invalid:\(port)"], networks: ["127.0.0.0/8"]) { host, _ in
                resolutions.withLockedValue { $0 += 1 }
                return [Self.address("::1"), Self.address("127.0.0.1")]
            }
            let answer = try await tool.run(ToolArguments(json: #"{"url":"http://svc.invalid:\#(port)/page"}"#))
            #expect(answer.contains(#""status":200"#) && answer.contains(#""body":"ok""#))
            #expect(resolutions.withLockedValue { $0 } == 1 && requests() == 1)
            // Another port of the same host is not listed: refused before resolving.
            await #expect(throws: ToolError.self) { try await tool.run(ToolArguments(json: #"{"url":"http://svc.invalid:\#(port + 1)/"}"#)) }
            #expect(resolutions.withLockedValue { $0 } == 1)
        }
    }
}
