import RedisClient

/// Presence in Redis: `user:{name}` holds `instance\nsession` members; members of instances
/// whose liveness key expired are dropped when read, so a dead instance's connections vanish
/// within `ownerTTL`.
struct RedisPresenceDirectory: PresenceDirectory {
    let link: RedisLink

    func presenceOpened(user: String, sessionID: String) {
        let key = self.link.key("user:\(user)")
        self.link.fire([
            RedisCommand("SADD", key, self.link.instanceID + "\n" + sessionID),
            // Only collects the garbage of instances gone for good: members of dead instances
            // are dropped when read, so this can be long.
            RedisCommand("PEXPIRE", key, self.link.milliseconds(.hours(24))),
        ])
    }

    func presenceClosed(user: String, sessionID: String) {
        self.link.fire([RedisCommand("SREM", self.link.key("user:\(user)"), self.link.instanceID + "\n" + sessionID)])
    }

    func presence(of user: String) async -> Result<[PresenceEntry], BrokerError> {
        do {
            let key = self.link.key("user:\(user)")
            let members = try await self.link.client.send(RedisCommand("SMEMBERS", key)).array?.compactMap(\.string) ?? []
            var entries: [PresenceEntry] = []
            var alive: [String: Bool] = [:]
            var stale: [String] = []
            for member in members {
                let parts = member.split(separator: "\n", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { continue }
                if alive[parts[0]] == nil { alive[parts[0]] = try await self.link.isAlive(parts[0], incarnation: nil) }
                if alive[parts[0]] == true {
                    entries.append(PresenceEntry(instanceID: parts[0], sessionID: parts[1]))
                } else {
                    stale.append(member)
                }
            }
            if !stale.isEmpty {
                var remove = RedisCommand("SREM", key)
                remove.append(contentsOf: stale)
                self.link.fire([remove])
            }
            return .success(entries)
        } catch {
            return .failure(BrokerError(message: "\(error)"))
        }
    }
}
