import NIOCore

/// When `set` writes.
public enum RedisSetCondition: Sendable, Hashable {
    case always
    /// `NX`: only if the key does not exist (locks, idempotency keys).
    case ifNotExists
    /// `XX`: only if the key exists.
    case ifExists
}

/// A time to live for `set`.
public enum RedisExpiration: Sendable, Hashable {
    case seconds(Int)
    case milliseconds(Int)
}

/// How `xadd` trims the stream.
public enum RedisStreamTrim: Sendable, Hashable {
    /// `MAXLEN ~ n`: at least n entries are kept; Redis trims whole nodes, which is much cheaper.
    case approximateMaxLength(Int)
    /// `MAXLEN n`: exactly the newest n entries are kept.
    case exactMaxLength(Int)
}

/// One stream entry: its id (`1700000000000-0`) and its field/value pairs in order.
public struct RedisStreamEntry: Sendable, Hashable {
    public struct Field: Sendable, Hashable {
        public var name: String
        public var value: ByteBuffer

        public init(name: String, value: ByteBuffer) {
            self.name = name
            self.value = value
        }
    }

    public var id: String
    public var fields: [Field]

    public init(id: String, fields: [Field]) {
        self.id = id
        self.fields = fields
    }

    /// The value of the first field with this name.
    public subscript(field name: String) -> ByteBuffer? {
        self.fields.first { $0.name == name }?.value
    }
}

extension RedisCommandExecutor {
    /// Sends one command and waits for its reply.
    public func send(_ command: RedisCommand) async throws -> RESPValue {
        try await self.send(command).get()
    }

    /// `send("SET", key, value)`: builds and sends one command.
    public func send(_ name: String, _ arguments: any RedisArgumentConvertible...) async throws -> RESPValue {
        try await self.send(RedisCommand(name, arguments: arguments)).get()
    }

    /// Sends the commands in one write and waits for every reply; each result is that
    /// command's reply or error (an error reply fails only its own command).
    public func send(pipeline commands: [RedisCommand]) async -> [Result<RESPValue, any Error>] {
        let futures: [EventLoopFuture<RESPValue>] = self.send(pipeline: commands)
        var results: [Result<RESPValue, any Error>] = []
        results.reserveCapacity(futures.count)
        for future in futures {
            do {
                results.append(.success(try await future.get()))
            } catch {
                results.append(.failure(error))
            }
        }
        return results
    }

    // MARK: Keys and strings

    /// `PING`: "PONG" when Redis is alive.
    public func ping() async throws -> String {
        let reply = try await self.send(RedisCommand("PING"))
        guard let text = reply.string else { throw RedisClientError.unexpectedReply(command: "PING", reply: reply) }
        return text
    }

    /// `GET`: the value, or nil when the key does not exist.
    public func get(_ key: String) async throws -> ByteBuffer? {
        let reply = try await self.send(RedisCommand("GET", key))
        if reply.isNull { return nil }
        guard let buffer = reply.buffer else { throw RedisClientError.unexpectedReply(command: "GET", reply: reply) }
        return buffer
    }

    /// `SET` with an optional condition (NX/XX) and time to live (EX/PX). Returns whether the
    /// value was written (false when the condition did not hold).
    @discardableResult
    public func set(
        _ key: String,
        to value: some RedisArgumentConvertible,
        condition: RedisSetCondition = .always,
        expiration: RedisExpiration? = nil
    ) async throws -> Bool {
        var command = RedisCommand("SET", key, value)
        switch expiration {
        case .seconds(let seconds)?: command.append(contentsOf: ["EX", seconds])
        case .milliseconds(let milliseconds)?: command.append(contentsOf: ["PX", milliseconds])
        case nil: break
        }
        switch condition {
        case .always: break
        case .ifNotExists: command.append("NX")
        case .ifExists: command.append("XX")
        }
        let reply = try await self.send(command)
        switch reply {
        case .simpleString: return true
        case .null: return false
        default: throw RedisClientError.unexpectedReply(command: "SET", reply: reply)
        }
    }

    /// `DEL`: how many of the keys existed.
    @discardableResult
    public func del(_ keys: String...) async throws -> Int {
        try await self.integer(RedisCommand("DEL", arguments: keys))
    }

    /// `EXPIRE`: whether the key exists (and now expires in `seconds`).
    @discardableResult
    public func expire(_ key: String, seconds: Int) async throws -> Bool {
        try await self.integer(RedisCommand("EXPIRE", key, seconds)) == 1
    }

    /// `PEXPIRE`: whether the key exists (and now expires in `milliseconds`).
    @discardableResult
    public func pexpire(_ key: String, milliseconds: Int) async throws -> Bool {
        try await self.integer(RedisCommand("PEXPIRE", key, milliseconds)) == 1
    }

    /// `INCR`: the value after incrementing.
    @discardableResult
    public func incr(_ key: String) async throws -> Int {
        try await self.integer(RedisCommand("INCR", key))
    }

    // MARK: Hashes and sets

    /// `HSET`: how many fields were added (not counting updated ones).
    @discardableResult
    public func hset(_ key: String, fields: [(name: String, value: any RedisArgumentConvertible)]) async throws -> Int {
        var command = RedisCommand("HSET", key)
        for field in fields {
            command.append(field.name)
            command.append(contentsOf: [field.value])
        }
        return try await self.integer(command)
    }

    /// `HGETALL`: every field and value (empty when the key does not exist).
    public func hgetall(_ key: String) async throws -> [String: ByteBuffer] {
        let reply = try await self.send(RedisCommand("HGETALL", key))
        guard let items = reply.array, items.count % 2 == 0 else {
            throw RedisClientError.unexpectedReply(command: "HGETALL", reply: reply)
        }
        var fields: [String: ByteBuffer] = [:]
        for index in stride(from: 0, to: items.count, by: 2) {
            guard let name = items[index].string, let value = items[index + 1].buffer else {
                throw RedisClientError.unexpectedReply(command: "HGETALL", reply: reply)
            }
            fields[name] = value
        }
        return fields
    }

    /// `SADD`: how many members were new.
    @discardableResult
    public func sadd(_ key: String, members: [any RedisArgumentConvertible]) async throws -> Int {
        var command = RedisCommand("SADD", key)
        command.append(contentsOf: members)
        return try await self.integer(command)
    }

    /// `SREM`: how many members were removed.
    @discardableResult
    public func srem(_ key: String, members: [any RedisArgumentConvertible]) async throws -> Int {
        var command = RedisCommand("SREM", key)
        command.append(contentsOf: members)
        return try await self.integer(command)
    }

    /// `SMEMBERS`, in Redis' (unspecified) order.
    public func smembers(_ key: String) async throws -> [ByteBuffer] {
        let reply = try await self.send(RedisCommand("SMEMBERS", key))
        guard let members = reply.array?.compactMap(\.buffer), members.count == reply.array?.count else {
            throw RedisClientError.unexpectedReply(command: "SMEMBERS", reply: reply)
        }
        return members
    }

    // MARK: Pub/sub (publishing; subscribing needs a `RedisSubscriber`)

    /// `PUBLISH`: how many subscribers received the message (on this Redis node).
    @discardableResult
    public func publish(_ message: some RedisArgumentConvertible, to channel: String) async throws -> Int {
        try await self.integer(RedisCommand("PUBLISH", channel, message))
    }

    // MARK: Streams

    /// `XADD key [MAXLEN [~] n] id field value ...`: appends an entry and returns its id.
    @discardableResult
    public func xadd(
        _ key: String,
        id: String = "*",
        trim: RedisStreamTrim? = nil,
        fields: [(name: String, value: any RedisArgumentConvertible)]
    ) async throws -> String {
        var command = RedisCommand("XADD", key)
        switch trim {
        case .approximateMaxLength(let count)?: command.append(contentsOf: ["MAXLEN", "~", count])
        case .exactMaxLength(let count)?: command.append(contentsOf: ["MAXLEN", count])
        case nil: break
        }
        command.append(id)
        for field in fields {
            command.append(field.name)
            command.append(contentsOf: [field.value])
        }
        let reply = try await self.send(command)
        guard let entryID = reply.string else { throw RedisClientError.unexpectedReply(command: "XADD", reply: reply) }
        return entryID
    }

    /// `XRANGE key start end [COUNT n]`: entries between two ids, inclusive (`-` and `+` are
    /// the ends of the stream; prefix an id with `(` to exclude it).
    public func xrange(_ key: String, start: String = "-", end: String = "+", count: Int? = nil) async throws -> [RedisStreamEntry] {
        var command = RedisCommand("XRANGE", key, start, end)
        if let count { command.append(contentsOf: ["COUNT", count]) }
        let reply = try await self.send(command)
        guard let entries = Self.streamEntries(reply) else { throw RedisClientError.unexpectedReply(command: "XRANGE", reply: reply) }
        return entries
    }

    /// `XREAD [COUNT n] [BLOCK ms] STREAMS key ... id ...`: entries after each given id (`$`
    /// means "only new ones"). Returns the streams that had entries; empty when none did (or a
    /// block timed out).
    ///
    /// `blockMilliseconds` is refused on `RedisClient` (`blockingCommandOnSharedConnection`):
    /// a blocked connection answers nothing else until the block ends. Block on a connection
    /// of its own, from `RedisClient.makeDedicatedConnection()`. The block is at least 1 ms:
    /// Redis's `BLOCK 0` (forever) would leave the command without a deadline.
    public func xread(
        _ streams: [(key: String, afterID: String)],
        count: Int? = nil,
        blockMilliseconds: Int? = nil
    ) async throws -> [(key: String, entries: [RedisStreamEntry])] {
        if blockMilliseconds != nil && !self.allowsBlockingCommands {
            throw RedisClientError.blockingCommandOnSharedConnection
        }
        var command = RedisCommand("XREAD")
        if let count { command.append(contentsOf: ["COUNT", count]) }
        if let blockMilliseconds { command.block(milliseconds: blockMilliseconds) }
        command.append("STREAMS")
        for stream in streams { command.append(stream.key) }
        for stream in streams { command.append(stream.afterID) }
        return try Self.streams(try await self.send(command), command: "XREAD")
    }

    /// Parses `[[key, entries], ...]` (a null reply: nothing).
    static func streams(_ reply: RESPValue, command: String) throws -> [(key: String, entries: [RedisStreamEntry])] {
        if reply.isNull { return [] }
        guard let items = reply.array else { throw RedisClientError.unexpectedReply(command: command, reply: reply) }
        return try items.map { item in
            guard let pair = item.array, pair.count == 2, let key = pair[0].string, let entries = Self.streamEntries(pair[1]) else {
                throw RedisClientError.unexpectedReply(command: command, reply: reply)
            }
            return (key, entries)
        }
    }

    /// Parses `[[id, [field, value, ...]], ...]`.
    static func streamEntries(_ reply: RESPValue) -> [RedisStreamEntry]? {
        guard let items = reply.array else { return nil }
        var entries: [RedisStreamEntry] = []
        entries.reserveCapacity(items.count)
        for item in items {
            guard let pair = item.array, pair.count == 2, let id = pair[0].string else { return nil }
            var fields: [RedisStreamEntry.Field] = []
            if let flat = pair[1].array {
                guard flat.count % 2 == 0 else { return nil }
                for index in stride(from: 0, to: flat.count, by: 2) {
                    guard let name = flat[index].string, let value = flat[index + 1].buffer else { return nil }
                    fields.append(.init(name: name, value: value))
                }
            } else if !pair[1].isNull {
                return nil
            }
            entries.append(RedisStreamEntry(id: id, fields: fields))
        }
        return entries
    }

    // MARK: Scripts

    /// `EVAL script numkeys key ... arg ...`: runs a Lua script atomically. The reply is the
    /// script's return value as Redis converts it (an error from the script fails the call
    /// with `RedisClientError.server`).
    public func eval(_ script: String, keys: [String] = [], arguments: [any RedisArgumentConvertible] = []) async throws -> RESPValue {
        var command = RedisCommand("EVAL", script, keys.count)
        command.append(contentsOf: keys)
        command.append(contentsOf: arguments)
        return try await self.send(command)
    }

    private func integer(_ command: RedisCommand) async throws -> Int {
        let reply = try await self.send(command)
        guard case .integer(let value) = reply else {
            throw RedisClientError.unexpectedReply(command: command.name, reply: reply)
        }
        return value
    }
}

extension RedisCommand {
    /// Appends `BLOCK ms` (at least 1: `BLOCK 0` waits forever, and every command has a
    /// deadline) and lets the command's deadline run that much longer.
    mutating func block(milliseconds: Int) {
        let milliseconds = min(max(1, milliseconds), 24 * 3_600_000)
        self.append(contentsOf: ["BLOCK", milliseconds])
        self.blockTime = .milliseconds(Int64(milliseconds))
    }
}

// MARK: Consumer groups

extension RedisCommandExecutor {
    /// `XREADGROUP GROUP g consumer [COUNT n] [BLOCK ms] STREAMS key ... id ...` (`>` for new
    /// entries). Like `xread`, blocking is refused on the shared `RedisClient`.
    public func xreadgroup(
        group: String, consumer: String, _ streams: [(key: String, afterID: String)],
        count: Int? = nil, blockMilliseconds: Int? = nil
    ) async throws -> [(key: String, entries: [RedisStreamEntry])] {
        if blockMilliseconds != nil && !self.allowsBlockingCommands {
            throw RedisClientError.blockingCommandOnSharedConnection
        }
        var command = RedisCommand("XREADGROUP", "GROUP", group, consumer)
        if let count { command.append(contentsOf: ["COUNT", count]) }
        if let blockMilliseconds { command.block(milliseconds: blockMilliseconds) }
        command.append("STREAMS")
        for stream in streams { command.append(stream.key) }
        for stream in streams { command.append(stream.afterID) }
        return try Self.streams(try await self.send(command), command: "XREADGROUP")
    }

    /// `XAUTOCLAIM key group consumer min-idle-ms start [COUNT n]`: takes over entries another
    /// consumer has held longer than `minIdleMilliseconds` (its owner presumably died). Entries
    /// deleted meanwhile are left out.
    public func xautoclaim(
        _ key: String, group: String, consumer: String, minIdleMilliseconds: Int, start: String = "0-0", count: Int = 1
    ) async throws -> [RedisStreamEntry] {
        let command = RedisCommand("XAUTOCLAIM", key, group, consumer, minIdleMilliseconds, start, "COUNT", count)
        let reply = try await self.send(command)
        guard let parts = reply.array, parts.count >= 2, let items = parts[1].array else {
            throw RedisClientError.unexpectedReply(command: "XAUTOCLAIM", reply: reply)
        }
        // A deleted entry comes back as [id, nil]: skip it.
        let live = items.filter { ($0.array?.count ?? 0) == 2 && !($0.array![1].isNull) }
        guard let entries = Self.streamEntries(.array(live)) else {
            throw RedisClientError.unexpectedReply(command: "XAUTOCLAIM", reply: reply)
        }
        return entries
    }
}
