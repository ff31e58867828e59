import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// An OpenAI-compatible moderation service (`POST {base}/v1/moderations`), asked about user
/// input before it goes upstream: flagged or not, and which categories.
public struct ModerationClient: Sendable {
    public struct Configuration: Sendable {
        public var baseURL: URL
        public var apiKey: String?
        public var model: String?
        public var timeout: TimeAmount = .seconds(2)

        public init(baseURL: URL, apiKey: String? = nil, model: String? = nil) {
            self.baseURL = baseURL
            self.apiKey = apiKey
            self.model = model
        }
    }

    public struct Verdict: Sendable, Equatable {
        public var flagged: Bool
        public var categories: [String]
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    private let configuration: Configuration
    private let endpoint: UpstreamEndpoint

    public init(configuration: Configuration) throws(UpstreamConfigurationError) {
        self.configuration = configuration
        self.endpoint = try UpstreamEndpoint(baseURL: configuration.baseURL, trustRoots: .default)
    }

    public func check(_ text: String, on eventLoop: any EventLoop) -> EventLoopFuture<Verdict> {
        var body: [String: Any] = ["input": text]
        if let model = self.configuration.model { body["model"] = model }
        guard let data = try? JSONSerialization.data(withJSONObject: body) else {
            return eventLoop.makeFailedFuture(Failure(description: "cannot encode the request"))
        }
        let head = self.endpoint.requestHead(
            .POST, path: "/v1/moderations", apiKey: self.configuration.apiKey, bodyLength: data.count, accept: "application/json")
        let timeouts = UpstreamTimeouts(connect: self.configuration.timeout, timeToFirstToken: self.configuration.timeout, betweenTokens: self.configuration.timeout)
        return HTTPFetch.fetch(head, body: ByteBuffer(bytes: data), from: self.endpoint, timeouts: timeouts, on: eventLoop).flatMapThrowing { response in
            guard (200..<300).contains(response.status) else { throw Failure(description: "moderation service answered HTTP \(response.status)") }
            guard let object = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any],
                  let result = (object["results"] as? [[String: Any]])?.first, let flagged = result["flagged"] as? Bool
            else { throw Failure(description: "malformed moderation answer") }
            let categories = ((result["categories"] as? [String: Any]) ?? [:]).compactMap { $0.value as? Bool == true ? $0.key : nil }.sorted()
            return Verdict(flagged: flagged, categories: categories)
        }
    }
}
