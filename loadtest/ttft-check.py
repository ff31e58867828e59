#!/usr/bin/env python3
"""Cross-check of sluice-loadtest's time to first token against an independent client, in the
same run: one `sluice serve` (simulator: --ttft ms to the first token), `sluice-loadtest chat`
with U users, and at the same time C Python `websockets` clients doing the same request loop.
Both report TTFT (chat.send written -> first generation.delta read) p50/p90/p99 in ms; they
should agree to within the clients' own scheduling noise.

Usage: loadtest/ttft-check.py [--users 500] [--python-clients 20] [--duration 15] [--ttft 200]
Needs `websockets` (the wsbench venv has it) and release builds of sluice and sluice-loadtest.
Loopback only; every process is started here and stopped by PID.
"""
import argparse, asyncio, json, os, signal, socket, statistics, subprocess, sys, time

import websockets

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def python_client(url, stop, ttfts, max_tokens):
    async with websockets.connect(url, subprotocols=["sluice.v1"], compression=None) as ws:
        await ws.recv()  # session.ready
        while not stop.is_set():
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "chat.send", "content": "cross-check", "max_tokens": max_tokens}))
            first = None
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "generation.delta" and first is None:
                    first = time.monotonic()
                    ttfts.append((first - sent) * 1000)
                elif message["type"] == "generation.done":
                    break


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--python-clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--ttft", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--tps", type=int, default=50)
    args = parser.parse_args()
    release = os.path.join(root, ".build", "release")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # Every client of the benchmark is 127.0.0.1: no per-address cap.
    env["SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
    env.update(SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN=f"{args.ttft}ms", SLUICE_SIMULATOR_TOKENS_PER_SECOND=str(args.tps),
               SLUICE_SIMULATOR_ANSWER_TOKENS=str(args.tokens))
    server = subprocess.Popen([os.path.join(release, "sluice"), "serve", "--port", str(port), "--threads", "1", "--log-level", "warning",
                               "--database-url", "memory", "--admin-port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness = None
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        url = f"ws://127.0.0.1:{port}/v1/ws"
        harness = subprocess.Popen([os.path.join(release, "sluice-loadtest"), "chat", "--url", url, "--users", str(args.users),
                                    "--duration", str(args.duration), "--max-tokens", str(args.tokens), "--json", "--quiet",
                                    "--threads", "1"], stdout=subprocess.PIPE, text=True)
        stop = asyncio.Event()
        ttfts = []
        clients = [asyncio.create_task(python_client(url, stop, ttfts, args.tokens)) for _ in range(args.python_clients)]
        await asyncio.sleep(args.duration)
        stop.set()
        await asyncio.gather(*clients)
        report = json.loads(harness.communicate(timeout=120)[0])
        harness = None
    finally:
        for process in (harness, server):
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    h = report["time_to_first_token_ms"]
    print(f"simulator TTFT {args.ttft} ms; {args.users} harness users and {args.python_clients} Python clients on one instance")
    print(f"sluice-loadtest   n={int(h['count']):6d}  p50 {h['p50']:8.2f}  p90 {h['p90']:8.2f}  p99 {h['p99']:8.2f} ms")
    print(f"python websockets n={len(ttfts):6d}  p50 {pct(ttfts, 50):8.2f}  p90 {pct(ttfts, 90):8.2f}  p99 {pct(ttfts, 99):8.2f} ms")
    print(f"difference at p50: {pct(ttfts, 50) - h['p50']:+.2f} ms")


asyncio.run(main())
