import Inference

/// What of a generation's updates may go to one follower on another instance, so that it gets
/// every seq once, in order, and the end last. Updates come from the owner through Redis, live
/// or re-read from the generation's stream, and may overlap (the follower drops what it has)
/// or leave a gap: the owner's publish failed while Redis was unreachable. A gap is never
/// delivered: the update waits until the owner publishes the generation whole again (it does
/// once Redis is back) or a re-read of the stream finds the missing seqs. The end is held
/// until every seq before it went out. A plain value: one per follower, driven by
/// `RedisGenerationFanOut` on its subscriber's event loop.
struct FollowGate: Sendable, Equatable {
    /// Every seq up to this one went out.
    private(set) var deliveredSeq: Int64
    /// The end, waiting for the seqs before it.
    private(set) var heldEnd: GenerationEnd?
    /// The end went out: nothing more passes.
    private(set) var ended = false
    /// Text arrived past a gap (or an end past the text): re-read the stream.
    private(set) var hasGap = false

    init(after seq: Int64) {
        self.deliveredSeq = seq
    }

    /// What of `update` to deliver now (nil: nothing). `started` passes as it is.
    mutating func pass(_ update: FollowUpdate) -> FollowUpdate? {
        guard !self.ended else { return nil }
        var out = FollowUpdate(started: update.started, firstSeq: self.deliveredSeq + 1, lastSeq: self.deliveredSeq, text: "", end: nil)
        if update.hasText, update.lastSeq > self.deliveredSeq {
            if update.firstSeq > self.deliveredSeq + 1 {
                self.hasGap = true
            } else {
                out = update.dropping(through: self.deliveredSeq)
                out.started = update.started
                out.end = nil
                self.deliveredSeq = update.lastSeq
                self.hasGap = false
            }
        }
        if let end = update.end, self.heldEnd == nil { self.heldEnd = end }
        if let end = self.heldEnd {
            if end.seq <= self.deliveredSeq {
                out.end = end
                self.heldEnd = nil
                self.ended = true
                self.hasGap = false
            } else {
                self.hasGap = true
            }
        }
        return out.started != nil || out.hasText || out.end != nil ? out : nil
    }

    /// The owner is gone: the end it will never send, at what this follower has.
    mutating func ownerLost(_ end: (_ seq: Int64) -> GenerationEnd) -> FollowUpdate? {
        guard !self.ended else { return nil }
        self.ended = true
        self.heldEnd = nil
        self.hasGap = false
        return .endOnly(end(self.deliveredSeq))
    }
}
