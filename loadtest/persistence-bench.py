#!/usr/bin/env python3
"""What keeping conversations costs: generations per second sustained, and the gateway's CPU time
per generation, with persistence off (`--database-url memory`) versus the embedded SQLite default
and PostgreSQL, all measured in the same run; and database statements per generation.

For each mode a fresh `sluice serve` (simulator upstream, instant tokens, one event loop) is
started on loopback; C clients each hold one WebSocket connection and send `chat.send` back to
back: a new conversation, then T-1 follow-ups in it (so context is read and the cache is used),
then a new one. Generations completed in the measured window (after a warm-up) give the rate.
After the window the clients stop, the write queue is waited for (`GET /v1/stats` pending 0),
and the storage's statement counters are divided by every generation of the run.

Usage: loadtest/persistence-bench.py [--sluice PATH] [-c CLIENTS] [-d SECONDS] [--turns T]
                                     [--answer-tokens N] [--modes memory,sqlite,postgres]
  --sluice         the binary (default .build/release/sluice; `swift build -c release --product sluice`)
  -c               concurrent clients (default 32)
  -d               measured seconds per mode (default 10; warm-up 2 s before)
  --turns          messages per conversation (default 4)
  --answer-tokens  simulator tokens per answer (default 8)
  --server-cpu / --client-cpu   CPU lists for taskset / sched_setaffinity (default 0 / 1)
PostgreSQL mode starts its own server (initdb into a temporary directory, random port, fsync on,
as the `postgres` user when run as root) and removes it after. Loopback only; every process is
started here and stopped by PID. Needs the Python package `websockets`; uses uvloop if present.
"""
import argparse, asyncio, glob, json, os, pwd, shutil, signal, socket, subprocess, sys, tempfile, time

import websockets

try:
    import uvloop
except ImportError:
    uvloop = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpus, argv):
    return (["taskset", "-c", cpus] + argv) if cpus and shutil.which("taskset") else argv


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1."""

    def __init__(self, tmp):
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        if not versions:
            raise SystemExit("postgres mode needs Debian's postgresql package (/usr/lib/postgresql/*/bin)")
        self.bin = versions[-1]
        self.dir = os.path.join(tmp, "pg")
        os.makedirs(self.dir)
        self.port = free_port()
        self.as_user = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(tmp, user.pw_uid, user.pw_gid)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
        log = open(os.path.join(tmp, "pg.log"), "wb")
        subprocess.run(self.as_user + [f"{self.bin}/initdb", "-D", f"{self.dir}/data", "-U", "sluice", "--auth=trust",
                                       "--encoding=UTF8", "--locale=C"], check=True, stdout=log, stderr=subprocess.STDOUT)
        self.proc = subprocess.Popen(self.as_user + [f"{self.bin}/postgres", "-D", f"{self.dir}/data", "-p", str(self.port),
                                                     "-k", self.dir, "-c", "listen_addresses=127.0.0.1"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while subprocess.run(self.as_user + [f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "sluice", "sluice"],
                             stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("postgres did not start; see pg.log")
            time.sleep(0.2)
        self.url = f"postgres://sluice:unused@127.0.0.1:{self.port}/sluice?sslmode=disable"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def client(port, turns, stop, counts):
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?user=bench",
                                  subprotocols=["sluice.v1"], compression=None, max_size=None) as ws:
        await ws.recv()  # session.ready
        conversation, turn = None, 0
        while not stop.is_set():
            message = {"type": "chat.send", "content": f"question {turn} of a benchmark conversation"}
            if conversation:
                message["conversation_id"] = conversation
            await ws.send(json.dumps(message))
            refused = False
            while True:
                event = json.loads(await ws.recv())
                kind = event["type"]
                if kind == "generation.started":
                    conversation = event["conversation_id"]
                elif kind == "generation.done":
                    break
                elif kind == "error" and event.get("code") == "overloaded" and "retry_after_ms" in event:
                    # The write queue is full: the storage is the bottleneck. Back off as told.
                    counts[1] += 1
                    refused = True
                    await asyncio.sleep(event["retry_after_ms"] / 1000)
                    break
                elif kind == "error":
                    raise SystemExit(f"error from sluice: {event}")
            if refused:
                continue
            counts[0] += 1
            turn += 1
            if turn == turns:
                conversation, turn = None, 0


async def measure(port, args):
    stop = asyncio.Event()
    counts = [0, 0]  # generations completed, chat.sends refused (queue full)
    tasks = [asyncio.create_task(client(port, args.turns, stop, counts)) for _ in range(args.clients)]
    await asyncio.sleep(args.warmup)
    start_count, start = counts[0], time.monotonic()
    await asyncio.sleep(args.duration)
    measured, elapsed = counts[0] - start_count, time.monotonic() - start
    stop.set()
    await asyncio.gather(*tasks)
    return measured / elapsed, counts[0], counts[1]


def run_mode(mode, args, tmp, postgres):
    port, admin_port = free_port(), free_port()
    database = {"memory": "memory", "sqlite": "sqlite://" + os.path.join(tmp, f"{mode}.db"), "postgres": postgres.url if postgres else None}[mode]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # Every client of the benchmark is 127.0.0.1: no per-address cap.
    env["SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
    env.update(SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN="0", SLUICE_SIMULATOR_TOKENS_PER_SECOND="0",
               SLUICE_SIMULATOR_ANSWER_TOKENS=str(args.answer_tokens),
               # In the environment: sluice refuses a URL with a password on its command line.
               SLUICE_STORAGE_DATABASE_URL=database)
    log = open(os.path.join(tmp, f"sluice-{mode}.log"), "wb")
    proc = subprocess.Popen(pinned(args.server_cpu, [args.sluice, "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
                                                     "--admin-port", str(admin_port), "--log-level", "warning"]),
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_get(port, "/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"sluice ({mode}) not ready; see {log.name}")
            time.sleep(0.05)
        cpu_before = cpu_seconds(proc.pid)
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None)
        with runner:
            rate, total, refused = runner.run(measure(port, args))
        cpu = cpu_seconds(proc.pid) - cpu_before
        deadline = time.monotonic() + 60
        while True:
            stats = json.loads(http_get(admin_port, "/v1/stats")[1])  # the admin listener
            queue = stats.get("write_queue") or {}
            if queue.get("pending", 0) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return {"mode": mode, "generations_per_second": rate, "generations": total, "refused_queue_full": refused,
                "server_cpu_us_per_generation": cpu / total * 1e6, "stats": stats}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sluice", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "sluice"))
    parser.add_argument("-c", "--clients", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--modes", default="memory,sqlite,postgres")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    args = parser.parse_args()
    if args.client_cpu and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    modes = args.modes.split(",")
    tmp = tempfile.mkdtemp(prefix="sluice-persist-bench-")
    postgres = None
    results = []
    try:
        if "postgres" in modes:
            postgres = Postgres(tmp)
        for mode in modes:
            result = run_mode(mode, args, tmp, postgres)
            results.append(result)
            print(f"{mode:9s} {result['generations_per_second']:9.0f} generations/s   "
                  f"{result['server_cpu_us_per_generation']:6.0f} us server CPU/generation   ({result['generations']} generations, "
                  f"{result['refused_queue_full']} refused with the queue full)", flush=True)
    finally:
        if postgres:
            postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    baseline = next((r for r in results if r["mode"] == "memory"), None)
    print()
    for r in results:
        line = f"{r['mode']:9s}"
        if baseline and r is not baseline:
            line += (f" rate {r['generations_per_second'] / baseline['generations_per_second']:.2f}x of memory,"
                     f" CPU/generation {r['server_cpu_us_per_generation'] / baseline['server_cpu_us_per_generation']:.2f}x")
        storage = r["stats"].get("storage")
        if storage:
            queue = r["stats"]["write_queue"]
            line += (f"  write statements/generation {storage['write_statements'] / r['generations']:.3f}"
                     f" (messages written {queue['written']} for {r['generations']} generations, batches {queue['batches']},"
                     f" read statements/generation {storage['read_statements'] / r['generations']:.3f})")
        cache = r["stats"]["conversation_cache"]
        line += f"  cache hit ratio {cache['hit_ratio']:.3f}"
        print(line)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    print(json.dumps(results, indent=1), file=open(os.path.join(os.path.dirname(__file__), "results", "persistence-bench.json"), "w"))


if __name__ == "__main__":
    main()
