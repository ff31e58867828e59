import Foundation
@testable import SluiceTestSupport
import Testing

/// `sluice-loadtest` against real `sluice serve` processes: every scenario completes, its
/// counts add up, and it reports no seq violation (it checks every answer's seqs itself).
@Suite struct LoadTestHarnessTests {
    static func harness(_ arguments: [String]) async throws -> [String: Any] {
        let executable = try SluiceProcess.findExecutable()
        let harness = URL(fileURLWithPath: executable).deletingLastPathComponent().appendingPathComponent("sluice-loadtest").path
        let result = try await SluiceProcess.runCommand(arguments + ["--json", "--quiet"], executable: harness, timeout: .seconds(60))
        #expect(result.status == 0, "\(result.output)")
        let start = try #require(result.output.firstIndex(of: "{"))
        return try #require(try JSONSerialization.jsonObject(with: Data(result.output[start...].utf8)) as? [String: Any])
    }

    @Test(.timeLimit(.minutes(15)))
    func chatCancelResumeAndIdleAgainstOneInstance() async throws {
        let environment = [
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "10ms",
            "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "500",
        ]
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { processes in
            let url = processes[0].url
            let chat = try await Self.harness(["chat", "--url", url, "--users", "8", "--count", "40", "--duration", "20", "--max-tokens", "10"])
            #expect(chat["answers"] as? Int == 40 && chat["deltas"] as? Int == 400)
            #expect(chat["seq_violations"] as? Int == 0 && (chat["errors"] as? [String: Int])?.isEmpty == true)
            #expect((chat["time_to_first_token_ms"] as? [String: Double])?["count"] == 40)

            let cancel = try await Self.harness(["cancel", "--url", url, "--users", "4", "--count", "12", "--duration", "20", "--cancel-after", "2"])
            #expect(cancel["answers"] as? Int == 12 && (cancel["finish_reasons"] as? [String: Int])?["cancelled"] == 12)
            #expect((cancel["cancel_to_done_ms"] as? [String: Double])?["count"] == 12)

            let resume = try await Self.harness([
                "resume", "--url", url, "--users", "4", "--count", "12", "--duration", "20", "--max-tokens", "20", "--disconnect-after", "5",
            ])
            #expect(resume["answers"] as? Int == 12 && resume["resumes"] as? Int == 12 && resume["deltas"] as? Int == 240)
            #expect(resume["seq_violations"] as? Int == 0)

            let idle = try await Self.harness([
                "idle", "--url", url, "--users", "50", "--duration", "1", "--pid", String(processes[0].pid),
            ])
            #expect(idle["connections"] as? Int == 50)
            #expect((idle["rss_bytes_per_connection"] as? Double) != nil)
        }
    }

    /// The chaos scenario's accounting on a calm instance: every generation completes with one
    /// `done`, the planned drops are resumed without a gap or a repeat, and the records say so.
    @Test(.timeLimit(.minutes(15)))
    func chaosRecordsEveryGenerationAndResumesItsDrops() async throws {
        let environment = [
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "10ms",
            "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "200",
            "SLUICE_STORAGE_DATABASE_URL": "memory",
        ]
        let records = FileManager.default.temporaryDirectory.appendingPathComponent("chaos-\(UUID().uuidString).jsonl")
        defer { try? FileManager.default.removeItem(at: records) }
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { processes in
            let chaos = try await Self.harness([
                "chaos", "--url", processes[0].url, "--users", "4", "--duration", "3", "--max-tokens", "20",
                "--drop-fraction", "0.5", "--turns-per-conversation", "2", "--end-timeout", "20", "--records", records.path,
            ])
            let generations = try #require(chaos["generations"] as? Int)
            #expect(generations >= 4 && chaos["completed"] as? Int == generations, "\(chaos)")
            #expect(chaos["violations"] as? Int == 0 && chaos["without_terminal"] as? Int == 0)
            let drops = try #require(chaos["planned_drops"] as? Int)
            #expect(drops >= 1 && chaos["resumes"] as? Int == drops && chaos["completed_resumed"] as? Int == drops, "\(chaos)")
            let lines = try String(contentsOf: records, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == chaos["requests"] as? Int)
            for line in lines {
                let record = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                #expect(record["last_seq"] as? Int == 20 && record["missing"] as? Int == 0 && record["repeated"] as? Int == 0)
                #expect((record["terminals"] as? [[String: Any]])?.count == 1 && record["completed"] as? Bool == true)
                #expect((record["prompt"] as? String)?.contains(record["request_id"] as? String ?? "?") == true)
                #expect(!(record["text_json"] as? String ?? "").isEmpty && record["conversation_id"] != nil)
            }
        }
    }

    /// A prompt with a quote, a backslash, a newline, a tab, U+0001 and U+2028 reaches the server
    /// as valid JSON from both the chat and the chaos users (they once wrote the prompt into the
    /// frame unescaped, or escaped only `\\` and `"`, and every request was refused as
    /// `invalid_message`). U+0000 cannot be an argument; `ClientMessageEncoderTests` covers it.
    @Test(.timeLimit(.minutes(15)))
    func hostilePromptsAreSentAsValidJSON() async throws {
        let prompt = "say \"hi\" \\ then\nnext\tline \u{01} \u{2028} end"
        let environment = [
            "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "10ms",
            "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "500",
            "SLUICE_STORAGE_DATABASE_URL": "memory",
        ]
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { processes in
            let url = processes[0].url
            let chat = try await Self.harness([
                "chat", "--url", url, "--users", "2", "--count", "4", "--duration", "20", "--max-tokens", "3", "--prompt", prompt,
            ])
            #expect(chat["answers"] as? Int == 4 && (chat["errors"] as? [String: Int])?.isEmpty == true, "\(chat)")
            let chaos = try await Self.harness([
                "chaos", "--url", url, "--users", "1", "--duration", "1", "--max-tokens", "3", "--drop-fraction", "0",
                "--end-timeout", "20", "--prompt", prompt,
            ])
            let generations = try #require(chaos["generations"] as? Int)
            #expect(generations >= 1 && (chaos["refused"] as? [String: Int])?.isEmpty == true, "\(chaos)")
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func echoAgainstTheEchoServer() async throws {
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--echo"]) { processes in
            let echo = try await Self.harness(["echo", "--url", processes[0].url, "--users", "4", "--count", "200", "--duration", "20"])
            #expect(echo["echoes"] as? Int == 200)
            #expect((echo["echo_round_trip_ms"] as? [String: Double])?["count"] == 200)
        }
    }
}
