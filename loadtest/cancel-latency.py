#!/usr/bin/env python3
"""Cancel latency of Sluice: from the client's `generation.cancel` frame leaving the client to
the upstream HTTP connection being closed by Sluice (what frees the sequence on vLLM), and to
`generation.done` arriving at the client. One process hosts both the fake OpenAI-compatible
upstream and the WebSocket client, so both instants come from one monotonic clock.

Usage: loadtest/cancel-latency.py [--sluice PATH] [--count N]
  --sluice  the sluice binary (default .build/release/sluice; build it with
            `swift build -c release --product sluice`)
  --count   cancels to measure (default 300)
Needs the Python package `websockets` (pip install websockets). Loopback only; Sluice is started
on a free port and stopped by PID at the end.
"""
import argparse, asyncio, json, os, signal, socket, statistics, subprocess, sys, time

import websockets

closed_at = {}   # marker -> monotonic time the upstream saw its connection close
opened = {}      # marker -> asyncio.Event set when the upstream request arrived


async def upstream(reader, writer):
    """A fake OpenAI-compatible server: streams a chunk every 5 ms until the client hangs up."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next((int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length:")), 0)
    body = await reader.readexactly(length) if length else b""
    if lines[0].startswith("GET /v1/models"):
        payload = json.dumps({"data": [{"id": "fake-model"}]}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload)
        await writer.drain(); writer.close(); return
    marker = json.loads(body)["messages"][-1]["content"]
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    opened.setdefault(marker, asyncio.Event()).set()

    async def watch_eof():
        while await reader.read(4096):
            pass
        closed_at[marker] = time.monotonic()
    eof = asyncio.ensure_future(watch_eof())
    chunk = b'data: {"choices":[{"delta":{"content":" tok"},"index":0}]}\n\n'
    try:
        while not eof.done():
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.005)
        await eof
    except (ConnectionError, OSError, asyncio.CancelledError):
        eof.cancel()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sluice", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "sluice"))
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # Every client of the benchmark is 127.0.0.1: no per-address cap.
    env["SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
    proc = subprocess.Popen([args.sluice, "serve", "--port", str(port), "--admin-port", "0", "--threads", "1", "--log-level", "warning",
                             "--database-url", "memory",  # measures cancels, not persistence
                             "--upstream", f"http://127.0.0.1:{up_port}"], env=env)
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2): break
            except OSError:
                await asyncio.sleep(0.1)
        to_upstream, to_done = [], []
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["sluice.v1"], max_queue=None) as ws:
            json.loads(await ws.recv())  # session.ready
            for i in range(args.count):
                marker = f"cancel-{i}"
                await ws.send(json.dumps({"type": "chat.send", "content": marker}))
                gid, deltas = None, 0
                while deltas < 3:
                    m = json.loads(await ws.recv())
                    if m["type"] == "generation.started": gid = m["generation_id"]
                    elif m["type"] == "generation.delta": deltas += 1
                    elif m["type"] in ("error", "generation.done"): raise SystemExit(f"unexpected {m}")
                t0 = time.monotonic()
                await ws.send(json.dumps({"type": "generation.cancel", "generation_id": gid}))
                while True:
                    m = json.loads(await ws.recv())
                    if m["type"] == "generation.done":
                        to_done.append(time.monotonic() - t0)
                        assert m["finish_reason"] == "cancelled", m
                        break
                for _ in range(2000):
                    if marker in closed_at: break
                    await asyncio.sleep(0.001)
                to_upstream.append(closed_at[marker] - t0)
        ms = lambda v: f"{v * 1000:.2f} ms"
        for name, values in (("cancel -> upstream connection closed", to_upstream), ("cancel -> generation.done at client", to_done)):
            print(f"{name}: n={len(values)} p50 {ms(pct(values, 50))}  p90 {ms(pct(values, 90))}  "
                  f"p99 {ms(pct(values, 99))}  max {ms(max(values))}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=10)
        except subprocess.TimeoutExpired: proc.kill()
        server.close()


asyncio.run(main())
