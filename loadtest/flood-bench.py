#!/usr/bin/env python3
"""What a flood of large plain-text messages costs the gateway, as a ratio to small ones.

Issue 15's case: 500 WebSocket connections each send one 1 MiB plain-text (non-JSON) message at
the same moment. Before the fix the text was made into a `String` and trimmed as a whole before
the 64 KiB content check, on the event loop: every request, `/health` included, stalled for
seconds. Now its size is checked first (`too_large`, nothing copied).

Starts `sluice serve` on free loopback ports (simulator, memory storage, the per-address cap off:
every client here is 127.0.0.1; a memory budget large enough to take every message, so the
decoder, not the budget, is what is measured), opens N connections, then in alternating rounds
has every connection send one message of --big bytes, or of --small bytes, at once, and waits
for every `error` answer (both sizes are over max_content_bytes: the same refusal). During each
flood a probe asks `GET /health` every 10 ms on a connection of its own. Reported per kind:
the server's CPU per message (utime + stime from /proc), the time until the last answer, and
the probe's worst latency; then the big/small ratios. With --before OLD_BINARY the same rounds
run against an older build too (same machine, same run).

    python3 loadtest/flood-bench.py --sluice .build/release/sluice [--before OLD_BINARY]
"""
import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
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


def http_get(port, path, timeout=30):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def upgrade(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /v1/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("upgrade refused")
        data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    if b" 101 " not in status_line:
        raise SystemExit(f"upgrade answered {status_line!r}")
    rest = data.split(b"\r\n\r\n", 1)[1]
    return s, rest


def masked_text_frame(payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    # XOR with the repeated mask, fast enough in pure Python for a few MiB.
    key = int.from_bytes(mask * ((n + 3) // 4), "little")
    body = (int.from_bytes(payload + b"\0" * ((4 - n % 4) % 4), "little") ^ key).to_bytes(n + (4 - n % 4) % 4, "little")[:n]
    return head + mask + body


class Frames:
    """Reads the server's (unmasked) frames off one socket."""

    def __init__(self, sock, rest):
        self.sock = sock
        self.buffer = bytearray(rest)

    def _parse(self):
        b = self.buffer
        if len(b) < 2:
            return None
        n, offset = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, offset = int.from_bytes(b[2:4], "big"), 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, offset = int.from_bytes(b[2:10], "big"), 10
        if len(b) < offset + n:
            return None
        opcode, payload = b[0] & 0x0F, bytes(b[offset:offset + n])
        del b[:offset + n]
        return opcode, payload

    def next_text(self, timeout):
        """The next text message's payload; None when the server closed."""
        self.sock.settimeout(timeout)
        while True:
            frame = self._parse()
            if frame is not None:
                opcode, payload = frame
                if opcode == 0x1:
                    return payload
                if opcode == 0x8:
                    return None
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk


def run_server(binary, tmp, big):
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({
        "SLUICE_STORAGE_DATABASE_URL": "memory",
        "SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "0",
        "SLUICE_LIMITS_MESSAGES_PER_SECOND_PER_CONNECTION": "0",
        "SLUICE_SERVER_MEMORY_BUDGET": "4GiB",
        "SLUICE_WEBSOCKET_MAX_MESSAGE_SIZE": str(max(big, 1 << 20) + 1024),
        "SLUICE_WEBSOCKET_MAX_FRAME_SIZE": str(max(big, 1 << 20) + 1024),
    })
    args = [binary, "serve", "--port", str(port), "--log-level", "error"]
    # Older builds have no admin listener (and refuse the unknown variables above).
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    if "--admin-port" in help_text:
        args += ["--admin-port", str(admin)]
    else:
        for key in ["SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "SLUICE_SERVER_MEMORY_BUDGET"]:
            env.pop(key)
    log = open(os.path.join(tmp, f"sluice-{port}.log"), "w")
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if http_get(port, "/health", timeout=2) == 200:
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{binary} did not start")


def flood(port, pid, sockets, size):
    """Every connection sends one plain-text message of `size` bytes at once; returns
    (CPU seconds, seconds until the last answer, worst /health latency, answers)."""
    payload = b"x" * size
    frame = masked_text_frame(payload)
    worst = [0.0]
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            started = time.time()
            try:
                http_get(port, "/health", timeout=60)
            except OSError:
                pass
            worst[0] = max(worst[0], time.time() - started)
            stop.wait(0.01)

    cpu_before = cpu_seconds(pid)
    started = time.time()
    prober = threading.Thread(target=probe)
    prober.start()
    senders = []
    for frames in sockets:
        t = threading.Thread(target=frames.sock.sendall, args=(frame,))
        t.start()
        senders.append(t)
    answers = 0
    for frames in sockets:
        message = frames.next_text(timeout=120)
        if message is not None and b'"type":"error"' in message:
            answers += 1
    elapsed = time.time() - started
    for t in senders:
        t.join()
    stop.set()
    prober.join()
    return cpu_seconds(pid) - cpu_before, elapsed, worst[0], answers


def measure(binary, args, tmp):
    process, port = run_server(binary, tmp, args.big)
    try:
        sockets = []
        for _ in range(args.connections):
            sock, rest = upgrade(port)
            frames = Frames(sock, rest)
            frames.next_text(timeout=30)  # session.ready
            sockets.append(frames)
        totals = {"big": [0.0, 0.0, 0.0, 0], "small": [0.0, 0.0, 0.0, 0]}
        for _ in range(args.rounds):
            for kind, size in (("small", args.small), ("big", args.big)):
                cpu, elapsed, worst, answers = flood(port, process.pid, sockets, size)
                if answers != args.connections:
                    raise SystemExit(f"{kind}: {answers} of {args.connections} answered")
                total = totals[kind]
                total[0] += cpu
                total[1] += elapsed
                total[2] = max(total[2], worst)
                total[3] += answers
        for frames in sockets:
            frames.sock.close()
        result = {}
        for kind, (cpu, elapsed, worst, answers) in totals.items():
            result[kind] = {
                "cpu_us_per_message": cpu / answers * 1e6,
                "flood_seconds": elapsed / args.rounds,
                "health_worst_ms": worst * 1000,
            }
        result["ratio_cpu"] = result["big"]["cpu_us_per_message"] / max(result["small"]["cpu_us_per_message"], 1e-9)
        result["ratio_health"] = result["big"]["health_worst_ms"] / max(result["small"]["health_worst_ms"], 1e-9)
        return result
    finally:
        process.kill()
        process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", default=".build/release/sluice")
    parser.add_argument("--before", help="an older sluice binary, measured in the same run")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--big", type=int, default=1 << 20, help="bytes of the large plain-text message (1 MiB)")
    parser.add_argument("--small", type=int, default=65 * 1024, help="bytes of the peer message (just over max_content_bytes)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="sluice-flood-")
    binaries = [("before", args.before)] if args.before else []
    binaries.append(("now", args.sluice))
    report = {}
    for name, binary in binaries:
        report[name] = measure(binary, args, tmp)
    print(f"{args.connections} connections, plain-text messages of {args.big} bytes (big) and {args.small} bytes (small), "
          f"{args.rounds} rounds each")
    print(f"{'binary':<8} {'kind':<6} {'CPU µs/msg':>12} {'flood s':>9} {'worst /health ms':>17}")
    for name, result in report.items():
        for kind in ("small", "big"):
            r = result[kind]
            print(f"{name:<8} {kind:<6} {r['cpu_us_per_message']:>12.0f} {r['flood_seconds']:>9.2f} {r['health_worst_ms']:>17.1f}")
        print(f"{name:<8} big/small: CPU {result['ratio_cpu']:.2f}x, worst /health {result['ratio_health']:.2f}x")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
