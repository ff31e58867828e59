/// The answer carried by the `generation.delta` messages among decoded `sluice.v1` messages (as
/// `JSONWebSocketClient` returns them), for tests that rebuild an answer across disconnects,
/// resumes and instances. Seqs must be contiguous from `after + 1`; where they are not is kept
/// in `gaps` for the caller to expect empty (this target does not import Testing).
struct DeltaText {
    var text = ""
    /// The seq of the last delta (`after` when there was none).
    var lastSeq: Int
    /// One line per delta that did not start right after the one before.
    var gaps: [String] = []

    init(of messages: [[String: Any]], after: Int) {
        var expected = after + 1
        for message in messages where message["type"] as? String == "generation.delta" {
            let seq = message["seq"] as? Int ?? -1
            let first = message["first_seq"] as? Int ?? seq
            if first != expected { self.gaps.append("delta starts at \(first), expected \(expected)") }
            expected = seq + 1
            self.text += message["text"] as? String ?? ""
        }
        self.lastSeq = expected - 1
    }
}
