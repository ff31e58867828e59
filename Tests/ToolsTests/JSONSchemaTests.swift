import Foundation
import Testing
import Tools

/// Values as a model's tool call arrives: parsed by JSONSerialization, so booleans and numbers are NSNumber.
private func parsed(_ json: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed])
}

/// The error a schema gives, or nil if it parses (which then fails the `#expect` using it).
private func schemaError(_ json: String) -> JSONSchemaError? {
    do {
        _ = try JSONSchema(json: json)
        return nil
    } catch {
        return error
    }
}

@Suite struct JSONSchemaValidationTests {
    let weather: JSONSchema

    init() throws {
        self.weather = try JSONSchema(json: #"""
            {
              "$schema": "http://json-schema.org/draft-07/schema#",
              "title": "get_weather", "description": "Weather for a city",
              "type": "object",
              "properties": {
                "location": {"type": "string", "description": "City", "minLength": 2, "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "verbose": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "minItems": 1, "maxItems": 3},
                "ratio": {"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1}
              },
              "required": ["location", "unit"],
              "additionalProperties": false
            }
            """#)
    }

    @Test func validArgumentsPass() throws {
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius"}"#)).isEmpty)
        #expect(weather.validate(try parsed(
            #"{"location":"Paris","unit":"celsius","days":3,"verbose":true,"tags":["a","bc"],"ratio":0.5}"#)).isEmpty)
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","days":3.0,"ratio":null}"#)).isEmpty)
    }

    @Test func requiredAndEnum() throws {
        #expect(weather.validate(try parsed(#"{"unit":"kelvin"}"#)) == [
            #"$: missing required property "location""#,
            #"$.unit: must be one of "celsius", "fahrenheit""#,
        ])
    }

    @Test func additionalPropertiesFalse() throws {
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","extra":1}"#))
            == ["$.extra: additional property is not allowed"])
    }

    @Test func boundsAndLengths() throws {
        #expect(weather.validate(try parsed(#"{"location":"P","unit":"celsius","days":0}"#)) == [
            "$.days: must be >= 1",
            "$.location: expected at least 2 characters, got 1",
        ])
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","days":15}"#)) == ["$.days: must be <= 14"])
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","ratio":1}"#)) == ["$.ratio: must be < 1"])
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","ratio":0}"#)) == ["$.ratio: must be > 0"])
    }

    @Test func arraysReportIndexedPaths() throws {
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","tags":[]}"#))
            == ["$.tags: expected at least 1 items, got 0"])
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","tags":["a","B1",3,"d"]}"#)) == [
            "$.tags: expected at most 3 items, got 4",
            #"$.tags[1]: does not match pattern "^[a-z]+$""#,
            "$.tags[2]: expected string, got integer",
        ])
    }

    @Test func typeMismatches() throws {
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","days":2.5}"#))
            == ["$.days: expected integer, got number"])
        #expect(weather.validate(try parsed(#"{"location":"Paris","unit":"celsius","ratio":"x"}"#))
            == ["$.ratio: expected number or null, got string"])
        #expect(weather.validate(try parsed(#"{"location":null,"unit":"celsius"}"#)) == ["$.location: expected string, got null"])
        #expect(weather.validate(try parsed("[1]")) == ["$: expected object, got array"])
        #expect(weather.validate(try parsed("null")) == ["$: expected object, got null"])
    }

    @Test func nestedPaths() throws {
        let schema = try JSONSchema(json: #"""
            {"type":"object","properties":{"items":{"type":"array","items":{"type":"object",
             "properties":{"id":{"type":"integer"}},"required":["id"]}}}}
            """#)
        #expect(schema.validate(try parsed(#"{"items":[{"id":1},{"id":"2"},{}]}"#)) == [
            "$.items[1].id: expected integer, got string",
            #"$.items[2]: missing required property "id""#,
        ])
    }

    @Test func additionalPropertiesSchemaAndQuotedKeys() throws {
        let schema = try JSONSchema(json: #"{"properties":{"a":{}},"additionalProperties":{"type":"integer"}}"#)
        #expect(schema.validate(try parsed(#"{"a":"x","b":1}"#)).isEmpty)
        #expect(schema.validate(try parsed(#"{"a":"x","b c":"y","_d":"z"}"#)) == [
            "$._d: expected integer, got string",
            #"$["b c"]: expected integer, got string"#,
        ])
    }

    @Test func atMostTwentyErrors() throws {
        let schema = try JSONSchema(json: #"{"items":{"type":"string"}}"#)
        let numbers = "[" + (0..<100).map(String.init).joined(separator: ",") + "]"
        let errors = schema.validate(try parsed(numbers))
        #expect(errors.count == JSONSchema.maximumErrors)
        #expect(errors.count == 20)
        #expect(errors.first == "$[0]: expected string, got integer")
    }
}

@Suite struct JSONSchemaBooleanTests {
    @Test(arguments: ["true", "false"])
    func booleansAreNotNumbers(json: String) throws {
        let value = try parsed(json)
        #expect(try JSONSchema(json: #"{"type":"boolean"}"#).validate(value).isEmpty)
        #expect(try JSONSchema(json: #"{"type":"number"}"#).validate(value) == ["$: expected number, got boolean"])
        #expect(try JSONSchema(json: #"{"type":"integer"}"#).validate(value) == ["$: expected integer, got boolean"])
    }

    @Test(arguments: ["0", "1", "-7", "3.0", "12345678901234567890"])
    func integersAreNotBooleans(json: String) throws {
        let value = try parsed(json)
        #expect(try JSONSchema(json: #"{"type":"integer"}"#).validate(value).isEmpty)
        #expect(try JSONSchema(json: #"{"type":"number"}"#).validate(value).isEmpty)
        #expect(try JSONSchema(json: #"{"type":"boolean"}"#).validate(value) == ["$: expected boolean, got integer"])
    }

    @Test func fractionsAreNumbersNotIntegers() throws {
        let value = try parsed("3.5")
        #expect(try JSONSchema(json: #"{"type":"number"}"#).validate(value).isEmpty)
        #expect(try JSONSchema(json: #"{"type":"integer"}"#).validate(value) == ["$: expected integer, got number"])
    }

    @Test func enumAndConstCompareBooleansAndNumbersApart() throws {
        let mixed = try JSONSchema(json: #"{"enum":[1, "one", true, null, 2.5]}"#)
        for json in ["1", "1.0", #""one""#, "true", "null", "2.5"] {
            #expect(mixed.validate(try parsed(json)).isEmpty, "\(json)")
        }
        #expect(mixed.validate(try parsed("false")) == [#"$: must be one of 1, "one", true, null, 2.5"#])
        #expect(mixed.validate(try parsed("0")).count == 1)
        #expect(try JSONSchema(json: #"{"enum":[true]}"#).validate(try parsed("1")) == ["$: must be one of true"])
        #expect(try JSONSchema(json: #"{"enum":[1]}"#).validate(try parsed("true")) == ["$: must be one of 1"])
        let zero = try JSONSchema(json: #"{"const":0}"#)
        #expect(zero.validate(try parsed("0.0")).isEmpty)
        #expect(zero.validate(try parsed("false")) == ["$: must be 0"])
    }

    @Test func swiftValuesWorkToo() throws {
        #expect(try JSONSchema(json: #"{"type":"boolean"}"#).validate(true).isEmpty)
        #expect(try JSONSchema(json: #"{"type":"boolean"}"#).validate(1).count == 1)
        #expect(try JSONSchema(json: #"{"type":"number"}"#).validate(true).count == 1)
        #expect(try JSONSchema(json: #"{"type":"integer"}"#).validate(3).isEmpty)
        #expect(try JSONSchema(json: #"{"type":"object"}"#).validate(["a": 1] as [String: Any]).isEmpty)
        #expect(try JSONSchema(json: #"{"type":"null"}"#).validate(NSNull()).isEmpty)
        let built = try JSONSchema(jsonObject: ["type": "string", "minLength": 2] as [String: Any])
        #expect(built.validate("a") == ["$: expected at least 2 characters, got 1"])
    }
}

@Suite struct JSONSchemaKeywordTests {
    @Test func constComparesStructure() throws {
        let schema = try JSONSchema(json: #"{"const":{"a":[1,{"b":null}]}}"#)
        #expect(schema.validate(try parsed(#"{"a":[1,{"b":null}]}"#)).isEmpty)
        #expect(schema.validate(try parsed(#"{"a":[1,{"b":0}]}"#)) == [#"$: must be {"a":[1,{"b":null}]}"#])
        #expect(schema.validate(try parsed(#"{"a":[1,{"b":null}],"c":1}"#)).count == 1)
        let large = try JSONSchema(json: #"{"const":12345678901234567}"#)
        #expect(large.validate(try parsed("12345678901234567")).isEmpty)
        #expect(large.validate(try parsed("12345678901234568")).count == 1)
    }

    @Test func lengthsCountUnicodeScalars() throws {
        let schema = try JSONSchema(json: #"{"type":"string","minLength":2,"maxLength":3}"#)
        #expect(schema.validate("éé").isEmpty)
        #expect(schema.validate("😀😀😀").isEmpty)
        #expect(schema.validate("😀😀😀😀") == ["$: expected at most 3 characters, got 4"])
        #expect(schema.validate("e\u{301}").isEmpty)  // one character, two scalars
        #expect(schema.validate("a") == ["$: expected at least 2 characters, got 1"])
    }

    @Test func patternMatchesAnywhere() throws {
        let schema = try JSONSchema(json: #"{"pattern":"b+"}"#)
        #expect(schema.validate("abbbc").isEmpty)
        #expect(schema.validate("ac") == [#"$: does not match pattern "b+""#])
        #expect(schema.validate(5).isEmpty)  // pattern applies to strings only
    }

    @Test func ignoredKeywords() throws {
        let schema = try JSONSchema(json: #"""
            {"type":"string","description":"d","title":"t","default":"x","format":"date","$schema":"s","x-extra":{}}
            """#)
        #expect(schema.validate("anything").isEmpty)
    }

    @Test func equality() throws {
        #expect(try JSONSchema(json: #"{"type":"string","pattern":"a"}"#) == JSONSchema(json: #"{"pattern":"a","type":"string"}"#))
        #expect(try JSONSchema(json: #"{"type":"string","pattern":"a"}"#) != JSONSchema(json: #"{"type":"string","pattern":"b"}"#))
        #expect(try JSONSchema(json: #"{"items":{"type":"string"}}"#) != JSONSchema(json: #"{"items":{"type":"number"}}"#))
    }
}

@Suite struct JSONSchemaParsingTests {
    @Test(arguments: [
        ("[]", "must be an object"),
        ("1", "must be an object"),
        ("{", "not valid JSON"),
        (#"{"type":"strin"}"#, #"unknown type "strin""#),
        (#"{"type":5}"#, #""type""#),
        (#"{"type":[]}"#, #""type""#),
        (#"{"properties":[]}"#, #""properties" must be an object"#),
        (#"{"properties":{"a":1}}"#, "#/properties/a: a schema must be an object"),
        (#"{"properties":{"a/b":{"minLength":"3"}}}"#, #"#/properties/a~1b: "minLength" must be a non-negative integer"#),
        (#"{"required":"a"}"#, #""required""#),
        (#"{"required":["a",1]}"#, #""required""#),
        (#"{"additionalProperties":"no"}"#, #""additionalProperties""#),
        (#"{"items":[{}]}"#, #""items""#),
        (#"{"enum":"a"}"#, #""enum""#),
        (#"{"minItems":-1}"#, #""minItems""#),
        (#"{"maxItems":1.5}"#, #""maxItems""#),
        (#"{"maxLength":true}"#, #""maxLength""#),
        (#"{"minimum":"1"}"#, #""minimum""#),
        (#"{"exclusiveMaximum":true}"#, #""exclusiveMaximum""#),
        (#"{"pattern":"("}"#, "not a valid regular expression"),
        (#"{"pattern":1}"#, #""pattern" must be a string"#),
    ])
    func malformedSchemasAreRejected(json: String, expected: String) {
        let error = schemaError(json)
        #expect(error?.message.contains(expected) == true, "\(String(describing: error))")
    }

    @Test func nestingIsBounded() throws {
        var deep = "{}"
        for _ in 0..<40 { deep = #"{"items":\#(deep)}"# }
        #expect(schemaError(deep)?.message.contains("nested too deeply") == true)

        var deepest = "{}"
        for _ in 0..<JSONSchema.maximumDepth { deepest = #"{"items":\#(deepest)}"# }
        let schema = try JSONSchema(json: deepest)

        var deepConst = "1"
        for _ in 0..<40 { deepConst = "[\(deepConst)]" }
        #expect(schemaError(#"{"const":\#(deepConst)}"#)?.message.contains("nested too deeply") == true)

        // A value far deeper than any schema is checked only as deep as the schema goes.
        var deepValue = "1"
        for _ in 0..<400 { deepValue = "[\(deepValue)]" }
        let value = try parsed(deepValue)
        #expect(schema.validate(value).isEmpty)
        #expect(try JSONSchema(json: "{}").validate(value).isEmpty)
        #expect(try JSONSchema(json: #"{"const":[[1]]}"#).validate(value) == ["$: must be [[1]]"])
    }
}
