#!/usr/bin/env python3
"""How long a turn with two tool calls takes: the tools run in parallel, so the tool phase
should take about as long as the slower tool, not the sum of both.

A scripted OpenAI-compatible upstream (Python, threads) answers the first request of each chat
with two `tool_calls` of the webhook tool `wait`, and the request that carries the results with
a short answer. The `wait` webhook sleeps for the `ms` its arguments name (A and B ms). For R
rounds, one `chat.send` each, the client measures from the first `tool.call` to the last
`tool.result` (the tool phase) and the whole generation; the baseline is the slower tool alone
and the sum of both, printed side by side.

Usage: loadtest/tools-bench.py [--sluice PATH] [--a-ms 1000] [--b-ms 1500] [--rounds 5]
Loopback only; everything is started here and stopped by PID. Needs `websockets`.
"""
import argparse, asyncio, json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import websockets

args = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"data": [{"id": "fake"}]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200); self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close"); self.end_headers()
        def event(obj): self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
        if any(m.get("role") == "tool" for m in request["messages"]):
            event({"choices": [{"index": 0, "delta": {"content": "done"}, "finish_reason": None}]})
            event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        else:
            for i, ms in enumerate((args.a_ms, args.b_ms)):
                event({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                       "function": {"name": "wait", "arguments": json.dumps({"ms": ms})}}]}, "finish_reason": None}]})
            event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        self.wfile.write(b"data: [DONE]\n\n"); self.wfile.flush()
        self.close_connection = True


class Wait(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        ms = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["ms"]
        time.sleep(ms / 1000)
        body = json.dumps({"waited_ms": ms}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.send_header("Connection", "close")
        self.end_headers(); self.wfile.write(body)


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def rounds(port):
    phases, totals = [], []
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?user=bench", subprotocols=["sluice.v1"]) as ws:
        await ws.recv()
        for _ in range(args.rounds):
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "chat.send", "content": "wait for both"}))
            first_call = last_result = None
            results = []
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if m["type"] == "tool.call" and first_call is None: first_call = time.perf_counter()
                elif m["type"] == "tool.result": last_result = time.perf_counter(); results.append(m)
                elif m["type"] == "generation.done": break
                elif m["type"] == "error": raise SystemExit(f"tools-bench: {m}")
            if [r["status"] for r in results] != ["ok", "ok"]: raise SystemExit(f"tools-bench: {results}")
            phases.append(last_result - first_call); totals.append(time.perf_counter() - started)
    return phases, totals


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--sluice", default=".build/release/sluice")
    parser.add_argument("--a-ms", type=int, default=1000)
    parser.add_argument("--b-ms", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    upstream, wait = serve(Upstream), serve(Wait)
    tmp = tempfile.mkdtemp(prefix="sluice-tools-bench-")
    config = os.path.join(tmp, "sluice.yaml")
    with open(config, "w") as f:
        f.write("tools:\n  enabled: [wait]\n  timeout: 30s\n  webhooks:\n"
                "    - name: wait\n      description: waits\n"
                "      parameters: '{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"integer\"}},\"required\":[\"ms\"]}'\n"
                f"      url: http://127.0.0.1:{wait.server_port}/wait\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # Every client of the benchmark is 127.0.0.1: no per-address cap.
    env["SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
    proc = subprocess.Popen([args.sluice, "serve", "--host", "127.0.0.1", "--port", str(port), "--config", config,
                             "--upstream", f"http://127.0.0.1:{upstream.server_port}", "--model", "fake",
                             "--database-url", "memory", "--admin-port", "0", "--log-level", "warning"], env=env)
    try:
        for _ in range(200):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).status == 200: break
            except Exception: time.sleep(0.05)
        phases, totals = asyncio.run(rounds(port))
        slower, total = max(args.a_ms, args.b_ms) / 1000, (args.a_ms + args.b_ms) / 1000
        phases.sort(); totals.sort()
        median = lambda v: v[len(v) // 2]
        print(f"two tools of {args.a_ms} ms and {args.b_ms} ms, {args.rounds} rounds: tool phase median {median(phases) * 1000:.0f} ms "
              f"(max {phases[-1] * 1000:.0f} ms); whole generation median {median(totals) * 1000:.0f} ms")
        print(f"baseline: the slower tool {slower * 1000:.0f} ms, both in a row {total * 1000:.0f} ms -> "
              f"tool phase / slower tool = {median(phases) / slower:.3f}, / sum = {median(phases) / total:.3f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=15)
        except subprocess.TimeoutExpired: proc.kill()
        upstream.shutdown(); wait.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


main()
