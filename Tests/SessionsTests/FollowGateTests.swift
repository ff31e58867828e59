import Inference
@testable import Sessions
import SluiceProtocol
import Testing

/// `FollowGate`, event by event: a follower on another instance gets every seq once, in order,
/// and the end last, whatever order and overlap the updates come in (live, re-read from the
/// stream, or the owner's whole republish after Redis missed its writes).
@Suite struct FollowGateTests {
    /// Seqs `first...last`, one letter each (seq n is the n-th letter of the alphabet, cycling).
    static func batch(_ first: Int64, _ last: Int64, end: GenerationEnd? = nil) -> FollowUpdate {
        let letters = (first...last).map { String(UnicodeScalar(UInt8(96 + ($0 - 1) % 26 + 1))) }
        var ends: [Int32] = []
        var length: Int32 = 0
        for _ in letters {
            length += 1
            ends.append(length)
        }
        return FollowUpdate(started: nil, firstSeq: first, lastSeq: last, text: letters.joined(), tokenEnds: ends, end: end)
    }

    static func end(_ seq: Int64, _ reason: FinishReason = .stop) -> GenerationEnd {
        GenerationEnd(seq: seq, finishReason: reason, usage: Usage(promptTokens: 1, completionTokens: Int(seq), source: .upstream), error: nil)
    }

    @Test func inOrderUpdatesPassAndOverlapsAreCut() {
        var gate = FollowGate(after: 0)
        #expect(gate.pass(Self.batch(1, 3))?.text == "abc")
        // A replay overlapping what went out: only the new seqs.
        let overlap = gate.pass(Self.batch(2, 5))
        #expect(overlap?.firstSeq == 4 && overlap?.lastSeq == 5 && overlap?.text == "de")
        #expect(gate.pass(Self.batch(1, 5)) == nil)  // nothing new
        let last = gate.pass(Self.batch(6, 6, end: Self.end(6)))
        #expect(last?.text == "f" && last?.end == Self.end(6))
        #expect(gate.ended && !gate.hasGap)
        #expect(gate.pass(Self.batch(7, 7)) == nil && gate.pass(.endOnly(Self.end(6))) == nil)  // after the end: nothing
    }

    @Test func anUpdatePastAGapWaitsForTheRepublish() {
        var gate = FollowGate(after: 2)
        #expect(gate.pass(Self.batch(3, 4))?.text == "cd")
        // Seqs 5...7 were never published (Redis down): 8...9 must not go out.
        #expect(gate.pass(Self.batch(8, 9)) == nil)
        #expect(gate.hasGap && gate.deliveredSeq == 4)
        // The end, too, waits for the text before it.
        #expect(gate.pass(.endOnly(Self.end(9))) == nil)
        #expect(gate.heldEnd == Self.end(9) && !gate.ended)
        // The owner's whole copy: the missing part, then the end held meanwhile.
        let whole = gate.pass(Self.batch(1, 9))
        #expect(whole?.firstSeq == 5 && whole?.lastSeq == 9 && whole?.text == "efghi")
        #expect(whole?.end == Self.end(9) && gate.ended && !gate.hasGap)
    }

    @Test func startedPassesWithItsReplayAndAnEmptyUpdateIsNil() {
        var gate = FollowGate(after: 10)
        let info = GenerationInfo(generationID: "gen_1", conversationID: "c", requestID: nil, model: "m")
        var replay = FollowUpdate(started: info, firstSeq: 11, lastSeq: 10, text: "", end: nil)
        #expect(gate.pass(replay)?.started == info)
        replay.started = nil
        #expect(gate.pass(replay) == nil)
        #expect(gate.pass(Self.batch(3, 10)) == nil)
    }

    @Test func anOwnerLostEndsAtWhatTheFollowerHasOnce() {
        var gate = FollowGate(after: 0)
        _ = gate.pass(Self.batch(1, 4))
        _ = gate.pass(Self.batch(7, 8))  // a gap that will never be filled: the owner died
        let lost = gate.ownerLost { GenerationEnd(seq: $0, finishReason: .error, usage: Usage(promptTokens: 0, completionTokens: Int($0), source: .gateway), error: nil) }
        #expect(lost?.end?.seq == 4 && lost?.hasText == false)
        #expect(gate.ownerLost { _ in Self.end(1) } == nil)
        #expect(gate.pass(Self.batch(5, 8, end: Self.end(8))) == nil)
    }
}
