import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOPosix
import Storage
@testable import SluiceTestSupport
import Testing

/// The job queue with real processes: `sluice serve` gateways and `sluice worker` processes
/// sharing a real `redis-server` (and PostgreSQL where the archive is checked).
@Suite(.serialized) struct JobsProcessTests {
    static func environment(redis: RedisServerProcess) -> [String: String] {
        [
            "SLUICE_REDIS_URL": redis.url,
            "SLUICE_SERVER_EVENT_LOOP_THREADS": "1",
            // Short, so a dead worker's job is reclaimed within a test's patience.
            "SLUICE_JOBS_VISIBILITY_TIMEOUT": "2s",
            "SLUICE_JOBS_HEARTBEAT_INTERVAL": "200ms",
            "SLUICE_JOBS_RETRY_BACKOFF": "100ms",
            "SLUICE_JOBS_SHUTDOWN_GRACE": "1s",
            "SLUICE_STORAGE_DATABASE_URL": "memory",
        ]
    }

    /// Starts `count` workers; SIGKILLs whatever is left when `body` ends.
    static func withWorkers<T>(
        _ count: Int, environment: [String: String], arguments: [String] = [], _ body: ([SluiceProcess]) async throws -> T
    ) async throws -> T {
        var workers: [SluiceProcess] = []
        do {
            for index in 0..<count {
                var env = environment
                env["SLUICE_INSTANCE_ID"] = env["SLUICE_INSTANCE_ID"] ?? "worker-\(index)"
                workers.append(try await SluiceProcess.start(command: "worker", arguments: arguments, environment: env))
            }
            let result = try await body(workers)
            for worker in workers { await worker.kill() }
            return result
        } catch {
            for worker in workers {
                print("worker log:\n\(worker.logTail(lines: 30))")
                await worker.kill()
            }
            throw error
        }
    }

    static func submit(_ gateway: SluiceProcess, user: String, _ body: [String: Any]) async throws -> String {
        let data = try JSONSerialization.data(withJSONObject: body)
        let (status, answer) = try await gateway.httpRequest(
            "POST", path: "/v1/jobs", headers: ["X-Sluice-User": user], body: String(decoding: data, as: UTF8.self))
        #expect(status == 202, "POST /v1/jobs answered \(status): \(answer)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any])
        return try #require(object["job_id"] as? String)
    }

    static func job(_ gateway: SluiceProcess, _ id: String, user: String) async throws -> [String: Any] {
        let (status, answer) = try await gateway.httpRequest("GET", path: "/v1/jobs/\(id)", headers: ["X-Sluice-User": user])
        guard status == 200 else { throw JSONWebSocketClient.UnexpectedMessage(description: "GET /v1/jobs/\(id) answered \(status): \(answer)") }
        return try #require(try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any])
    }

    static func waitFor(
        _ gateway: SluiceProcess, _ id: String, user: String, timeout: Duration = .seconds(30),
        until condition: ([String: Any]) -> Bool
    ) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let record = try await Self.job(gateway, id, user: user)
            if condition(record) { return record }
            guard ContinuousClock.now < deadline else {
                throw JSONWebSocketClient.UnexpectedMessage(description: "job \(id) never got there; last: \(record)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    static func state(_ record: [String: Any]) -> String { record["state"] as? String ?? "" }

    static func resultObject(_ record: [String: Any]) throws -> [String: Any] {
        let text = try #require(record["result"] as? String)
        return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    // MARK: Live progress across instances, and the archive

    @Test(.timeLimit(.minutes(15)))
    func aJobCompletesWithLiveProgressPushedToAConnectionOnAnotherInstanceAndIsArchived() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer { redis in
            try await PostgresServerProcess.withServer { postgres in
                var environment = Self.environment(redis: redis)
                environment["SLUICE_STORAGE_DATABASE_URL"] = postgres.url
                try await SluiceProcess.withProcesses(count: 2, environment: environment) { gateways in
                    try await Self.withWorkers(2, environment: environment) { _ in
                        // Alice watches on instance B; the job is submitted to instance A.
                        let watcher = try await JSONWebSocketClient.connect(port: gateways[1].port, group: group, query: "?user=alice")
                        _ = try await watcher.next()
                        let id = try await Self.submit(gateways[0], user: "alice", ["kind": "demo", "input": ["steps": 4, "step_ms": 150]])
                        var events: [[String: Any]] = []
                        let done = try await watcher.until(type: "job.done", collecting: &events, timeout: .seconds(30))
                        #expect(done["job_id"] as? String == id)
                        #expect(done["state"] as? String == "SUCCEEDED")
                        #expect((done["result_url"] as? String) == "/v1/jobs/\(id)/result")
                        let progress = events.filter { $0["type"] as? String == "job.progress" && $0["job_id"] as? String == id }
                        let steps = progress.compactMap { ($0["progress"] as? [String: Any])?["current"] as? Int }
                        #expect(steps.filter { $0 > 0 } == [1, 2, 3, 4], "progress seen: \(steps)")
                        #expect(progress.allSatisfy { ($0["progress"] as? [String: Any])?["total"] as? Int == 4 || ($0["progress"] as? [String: Any])?["current"] as? Int == 0 })

                        // Someone else cannot see it; the owner can, from either instance.
                        let (status, _) = try await gateways[1].httpRequest("GET", path: "/v1/jobs/\(id)", headers: ["X-Sluice-User": "mallory"])
                        #expect(status == 404)
                        let record = try await Self.job(gateways[1], id, user: "alice")
                        #expect(Self.state(record) == "SUCCEEDED")
                        let (resultStatus, result) = try await gateways[1].httpRequest("GET", path: "/v1/jobs/\(id)/result", headers: ["X-Sluice-User": "alice"])
                        #expect(resultStatus == 200)
                        #expect(result.contains("\"step_runs\""))

                        // Archived in PostgreSQL by the worker that ran it.
                        let storage = try PostgresStorage(configuration: .init(url: try PostgresURL(postgres.url)))
                        let running = Task { await storage.run() }
                        defer { running.cancel() }
                        var archived: ArchivedJob?
                        let deadline = ContinuousClock.now + .seconds(15)
                        while archived == nil && ContinuousClock.now < deadline {
                            archived = try await storage.archivedJob(id: id)
                            if archived == nil { try await Task.sleep(for: .milliseconds(100)) }
                        }
                        let row = try #require(archived)
                        #expect(row.state == "SUCCEEDED")
                        #expect(row.userExternalID == "alice")
                        #expect(row.kind == "demo")
                        #expect(row.result == record["result"] as? String)
                        #expect(row.finishedAt != nil)
                        await storage.shutdown()
                        await watcher.close()
                    }
                }
            }
        }
    }

    // MARK: A worker killed mid-job

    @Test(.timeLimit(.minutes(15)))
    func aJobWhoseWorkerIsKilledIsReclaimedAndItsRecordedStepsRunOnce() async throws {
        try await RedisServerProcess.withServer { redis in
            let environment = Self.environment(redis: redis)
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let gateway = gateways[0]
                let id = try await Self.withWorkers(1, environment: environment) { workers in
                    let id = try await Self.submit(gateway, user: "alice", ["kind": "demo", "input": ["steps": 8, "step_ms": 300]])
                    // Killed after at least three steps were recorded.
                    _ = try await Self.waitFor(gateway, id, user: "alice") {
                        (($0["progress"] as? [String: Any])?["current"] as? Int ?? 0) >= 3
                    }
                    #expect(await workers[0].kill() == .signaled(SIGKILL))
                    return id
                }
                let atKill = try await Self.job(gateway, id, user: "alice")
                #expect(Self.state(atKill) == "RUNNING")
                let recordedBeforeKill = (atKill["progress"] as? [String: Any])?["current"] as? Int ?? 0
                // A new worker takes it over once the visibility timeout (2 s) has passed.
                try await Self.withWorkers(1, environment: environment.merging(["SLUICE_INSTANCE_ID": "rescuer"]) { $1 }) { _ in
                    let done = try await Self.waitFor(gateway, id, user: "alice") { Self.state($0) == "SUCCEEDED" || Self.state($0) == "FAILED" }
                    #expect(Self.state(done) == "SUCCEEDED")
                    #expect(done["attempts"] as? Int == 2)
                    let runs = try #require(try Self.resultObject(done)["step_runs"] as? [String: Int])
                    #expect(runs.count == 8, "every step recorded: \(runs)")
                    // Steps recorded before the kill were not run again; only the one in flight may have.
                    for step in 1...recordedBeforeKill { #expect(runs["step-\(step)"] == 1, "step \(step): \(runs)") }
                    #expect(runs.values.filter { $0 > 1 }.count <= 1, "\(runs)")
                    #expect(runs.values.allSatisfy { $0 <= 2 })
                }
            }
        }
    }

    // MARK: Retries

    @Test(.timeLimit(.minutes(15)))
    func failingAttemptsAreRetriedWithBackoffAndTheLastFailureIsFinal() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer { redis in
            let environment = Self.environment(redis: redis)
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let gateway = gateways[0]
                try await Self.withWorkers(1, environment: environment) { _ in
                    let watcher = try await JSONWebSocketClient.connect(port: gateway.port, group: group, query: "?user=bob")
                    _ = try await watcher.next()
                    // Fails its first attempt halfway, then succeeds without redoing the first half.
                    let flaky = try await Self.submit(gateway, user: "bob", ["kind": "demo", "input": ["steps": 4, "step_ms": 20, "fail_attempts": 1]])
                    let recovered = try await Self.waitFor(gateway, flaky, user: "bob") { ($0["state"] as? String).map { ["SUCCEEDED", "FAILED"].contains($0) } ?? false }
                    #expect(Self.state(recovered) == "SUCCEEDED")
                    #expect(recovered["attempts"] as? Int == 2)
                    let runs = try #require(try Self.resultObject(recovered)["step_runs"] as? [String: Int])
                    #expect(runs == ["step-1": 1, "step-2": 1, "step-3": 1, "step-4": 1])

                    // Fails every time: three attempts, then FAILED for good.
                    let doomed = try await Self.submit(gateway, user: "bob", ["kind": "demo", "input": ["steps": 2, "step_ms": 10, "fail_attempts": 10], "max_attempts": 3])
                    var events: [[String: Any]] = []
                    var done: [String: Any] = [:]
                    while done["job_id"] as? String != doomed {
                        done = try await watcher.until(type: "job.done", collecting: &events, timeout: .seconds(20))
                    }
                    #expect(done["state"] as? String == "FAILED")
                    #expect(done["attempts"] as? Int == 3)
                    #expect((done["error"] as? String)?.contains("failed on purpose") == true)
                    let retries = events.filter { $0["job_id"] as? String == doomed && $0["retry_in_ms"] != nil }
                    #expect(retries.count == 2, "two retries announced: \(retries)")
                    let final = try await Self.job(gateway, doomed, user: "bob")
                    #expect(Self.state(final) == "FAILED")

                    // A permanent failure is not retried.
                    let permanent = try await Self.submit(gateway, user: "bob", ["kind": "demo", "input": ["fail": "permanent"]])
                    let failed = try await Self.waitFor(gateway, permanent, user: "bob") { Self.state($0) == "FAILED" }
                    #expect(failed["attempts"] as? Int == 1)
                    await watcher.close()
                }
            }
        }
    }

    // MARK: Priorities

    @Test(.timeLimit(.minutes(15)))
    func aWorkerTakesHighPriorityJobsFirst() async throws {
        try await RedisServerProcess.withServer { redis in
            let environment = Self.environment(redis: redis)
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let gateway = gateways[0]
                // Queued while no worker runs: low first, high last.
                var ids: [(priority: String, id: String)] = []
                for priority in ["low", "low", "normal", "normal", "high", "high"] {
                    ids.append((priority, try await Self.submit(gateway, user: "carol", ["kind": "demo", "priority": priority, "input": ["steps": 1, "step_ms": 30]])))
                }
                try await Self.withWorkers(1, environment: environment, arguments: ["--concurrency", "1"]) { _ in
                    var started: [(priority: String, at: String)] = []
                    for (priority, id) in ids {
                        let done = try await Self.waitFor(gateway, id, user: "carol") { Self.state($0) == "SUCCEEDED" }
                        started.append((priority, try #require(done["started_at"] as? String)))
                    }
                    let order = started.sorted { $0.at < $1.at }.map(\.priority)
                    #expect(order == ["high", "high", "normal", "normal", "low", "low"], "ran in order \(order)")
                }
            }
        }
    }

    // MARK: Cancellation

    @Test(.timeLimit(.minutes(15)))
    func cancellingAPendingJobMeansItNeverRunsAndARunningJobStopsWithinAHeartbeat() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer { redis in
            let environment = Self.environment(redis: redis)
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let gateway = gateways[0]
                try await Self.withWorkers(1, environment: environment, arguments: ["--concurrency", "1"]) { _ in
                    let client = try await JSONWebSocketClient.connect(port: gateway.port, group: group, query: "?user=dave")
                    _ = try await client.next()
                    // Over the WebSocket: a long job, then one that waits behind it.
                    try await client.send(["type": "job.submit", "kind": "demo", "input": ["steps": 100, "step_ms": 100], "request_id": "long"])
                    let long = try await client.until(type: "job.accepted")
                    let longID = try #require(long["job_id"] as? String)
                    #expect(long["request_id"] as? String == "long")
                    try await client.send(["type": "job.submit", "kind": "demo", "input": ["steps": 1], "request_id": "queued"])
                    let queuedID = try #require(try await client.until(type: "job.accepted")["job_id"] as? String)
                    _ = try await Self.waitFor(gateway, longID, user: "dave") { Self.state($0) == "RUNNING" }

                    // The waiting one: cancelled at once, over HTTP.
                    let (status, body) = try await gateway.httpRequest("DELETE", path: "/v1/jobs/\(queuedID)", headers: ["X-Sluice-User": "dave"])
                    #expect(status == 200)
                    #expect(body.contains("\"CANCELLED\""))
                    // Another user's cancel finds nothing.
                    let (foreign, _) = try await gateway.httpRequest("DELETE", path: "/v1/jobs/\(longID)", headers: ["X-Sluice-User": "mallory"])
                    #expect(foreign == 404)

                    // The running one: over the WebSocket; its worker stops it.
                    try await client.send(["type": "job.cancel", "job_id": longID])
                    var events: [[String: Any]] = []
                    var done: [String: Any] = [:]
                    while done["job_id"] as? String != longID {
                        done = try await client.until(type: "job.done", collecting: &events, timeout: .seconds(15))
                    }
                    #expect(done["state"] as? String == "CANCELLED")
                    let long2 = try await Self.job(gateway, longID, user: "dave")
                    #expect(((long2["progress"] as? [String: Any])?["current"] as? Int ?? 0) < 100)

                    // The worker is free again, and the cancelled one never started.
                    let next = try await Self.submit(gateway, user: "dave", ["kind": "echo", "input": ["hello": "again"]])
                    let echoed = try await Self.waitFor(gateway, next, user: "dave") { Self.state($0) == "SUCCEEDED" }
                    #expect(echoed["result"] as? String == #"{"hello":"again"}"#)
                    let queued = try await Self.job(gateway, queuedID, user: "dave")
                    #expect(Self.state(queued) == "CANCELLED")
                    #expect(queued["started_at"] == nil)
                    await client.close()
                }
            }
        }
    }

    // MARK: Schedules

    @Test(.timeLimit(.minutes(15)))
    func aScheduledJobRunsOncePerPeriodAcrossTwoWorkers() async throws {
        try await RedisServerProcess.withServer { redis in
            let config = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-schedule-\(UUID().uuidString).yaml")
            try """
            jobs:
              schedules:
                - name: heartbeat
                  every: 2s
                  kind: echo
                  input: '{"tick": true}'
                  user: ops
            """.write(to: config, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: config) }
            let environment = Self.environment(redis: redis)
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                // The schedule's user watches: its jobs' events reach it. Connected before any worker runs.
                let watcher = try await JSONWebSocketClient.connect(port: gateways[0].port, group: MultiThreadedEventLoopGroup.singleton, query: "?user=ops")
                _ = try await watcher.next()
                var finished: [String] = []
                try await Self.withWorkers(2, environment: environment, arguments: ["--config", config.path]) { _ in
                    // Three periods' jobs done.
                    while finished.count < 3 {
                        var events: [[String: Any]] = []
                        let done = try await watcher.until(type: "job.done", collecting: &events, timeout: .seconds(30))
                        #expect(done["kind"] as? String == "echo" && done["state"] as? String == "SUCCEEDED", "\(done)")
                        finished.append(try #require(done["job_id"] as? String))
                    }
                }
                await watcher.close()
                let (status, body) = try await gateways[0].httpRequest("GET", path: "/v1/jobs?limit=100", headers: ["X-Sluice-User": "ops"])
                #expect(status == 200)
                let listing = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
                let jobs = try #require(listing["jobs"] as? [[String: Any]]).filter { $0["schedule"] as? String == "heartbeat" }
                // Each period's job submitted once, though two workers run the schedule: never two
                // submissions for one period (more periods may have begun meanwhile).
                let listed = Set(jobs.compactMap { $0["job_id"] as? String })
                #expect(Set(finished).count == 3 && Set(finished).isSubset(of: listed), "done \(finished), listed \(listed)")
                #expect(jobs.count >= 3, "\(jobs.count) scheduled jobs")
                let formatter = ISO8601DateFormatter()
                formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
                let periods = jobs.compactMap { ($0["created_at"] as? String).flatMap(formatter.date(from:)) }
                    .map { Int($0.timeIntervalSince1970 / 2) }
                #expect(periods.count == jobs.count)
                #expect(Set(periods).count == periods.count, "one job per period: \(periods.sorted())")
            }
        }
    }

    // MARK: Restarting everything

    @Test(.timeLimit(.minutes(15)))
    func restartingEveryProcessLosesNoQueuedJob() async throws {
        try await HeavyTests.exclusively {
            let redis = try await RedisServerProcess.start(appendOnly: true)
            defer { Task { await redis.kill() } }
            let environment = Self.environment(redis: redis)
            var ids: [String] = []
            // Queued with no worker, plus one running when everything dies.
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                try await Self.withWorkers(1, environment: environment, arguments: ["--concurrency", "1"]) { workers in
                    let running = try await Self.submit(gateways[0], user: "erin", ["kind": "demo", "input": ["steps": 6, "step_ms": 300]])
                    _ = try await Self.waitFor(gateways[0], running, user: "erin") { Self.state($0) == "RUNNING" }
                    ids.append(running)
                    for index in 0..<5 {
                        ids.append(try await Self.submit(gateways[0], user: "erin", ["kind": "echo", "input": ["n": index]]))
                    }
                    #expect(await workers[0].kill() == .signaled(SIGKILL))
                    #expect(await gateways[0].kill() == .signaled(SIGKILL))
                }
            }
            await redis.kill()
            try await redis.restart()
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                try await Self.withWorkers(1, environment: environment) { _ in
                    for id in ids {
                        let done = try await Self.waitFor(gateways[0], id, user: "erin") { Self.state($0) == "SUCCEEDED" }
                        #expect(Self.state(done) == "SUCCEEDED")
                    }
                }
            }
        }
    }

    // MARK: The report workflow, with workers inside serve

    @Test(.timeLimit(.minutes(15)))
    func aReportIsPlannedWrittenInSectionsAndDownloadableAsMarkdown() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer { redis in
            var environment = Self.environment(redis: redis)
            environment["SLUICE_JOBS_WORKERS_IN_SERVE"] = "2"
            environment["SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN"] = "0"
            environment["SLUICE_SIMULATOR_TOKENS_PER_SECOND"] = "2000"
            environment["SLUICE_SIMULATOR_ANSWER_TOKENS"] = "40"
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let client = try await JSONWebSocketClient.connect(port: gateways[0].port, group: group, query: "?user=rita")
                _ = try await client.next()
                try await client.send(["type": "job.submit", "kind": "report", "input": ["prompt": "Rivers and gates", "sections": 3], "priority": "high"])
                let accepted = try await client.until(type: "job.accepted")
                let id = try #require(accepted["job_id"] as? String)
                #expect(accepted["priority"] as? String == "high")
                var events: [[String: Any]] = []
                let done = try await client.until(type: "job.done", collecting: &events, timeout: .seconds(60))
                #expect(done["state"] as? String == "SUCCEEDED")
                // Progress per step: planned, three sections, assembled (of 5).
                let progress = events.filter { $0["type"] as? String == "job.progress" }.compactMap { $0["progress"] as? [String: Any] }
                #expect(progress.contains { ($0["message"] as? String)?.hasPrefix("planned") == true })
                #expect(progress.filter { ($0["message"] as? String)?.hasPrefix("wrote section") == true }.count == 3)
                #expect(progress.last?["current"] as? Int == 5 && progress.last?["total"] as? Int == 5)
                let (status, markdown) = try await gateways[0].httpRequest("GET", path: "/v1/jobs/\(id)/result", headers: ["X-Sluice-User": "rita"])
                #expect(status == 200)
                #expect(markdown.hasPrefix("# Rivers and gates\n"))
                let sections = markdown.components(separatedBy: "\n## ").dropFirst()
                #expect(sections.count == 3)
                #expect(sections.allSatisfy { $0.split(separator: "\n", omittingEmptySubsequences: true).count >= 2 }, "every section has text")
                await client.close()
            }
        }
    }

    // MARK: Bad requests

    @Test(.timeLimit(.minutes(15)))
    func badJobRequestsGetErrorsAndTheConnectionStaysUp() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        try await RedisServerProcess.withServer { redis in
            try await SluiceProcess.withProcesses(count: 1, environment: Self.environment(redis: redis)) { gateways in
                let client = try await JSONWebSocketClient.connect(port: gateways[0].port, group: group, query: "?user=zed")
                _ = try await client.next()
                let cases: [([String: Any], String)] = [
                    (["type": "job.submit", "kind": "mine-bitcoin", "input": [:]], "not_found"),
                    (["type": "job.submit", "kind": "demo", "input": ["steps": "many"]], "invalid_message"),
                    (["type": "job.submit", "kind": "demo", "priority": "urgent"], "invalid_message"),
                    (["type": "job.submit", "kind": "demo", "max_attempts": 0], "invalid_message"),
                    (["type": "job.submit", "input": [:]], "invalid_message"),
                    (["type": "job.cancel", "job_id": "job_00000000000000000000000000000000"], "not_found"),
                    (["type": "job.get", "job_id": "../../etc/passwd"], "not_found"),
                ]
                for (index, (message, code)) in cases.enumerated() {
                    var message = message
                    message["request_id"] = "r\(index)"
                    try await client.send(message)
                    let error = try await client.until(type: "error")
                    #expect(error["code"] as? String == code, "\(message) -> \(error)")
                    #expect(error["request_id"] as? String == "r\(index)")
                }
                try await client.send(["type": "ping", "id": "still-here"])
                #expect(try await client.until(type: "pong")["id"] as? String == "still-here")
                let (status, body) = try await gateways[0].httpRequest("POST", path: "/v1/jobs", headers: ["X-Sluice-User": "zed"], body: "[1,2]")
                #expect(status == 400, "\(body)")
                // An input with a "type" of its own is still a job (the body's top level decides).
                let typed = try await gateways[0].httpRequest(
                    "POST", path: "/v1/jobs", headers: ["X-Sluice-User": "zed", "Idempotency-Key": "k1"],
                    body: #"{"kind": "echo", "input": {"type": "invoice"}}"#)
                #expect(typed.status == 202, "\(typed.body)")
                let same = try await gateways[0].httpRequest(
                    "POST", path: "/v1/jobs", headers: ["X-Sluice-User": "zed", "Idempotency-Key": "k1"],
                    body: #"{"kind": "echo", "input": {"type": "invoice"}}"#)
                #expect(same.status == 200, "the same Idempotency-Key gives the same job: \(same.body)")
                let jobID = { (text: String) in (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])?["job_id"] as? String }
                #expect(jobID(typed.body) != nil && jobID(typed.body) == jobID(same.body))
                let empty = try await gateways[0].httpRequest("POST", path: "/v1/jobs", headers: ["X-Sluice-User": "zed"], body: "{}")
                #expect(empty.status == 400 && empty.body.contains("kind"), "\(empty.body)")
                await client.close()
            }
            // Without Redis there is no queue: a clear error, not a crash.
            try await SluiceProcess.withProcesses(count: 1, environment: ["SLUICE_STORAGE_DATABASE_URL": "memory"]) { gateways in
                let client = try await JSONWebSocketClient.connect(port: gateways[0].port, group: group)
                _ = try await client.next()
                try await client.send(["type": "job.submit", "kind": "echo", "input": [:]])
                let error = try await client.until(type: "error")
                #expect(error["code"] as? String == "unavailable")
                #expect((error["message"] as? String)?.contains("Redis") == true)
                let (status, _) = try await gateways[0].httpRequest("GET", path: "/v1/jobs/job_00000000000000000000000000000000")
                #expect(status == 503)
                await client.close()
            }
        }
    }

    // MARK: The admin CLI

    @Test(.timeLimit(.minutes(15)))
    func theAdminCLIListsShowsCancelsAndRetries() async throws {
        try await RedisServerProcess.withServer { redis in
            let environment = Self.environment(redis: redis)
            try await SluiceProcess.withProcesses(count: 1, environment: environment) { gateways in
                let gateway = gateways[0]
                // No worker yet: the job waits.
                let id = try await Self.submit(gateway, user: "olga", ["kind": "echo", "input": ["x": 1]])
                let ls = try await SluiceProcess.runCommand(["jobs", "ls", "--redis-url", redis.url])
                #expect(ls.status == 0, "\(ls.output)")
                #expect(ls.output.contains("normal 1 waiting/0 running"), "\(ls.output)")
                #expect(ls.output.contains(id) && ls.output.contains("PENDING"))
                let cancel = try await SluiceProcess.runCommand(["jobs", "cancel", id, "--redis-url", redis.url])
                #expect(cancel.status == 0 && cancel.output.contains("cancelled"), "\(cancel.output)")
                let show = try await SluiceProcess.runCommand(["jobs", "show", id, "--redis-url", redis.url])
                #expect(show.output.contains("\"state\" : \"CANCELLED\""), "\(show.output)")
                let cancelledOnly = try await SluiceProcess.runCommand(["jobs", "ls", "--state", "cancelled", "--redis-url", redis.url])
                #expect(cancelledOnly.output.contains(id))
                let retry = try await SluiceProcess.runCommand(["jobs", "retry", id, "--redis-url", redis.url])
                #expect(retry.status == 0 && retry.output.contains("queued again"), "\(retry.output)")
                let again = try await SluiceProcess.runCommand(["jobs", "retry", id, "--redis-url", redis.url])
                #expect(again.status == 1, "a pending job cannot be retried: \(again.output)")
                try await Self.withWorkers(1, environment: environment) { _ in
                    let done = try await Self.waitFor(gateway, id, user: "olga") { Self.state($0) == "SUCCEEDED" }
                    #expect(done["result"] as? String == #"{"x":1}"#)
                }
                let missing = try await SluiceProcess.runCommand(["jobs", "show", "job_00000000000000000000000000000000", "--redis-url", redis.url])
                #expect(missing.status == 1 && missing.output.contains("no job"))
            }
        }
    }
}
