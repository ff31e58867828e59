#!/usr/bin/env bash
# The job queue benchmark (loadtest/jobs-bench.py): release build, a venv with `websockets`,
# then the run. Arguments go to jobs-bench.py (e.g. --jobs 5000 --workers 1,2,4).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
(cd "$root" && swift build -c release --product sluice >&2)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/sluice-e2e-venv
if ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q websockets
fi
cd "$root"
exec "$venv/bin/python" loadtest/jobs-bench.py --sluice "$root/.build/release/sluice" "$@"
