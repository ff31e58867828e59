import Storage

/// The `jobs` table of the storage's `ExecutionArchive` (PostgreSQL, or SQLite for a single node).
public struct StorageJobArchive: JobArchive {
    let storage: any ExecutionArchive

    public init(storage: any ExecutionArchive) {
        self.storage = storage
    }

    public func archive(_ record: JobRecord) async throws {
        var job = ArchivedJob(
            id: record.id, kind: record.kind, userExternalID: record.user, priority: record.priority.rawValue,
            state: record.state.rawValue, input: record.input, attempts: record.attempts, maxAttempts: record.maxAttempts,
            createdAt: record.createdAt)
        job.result = record.result
        job.resultType = record.resultType
        job.error = record.error
        job.schedule = record.schedule
        job.startedAt = record.startedAt
        job.finishedAt = record.finishedAt
        job.tokensUsed = record.tokensUsed
        try await self.storage.archiveJob(job)
    }

    public func archivedJob(_ id: String) async throws -> JobRecord? {
        guard let job = try await self.storage.archivedJob(id: id),
              let priority = JobPriority(rawValue: job.priority), let state = JobState(rawValue: job.state)
        else { return nil }
        var record = JobRecord(
            id: job.id, kind: job.kind, user: job.userExternalID, priority: priority, state: state, input: job.input,
            attempts: job.attempts, maxAttempts: job.maxAttempts, createdAt: job.createdAt)
        record.result = job.result
        record.resultType = job.resultType
        record.error = job.error
        record.schedule = job.schedule
        record.startedAt = job.startedAt
        record.finishedAt = job.finishedAt
        record.tokensUsed = job.tokensUsed
        return record
    }
}
