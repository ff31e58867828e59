// The entry point of sluice-fuzz. SwiftPM links every executable target with
// `--defsym main=<module>_main` (so tests can link executables), which would hide libFuzzer's own
// `main`; this `sluice_fuzz_main` is that symbol, and it hands over to libFuzzer's driver.
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);  // Entry.swift

int sluice_fuzz_main(int argc, char **argv) {
    return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput);
}
