#!/usr/bin/env python3
"""Writes the checked-in seed corpus (Fuzz/corpus/<target>/) and dictionaries (Fuzz/dict/).

Seeds are small hand-made inputs and the test vectors of the unit tests, laid out the way each
target reads its input (option bytes first; see the target's doc comment in
Fuzz/Sources/SluiceFuzz/). Rerun after changing a target's input layout:

    python3 Fuzz/make-corpus.py
"""
import os
import re

import struct
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)
CORPUS = os.path.join(ROOT, "corpus")


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- WebSocket frames

def frame(opcode, payload, fin=True, rsv1=False, key=b"\x37\xfa\x21\x3d", length_form=None):
    """A client frame: masked with `key`."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    form = length_form or (7 if n < 126 else 16 if n <= 0xFFFF else 64)
    if form == 7:
        head = bytes([first, 0x80 | n])
    elif form == 16:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def deflate(data, wbits=-15, level=6):
    """permessage-deflate: raw deflate, sync flush, the 00 00 FF FF tail removed."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, wbits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


ZERO = b"\x00\x00\x00\x00"
HELLO_RFC = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])  # RFC 6455 §5.7
HELLO_DEFLATED = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])  # RFC 7692 §7.2.3.1


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


def frames_corpus():
    # [options] [split seed] [inflate limit] stream; options bit 0 = RSV1 allowed, bits 1-2 frame size, bit 3 reset context.
    big = 0b110  # max frame 1 MiB
    write("frame", "rfc6455-hello", bytes([big, 0, 255]) + HELLO_RFC)
    write("frame", "fragmented-text", bytes([big, 2, 255]) + frame(1, b"Hel", fin=False) + frame(0, b"lo"))
    write("frame", "ping-in-fragments", bytes([big, 3, 255]) + frame(1, b"Hel", fin=False) + frame(9, b"ping") + frame(0, b"lo"))
    write("frame", "close-with-reason", bytes([big, 1, 255]) + frame(8, close_payload(1000, b"bye")))
    write("frame", "close-bad-code", bytes([big, 0, 255]) + frame(8, close_payload(1005)))
    write("frame", "binary-126", bytes([big, 3, 255]) + frame(2, bytes(range(256)) * 1, key=b"\x01\x02\x03\x04"))
    write("frame", "binary-64bit-length", bytes([big, 3, 255]) + frame(2, b"x" * 130, length_form=64))
    write("frame", "utf8-multibyte", bytes([big, 1, 255]) + frame(1, "héllo 🌊 wörld".encode()))
    write("frame", "utf8-split-in-fragments", bytes([big, 1, 255])
          + frame(1, "🌊".encode()[:2], fin=False, key=ZERO) + frame(0, "🌊".encode()[2:], key=ZERO))
    write("frame", "utf8-invalid", bytes([big, 1, 255]) + frame(1, b"ok\xed\xa0\x80", key=ZERO))
    write("frame", "unmasked", bytes([big, 0, 255]) + bytes([0x81, 0x02]) + b"hi")
    write("frame", "reserved-opcode", bytes([big, 0, 255]) + frame(3, b""))
    write("frame", "too-big-for-125", bytes([0, 2, 255]) + frame(2, b"y" * 200))
    write("frame", "rfc7692-hello", bytes([big | 1, 0, 255])
          + frame(1, HELLO_DEFLATED, rsv1=True, key=ZERO))
    write("frame", "deflate-fragmented", bytes([big | 1, 2, 255])
          + frame(1, HELLO_DEFLATED[:3], fin=False, rsv1=True, key=ZERO) + frame(0, HELLO_DEFLATED[3:], key=ZERO))
    shared = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = shared.compress(b"hello hello hello") + shared.flush(zlib.Z_SYNC_FLUSH)
    second = shared.compress(b"hello again, hello") + shared.flush(zlib.Z_SYNC_FLUSH)
    write("frame", "deflate-context-takeover", bytes([big | 1, 3, 255])
          + frame(1, first[:-4], rsv1=True, key=ZERO) + frame(1, second[:-4], rsv1=True, key=ZERO))
    write("frame", "deflate-no-context-takeover", bytes([big | 1 | 8, 3, 255])
          + frame(1, deflate(b"abc" * 40), rsv1=True, key=ZERO) + frame(2, deflate(bytes(range(50))), rsv1=True, key=ZERO))
    write("frame", "deflate-bomb", bytes([big | 1, 0, 4]) + frame(2, deflate(b"\0" * 20000, level=9), rsv1=True, key=ZERO))
    write("frame", "deflate-rsv1-not-allowed", bytes([big, 0, 255]) + frame(1, HELLO_DEFLATED, rsv1=True, key=ZERO))


def utf8_corpus():
    samples = {
        "ascii": b"hello, world",
        "multibyte": "héllo 🌊 wörld — ☃".encode(),
        "overlong": b"a\xc0\x80b",
        "surrogate": b"\xed\xa0\x80",
        "above-max": b"\xf4\x90\x80\x80",
        "truncated": "🌊".encode()[:3],
        "e0-boundary": b"\xe0\xa0\x80\xe0\x9f\xbf",
        "long-ascii-then-bad": b"abcdefghijklmnop\xff",
    }
    for name, text in samples.items():
        write("utf8", name, bytes([1]) + text)
        write("utf8", name + "-whole", bytes([0]) + text)


def inflate_corpus():
    # [options] [split seed] [limit/257] [cut] compressed; options bit 0 = two messages cut after `cut` bytes,
    # bit 1 = reset between.
    write("inflate", "rfc7692-hello", bytes([0, 0, 255, 0]) + HELLO_DEFLATED)
    write("inflate", "text", bytes([0, 2, 255, 0]) + deflate(b"The quick brown fox jumps over the lazy dog. " * 4))
    write("inflate", "bomb-small-limit", bytes([0, 3, 1, 0]) + deflate(b"a" * 30000, level=9))
    write("inflate", "stored-block", bytes([0, 1, 255, 0]) + deflate(bytes(range(200)), level=0))
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    write("inflate", "final-block", bytes([0, 0, 255, 0]) + final.compress(b"final block") + final.flush(zlib.Z_FINISH))
    shared = zlib.compressobj(6, zlib.DEFLATED, -15)
    a = (shared.compress(b"message one, message") + shared.flush(zlib.Z_SYNC_FLUSH))[:-4]
    b = (shared.compress(b"message two, message") + shared.flush(zlib.Z_SYNC_FLUSH))[:-4]
    write("inflate", "two-messages-takeover", bytes([1, 2, 255, len(a)]) + a + b)
    a = deflate(b"x" * 30)
    write("inflate", "two-messages-reset", bytes([3, 2, 255, len(a)]) + a + deflate(b"x" * 30))
    write("inflate", "corrupt", bytes([0, 0, 255, 0]) + b"\xff\xff\xff\xff")


# ---------------------------------------------------------------- HTTP upgrade

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_request(path="/v1/ws", extra="", version="13", key=KEY, method="GET"):
    return (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n").encode()


def upgrade_corpus():
    # [options] [more options] [split seed] bytes; options bit 0 deflate, 1 origins, 2 no slot,
    # 3 draining, 4 small messages, 5 small frames, 6 peer stops reading, 7 refusal for URIs with
    # "refuse"; more options bit 0 one proxy (X-Forwarded-For), 1 one connection per address,
    # 2 a 16 KiB memory budget, 3 no per-address cap.
    frames = frame(1, b"hello") + frame(9, b"p") + frame(8, close_payload(1000))
    write("upgrade", "upgrade-and-frames", bytes([0, 0, 0]) + upgrade_request(extra="Sec-WebSocket-Protocol: sluice.v1\r\n") + frames)
    write("upgrade", "upgrade-deflate", bytes([1, 0, 3]) + upgrade_request(
        extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
        + frame(1, HELLO_DEFLATED, rsv1=True, key=ZERO) + frame(1, b"x" * 300) + frame(8, b""))
    write("upgrade", "upgrade-deflate-params", bytes([1, 0, 2]) + upgrade_request(
        extra="Sec-WebSocket-Extensions: x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover; "
              "client_no_context_takeover; server_max_window_bits=8; client_max_window_bits=10\r\n")
        + frame(1, deflate(b"abc" * 50), rsv1=True, key=ZERO))
    write("upgrade", "health-then-upgrade-in-place", bytes([0, 0, 3]) + b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
          + upgrade_request() + frame(2, b"\x00\x01\x02"))
    write("upgrade", "pipelined-routes", bytes([0, 0, 2]) + b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
          b"GET /v1/ws HTTP/1.1\r\nHost: a\r\n\r\nHEAD /health HTTP/1.0\r\n\r\n")
    write("upgrade", "post-echo-body", bytes([0, 0, 0]) + b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world")
    write("upgrade", "post-chunked-stream", bytes([16, 0, 2]) + b"POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"5\r\nhello\r\n0\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    write("upgrade", "post-too-large", bytes([16, 0, 3]) + b"POST /echo HTTP/1.1\r\nContent-Length: 2000\r\n\r\n" + b"z" * 2000)
    write("upgrade", "expect-continue", bytes([16, 0, 0]) + b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n")
    write("upgrade", "bad-version", bytes([0, 0, 0]) + upgrade_request(version="8"))
    write("upgrade", "bad-key", bytes([0, 0, 0]) + upgrade_request(key="short"))
    write("upgrade", "post-upgrade", bytes([0, 0, 0]) + upgrade_request(method="POST"))
    write("upgrade", "origin-refused", bytes([2, 0, 0]) + upgrade_request(extra="Origin: https://evil.example\r\n"))
    write("upgrade", "origin-allowed", bytes([2, 0, 1]) + upgrade_request(extra="Origin: https://chat.example\r\n") + frame(1, b"x"))
    write("upgrade", "no-slot", bytes([4, 0, 0]) + upgrade_request())
    write("upgrade", "draining", bytes([8, 0, 0]) + upgrade_request() + b"GET /ready HTTP/1.1\r\n\r\n")
    write("upgrade", "application-refuses", bytes([128, 0, 0]) + upgrade_request(path="/v1/ws?refuse=1"))
    write("upgrade", "small-limits", bytes([48, 0, 3]) + upgrade_request() + frame(1, b"a" * 120, fin=False) + frame(0, b"b" * 120)
          + frame(2, b"c" * 200))
    write("upgrade", "slow-reader", bytes([64, 0, 2]) + upgrade_request() + b"".join(frame(1, b"echo me %d" % i) for i in range(20)))
    write("upgrade", "garbage", bytes([0, 0, 1]) + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    write("upgrade", "http10-upgrade", bytes([0, 0, 0]) + upgrade_request().replace(b"HTTP/1.1", b"HTTP/1.0"))
    write("upgrade", "forwarded-for", bytes([0, 1 | 2, 2]) + upgrade_request(extra="X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n")
          + frame(1, b"hi"))
    write("upgrade", "small-budget", bytes([1, 4, 3]) + upgrade_request(
        extra="Sec-WebSocket-Extensions: permessage-deflate\r\n") + frame(2, b"m" * 3000, fin=False) + frame(0, b"n" * 3000)
          + b"".join(frame(1, b"x" * 100) for _ in range(10)))
    write("upgrade", "post-over-budget", bytes([0, 4, 0]) + b"POST /echo HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" + b"q" * 2000)
    write("upgrade", "duplicate-headers", bytes([0, 0, 0]) + upgrade_request(extra=f"Sec-WebSocket-Key: {KEY}\r\nUpgrade: h2c\r\n"))


# ---------------------------------------------------------------- SSE, RESP

SSE_SAMPLE = ("\ufeff: keep-alive\n"
              "data: {\"a\":1}\n\n"
              "event: delta\nid: 7\ndata: first\ndata:second\ndata:  indented\n\n"
              ": comment between events\nretry: 100\n\n"
              "data: héllo 🌊 wörld\n\n"
              "data\n\n"
              "unknown: field\ndata: after unknown\nid\n\n"
              "event: end\n\n"
              "data: [DONE]\n\n"
              "data: never dispatched, no blank line\n")


def sse_corpus():
    # [limit/8 - 1] [split seed] stream
    write("sse", "test-sample", bytes([255, 0]) + SSE_SAMPLE.encode())
    write("sse", "test-sample-crlf", bytes([255, 2]) + SSE_SAMPLE.replace("\n", "\r\n").encode())
    write("sse", "test-sample-cr", bytes([255, 3]) + SSE_SAMPLE.replace("\n", "\r").encode())
    chunk = ('data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},'
             '"finish_reason":null}]}\n\n')
    write("sse", "openai-stream", bytes([255, 3]) + (chunk * 3 + "data: [DONE]\n\n").encode())
    write("sse", "over-limit", bytes([2, 1]) + b"data: " + b"x" * 40 + b"\n\n")
    write("sse", "id-with-nul", bytes([20, 0]) + b"id: a\x00b\ndata: x\n\n")
    write("sse", "invalid-utf8", bytes([20, 1]) + b"data: \xff\xfe\n\n")


RESP_SAMPLES = {
    "every-type": b"+OK\r\n-ERR unknown command 'FOO'\r\n:-42\r\n$5\r\nhello\r\n$0\r\n\r\n$-1\r\n*0\r\n*-1\r\n",
    "binary-bulk": b"$10\r\n\x00\r\n\xff\x00$-1\r\n\r\n",
    "nested-xread": b"*2\r\n*2\r\n$6\r\nstream\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*4\r\n$-1\r\n*-1\r\n-WRONGTYPE bad\r\n:7\r\n",
    "split-reply": b"*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n+done\r\n$4\r\nnext\r\n",
    "pubsub-message": b"*3\r\n$7\r\nmessage\r\n$7\r\nchannel\r\n$5\r\nhello\r\n",
    "deep": b"*1\r\n" * 8 + b":1\r\n",
    "bad-type": b"?what\r\n",
    "bad-length": b"$abc\r\nxyz\r\n",
    "big-integer": b":9223372036854775807\r\n:-9223372036854775808\r\n",
}


def resp_corpus():
    for name, data in RESP_SAMPLES.items():
        write("resp", name, bytes([3]) + data)


# ---------------------------------------------------------------- sluice.v1, OpenAI

CLIENT_MESSAGES = {
    "plain-text": "  hello there  \n",
    "chat-send": '{"type":"chat.send","content":"hi","request_id":"r1","conversation_id":"c1","model":"auto",'
                 '"max_tokens":64,"temperature":0.7,"tools":["clock","calculator"]}',
    "chat-send-huge-max-tokens": '{"type":"chat.send","content":"x","max_tokens":9223372036854775000}',
    "chat-send-bad-temperature": '{"type":"chat.send","content":"x","temperature":3}',
    "chat-send-bool": '{"type":"chat.send","content":"x","max_tokens":true}',
    "cancel": '{"type":"generation.cancel","generation_id":"g1"}',
    "resume": '{"type":"generation.resume","generation_id":"g1","after_seq":12}',
    "resume-negative": '{"type":"generation.resume","generation_id":"g1","after_seq":-1}',
    "subscribe": '{"type":"conversation.subscribe","conversation_id":"c1"}',
    "unsubscribe": '{"type":"conversation.unsubscribe","conversation_id":"c1"}',
    "list": '{"type":"conversation.list","limit":20,"before":"cursor","request_id":"r2"}',
    "history": '{"type":"conversation.history","conversation_id":"c1","limit":1e3}',
    "ping": '{"type":"ping","id":"p1"}',
    "job-submit": '{"type":"job.submit","kind":"report","input":{"topic":"x","n":[1,2.5,null,true]},"priority":"high",'
                  '"idempotency_key":"k","max_attempts":3,"request_id":"r3"}',
    "job-cancel": '{"type":"job.cancel","job_id":"j1","request_id":"r4"}',
    "job-get": '{"type":"job.get","job_id":"j1"}',
    "unknown-type": '{"type":"nope"}',
    "not-object": '[1,2,3]',
    "surrogate": '{"type":"chat.send","content":"\\ud800"}',
    "deep": '{"type":"job.submit","kind":"k","input":' + "[" * 64 + "]" * 64 + "}",
}

OPENAI_REQUESTS = {
    "simple": '{"model":"auto","messages":[{"role":"user","content":"hi"}]}',
    "stream": '{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],'
              '"stream":true,"stream_options":{"include_usage":true},"max_tokens":32,"temperature":0.2}',
    "parts": '{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]}]}',
    "assistant-null": '{"messages":[{"role":"assistant","content":null},{"role":"tool","content":"42"},'
                      '{"role":"developer","content":"d"}],"max_completion_tokens":5}',
    "huge-max-tokens": '{"messages":[{"role":"user","content":"x"}],"max_tokens":4611686018427387904}',
    "bad-role": '{"messages":[{"role":"robot","content":"x"}]}',
    "empty": '{"messages":[]}',
    "client-tools": '{"messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":'
                    '[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":\\"Oslo\\"}"}}]},'
                    '{"role":"tool","tool_call_id":"call_1","content":"-3 C"}],"tools":[{"type":"function","function":'
                    '{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":'
                    '{"city":{"type":"string","enum":["Oslo",1.5e300,null,true]}},"required":["city"]}}}],'
                    '"tool_choice":{"type":"function","function":{"name":"get_weather"}}}',
    # The wrong types a client's tools can bring (each a 400 at the door).
    "tool-arguments-number": '{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function",'
                             '"function":{"name":"f","arguments":7}}]}]}',
    "tool-call-id-number": '{"messages":[{"role":"tool","content":"r","tool_call_id":12}]}',
    "tool-parameters-array": '{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":'
                             '{"name":"f","parameters":[1,2]}}],"tool_choice":"required"}',
}


def protocol_corpus():
    for name, text in CLIENT_MESSAGES.items():
        write("client-message", name, bytes([11]) + text.encode())  # 64 KiB content, max_tokens 32768
    write("client-message", "too-large", bytes([8]) + CLIENT_MESSAGES["chat-send"].encode())
    for name, text in OPENAI_REQUESTS.items():
        write("openai-request", name, bytes([11]) + text.encode())
    write("openai-request", "too-large", bytes([8]) + OPENAI_REQUESTS["stream"].encode())


# ---------------------------------------------------------------- traceparent, cron, configuration

def small_corpora():
    for name, text in {
        "w3c-example": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "unsampled": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "future-version": "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra",
        "version-ff": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "zero-trace": "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "uppercase": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    }.items():
        write("traceparent", name, text)

    cron_path = os.path.join(REPO, "Tests", "JobsTests", "CronScheduleTests.swift")
    expressions = set()
    with open(cron_path, encoding="utf-8") as f:
        for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', f.read()):
            if not re.match(r"^\d{4}-\d\d-\d\dT", literal):
                expressions.add(literal.replace("\\t", "\t"))
    expressions |= {"@yearly", "@hourly", "@weekly", "@midnight", "@bogus", "0 0 29 2 mon", "*/61 * * * *", "59 23 31 12 7"}
    # 2024-05-01T10:07:00Z and 1900-03-01T00:00:00Z as the 8-byte date seed (seconds from 1600).
    for index, expression in enumerate(sorted(expressions)):
        base = 1714558020 if index % 2 == 0 else -2203891200
        seed = base + 11_676_096_000
        write("cron", "expr-%02d" % index, struct.pack(">Q", seed) + expression.encode())


def config_corpus():
    with open(os.path.join(REPO, "config", "sluice.yaml"), encoding="utf-8") as f:
        text = f.read()
    # One seed per top-level section (each a few hundred bytes), comments dropped.
    sections = re.split(r"\n(?=[a-z_]+:)", text)
    for section in sections:
        lines = [re.sub(r"\s+#.*$", "", line) for line in section.splitlines() if not line.lstrip().startswith("#")]
        body = "\n".join(line for line in lines if line.strip()) + "\n"
        name = re.match(r"([a-z_]+):", body)
        if name:
            write("config", "section-" + name.group(1), body)
    for name in ["sluice.production.yaml", "autobahn.yaml"]:
        with open(os.path.join(REPO, "config", name), encoding="utf-8") as f:
            write("config", name, f.read())
    write("config", "env-only", b"\x00SLUICE_SERVER_PORT=9000\nSLUICE_WEBSOCKET_MAX_FRAME_SIZE=64KiB\nSLUICE_JWT_SECRET=\n"
          b"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318\nLIMITS_MESSAGES_PER_MINUTE=5")
    write("config", "env-records", b"log_level: debug\n\x00SLUICE_UPSTREAMS=[{name: a, kind: openai, base_url: \"http://127.0.0.1:1\"}]\n"
          b"SLUICE_AUTH_KEYS=[{kid: k1, alg: HS256, secret: 0123456789abcdef0123456789abcdef}]")
    write("config", "bad-yaml", "server: [unclosed\n  port: 80\n")
    write("config", "aliases", "server: &s\n  port: 1\nwebsocket: *s\n")
    write("config", "durations-and-sizes", "websocket:\n  heartbeat_interval: 1.5m\n  max_frame_size: 999999999999GiB\n"
          "server:\n  handshake_timeout: 99999999999999d\n")
    write("config", "schedules", "jobs:\n  schedules:\n    - {name: nightly, cron: \"0 3 * * *\", kind: report, input: \"{}\"}\n")


# ---------------------------------------------------------------- dictionaries

def dictionaries():
    directory = os.path.join(ROOT, "dict")
    os.makedirs(directory, exist_ok=True)

    def put(name, tokens):
        with open(os.path.join(directory, name + ".dict"), "w", encoding="utf-8") as f:
            for token in tokens:
                escaped = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "\\x%02x" % ord(c) for c in token)
                f.write('"%s"\n' % escaped)

    put("upgrade", ["GET ", "POST ", "HEAD ", " HTTP/1.1\r\n", " HTTP/1.0\r\n", "\r\n", "\r\n\r\n", "/v1/ws", "/health", "/ready",
                    "/echo", "/stream", "?refuse", "Host: ", "Upgrade: websocket\r\n", "Connection: Upgrade\r\n",
                    "Connection: keep-alive\r\n", "Connection: close\r\n", "Sec-WebSocket-Key: " + KEY + "\r\n",
                    "Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Protocol: sluice.v1\r\n",
                    "Sec-WebSocket-Extensions: permessage-deflate", "; client_max_window_bits", "; server_max_window_bits=",
                    "; server_no_context_takeover", "; client_no_context_takeover", "Origin: https://chat.example\r\n",
                    "Content-Length: ", "Transfer-Encoding: chunked\r\n", "Expect: 100-continue\r\n", "0\r\n\r\n",
                    "\x81\x80\x00\x00\x00\x00", "\x88\x82\x00\x00\x00\x00\x03\xe8", "\x89\x80\x00\x00\x00\x00",
                    "\xc1\x80\x00\x00\x00\x00", "\x00\x00\xff\xff"])
    put("frame", ["\x81", "\x01", "\x80", "\x82", "\x88", "\x89", "\x8a", "\xc1", "\x41", "\x00\x00\x00\x00", "\xfe", "\xff",
                  "\x03\xe8", "\x00\x00\xff\xff", "\xed\xa0\x80", "\xf0\x9f\x8c\x8a"])
    put("utf8", ["\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf", "\xed\xa0\x80", "\xef\xbf\xbf", "\xf0\x90\x80\x80",
                 "\xf4\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xc0\x80", "\xc1\xbf", "\xf5", "\xff"])
    put("sse", ["data:", "data: ", "event:", "event: ", "id:", "id: ", "retry:", ":", "\r\n", "\r", "\n\n", "\xef\xbb\xbf",
                "[DONE]"])
    put("resp", ["+OK\r\n", "-ERR ", ":", "$", "*", "\r\n", "$-1\r\n", "*-1\r\n", "*0\r\n", "$0\r\n\r\n", "*2147483648\r\n",
                 "$9223372036854775807\r\n", "*-2\r\n", "$-2\r\n"])
    json = ['{"', '":', '"', '",', '}', '[', ']', 'null', 'true', 'false', '1e999', '-1', '0.5', '9223372036854775807',
            '18446744073709551616', '\\u0000', '\\ud800']
    put("client-message", json + ['"type":', '"chat.send"', '"content":', '"request_id":', '"conversation_id":', '"model":',
                                  '"max_tokens":', '"temperature":', '"tools":', '"generation.cancel"', '"generation.resume"',
                                  '"generation_id":', '"after_seq":', '"conversation.subscribe"', '"conversation.unsubscribe"',
                                  '"conversation.list"', '"conversation.history"', '"limit":', '"before":', '"ping"', '"id":',
                                  '"job.submit"', '"kind":', '"input":', '"priority":', '"idempotency_key":', '"max_attempts":',
                                  '"job.cancel"', '"job.get"', '"job_id":'])
    put("openai-request", json + ['"messages":', '"role":', '"content":', '"user"', '"system"', '"assistant"', '"tool"',
                                  '"developer"', '"type":', '"text"', '"text":', '"model":', '"stream":', '"stream_options":',
                                  '"include_usage":', '"max_tokens":', '"max_completion_tokens":', '"temperature":',
                                  '"tools":', '"tool_choice":', '"tool_calls":', '"tool_call_id":', '"function"', '"function":',
                                  '"name":', '"parameters":', '"description":', '"arguments":', '"id":', '"required"',
                                  '"auto"', '"none"'])
    put("traceparent", ["00-", "-01", "-00", "ff-", "0000000000000000", "-"])
    put("cron", ["*", "*/", "-", ",", "/", " ", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly",
                 "jan", "dec", "sun", "sat", "mon-fri", "59", "23", "31", "12", "7", "0000"])
    keys = set()
    loader = open(os.path.join(REPO, "Sources", "SluiceApp", "ConfigurationLoader.swift"), encoding="utf-8").read()
    for key in re.findall(r'\.\w+\("([a-z_]+(?:\.[a-z_]+)*)"', loader):
        keys.add(key)
    tokens = {": ", ":\n", "\n  ", "- ", "[", "]", "{", "}", ", ", "null", "~", "true", "false", "&a ", "*a", "!!str ", "\"",
              "ms", "s", "m", "h", "d", "KiB", "MiB", "GiB", "KB", "=", "\x00", "\n"}
    for key in sorted(keys):
        parts = key.split(".")
        tokens.add(parts[-1] + ": ")
        for part in parts[:-1]:
            tokens.add(part + ":\n  ")
        tokens.add("SLUICE_" + "_".join(parts).upper() + "=")
    put("config", sorted(tokens))


if __name__ == "__main__":
    # Existing files stay: regression inputs (regression-*) and merged finds live beside the generated seeds.
    frames_corpus()
    utf8_corpus()
    inflate_corpus()
    upgrade_corpus()
    sse_corpus()
    resp_corpus()
    protocol_corpus()
    small_corpora()
    config_corpus()
    dictionaries()
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        size = sum(os.path.getsize(os.path.join(CORPUS, target, f)) for f in files)
        print("%-16s %3d seeds %6d bytes" % (target, len(files), size))
