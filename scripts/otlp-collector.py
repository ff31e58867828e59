#!/usr/bin/env python3
"""A minimal OTLP/HTTP (JSON) trace receiver, for tests and for looking at Sluice's spans
without a full OpenTelemetry Collector.

Every POST to /v1/traces is decoded with the official protobuf definitions
(`opentelemetry-proto` from PyPI), strictly: an unknown field, a wrong type or an id of the
wrong length is answered with 400 and logged. Accepted spans are appended to --out as one JSON
object per line:
  {"trace_id", "span_id", "parent_span_id", "name", "kind", "start", "end",
   "attributes": {key: value}, "events": [name, ...], "status": {"code", "message"},
   "resource": {key: value}}

  pip install opentelemetry-proto
  python3 scripts/otlp-collector.py --port 4318 --out spans.jsonl
  sluice serve --otlp-endpoint http://127.0.0.1:4318

Loopback only; stops on SIGTERM/SIGINT, or after --max-seconds. With --port 0 it binds a port
the kernel picks and prints it ("otlp-collector: listening on 127.0.0.1:<port>").
"""
import argparse
import base64
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def hex_ids_to_base64(node):
    """OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping expects base64
    (the OTLP specification's one deviation); convert, checking the length."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key in ID_LENGTHS and isinstance(value, str):
                if value == "" and key == "parentSpanId":
                    continue
                raw = bytes.fromhex(value)  # raises on anything but hex
                if len(raw) != ID_LENGTHS[key] or value != value.lower():
                    raise ValueError(f"{key} {value!r} is not {ID_LENGTHS[key]} bytes of lowercase hex")
                node[key] = base64.b64encode(raw).decode()
            else:
                hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            hex_ids_to_base64(item)


def any_value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes(pairs):
    return {pair.key: any_value(pair.value) for pair in pairs}


class Handler(BaseHTTPRequestHandler):
    out = None
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/json":
            return self.answer(404 if self.path != "/v1/traces" else 415, {"error": "expected POST /v1/traces with JSON"})
        try:
            document = json.loads(body)
            hex_ids_to_base64(document)
            request = trace_service_pb2.ExportTraceServiceRequest()
            json_format.ParseDict(document, request, ignore_unknown_fields=False)
        except Exception as error:  # anything malformed is the sender's fault
            print(f"otlp-collector: rejected a request: {error}", file=sys.stderr, flush=True)
            return self.answer(400, {"error": str(error)})
        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(json.dumps({
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "attributes": attributes(span.attributes),
                        "events": [event.name for event in span.events],
                        "status": {"code": span.status.code, "message": span.status.message},
                        "resource": resource,
                        "headers": {"x-collector-key": self.headers.get("X-Collector-Key")},
                    }))
        with Handler.lock, open(Handler.out, "a") as out:
            for line in lines:
                out.write(line + "\n")
        self.answer(200, {})

    def answer(self, status, document):
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port (printed at start)")
    parser.add_argument("--out", required=True, help="file the spans are appended to (JSON lines)")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop after this long (default 600)")
    arguments = parser.parse_args()
    Handler.out = arguments.out
    server = ThreadingHTTPServer((arguments.host, arguments.port), Handler)
    stop = lambda *_: threading.Thread(target=server.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    timer = threading.Timer(arguments.max_seconds, stop)
    timer.daemon = True
    timer.start()
    print(f"otlp-collector: listening on {arguments.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
