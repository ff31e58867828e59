#!/usr/bin/env bash
# Echo throughput and idle-connection memory of `sluice serve --echo`, side by side with the
# peer servers of ../shared/tools/wsbench (minimal SwiftNIO, Node ws, Python websockets, picows,
# uWebSockets via socketify) in the same run, each pinned to CPU 0 with the load generator on CPU 1.
#
# Usage: loadtest/run-wsbench.sh [run-all.sh options...]
#   default: --scenarios "echo_c100_w1 echo_c1000_w4 idle_k10000" --reps 3 --duration 10
#   e.g.     loadtest/run-wsbench.sh --peers "nio nodews" --reps 1 --duration 5
# Results: summary.md / summary.json / raw.jsonl under $WSBENCH_OUT (default loadtest/results/<time>),
# with a "msgs/s / nio" ratio column; copy the figures into loadtest/RESULTS.md.
# Loopback only; every run is bounded in time; servers are stopped by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
wsbench=${WSBENCH_DIR:-$root/../shared/tools/wsbench}
[ -x "$wsbench/run-all.sh" ] || { echo "wsbench not found at $wsbench (set WSBENCH_DIR)" >&2; exit 2; }

(cd "$root" && swift build -c release --product sluice >&2)
bin="$root/.build/release/sluice"
out=${WSBENCH_OUT:-$root/loadtest/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

# One event loop thread, like the peers; limits high enough for 10k/19k idle connections.
# SLUICE_CONFIG is cleared so a developer's own file cannot change the measured setup.
# SLUICE_SERVE_ARGS replaces --echo and SLUICE_SERVE_ENV adds environment settings, e.g. to
# stream from the simulator (see RESULTS.md).
cmd="env -u SLUICE_CONFIG SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS=0 ${SLUICE_SERVE_ENV:-} $bin serve ${SLUICE_SERVE_ARGS:---echo} --host 127.0.0.1 --port {port} --admin-port 0 --threads 1 --max-connections 20000 --log-level warning"

args=("$@")
has() { local o; for o in "${args[@]}"; do [ "$o" = "$1" ] && return 0; done; return 1; }
has --scenarios || args+=(--scenarios "echo_c100_w1 echo_c1000_w4 idle_k10000")
has --reps || args+=(--reps 3)
has --duration || args+=(--duration 10)

"$wsbench/run-all.sh" --out "$out" --extra-name sluice --extra-url "ws://127.0.0.1:19180/v1/ws" \
  --extra-cmd "$cmd" "${args[@]}"
echo "results: $out/summary.md" >&2
