#!/usr/bin/env python3
"""End-to-end check against a real model: Sluice in front of llama.cpp's llama-server running
SmolLM2-135M (../shared/tools/llm-upstream/start-smollm2.sh), with ONE decoding slot.

1. A chat streams real text through Sluice (`sluice serve --upstream URL`).
2. A long generation is cancelled after a few deltas; then, from the upstream's side:
   - llama-server's /metrics shows no request still processing, and
   - a second request, which needs the only slot, gets its first token at once instead of
     stalling behind the cancelled one (which would have run to 1,500 tokens).
3. A `report` job (Redis queue, a worker inside serve) plans and writes its sections with the
   real model, with live progress on the socket, and its Markdown result is downloadable.
4. Tools (calculator, current_time) are offered with a chat. SmolLM2-135M's chat template has no
   tool section (llama-server's /props: chat_template_caps.supports_tools false; the prompt is
   the same with and without tools), so the model answers in prose: checked is that a chat
   with tools offered streams normally. Were the template to support tools, tool.call and
   tool.result events would be required.
Usage: e2e-llm.py SLUICE_BINARY UPSTREAM_URL. Loopback only; Sluice is stopped by PID.
"""
import asyncio, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

import websockets

sluice, upstream = sys.argv[1], sys.argv[2].rstrip("/")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def processing():
    text = urllib.request.urlopen(upstream + "/metrics", timeout=5).read().decode()
    match = re.search(r"^llamacpp:requests_processing\s+([0-9.]+)", text, re.M)
    return float(match.group(1)) if match else None


async def answer(ws, content, max_tokens, cancel_after=None, conversation=None):
    message = {"type": "chat.send", "content": content, "max_tokens": max_tokens}
    if conversation: message["conversation_id"] = conversation
    await ws.send(json.dumps(message))
    started = time.monotonic()
    text, first_delta_at, gid, seqs = "", None, None, []
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if m["type"] == "generation.started":
            gid = m["generation_id"]
            conversation_id = m["conversation_id"]
        elif m["type"] == "generation.delta":
            first_delta_at = first_delta_at or time.monotonic() - started
            seqs.append(m["seq"]); text += m["text"]
            if cancel_after and len(seqs) == cancel_after:
                await ws.send(json.dumps({"type": "generation.cancel", "generation_id": gid}))
        elif m["type"] == "generation.done":
            m["conversation_id"] = conversation_id
            return m, text, first_delta_at, seqs
        elif m["type"] == "error":
            raise SystemExit(f"e2e: error from Sluice: {m}")


async def report_job(ws, failures):
    await ws.send(json.dumps({"type": "job.submit", "kind": "report",
                              "input": {"prompt": "Rivers and canals", "sections": 2, "max_tokens": 48}}))
    job_id, steps = None, []
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), 300))
        if m["type"] == "job.accepted": job_id = m["job_id"]
        elif m["type"] == "job.progress" and m.get("job_id") == job_id: steps.append(m.get("progress", {}).get("message", ""))
        elif m["type"] == "job.done" and m.get("job_id") == job_id: break
        elif m["type"] == "error": failures.append(f"report job: {m}"); return None, steps
    print(f"e2e: report job {m['state']} after {len(steps)} progress events: {steps[1:3]}")
    if m["state"] != "SUCCEEDED": failures.append(f"report job ended {m['state']}: {m.get('error')}")
    return job_id, steps


async def tools_chat(ws, failures):
    caps = json.loads(urllib.request.urlopen(upstream + "/props", timeout=5).read()).get("chat_template_caps", {})
    supports = caps.get("supports_tools")
    await ws.send(json.dumps({"type": "chat.send", "content": "What is 6 times 7? Use the calculator tool.", "max_tokens": 40}))
    events, text = [], ""
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if m["type"] in ("tool.call", "tool.result"): events.append(m)
        elif m["type"] == "generation.delta": text += m["text"]
        elif m["type"] == "generation.done": break
        elif m["type"] == "error": failures.append(f"tools chat: {m}"); return
    print(f"e2e: tools offered; template supports_tools={supports}; tool events {[e['type'] for e in events]}; "
          f"answer ({m['finish_reason']}): {text.strip()[:80]!r}")
    if m["finish_reason"] not in ("stop", "length"): failures.append(f"tools chat ended {m['finish_reason']}")
    if supports and not any(e["type"] == "tool.result" for e in events):
        failures.append("the template supports tools but no tool ran")
    if not supports and events:
        print("e2e: (the model called a tool although its template has no tool section)")


async def main():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    data_dir = tempfile.mkdtemp(prefix="sluice-e2e-")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", data_dir,
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    env.update({"SLUICE_REDIS_URL": f"redis://127.0.0.1:{redis_port}", "SLUICE_JOBS_WORKERS_IN_SERVE": "1",
                "SLUICE_TOOLS_ENABLED": "calculator,current_time"})
    proc = subprocess.Popen([sluice, "serve", "--port", str(port), "--admin-port", "0", "--upstream", upstream, "--log-level", "warning",
                             "--data-dir", data_dir], env=env)
    failures = []
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2): break
            except OSError:
                time.sleep(0.1)
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["sluice.v1"]) as ws:
            ready = json.loads(await ws.recv())
            print(f"e2e: session.ready model={ready.get('model')}")
            done, text, _, seqs = await answer(ws, "What is the capital of France? Answer in one sentence.", 40)
            print(f"e2e: answer ({done['finish_reason']}, {len(seqs)} deltas, usage {done['usage']}): {text.strip()[:120]!r}")
            if not text.strip(): failures.append("no text streamed")
            if seqs != list(range(1, len(seqs) + 1)): failures.append(f"seqs not contiguous: {seqs[:10]}")
            if done["finish_reason"] not in ("stop", "length"): failures.append(f"finish_reason {done['finish_reason']}")

            # The conversation goes on with its context, and both turns are in the stored history.
            conversation, first_text, first_prompt = done["conversation_id"], text, done["usage"]["prompt_tokens"]
            done, second_text, _, _ = await answer(ws, "And of Germany?", 40, conversation=conversation)
            # Alone, the shorter question would be a shorter prompt: a longer one carried the context.
            if done["usage"]["prompt_tokens"] <= first_prompt:
                failures.append(f"follow-up prompt {done['usage']['prompt_tokens']} tokens <= first {first_prompt}: no context sent")
            print(f"e2e: follow-up in {conversation} ({done['finish_reason']}, prompt_tokens {done['usage']['prompt_tokens']}): {second_text.strip()[:80]!r}")
            await ws.send(json.dumps({"type": "conversation.history", "conversation_id": conversation}))
            history = json.loads(await asyncio.wait_for(ws.recv(), 30))
            stored = [m["content"] for m in reversed(history.get("messages", []))]
            expected = ["What is the capital of France? Answer in one sentence.", first_text, "And of Germany?", second_text]
            print(f"e2e: stored history: {len(stored)} messages")
            if stored != expected: failures.append(f"stored history differs: {stored!r}")

            done, text, _, seqs = await answer(ws, "Write a very long story about a river and a gate.", 1500, cancel_after=5)
            cancelled_at = time.monotonic()
            print(f"e2e: cancelled ({done['finish_reason']}, seq {done['seq']}, usage {done['usage']})")
            if done["finish_reason"] != "cancelled": failures.append(f"cancel gave {done['finish_reason']}")
            busy = None
            for _ in range(50):  # llama-server notices the closed connection at its next token
                busy = processing()
                if busy == 0: break
                time.sleep(0.1)
            print(f"e2e: llama-server requests_processing after cancel: {busy} "
                  f"({(time.monotonic() - cancelled_at) * 1000:.0f} ms after the cancel)")
            if busy != 0: failures.append(f"upstream still processing after cancel: {busy}")

            done, text, first, _ = await answer(ws, "Say hello.", 8)
            print(f"e2e: next request on the only slot: first delta after {first * 1000:.0f} ms ({done['finish_reason']})")
            if first is None or first > 10: failures.append(f"next request stalled ({first} s): the slot was still busy")

        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws?user=e2e", subprotocols=["sluice.v1"]) as ws:
            await ws.recv()
            job_id, _ = await report_job(ws, failures)
            if job_id:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/jobs/{job_id}/result", headers={"X-Sluice-User": "e2e"})
                markdown = urllib.request.urlopen(request, timeout=10).read().decode()
                sections = markdown.split("\n## ")[1:]
                print(f"e2e: report: {len(markdown)} characters, {len(sections)} sections: {[s.splitlines()[0] for s in sections]}")
                if not markdown.startswith("# Rivers and canals") or len(sections) != 2 or not all(len(s.splitlines()) > 1 for s in sections):
                    failures.append(f"report result malformed: {markdown[:200]!r}")
            await tools_chat(ws, failures)
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill()
        redis.send_signal(signal.SIGTERM)
        try: redis.wait(timeout=10)
        except subprocess.TimeoutExpired: redis.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    if failures:
        print("e2e: FAILED: " + "; ".join(failures)); sys.exit(1)
    print("e2e: 1 passed, 0 failed")


asyncio.run(main())
