import Foundation
import Testing
import Tools

@Suite struct CalculatorTests {
    private func value(_ expression: String) throws -> Double {
        try Calculator.evaluate(expression)
    }

    /// The error `expression` gives, or nil if it evaluates (which then fails the `#expect` using it).
    private func failure(_ expression: String) -> CalculatorError? {
        do {
            _ = try Calculator.evaluate(expression)
            return nil
        } catch {
            return error
        }
    }

    @Test func precedenceAndAssociativity() throws {
        #expect(try value("2+3*4") == 14)
        #expect(try value("(2+3)*4") == 20)
        #expect(try value("10 - 4 - 3") == 3)
        #expect(try value("100/10/2") == 5)
        #expect(try value("2^3^2") == 512)
        #expect(try value("2**3**2") == 512)
        #expect(try value("-2^2") == -4)
        #expect(try value("-2**2") == -4)
        #expect(try value("(-2)^2") == 4)
        #expect(try value("2^-1") == 0.5)
        #expect(try value("2*-3") == -6)
        #expect(try value("--1") == 1)
        #expect(try value("+-+1") == -1)
        #expect(try value("-(1+2)") == -3)
    }

    @Test func remainderTruncatesLikeFmod() throws {
        #expect(try value("7 % 3") == 1)
        #expect(try value("-7 % 3") == -1)
        #expect(try value("7.5 % 2") == 1.5)
    }

    @Test(arguments: [
        ("12", 12.0), ("3.5", 3.5), (".5", 0.5), ("1e3", 1000), ("2.5E-3", 0.0025), ("1e+2", 100),
        (" \t 1 +\n 2 ", 3),
    ])
    func numbersAndWhitespace(expression: String, expected: Double) throws {
        #expect(try value(expression) == expected)
    }

    @Test func constantsAndFunctions() throws {
        #expect(try value("pi") == Double.pi)
        #expect(try value("tau") == 2 * Double.pi)
        #expect(try value("e") == M_E)
        #expect(try value("sqrt(16)") == 4)
        #expect(try value("abs(-3)") == 3)
        #expect(try value("ln(e)") == 1)
        #expect(try value("log(1000)") == 3)
        #expect(try value("log10(100)") == 2)
        #expect(try value("log2(8)") == 3)
        #expect(try value("exp(0)") == 1)
        #expect(try value("sin(0)") == 0)
        #expect(try value("cos(0)") == 1)
        #expect(try value("tan(0)") == 0)
        #expect(try value("asin(1)") == Double.pi / 2)
        #expect(try value("acos(1)") == 0)
        #expect(try value("atan(1)") == Double.pi / 4)
        #expect(try value("floor(-2.5)") == -3)
        #expect(try value("ceil(2.1)") == 3)
        #expect(try value("round(2.5)") == 3)
        #expect(try value("round(-2.5)") == -3)
        #expect(try value("trunc(-2.7)") == -2)
        #expect(try value("min(3)") == 3)
        #expect(try value("min(3, 1, 2)") == 1)
        #expect(try value("max(3,1,2)") == 3)
        #expect(try value("pow(2, 10)") == 1024)
        #expect(try value("hypot(3,4)") == 5)
        #expect(try value("sqrt(pow(3,2)+pow(4,2))") == 5)
    }

    @Test func nestingUpToTheLimitIsAccepted() throws {
        let depth = Calculator.maximumDepth
        let nested = String(repeating: "(", count: depth) + "1" + String(repeating: ")", count: depth)
        #expect(try value(nested) == 1)
        // A long flat sum is not nesting.
        #expect(try value(String(repeating: "1+", count: 500) + "1") == 501)
    }

    @Test func syntaxErrors() {
        #expect(throws: CalculatorError(message: "unbalanced parenthesis: missing ')'", position: 0)) {
            try Calculator.evaluate("(1+2")
        }
        #expect(failure("")?.message == "empty expression")
        #expect(failure("   ")?.message == "empty expression")

        let unclosed = failure("(1+2")
        #expect(unclosed?.message.contains("unbalanced parenthesis") == true)
        #expect(unclosed?.position == 0)

        let extraClose = failure("3)")
        #expect(extraClose?.message.contains("unbalanced parenthesis") == true)
        #expect(extraClose?.position == 1)

        let trailing = failure("1 2")
        #expect(trailing?.message == "unexpected character '2'")
        #expect(trailing?.position == 2)
        #expect(trailing?.description == "unexpected character '2' at position 2")

        #expect(failure("1+")?.message == "unexpected end of expression")
        #expect(failure("1+")?.position == 2)
        #expect(failure("2 $ 3")?.position == 2)
        #expect(failure("1 + é")?.message == "unexpected character 'é'")
        #expect(failure("2***3") != nil)
        #expect(failure("()") != nil)
        #expect(failure("min(1,)") != nil)
        #expect(failure("1.2.3")?.message == "malformed number")
        #expect(failure("2e")?.message == "malformed number")
        #expect(failure("2pi")?.message == "malformed number")
    }

    @Test func namesAndArguments() {
        #expect(failure("foo")?.message == "unknown name 'foo'")
        #expect(failure("foo(1)")?.message == "unknown name 'foo'")
        #expect(failure("PI")?.message == "unknown name 'PI'")
        #expect(failure("sqrt(1,2)")?.message == "wrong number of arguments for 'sqrt': expected 1, got 2")
        #expect(failure("sqrt()")?.message.contains("wrong number of arguments for 'sqrt'") == true)
        #expect(failure("min()")?.message.contains("at least 1") == true)
        #expect(failure("pow(2)")?.message.contains("expected 2, got 1") == true)
        #expect(failure("sqrt")?.message.contains("expected '('") == true)
        #expect(failure("pi(2)")?.message.contains("not a function") == true)
    }

    @Test func arithmeticErrors() {
        #expect(throws: CalculatorError(message: "division by zero", position: 1)) { try Calculator.evaluate("1/0") }
        #expect(throws: CalculatorError.self) { try Calculator.evaluate("sqrt(-1)") }
        #expect(failure("1/0")?.message == "division by zero")
        #expect(failure("1/0")?.position == 1)
        #expect(failure("5 % 0")?.message == "division by zero")
        #expect(failure("1/(2-2)")?.message == "division by zero")
        #expect(failure("sqrt(-1)")?.message.contains("not a real number") == true)
        #expect(failure("asin(2)")?.message.contains("not a real number") == true)
        #expect(failure("(-8)^(1/3)")?.message.contains("not a real number") == true)
        #expect(failure("ln(0)")?.message.contains("not finite") == true)
        #expect(failure("10^400")?.message.contains("not finite") == true)
        #expect(failure("1e308*10")?.message.contains("not finite") == true)
        #expect(failure("1e999") != nil)
    }

    @Test func hostileInputsFailWithoutCrashing() {
        #expect(failure(String(repeating: "(", count: 10_000))?.message.contains("too long") == true)
        #expect(failure(String(repeating: "1", count: Calculator.maximumLength + 1))?.message.contains("too long") == true)
        #expect(failure(String(repeating: "(", count: 100))?.message.contains("nested too deeply") == true)
        let tooDeep = Calculator.maximumDepth + 1
        #expect(failure(String(repeating: "(", count: tooDeep) + "1" + String(repeating: ")", count: tooDeep))?
            .message.contains("nested too deeply") == true)
        #expect(failure(String(repeating: "-", count: 500) + "1")?.message.contains("nested too deeply") == true)
        #expect(failure(String(repeating: "2^", count: 300) + "1")?.message.contains("nested too deeply") == true)
        #expect(failure(String(repeating: "sqrt(", count: 100) + "1" + String(repeating: ")", count: 100))?
            .message.contains("nested too deeply") == true)
    }

    @Test func formatting() {
        #expect(Calculator.format(42) == "42")
        #expect(Calculator.format(-3) == "-3")
        #expect(Calculator.format(1024) == "1024")
        #expect(Calculator.format(2.5) == "2.5")
        #expect(Calculator.format(1.0 / 3) == "0.333333333333333")
        #expect(Calculator.format(0.1 + 0.2) == "0.3")
        #expect(Calculator.format(-0.0) == "0")
        #expect(Calculator.format(123_456_789_012_345) == "123456789012345")
        #expect(Calculator.format(1e20) == "1e+20")
        #expect(Calculator.format(1.5e-7) == "1.5e-07")
    }
}
