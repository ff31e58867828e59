/// Which instance holds which user's connections, shared by the instances (Redis). One node
/// has none (`FanOut.presence` is nil): `LocalPresence` knows all of its connections.
protocol PresenceDirectory: Sendable {
    func presenceOpened(user: String, sessionID: String)
    func presenceClosed(user: String, sessionID: String)
    /// The user's connections on every live instance (this one's included).
    func presence(of user: String) async -> Result<[PresenceEntry], BrokerError>
}
