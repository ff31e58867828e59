import Foundation
import Jobs
import NIOCore
import NIOHTTP1
import Sessions
import SluiceProtocol
import WSServer

/// `/v1/jobs`: `POST /v1/jobs` (submit), `GET /v1/jobs` (the caller's recent jobs),
/// `GET /v1/jobs/{id}`, `DELETE /v1/jobs/{id}` (cancel) and `GET /v1/jobs/{id}/result`.
/// The same user identification as the chat routes; a job is visible only to its submitter.
final class JobsResponder: HTTPRouteResponder {
    enum Route: Equatable {
        case collection
        case job(String)
        case result(String)

        init?(path: String) {
            let parts = path.split(separator: "/", omittingEmptySubsequences: true)
            guard parts.count >= 2, parts[0] == "v1", parts[1] == "jobs" else { return nil }
            switch parts.count {
            case 2: self = .collection
            case 3: self = .job(String(parts[2]))
            case 4 where parts[3] == "result": self = .result(String(parts[2]))
            default: return nil
            }
        }
    }

    private let application: ChatApplication
    private let route: Route

    init(application: ChatApplication, route: Route) {
        self.application = application
        self.route = route
    }

    /// Only `POST /v1/jobs` takes a body: a job whose input is bounded like a chat message.
    var maxRequestBodyBytes: Int { self.route == .collection ? self.application.configuration.requestLimits.maxJSONMessageBytes : 0 }

    func respond(to head: HTTPRequestHead, body: ByteBuffer, writer: HTTPResponseWriter) {
        guard let jobs = self.application.jobs else {
            HistoryResponder.respondError(writer, HTTPResponseStatus(.unavailable), .unavailable, "jobs need Redis (redis.url); this gateway runs without it", retryAfterMs: nil)
            return
        }
        let caller: ChatPolicy.Admitted
        switch self.application.policy.admitCaller(head, peer: writer.remoteAddress, countsAsConnection: false) {
        case .failure(let refusal):
            writer.respond(refusal.httpRefusal)
            return
        case .success(let admitted):
            caller = admitted
        }
        let user = caller.user
        let route = self.route
        let method = head.method
        let idempotencyKey = head.headers.first(name: "Idempotency-Key")
        let query = HistoryResponder.query(head.uri)
        let limits = self.application.configuration.requestLimits
        let application = self.application
        let address = caller.address
        let respond = NIOLoopBound(writer, eventLoop: writer.eventLoop)
        let promise = writer.eventLoop.makePromise(of: Reply.self)
        promise.completeWithTask {
            await Self.handle(route: route, method: method, body: body, query: query, idempotencyKey: idempotencyKey,
                              user: user, jobs: jobs, limits: limits) { submit in
                await application.submitJob(submit, user: user, address: address)
            }
        }
        promise.futureResult.whenSuccess { reply in
            var out = respond.value.allocator.buffer(capacity: reply.body.utf8.count)
            out.writeString(reply.body)
            respond.value.respond(status: reply.status, contentType: reply.contentType, body: out, headers: reply.headers)
        }
    }

    func clientDisconnected() {}

    struct Reply: Sendable {
        var status: HTTPResponseStatus
        var contentType = "application/json"
        var body: String
        var headers: [(String, String)] = []
    }

    static func handle(
        route: Route, method: HTTPMethod, body: ByteBuffer, query: [String: String], idempotencyKey: String?,
        user: String, jobs: JobsGateway, limits: RequestLimits,
        submitJob: (ClientMessage.JobSubmit) async -> Result<(JobRecord, created: Bool), JobsGateway.Failure>
    ) async -> Reply {
        let inline = jobs.queue.configuration.inlineResultLimit
        switch (route, method) {
        case (.collection, .POST):
            // The WebSocket decoder's job.submit rules (the body needs no "type"); its size is
            // checked before it is parsed.
            if let idempotencyKey, idempotencyKey.utf8.count > RequestLimits.maxIdempotencyKeyBytes {
                return Self.error(.badRequest, .invalidMessage, "Idempotency-Key must be at most \(RequestLimits.maxIdempotencyKeyBytes) bytes")
            }
            switch ClientMessageDecoder.decodeJobRequest(body, limits: limits) {
            case .success(var submit):
                submit.idempotencyKey = submit.idempotencyKey ?? idempotencyKey
                switch await submitJob(submit) {
                case .success(let (record, created)):
                    return Reply(status: created ? .accepted : .ok, body: record.json(inlineResultLimit: inline))
                case .failure(let failure):
                    return Self.error(failure)
                }
            case .failure(let violation):
                return Self.error(HTTPResponseStatus(violation.code), violation.code, violation.message)
            }
        case (.collection, .GET):
            var limit = 50
            if let text = query["limit"] {
                let range = RequestLimits.historyPageLimitRange
                guard let value = ClientMessageDecoder.queryInteger(text), range.contains(value) else {
                    return Self.error(.badRequest, .invalidMessage, "limit must be an integer from \(range.lowerBound) to \(range.upperBound)")
                }
                limit = Int(value)
            }
            switch await jobs.list(user: user, limit: limit) {
            case .success(let records):
                var body = ByteBuffer()
                JobMessageEncoder.list(records.map { $0.snapshot(inlineResultLimit: 0) }, into: &body)
                return Reply(status: .ok, body: String(buffer: body))
            case .failure(let failure):
                return Self.error(failure)
            }
        case (.job(let id), .GET):
            switch await jobs.record(id, user: user) {
            case .success(let record?): return Reply(status: .ok, body: record.json(inlineResultLimit: inline))
            case .success(nil): return Self.error(.notFound, .notFound, "unknown job \(id)")
            case .failure(let failure): return Self.error(failure)
            }
        case (.job(let id), .DELETE):
            switch await jobs.cancel(id, user: user) {
            case .success(.notFound): return Self.error(.notFound, .notFound, "unknown job \(id)")
            case .success(.cancelled(let record)), .success(.alreadyEnded(let record)):
                return Reply(status: .ok, body: record.json(inlineResultLimit: inline))
            case .success(.requested(let record)):
                // Running: its worker stops it within a heartbeat.
                return Reply(status: .accepted, body: record.json(inlineResultLimit: inline))
            case .failure(let failure): return Self.error(failure)
            }
        case (.result(let id), .GET):
            switch await jobs.record(id, user: user) {
            case .success(let record?):
                guard record.state == .succeeded, let result = record.result else {
                    return Self.error(.conflict, .notFound, "job \(id) has no result (state \(record.state.rawValue))")
                }
                return Reply(status: .ok, contentType: record.resultType ?? "application/json", body: result)
            case .success(nil): return Self.error(.notFound, .notFound, "unknown job \(id)")
            case .failure(let failure): return Self.error(failure)
            }
        default:
            return Self.error(.methodNotAllowed, .invalidMessage, "method \(method) not allowed here")
        }
    }

    static func error(_ failure: JobsGateway.Failure) -> Reply {
        Self.error(HTTPResponseStatus(failure.code), failure.code, failure.message, retryAfterMs: failure.retryAfterMs)
    }

    static func error(_ status: HTTPResponseStatus, _ code: ErrorCode, _ message: String, retryAfterMs: Int64? = nil) -> Reply {
        var buffer = ByteBuffer()
        ServerMessageEncoder.error(code: code, message: message, retryAfterMs: retryAfterMs, into: &buffer)
        let headers = retryAfterMs.map { [("Retry-After", RetryAfter.headerValue(milliseconds: $0))] } ?? []
        return Reply(status: status, body: String(buffer: buffer), headers: headers)
    }
}
