import ArgumentParser
import Foundation
import Histogram
import NIOCore
import NIOPosix

/// `sluice-loadtest`: virtual users against one or more Sluice instances (or any WebSocket echo
/// server), with latency histograms and a check of every answer's seqs.
@main
struct SluiceLoadTest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice-loadtest",
        abstract: "Load-test Sluice over sluice.v1 (or any echo server).",
        discussion: """
            Scenarios: chat (prompts, streamed answers: time to first token, gaps, whole answers),
            cancel (cancel after --cancel-after deltas: cancel-to-done latency), resume (drop the
            connection after --disconnect-after deltas, reconnect to the next --url, resume; checks
            nothing is missed or repeated), idle (hold connections; with --pid, the server's RSS per
            connection), echo (raw WebSocket echo round trips, any server), chaos (conversations of a
            few turns, each request with a request_id; any lost connection is resumed; every
            generation's seqs, text and terminal events are recorded for loadtest/chaos-check.py).
            Several --url are used round-robin. Runs for --duration seconds (and at most --count
            requests); bounded in time whatever happens (--duration + 30 s).
            """
    )

    @Argument(help: "chat, cancel, resume, idle, echo or chaos.")
    var scenario: String

    @Option(name: .long, help: "Target ws://host:port/path (repeatable; round-robin).")
    var url: [String] = []

    @Option(name: .long, help: "Virtual users (one connection each).")
    var users = 10

    @Option(name: .long, help: "Seconds to run.")
    var duration: Double = 10

    @Option(name: .long, help: "Stop after this many requests in all.")
    var count: Int?

    @Option(name: .long, help: "Seconds over which users start.")
    var rampUp: Double = 0

    @Option(name: .long, help: "Milliseconds a user waits between requests.")
    var thinkTime: Int = 0

    @Option(name: .long, help: "max_tokens per request (default: the server's).")
    var maxTokens: Int?

    @Option(name: .long, help: "The prompt (each user appends its number).")
    var prompt = "Tell me about rivers"

    @Option(name: .long, help: "cancel: deltas before the cancel.")
    var cancelAfter = 3

    @Option(name: .long, help: "resume: deltas before the disconnect.")
    var disconnectAfter = 5

    @Option(name: .long, help: "echo: message size in bytes.")
    var messageSize = 32

    @Option(name: .long, help: "idle: the server's process id, to read its RSS.")
    var pid: Int32?

    @Option(name: .long, help: "chaos: share of answers dropped on purpose mid-answer (then resumed), 0...1.")
    var dropFraction: Double = 0

    @Option(name: .long, help: "chaos: turns per conversation before a new one.")
    var turnsPerConversation = 4

    @Option(name: .long, help: "chaos: seconds after --duration that answers in flight may take to end.")
    var endTimeout: Double = 120

    @Option(name: .long, help: "chaos: write every request's record (JSON lines) to this file.")
    var records: String?

    @Option(name: .long, help: "Event loop threads (default: cores).")
    var threads: Int?

    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    @Option(name: .long, help: "Also write the JSON result to this file.")
    var jsonFile: String?

    @Flag(name: .long, help: "No live progress line.")
    var quiet = false

    func validate() throws {
        guard Scenario(rawValue: self.scenario) != nil else {
            throw ValidationError("scenario must be one of: \(Scenario.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard !self.url.isEmpty else { throw ValidationError("give at least one --url ws://host:port/path") }
        for url in self.url where Target(url) == nil { throw ValidationError("not a ws:// URL: \(url)") }
        guard self.users >= 1, self.duration > 0 else { throw ValidationError("--users and --duration must be positive") }
        guard (0...1).contains(self.dropFraction), self.turnsPerConversation >= 1, self.endTimeout >= 0, self.endTimeout <= 86_400
        else { throw ValidationError("--drop-fraction is 0...1, --turns-per-conversation at least 1, --end-timeout 0...86400") }
    }

    func run() async throws {
        let scenario = Scenario(rawValue: self.scenario)!
        let group = MultiThreadedEventLoopGroup(numberOfThreads: self.threads ?? System.coreCount)
        let loops = Array(group.makeIterator())
        if scenario == .chaos {
            try await self.runChaos(loops: loops, group: group)
            return
        }
        var stats: [NIOLoopBound<LoopStats>] = []
        for loop in loops { stats.append(try await loop.submit { NIOLoopBound(LoopStats(), eventLoop: loop) }.get()) }
        let allStats = stats
        let finished = loops[0].makePromise(of: Void.self)
        let run = Run(
            scenario: scenario, targets: self.url.compactMap(Target.init), users: self.users,
            duration: .nanoseconds(Int64(self.duration * 1e9)), count: self.count, rampUp: .nanoseconds(Int64(self.rampUp * 1e9)),
            thinkTime: .milliseconds(Int64(self.thinkTime)), maxTokens: self.maxTokens, prompt: self.prompt,
            cancelAfter: self.cancelAfter, disconnectAfter: self.disconnectAfter, messageSize: self.messageSize,
            allFinished: finished)
        let rssBefore = self.pid.flatMap(Self.rss)
        let started = NIODeadline.now()
        for index in 0..<self.users {
            let loopIndex = index % loops.count
            let loop = loops[loopIndex]
            let loopStats = stats[loopIndex]
            loop.execute {
                VirtualUser(index: index, loop: loop, run: run, stats: loopStats.value).start()
            }
        }

        // Live progress, once a second, from every loop's counters.
        let progress: RepeatedTask? = self.quiet ? nil : loops[0].scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            let totals = Self.collect(allStats)
            totals.whenSuccess { total in
                let elapsed = Double((NIODeadline.now() - started).nanoseconds) / 1e9
                FileHandle.standardError.write(Data(String(
                    format: "\r%6.1fs  connections %d  answers %d  deltas %d (%.0f/s)  echoes %d  errors %d   ",
                    elapsed, total.connections, total.answers, total.deltas, Double(total.deltas) / max(elapsed, 0.001),
                    total.echoes, total.errors.values.reduce(0, +)).utf8))
            }
        }
        // Bounded whatever happens.
        let hardStop = loops[0].scheduleTask(in: .nanoseconds(Int64((self.duration + 30) * 1e9))) {
            finished.fail(LoadTestTimeout())
        }
        var timedOut = false
        do {
            try await finished.futureResult.get()
        } catch {
            timedOut = true
        }
        hardStop.cancel()
        progress?.cancel()
        let elapsed = Double((NIODeadline.now() - started).nanoseconds) / 1e9
        let rssAtPeak = self.pid.flatMap(Self.rss)
        let total = try await Self.collect(stats).get()
        if !self.quiet { FileHandle.standardError.write(Data("\n".utf8)) }
        try? await group.shutdownGracefully()

        var report = Report(scenario: scenario, targets: run.targets.map(\.description), users: self.users, elapsed: elapsed, total: total)
        report.timedOut = timedOut
        if let rssBefore, let rssAtPeak, scenario == .idle, total.connections > 0 {
            report.rssBytesPerConnection = Double(rssAtPeak - rssBefore) / Double(total.connections)
        }
        if self.json {
            print(report.json())
        } else {
            print(report.table())
        }
        if let path = self.jsonFile {
            try Data((report.json() + "\n").utf8).write(to: URL(fileURLWithPath: path))
        }
        if timedOut || total.seqViolations > 0 { throw ExitCode(1) }
    }

    /// The chaos scenario: `ChaosUser`s, their records, and the client-side figures.
    func runChaos(loops: [any EventLoop], group: MultiThreadedEventLoopGroup) async throws {
        var logs: [NIOLoopBound<ChaosLog>] = []
        for loop in loops { logs.append(try await loop.submit { NIOLoopBound(ChaosLog(), eventLoop: loop) }.get()) }
        let finished = loops[0].makePromise(of: Void.self)
        var chaos = ChaosSettings()
        chaos.dropFraction = self.dropFraction
        chaos.turnsPerConversation = self.turnsPerConversation
        chaos.endTimeout = .nanoseconds(Int64(self.endTimeout * 1e9))
        let run = Run(
            scenario: .chaos, targets: self.url.compactMap(Target.init), users: self.users,
            duration: .nanoseconds(Int64(self.duration * 1e9)), count: self.count, rampUp: .nanoseconds(Int64(self.rampUp * 1e9)),
            thinkTime: .milliseconds(Int64(self.thinkTime)), maxTokens: self.maxTokens, prompt: self.prompt,
            cancelAfter: self.cancelAfter, disconnectAfter: self.disconnectAfter, messageSize: self.messageSize,
            chaos: chaos, allFinished: finished)
        let started = NIODeadline.now()
        for index in 0..<self.users {
            let loopIndex = index % loops.count
            let loop = loops[loopIndex]
            let log = logs[loopIndex]
            loop.execute { ChaosUser(index: index, loop: loop, run: run, log: log.value).start() }
        }
        let allLogs = logs
        let progress: RepeatedTask? = self.quiet ? nil : loops[0].scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            Self.chaosSummary(allLogs).whenSuccess { summary in
                let elapsed = Double((NIODeadline.now() - started).nanoseconds) / 1e9
                FileHandle.standardError.write(Data(String(
                    format: "\r%6.1fs  requests %d  completed %d  streaming %d  resumes %d  deltas %d  disconnects %d  violations %d   ",
                    elapsed, summary.requests, summary.completed, summary.withoutTerminal, summary.resumes, summary.deltas,
                    summary.unplannedDisconnects, summary.violations - Int64(summary.withoutTerminal)).utf8))
            }
        }
        // Bounded whatever happens (users give up at --duration + --end-timeout themselves).
        let hardStop = loops[0].scheduleTask(in: .nanoseconds(Int64((self.duration + self.endTimeout + 30) * 1e9))) {
            finished.fail(LoadTestTimeout())
        }
        var timedOut = false
        do {
            try await finished.futureResult.get()
        } catch {
            timedOut = true
        }
        hardStop.cancel()
        progress?.cancel()
        if !self.quiet { FileHandle.standardError.write(Data("\n".utf8)) }
        let elapsed = Double((NIODeadline.now() - started).nanoseconds) / 1e9
        let summary = try await Self.chaosSummary(logs).get()
        if let path = self.records {
            // One JSON object per line, written loop by loop (on each loop: records are its own).
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            let file = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            for log in logs {
                let lines = try await log.eventLoop.submit { () -> Data in
                    var data = Data()
                    for record in log.value.records {
                        data.append(try JSONSerialization.data(withJSONObject: record.json, options: [.sortedKeys]))
                        data.append(UInt8(ascii: "\n"))
                    }
                    return data
                }.get()
                file.write(lines)
            }
            try file.close()
        }
        try? await group.shutdownGracefully()
        var object = summary.json
        object["scenario"] = "chaos"
        object["users"] = self.users
        object["elapsed_s"] = elapsed
        object["timed_out"] = timedOut
        let json = String(decoding: (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
        if self.json {
            print(json)
        } else {
            print("scenario chaos, \(self.users) users, \(String(format: "%.1f", elapsed)) s, targets: \(self.url.joined(separator: " "))")
            print(summary.table())
            if timedOut { print("TIMED OUT: not every user finished within --duration + --end-timeout + 30 s") }
        }
        if let path = self.jsonFile {
            try Data((json + "\n").utf8).write(to: URL(fileURLWithPath: path))
        }
        if timedOut || summary.violations > 0 { throw ExitCode(1) }
    }

    static func chaosSummary(_ logs: [NIOLoopBound<ChaosLog>]) -> EventLoopFuture<ChaosSummary> {
        let parts = logs.map { bound in
            bound.eventLoop.submit {
                var summary = ChaosSummary()
                summary.add(bound.value)
                return summary
            }
        }
        return EventLoopFuture.reduce(ChaosSummary(), parts, on: logs[0].eventLoop) { $0.merged($1) }
    }

    /// Merged counters and histograms of every loop.
    static func collect(_ stats: [NIOLoopBound<LoopStats>]) -> EventLoopFuture<Totals> {
        let parts = stats.map { bound in bound.eventLoop.submit { bound.value.totals } }
        return EventLoopFuture.reduce(Totals(), parts, on: stats[0].eventLoop) { $0.merged($1) }
    }

    /// Resident set size of `pid` in bytes (Linux `/proc`).
    static func rss(_ pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kilobytes = line.split(separator: " ").compactMap { Int($0) }.first
            return kilobytes.map { $0 * 1024 }
        }
        return nil
    }
}

struct LoadTestTimeout: Error {}

/// Everything measured: one per event loop (in `LoopStats`), merged over loops at the end.
/// Latencies in microseconds.
struct Totals: Sendable {
    var timeToFirstToken = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    var interTokenGap = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    var wholeAnswer = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
    var cancelToDone = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    var echoRoundTrip = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    var answers = 0
    var deltas = 0
    var deltaMessages = 0
    var echoes = 0
    var connections = 0
    var connectFailures = 0
    var errors: [String: Int] = [:]
    var seqViolations = 0
    var resumes = 0
    var unexpectedDisconnects = 0
    var finishReasons: [String: Int] = [:]

    init() {}

    func merged(_ other: Totals) -> Totals {
        var result = self
        result.timeToFirstToken.add(other.timeToFirstToken)
        result.interTokenGap.add(other.interTokenGap)
        result.wholeAnswer.add(other.wholeAnswer)
        result.cancelToDone.add(other.cancelToDone)
        result.echoRoundTrip.add(other.echoRoundTrip)
        result.answers += other.answers
        result.deltas += other.deltas
        result.deltaMessages += other.deltaMessages
        result.echoes += other.echoes
        result.connections += other.connections
        result.connectFailures += other.connectFailures
        result.errors.merge(other.errors, uniquingKeysWith: +)
        result.seqViolations += other.seqViolations
        result.resumes += other.resumes
        result.unexpectedDisconnects += other.unexpectedDisconnects
        result.finishReasons.merge(other.finishReasons, uniquingKeysWith: +)
        return result
    }
}

/// The final result, as a table or JSON.
struct Report {
    let scenario: Scenario
    let targets: [String]
    let users: Int
    let elapsed: Double
    let total: Totals
    var timedOut = false
    var rssBytesPerConnection: Double?

    static let percentiles: [(String, Double)] = [("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)]

    /// Milliseconds at each percentile, and the max; nil when nothing was recorded.
    static func summary(_ histogram: Histogram<UInt64>) -> [String: Double]? {
        guard histogram.totalCount > 0 else { return nil }
        var result: [String: Double] = [:]
        for (name, percentile) in Self.percentiles {
            result[name] = Double(histogram.valueAtPercentile(percentile)) / 1000
        }
        result["max"] = Double(histogram.max) / 1000
        result["count"] = Double(histogram.totalCount)
        return result
    }

    var latencies: [(String, Histogram<UInt64>)] {
        [("time_to_first_token_ms", self.total.timeToFirstToken), ("inter_token_gap_ms", self.total.interTokenGap),
         ("whole_answer_ms", self.total.wholeAnswer), ("cancel_to_done_ms", self.total.cancelToDone),
         ("echo_round_trip_ms", self.total.echoRoundTrip)]
    }

    func json() -> String {
        var object: [String: Any] = [
            "scenario": self.scenario.rawValue, "targets": self.targets, "users": self.users, "elapsed_s": self.elapsed,
            "connections": self.total.connections, "connect_failures": self.total.connectFailures,
            "answers": self.total.answers, "answers_per_s": Double(self.total.answers) / self.elapsed,
            "deltas": self.total.deltas, "deltas_per_s": Double(self.total.deltas) / self.elapsed,
            "delta_messages": self.total.deltaMessages, "echoes": self.total.echoes,
            "echoes_per_s": Double(self.total.echoes) / self.elapsed,
            "errors": self.total.errors, "seq_violations": self.total.seqViolations, "resumes": self.total.resumes,
            "unexpected_disconnects": self.total.unexpectedDisconnects,
            "finish_reasons": self.total.finishReasons, "timed_out": self.timedOut,
        ]
        for (name, histogram) in self.latencies {
            if let summary = Self.summary(histogram) { object[name] = summary }
        }
        if let rss = self.rssBytesPerConnection { object["rss_bytes_per_connection"] = rss }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    func table() -> String {
        var lines: [String] = []
        lines.append("scenario \(self.scenario.rawValue), \(self.users) users, \(String(format: "%.1f", self.elapsed)) s, targets: \(self.targets.joined(separator: " "))")
        lines.append(String(format: "connections %d (failed attempts %d)   answers %d (%.1f/s)   deltas %d (%.0f/s, %d messages)   echoes %d (%.0f/s)",
                            self.total.connections, self.total.connectFailures, self.total.answers, Double(self.total.answers) / self.elapsed,
                            self.total.deltas, Double(self.total.deltas) / self.elapsed, self.total.deltaMessages,
                            self.total.echoes, Double(self.total.echoes) / self.elapsed))
        func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
            let space = String(repeating: " ", count: max(0, width - text.count))
            return left ? text + space : space + text
        }
        let recorded = self.latencies.compactMap { name, histogram in Self.summary(histogram).map { (name, $0) } }
        if !recorded.isEmpty {
            lines.append(pad("latency (ms)", 24, left: true) + ["count", "p50", "p90", "p99", "p99.9", "max"].map { pad($0, 11) }.joined())
            for (name, summary) in recorded {
                lines.append(pad(name, 24, left: true) + pad(String(format: "%.0f", summary["count"]!), 11)
                    + ["p50", "p90", "p99", "p99.9", "max"].map { pad(String(format: "%.3f", summary[$0]!), 11) }.joined())
            }
        }
        let reasons = self.total.finishReasons.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        if !reasons.isEmpty { lines.append("finish reasons: \(reasons)") }
        let errors = self.total.errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        lines.append("errors: \(errors.isEmpty ? "none" : errors)   seq violations: \(self.total.seqViolations)   resumes: \(self.total.resumes)   unexpected disconnects: \(self.total.unexpectedDisconnects)")
        if let rss = self.rssBytesPerConnection { lines.append(String(format: "server RSS per connection: %.0f bytes", rss)) }
        if self.timedOut { lines.append("TIMED OUT: not every user finished within --duration + 30 s") }
        return lines.joined(separator: "\n")
    }
}
