#!/usr/bin/env python3
"""End-to-end check against a real model: Sluice in front of llama.cpp's llama-server running
SmolLM2-135M (../shared/tools/llm-upstream/start-smollm2.sh), with ONE decoding slot.

1. A chat streams real text through Sluice (`sluice serve --upstream URL`).
2. A long generation is cancelled after a few deltas; then, from the upstream's side:
   - llama-server's /metrics shows no request still processing, and
   - a second request, which needs the only slot, gets its first token at once instead of
     stalling behind the cancelled one (which would have run to 1,500 tokens).
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


async def main():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    data_dir = tempfile.mkdtemp(prefix="sluice-e2e-")
    proc = subprocess.Popen([sluice, "serve", "--port", str(port), "--upstream", upstream, "--log-level", "warning",
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
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    if failures:
        print("e2e: FAILED: " + "; ".join(failures)); sys.exit(1)
    print("e2e: 1 passed, 0 failed")


asyncio.run(main())
