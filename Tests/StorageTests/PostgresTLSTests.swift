import Foundation
import PostgresNIO
import Testing
@testable import SluiceTestSupport
@testable import Storage

/// `sslmode`, `sslrootcert`, `sslcert`/`sslkey` against a real PostgreSQL with `ssl=on`, its
/// certificate signed by a throwaway CA and naming only `localhost`.
@Suite(.serialized) struct PostgresTLSTests {
    /// What a connection made with `url`'s TLS settings sees, or nil if none could be made
    /// within two seconds. Through `PostgresStorage` (its migration) and a probe client with the
    /// same TLS configuration reading `pg_stat_ssl` for its own backend.
    static func connect(_ server: PostgresServerProcess, host: String, _ parameters: String) async throws -> (ssl: Bool, clientDN: String?)? {
        let url = try PostgresURL("postgres://sluice:\(server.password)@\(host):\(server.port)/sluice?\(parameters)")
        let storage = try PostgresStorage(
            configuration: .init(url: url, connectTimeout: .seconds(1), operationTimeout: .seconds(2), migrationTimeout: .seconds(2)),
            logger: testLogger)
        let probe = PostgresClient(configuration: .init(
            host: url.host, port: url.port, username: url.username, password: url.password, database: url.database,
            tls: try PostgresStorage.tls(for: url)))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await storage.run() }
            group.addTask { await probe.run() }
            defer { group.cancelAll() }
            do {
                try await storage.migrate()
            } catch {
                return nil
            }
            let query: PostgresQuery = "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            let rows = try await probe.query(query)
            for try await (ssl, clientDN) in rows.decode((Bool, String?).self) { return (ssl, clientDN) }
            return nil
        }
    }

    @Test(.timeLimit(.minutes(15)))
    func theServerIsVerifiedWhenAskedFor() async throws {
        let certificates = try await TestCertificates.make()
        defer { certificates.remove() }
        let tls = PostgresServerProcess.TLSFiles(
            certificate: certificates.serverCertificate, key: certificates.serverKey, clientCA: certificates.caCertificate)
        try await PostgresServerProcess.withServer(tls: tls) { server in
            let ca = "sslrootcert=\(certificates.caCertificate)"
            let otherCA = "sslrootcert=\(certificates.otherCACertificate)"

            // verify-full: the right CA and the certificate's name.
            #expect(try await Self.connect(server, host: "localhost", "sslmode=verify-full&\(ca)")?.ssl == true)
            // The wrong CA, or the system's trust store (which knows nothing of this CA): refused.
            #expect(try await Self.connect(server, host: "localhost", "sslmode=verify-full&\(otherCA)") == nil)
            #expect(try await Self.connect(server, host: "localhost", "sslmode=verify-full") == nil)
            // 127.0.0.1 is not a name the certificate has: verify-full refuses, verify-ca (chain only) connects.
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=verify-full&\(ca)") == nil)
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=verify-ca&\(ca)")?.ssl == true)
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=verify-ca&\(otherCA)") == nil)

            // require without a CA: encrypted, not verified (libpq's meaning).
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=require")?.ssl == true)
            // require with a root certificate behaves like verify-ca.
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=require&\(otherCA)") == nil)
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=require&\(ca)")?.ssl == true)
            // prefer (the default) takes TLS when offered; disable does without.
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=prefer")?.ssl == true)
            #expect(try await Self.connect(server, host: "127.0.0.1", "sslmode=disable")?.ssl == false)

            // A client certificate is presented when given.
            let client = try await Self.connect(
                server, host: "localhost",
                "sslmode=verify-full&\(ca)&sslcert=\(certificates.clientCertificate)&sslkey=\(certificates.clientKey)")
            #expect(client?.clientDN == "/CN=sluice-gateway")
        }
    }

    @Test func unreadableCertificateFilesFailAtStartWithTheURLMasked() throws {
        let url = try PostgresURL("postgres://sluice:hunter2@db:5432/sluice?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt")
        #expect(throws: PostgresURLError.self) { try PostgresStorage(configuration: .init(url: url), logger: testLogger) }
        do {
            _ = try PostgresStorage(configuration: .init(url: url), logger: testLogger)
        } catch {
            #expect(error.description.contains("sslrootcert /nonexistent/ca.crt"))
            #expect(!error.description.contains("hunter2"))
        }
    }
}
