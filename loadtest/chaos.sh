#!/usr/bin/env bash
# Chaos at load, with exact accounting (issue 15 §4). On loopback, all started here and stopped by
# PID: two upstream replicas (`sluice serve` with the built-in simulator, used through their
# OpenAI-compatible /v1/chat/completions as one pool), three gateways sharing Redis (AOF on) and
# PostgreSQL (a throwaway cluster) behind nginx (deploy/nginx/sluice.conf.template), and
# `sluice-loadtest chaos` streaming USERS conversations through nginx. During the run, on a
# timeline: kill -9 one gateway (and start it again under the same instance id), restart Redis,
# stop PostgreSQL for a while, SIGSTOP one upstream replica for a while. Then it waits for the
# gateways' write queues to drain and `chaos-check.py` joins what every client received with
# what PostgreSQL stored. Exit status 1 when any must-be-zero figure is not zero.
#
#   loadtest/chaos.sh [--quick] [-u USERS] [-d SECONDS] [--tps N] [--tokens N] [--think MS]
#                     [--drop FRACTION] [--kill-at S] [--restart-after S|never] [--redis-at S]
#                     [--pg-at S] [--pg-down S] [--stall-at S] [--stall-for S] [--keep]
#
#   -u            virtual users (default 1000; --quick 100)
#   -d            seconds during which users send new requests (default 120; --quick 60); then
#                 they finish the answers in flight (at most --end-timeout, 120 s)
#   --tps         simulator tokens per second per answer (default 20)
#   --tokens      tokens per answer (max_tokens; default 200, a 10 s answer at 20/s)
#   --think       milliseconds between a user's answers (default 1000, ±50%)
#   --drop        share of answers a client drops on purpose mid-answer and resumes (default 0.05)
#   --kill-at     kill -9 gateway gw-2 at this second (default 25; --quick 12)
#   --restart-after  start gw-2 again (same instance id) this many seconds after the kill
#                 (default 2, like a supervisor; "never" leaves it dead)
#   --redis-at    restart Redis (SIGTERM, then the same port and AOF) at this second (default 50; --quick 24)
#   --pg-at       stop PostgreSQL (pg_ctl stop -m fast) at this second (default 70; --quick 32)
#   --pg-down     seconds PostgreSQL stays down (default 10)
#   --stall-at    SIGSTOP upstream replica 2 at this second (default 95; --quick 46)
#   --stall-for   seconds it stays stopped before SIGCONT (default 8; --quick 6)
#   --keep        keep the temporary directory (logs, records) and print its path
# Build first (or it is built here): swift build -c release --product sluice && swift build -c release --product sluice-loadtest
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.build/release"
users=1000 duration=120 tps=20 tokens=200 think=1000 drop=0.05
kill_at=25 restart_after=2 redis_at=50 pg_at=70 pg_down=10 stall_at=95 stall_for=8 end_timeout=120 keep=false
quick_defaults() { users=100 duration=60 kill_at=12 redis_at=24 pg_at=32 stall_at=46 stall_for=6; }
args=("$@")
for a in "${args[@]}"; do [ "$a" = "--quick" ] && quick_defaults; done
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) shift ;;
    -u) users="$2"; shift 2 ;;
    -d) duration="$2"; shift 2 ;;
    --tps) tps="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --think) think="$2"; shift 2 ;;
    --drop) drop="$2"; shift 2 ;;
    --kill-at) kill_at="$2"; shift 2 ;;
    --restart-after) restart_after="$2"; shift 2 ;;
    --redis-at) redis_at="$2"; shift 2 ;;
    --pg-at) pg_at="$2"; shift 2 ;;
    --pg-down) pg_down="$2"; shift 2 ;;
    --stall-at) stall_at="$2"; shift 2 ;;
    --stall-for) stall_for="$2"; shift 2 ;;
    --end-timeout) end_timeout="$2"; shift 2 ;;
    --keep) keep=true; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command="loadtest/chaos.sh ${args[*]:-}"
for b in sluice sluice-loadtest; do
  [ -x "$bin/$b" ] || (cd "$root" && swift build -c release --product "$b" 2>&1 | tail -3)
done
pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n | tail -1)"
[ -x "$pgbin/pg_ctl" ] || { echo "needs PostgreSQL (/usr/lib/postgresql/*/bin)" >&2; exit 1; }
nginx="$(command -v nginx || echo /usr/sbin/nginx)"
ulimit -n 65536 2>/dev/null || ulimit -n 20000 2>/dev/null || true

tmp="$(mktemp -d /tmp/sluice-chaos.XXXX)"
declare -A pid=()          # name -> PID of a process started here
pg_running=false
cleanup() {
  for name in "${!pid[@]}"; do kill -CONT "${pid[$name]}" 2>/dev/null || true; kill "${pid[$name]}" 2>/dev/null || true; done
  for name in "${!pid[@]}"; do wait "${pid[$name]}" 2>/dev/null || true; done
  if $pg_running; then $as_pg "$pgbin/pg_ctl" -D "$tmp/pg/data" -m immediate stop >/dev/null 2>&1 || true; fi
  if $keep; then echo "kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {  # what, seconds, command...
  local what="$1" limit="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "$what: not ready after ${limit}s" >&2; exit 1; }
    sleep 0.1
  done
}
ready() { curl -sf "http://127.0.0.1:$1/ready"; }
# Ready, or false at once if the process exited (a port taken since free_port picked it).
alive_and_ready() { kill -0 "$1" 2>/dev/null || return 2; ready "$2"; }
await_start() {  # name pid port: 0 ready, 1 exited early (retry on other ports)
  local deadline=$((SECONDS + 60)) status
  while [ $SECONDS -lt $deadline ]; do
    alive_and_ready "$2" "$3" >/dev/null 2>&1 && return 0
    status=$?
    [ $status -eq 2 ] && { echo "$1 exited at start (retrying on other ports): $(tail -1 "$tmp/$1.log")" >&2; wait "$2" 2>/dev/null || true; return 1; }
    sleep 0.1
  done
  echo "$1: not ready after 60s" >&2; exit 1
}
# Times in microseconds from bash's clock (no process per reading).
usec() { local t="${EPOCHREALTIME/./}"; echo "$((10#$t))"; }
t0="$(usec)"
now() { local d=$(( $(usec) - t0 )); printf '%d.%d' $((d / 1000000)) $(((d / 100000) % 10)); }
event() { echo "t=$(now)s $*" | tee -a "$tmp/timeline.log"; }

# --- PostgreSQL: a throwaway cluster (as the postgres user when run as root: initdb refuses root).
as_pg=""
mkdir -p "$tmp/pg"
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$tmp" "$tmp/pg"
  as_pg="setpriv --reuid=postgres --regid=postgres --init-groups"
fi
pgport="$(free_port)"
$as_pg "$pgbin/initdb" -D "$tmp/pg/data" -U sluice --auth=trust --encoding=UTF8 --locale=C >"$tmp/pg/initdb.log" 2>&1
pg_start() {
  # fsync off: the machine is shared and every stop here is clean (pg_ctl stop -m fast).
  $as_pg "$pgbin/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/postgres.log" -w -t 60 \
    -o "-p $pgport -k $tmp/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
  pg_running=true
}
pg_stop() { $as_pg "$pgbin/pg_ctl" -D "$tmp/pg/data" -m fast -w stop >/dev/null; pg_running=false; }
pg_start
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U sluice sluice
database_url="postgres://sluice:unused@127.0.0.1:$pgport/sluice?sslmode=disable"

# --- Redis with AOF: a restart keeps the resume logs, conversation cache and liveness keys.
# appendfsync everysec; a SIGTERM makes Redis write and fsync the AOF before it exits, so a
# restart loses nothing acknowledged (a kill -9 of Redis could lose up to a second).
rport="$(free_port)"
mkdir -p "$tmp/redis"
redis_start() {
  nice -n 0 redis-server --port "$rport" --bind 127.0.0.1 --dir "$tmp/redis" --save "" --appendonly yes \
    --appendfsync everysec --logfile "$tmp/redis/redis.log" &
  pid[redis]=$!
  wait_for redis 30 redis-cli -p "$rport" ping
}
redis_start
redis_url="redis://127.0.0.1:$rport/0"

# --- Upstream replicas: sluice serve with the simulator, through their OpenAI-compatible door.
upstreams=""
for r in 1 2; do
 for attempt in 1 2 3; do
  port="$(free_port)"
  # Every upstream request comes from 127.0.0.1: no per-address cap.
  env -u SLUICE_CONFIG SLUICE_INSTANCE_ID="replica-$r" SLUICE_SIMULATOR_TOKENS_PER_SECOND="$tps" \
    SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN=200ms SLUICE_SIMULATOR_ANSWER_TOKENS="$tokens" SLUICE_CACHE_ENABLED=false \
    SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS=0 \
    "$bin/sluice" serve --host 127.0.0.1 --port "$port" --admin-port 0 --threads 1 --max-connections 20000 --log-level warning \
    --database-url memory >"$tmp/replica-$r.log" 2>&1 &
  pid[replica-$r]=$!
  await_start "replica-$r" "${pid[replica-$r]}" "$port" && break
  [ "$attempt" -lt 3 ] || exit 1
 done
  upstreams+="${upstreams:+, }{name: replica-$r, pool: sim, kind: openai, base_url: \"http://127.0.0.1:$port\", model: sluice-simulator, max_concurrency: 0}"
done

# --- Three gateways: Redis, PostgreSQL, the pool of two replicas. A stalled replica is noticed
# by the between-tokens timeout (3 s) and, before a first token, the first-token timeout (5 s).
# Every client connection comes through nginx (one peer address): no per-address cap. The
# database URL goes in the environment (not argv). /v1/stats is read on each admin port.
gw_ports=() admin_ports=()
gateway_start() {  # index
  local i="$1"
  env -u SLUICE_CONFIG SLUICE_INSTANCE_ID="gw-$i" SLUICE_UPSTREAMS="[$upstreams]" \
    SLUICE_UPSTREAM_BETWEEN_TOKENS_TIMEOUT=3s SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT=5s SLUICE_CACHE_ENABLED=false \
    SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS=0 SLUICE_STORAGE_DATABASE_URL="$database_url" \
    "$bin/sluice" serve --host 127.0.0.1 --port "${gw_ports[$i]}" --admin-port "${admin_ports[$i]}" --threads 1 \
    --max-connections 20000 --log-level notice --redis-url "$redis_url" >>"$tmp/gw-$i.log" 2>&1 &
  pid[gw-$i]=$!
}
for i in 1 2 3; do
  for attempt in 1 2 3; do
    gw_ports[$i]="$(free_port)"
    admin_ports[$i]="$(free_port)"
    gateway_start "$i"
    await_start "gw-$i" "${pid[gw-$i]}" "${gw_ports[$i]}" && break
    [ "$attempt" -lt 3 ] || exit 1
  done
done

# --- nginx with the deploy template, for the three gateways.
nport="$(free_port)"
mkdir -p "$tmp/nginx"
servers=""
for i in 1 2 3; do servers+="server 127.0.0.1:${gw_ports[$i]} max_fails=3 fail_timeout=10s; "; done
sed -e "s|\${SLUICE_NGINX_LISTEN}|127.0.0.1:$nport|" -e "s|\${SLUICE_UPSTREAM_SERVERS}|$servers|" \
  -e "s|access_log /dev/stdout sluice;|access_log off;|" \
  "$root/deploy/nginx/sluice.conf.template" >"$tmp/nginx/sluice.conf"
cat >"$tmp/nginx/nginx.conf" <<EOF
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
worker_processes 1;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    client_body_temp_path $tmp/nginx/client_body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    include $tmp/nginx/sluice.conf;
}
EOF
"$nginx" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g "daemon off;" >"$tmp/nginx/nginx.out" 2>&1 &
pid[nginx]=$!
wait_for nginx 30 curl -sf "http://127.0.0.1:$nport/nginx-health"

# --- The run: the harness in the background, the faults on the timeline here.
echo "== chaos: $users users, ${duration}s, $tokens tokens at $tps/s, think ${think} ms, drops $drop; 3 gateways, 2 replicas, Redis (AOF), PostgreSQL, nginx"
t0="$(usec)"
"$bin/sluice-loadtest" chaos --url "ws://127.0.0.1:$nport/v1/ws" --users "$users" --duration "$duration" \
  --ramp-up "$(python3 -c "print(min(10, $duration / 6))")" --max-tokens "$tokens" --think-time "$think" \
  --drop-fraction "$drop" --end-timeout "$end_timeout" --prompt "Tell me about rivers" \
  --records "$tmp/records.jsonl" --json-file "$tmp/summary.json" >"$tmp/harness.out" 2>"$tmp/harness.err" &
harness=$!
event "start: $users users through nginx :$nport"

at() {  # sleep until second $1 of the run
  local target; target="$(python3 -c "print(int($1 * 1000000))")"
  local d=$(( target - ($(usec) - t0) ))
  [ $d -le 0 ] || sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
}
faults=()
[ "$kill_at" != never ] && faults+=("$kill_at kill")
[ "$kill_at" != never ] && [ "$restart_after" != never ] && faults+=("$(python3 -c "print($kill_at + $restart_after)") restart")
[ "$redis_at" != never ] && faults+=("$redis_at redis")
[ "$pg_at" != never ] && faults+=("$pg_at pgstop" "$(python3 -c "print($pg_at + $pg_down)") pgstart")
[ "$stall_at" != never ] && faults+=("$stall_at stall" "$(python3 -c "print($stall_at + $stall_for)") unstall")
while read -r when what; do
  at "$when"
  case "$what" in
    kill) kill -9 "${pid[gw-2]}"; wait "${pid[gw-2]}" 2>/dev/null || true; unset 'pid[gw-2]'; event "kill -9 gw-2" ;;
    restart)
      gateway_start 2; event "gw-2 started again (same instance id)"
      # Ready once it reaches Redis and PostgreSQL (maybe only after an outage): noted, not awaited.
      ( for _ in $(seq 1 1200); do ready "${gw_ports[2]}" >/dev/null 2>&1 && { event "gw-2 ready"; exit 0; }; sleep 0.1; done ) &
      ;;
    redis)
      kill -TERM "${pid[redis]}"; wait "${pid[redis]}" 2>/dev/null || true; event "redis stopped (SIGTERM)"
      redis_start; event "redis started again (same port, AOF)" ;;
    pgstop) pg_stop; event "postgresql stopped (pg_ctl stop -m fast)" ;;
    pgstart) pg_start; event "postgresql started again" ;;
    stall) kill -STOP "${pid[replica-2]}"; event "replica-2 stalled (SIGSTOP)" ;;
    unstall) kill -CONT "${pid[replica-2]}"; event "replica-2 resumed (SIGCONT)" ;;
  esac
done < <(printf '%s\n' "${faults[@]}" | sort -n)

set +e
wait "$harness"
harness_status=$?
set -e
event "harness done (exit $harness_status)"
cat "$tmp/harness.out"

# --- Recovery: every gateway's write queue empty and every write journal in Redis empty (the
# killed gateway's is taken over and written by another), polled with a bound; then the check.
stat() {  # gateway index, python expression on the write_queue object
  curl -sf "http://127.0.0.1:${admin_ports[$1]}/v1/stats" | python3 -c "import json,sys; q=json.load(sys.stdin)['write_queue']; print($2)"
}
drained() {
  for i in 1 2 3; do
    [ -n "${pid[gw-$i]:-}" ] || continue
    [ "$(stat "$i" 'q["pending"]')" = 0 ] || return 1
  done
  for journal in $(redis-cli -p "$rport" SMEMBERS sluice:wq); do
    [ "$(redis-cli -p "$rport" HLEN "$journal")" = 0 ] || return 1
  done
}
wait_for "write queues and journals drained" 180 drained
event "write queues and journals drained"
recovered=0 retries=0
for i in 1 2 3; do
  [ -n "${pid[gw-$i]:-}" ] || continue
  recovered=$((recovered + $(stat "$i" 'q["recovered"]'))); retries=$((retries + $(stat "$i" 'q["retries"]')))
done
alive=""
for i in 1 2 3; do
  if [ -n "${pid[gw-$i]:-}" ] && ! kill -0 "${pid[gw-$i]}" 2>/dev/null; then alive+="gw-$i exited unexpectedly; "; fi
done
[ -z "$alive" ] || event "$alive"
for i in 1 2 3; do
  grep -E '"level":"(error|critical)"|Fatal error|runtime failure' "$tmp/gw-$i.log" | tail -3 | sed "s/^/gw-$i: /" || true
done

settings="$(python3 -c "import json,sys; print(json.dumps({'users': $users, 'duration_s': $duration, 'tokens': $tokens, 'tokens_per_s': $tps, 'think_ms': $think, 'drop_fraction': $drop, 'command': sys.argv[1], 'messages_taken_over_from_dead_journals': $recovered, 'storage_write_retries': $retries}))" "$command")"
set +e
python3 "$root/loadtest/chaos-check.py" --records "$tmp/records.jsonl" --summary "$tmp/summary.json" --timeline "$tmp/timeline.log" \
  --psql "$pgbin/psql" --port "$pgport" --extra "$settings" --json-out "$tmp/result.json"
status=$?
set -e
mkdir -p "$root/loadtest/results"
cp "$tmp/result.json" "$root/loadtest/results/chaos-$(date -u +%Y%m%dT%H%M%SZ).json" 2>/dev/null || true
[ -z "$alive" ] || status=1
exit $status
