#!/usr/bin/env bash
# The policy path's cost per request: time to first token with everything on (JWT auth, per-user
# and per-address request and token limits in Redis, a token quota read from storage, a pool of
# two replicas) against the same gateway with all of it off, in one run, on loopback.
# The simulator answers at once (no time to first token, tokens as fast as possible), so the
# time to first token is the gateway's own path: what the policy adds shows up there.
#
#   loadtest/policy-bench.sh [-u USERS] [-c REQUESTS] [-r ROUNDS]
#
# Both gateways use Redis (fan-out) and SQLite, so only the policy differs. Rounds alternate
# off/on to spread machine noise. Prints one line per run and a summary; JSON in loadtest/results/.
# Build first: swift build -c release --product sluice && swift build -c release --product sluice-loadtest
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.build/release"
users=20 requests=3000 rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    -u) users="$2"; shift 2 ;;
    -c) requests="$2"; shift 2 ;;
    -r) rounds="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for b in sluice sluice-loadtest; do
  [ -x "$bin/$b" ] || { echo "build first: swift build -c release --product $b" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
source "$root/loadtest/lib.sh" policy-bench

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" --daemonize no > "$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

secret="policy-bench-secret-0123456789abcdef0123"
common=(
  SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN=0ms SLUICE_SIMULATOR_TOKENS_PER_SECOND=0 SLUICE_SIMULATOR_ANSWER_TOKENS=5
  SLUICE_SERVER_EVENT_LOOP_THREADS=1 SLUICE_LOG_LEVEL=warning SLUICE_REDIS_URL="redis://127.0.0.1:$redis_port"
  SLUICE_LIMITS_MESSAGES_PER_SECOND_PER_CONNECTION=0 SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS=0
)
off_port=$(free_port)
env "${common[@]}" SLUICE_REDIS_KEY_PREFIX="off:" $server_cpu "$bin/sluice" serve --port "$off_port" --admin-port 0 --data-dir "$tmp/off" \
  > "$tmp/off.log" 2>&1 &
pids+=($!)
# Everything on: auth, limits far above the load (so nothing is refused: this measures the
# checks, not refusals), a quota (read on every request), a pool of two replicas.
"$bin/sluice" quota set bench --limit 1000000000000 --data-dir "$tmp/on" > /dev/null
on_port=$(free_port)
# ?token= (how the harness passes its JWT) is opt-in: auth.query_parameter.
env "${common[@]}" SLUICE_REDIS_KEY_PREFIX="on:" SLUICE_JWT_SECRET="$secret" SLUICE_AUTH_QUERY_PARAMETER=token \
  SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_USER=100000000 SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_USER=1000000000 \
  SLUICE_LIMITS_REQUESTS_PER_MINUTE_PER_IP=100000000 SLUICE_LIMITS_TOKENS_PER_MINUTE_PER_IP=1000000000 \
  SLUICE_UPSTREAMS='[{name: sim-a, pool: sim, kind: sim}, {name: sim-b, pool: sim, kind: sim}]' \
  $server_cpu "$bin/sluice" serve --port "$on_port" --admin-port 0 --data-dir "$tmp/on" > "$tmp/on.log" 2>&1 &
pids+=($!)
wait_ready "$off_port"
wait_ready "$on_port"
token=$(env -u SLUICE_CONFIG SLUICE_JWT_SECRET="$secret" "$bin/sluice" token --sub bench --ttl 3600)

mkdir -p "$root/loadtest/results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
run() {  # name url
  local out="$root/loadtest/results/policy-$1-$stamp-$round.json"
  $client_cpu "$bin/sluice-loadtest" chat --url "$2" --users "$users" --count "$requests" --max-tokens 5 --threads 1 --quiet \
    --json-file "$out" > /dev/null
  python3 - "$1" "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
t = r["time_to_first_token_ms"]
print(f'{sys.argv[1]:4} answers {r["answers"]:6}  errors {sum(r["errors"].values()):3}  ttft p50 {t["p50"]:.3f} ms  p99 {t["p99"]:.3f} ms  p99.9 {t["p99.9"]:.3f} ms')
PY
}
for round in $(seq 1 "$rounds"); do
  run off "ws://127.0.0.1:$off_port/v1/ws?user=bench"
  run on "ws://127.0.0.1:$on_port/v1/ws?token=$token"
done
python3 - "$root/loadtest/results" "$stamp" <<'PY'
import glob, json, sys
def pick(name):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/policy-{name}-{sys.argv[2]}-*.json"))]
    return [r["time_to_first_token_ms"] for r in runs], sum(sum(r["errors"].values()) for r in runs)
off, off_errors = pick("off")
on, on_errors = pick("on")
med = lambda rows, key: sorted(row[key] for row in rows)[len(rows) // 2]
for key in ("p50", "p99"):
    a, b = med(off, key), med(on, key)
    print(f"policy path adds {b - a:+.3f} ms at {key} ({a:.3f} -> {b:.3f} ms, x{b / a:.2f}); median of {len(off)} rounds each")
print(f"errors: off {off_errors}, on {on_errors}")
PY
