import Foundation
import Jobs
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisClient
import ServiceLifecycle
import SluiceProtocol

/// The gateway's side of the job queue: submit, cancel and status for WebSocket and HTTP
/// clients, and the live `job.progress`/`job.done` events, which arrive from any worker through
/// one Redis channel and go to the submitter's connections on this instance.
public final class JobsGateway: Sendable {
    public let queue: JobQueue
    let handlers: JobHandlers
    let archive: (any JobArchive)?
    let logger: Logger
    private let subscriber: RedisSubscriber
    /// This instance's connections by user.
    private let listeners = NIOLockedValueBox([String: [ObjectIdentifier: JobListener]]())

    struct JobListener: Sendable {
        let eventLoop: any EventLoop
        let deliver: NIOLoopBound<(Substring) -> Void>
    }

    public init(queue: JobQueue, handlers: JobHandlers, archive: (any JobArchive)?, eventLoop: any EventLoop, logger: Logger) {
        self.queue = queue
        self.handlers = handlers
        self.archive = archive
        self.logger = logger
        self.subscriber = RedisSubscriber(configuration: queue.redis.configuration, eventLoop: eventLoop, logger: logger)
        let listeners = self.listeners
        // Fire and forget: the subscription is kept across reconnects by the subscriber.
        self.subscriber.subscribe(queue.eventsChannel) { message in
            let payload = String(buffer: message.payload)
            guard let (user, json) = JobEvent.route(payload) else { return }
            let targets = listeners.withLockedValue { $0[user].map { Array($0.values) } ?? [] }
            for target in targets {
                target.eventLoop.execute { target.deliver.value(json) }
            }
        }.whenFailure { error in
            logger.debug("job events: subscribed once Redis answers", metadata: ["sluice.error": "\(error)"])
        }
        Task { try? await queue.ensureGroups() }
    }

    func addListener(user: String, id: ObjectIdentifier, eventLoop: any EventLoop, deliver: @escaping (Substring) -> Void) {
        let listener = JobListener(eventLoop: eventLoop, deliver: NIOLoopBound(deliver, eventLoop: eventLoop))
        self.listeners.withLockedValue { $0[user, default: [:]][id] = listener }
    }

    func removeListener(user: String, id: ObjectIdentifier) {
        self.listeners.withLockedValue { listeners in
            listeners[user]?[id] = nil
            if listeners[user]?.isEmpty == true { listeners[user] = nil }
        }
    }

    /// Why a request about jobs failed, as a wire error.
    package struct Failure: Error, Sendable {
        package var code: ErrorCode
        package var message: String
        package var retryAfterMs: Int64?
    }

    /// Checks the kind and input: the submission to queue (with its token budget), or why not.
    func prepare(_ submit: ClientMessage.JobSubmit) -> Result<JobSubmission, Failure> {
        guard let handler = self.handlers[kind: submit.kind] else {
            return .failure(Failure(code: .notFound, message: "unknown job kind \"\(submit.kind)\" (known: \(self.handlers.kinds.joined(separator: ", ")))"))
        }
        var priority = JobPriority.normal
        if let name = submit.priority {
            guard let parsed = JobPriority(rawValue: name) else {
                return .failure(Failure(code: .invalidMessage, message: "priority must be high, normal or low"))
            }
            priority = parsed
        }
        let input = (try? JSONSerialization.jsonObject(with: Data(submit.input.utf8), options: [.fragmentsAllowed])) ?? NSNull()
        if let problem = handler.validate(input: input) {
            return .failure(Failure(code: .invalidMessage, message: "invalid input for \(submit.kind): \(problem)"))
        }
        var submission = JobSubmission(
            kind: submit.kind, input: submit.input, priority: priority, maxAttempts: submit.maxAttempts,
            tokenBudget: handler.tokenBudget(input: input))
        submission.idempotencyKey = submit.idempotencyKey
        return .success(submission)
    }

    /// Queues a prepared submission (admitted by the caller: rate limits and quota).
    func enqueue(_ submission: JobSubmission, user: String) async -> Result<(JobRecord, created: Bool), Failure> {
        do {
            return .success(try await self.queue.submit(submission, user: user))
        } catch {
            return .failure(Self.failure(error))
        }
    }

    /// The job from Redis, else from the archive; nil when neither has it or it is not `user`'s.
    package func record(_ id: String, user: String?) async -> Result<JobRecord?, Failure> {
        do {
            var record = try await self.queue.get(id)
            if record == nil, let archive = self.archive {
                record = try await archive.archivedJob(id)
            }
            guard let record, user == nil || record.user == user else { return .success(nil) }
            return .success(record)
        } catch let error as JobQueueError {
            return .failure(Self.failure(error))
        } catch {
            return .failure(Failure(code: .unavailable, message: "the job archive is unavailable (\(error)); retry shortly", retryAfterMs: 1000))
        }
    }

    package func cancel(_ id: String, user: String?) async -> Result<JobCancelOutcome, Failure> {
        do {
            return .success(try await self.queue.cancel(id, user: user))
        } catch {
            return .failure(Self.failure(error))
        }
    }

    package func list(user: String, limit: Int) async -> Result<[JobRecord], Failure> {
        do {
            return .success(try await self.queue.list(limit: limit, user: user))
        } catch {
            return .failure(Self.failure(error))
        }
    }

    static func failure(_ error: JobQueueError) -> Failure {
        switch error.kind {
        case .unavailable: Failure(code: .unavailable, message: error.message, retryAfterMs: 1000)
        case .invalidInput: Failure(code: .invalidMessage, message: error.message)
        }
    }

    public func shutdown() async {
        await self.subscriber.shutdown()
    }
}

/// In the service group: job events reach clients until the group shuts down, then the
/// subscriber closes.
extension JobsGateway: Service {
    public func run() async throws {
        try? await gracefulShutdown()
        await self.shutdown()
    }
}
