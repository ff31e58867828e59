import Foundation
@testable import SluiceTestSupport
import Testing

/// Secrets never reach the output of the real binary (its logs, its errors), nor its arguments;
/// configuration mistakes stop it loudly; its embedded database is private whatever the umask.
@Suite struct SecretsProcessTests {
    static let wrongPassword = "Wr0ngPassw0rd-hunter2"

    /// A gateway whose database rejects its password keeps running (the migration is retried,
    /// `/ready` says why) and never prints the password, nor does `sluice migrate` (which ends
    /// with the driver's error); neither does anything using a Redis URL with a password.
    @Test(.timeLimit(.minutes(15)))
    func wrongPasswordsNeverAppearInTheOutput() async throws {
        try await PostgresServerProcess.withServer { postgres in
            let database = "postgres://sluice:\(Self.wrongPassword)@127.0.0.1:\(postgres.port)/sluice?sslmode=disable"
            let gateway = try await SluiceProcess.start(environment: ["SLUICE_STORAGE_DATABASE_URL": database])
            defer { Task { await gateway.kill() } }
            // It says where it stores (masked), and /ready why it is not ready; a connection
            // attempt was refused (the password) at least once by then.
            try await PersistenceProcessTests.eventually("the storage line") { gateway.logTail(lines: 500).contains("conversations stored") }
            let ready = try await gateway.httpGet(path: "/ready")
            #expect(ready.status == 503 && ready.body.contains("storage schema not ready"), "\(ready)")
            try await PersistenceProcessTests.eventually("PostgreSQL refused the password") {
                postgres.logTail().contains("password authentication failed")
            }
            // Said within the operation timeout (10 s), not the migration's (120 s).
            try await PersistenceProcessTests.eventually("the failed migration is logged", timeout: .seconds(30)) {
                gateway.logTail(lines: 500).contains("storage migration failed")
            }
            #expect(try await gateway.terminate(timeout: .seconds(30)) == .exited(0))
            let log = try String(contentsOf: gateway.logFile, encoding: .utf8)
            #expect(log.contains("postgres://sluice:***@127.0.0.1"), "the masked URL is what is shown")
            #expect(!log.contains(Self.wrongPassword), "\(log)")

            let migrate = try await SluiceProcess.runCommand(
                ["migrate", "--timeout", "3"], environment: ["SLUICE_STORAGE_DATABASE_URL": database])
            #expect(migrate.status == 1 && migrate.output.contains("migration failed"), "\(migrate.output)")
            #expect(!migrate.output.contains(Self.wrongPassword), "\(migrate.output)")
        }
        // A Redis with a password of its own: AUTH with the wrong one fails on every connection.
        try await RedisServerProcess.withServer(arguments: ["--requirepass", "the-right-one"]) { redis in
            let url = "redis://default:\(Self.wrongPassword)@127.0.0.1:\(redis.port)/0"
            let gateway = try await SluiceProcess.start(environment: ["SLUICE_REDIS_URL": url, "SLUICE_STORAGE_DATABASE_URL": "memory"])
            defer { Task { await gateway.kill() } }
            try await PersistenceProcessTests.eventually("/ready says Redis is unreachable") {
                let ready = try await gateway.httpGet(path: "/ready")
                return ready.status == 503 && ready.body.contains("redis")
            }
            #expect(try await gateway.terminate(timeout: .seconds(30)) == .exited(0))
            let log = try String(contentsOf: gateway.logFile, encoding: .utf8)
            #expect(log.contains("redis://default:***@127.0.0.1"), "the masked URL is what is shown")
            #expect(!log.contains(Self.wrongPassword), "\(log)")
            let jobs = try await SluiceProcess.runCommand(["jobs", "ls"], environment: ["SLUICE_REDIS_URL": url], timeout: .seconds(30))
            #expect(jobs.status != 0)
            #expect(!jobs.output.contains(Self.wrongPassword), "\(jobs.output)")
            let serve = try await SluiceProcess.runCommand(
                ["serve", "--port", "0", "--admin-port", "0", "--database-url", "memory"],
                environment: ["SLUICE_REDIS_URL": "redis://default:\(Self.wrongPassword)@127.0.0.1:notaport/0"], timeout: .seconds(30))
            #expect(serve.status == 78 && serve.output.contains("redis.url"), "\(serve.output)")
            #expect(!serve.output.contains(Self.wrongPassword), "\(serve.output)")
        }
    }

    /// Secrets in arguments are refused (`ps` shows them to every user), with the way to do it.
    @Test(.timeLimit(.minutes(15)))
    func secretsOnTheCommandLineAreRefused() async throws {
        let database = try await SluiceProcess.runCommand(
            ["serve", "--port", "0", "--admin-port", "0", "--database-url", "postgres://sluice:\(Self.wrongPassword)@127.0.0.1:1/sluice"])
        #expect(database.status == 78 && database.output.contains("SLUICE_STORAGE_DATABASE_URL"), "\(database.output)")
        #expect(!database.output.contains(Self.wrongPassword))

        let jwt = try await SluiceProcess.runCommand(["serve", "--jwt-secret", String(repeating: "s", count: 40)])
        #expect(jwt.status == 64 && jwt.output.contains("--jwt-secret-file"), "\(jwt.output)")
        let token = try await SluiceProcess.runCommand(["token", "--sub", "alice", "--jwt-secret", String(repeating: "s", count: 40)])
        #expect(token.status == 64 && token.output.contains("--jwt-secret-file"), "\(token.output)")
        let hashArgument = try await SluiceProcess.runCommand(["hash-key", "sk-my-key"])
        #expect(hashArgument.status == 64 && hashArgument.output.contains("standard input"), "\(hashArgument.output)")
    }

    /// The alternatives: the key on stdin, the secret in a file or the environment.
    @Test(.timeLimit(.minutes(15)))
    func hashKeyReadsStdinAndTokenReadsAFile() async throws {
        // SHA-256 of "sk-my-key" (printf %s sk-my-key | sha256sum), the newline not included.
        let sha256 = "322ad2605eafb747bb3ea1c8563e4aaf8f338724782daebae9f13d6761614bd0\n"
        for input in ["sk-my-key\n", "sk-my-key", "sk-my-key\r\n"] {
            let hash = try await SluiceProcess.runCommand(["hash-key"], input: input)
            #expect(hash.status == 0 && hash.output == sha256, "\(hash.output)")
        }
        let empty = try await SluiceProcess.runCommand(["hash-key"], input: "")
        #expect(empty.status == 64)

        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-jwt-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: file) }
        try (AuthProcessTests.secret + "\n").write(to: file, atomically: true, encoding: .utf8)
        let fromFile = try await SluiceProcess.runCommand(["token", "--sub", "alice", "--jwt-secret-file", file.path])
        let fromVariable = try await SluiceProcess.runCommand(["token", "--sub", "alice"], environment: ["SLUICE_AUTH_JWT_SECRET_FILE": file.path])
        let fromSecret = try await SluiceProcess.runCommand(["token", "--sub", "alice"], environment: ["SLUICE_JWT_SECRET": AuthProcessTests.secret])
        for result in [fromFile, fromVariable, fromSecret] {
            #expect(result.status == 0 && result.output.split(separator: ".").count == 3, "\(result.output)")
        }
        let none = try await SluiceProcess.runCommand(["token", "--sub", "alice"])
        #expect(none.status == 64 && none.output.contains("--jwt-secret-file"))
    }

    /// `sluice serve --jwt-secret-file`: tokens signed with that secret get in.
    @Test(.timeLimit(.minutes(15)))
    func theGatewayTakesItsSecretFromAFile() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-jwt-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: file) }
        try (AuthProcessTests.secret + "\n").write(to: file, atomically: true, encoding: .utf8)
        try await SluiceProcess.withProcesses(count: 1, arguments: ["--jwt-secret-file", file.path]) { (processes: [SluiceProcess]) async throws -> Void in
            let headers = ["Authorization": "Bearer \(AuthProcessTests.token(sub: "alice"))"]
            #expect(try await processes[0].httpRequest("GET", path: "/v1/conversations", headers: headers).status == 200)
            #expect(try await processes[0].httpRequest("GET", path: "/v1/conversations").status == 401)
            #expect(!processes[0].logTail(lines: 200).contains(AuthProcessTests.secret))
        }
    }

    /// `sluice chat` against a gateway with authentication: the token from a file, never the URL.
    @Test(.timeLimit(.minutes(15)))
    func theChatClientTakesItsTokenFromAFile() async throws {
        let environment = [
            "SLUICE_JWT_SECRET": AuthProcessTests.secret, "SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN": "0ms",
            "SLUICE_SIMULATOR_TOKENS_PER_SECOND": "0", "SLUICE_SIMULATOR_ANSWER_TOKENS": "5",
        ]
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-token-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: file) }
        try (AuthProcessTests.token(sub: "alice") + "\n").write(to: file, atomically: true, encoding: .utf8)
        try await SluiceProcess.withProcesses(count: 1, environment: environment) { (processes: [SluiceProcess]) async throws -> Void in
            let url = "ws://127.0.0.1:\(processes[0].port)/v1/ws"
            let chat = try await SluiceProcess.runCommand(["chat", "--url", url, "--token-file", file.path], input: "hello\n", timeout: .seconds(30))
            #expect(chat.status == 0 && chat.output.contains("5 tokens]"), "\(chat.output)")
            let anonymous = try await SluiceProcess.runCommand(["chat", "--url", url], input: "hello\n", timeout: .seconds(30))
            #expect(anonymous.status != 0, "\(anonymous.output)")
            let inURL = try await SluiceProcess.runCommand(["chat", "--url", url + "?token=abc.def.ghi"], input: "hello\n")
            #expect(inURL.status == 64 && inURL.output.contains("--token-file"), "\(inURL.output)")
        }
    }

    /// An unknown SLUICE_* variable stops the process like an unknown key in the file.
    @Test(.timeLimit(.minutes(15)))
    func aMisspeltVariableStopsTheStart() async throws {
        let result = try await SluiceProcess.runCommand(
            ["serve", "--port", "0", "--admin-port", "0"], environment: ["SLUICE_AUTH_API_KEY": "alice:\(String(repeating: "a", count: 64))"])
        #expect(result.status == 78, "\(result.output)")
        #expect(result.output.contains("SLUICE_AUTH_API_KEY") && result.output.contains("did you mean SLUICE_AUTH_API_KEYS?"), "\(result.output)")
        #expect(!result.output.contains(String(repeating: "a", count: 64)))
    }

    /// The embedded database under a umask of 000: still 0700 and 0600.
    @Test(.timeLimit(.minutes(15)))
    func theDatabaseIsPrivateWhateverTheUmask() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-umask-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let dataDirectory = root.appendingPathComponent("data").path
        let sluice = try SluiceProcess.findExecutable()
        let result = try await SluiceProcess.runCommand(
            ["-c", "umask 000 && exec \"$0\" migrate --data-dir \"$1\"", sluice, dataDirectory], executable: "/bin/sh")
        #expect(result.status == 0, "\(result.output)")
        let directoryMode = try FileManager.default.attributesOfItem(atPath: dataDirectory)[.posixPermissions] as? Int
        let fileMode = try FileManager.default.attributesOfItem(atPath: dataDirectory + "/sluice.db")[.posixPermissions] as? Int
        #expect(directoryMode == 0o700 && fileMode == 0o600, "\(String(directoryMode ?? 0, radix: 8)) \(String(fileMode ?? 0, radix: 8))")
    }
}
