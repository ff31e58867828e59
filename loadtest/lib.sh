# Shared by the loadtest scripts (sourced): CPU pinning, a temporary directory, the processes
# the script started (stopped by PID at exit, never by name), free ports, readiness.
#   source "$root/loadtest/lib.sh" NAME     (NAME names the temporary directory)
server_cpu="" client_cpu=""
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then server_cpu="taskset -c 0"; client_cpu="taskset -c 1"; fi

tmp="$(mktemp -d "/tmp/sluice-$1.XXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "gateway on port $1 not ready" >&2; exit 1
}
