import Foundation

/// Throwaway certificate authorities and certificates made with the `openssl` command for TLS
/// tests (P-256 keys, valid for two days), in a temporary directory removed by `remove()`:
///
/// - `ca.crt`/`ca.key`: the CA that signed `server.crt` (SAN `DNS:localhost` only, so a
///   connection to 127.0.0.1 does not match its name) and `client.crt` (CN `sluice-client`);
/// - `other-ca.crt`: an unrelated CA, which signed nothing here.
struct TestCertificates: Sendable {
    let directory: URL

    var caCertificate: String { self.path("ca.crt") }
    var otherCACertificate: String { self.path("other-ca.crt") }
    var serverCertificate: String { self.path("server.crt") }
    var serverKey: String { self.path("server.key") }
    var clientCertificate: String { self.path("client.crt") }
    var clientKey: String { self.path("client.key") }

    func path(_ name: String) -> String { self.directory.appendingPathComponent(name).path }

    static func make() throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-certs-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let certificates = TestCertificates(directory: directory)
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for (name, subject) in [("ca", "/CN=Sluice Test CA"), ("other-ca", "/CN=Some Other CA")] {
            try Self.openssl(["req", "-x509"] + key + [
                "-keyout", certificates.path("\(name).key"), "-out", certificates.path("\(name).crt"), "-days", "2", "-subj", subject,
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ])
        }
        for (name, subject, usage) in [("server", "/CN=localhost", "serverAuth"), ("client", "/CN=sluice-client", "clientAuth")] {
            try Self.openssl(["req"] + key + ["-keyout", certificates.path("\(name).key"), "-out", certificates.path("\(name).csr"), "-subj", subject])
            var extensions = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=\(usage)\n"
            if name == "server" { extensions += "subjectAltName=DNS:localhost\n" }
            try Data(extensions.utf8).write(to: URL(fileURLWithPath: certificates.path("\(name).ext")))
            try Self.openssl([
                "x509", "-req", "-in", certificates.path("\(name).csr"), "-CA", certificates.caCertificate,
                "-CAkey", certificates.path("ca.key"), "-CAcreateserial", "-out", certificates.path("\(name).crt"), "-days", "2",
                "-extfile", certificates.path("\(name).ext"),
            ])
        }
        return certificates
    }

    func remove() {
        try? FileManager.default.removeItem(at: self.directory)
    }

    private static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw SluiceProcessError(description: "openssl \(arguments.prefix(2).joined(separator: " ")) failed: \(String(decoding: text, as: UTF8.self))")
        }
    }
}
