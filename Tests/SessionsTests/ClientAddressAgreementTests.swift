import NIOCore
import NIOHTTP1
import Policy
import Testing
import WSServer

/// The connection cap (WSServer) and the rate limits (Policy) must name the same client: both
/// read `X-Forwarded-For` the same way (WSServer cannot import Policy, so the rule is written twice).
@Suite struct ClientAddressAgreementTests {
    @Test(arguments: [
        [],
        ["203.0.113.9"],
        ["6.6.6.6, 203.0.113.9"],
        ["6.6.6.6", "203.0.113.9"],
        [" 6.6.6.6 ,  203.0.113.9 ", ""],
        ["2001:db8::1, 10.0.0.2"],
    ])
    func theCapAndTheRateLimitsResolveTheSameAddress(forwardedFor: [String]) throws {
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        for value in forwardedFor { head.headers.add(name: "X-Forwarded-For", value: value) }
        let peer = try SocketAddress(ipAddress: "192.0.2.1", port: 4000)
        for hops in 0...3 {
            var limits = GatewayLimits()
            limits.forwardedForHops = hops
            #expect(ClientAddress.resolve(head, peer: peer, forwardedForHops: hops) == limits.clientAddress(head, peer: peer),
                    "hops \(hops), \(forwardedFor)")
        }
    }
}
