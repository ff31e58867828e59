import Inference
import NIOCore
import SluiceProtocol
import Tools

/// Where a generation's events go: a WebSocket session, an SSE response, or an
/// OpenAI-compatible response. Each front door turns these typed events into its own wire format;
/// the generation never encodes a message itself. Called on the generation's event loop (the
/// output's own), so a delta reaches the socket without a hop.
package protocol GenerationOutput: AnyObject {
    /// False once the client is gone (its events are then dropped; the generation goes on).
    var isConnected: Bool { get }
    /// False while the client is behind.
    var isWritable: Bool { get }
    /// `generation.started`: the upstream accepted the request (or a cancel came first).
    func writeStarted(_ generation: ChatGeneration)
    /// The per-token path: writes seq `seq` only if the client is connected and keeping up, and
    /// says whether it did (a delta not written is held and merged by the generation).
    func writeDeltaIfWritable(_ generation: ChatGeneration, seq: Int64, text: Substring) -> Bool
    /// Text merged while the client was behind (`first_seq...seq`), written whatever the client's pace.
    func writeHeldDelta(_ generation: ChatGeneration, _ held: DeltaMerger.PendingDelta)
    /// Gateway tools the model called (they run next; their results follow).
    func writeToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall])
    func writeToolResults(_ generation: ChatGeneration, _ runs: [ToolRun])
    /// Calls of the client's own tools: the generation ends next (`tool_calls`), and the client runs them.
    func writeClientToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall])
    /// The one end, with what a budget that cut it short says after it.
    func writeDone(_ generation: ChatGeneration, _ end: GenerationEnd, cached: Bool, budgetNotice: GenerationStateMachine.BudgetNotice?)
    func flush()
    /// The generation ended (after `writeDone`, or while the client was gone).
    func generationEnded(_ generation: ChatGeneration)
    /// The upstream failed before accepting the request: nothing was generated, so the client
    /// gets an error (with `retry_after_ms` when retrying may help) instead of a generation.
    func generationFailedToStart(_ generation: ChatGeneration, error: InferenceError)
}

/// An output that speaks `sluice.v1` (a WebSocket session, an SSE response): each event is one
/// protocol message. The conforming type only queues encoded messages; what they say is here, once.
package protocol SluiceMessageOutput: GenerationOutput {
    /// Queues one message encoded by `encode` (without flushing).
    func writeMessage(_ encode: (inout ByteBuffer) -> Void)
    /// Queues one message only if the client is connected and keeping up, and says whether it did.
    func writeMessageIfWritable(_ encode: (inout ByteBuffer) -> Void) -> Bool
}

extension SluiceMessageOutput {
    package func writeStarted(_ generation: ChatGeneration) {
        self.writeMessage { buffer in
            ServerMessageEncoder.generationStarted(
                generationID: generation.id, conversationID: generation.conversationID, requestID: generation.requestID,
                model: generation.model, into: &buffer)
        }
        self.flush()
    }

    @inline(__always)
    package func writeDeltaIfWritable(_ generation: ChatGeneration, seq: Int64, text: Substring) -> Bool {
        let prefix = generation.deltaPrefix
        return self.writeMessageIfWritable { buffer in
            ServerMessageEncoder.generationDelta(prefix: prefix, seq: seq, firstSeq: nil, text: text.utf8, into: &buffer)
        }
    }

    package func writeHeldDelta(_ generation: ChatGeneration, _ held: DeltaMerger.PendingDelta) {
        let prefix = generation.deltaPrefix
        self.writeMessage { buffer in
            ServerMessageEncoder.generationDelta(
                prefix: prefix, seq: held.lastSeq, firstSeq: held.firstSeq, text: Substring(held.text).utf8, into: &buffer)
        }
    }

    package func writeToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall]) {
        for call in calls {
            self.writeMessage { buffer in
                ServerMessageEncoder.toolCall(generationID: generation.id, callID: call.id, name: call.name, arguments: call.arguments, into: &buffer)
            }
        }
        self.flush()
    }

    package func writeToolResults(_ generation: ChatGeneration, _ runs: [ToolRun]) {
        for run in runs {
            self.writeMessage { buffer in
                ServerMessageEncoder.toolResult(
                    generationID: generation.id, callID: run.call.id, name: run.call.name, status: run.status.rawValue,
                    output: run.output, durationMs: run.durationMs, into: &buffer)
            }
        }
        self.flush()
    }

    /// `sluice.v1` has no client-defined tools; were a generation to hand some over, its
    /// `tool.call`s say the same.
    package func writeClientToolCalls(_ generation: ChatGeneration, _ calls: [ToolCall]) {
        self.writeToolCalls(generation, calls)
    }

    package func writeDone(_ generation: ChatGeneration, _ end: GenerationEnd, cached: Bool, budgetNotice: GenerationStateMachine.BudgetNotice?) {
        self.writeMessage { buffer in
            ServerMessageEncoder.generationDone(
                generationID: generation.id, seq: end.seq, finishReason: end.finishReason, usage: end.usage,
                error: end.error.map { ($0.code, $0.message) }, cached: cached, into: &buffer)
        }
        if let notice = budgetNotice {
            self.writeMessage { buffer in
                ServerMessageEncoder.error(
                    code: notice.code, message: notice.message, generationID: generation.id, retryAfterMs: notice.retryAfterMs, into: &buffer)
            }
        }
    }
}
