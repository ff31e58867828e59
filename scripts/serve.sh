#!/usr/bin/env bash
# The README's first command: installs the system libraries the build needs when they are
# missing (scripts/install-deps.sh --build), then runs the gateway with its embedded defaults
# (ws://127.0.0.1:8080/v1/ws, the built-in simulator, history in ./.sluice/). Arguments go to
# `sluice serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --build
export PATH=/opt/swift/usr/bin:$PATH
exec swift run -c release sluice serve "$@"
