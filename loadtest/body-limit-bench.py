#!/usr/bin/env python3
"""CPU the gateway spends refusing an oversized HTTP body, as a ratio to a small request.

Starts its own redis-server (jobs need Redis) and `sluice serve` on free loopback ports, then
sends, in alternating rounds, `POST /v1/jobs` with a body of --big-bytes (default 1.4 MB, an
input far over chat.max_content_bytes; by default an array of small numbers, the costliest
JSON per byte, or --shape text) and the same request with a 1 KB input. Both are
refused (the big one for its size, the small one for an unknown job kind), so the only
difference is the body. The server's CPU time (utime + stime from /proc) is read before and
after each batch; the result is CPU milliseconds per request of each kind and their ratio.
The client sends head and body in one go, without `Expect: 100-continue` (the worst case: the
server must deal with a body already on its way).

    python3 loadtest/body-limit-bench.py --sluice .build/release/sluice [--before OLD_BINARY]

With --before, the same run measures an older binary too (same machine, same rounds).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_http(port, path="/health", timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, _ = request(port, "GET", path, b"")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"no answer on port {port}")


def request(port, method, path, body, timeout=60):
    """One request on a fresh connection; returns (status, seconds until the answer)."""
    started = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            s.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at the head; the answer is still there to read
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    line = data.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 else 0), time.time() - started


def job_body(size, shape):
    """A job submission of about `size` bytes: its input one long string (`text`) or a long
    array of small numbers (`array`: what costs a JSON parser most per byte)."""
    if shape == "array":
        count = max(1, (size - 60) // 2)
        return ('{"kind":"no-such-kind","input":{"values":[' + ",".join(["0"] * count) + ']}}').encode()
    text = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    return json.dumps({"kind": "no-such-kind", "input": {"text": text}}).encode()


def measure(binary, args, redis_port, workdir, label, big_requests):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({"SLUICE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "SLUICE_SERVER_EVENT_LOOP_THREADS": "1",
                "SLUICE_LOG_LEVEL": "warning"})
    data_dir = tempfile.mkdtemp(dir=workdir)
    command = ([*args.server_cpu.split()] if args.server_cpu else []) + [
        binary, "serve", "--port", str(port), "--data-dir", data_dir]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(data_dir, "log"), "w"))
    try:
        wait_http(port)
        big, small = job_body(args.big_bytes, args.shape), job_body(1000, args.shape)
        totals = {"big": [0.0, 0, 0.0], "small": [0.0, 0, 0.0]}  # cpu, requests, wall
        statuses = {"big": set(), "small": set()}
        for _ in range(args.rounds):
            for kind, body, count in (("big", big, big_requests), ("small", small, args.small_requests)):
                before = cpu_seconds(server.pid)
                for _ in range(count):
                    status, wall = request(port, "POST", "/v1/jobs", body)
                    statuses[kind].add(status)
                    totals[kind][2] += wall
                # Let the server finish what it was still doing (a lingering close, a parse).
                time.sleep(0.3)
                totals[kind][0] += cpu_seconds(server.pid) - before
                totals[kind][1] += count
        result = {}
        for kind in ("big", "small"):
            cpu, n, wall = totals[kind]
            result[kind] = {"cpu_ms_per_request": 1000 * cpu / n, "wall_ms_per_request": 1000 * wall / n,
                            "statuses": sorted(statuses[kind])}
        small_cpu = max(result["small"]["cpu_ms_per_request"], 1000 / CLK_TCK / max(1, totals["small"][1]))
        result["ratio"] = result["big"]["cpu_ms_per_request"] / small_cpu
        print(f"{label:>8}: big {result['big']['cpu_ms_per_request']:9.2f} ms CPU/request "
              f"(wall {result['big']['wall_ms_per_request']:8.1f} ms, status {result['big']['statuses']}), "
              f"small {result['small']['cpu_ms_per_request']:6.2f} ms CPU/request (status {result['small']['statuses']}), "
              f"ratio {result['ratio']:8.1f}x", flush=True)
        return result
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--sluice", default=os.path.join(root, ".build/release/sluice"))
    parser.add_argument("--before", help="an older sluice binary to measure in the same run")
    parser.add_argument("--big-bytes", type=int, default=1_400_000)
    parser.add_argument("--shape", choices=["array", "text"], default="array", help="what the big input is made of")
    parser.add_argument("--big-requests", type=int, default=30, help="big requests per round")
    parser.add_argument("--before-big-requests", type=int, default=2, help="big requests per round for --before (each costs seconds)")
    parser.add_argument("--small-requests", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-cpu", default="taskset -c 0" if shutil.which("taskset") and os.cpu_count() >= 2 else "")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="sluice-body-bench.")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        time.sleep(0.3)
        results = {}
        if args.before:
            results["before"] = measure(args.before, args, redis_port, workdir, "before", args.before_big_requests)
        results["after"] = measure(args.sluice, args, redis_port, workdir, "after", args.big_requests)
        print(json.dumps({"big_bytes": args.big_bytes, "shape": args.shape, **results}))
        print("command: python3 " + " ".join(sys.argv))
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
