import Foundation

/// Why an expression could not be evaluated.
public struct CalculatorError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    /// The UTF-8 offset in the expression where it went wrong, when known.
    public var position: Int?

    public init(message: String, position: Int? = nil) {
        self.message = message
        self.position = position
    }

    public var description: String {
        guard let position else { return self.message }
        return "\(self.message) at position \(position)"
    }
}

/// A safe arithmetic evaluator: a recursive-descent parser over a fixed grammar, so text from a
/// model or a user can never reach anything but arithmetic.
///
///     expression := term (("+" | "-") term)*
///     term       := unary (("*" | "/" | "%") unary)*
///     unary      := ("+" | "-") unary | power
///     power      := primary (("^" | "**") unary)?     right-associative; -2^2 = -(2^2)
///     primary    := number | constant | function "(" expression ("," expression)* ")" | "(" expression ")"
public enum Calculator {
    /// The longest expression accepted, in UTF-8 bytes.
    public static let maximumLength = 1024
    /// The deepest nesting of parentheses, function calls, signs and exponents accepted.
    public static let maximumDepth = 64

    public static func evaluate(_ expression: String) throws(CalculatorError) -> Double {
        let bytes = Array(expression.utf8)
        guard bytes.count <= self.maximumLength else {
            throw CalculatorError(message: "expression is too long (\(bytes.count) bytes, at most \(self.maximumLength))")
        }
        var parser = Parser(text: expression, bytes: bytes)
        return try parser.parseAll()
    }

    /// Integral values without ".0" ("42", "-3"), others with up to 15 significant digits
    /// ("0.333333333333333"), and exponent form for very large or small magnitudes ("1e+20").
    public static func format(_ value: Double) -> String {
        guard value.isFinite else { return value.isNaN ? "nan" : (value < 0 ? "-inf" : "inf") }
        // 15 digits always survive a round trip through Double, so results look like "0.3", not "0.30000000000000004".
        let text = String(format: "%.15g", value)
        return text == "-0" ? "0" : text
    }
}

extension Calculator {
    /// Parses and evaluates in one pass; every recursion goes through `nested`, which bounds the depth.
    fileprivate struct Parser {
        /// One-argument functions, by name.
        static let unaryFunctions: [String: @Sendable (Double) -> Double] = [
            "sqrt": { $0.squareRoot() }, "abs": { Swift.abs($0) },
            "ln": { Foundation.log($0) }, "log": { Foundation.log10($0) },
            "log10": { Foundation.log10($0) }, "log2": { Foundation.log2($0) },
            "exp": { Foundation.exp($0) },
            "sin": { Foundation.sin($0) }, "cos": { Foundation.cos($0) }, "tan": { Foundation.tan($0) },
            "asin": { Foundation.asin($0) }, "acos": { Foundation.acos($0) }, "atan": { Foundation.atan($0) },
            "floor": { $0.rounded(.down) }, "ceil": { $0.rounded(.up) },
            "round": { $0.rounded(.toNearestOrAwayFromZero) }, "trunc": { $0.rounded(.towardZero) },
        ]

        static let binaryFunctions: [String: @Sendable (Double, Double) -> Double] = [
            "pow": { Foundation.pow($0, $1) },
            "hypot": { Foundation.hypot($0, $1) },
        ]

        static let constants: [String: Double] = ["pi": Double.pi, "e": M_E, "tau": 2 * Double.pi]

        let text: String
        let bytes: [UInt8]
        var offset = 0
        var depth = 0

        init(text: String, bytes: [UInt8]) {
            self.text = text
            self.bytes = bytes
        }

        mutating func parseAll() throws(CalculatorError) -> Double {
            self.skipWhitespace()
            guard self.offset < self.bytes.count else { throw CalculatorError(message: "empty expression") }
            let value = try self.parseExpression()
            self.skipWhitespace()
            if self.offset < self.bytes.count {
                if self.bytes[self.offset] == UInt8(ascii: ")") {
                    throw CalculatorError(message: "unbalanced parenthesis: unexpected ')'", position: self.offset)
                }
                throw self.unexpectedHere()
            }
            return value
        }

        // MARK: Grammar

        private mutating func parseExpression() throws(CalculatorError) -> Double {
            var value = try self.parseTerm()
            while true {
                self.skipWhitespace()
                let position = self.offset
                if self.consume("+") {
                    let right = try self.parseTerm()
                    value = try self.checked(value + right, operation: "+", at: position)
                } else if self.consume("-") {
                    let right = try self.parseTerm()
                    value = try self.checked(value - right, operation: "-", at: position)
                } else {
                    return value
                }
            }
        }

        private mutating func parseTerm() throws(CalculatorError) -> Double {
            var value = try self.parseUnary()
            while true {
                self.skipWhitespace()
                let position = self.offset
                // "**" is power, handled below unary; only a single "*" multiplies.
                if self.peek() == UInt8(ascii: "*") && self.peek(1) != UInt8(ascii: "*") {
                    self.offset += 1
                    let right = try self.parseUnary()
                    value = try self.checked(value * right, operation: "*", at: position)
                } else if self.consume("/") {
                    let divisor = try self.parseUnary()
                    guard divisor != 0 else { throw CalculatorError(message: "division by zero", position: position) }
                    value = try self.checked(value / divisor, operation: "/", at: position)
                } else if self.consume("%") {
                    let divisor = try self.parseUnary()
                    guard divisor != 0 else { throw CalculatorError(message: "division by zero", position: position) }
                    value = try self.checked(fmod(value, divisor), operation: "%", at: position)
                } else {
                    return value
                }
            }
        }

        private mutating func parseUnary() throws(CalculatorError) -> Double {
            self.skipWhitespace()
            if self.consume("-") {
                return try -self.nested { parser throws(CalculatorError) in try parser.parseUnary() }
            }
            if self.consume("+") {
                return try self.nested { parser throws(CalculatorError) in try parser.parseUnary() }
            }
            return try self.parsePower()
        }

        private mutating func parsePower() throws(CalculatorError) -> Double {
            let base = try self.parsePrimary()
            self.skipWhitespace()
            let position = self.offset
            if self.consume("^") || self.consume("**") {
                // The exponent is a unary: right-associative (2^3^2 = 2^9) and may carry a sign (2^-1).
                let exponent = try self.nested { parser throws(CalculatorError) in try parser.parseUnary() }
                return try self.checked(Foundation.pow(base, exponent), operation: "^", at: position)
            }
            return base
        }

        private mutating func parsePrimary() throws(CalculatorError) -> Double {
            self.skipWhitespace()
            guard let byte = self.peek() else { throw self.unexpectedEnd() }
            if byte == UInt8(ascii: "(") {
                let open = self.offset
                self.offset += 1
                let value = try self.nested { parser throws(CalculatorError) in try parser.parseExpression() }
                try self.expectClosing(openedAt: open)
                return value
            }
            if Self.isDigit(byte) || byte == UInt8(ascii: ".") {
                return try self.parseNumber()
            }
            if Self.isLetter(byte) {
                return try self.parseName()
            }
            if byte == UInt8(ascii: ")") {
                throw CalculatorError(message: "unexpected ')'", position: self.offset)
            }
            throw self.unexpectedHere()
        }

        private mutating func parseNumber() throws(CalculatorError) -> Double {
            let start = self.offset
            var digits = self.skipDigits()
            if self.peek() == UInt8(ascii: ".") {
                self.offset += 1
                digits += self.skipDigits()
            }
            guard digits > 0 else { throw CalculatorError(message: "malformed number", position: start) }
            if let marker = self.peek(), marker == UInt8(ascii: "e") || marker == UInt8(ascii: "E") {
                // "2e3" is an exponent; "2e" or "2ex" is not a number (there is no implicit multiplication).
                var lookahead = 1
                if let sign = self.peek(1), sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { lookahead = 2 }
                guard let first = self.peek(lookahead), Self.isDigit(first) else {
                    throw CalculatorError(message: "malformed number", position: start)
                }
                self.offset += lookahead
                _ = self.skipDigits()
            }
            if let next = self.peek(), next == UInt8(ascii: ".") || Self.isLetter(next) || Self.isDigit(next) {
                throw CalculatorError(message: "malformed number", position: start)
            }
            let literal = String(decoding: self.bytes[start..<self.offset], as: UTF8.self)
            guard let value = Double(literal) else { throw CalculatorError(message: "malformed number", position: start) }
            guard value.isFinite else { throw CalculatorError(message: "number is too large", position: start) }
            return value
        }

        private mutating func parseName() throws(CalculatorError) -> Double {
            let start = self.offset
            while let byte = self.peek(), Self.isLetter(byte) || Self.isDigit(byte) { self.offset += 1 }
            let name = String(decoding: self.bytes[start..<self.offset], as: UTF8.self)
            self.skipWhitespace()
            let isCall = self.peek() == UInt8(ascii: "(")
            let isFunction = Self.unaryFunctions[name] != nil || Self.binaryFunctions[name] != nil || name == "min" || name == "max"

            if !isCall {
                if let value = Self.constants[name] { return value }
                if isFunction {
                    throw CalculatorError(message: "expected '(' after function '\(name)'", position: self.offset)
                }
                throw CalculatorError(message: "unknown name '\(name)'", position: start)
            }
            guard isFunction else {
                if Self.constants[name] != nil {
                    throw CalculatorError(message: "'\(name)' is a constant, not a function", position: start)
                }
                throw CalculatorError(message: "unknown name '\(name)'", position: start)
            }

            let open = self.offset
            self.offset += 1
            let arguments = try self.nested { parser throws(CalculatorError) in try parser.parseArguments() }
            try self.expectClosing(openedAt: open)

            let result: Double
            if let function = Self.unaryFunctions[name] {
                guard arguments.count == 1 else { throw Self.arity(name, expected: "1", got: arguments.count, at: start) }
                result = function(arguments[0])
            } else if let function = Self.binaryFunctions[name] {
                guard arguments.count == 2 else { throw Self.arity(name, expected: "2", got: arguments.count, at: start) }
                result = function(arguments[0], arguments[1])
            } else {
                guard let first = arguments.first else {
                    throw Self.arity(name, expected: "at least 1", got: 0, at: start)
                }
                result = arguments.dropFirst().reduce(first) { name == "min" ? Swift.min($0, $1) : Swift.max($0, $1) }
            }
            return try self.checked(result, operation: name, at: start)
        }

        /// Comma-separated expressions up to (not including) the closing parenthesis; none for "f()".
        private mutating func parseArguments() throws(CalculatorError) -> [Double] {
            self.skipWhitespace()
            if self.peek() == UInt8(ascii: ")") { return [] }
            var arguments = [try self.parseExpression()]
            while true {
                self.skipWhitespace()
                guard self.consume(",") else { return arguments }
                arguments.append(try self.parseExpression())
            }
        }

        // MARK: Helpers

        /// Runs one level deeper, refusing to pass `maximumDepth` so a hostile input cannot exhaust the stack.
        private mutating func nested<Result>(
            _ body: (inout Self) throws(CalculatorError) -> Result
        ) throws(CalculatorError) -> Result {
            guard self.depth < Calculator.maximumDepth else {
                throw CalculatorError(
                    message: "expression is nested too deeply (at most \(Calculator.maximumDepth) levels)", position: self.offset)
            }
            self.depth += 1
            defer { self.depth -= 1 }
            return try body(&self)
        }

        /// Rejects NaN and infinities where they arise, so the error names the operation that caused them.
        private func checked(_ value: Double, operation: String, at position: Int) throws(CalculatorError) -> Double {
            if value.isNaN {
                throw CalculatorError(message: "result of '\(operation)' is not a real number", position: position)
            }
            if value.isInfinite {
                throw CalculatorError(message: "result of '\(operation)' is not finite", position: position)
            }
            return value
        }

        private mutating func expectClosing(openedAt open: Int) throws(CalculatorError) {
            self.skipWhitespace()
            if self.consume(")") { return }
            if self.offset >= self.bytes.count {
                throw CalculatorError(message: "unbalanced parenthesis: missing ')'", position: open)
            }
            throw self.unexpectedHere()
        }

        private static func arity(_ name: String, expected: String, got: Int, at position: Int) -> CalculatorError {
            CalculatorError(message: "wrong number of arguments for '\(name)': expected \(expected), got \(got)", position: position)
        }

        private func unexpectedEnd() -> CalculatorError {
            CalculatorError(message: "unexpected end of expression", position: self.bytes.count)
        }

        /// "unexpected character 'x'", naming the whole Unicode scalar even when it is several bytes.
        private func unexpectedHere() -> CalculatorError {
            guard self.offset < self.bytes.count else { return self.unexpectedEnd() }
            let utf8 = self.text.utf8
            let index = utf8.index(utf8.startIndex, offsetBy: self.offset)
            let scalar = self.text.unicodeScalars[index]
            let shown = scalar.properties.isWhitespace || scalar.value < 0x20 ? scalar.escaped(asASCII: true) : String(scalar)
            return CalculatorError(message: "unexpected character '\(shown)'", position: self.offset)
        }

        private func peek(_ ahead: Int = 0) -> UInt8? {
            let index = self.offset + ahead
            return index < self.bytes.count ? self.bytes[index] : nil
        }

        private mutating func consume(_ token: StaticString) -> Bool {
            let count = token.utf8CodeUnitCount
            guard self.offset + count <= self.bytes.count else { return false }
            for index in 0..<count where self.bytes[self.offset + index] != token.utf8Start[index] { return false }
            self.offset += count
            return true
        }

        private mutating func skipWhitespace() {
            while let byte = self.peek(), byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D { self.offset += 1 }
        }

        private mutating func skipDigits() -> Int {
            let start = self.offset
            while let byte = self.peek(), Self.isDigit(byte) { self.offset += 1 }
            return self.offset - start
        }

        private static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

        private static func isLetter(_ byte: UInt8) -> Bool {
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || byte == UInt8(ascii: "_")
        }
    }
}
