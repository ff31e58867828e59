import Foundation

/// A throwaway PKI made with the `openssl` command line in a temporary directory: a CA, a server
/// certificate for `localhost` (the name only, not 127.0.0.1) signed by it, a client certificate signed by it,
/// and an unrelated CA (to be refused). P-256 keys, valid for two days. `remove()` deletes it all.
struct TestCertificates: Sendable {
    let directory: URL
    var caCertificate: String { self.path("ca.crt") }
    var serverCertificate: String { self.path("server.crt") }
    var serverKey: String { self.path("server.key") }
    var clientCertificate: String { self.path("client.crt") }
    var clientKey: String { self.path("client.key") }
    /// A CA that signed nothing here.
    var otherCACertificate: String { self.path("other-ca.crt") }

    private func path(_ name: String) -> String { self.directory.appendingPathComponent(name).path }

    static func make() async throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-pki-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let certificates = TestCertificates(directory: directory)
        do {
            try await certificates.makeCA("ca", name: "Sluice Test CA")
            try await certificates.makeCA("other-ca", name: "Somebody Else's CA")
            try await certificates.issue(
                "server", name: "localhost", signer: "ca",
                extensions: "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
            try await certificates.issue(
                "client", name: "sluice-gateway", signer: "ca",
                extensions: "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
        } catch {
            certificates.remove()
            throw error
        }
        return certificates
    }

    func remove() {
        try? FileManager.default.removeItem(at: self.directory)
    }

    private func makeCA(_ base: String, name: String) async throws {
        try await Self.openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", self.path("\(base).key"), "-out", self.path("\(base).crt"), "-days", "2", "-subj", "/CN=\(name)",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
    }

    private func issue(_ base: String, name: String, signer: String, extensions: String) async throws {
        try await Self.openssl([
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", self.path("\(base).key"), "-out", self.path("\(base).csr"), "-subj", "/CN=\(name)",
        ])
        try extensions.write(toFile: self.path("\(base).ext"), atomically: true, encoding: .utf8)
        try await Self.openssl([
            "x509", "-req", "-in", self.path("\(base).csr"), "-CA", self.path("\(signer).crt"), "-CAkey", self.path("\(signer).key"),
            "-CAcreateserial", "-out", self.path("\(base).crt"), "-days", "2", "-extfile", self.path("\(base).ext"),
        ])
    }

    private static func openssl(_ arguments: [String]) async throws {
        let (status, output) = try await SluiceProcess.runCommand(arguments, executable: "/usr/bin/openssl", timeout: .seconds(30))
        guard status == 0 else {
            throw RedisServerProcessError(description: "openssl \(arguments.prefix(2).joined(separator: " ")) failed (\(status)): \(output)")
        }
    }
}
