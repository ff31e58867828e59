#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against `sluice serve --echo` (release build,
# permessage-deflate on, config/autobahn.yaml) and checks that the server is still healthy after.
#
# Usage: scripts/autobahn.sh [CASES]
#   CASES  Autobahn case patterns (default: every case, "1.* ... 13.*")
# Environment: AUTOBAHN_PORT (default 9001), AUTOBAHN_OUT (report folder, default .build/autobahn),
#   SHARED_DIR (default ../shared next to the repository).
# Exit status: 0 when no case FAILED (OK, NON-STRICT and INFORMATIONAL are fine), else non-zero.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_DIR:-$root/../shared}
cases=${1:-"1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.*,13.*"}
port=${AUTOBAHN_PORT:-9001}
out=${AUTOBAHN_OUT:-$root/.build/autobahn}
mkdir -p "$out"

(cd "$root" && swift build -c release --product sluice >&2)
"$root/.build/release/sluice" serve --config "$root/config/autobahn.yaml" --port "$port" --admin-port 0 --log-level warning \
  > "$out/server.log" 2>&1 &
pid=$!
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$out/server.log" >&2; echo "autobahn.sh: server exited" >&2; exit 2; }
  sleep 0.1
done

start=$SECONDS
rc=0
bash "$shared/tools/autobahn/run-autobahn.sh" "ws://127.0.0.1:$port/v1/ws" "$out" "$cases" || rc=$?
echo "autobahn.sh: cases \"$cases\" took $((SECONDS - start))s" >&2

# The suite throws malformed frames, zip bombs and abrupt closes: the server must still serve.
if ! curl -fs "http://127.0.0.1:$port/health" >/dev/null; then
  echo "autobahn.sh: server not healthy after the suite" >&2
  rc=1
fi
exit $rc
