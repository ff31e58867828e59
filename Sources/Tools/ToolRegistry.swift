import Foundation
import Inference
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A tool the model may call.
public protocol Tool: Sendable {
    var name: String { get }
    var description: String { get }
    /// The JSON schema of the arguments (JSON text), as offered to the model and enforced here.
    var parameters: String { get }
    /// Runs once per call with arguments that passed the schema; returns the text the model
    /// gets back. Throw `ToolError` for a clean message.
    func run(_ arguments: ToolArguments) async throws -> String
}

/// Validated arguments of one call.
public struct ToolArguments: Sendable {
    public let json: String
    public var object: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(self.json.utf8))) as? [String: Any] ?? [:]
    }
    public func string(_ name: String) -> String? { self.object[name] as? String }
}

/// A tool's own failure, reported to the model as `{"error": message}`.
public struct ToolError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
    public init(_ message: String) { self.message = message }
}

/// What one call came to.
public struct ToolRun: Sendable, Equatable {
    public enum Status: String, Sendable {
        case ok
        case error
        case timeout
        case invalidArguments = "invalid_arguments"
        case unknownTool = "unknown_tool"
    }

    public var call: ToolCall
    public var status: Status
    /// What goes back to the model (for a failure, a JSON object with `error`).
    public var output: String
    public var durationMs: Int
    /// Microseconds since 1970, when it started.
    public var startedAt: Int64
}

/// The tools offered to the model, and the runner of a turn's calls.
public struct ToolRegistry: Sendable {
    struct Entry: Sendable {
        var tool: any Tool
        var schema: JSONSchema
        var timeout: TimeAmount
    }

    private var entries: [String: Entry] = [:]
    /// Registration order, which is the order offered to the model.
    private var order: [String] = []
    /// The largest tool answer passed back (bytes); longer ones are cut with a note.
    public var maximumOutputBytes = 16 * 1024

    public init() {}

    public static let empty = ToolRegistry()

    public var isEmpty: Bool { self.order.isEmpty }
    public var names: [String] { self.order }

    /// Adds `tool` (replacing one of the same name). Fails when its schema is not valid.
    public mutating func register(_ tool: any Tool, timeout: TimeAmount = .seconds(10)) throws {
        guard tool.name.range(of: "^[a-zA-Z0-9_-]{1,64}$", options: .regularExpression) != nil else {
            throw ToolError("tool name \"\(tool.name)\" must be 1 to 64 letters, digits, _ or -")
        }
        let schema: JSONSchema
        do {
            schema = try JSONSchema(json: tool.parameters)
        } catch {
            throw ToolError("tool \(tool.name): parameters is not a valid JSON schema: \(error)")
        }
        if self.entries[tool.name] == nil { self.order.append(tool.name) }
        self.entries[tool.name] = Entry(tool: tool, schema: schema, timeout: timeout)
    }

    /// The definitions offered upstream: all tools, or those of `names` that exist.
    public func definitions(only names: [String]? = nil) -> [ToolDefinition] {
        let chosen = names.map { wanted in self.order.filter { wanted.contains($0) } } ?? self.order
        return chosen.compactMap { name in
            self.entries[name].map { ToolDefinition(name: name, description: $0.tool.description, parameters: $0.tool.parameters) }
        }
    }

    /// Runs all calls of a turn at once; each has its own timeout, and a failure of one is that
    /// call's result, never the turn's. Results come back in the calls' order.
    public func runAll(_ calls: [ToolCall]) async -> [ToolRun] {
        await withTaskGroup(of: (Int, ToolRun).self) { group in
            for (index, call) in calls.enumerated() {
                group.addTask { (index, await self.run(call)) }
            }
            var runs = [ToolRun?](repeating: nil, count: calls.count)
            for await (index, run) in group { runs[index] = run }
            return runs.compactMap { $0 }
        }
    }

    /// One call: look up, parse and validate the arguments, run under the timeout.
    public func run(_ call: ToolCall) async -> ToolRun {
        let started = Date()
        let startedAt = Int64(started.timeIntervalSince1970 * 1_000_000)
        func finish(_ status: ToolRun.Status, _ output: String) -> ToolRun {
            ToolRun(call: call, status: status, output: self.bounded(output),
                    durationMs: Int((Date().timeIntervalSince(started) * 1000).rounded()), startedAt: startedAt)
        }
        guard let entry = self.entries[call.name] else {
            return finish(.unknownTool, Self.errorJSON("unknown tool \"\(call.name)\" (available: \(self.order.joined(separator: ", ")))"))
        }
        let text = call.arguments.trimmingCharacters(in: .whitespacesAndNewlines)
        let parsed = try? JSONSerialization.jsonObject(with: Data((text.isEmpty ? "{}" : text).utf8))
        guard let parsed else {
            return finish(.invalidArguments, Self.errorJSON("the arguments are not valid JSON"))
        }
        let problems = entry.schema.validate(parsed)
        guard problems.isEmpty else {
            return finish(.invalidArguments, Self.errorJSON("invalid arguments: " + problems.joined(separator: "; ")))
        }
        let arguments = ToolArguments(json: text.isEmpty ? "{}" : text)
        let tool = entry.tool
        let timeout = entry.timeout
        let outcome = await Self.race(timeout) { try await tool.run(arguments) }
        switch outcome {
        case .success(let output)?: return finish(.ok, output)
        case .failure(let error)?:
            let message = (error as? ToolError)?.message ?? "\(error)"
            return finish(.error, Self.errorJSON(message))
        case nil:
            return finish(.timeout, Self.errorJSON("the tool did not answer within \(timeout.nanoseconds / 1_000_000) ms"))
        }
    }

    /// The tool's result, or nil when `timeout` passed first. Does not wait for a tool that
    /// ignores cancellation: the call is answered at the deadline either way.
    static func race(_ timeout: TimeAmount, _ body: @escaping @Sendable () async throws -> String) async -> Result<String, any Error>? {
        let waiting = NIOLockedValueBox<CheckedContinuation<Result<String, any Error>?, Never>?>(nil)
        let timer = NIOLockedValueBox<Task<Void, Never>?>(nil)
        return await withCheckedContinuation { continuation in
            waiting.withLockedValue { $0 = continuation }
            let work = Task {
                let result: Result<String, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                if let continuation = waiting.withLockedValue({ state in defer { state = nil }; return state }) {
                    timer.withLockedValue { $0 }?.cancel()
                    continuation.resume(returning: result)
                }
            }
            let deadline = Task {
                try? await Task.sleep(nanoseconds: UInt64(max(0, timeout.nanoseconds)))
                guard !Task.isCancelled else { return }
                if let continuation = waiting.withLockedValue({ state in defer { state = nil }; return state }) {
                    work.cancel()
                    continuation.resume(returning: nil)
                }
            }
            timer.withLockedValue { $0 = deadline }
        }
    }

    private func bounded(_ output: String) -> String {
        guard output.utf8.count > self.maximumOutputBytes else { return output }
        let cut = String(decoding: output.utf8.prefix(self.maximumOutputBytes), as: UTF8.self)
        return cut + "\n[truncated: the answer was \(output.utf8.count) bytes]"
    }

    static func errorJSON(_ message: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: ["error": message], options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}
