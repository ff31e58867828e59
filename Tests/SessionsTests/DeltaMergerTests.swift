import NIOCore
@testable import Sessions
import SluiceProtocol
import Testing

/// Merging deltas for a reader that is behind, as the owner (one seq at a time) and a follower
/// (batches that may overlap a replay) use it.
@Suite struct DeltaMergerTests {
    typealias Pending = DeltaMerger.PendingDelta

    /// An update of seqs `firstSeq...` with one piece of text per seq.
    static func update(from firstSeq: Int64, _ pieces: [String], end: GenerationEnd? = nil) -> FollowUpdate {
        var ends: [Int32] = []
        var offset = 0
        for piece in pieces {
            offset += piece.utf8.count
            ends.append(Int32(offset))
        }
        return FollowUpdate(
            started: nil, firstSeq: firstSeq, lastSeq: firstSeq + Int64(pieces.count) - 1, text: pieces.joined(), tokenEnds: ends, end: end)
    }

    @Test func directWhileNothingIsHeldThenEverythingMergedUntilTaken() {
        var merger = DeltaMerger()
        #expect(merger.mayWriteDirectly)
        merger.wrote(through: 1)
        merger.hold(firstSeq: 2, lastSeq: 2, text: Substring("b"))
        #expect(!merger.mayWriteDirectly)  // seq 3 must not overtake seq 2
        merger.hold(firstSeq: 3, lastSeq: 3, text: Substring("cé"))
        #expect(merger.heldBytes == 4)
        #expect(merger.lastSeq == 3)
        #expect(merger.takePending() == Pending(firstSeq: 2, lastSeq: 3, text: "bcé"))
        #expect(merger.takePending() == nil)
        #expect(merger.heldBytes == 0)
        #expect(merger.mayWriteDirectly)
    }

    @Test func aFollowersOverlapWithTheReplayIsDropped() {
        var merger = DeltaMerger()
        let first = merger.fresh(Self.update(from: 1, ["a", "b", "c"]))
        #expect(first?.update == Self.update(from: 1, ["a", "b", "c"]))
        #expect(first?.contiguous == true)
        // The live part repeats seqs 2 and 3: only 4 and 5 are new.
        let second = merger.fresh(Self.update(from: 2, ["b", "c", "dd", "e"]))
        #expect(second?.update == Self.update(from: 4, ["dd", "e"]))
        #expect(second?.contiguous == true)
        // Nothing new at all.
        #expect(merger.fresh(Self.update(from: 1, ["a", "b", "c", "dd", "e"])) == nil)
        #expect(merger.lastSeq == 5)
    }

    @Test func aGapIsDeliveredAsItIsAndSaysSo() {
        var merger = DeltaMerger(after: 3)
        let fresh = merger.fresh(Self.update(from: 6, ["f", "g"]))
        #expect(fresh?.update == Self.update(from: 6, ["f", "g"]))
        #expect(fresh?.contiguous == false)
        #expect(merger.lastSeq == 7)
    }

    @Test func anUpdateWithOnlyTheEndBringsNoText() {
        var merger = DeltaMerger(after: 2)
        let end = GenerationEnd(seq: 2, finishReason: .stop, usage: Usage(promptTokens: 1, completionTokens: 2, source: .gateway), error: nil)
        #expect(merger.fresh(.endOnly(end)) == nil)
        #expect(merger.lastSeq == 2)
    }

    @Test func aFollowerBehindHoldsWholeBatchesAndTakesThemAsOne() {
        var merger = DeltaMerger()
        guard let first = merger.fresh(Self.update(from: 1, ["a", "b"])) else {
            Issue.record("no text")
            return
        }
        merger.hold(firstSeq: first.update.firstSeq, lastSeq: first.update.lastSeq, text: first.update.text)
        guard let second = merger.fresh(Self.update(from: 2, ["b", "c", "d"])) else {
            Issue.record("no text")
            return
        }
        #expect(!merger.mayWriteDirectly)
        merger.hold(firstSeq: second.update.firstSeq, lastSeq: second.update.lastSeq, text: second.update.text)
        #expect(merger.takePending() == Pending(firstSeq: 1, lastSeq: 4, text: "abcd"))
    }

    /// `first_seq` is on the wire only when a delta merges more than one seq.
    @Test func firstSeqIsOmittedForASingleSeq() {
        var merger = DeltaMerger()
        merger.hold(firstSeq: 1, lastSeq: 1, text: Substring("a"))
        let single = merger.takePending()
        merger.hold(firstSeq: 2, lastSeq: 2, text: Substring("b"))
        merger.hold(firstSeq: 3, lastSeq: 3, text: Substring("c"))
        let merged = merger.takePending()
        func encoded(_ pending: Pending?) -> String {
            guard let pending else { return "" }
            var buffer = ByteBuffer()
            ServerMessageEncoder.generationDelta(
                generationID: "g", seq: pending.lastSeq, firstSeq: pending.firstSeq, text: Substring(pending.text).utf8, into: &buffer)
            return String(buffer: buffer)
        }
        #expect(encoded(single) == #"{"type":"generation.delta","generation_id":"g","seq":1,"text":"a"}"#)
        #expect(encoded(merged) == #"{"type":"generation.delta","generation_id":"g","seq":3,"first_seq":2,"text":"bc"}"#)
    }
}
