import Foundation
import Inference
import NIOCore

/// Reading a job's JSON input (JSONSerialization values).
enum JobInput {
    /// An exact integer, not a boolean (`true` is an NSNumber too) nor a fraction.
    static func integer(_ value: Any?) -> Int? {
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c" else { return nil }
        let double = number.doubleValue
        guard double.isFinite, double.rounded(.towardZero) == double, abs(double) < 9_007_199_254_740_992 else { return nil }
        return Int(double)
    }
}

/// `echo`: returns its input at once. The trivial job of the queue benchmark.
public struct EchoJob: JobHandler {
    public let kind = "echo"
    public init() {}
    public func validate(input: Any) -> String? { nil }
    public func run(_ context: JobContext) async throws -> JobOutput {
        JobOutput(body: context.input)
    }
}

/// `demo`: `steps` recorded steps of `step_ms` each, with progress after each, for demos,
/// tests and drills. `fail_attempts: k` fails the first k attempts halfway (retryable);
/// `fail: "permanent"` fails at once without retry. The result lists how often each step's body
/// ran, which shows that a retried or reclaimed job does not redo recorded steps.
public struct DemoJob: JobHandler {
    public let kind = "demo"
    public init() {}

    public func validate(input: Any) -> String? {
        guard let object = input as? [String: Any] else { return "input must be a JSON object" }
        if let steps = object["steps"], !(JobInput.integer(steps).map { (0...1000).contains($0) } ?? false) { return "steps must be an integer from 0 to 1000" }
        if let ms = object["step_ms"], !(JobInput.integer(ms).map { (0...600_000).contains($0) } ?? false) { return "step_ms must be an integer from 0 to 600000" }
        if let k = object["fail_attempts"], !(JobInput.integer(k).map { (0...100).contains($0) } ?? false) { return "fail_attempts must be an integer from 0 to 100" }
        if let fail = object["fail"], (fail as? String) != "permanent" { return "fail must be \"permanent\"" }
        return nil
    }

    public func run(_ context: JobContext) async throws -> JobOutput {
        let input = context.inputObject
        let steps = JobInput.integer(input["steps"]) ?? 3
        let stepMs = JobInput.integer(input["step_ms"]) ?? 200
        if input["fail"] as? String == "permanent" {
            throw JobFailure("failed on purpose (fail: permanent)", retryable: false)
        }
        let failAttempts = JobInput.integer(input["fail_attempts"]) ?? 0
        for step in stride(from: 1, through: steps, by: 1) {
            if context.attempt <= failAttempts && step > steps / 2 {
                throw JobFailure("failed on purpose at step \(step) (attempt \(context.attempt) of the first \(failAttempts))")
            }
            _ = try await context.step("step-\(step)") { _ in
                try await Task.sleep(nanoseconds: UInt64(stepMs) * 1_000_000)
                return "done"
            }
            await context.progress(current: step, total: steps, message: "step \(step) of \(steps)")
        }
        if context.attempt <= failAttempts {
            throw JobFailure("failed on purpose (attempt \(context.attempt) of the first \(failAttempts))")
        }
        let runs = try await context.stepRuns()
        let object: [String: Any] = ["steps": steps, "attempt": context.attempt, "step_runs": runs]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return JobOutput(body: String(decoding: data, as: UTF8.self))
    }
}

/// `report`: the seed's "generate report" workflow. Plans the sections with the model, writes
/// them in parallel through the same upstreams as chat, and assembles a Markdown report. Every
/// model call is a recorded step, so a retry or a reclaim continues where the last attempt
/// stopped instead of paying for finished sections again.
public struct ReportJob: JobHandler {
    public let kind = "report"
    let router: InferenceRouter
    let eventLoopGroup: any EventLoopGroup
    /// Sections written at once.
    let parallelSections: Int

    public init(router: InferenceRouter, eventLoopGroup: any EventLoopGroup, parallelSections: Int = 4) {
        self.router = router
        self.eventLoopGroup = eventLoopGroup
        self.parallelSections = max(1, parallelSections)
    }

    public func validate(input: Any) -> String? {
        guard let object = input as? [String: Any] else { return "input must be a JSON object with a \"prompt\"" }
        guard let prompt = object["prompt"] as? String, !prompt.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            return "input.prompt must be a non-empty string"
        }
        if prompt.count > 4000 { return "input.prompt must be at most 4000 characters" }
        if let sections = object["sections"], !(JobInput.integer(sections).map { (1...12).contains($0) } ?? false) { return "sections must be an integer from 1 to 12" }
        if let tokens = object["max_tokens"], !(JobInput.integer(tokens).map { (16...4096).contains($0) } ?? false) { return "max_tokens must be an integer from 16 to 4096" }
        if let model = object["model"] {
            guard let model = model as? String else { return "model must be a string" }
            if case .failure(let unknown) = self.router.route(model: model) { return unknown.message }
        }
        return nil
    }

    /// The plan (its prompt and 128 tokens) and every section (its prompt and `max_tokens`). A
    /// prompt costs the user's text (4 bytes a token) plus the instructions around it.
    public func tokenBudget(input: Any) -> Int {
        let object = input as? [String: Any] ?? [:]
        let promptTokens = (object["prompt"] as? String ?? "").utf8.count / 4 + Self.instructionTokens
        let sections = JobInput.integer(object["sections"]) ?? Self.defaultSections
        let maxTokens = JobInput.integer(object["max_tokens"]) ?? Self.defaultMaxTokens
        return (promptTokens + Self.planTokens) + sections * (promptTokens + maxTokens)
    }

    static let defaultSections = 4
    static let defaultMaxTokens = 256
    static let planTokens = 128
    /// The system message and the wording around the user's prompt, with room to spare.
    static let instructionTokens = 64

    public func run(_ context: JobContext) async throws -> JobOutput {
        let input = context.inputObject
        let prompt = (input["prompt"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        let count = JobInput.integer(input["sections"]) ?? Self.defaultSections
        let maxTokens = JobInput.integer(input["max_tokens"]) ?? Self.defaultMaxTokens
        let route: InferenceRouter.Route
        switch self.router.route(model: input["model"] as? String, prompt: prompt) {
        case .success(let found): route = found
        case .failure(let unknown): throw JobFailure(unknown.message, retryable: false)
        }
        let total = count + 2
        await context.progress(current: 0, total: total, message: "planning \(count) sections")
        let planText = try await context.step("plan") { _ in
            let answer = try await self.ask(
                route, system: "You plan reports. Answer with section titles only.",
                user: "List exactly \(count) short section titles for a report about: \(prompt)\nOne title per line, no numbering, no other text.",
                maxTokens: Self.planTokens, context: context)
            let titles = Self.sectionTitles(from: answer, count: count)
            let data = try JSONSerialization.data(withJSONObject: titles)
            return String(decoding: data, as: UTF8.self)
        }
        let titles = (try? JSONSerialization.jsonObject(with: Data(planText.utf8))) as? [String] ?? Self.fallbackTitles(count)
        await context.progress(current: 1, total: total, message: "planned: \(titles.joined(separator: " · "))")
        // The sections do not depend on each other: written in parallel, a few at a time.
        var sections = [String](repeating: "", count: titles.count)
        var done = 1
        try await withThrowingTaskGroup(of: (Int, String).self) { group in
            var next = 0
            func addNext() {
                guard next < titles.count else { return }
                let index = next
                next += 1
                group.addTask {
                    let text = try await context.step("section-\(index + 1)") { _ in
                        try await self.ask(
                            route, system: "You write clear, factual report sections in plain prose.",
                            user: "Write the section \"\(titles[index])\" of a report about: \(prompt)\nTwo short paragraphs. No heading.",
                            maxTokens: maxTokens, context: context)
                    }
                    return (index, text)
                }
            }
            for _ in 0..<min(self.parallelSections, titles.count) { addNext() }
            while let (index, text) = try await group.next() {
                sections[index] = text
                done += 1
                await context.progress(current: done, total: total, message: "wrote section \(index + 1): \(titles[index])")
                addNext()
            }
        }
        var markdown = "# \(Self.title(for: prompt))\n\n"
        for (title, text) in zip(titles, sections) {
            markdown += "## \(title)\n\n\(text.trimmingCharacters(in: .whitespacesAndNewlines))\n\n"
        }
        await context.progress(current: total, total: total, message: "assembled")
        return JobOutput(body: markdown, contentType: "text/markdown; charset=utf-8")
    }

    private func ask(_ route: InferenceRouter.Route, system: String, user: String, maxTokens: Int, context: JobContext) async throws -> String {
        let request = GenerationRequest(
            messages: [ChatMessage(role: .system, content: system), ChatMessage(role: .user, content: user)],
            model: route.model, maxTokens: maxTokens, temperature: 0.3)
        do {
            let completion = try await route.upstream.engine.complete(request, on: self.eventLoopGroup.next())
            // What the upstream reported, else an estimate (4 bytes a token), at most what was asked.
            let prompt = completion.promptTokens ?? (system.utf8.count + user.utf8.count) / 4 + 8
            let answer = min(completion.completionTokens ?? completion.text.utf8.count / 4 + 1, maxTokens)
            try await context.recordUsage(tokens: Self.saturatingSum(max(0, prompt), max(0, answer)))
            return completion.text
        } catch let error as InferenceError {
            // Upstream trouble is worth another attempt (the recorded steps are kept).
            throw JobFailure("upstream: \(error.message)", retryable: true)
        }
    }

    /// Titles from a planning answer: one per line, numbering, bullets and emphasis removed;
    /// fallback titles fill in when the model gave too few.
    static func sectionTitles(from answer: String, count: Int) -> [String] {
        var titles: [String] = []
        for line in answer.split(whereSeparator: \.isNewline) {
            var title = line.trimmingCharacters(in: .whitespaces)
            while let first = title.first, "0123456789.-*#)•:".contains(first) { title.removeFirst() }
            title = title.replacingOccurrences(of: "**", with: "").trimmingCharacters(in: .whitespaces)
            guard (2...80).contains(title.count), !titles.contains(title) else { continue }
            titles.append(title)
            if titles.count == count { break }
        }
        for fallback in Self.fallbackTitles(count + titles.count) where titles.count < count && !titles.contains(fallback) {
            titles.append(fallback)
        }
        return titles
    }

    static func saturatingSum(_ a: Int, _ b: Int) -> Int {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? Int.max : sum
    }

    static func fallbackTitles(_ count: Int) -> [String] {
        let names = ["Overview", "Background", "Key points", "Analysis", "Risks", "Opportunities", "Recommendations", "Outlook", "Conclusion"]
        return (0..<count).map { $0 < names.count ? names[$0] : "Part \($0 + 1)" }
    }

    static func title(for prompt: String) -> String {
        let firstLine = prompt.split(whereSeparator: \.isNewline).first.map(String.init) ?? prompt
        return firstLine.count > 80 ? String(firstLine.prefix(77)) + "..." : firstLine
    }
}
