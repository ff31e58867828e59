import Foundation
import Inference
import Logging
import NIOCore
import NIOPosix
import RedisClient
@testable import Jobs
@testable import SluiceTestSupport
import Testing

/// The queue's Lua state machine against a real `redis-server`, without worker processes.
@Suite(.serialized) struct JobQueueTests {
    static func withQueue(_ body: (JobQueue) async throws -> Void) async throws {
        try await RedisServerProcess.withServer { server in
            let redis = RedisClient(
                configuration: RedisConfiguration(url: try RedisURL(server.url)), eventLoop: MultiThreadedEventLoopGroup.singleton.next())
            let deadline = ContinuousClock.now + .seconds(5)
            while !redis.isConnected && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            var settings = JobQueueConfiguration()
            settings.keyPrefix = "t:"
            let queue = JobQueue(redis: redis, configuration: settings, logger: Logger(label: "test"))
            try await queue.ensureGroups()
            do {
                try await body(queue)
                await redis.shutdown()
            } catch {
                await redis.shutdown()
                throw error
            }
        }
    }

    @Test func theSameIdempotencyKeyGivesTheSameJob() async throws {
        try await Self.withQueue { queue in
            var submission = JobSubmission(kind: "echo", input: "{}", idempotencyKey: "order-17")
            let (first, created) = try await queue.submit(submission, user: "alice")
            let (again, createdAgain) = try await queue.submit(submission, user: "alice")
            #expect(created && !createdAgain)
            #expect(again.id == first.id)
            // Keys are per user.
            let (bobs, bobCreated) = try await queue.submit(submission, user: "bob")
            #expect(bobCreated && bobs.id != first.id)
            submission.idempotencyKey = nil
            let (other, _) = try await queue.submit(submission, user: "alice")
            #expect(other.id != first.id)
            let stats = try await queue.stats()
            #expect(stats.waiting[.normal] == 3)
        }
    }

    @Test func cancelRetryAndListFollowTheStateMachine() async throws {
        try await Self.withQueue { queue in
            let (job, _) = try await queue.submit(JobSubmission(kind: "echo", input: #"{"a":1}"#, priority: .high), user: "alice")
            #expect(try await queue.cancel(job.id, user: "mallory") == .notFound)
            guard case .cancelled(let cancelled) = try await queue.cancel(job.id, user: "alice") else {
                Issue.record("a pending job is cancelled at once")
                return
            }
            #expect(cancelled.state == .cancelled && cancelled.finishedAt != nil)
            guard case .alreadyEnded = try await queue.cancel(job.id, user: nil) else {
                Issue.record("cancelling twice is a no-op")
                return
            }
            #expect(try await queue.retry(job.id))
            let again = try #require(try await queue.get(job.id))
            #expect(again.state == .pending && again.attempts == 0 && again.finishedAt == nil)
            #expect(try await queue.retry(job.id) == false, "only FAILED or CANCELLED jobs are retried")
            // Many newer jobs of someone else do not push alice's out of her listing.
            for _ in 0..<30 { _ = try await queue.submit(JobSubmission(kind: "echo", input: "{}"), user: "bob") }
            let listed = try await queue.list(limit: 10, user: "alice")
            #expect(listed.map(\.id) == [job.id])
            #expect(try await queue.list(limit: 10).count == 10)
            #expect(try await queue.list(limit: 10, user: "alice", state: .failed).isEmpty)
            #expect(try await queue.get("job_nothere") == nil)
            #expect(try await queue.get("../../etc") == nil)
        }
    }

    @Test func aSchedulePeriodIsSubmittedByOneSchedulerOnly() async throws {
        try await Self.withQueue { queue in
            let schedule = JobSchedule(name: "tick", timing: .every(.seconds(60)), kind: "echo", input: "{}")
            let first = JobScheduler(queue: queue, schedules: [schedule], logger: Logger(label: "a"))
            let second = JobScheduler(queue: queue, schedules: [schedule], logger: Logger(label: "b"))
            let now = Date(timeIntervalSince1970: 1_800_000_030)
            let results = await [first.tick(now: now), second.tick(now: now), first.tick(now: now.addingTimeInterval(20))]
            #expect(results.map(\.count) == [1, 0, 0])
            // The next period is due again.
            #expect(await second.tick(now: now.addingTimeInterval(60)) == ["tick"])
            let jobs = try await queue.list(limit: 10)
            #expect(jobs.count == 2 && jobs.allSatisfy { $0.schedule == "tick" && $0.user == "scheduler" })
            // A cron schedule fires only at matching minutes.
            let cron = JobSchedule(name: "hourly", timing: .cron(try CronSchedule("0 * * * *")), kind: "echo")
            let hourly = JobScheduler(queue: queue, schedules: [cron], logger: Logger(label: "c"))
            #expect(await hourly.tick(now: Date(timeIntervalSince1970: 1_800_000_000 + 60)).isEmpty)
            #expect(await hourly.tick(now: Date(timeIntervalSince1970: 1_800_003_600)) == ["hourly"])
        }
    }
}

@Suite struct JobPieces {
    @Test func backoffDoublesWithJitterAndACap() {
        for attempt in 1...8 {
            let backoff = JobWorker.backoff(attempt: attempt, base: .seconds(1), maximum: .seconds(30))
            let nominal = min(Double(1 << (attempt - 1)), 30)
            #expect(Double(backoff.nanoseconds) / 1e9 >= nominal * 0.8 - 0.001)
            #expect(Double(backoff.nanoseconds) / 1e9 <= nominal * 1.2 + 0.001)
        }
        #expect(JobWorker.backoff(attempt: 1_000, base: .seconds(1), maximum: .seconds(60)) <= .seconds(72))
    }

    @Test func aRecordRoundTripsThroughItsRedisHash() throws {
        func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }
        let hash: [String: ByteBuffer] = [
            "id": buffer("job_0123456789abcdef0123456789abcdef"), "kind": buffer("report"), "user": buffer("alice"),
            "priority": buffer("high"), "state": buffer("SUCCEEDED"), "input": buffer(#"{"prompt":"x"}"#), "attempts": buffer("2"),
            "max_attempts": buffer("3"), "created_us": buffer("1800000000000000"), "started_us": buffer("1800000001000000"),
            "finished_us": buffer("1800000002000000"), "current": buffer("5"), "total": buffer("5"), "message": buffer("assembled"),
            "result": buffer("# Report"), "result_type": buffer("text/markdown; charset=utf-8"), "error": buffer(""), "schedule": buffer(""),
        ]
        let record = try #require(JobRecord(hash: hash))
        #expect(record.priority == .high && record.state == .succeeded && record.attempts == 2)
        #expect(record.progress == JobProgress(current: 5, total: 5, message: "assembled"))
        #expect(record.error == nil && record.schedule == nil)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(record.json().utf8)) as? [String: Any])
        #expect(object["result"] as? String == "# Report")
        #expect(object["result_url"] as? String == "/v1/jobs/job_0123456789abcdef0123456789abcdef/result")
        #expect((object["input"] as? [String: Any])?["prompt"] as? String == "x")
        #expect(object["created_at"] as? String == "2027-01-15T08:00:00.000Z")
        #expect((try JSONSerialization.jsonObject(with: Data(record.json(inlineResultLimit: 3).utf8)) as? [String: Any])?["result"] == nil)
        #expect(JobRecord(hash: ["id": buffer("x")]) == nil)
    }

    @Test func eventsAreRoutedByUserWithoutParsingTheJSON() {
        let payload = JobEvent.channelPayload(user: "alice", #"{"type":"job.done"}"#)
        let (user, message) = JobEvent.route(payload)!
        #expect(user == "alice" && message == #"{"type":"job.done"}"#)
        #expect(JobEvent.route("no newline") == nil)
    }

    @Test func reportTitlesAreCleanedAndFilledIn() {
        let answer = """
            1. **Introduction**
            - Market size
            ## Market size
            3) Risks and opportunities

            """
        #expect(ReportJob.sectionTitles(from: answer, count: 4) == ["Introduction", "Market size", "Risks and opportunities", "Overview"])
        #expect(ReportJob.sectionTitles(from: "", count: 2) == ["Overview", "Background"])
        #expect(ReportJob.title(for: String(repeating: "a", count: 100)).count == 80)
    }

    @Test func demoInputIsCheckedAtSubmission() {
        let demo = DemoJob()
        #expect(demo.validate(input: ["steps": 3]) == nil)
        #expect(demo.validate(input: ["steps": -1]) != nil)
        #expect(demo.validate(input: ["steps": "3"]) != nil)
        #expect(demo.validate(input: "text") != nil)
        #expect(demo.validate(input: ["fail": "sometimes"]) != nil)
        let router = InferenceRouter(upstreams: [
            .init(name: "small", engine: SimulatorEngine(configuration: .init())), .init(name: "large", engine: SimulatorEngine(configuration: .init())),
        ])
        let report = ReportJob(router: router, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        #expect(report.validate(input: ["prompt": "rivers"]) == nil)
        #expect(report.validate(input: ["prompt": "  "]) != nil)
        #expect(report.validate(input: ["prompt": "x", "sections": 50]) != nil)
        #expect(report.validate(input: ["prompt": "x", "model": "nope"])?.contains("unknown model") == true)
    }

    /// JSON's `true` arrives as an NSNumber like 1: it is not an integer input.
    @Test func booleansAndFractionsAreNotIntegerInputs() throws {
        let parsed = try JSONSerialization.jsonObject(with: Data(#"{"steps":true,"step_ms":1.5,"fail_attempts":1e300}"#.utf8))
        let demo = DemoJob()
        #expect(demo.validate(input: ["steps": true]) != nil)
        #expect(demo.validate(input: parsed) != nil)
        #expect(JobInput.integer(true) == nil && JobInput.integer(1.5) == nil && JobInput.integer(1e300) == nil && JobInput.integer(Double.nan) == nil)
        #expect(JobInput.integer(7) == 7 && JobInput.integer(NSNumber(value: 7.0)) == 7)
        let report = ReportJob(router: InferenceRouter(single: SimulatorEngine(configuration: .init())), eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        #expect(report.validate(input: ["prompt": "x", "sections": true]) != nil)
        #expect(report.validate(input: ["prompt": "x", "max_tokens": false]) != nil)
    }

    /// What a report may spend: the plan and every section, each with its prompt.
    @Test func aReportsTokenBudgetCoversThePlanAndEverySection() {
        let report = ReportJob(router: InferenceRouter(single: SimulatorEngine(configuration: .init())), eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        let prompt = String(repeating: "r", count: 400)  // 100 tokens
        let perPrompt = 100 + ReportJob.instructionTokens
        #expect(report.tokenBudget(input: ["prompt": prompt, "sections": 3, "max_tokens": 500]) == perPrompt + 128 + 3 * (perPrompt + 500))
        #expect(report.tokenBudget(input: ["prompt": prompt]) == perPrompt + 128 + 4 * (perPrompt + 256))
        // The largest valid report: 12 sections of 4,096 tokens, a 4,000-character prompt.
        let largest = report.tokenBudget(input: ["prompt": String(repeating: "r", count: 4000), "sections": 12, "max_tokens": 4096])
        #expect(largest == (1000 + 64 + 128) + 12 * (1000 + 64 + 4096))
        #expect(DemoJob().tokenBudget(input: ["steps": 3]) == 0 && EchoJob().tokenBudget(input: [:] as [String: Any]) == 0)
    }
}
