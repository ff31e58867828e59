import NIOCore
import NIOSSL
import NIOTLS

/// TLS for `rediss://` URLs. By default the server's certificate must chain to the system's
/// trust roots and name the URL's host (full verification, host name included).
public struct RedisTLSConfiguration: Sendable, Hashable {
    /// PEM file with the certificate authorities to trust instead of the system's.
    public var caFile: String?
    /// PEM certificate chain presented to servers that ask for one (`tls-auth-clients`); needs
    /// `privateKeyFile`.
    public var certificateFile: String?
    public var privateKeyFile: String?
    /// Sent as SNI and checked against the certificate instead of the URL's host (for a URL
    /// that names an address, or a certificate issued for another name).
    public var serverName: String?
    /// False accepts any certificate: the connection is encrypted but not authenticated, so
    /// anyone on the path can impersonate Redis. For tests and emergencies only.
    public var verifiesCertificates: Bool

    public init(
        caFile: String? = nil, certificateFile: String? = nil, privateKeyFile: String? = nil,
        serverName: String? = nil, verifiesCertificates: Bool = true
    ) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
        self.serverName = serverName
        self.verifiesCertificates = verifiesCertificates
    }

    /// Loads the files and builds the TLS context; an error names the file and what was wrong.
    public func makeContext() throws(RedisTLSError) -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = self.verifiesCertificates ? .fullVerification : .none
        if let caFile = self.caFile {
            do {
                let roots = try NIOSSLCertificate.fromPEMFile(caFile)
                guard !roots.isEmpty else { throw RedisTLSError("redis.tls.ca_file \(caFile): no certificate in it") }
                tls.trustRoots = .certificates(roots)
            } catch let error as RedisTLSError {
                throw error
            } catch {
                throw RedisTLSError("redis.tls.ca_file \(caFile): \(error)")
            }
        }
        switch (self.certificateFile, self.privateKeyFile) {
        case (nil, nil):
            break
        case (let certificateFile?, let privateKeyFile?):
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
                guard !chain.isEmpty else { throw RedisTLSError("redis.tls.certificate_file \(certificateFile): no certificate in it") }
                tls.certificateChain = chain.map { .certificate($0) }
            } catch let error as RedisTLSError {
                throw error
            } catch {
                throw RedisTLSError("redis.tls.certificate_file \(certificateFile): \(error)")
            }
            do {
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: privateKeyFile, format: .pem))
            } catch {
                throw RedisTLSError("redis.tls.private_key_file \(privateKeyFile): \(error)")
            }
        case (.some, nil):
            throw RedisTLSError("redis.tls.certificate_file needs redis.tls.private_key_file")
        case (nil, .some):
            throw RedisTLSError("redis.tls.private_key_file needs redis.tls.certificate_file")
        }
        if let serverName = self.serverName {
            guard !serverName.isEmpty, serverName.utf8.count <= 255, !serverName.utf8.contains(0) else {
                throw RedisTLSError("redis.tls.server_name must be a host name of 1 to 255 bytes")
            }
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw RedisTLSError("cannot set up TLS for Redis: \(error)")
        }
    }
}

/// TLS settings that cannot be used (a file missing or not PEM, a key without its certificate).
public struct RedisTLSError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}

/// The TLS part of a connection: the context (made once per client) and the name to expect.
struct RedisTLS: Sendable {
    let context: NIOSSLContext
    /// SNI and the name the certificate must carry; nil for an IP address, whose certificate
    /// must then list that address (NIOSSL checks it against the peer's address).
    let serverHostname: String?

    init(context: NIOSSLContext, configuration: RedisTLSConfiguration, host: String) {
        self.context = context
        let name = configuration.serverName ?? host
        self.serverHostname = Self.isIPAddress(name) ? nil : name
    }

    func makeHandler() throws -> NIOSSLClientHandler {
        try NIOSSLClientHandler(context: self.context, serverHostname: self.serverHostname)
    }

    static func isIPAddress(_ name: String) -> Bool {
        (try? SocketAddress(ipAddress: name, port: 0)) != nil
    }

    /// Whether `error` came from the TLS layer (then it is reported as `RedisClientError.tls`).
    static func isTLSError(_ error: any Error) -> Bool {
        error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError
    }
}

/// Sits behind the TLS handler until its handshake ends: nothing is sent on a `rediss://`
/// connection before the server was verified, and a handshake that fails is reported as the
/// TLS failure it is, whether the error or the close reaches the pipeline first. Removes
/// itself once the handshake completed.
final class TLSHandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let promise: EventLoopPromise<Void>
    /// The TLS layer's own error, when it gave one before the connection closed.
    private var failure: (any Error)?

    init(promise: EventLoopPromise<Void>) {
        self.promise = promise
    }

    /// Succeeds when the handshake completed; fails with `RedisClientError.tls` otherwise.
    var handshake: EventLoopFuture<Void> { self.promise.futureResult }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            self.promise.succeed(())
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.failure == nil && RedisTLS.isTLSError(error) { self.failure = error }
        self.promise.fail(RedisClientError.tls("\(self.failure ?? error)"))
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let reason = self.failure.map { "\($0)" } ?? "the server closed the connection during the TLS handshake"
        self.promise.fail(RedisClientError.tls(reason))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.promise.fail(RedisClientError.tls("the TLS handshake did not complete"))
    }
}

@available(*, unavailable)
extension TLSHandshakeWaiter: Sendable {}
