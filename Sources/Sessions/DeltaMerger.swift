/// Keeps one reader's deltas in order while it is behind: deltas go out directly while nothing
/// is held; once one could not be written, it and every later one are merged into a single
/// delta (`first_seq`…`seq`) that goes out when the reader can take it. The same rules serve a
/// generation's owner (one seq at a time) and its followers (merged batches that may overlap a
/// replay); each keeps its own moments for writing what is held and its own rule for a reader
/// that is gone.
package struct DeltaMerger: Equatable {
    /// Deltas merged while the reader was behind: seqs `firstSeq...lastSeq`.
    package struct PendingDelta: Equatable {
        package var firstSeq: Int64
        package var lastSeq: Int64
        package var text: String
    }

    /// Last seq handed over to this reader (written, held, or dropped because it is gone).
    private(set) var lastSeq: Int64
    private var heldFirstSeq: Int64?
    private var heldText = ""
    /// UTF-8 bytes held back (what the reader costs in memory while it is behind).
    private(set) var heldBytes = 0

    init(after seq: Int64 = 0) {
        self.lastSeq = seq
    }

    /// Nothing is held, so a new delta may go out directly without overtaking older text.
    var mayWriteDirectly: Bool { self.heldFirstSeq == nil }

    /// A delta went out directly (or was dropped: the reader is gone).
    mutating func wrote(through seq: Int64) {
        self.lastSeq = seq
    }

    /// Holds seqs `firstSeq...lastSeq` back, after what is held already.
    mutating func hold(firstSeq: Int64, lastSeq: Int64, text: Substring) {
        if self.heldFirstSeq == nil { self.heldFirstSeq = firstSeq }
        self.heldText += text
        self.heldBytes += text.utf8.count
        self.lastSeq = lastSeq
    }

    /// Holds seqs `firstSeq...lastSeq` back (a whole string: kept without a copy when nothing
    /// is held yet).
    mutating func hold(firstSeq: Int64, lastSeq: Int64, text: String) {
        if self.heldFirstSeq == nil {
            self.heldFirstSeq = firstSeq
            self.heldText = text
        } else {
            self.heldText += text
        }
        self.heldBytes += text.utf8.count
        self.lastSeq = lastSeq
    }

    /// What is held, as one delta; nothing is held afterwards.
    mutating func takePending() -> PendingDelta? {
        guard let firstSeq = self.heldFirstSeq else { return nil }
        let pending = PendingDelta(firstSeq: firstSeq, lastSeq: self.lastSeq, text: self.heldText)
        self.heldFirstSeq = nil
        self.heldText = ""
        self.heldBytes = 0
        return pending
    }

    /// What a follower has not had of `update`: seqs at or below `lastSeq` are dropped (a
    /// replay and the live updates may overlap), and `lastSeq` moves to the update's last seq.
    /// nil when it brings no new text. `contiguous` is false when seqs were skipped: a bug
    /// upstream of here, delivered as it is rather than hidden.
    mutating func fresh(_ update: FollowUpdate) -> (update: FollowUpdate, contiguous: Bool)? {
        let fresh = update.dropping(through: self.lastSeq)
        guard fresh.hasText else { return nil }
        let (next, overflow) = self.lastSeq.addingReportingOverflow(1)
        let contiguous = !overflow && fresh.firstSeq == next
        self.lastSeq = fresh.lastSeq
        return (fresh, contiguous)
    }
}
