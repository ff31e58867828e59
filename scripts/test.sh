#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing
# (scripts/install-deps.sh --test), then runs `swift test` (arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
export PATH=/opt/swift/usr/bin:$PATH
swift build --build-tests
exec swift test "$@"
