import NIOCore
import Testing
@testable import SluiceTestSupport
@testable import WSServer

@Suite struct HeartbeatStateMachineTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test func pingsEveryIntervalWhileThePeerAnswers() {
        var machine = HeartbeatStateMachine(interval: .seconds(20), timeout: .seconds(10), now: start)
        #expect(machine.firstCheck == start + .seconds(20))
        #expect(machine.timerFired(now: start + .seconds(20)) == .sendPing(nextCheck: start + .seconds(30)))
        machine.inboundActivity(now: start + .seconds(21))  // the Pong
        #expect(machine.timerFired(now: start + .seconds(30)) == .wait(nextCheck: start + .seconds(40)))
        #expect(machine.timerFired(now: start + .seconds(40)) == .sendPing(nextCheck: start + .seconds(50)))
    }

    @Test func silenceAfterAPingTimesOut() {
        var machine = HeartbeatStateMachine(interval: .seconds(20), timeout: .seconds(10), now: start)
        _ = machine.timerFired(now: start + .seconds(20))
        machine.inboundActivity(now: start + .seconds(19))  // before the ping: does not answer it
        #expect(machine.timerFired(now: start + .seconds(30)) == .timedOut)
    }

    @Test func aTimeoutLongerThanTheIntervalKeepsTheFirstPingAsReference() {
        var machine = HeartbeatStateMachine(interval: .seconds(5), timeout: .seconds(12), now: start)
        #expect(machine.timerFired(now: start + .seconds(5)) == .sendPing(nextCheck: start + .seconds(10)))
        #expect(machine.timerFired(now: start + .seconds(10)) == .sendPing(nextCheck: start + .seconds(15)))
        #expect(machine.timerFired(now: start + .seconds(15)) == .sendPing(nextCheck: start + .seconds(17)))
        #expect(machine.timerFired(now: start + .seconds(17)) == .timedOut)
    }
}
