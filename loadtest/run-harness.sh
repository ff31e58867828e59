#!/usr/bin/env bash
# sluice-loadtest against 1, 2 or 3 Sluice instances on loopback (simulator upstream), with
# Redis between them when there are several. Starts everything itself on free ports, runs the
# scenarios, prints the harness's tables (and JSON lines into loadtest/results/), and stops only
# the processes it started, by PID.
#
#   loadtest/run-harness.sh [-n INSTANCES] [-u USERS] [-d SECONDS] [--tps TOKENS_PER_S]
#                           [--tokens N] [--ttft MS] [--scenarios "chat resume"] [--echo]
#
#   -n           instances (default 1); with more than one they share a redis-server
#   -u           virtual users (default 1000)
#   -d           seconds per scenario (default 20)
#   --tps        simulator tokens per second per answer (default 20; 0 = as fast as possible)
#   --tokens     tokens per answer (max_tokens, default 100)
#   --ttft       simulator time to first token in ms (default 200)
#   --scenarios  harness scenarios to run in order (default "chat resume")
#   --echo       instead: `sluice serve --echo` and the echo scenario (the harness's ceiling)
# The servers run on CPU 0 and the harness on CPU 1 (taskset) when the machine has 2+ cores.
# Build first: swift build -c release --product sluice && swift build -c release --product sluice-loadtest
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.build/release"
instances=1 users=1000 duration=20 tps=20 tokens=100 ttft=200 scenarios="chat resume" echo=false
while [ $# -gt 0 ]; do
  case "$1" in
    -n) instances="$2"; shift 2 ;;
    -u) users="$2"; shift 2 ;;
    -d) duration="$2"; shift 2 ;;
    --tps) tps="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --ttft) ttft="$2"; shift 2 ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --echo) echo=true; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for b in sluice sluice-loadtest; do
  [ -x "$bin/$b" ] || { echo "build first: swift build -c release --product $b" >&2; exit 1; }
done
ulimit -n 20000 2>/dev/null || true
source "$root/loadtest/lib.sh" harness

redis_args=()
if [ "$instances" -gt 1 ] && ! $echo; then
  rport="$(free_port)"
  $server_cpu redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis_args=(--redis-url "redis://127.0.0.1:$rport/0")
fi

urls=()
for i in $(seq 0 $((instances - 1))); do
  port="$(free_port)"
  args=(serve --host 127.0.0.1 --port "$port" --admin-port 0 --threads 1 --max-connections 20000 --log-level warning --database-url memory)
  $echo && args+=(--echo)
  env -u SLUICE_CONFIG SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS=0 SLUICE_INSTANCE_ID="gw-$i" SLUICE_SIMULATOR_TOKENS_PER_SECOND="$tps" \
    SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN="${ttft}ms" SLUICE_SIMULATOR_ANSWER_TOKENS="$tokens" \
    $server_cpu "$bin/sluice" "${args[@]}" "${redis_args[@]}" >"$tmp/sluice-$i.log" 2>&1 &
  pids+=($!)
  urls+=(--url "ws://127.0.0.1:$port/v1/ws")
  wait_ready "$port"
done

mkdir -p "$root/loadtest/results"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
$echo && scenarios="echo"
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user+system clock ticks
server_pids=("${pids[@]}")
for scenario in $scenarios; do
  before=0; for pid in "${server_pids[@]}"; do before=$((before + $(cpu_of "$pid"))); done
  echo "== $scenario: $instances instance(s), $users users, ${duration}s$($echo || echo ", simulator ${ttft} ms + $tokens tokens at $tps/s")"
  extra=(--max-tokens "$tokens")
  $echo && extra=()
 $client_cpu /usr/bin/time -f "cpu: harness %U s user + %S s system, wall %e s" "$bin/sluice-loadtest" "$scenario" "${urls[@]}" --users "$users" --duration "$duration" \
    --ramp-up 2 "${extra[@]}" --quiet --threads 1 --json-file "$root/loadtest/results/harness-$scenario-$instances-$stamp.json"
  after=0; for pid in "${server_pids[@]}"; do after=$((after + $(cpu_of "$pid"))); done
  echo "cpu: servers (and redis) $(python3 -c "print(f'{($after - $before) / $(getconf CLK_TCK):.1f}')") s"
  for i in $(seq 0 $((instances - 1))); do
    [ -s "$tmp/sluice-$i.log" ] && { echo "-- gw-$i log:"; tail -5 "$tmp/sluice-$i.log"; }
  done
done
