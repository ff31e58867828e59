#!/usr/bin/env python3
"""Cross-instance fan-out of Sluice: the latency a delta gains when a follower reads it on
another instance (through Redis) rather than on the instance running the generation, at N
concurrent generations, and the throughput of resuming finished generations on another instance.

Starts its own redis-server and two `sluice serve` instances A and B sharing it (simulator
upstream). Phase 1: N owner connections to A each send `chat.send`; as soon as
`generation.started` names the generation, a local follower on A and a remote follower on B send
`generation.resume` (after_seq 0) for it, before its first token. Every delta seq's arrival is
timestamped at the owner and at both followers (a merged delta counts for each of its seqs);
added latency = follower arrival - owner arrival. Every follower's text and seqs are checked
against the owner's. Phase 2: M connections to B each resume a finished generation from
after_seq 0 at once; wall time until every `generation.done`.

Usage: loadtest/fanout-latency.py [-n N] [-m M] [--tokens-per-second R] [--answer-tokens T] ...
  --sluice          the sluice binary (default .build/release/sluice; build it with
                    `swift build -c release --product sluice`)
  -n                concurrent generations (default 1000); 3 connections each
  -m, --resumes     resumes of finished generations on B in phase 2 (default 1000)
  --tokens-per-second, --answer-tokens, --ttft   the simulator (default 10, 100, 2s: long
                    enough for both followers to attach before the first token)
  --batch           connections opened at once (default 200)
  --server-cpu / --client-cpu   CPU lists for taskset / sched_setaffinity (default 0 / 1;
                    "" leaves a side unpinned)
  --timeout         bound on the whole run in seconds (default 600)
  --loop            auto (uvloop if importable), uvloop or asyncio
  --dump FILE       CSV of every seq's arrival at the owner and both followers (monotonic seconds)
The client is a minimal WebSocket client on asyncio Protocols (no permessage-deflate; uvloop
when installed, else asyncio's loop): arrival times are taken when the event loop reads the
socket, without a task per connection, so one core keeps up with the ~30,000 frames/s of 1,000
generations x 3 readers x 10 tokens/s. The report also says how late the client's loop woke up,
how often the owner got several seqs in one read (the servers falling behind the token pace),
the CPU seconds of redis, A, B and the client, and the kernel's retransmission counters: a tail
is only the server's when the client kept up. Loopback only; every process is started here and
stopped by PID at the end. Exits 1 if any follower's or resumer's text, seqs or end differ from
the owner's, or a generation did not complete.
"""
import argparse, asyncio, base64, gc, hashlib, json, os, resource, shlex, shutil, signal, socket, subprocess, sys, tempfile, time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DELTA_PREFIX = b'{"type":"generation.delta"'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def fail(future, exc):
    """Fails a future nobody may be awaiting, without a 'never retrieved' warning."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class WS(asyncio.Protocol):
    """One client connection: HTTP upgrade, then unmasked server frames parsed in place. Deltas
    are kept raw with the monotonic time of the read that completed them and parsed after the run."""

    def __init__(self, port, role):
        self.port, self.role = port, role
        self.key = base64.b64encode(os.urandom(16))
        self.buf, self.upgraded, self.fragments = b"", False, None
        loop = asyncio.get_running_loop()
        self.opened, self.ready, self.started, self.done = (loop.create_future() for _ in range(4))
        self.deltas = []          # (monotonic time, raw JSON bytes)
        self.started_at = self.done_at = None
        self.generation_id = self.done_msg = None
        self.errors, self.lost = [], False

    def connection_made(self, transport):
        self.transport = transport
        try: transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError): pass
        transport.write(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sluice.v1\r\n\r\n"
                        % (self.port, self.key))

    def data_received(self, data):
        now = time.monotonic()
        buf = self.buf + data if self.buf else data
        pos = 0
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf; return
            head = buf[:end].decode("latin-1").split("\r\n")
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode()
            if " 101 " not in head[0] + " " or not any(l.lower().startswith("sec-websocket-accept:") and l.split(":", 1)[1].strip() == accept for l in head):
                fail(self.opened, ConnectionError(f"{self.role}: upgrade refused: {head[0]}"))
                self.transport.close(); return
            self.upgraded, pos = True, end + 4
            self.opened.set_result(None)
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4: break
                length, header = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10: break
                length, header = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if n - pos < header + length: break
            payload = buf[pos + header:pos + header + length]
            pos += header + length
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x0:
                if not b0 & 0x80:
                    self.fragments = (self.fragments or b"") + payload; continue
                if opcode == 0x0:
                    payload, self.fragments = (self.fragments or b"") + payload, None
                self.message(now, payload)
            elif opcode == 0x9:
                self.send_frame(0xA, payload)
            elif opcode == 0x8:
                self.transport.close()
        self.buf = buf[pos:]

    def message(self, now, payload):
        if payload.startswith(DELTA_PREFIX):
            self.deltas.append((now, payload)); return
        m = json.loads(payload)
        kind = m.get("type")
        if kind == "generation.delta":
            self.deltas.append((now, payload))
        elif kind == "session.ready":
            self.ready.done() or self.ready.set_result(m)
        elif kind == "generation.started":
            self.started_at, self.generation_id = now, m["generation_id"]
            self.started.done() or self.started.set_result(m)
        elif kind == "generation.done":
            self.done_at, self.done_msg = now, m
            self.done.done() or self.done.set_result(m)
        elif kind == "error":
            self.errors.append(m)
            for f in (self.started, self.done):  # a failed chat.send or resume: nothing more comes
                fail(f, RuntimeError(f"{self.role}: {m}"))

    def send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big") if n else b""
        self.transport.write(head + mask + masked)

    def send(self, obj):
        self.send_frame(0x1, json.dumps(obj).encode())

    def connection_lost(self, exc):
        self.lost = True
        for f in (self.opened, self.ready, self.started, self.done):
            fail(f, ConnectionError(f"{self.role}: connection lost"))

    def close(self):
        if not self.transport.is_closing():
            self.transport.abort()


OPENED = []  # every connection, to close them all whatever happened


async def connect(port, role, timeout):
    _, ws = await asyncio.wait_for(asyncio.get_running_loop().create_connection(lambda: WS(port, role), "127.0.0.1", port), timeout)
    OPENED.append(ws)
    await asyncio.wait_for(ws.opened, timeout)
    return ws


def parse(ws):
    """The connection's deltas as [(time, first_seq, seq, text)] and their text."""
    out = []
    for t, raw in ws.deltas:
        m = json.loads(raw)
        out.append((t, m.get("first_seq", m["seq"]), m["seq"], m["text"]))
    return out, "".join(d[3] for d in out)


def check(deltas, text, done, reference_text, reference_last):
    """Problems of one reader's stream against the owner's: seq gaps, repeats, text, end."""
    missing = duplicated = 0
    expected = 1
    for _, first, last, _ in deltas:
        if first > expected: missing += first - expected
        if first < expected: duplicated += min(last, expected - 1) - first + 1
        expected = max(expected, last + 1)
    if done is not None and done["seq"] > expected - 1: missing += done["seq"] - (expected - 1)
    end_ok = done is not None and done["seq"] == reference_last
    return missing, duplicated, text != reference_text, end_ok


def wait_port(port, request, expect, deadline):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(request)
                if expect in s.recv(256): return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def cpu_seconds(pids):
    """User + system CPU seconds of each process (by PID) and of this one."""
    out = {}
    for name, pid in pids.items():
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            out[name] = float("nan")
    out["client"] = time.process_time()
    return out


def net_counters():
    """System-wide loopback trouble counters: packets dropped because a CPU's input backlog
    (net.core.netdev_max_backlog) was full, TCP retransmissions, tail-loss probes, RTO timeouts."""
    out = {}
    try:
        out["backlog_drops"] = sum(int(line.split()[1], 16) for line in open("/proc/net/softnet_stat"))
        for path, prefix, keys in (("/proc/net/snmp", "Tcp:", ("RetransSegs",)),
                                   ("/proc/net/netstat", "TcpExt:", ("TCPLossProbes", "TCPTimeouts"))):
            lines = [l.split() for l in open(path) if l.startswith(prefix)]
            values = dict(zip(lines[0][1:], lines[1][1:]))
            out.update({k: int(values[k]) for k in keys if k in values})
    except (OSError, IndexError, ValueError):
        pass
    return out


def pinned(cpu, argv):
    return (["taskset", "-c", cpu] + argv) if cpu and shutil.which("taskset") else argv


async def loop_lag(lags, period=0.005):
    """How late this client's event loop wakes up: if it is late, arrival times are too."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period)
        lags.append(time.monotonic() - t - period)


async def run(args, ports, pids, out):
    a_port, b_port = ports
    ttft = args.ttft
    stream_s = args.answer_tokens / args.tokens_per_second if args.tokens_per_second else 1
    io_timeout = 15

    # Phase 1: owners on A; for each, a local follower on A and a remote one on B.
    async def generation(i):
        owner = await connect(a_port, "owner", io_timeout)
        t_send = time.monotonic()
        owner.send({"type": "chat.send", "content": f"fanout {i}: tell me about sluices", "max_tokens": args.answer_tokens})
        started = await asyncio.wait_for(owner.started, io_timeout)
        local, remote = await asyncio.gather(connect(a_port, "local follower", io_timeout), connect(b_port, "remote follower", io_timeout))
        for f in (local, remote):
            f.send({"type": "generation.resume", "generation_id": started["generation_id"], "after_seq": 0})
        await asyncio.wait_for(asyncio.gather(local.started, remote.started), io_timeout)
        return {"owner": owner, "local": local, "remote": remote, "attach": max(local.started_at, remote.started_at) - t_send}

    gens, failures, conns = [], [], []
    t_open, cpu_open, net_open = time.monotonic(), cpu_seconds(pids), net_counters()
    lags = []
    monitor = asyncio.ensure_future(loop_lag(lags))
    for lo in range(0, args.n, args.batch):
        results = await asyncio.gather(*(generation(i) for i in range(lo, min(args.n, lo + args.batch))), return_exceptions=True)
        for r in results:
            (failures.append(repr(r)) if isinstance(r, BaseException) else gens.append(r))
    open_s = time.monotonic() - t_open
    conns = [g[k] for g in gens for k in ("owner", "local", "remote")]
    pending = [g[k].done for g in gens for k in ("owner", "local", "remote")]
    _, not_done = await asyncio.wait(pending, timeout=ttft + 2 * stream_s + 60) if pending else (None, [])
    incomplete = len(not_done) + sum(1 for f in pending if f.done() and f.exception() is not None)
    cpu_end, t_end = cpu_seconds(pids), time.monotonic()
    monitor.cancel()
    out["lag"] = lags or [0.0]
    out["cpu_stream"] = {k: cpu_end[k] - cpu_open[k] for k in cpu_end}
    out["stream_s"] = t_end - t_open
    net_end = net_counters()
    out["net_stream"] = {k: net_end[k] - net_open[k] for k in net_end if k in net_open}
    for c in OPENED: c.close()

    # Analysis of phase 1.
    same, cross = [], []
    merged = {"owner": 0, "local": 0, "remote": 0}
    missing = duplicated = mismatches = bad_end = late = clumped = 0
    owner_text = {}
    dump = open(args.dump, "w") if args.dump else None
    if dump: dump.write("generation_id,seq,owner_s,same_s,cross_s\n")
    for g in gens:
        od, otext = parse(g["owner"])
        merged["owner"] += sum(1 for d in od if d[1] != d[2])
        if g["owner"].done_msg is None:
            continue
        last = g["owner"].done_msg["seq"]
        m, d, _, _ = check(od, otext, g["owner"].done_msg, otext, last)
        missing += m; duplicated += d
        owner_text[g["owner"].generation_id] = (otext, last)
        clumped += sum(1 for x, y in zip(od, od[1:]) if y[0] == x[0])
        at = {}
        for t, first, seq, _ in od:
            for s in range(first, seq + 1): at[s] = t
        arrivals = {s: [t, None, None] for s, t in at.items()}
        for role, sink in (("local", same), ("remote", cross)):
            f = g[role]
            fd, ftext = parse(f)
            merged[role] += sum(1 for x in fd if x[1] != x[2])
            m, d, wrong, end_ok = check(fd, ftext, f.done_msg, otext, last)
            missing += m; duplicated += d; mismatches += wrong; bad_end += not end_ok
            for t, first, seq, _ in fd:
                for s in range(first, seq + 1):
                    if s not in at: continue
                    arrivals[s][1 if role == "local" else 2] = t
                    if at[s] <= f.started_at: late += 1; continue  # replayed, not live: the follower attached after it
                    sink.append(t - at[s])
        if dump:
            for s, (o, l, r) in sorted(arrivals.items()):
                dump.write(f"{g['owner'].generation_id},{s},{o:.6f},{'' if l is None else f'{l:.6f}'},{'' if r is None else f'{r:.6f}'}\n")

    if dump: dump.close()

    # Phase 2: M connections to B resume finished generations from after_seq 0, all at once.
    ids = [g["owner"].generation_id for g in gens if g["owner"].generation_id in owner_text]
    resumers, resume_fail = [], []
    resume_incomplete, wall, sent = 0, float("nan"), []
    if args.resumes and ids:
        for lo in range(0, args.resumes, args.batch):
            results = await asyncio.gather(*(connect(b_port, "resumer", io_timeout) for _ in range(lo, min(args.resumes, lo + args.batch))), return_exceptions=True)
            for r in results:
                (resume_fail.append(repr(r)) if isinstance(r, BaseException) else resumers.append(r))
    if resumers:
        await asyncio.wait([r.ready for r in resumers], timeout=io_timeout)
        sent = []
        t0, cpu0, net0 = time.monotonic(), cpu_seconds(pids), net_counters()
        for k, r in enumerate(resumers):
            r.send({"type": "generation.resume", "generation_id": ids[k % len(ids)], "after_seq": 0})
            sent.append(time.monotonic())
        _, not_done = await asyncio.wait([r.done for r in resumers], timeout=120)
        resume_incomplete = len(not_done) + sum(1 for r in resumers if r.done.done() and r.done.exception() is not None)
        finished = [r.done_at for r in resumers if r.done_at is not None]
        wall = (max(finished) - t0) if finished else float("nan")
        cpu1, net1 = cpu_seconds(pids), net_counters()
        out["net_resume"] = {k: net1[k] - net0[k] for k in net1 if k in net0}
        out["cpu_resume"] = {k: cpu1[k] - cpu0[k] for k in cpu1}
        for c in OPENED: c.close()
    r_seqs = r_merged = r_mismatch = r_missing = r_dup = r_bad_end = 0
    r_lat = []
    for k, r in enumerate(resumers):
        rd, rtext = parse(r)
        otext, last = owner_text[ids[k % len(ids)]]
        m, d, wrong, end_ok = check(rd, rtext, r.done_msg, otext, last)
        r_missing += m; r_dup += d; r_mismatch += wrong; r_bad_end += not end_ok
        r_seqs += sum(x[2] - x[1] + 1 for x in rd)
        r_merged += sum(1 for x in rd if x[1] != x[2])
        if r.done_at is not None: r_lat.append(r.done_at - sent[k])

    errors = [e for c in conns + resumers for e in c.errors]
    out.update(same=same, cross=cross, merged=merged, missing=missing, duplicated=duplicated, mismatches=mismatches,
               bad_end=bad_end, late=late, failures=failures, incomplete=incomplete, gens=len(gens), open_s=open_s,
               attach=[g["attach"] for g in gens], errors=errors, expected=sum(v[1] for v in owner_text.values()),
               finished=len(owner_text), clumped=clumped)
    if resumers or resume_fail:
        out.update(resumes=len(resumers), resume_fail=resume_fail, resume_incomplete=resume_incomplete, wall=wall,
                   r_seqs=r_seqs, r_merged=r_merged, r_mismatch=r_mismatch, r_missing=r_missing, r_dup=r_dup,
                   r_bad_end=r_bad_end, r_lat=r_lat)


def main():
    parser = argparse.ArgumentParser(description="cross-instance vs same-instance delta latency, and resume throughput")
    parser.add_argument("--sluice", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "sluice"))
    parser.add_argument("-n", type=int, default=1000, help="concurrent generations (default 1000)")
    parser.add_argument("-m", "--resumes", type=int, default=1000, help="resumes of finished generations on B (default 1000)")
    parser.add_argument("--tokens-per-second", type=float, default=10)
    parser.add_argument("--answer-tokens", type=int, default=100)
    parser.add_argument("--ttft", type=float, default=2.0, help="simulator time to first token, seconds (default 2)")
    parser.add_argument("--batch", type=int, default=200, help="connections opened at once (default 200)")
    parser.add_argument("--server-cpu", default="0", help='CPUs of redis, A and B (taskset -c; "" = unpinned)')
    parser.add_argument("--client-cpu", default="1", help='CPUs of this script ("" = unpinned)')
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="client event loop: uvloop when installed (auto), else asyncio's")
    parser.add_argument("--dump", help="write every seq's arrival times (monotonic s) at owner, same, cross to this CSV")
    parser.add_argument("--timeout", type=float, default=600, help="bound on the whole run, seconds (default 600)")
    args = parser.parse_args()
    if not os.path.exists(args.sluice):
        raise SystemExit(f"{args.sluice} not found: swift build -c release --product sluice")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(20000, hard if hard != resource.RLIM_INFINITY else 20000)
    if soft < want: resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if args.client_cpu:
        os.sched_setaffinity(0, {int(c) for part in args.client_cpu.split(",")
                                 for c in (range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))})

    loop_factory = None
    args.loop_used = "asyncio"
    if args.loop != "asyncio":
        try:
            import uvloop
            loop_factory, args.loop_used = uvloop.new_event_loop, "uvloop"
        except ImportError:
            if args.loop == "uvloop": raise SystemExit("uvloop is not installed (pip install uvloop)")

    tmp = tempfile.mkdtemp(prefix="sluice-fanout-")
    procs, logs = [], {}
    out = {}
    status = 1
    try:
        redis_port, a_port, b_port = free_port(), free_port(), free_port()
        rlog = open(os.path.join(tmp, "redis.log"), "wb")
        procs.append(subprocess.Popen(pinned(args.server_cpu, [args.redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", tmp]), stdout=rlog, stderr=subprocess.STDOUT))
        if not wait_port(redis_port, b"PING\r\n", b"+PONG", time.monotonic() + 15):
            raise SystemExit("redis-server did not answer PING")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        # Every client of the benchmark is 127.0.0.1: no per-address cap.
        env["SLUICE_SERVER_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
        env.update(SLUICE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                   SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN=f"{int(args.ttft * 1000)}ms",
                   SLUICE_SIMULATOR_TOKENS_PER_SECOND=f"{args.tokens_per_second:g}",
                   SLUICE_SIMULATOR_ANSWER_TOKENS=str(args.answer_tokens))
        for name, port in (("a", a_port), ("b", b_port)):
            logs[name] = os.path.join(tmp, f"sluice-{name}.log")
            procs.append(subprocess.Popen(
                pinned(args.server_cpu, [args.sluice, "serve", "--host", "127.0.0.1", "--port", str(port), "--admin-port", "0", "--threads", "1",
                                         "--max-connections", "20000", "--log-level", "warning",
                                         # Measures fan-out, not persistence (loadtest/persistence-bench.py does).
                                         "--database-url", "memory"]),
                env=dict(env, SLUICE_INSTANCE_ID=name), stdout=open(logs[name], "wb"), stderr=subprocess.STDOUT))
        for port in (a_port, b_port):
            if not wait_port(port, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b" 200 ", time.monotonic() + 30):
                raise SystemExit(f"sluice on port {port} not ready")
        pids = {"redis": procs[0].pid, "A": procs[1].pid, "B": procs[2].pid}
        gc.disable()  # no collector pauses in the client's timestamps; the run allocates little garbage
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(asyncio.wait_for(run(args, (a_port, b_port), pids, out), args.timeout))
        except TimeoutError:
            print(f"gave up after --timeout {args.timeout:g} s", file=sys.stderr)
        else:
            status = report(args, out, logs)
        gc.enable()
    finally:
        for p in reversed(procs):
            if p.poll() is None: p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try: p.wait(timeout=15)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(status)


def report(args, out, logs):
    us = lambda v: f"{v * 1e3:8.3f} ms"
    ps = (50, 90, 99)
    print(f"fan-out: {out['gens']}/{args.n} generations x {args.answer_tokens} tokens at {args.tokens_per_second:g} tok/s, "
          f"ttft {args.ttft:g} s; redis + A + B on CPU {args.server_cpu or '-'}, client ({args.loop_used}) on CPU {args.client_cpu or '-'}")
    if out["attach"]:
        print(f"opened {3 * out['gens']} connections in {out['open_s']:.2f} s; chat.send -> both followers attached: "
              f"p50 {pct(out['attach'], 50) * 1e3:.0f} ms, max {max(out['attach']) * 1e3:.0f} ms")
    print(f"\nadded latency per delta seq (follower arrival - owner arrival)")
    print(f"{'':22}{'seqs':>8}" + "".join(f"{'p' + str(p):>12}" for p in ps) + f"{'max':>12}")
    rows = {}
    for name, vals in (("same instance (A)", out["same"]), ("cross instance (B)", out["cross"])):
        if not vals: print(f"{name:22}{0:>8}"); continue
        rows[name] = [pct(vals, p) for p in ps] + [max(vals)]
        print(f"{name:22}{len(vals):>8}" + "".join(f"{us(v):>12}" for v in rows[name]))
    if len(rows) == 2:
        diff = [c - s for s, c in zip(*rows.values())]
        print(f"{'cross - same':22}{'':>8}" + "".join(f"{us(v):>12}" for v in diff))
    print(f"\nchecks: {out['finished']} generations finished, {out['expected']} seqs each reader; merged frames "
          f"owner {out['merged']['owner']}, same {out['merged']['local']}, cross {out['merged']['remote']}; "
          f"missing seqs {out['missing']}, duplicated {out['duplicated']}, text mismatches {out['mismatches']}, wrong ends "
          f"{out['bad_end']}, incomplete streams {out['incomplete']}, failed set-ups {len(out['failures'])}, "
          f"seqs not measured (follower attached after them) {out['late']}, error messages {len(out['errors'])}")
    lag = out["lag"]
    print(f"pacing: owner deltas read in the same read as the previous seq {out['clumped']} of {out['expected']} "
          f"(the tokens are {1e3 / args.tokens_per_second if args.tokens_per_second else 0:.0f} ms apart); client event loop lag p50 "
          f"{pct(lag, 50) * 1e3:.1f} ms, p99 {pct(lag, 99) * 1e3:.1f} ms, max {max(lag) * 1e3:.1f} ms")
    for f in out["failures"][:3]: print(f"  set-up failure: {f}")
    for e in out["errors"][:3]: print(f"  error: {e}")
    bad = out["missing"] + out["duplicated"] + out["mismatches"] + out["bad_end"] + out["incomplete"] + len(out["failures"])
    result = {"generations": out["gens"], "client_loop": args.loop_used, "tokens_per_second": args.tokens_per_second, "answer_tokens": args.answer_tokens,
              "same_ms": dict(zip(("p50", "p90", "p99", "max"), [round(v * 1e3, 3) for v in rows.get("same instance (A)", [])])),
              "cross_ms": dict(zip(("p50", "p90", "p99", "max"), [round(v * 1e3, 3) for v in rows.get("cross instance (B)", [])])),
              "seqs_same": len(out["same"]), "seqs_cross": len(out["cross"]), "merged_frames": out["merged"],
              "missing": out["missing"], "duplicated": out["duplicated"], "text_mismatches": out["mismatches"],
              "wrong_ends": out["bad_end"], "incomplete": out["incomplete"], "not_measured": out["late"],
              "errors": len(out["errors"]), "owner_clumped": out["clumped"],
              "client_lag_ms": {"p50": round(pct(lag, 50) * 1e3, 2), "p99": round(pct(lag, 99) * 1e3, 2), "max": round(max(lag) * 1e3, 2)}}
    if len(rows) == 2:
        result["cross_minus_same_ms"] = dict(zip(("p50", "p90", "p99", "max"), [round(v * 1e3, 3) for v in diff]))
    if "resumes" in out:
        wall = out["wall"] if out["wall"] == out["wall"] and out["wall"] > 0 else float("inf")
        print(f"\nresume on B of finished generations from after_seq 0: {out['resumes']} at once, all done in "
              f"{wall * 1e3:.1f} ms = {out['resumes'] / wall:,.0f} resumes/s, {out['r_seqs'] / wall:,.0f} delta seqs/s replayed "
              f"({out['r_seqs']} seqs in {out['r_merged']} merged frames)")
        if out["r_lat"]:
            print(f"  per resume, send -> generation.done: p50 {pct(out['r_lat'], 50) * 1e3:.1f} ms  p99 "
                  f"{pct(out['r_lat'], 99) * 1e3:.1f} ms  max {max(out['r_lat']) * 1e3:.1f} ms")
        print(f"  checks: missing seqs {out['r_missing']}, duplicated {out['r_dup']}, text mismatches {out['r_mismatch']}, "
              f"wrong ends {out['r_bad_end']}, incomplete {out['resume_incomplete']}, failed connects {len(out['resume_fail'])}")
        bad += out["r_missing"] + out["r_dup"] + out["r_mismatch"] + out["r_bad_end"] + out["resume_incomplete"] + len(out["resume_fail"])
        result.update(resumes=out["resumes"], resume_wall_ms=round(wall * 1e3, 1) if wall != float("inf") else None,
                      resumes_per_s=round(out["resumes"] / wall),
                      replayed_seqs_per_s=round(out["r_seqs"] / wall), resume_text_mismatches=out["r_mismatch"])
    cpu = lambda c: ", ".join(f"{k} {v:.2f} s" for k, v in c.items())
    print(f"CPU time while streaming ({out['stream_s']:.1f} s from first connect to last done): {cpu(out['cpu_stream'])}")
    result["cpu_stream_s"] = {k: round(v, 2) for k, v in out["cpu_stream"].items()}
    net = lambda c: ", ".join(f"{k} {v}" for k, v in c.items())
    print(f"kernel counters while streaming (system-wide): {net(out['net_stream'])}")
    result["net_stream"] = out["net_stream"]
    if "cpu_resume" in out:
        print(f"CPU time of the resume phase: {cpu(out['cpu_resume'])}")
        result["cpu_resume_s"] = {k: round(v, 2) for k, v in out["cpu_resume"].items()}
        print(f"kernel counters of the resume phase: {net(out['net_resume'])}")
        result["net_resume"] = out["net_resume"]
    for name, path in logs.items():
        lines = [l for l in open(path, errors="replace").read().splitlines() if l.strip()]
        print(f"server {name.upper()} log (warning and above): {len(lines)} lines" + "".join(f"\n  {l[:200]}" for l in lines[:5]))
        result[f"log_lines_{name}"] = len(lines)
    print(json.dumps(result))
    print("command: " + shlex.join(sys.argv))
    return 1 if bad else 0


if __name__ == "__main__":
    main()
