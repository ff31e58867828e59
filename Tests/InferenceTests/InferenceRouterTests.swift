import Inference
import NIOCore
import Testing

@Suite struct InferenceRouterTests {
    /// Only its model name matters to the router.
    struct NamedEngine: InferenceEngine {
        let defaultModel: String
        func startGeneration(_ request: GenerationRequest, on eventLoop: any EventLoop, sink: any GenerationSink) -> any GenerationHandle {
            fatalError("not started in these tests")
        }
    }

    let router = InferenceRouter(upstreams: [
        .init(name: "llama", engine: NamedEngine(defaultModel: "meta-llama/Llama-3.1-8B-Instruct")),
        .init(name: "trt", engine: NamedEngine(defaultModel: "ensemble")),
    ])

    @Test func noModelIsTheFirstUpstream() throws {
        let route = try self.router.route(model: nil).get()
        #expect(route.upstream.name == "llama" && route.model == nil)
    }

    @Test func aNameChoosesTheUpstreamAndKeepsItsModel() throws {
        let route = try self.router.route(model: "trt").get()
        #expect(route.upstream.name == "trt" && route.model == nil)
    }

    @Test func aServedModelChoosesItsUpstream() throws {
        let route = try self.router.route(model: "ensemble").get()
        #expect(route.upstream.name == "trt" && route.model == "ensemble")
    }

    @Test func anUnknownModelIsRefusedWithTheNames() {
        guard case .failure(let unknown) = self.router.route(model: "gpt-9") else {
            Issue.record("expected a failure")
            return
        }
        #expect(unknown.available == ["llama", "trt"])
        #expect(unknown.message.contains("gpt-9"))
    }

    @Test func aSingleUpstreamPassesAnyModelThrough() throws {
        let single = InferenceRouter(single: NamedEngine(defaultModel: "m"))
        let route = try single.route(model: "other-model").get()
        #expect(route.upstream.name == "default" && route.model == "other-model")
    }
}
