import Inference
import NIOCore
import RedisClient

/// The conversation cache in Redis: `conv:{id}:m` a list of the newest messages (`role\ncontent`
/// each) and `conv:{id}:o` its owner, both expiring `conversationTTL` after the last write.
struct RedisConversationCache: ConversationCache {
    let link: RedisLink

    private var configuration: RedisBrokerConfiguration { self.link.configuration }

    func createConversation(_ conversationID: String, owner: String, first message: ChatMessage) {
        let list = self.link.key("conv:\(conversationID):m")
        let ttl = self.link.milliseconds(self.configuration.conversationTTL)
        self.link.fire([
            RedisCommand("DEL", list),
            RedisCommand("RPUSH", list, Self.cacheEntry(message)),
            RedisCommand("PEXPIRE", list, ttl),
            RedisCommand("SET", self.link.key("conv:\(conversationID):o"), owner, "PX", ttl),
        ])
    }

    /// RPUSHX, not RPUSH: appending to a cold cache would make a list holding only the newest
    /// messages, which a reader would take for the whole conversation.
    func appendMessage(_ message: ChatMessage, toConversation conversationID: String) {
        let list = self.link.key("conv:\(conversationID):m")
        let ttl = self.link.milliseconds(self.configuration.conversationTTL)
        self.link.fire([
            RedisCommand("RPUSHX", list, Self.cacheEntry(message)),
            RedisCommand("LTRIM", list, -self.configuration.conversationMaxMessages, -1),
            RedisCommand("PEXPIRE", list, ttl),
            RedisCommand("PEXPIRE", self.link.key("conv:\(conversationID):o"), ttl),
        ])
    }

    /// Fills only a cold cache, in one script so that two readers filling at once, or a reader
    /// racing a writer's `createConversation`, cannot interleave into a mixed list.
    func fillConversation(_ conversationID: String, owner: String, messages: [ChatMessage]) {
        guard !messages.isEmpty else { return }
        let script = """
            if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
            for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
            redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
            return 1
            """
        var arguments: [any RedisArgumentConvertible] = [
            script, 2, self.link.key("conv:\(conversationID):m"), self.link.key("conv:\(conversationID):o"),
            owner, self.link.milliseconds(self.configuration.conversationTTL),
        ]
        for message in messages.suffix(self.configuration.conversationMaxMessages) { arguments.append(Self.cacheEntry(message)) }
        self.link.fire([RedisCommand("EVAL", arguments: arguments)])
    }

    private static func cacheEntry(_ message: ChatMessage) -> String {
        message.role.rawValue + "\n" + message.content
    }

    func conversationContext(_ conversationID: String) async -> Result<CachedConversation?, BrokerError> {
        let started = NIODeadline.now()
        defer { self.link.redisLatency.recordNanoseconds((NIODeadline.now() - started).nanoseconds) }
        do {
            let replies = try await self.link.client.send(pipeline: [
                RedisCommand("GET", self.link.key("conv:\(conversationID):o")),
                RedisCommand("LRANGE", self.link.key("conv:\(conversationID):m"), 0, -1),
            ]).map { try $0.get() }
            guard replies.count == 2, let items = replies[1].array else { return .failure(BrokerError(message: "unexpected LRANGE reply")) }
            // Without its owner (expired apart, or written by an older version) it is not a hit.
            guard let owner = replies[0].string, !items.isEmpty else { return .success(nil) }
            let messages = items.compactMap { item -> ChatMessage? in
                guard let text = item.string, let newline = text.firstIndex(of: "\n"),
                      let role = ChatMessage.Role(rawValue: String(text[..<newline]))
                else { return nil }
                return ChatMessage(role: role, content: String(text[text.index(after: newline)...]))
            }
            return .success(CachedConversation(owner: owner, messages: messages))
        } catch {
            self.link.redisErrors.increment()
            return .failure(BrokerError(message: "\(error)"))
        }
    }
}
