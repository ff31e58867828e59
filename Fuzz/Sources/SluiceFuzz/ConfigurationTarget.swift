@testable import SluiceApp

/// The configuration loader on any YAML text and `SLUICE_*` environment: the result is a
/// configuration that passes `validate()` or a `ConfigurationError` (typed throws make any other
/// error impossible; what is left to find is a trap, a hang or unbounded memory), the same input
/// always gives the same result, and every error can be printed.
///
/// Input: YAML text, then a NUL byte, then environment lines `NAME=value` (a name without the
/// `SLUICE_` or `OTEL_` prefix gets `SLUICE_`, so the dictionary's key names reach the settings).
enum ConfigurationTarget {
    static func run(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        let split = bytes.firstIndex(of: 0) ?? bytes.endIndex
        let yaml = String(decoding: bytes[..<split], as: UTF8.self)
        var environment: [String: String] = [:]
        if split < bytes.endIndex {
            for line in String(decoding: bytes[(split + 1)...], as: UTF8.self).split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                var name = String(parts[0]).uppercased()
                if !name.hasPrefix("SLUICE_") && !name.hasPrefix("OTEL_") { name = "SLUICE_" + name }
                environment[name] = parts.count > 1 ? String(parts[1]) : ""
            }
        }

        let first = Self.load(yaml: yaml, environment: environment).mapError(Self.withoutYAMLPosition)
        let second = Self.load(yaml: yaml, environment: environment).mapError(Self.withoutYAMLPosition)
        require(first == second, "the same input loaded twice gives different results: \(first) and then \(second)")
        if case .failure(let error) = first {
            require(!error.description.isEmpty, "an error without a description")
        }
    }

    /// Yams reports duplicate mapping keys at the first key of an unstable sort (its `Node`
    /// ordering is not total across scalars and collections), so for a file with duplicated
    /// complex keys the line in the error can differ between two loads. Known, harmless (the
    /// message is the same), and Yams', so the position of a YAML syntax error is not compared.
    static func withoutYAMLPosition(_ error: ConfigurationError) -> ConfigurationError {
        guard error.kind == .invalidYAML else { return error }
        var error = error
        error.source = nil
        return error
    }

    static func load(yaml: String, environment: [String: String]) -> Result<SluiceConfiguration, ConfigurationError> {
        var configuration = SluiceConfiguration()
        do throws(ConfigurationError) {
            try ConfigurationLoader.applyYAML(yaml, path: "fuzz.yaml", to: &configuration)
            try ConfigurationLoader.applyEnvironment(environment, to: &configuration)
            try configuration.validate()
            return .success(configuration)
        } catch {
            return .failure(error)
        }
    }
}
