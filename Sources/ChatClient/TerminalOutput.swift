import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Renders the state machine's output actions. ANSI styling only where the stream is a
/// terminal (and `NO_COLOR` is unset), so piped output stays plain text for scripts.
struct TerminalOutput: Sendable {
    let stdoutStyled: Bool
    let stderrStyled: Bool

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let colorAllowed = environment["NO_COLOR"] == nil && environment["TERM"] != "dumb"
        self.stdoutStyled = colorAllowed && isatty(STDOUT_FILENO) == 1
        self.stderrStyled = colorAllowed && isatty(STDERR_FILENO) == 1
    }

    func print(_ text: String) {
        Self.write(text, to: STDOUT_FILENO)
    }

    func printLine(_ text: String, _ style: ChatClientStateMachine.LineStyle) {
        switch style {
        case .plain:
            Self.write(text + "\n", to: STDOUT_FILENO)
        case .status:
            Self.write(self.stdoutStyled ? "\u{1B}[2m\(text)\u{1B}[22m\n" : text + "\n", to: STDOUT_FILENO)
        case .error:
            Self.write(self.stderrStyled ? "\u{1B}[31m\(text)\u{1B}[39m\n" : text + "\n", to: STDERR_FILENO)
        }
    }

    func prompt() {
        Self.write(self.stdoutStyled ? "\u{1B}[1myou>\u{1B}[22m " : "you> ", to: STDOUT_FILENO)
    }

    /// Unbuffered, so each delta shows at once; retries partial writes and EINTR.
    private static func write(_ text: String, to fd: Int32) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = posixWrite(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0 && errno == EINTR {
                    continue
                } else {
                    return  // A closed stdout is not worth crashing over.
                }
            }
        }
    }
}

/// `write(2)`, named apart from `TerminalOutput.write`.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, buffer, count)
}
