import Foundation

/// Why a schema could not be read.
public struct JSONSchemaError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String

    public init(message: String) {
        self.message = message
    }

    public var description: String { self.message }
}

/// The subset of JSON Schema that OpenAI function `parameters` use, checked against values as
/// `JSONSerialization` returns them.
///
/// Keywords: `type`, `properties`, `required`, `additionalProperties`, `items`, `enum`, `const`,
/// `minItems`, `maxItems`, `minLength`, `maxLength`, `minimum`, `maximum`, `exclusiveMinimum`,
/// `exclusiveMaximum` and `pattern`. Any other keyword (`description`, `title`, `default`,
/// `format`, `anyOf`, ...) is accepted and ignored. String lengths count Unicode scalars (code
/// points), as the specification does, so "é" written as e + U+0301 is two.
public struct JSONSchema: Sendable, Equatable {
    /// The deepest nesting of schemas accepted; validation recurses no deeper than the schema does.
    public static let maximumDepth = 32
    /// `validate` stops after this many violations.
    public static let maximumErrors = 20

    /// A JSON type name, as the `type` keyword spells it.
    public enum ValueType: String, Sendable, Equatable, CaseIterable {
        case object, array, string, number, integer, boolean, null
    }

    /// nil when `type` is absent: any type.
    private var types: [ValueType]?
    private var properties: [String: JSONSchema] = [:]
    private var required: [String] = []
    private var additionalProperties: Subschema = .anything
    private var items: Subschema = .anything
    private var allowedValues: [Value]?
    private var constant: Value?
    private var minItems: Int?
    private var maxItems: Int?
    private var minLength: Int?
    private var maxLength: Int?
    private var minimum: Double?
    private var maximum: Double?
    private var exclusiveMinimum: Double?
    private var exclusiveMaximum: Double?
    private var pattern: Pattern?
}

extension JSONSchema {
    /// What a nested keyword (`items`, `additionalProperties`) allows. An enum, so a schema can hold itself.
    fileprivate enum Subschema: Sendable, Equatable {
        /// The keyword is absent, or `additionalProperties: true`.
        case anything
        /// `additionalProperties: false`.
        case nothing
        indirect case schema(JSONSchema)
    }

    /// A `pattern`, compiled once; equal when the source is.
    fileprivate struct Pattern: Sendable, Equatable {
        let source: String
        let expression: NSRegularExpression

        static func == (lhs: Pattern, rhs: Pattern) -> Bool { lhs.source == rhs.source }

        /// JSON Schema patterns are unanchored: a match anywhere in the string counts.
        func isFound(in string: String) -> Bool {
            self.expression.firstMatch(in: string, options: [], range: NSRange(location: 0, length: string.utf16.count)) != nil
        }
    }
}

// MARK: - Parsing

extension JSONSchema {
    /// Parses a schema from a JSON object (as `JSONSerialization` returns it). Throws on a schema
    /// that is not an object, has keywords of the wrong type, or is nested too deeply.
    public init(jsonObject: Any) throws(JSONSchemaError) {
        try self.init(jsonObject: jsonObject, location: "#", depth: 0)
    }

    public init(json: String) throws(JSONSchemaError) {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed])
        } catch {
            throw JSONSchemaError(message: "schema is not valid JSON: \(error.localizedDescription)")
        }
        try self.init(jsonObject: object)
    }

    /// `location` is the schema's JSON pointer ("#/properties/city"), for error messages.
    private init(jsonObject: Any, location: String, depth: Int) throws(JSONSchemaError) {
        guard depth <= Self.maximumDepth else {
            throw JSONSchemaError(message: "\(location): schema is nested too deeply (at most \(Self.maximumDepth) levels)")
        }
        guard let keywords = jsonObject as? [String: Any] else {
            throw JSONSchemaError(message: "\(location): a schema must be an object, got \(Kind(of: jsonObject).name)")
        }
        let reader = KeywordReader(keywords: keywords, location: location)

        if let type = keywords["type"] {
            self.types = try reader.types(type)
        }
        if let properties = keywords["properties"] {
            guard let properties = properties as? [String: Any] else { throw reader.wrongType("properties", "an object") }
            // Sorted, so a schema with several faults always reports the same one.
            for (name, subschema) in properties.sorted(by: { $0.key < $1.key }) {
                self.properties[name] = try JSONSchema(
                    jsonObject: subschema, location: "\(location)/properties/\(Self.escapePointer(name))", depth: depth + 1)
            }
        }
        if let required = keywords["required"] {
            guard let names = required as? [Any] else { throw reader.wrongType("required", "an array of strings") }
            let strings = names.compactMap { $0 as? String }
            guard strings.count == names.count else { throw reader.wrongType("required", "an array of strings") }
            self.required = strings
        }
        if let additional = keywords["additionalProperties"] {
            if case .boolean(let allowed) = Kind(of: additional) {
                self.additionalProperties = allowed ? .anything : .nothing
            } else if additional is [String: Any] {
                self.additionalProperties = .schema(try JSONSchema(
                    jsonObject: additional, location: "\(location)/additionalProperties", depth: depth + 1))
            } else {
                throw reader.wrongType("additionalProperties", "a boolean or a schema")
            }
        }
        if let items = keywords["items"] {
            guard items is [String: Any] else { throw reader.wrongType("items", "a schema (an object)") }
            self.items = .schema(try JSONSchema(jsonObject: items, location: "\(location)/items", depth: depth + 1))
        }
        if let allowed = keywords["enum"] {
            guard let values = allowed as? [Any] else { throw reader.wrongType("enum", "an array") }
            var converted: [Value] = []
            for value in values {
                guard let value = Value(value, depth: Self.maximumDepth) else {
                    throw JSONSchemaError(message: "\(location): \"enum\" holds a value that is not JSON or is nested too deeply")
                }
                converted.append(value)
            }
            self.allowedValues = converted
        }
        if let constant = keywords["const"] {
            guard let value = Value(constant, depth: Self.maximumDepth) else {
                throw JSONSchemaError(message: "\(location): \"const\" is not a JSON value or is nested too deeply")
            }
            self.constant = value
        }
        self.minItems = try reader.count("minItems")
        self.maxItems = try reader.count("maxItems")
        self.minLength = try reader.count("minLength")
        self.maxLength = try reader.count("maxLength")
        self.minimum = try reader.number("minimum")
        self.maximum = try reader.number("maximum")
        self.exclusiveMinimum = try reader.number("exclusiveMinimum")
        self.exclusiveMaximum = try reader.number("exclusiveMaximum")
        if let pattern = keywords["pattern"] {
            guard let source = pattern as? String else { throw reader.wrongType("pattern", "a string") }
            do {
                self.pattern = Pattern(source: source, expression: try NSRegularExpression(pattern: source))
            } catch {
                throw JSONSchemaError(message: "\(location): \"pattern\" is not a valid regular expression: \(source)")
            }
        }
    }

    /// RFC 6901: "~" and "/" in a property name are escaped in a JSON pointer.
    private static func escapePointer(_ name: String) -> String {
        name.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
    }
}

extension JSONSchema {
    /// Reads typed keyword values from one schema object, with errors that name the keyword.
    fileprivate struct KeywordReader {
        let keywords: [String: Any]
        let location: String

        func wrongType(_ keyword: String, _ expected: String) -> JSONSchemaError {
            JSONSchemaError(message: "\(self.location): \"\(keyword)\" must be \(expected)")
        }

        func types(_ value: Any) throws(JSONSchemaError) -> [JSONSchema.ValueType] {
            let names: [Any]
            if let single = value as? String {
                names = [single]
            } else if let list = value as? [Any], !list.isEmpty {
                names = list
            } else {
                throw self.wrongType("type", "a type name or a non-empty array of them")
            }
            var types: [JSONSchema.ValueType] = []
            for name in names {
                guard let name = name as? String else { throw self.wrongType("type", "a type name or an array of them") }
                guard let type = JSONSchema.ValueType(rawValue: name) else {
                    let known = JSONSchema.ValueType.allCases.map(\.rawValue).joined(separator: ", ")
                    throw JSONSchemaError(message: "\(self.location): unknown type \(Value.quoted(name)) (expected \(known))")
                }
                if !types.contains(type) { types.append(type) }
            }
            return types
        }

        /// A non-negative integer keyword (`minItems`, `maxLength`, ...), or nil when absent.
        func count(_ keyword: String) throws(JSONSchemaError) -> Int? {
            guard let value = self.keywords[keyword] else { return nil }
            guard case .number(let number) = Kind(of: value), let integer = number.exactInteger, integer >= 0,
                  let count = Int(exactly: integer)
            else {
                throw self.wrongType(keyword, "a non-negative integer")
            }
            return count
        }

        /// A numeric keyword (`minimum`, ...), or nil when absent.
        func number(_ keyword: String) throws(JSONSchemaError) -> Double? {
            guard let value = self.keywords[keyword] else { return nil }
            guard case .number(let number) = Kind(of: value), number.value.isFinite else {
                throw self.wrongType(keyword, "a number")
            }
            return number.value
        }
    }
}

// MARK: - Validation

extension JSONSchema {
    /// All violations of `value` (a `JSONSerialization` value: NSNumber, String, [Any],
    /// [String: Any], NSNull), each as "$.path.to[2].field: message"; empty means valid.
    /// At most `maximumErrors` are reported.
    public func validate(_ value: Any) -> [String] {
        var validation = Validation()
        self.check(value, &validation)
        return validation.errors
    }

    private func check(_ value: Any, _ validation: inout Validation) {
        guard !validation.isFull else { return }
        let kind = Kind(of: value)
        if case .unsupported = kind {
            validation.report("not a JSON value (\(type(of: value)))")
            return
        }
        if let types = self.types, !types.contains(where: { kind.isOfType($0) }) {
            // Other keywords would only repeat the mismatch in other words.
            let expected = types.map(\.rawValue).joined(separator: " or ")
            validation.report("expected \(expected), got \(kind.name)")
            return
        }
        if let constant = self.constant, !constant.matches(value) {
            validation.report("must be \(constant.rendered)")
        }
        if let allowed = self.allowedValues, !allowed.contains(where: { $0.matches(value) }) {
            validation.report("must be one of \(Value.renderedList(allowed))")
        }
        switch kind {
        case .string(let string):
            self.checkString(string, &validation)
        case .number(let number):
            self.checkNumber(number.value, &validation)
        case .array(let elements):
            self.checkArray(elements, &validation)
        case .object(let members):
            self.checkObject(members, &validation)
        case .null, .boolean, .unsupported:
            break
        }
    }

    private func checkString(_ string: String, _ validation: inout Validation) {
        if self.minLength != nil || self.maxLength != nil {
            let length = string.unicodeScalars.count
            if let minLength = self.minLength, length < minLength {
                validation.report("expected at least \(minLength) characters, got \(length)")
            }
            if let maxLength = self.maxLength, length > maxLength {
                validation.report("expected at most \(maxLength) characters, got \(length)")
            }
        }
        if let pattern = self.pattern, !pattern.isFound(in: string) {
            validation.report("does not match pattern \(Value.quoted(pattern.source))")
        }
    }

    private func checkNumber(_ number: Double, _ validation: inout Validation) {
        if let minimum = self.minimum, !(number >= minimum) {
            validation.report("must be >= \(Number(minimum).rendered)")
        }
        if let maximum = self.maximum, !(number <= maximum) {
            validation.report("must be <= \(Number(maximum).rendered)")
        }
        if let exclusiveMinimum = self.exclusiveMinimum, !(number > exclusiveMinimum) {
            validation.report("must be > \(Number(exclusiveMinimum).rendered)")
        }
        if let exclusiveMaximum = self.exclusiveMaximum, !(number < exclusiveMaximum) {
            validation.report("must be < \(Number(exclusiveMaximum).rendered)")
        }
    }

    private func checkArray(_ elements: [Any], _ validation: inout Validation) {
        if let minItems = self.minItems, elements.count < minItems {
            validation.report("expected at least \(minItems) items, got \(elements.count)")
        }
        if let maxItems = self.maxItems, elements.count > maxItems {
            validation.report("expected at most \(maxItems) items, got \(elements.count)")
        }
        guard case .schema(let itemSchema) = self.items else { return }
        for (index, element) in elements.enumerated() {
            guard !validation.isFull else { return }
            validation.path.append(.index(index))
            itemSchema.check(element, &validation)
            validation.path.removeLast()
        }
    }

    private func checkObject(_ members: [String: Any], _ validation: inout Validation) {
        for name in self.required where members[name] == nil {
            validation.report("missing required property \(Value.quoted(name))")
        }
        // Sorted, so the same value always gets the same errors in the same order.
        for name in members.keys.sorted() {
            guard !validation.isFull, let member = members[name] else { return }
            validation.path.append(.key(name))
            if let propertySchema = self.properties[name] {
                propertySchema.check(member, &validation)
            } else {
                switch self.additionalProperties {
                case .anything: break
                case .nothing: validation.report("additional property is not allowed")
                case .schema(let additionalSchema): additionalSchema.check(member, &validation)
                }
            }
            validation.path.removeLast()
        }
    }
}

extension JSONSchema {
    /// The errors found so far, and where in the value the check is.
    fileprivate struct Validation {
        enum PathComponent {
            case key(String)
            case index(Int)
        }

        var errors: [String] = []
        var path: [PathComponent] = []

        var isFull: Bool { self.errors.count >= JSONSchema.maximumErrors }

        mutating func report(_ message: String) {
            guard !self.isFull else { return }
            self.errors.append("\(self.renderedPath): \(message)")
        }

        /// "$.location", "$.items[2]", or `$["odd key"]` for names that are not identifiers.
        private var renderedPath: String {
            var text = "$"
            for component in self.path {
                switch component {
                case .index(let index):
                    text += "[\(index)]"
                case .key(let key):
                    if Self.isIdentifier(key) {
                        text += "." + key
                    } else {
                        text += "[\(Value.quoted(key))]"
                    }
                }
            }
            return text
        }

        private static func isIdentifier(_ key: String) -> Bool {
            guard let first = key.unicodeScalars.first, first == "_" || first.properties.isAlphabetic && first.isASCII else {
                return false
            }
            return key.unicodeScalars.allSatisfy { $0.isASCII && ($0 == "_" || $0.properties.isAlphabetic || ("0"..."9").contains($0)) }
        }
    }
}

// MARK: - JSON values

extension JSONSchema {
    /// A JSON number: the value, and the exact integer when it is one, so large integers
    /// (beyond 2^53) compare exactly.
    fileprivate struct Number: Sendable, Equatable {
        let value: Double
        let exactInteger: Int64?

        init(_ value: Double) {
            self.value = value
            self.exactInteger = Int64(exactly: value)
        }

        init(_ number: NSNumber) {
            self.value = number.doubleValue
            switch String(cString: number.objCType) {
            case "f", "d":
                self.exactInteger = Int64(exactly: number.doubleValue)
            case "C", "S", "I", "L", "Q":
                self.exactInteger = Int64(exactly: number.uint64Value)
            default:
                self.exactInteger = number.int64Value
            }
        }

        var isInteger: Bool { self.value.isFinite && self.value.rounded(.towardZero) == self.value }

        static func == (lhs: Number, rhs: Number) -> Bool {
            if let left = lhs.exactInteger, let right = rhs.exactInteger { return left == right }
            return lhs.value == rhs.value
        }

        var rendered: String {
            if let integer = self.exactInteger { return String(integer) }
            return String(self.value)
        }
    }
}

extension JSONSchema {
    /// What a `JSONSerialization` value is, looked at one level deep.
    fileprivate enum Kind {
        case null
        case boolean(Bool)
        case number(Number)
        case string(String)
        case array([Any])
        case object([String: Any])
        case unsupported

        init(of value: Any) {
            if value is NSNull {
                self = .null
            } else if let string = value as? String {
                self = .string(string)
            } else if let number = value as? NSNumber {
                // On Linux, JSONSerialization gives NSNumber for booleans too, and `as? Bool` accepts
                // 0 and 1; booleans are the distinct boolean subclass (Swift Bool bridges to it as well).
                if type(of: number) == type(of: NSNumber(value: true)) {
                    self = .boolean(number.boolValue)
                } else {
                    self = .number(Number(number))
                }
            } else if let array = value as? [Any] {
                self = .array(array)
            } else if let object = value as? [String: Any] {
                self = .object(object)
            } else {
                self = .unsupported
            }
        }

        func isOfType(_ type: JSONSchema.ValueType) -> Bool {
            switch (type, self) {
            case (.null, .null), (.boolean, .boolean), (.number, .number), (.string, .string),
                 (.array, .array), (.object, .object):
                return true
            case (.integer, .number(let number)):
                return number.isInteger
            default:
                return false
            }
        }

        /// The type name used in messages; integral numbers are "integer".
        var name: String {
            switch self {
            case .null: "null"
            case .boolean: "boolean"
            case .number(let number): number.isInteger ? "integer" : "number"
            case .string: "string"
            case .array: "array"
            case .object: "object"
            case .unsupported: "a non-JSON value"
            }
        }
    }
}

extension JSONSchema {
    /// A JSON value held by a schema (`enum`, `const`).
    fileprivate enum Value: Sendable, Equatable {
        case null
        case boolean(Bool)
        case number(Number)
        case string(String)
        case array([Value])
        case object([String: Value])

        /// Converts a `JSONSerialization` value no more than `depth` containers deep; nil otherwise.
        init?(_ value: Any, depth: Int) {
            switch Kind(of: value) {
            case .null: self = .null
            case .boolean(let boolean): self = .boolean(boolean)
            case .number(let number): self = .number(number)
            case .string(let string): self = .string(string)
            case .array(let elements):
                guard depth > 0 else { return nil }
                var converted: [Value] = []
                for element in elements {
                    guard let element = Value(element, depth: depth - 1) else { return nil }
                    converted.append(element)
                }
                self = .array(converted)
            case .object(let members):
                guard depth > 0 else { return nil }
                var converted: [String: Value] = [:]
                for (key, member) in members {
                    guard let member = Value(member, depth: depth - 1) else { return nil }
                    converted[key] = member
                }
                self = .object(converted)
            case .unsupported:
                return nil
            }
        }

        /// Whether `value` equals this one as JSON (true is not 1; 1 is 1.0). Recurses only as deep
        /// as this value, which parsing bounded, however deep `value` is.
        func matches(_ value: Any) -> Bool {
            switch (self, Kind(of: value)) {
            case (.null, .null):
                return true
            case (.boolean(let expected), .boolean(let actual)):
                return expected == actual
            case (.number(let expected), .number(let actual)):
                return expected == actual
            case (.string(let expected), .string(let actual)):
                return expected == actual
            case (.array(let expected), .array(let actual)):
                return expected.count == actual.count && zip(expected, actual).allSatisfy { $0.matches($1) }
            case (.object(let expected), .object(let actual)):
                guard expected.count == actual.count else { return false }
                return expected.allSatisfy { key, member in actual[key].map { member.matches($0) } ?? false }
            default:
                return false
            }
        }

        /// JSON text for messages, cut short ("…") after about 100 bytes so a large value cannot make a huge message.
        var rendered: String {
            var text = ""
            self.render(into: &text, limit: 100)
            return text
        }

        private func render(into text: inout String, limit: Int) {
            switch self {
            case .null: text += "null"
            case .boolean(let boolean): text += boolean ? "true" : "false"
            case .number(let number): text += number.rendered
            case .string(let string): text += Self.quoted(string)
            case .array(let elements):
                text += "["
                for (index, element) in elements.enumerated() {
                    if index > 0 { text += "," }
                    guard text.utf8.count < limit else { text += "…"; break }
                    element.render(into: &text, limit: limit)
                }
                text += "]"
            case .object(let members):
                text += "{"
                for (index, key) in members.keys.sorted().enumerated() {
                    if index > 0 { text += "," }
                    guard text.utf8.count < limit, let member = members[key] else { text += "…"; break }
                    text += Self.quoted(key) + ":"
                    member.render(into: &text, limit: limit)
                }
                text += "}"
            }
        }

        /// A JSON string literal of at most 80 scalars.
        static func quoted(_ string: String) -> String {
            var text = "\""
            for scalar in string.unicodeScalars.prefix(80) {
                switch scalar {
                case "\"": text += "\\\""
                case "\\": text += "\\\\"
                case _ where scalar.value < 0x20: text += scalar.escaped(asASCII: true)
                default: text.unicodeScalars.append(scalar)
                }
            }
            return text + (!string.unicodeScalars.dropFirst(80).isEmpty ? "…\"" : "\"")
        }

        /// `"a", "b", "c"`, cut short so a long `enum` cannot make a huge message.
        static func renderedList(_ values: [Value]) -> String {
            let shown = values.prefix(10).map(\.rendered).joined(separator: ", ")
            return values.count > 10 ? shown + ", … (\(values.count) values)" : shown
        }
    }
}
