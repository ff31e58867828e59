import Foundation

/// A finished job as the `jobs` table keeps it (the queue's Redis record, after completion).
public struct ArchivedJob: Sendable, Equatable {
    public var id: String
    public var kind: String
    public var userExternalID: String
    public var priority: String
    public var state: String
    /// JSON text.
    public var input: String
    public var result: String?
    public var resultType: String?
    public var error: String?
    public var attempts: Int
    public var maxAttempts: Int
    public var schedule: String?
    /// Microseconds since 1970.
    public var createdAt: Int64
    public var startedAt: Int64?
    public var finishedAt: Int64?
    /// Model tokens the job spent: archiving adds what was not counted yet to the submitter's
    /// `user_quotas.tokens_used`, once (a repeated archive adds nothing).
    public var tokensUsed: Int = 0

    public init(
        id: String, kind: String, userExternalID: String, priority: String, state: String, input: String,
        attempts: Int, maxAttempts: Int, createdAt: Int64
    ) {
        self.id = id
        self.kind = kind
        self.userExternalID = userExternalID
        self.priority = priority
        self.state = state
        self.input = input
        self.attempts = attempts
        self.maxAttempts = maxAttempts
        self.createdAt = createdAt
    }
}

/// One tool call run during a generation (`tool_executions`).
public struct ToolExecutionRecord: Sendable, Equatable {
    public var id: UUID
    public var generationID: String
    public var conversationID: UUID?
    public var userExternalID: String
    public var callID: String
    public var toolName: String
    /// The arguments as the model wrote them.
    public var input: String
    /// The tool's answer (or the error text, for a failure).
    public var output: String
    /// `ok`, `error`, `timeout`, `invalid_arguments`, `unknown_tool`.
    public var status: String
    public var durationMs: Int
    /// Microseconds since 1970.
    public var createdAt: Int64

    public init(
        id: UUID = UUID(), generationID: String, conversationID: UUID?, userExternalID: String, callID: String, toolName: String,
        input: String, output: String, status: String, durationMs: Int, createdAt: Int64
    ) {
        self.id = id
        self.generationID = generationID
        self.conversationID = conversationID
        self.userExternalID = userExternalID
        self.callID = callID
        self.toolName = toolName
        self.input = input
        self.output = output
        self.status = status
        self.durationMs = durationMs
        self.createdAt = createdAt
    }

    /// Whether `input` parses as JSON (stored as jsonb then; else as a JSON string).
    var inputIsJSON: Bool {
        (try? JSONSerialization.jsonObject(with: Data(self.input.utf8), options: [.fragmentsAllowed])) != nil
    }
}
