import NIOHTTP1
import Sessions
import WSServer

/// The chat application's routes for operators, served on the admin listener only (loopback by
/// default; the public listener answers 404 for them): `GET /v1/stats` (cache and storage
/// counters) and `GET /v1/presence?user=NAME` (any user's connections, no credential).
public struct AdminRoutes: HTTPRouteProvider {
    let application: ChatApplication

    public init(application: ChatApplication) {
        self.application = application
    }

    public func responder(for head: HTTPRequestHead) -> (any HTTPRouteResponder)? {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        switch path {
        case StatsResponder.path: return StatsResponder(application: self.application)
        case PresenceRoutes.path: return PresenceResponder(application: self.application, anyUser: true)
        default: return nil
        }
    }
}
