import Jobs
import Policy
import SluiceProtocol

extension ChatApplication {
    /// Queues a job after the checks a chat generation gets: the request rate limits (a job is a
    /// request), then its whole token budget from the token rate limits at once (a job is not cut
    /// short like a generation: it gets its budget or waits), then the user's token quota, where
    /// the budget stays reserved until the job ends. The tokens taken from the per-minute limits
    /// are not given back when the job spends less (it may spend them any time it runs); a
    /// submission that was not queued (a repeat of an idempotency key, Redis down) costs nothing.
    package func submitJob(
        _ submit: ClientMessage.JobSubmit, user: String, address: String
    ) async -> Result<(JobRecord, created: Bool), JobsGateway.Failure> {
        guard let jobs = self.jobs else {
            return .failure(.init(code: .unavailable, message: "jobs need Redis (redis.url); this gateway runs without it"))
        }
        let submission: JobSubmission
        switch jobs.prepare(submit) {
        case .failure(let failure): return .failure(failure)
        case .success(let prepared): submission = prepared
        }
        let limiter = self.policy.limiter
        let limits = limiter.limits
        var grant: GenerationGrant?
        if limits.limitsGenerations {
            let tokenLimits = [limits.tokensPerMinutePerUser, limits.tokensPerMinutePerIP].filter { $0 > 0 }
            if let tightest = tokenLimits.min(), submission.tokenBudget > tightest {
                return .failure(.init(
                    code: .invalidMessage,
                    message: "this \(submission.kind) job may use up to \(submission.tokenBudget) tokens, more than the limit of \(tightest) "
                        + "tokens per minute allows; ask for less (fewer sections, a smaller max_tokens)"))
            }
            switch await limiter.admit(user: user, address: address, promptTokens: submission.tokenBudget, maxTokens: 0) {
            case .failure(let refusal):
                return .failure(.init(code: .rateLimited, message: refusal.message, retryAfterMs: refusal.retryAfterMs))
            case .success(let granted):
                grant = granted
            }
        }
        if case .failure(let refusal) = await self.quotas.admitJob(user: user, tokens: submission.tokenBudget) {
            if let grant { limiter.settle(grant, usedTokens: 0) }
            return .failure(.init(code: .quotaExceeded, message: refusal.message, retryAfterMs: refusal.retryAfterMs))
        }
        let result = await jobs.enqueue(submission, user: user)
        if let grant, (try? result.get().created) != true { limiter.settle(grant, usedTokens: 0) }
        return result
    }
}
