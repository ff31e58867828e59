#!/usr/bin/env python3
"""The job queue's throughput and latency, measured in one run against a real redis-server:

1. Latency of a trivial job (`echo`), end to end: `job.submit` on a WebSocket until `job.done`
   arrives on the same socket (gateway -> Redis stream -> an idle worker -> Redis -> pub/sub ->
   gateway -> socket), one job at a time; the baseline is a `ping`/`pong` on the same socket.
2. Throughput with N worker processes (each `--concurrency C`): J echo jobs submitted as fast as
   one WebSocket pipelines them, while the workers run; jobs/s = J / (last job.done - first submit).
   Also the submit rate alone (no workers running), so the producer's ceiling is known.

Everything runs on loopback; every process is started here and stopped by PID. Redis runs with
`appendonly yes, appendfsync everysec` (what a queue's Redis should do). Needs `websockets`.
Usage: loadtest/jobs-bench.py [--sluice PATH] [--jobs J] [--workers 1,2,4] [--concurrency C]
                              [--samples S]
"""
import argparse, asyncio, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

import websockets


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait_ready(port, path="/ready", timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200: return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"jobs-bench: nothing ready on port {port}")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Processes:
    def __init__(self): self.procs = []
    def start(self, argv, env, log):
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc); return proc
    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        self.procs.remove(proc)
    def stop_all(self):
        for proc in list(self.procs): self.stop(proc)


async def recv_json(ws, timeout=60):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def latency(port, samples):
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?user=bench-latency", subprotocols=["sluice.v1"]) as ws:
        await recv_json(ws)
        pings, jobs = [], []
        for i in range(samples):
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "ping", "id": str(i)}))
            while (await recv_json(ws))["type"] != "pong": pass
            pings.append(time.perf_counter() - started)
        for i in range(samples):
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "job.submit", "kind": "echo", "input": {"i": i}}))
            while True:
                m = await recv_json(ws)
                if m["type"] == "job.done": break
                if m["type"] == "error": raise SystemExit(f"jobs-bench: {m}")
            jobs.append(time.perf_counter() - started)
        return pings, jobs


async def throughput(port, count, user):
    """Submits `count` echo jobs on one socket and waits for all their job.done."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?user={user}", subprotocols=["sluice.v1"], max_queue=None) as ws:
        await recv_json(ws)
        started = time.perf_counter()
        async def produce():
            for i in range(count):
                await ws.send(json.dumps({"type": "job.submit", "kind": "echo", "input": {"i": i}}))
        producer = asyncio.create_task(produce())
        accepted = done = 0
        submitted_at = None
        while done < count:
            m = await recv_json(ws, timeout=120)
            if m["type"] == "job.accepted":
                accepted += 1
                if accepted == count: submitted_at = time.perf_counter()
            elif m["type"] == "job.done":
                done += 1
            elif m["type"] == "error":
                raise SystemExit(f"jobs-bench: {m}")
        await producer
        return count / (time.perf_counter() - started), (count / (submitted_at - started)) if submitted_at else None


async def submit_only(port, count):
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?user=bench-submit", subprotocols=["sluice.v1"], max_queue=None) as ws:
        await recv_json(ws)
        started = time.perf_counter()
        for i in range(count):
            await ws.send(json.dumps({"type": "job.submit", "kind": "echo", "input": {"i": i}}))
        accepted = 0
        while accepted < count:
            if (await recv_json(ws))["type"] == "job.accepted": accepted += 1
        return count / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sluice", default=".build/release/sluice")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="sluice-jobs-bench-")
    procs = Processes()
    log = open(os.path.join(tmp, "processes.log"), "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # Every client of the benchmark is 127.0.0.1: no per-address cap.
    env["SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
    try:
        redis_port = free_port()
        procs.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
                     "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"], env, log)
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", redis_port), timeout=0.2): break
            except OSError: time.sleep(0.05)
        env.update({"SLUICE_REDIS_URL": f"redis://127.0.0.1:{redis_port}", "SLUICE_STORAGE_DATABASE_URL": "memory",
                    "SLUICE_SERVER_EVENT_LOOP_THREADS": "1", "SLUICE_LOG_LEVEL": "warning",
                    # The producer pipelines submissions on one socket: no per-connection message cap.
                    "SLUICE_LIMITS_MESSAGES_PER_SECOND_PER_CONNECTION": "0"})
        gateway_port, admin_port = free_port(), free_port()
        procs.start([args.sluice, "serve", "--host", "127.0.0.1", "--port", str(gateway_port), "--admin-port", str(admin_port)], env, log)
        wait_ready(gateway_port)

        submit_rate = asyncio.run(submit_only(gateway_port, args.jobs))
        print(f"submit only (no worker running): {submit_rate:,.0f} jobs/s accepted")

        def start_workers(n):
            started = []
            for i in range(n):
                port = free_port()
                started.append(procs.start([args.sluice, "worker", "--host", "127.0.0.1", "--port", str(port),
                                            "--concurrency", str(args.concurrency), "--instance-id", f"bench-{n}-{i}"], env, log))
                wait_ready(port)
            return started

        # The backlog of the submit-only step is drained first (not measured).
        workers = start_workers(1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
            waiting = sum(float(line.split()[-1]) for line in stats.splitlines()
                          if line.startswith("sluice_job_queue_depth{") and 'state="waiting"' in line)
            if waiting == 0: break
            time.sleep(0.5)
        pings, jobs = asyncio.run(latency(gateway_port, args.samples))
        print(f"trivial job end to end, 1 idle worker, {args.samples} sequential: "
              f"p50 {percentile(jobs, 50) * 1000:.2f} ms, p90 {percentile(jobs, 90) * 1000:.2f} ms, p99 {percentile(jobs, 99) * 1000:.2f} ms")
        print(f"baseline ping/pong on the same socket: p50 {percentile(pings, 50) * 1000:.2f} ms, p99 {percentile(pings, 99) * 1000:.2f} ms "
              f"(job / ping p50 ratio {percentile(jobs, 50) / percentile(pings, 50):.1f}x)")
        for proc in workers: procs.stop(proc)

        for n in [int(x) for x in args.workers.split(",")]:
            workers = start_workers(n)
            rate, producer = asyncio.run(throughput(gateway_port, args.jobs, f"bench-{n}"))
            print(f"{n} worker process(es) x concurrency {args.concurrency}: {rate:,.0f} jobs/s through the queue "
                  f"({args.jobs} echo jobs; the producer submitted at {producer:,.0f}/s meanwhile)")
            for proc in workers: procs.stop(proc)
    finally:
        procs.stop_all()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


main()
