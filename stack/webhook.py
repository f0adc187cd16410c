"""A tiny Alertmanager webhook receiver: appends every notification to a JSON-lines file.

The local stack routes all receivers here (one URL path per receiver, e.g.
``/critical``), so ``make run`` shows where alerts would go and tests can assert
that an alert travelled Prometheus -> Alertmanager -> receiver. It also serves
the runbook at ``/runbook`` (:mod:`stack.runbook`), where every alert's
``runbook_url`` points.

``python -m stack.webhook --port 9095 --out .stack/alerts.jsonl``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.settings import HOST

MAX_BODY = 5 * 1024 * 1024  # Alertmanager batches are small; refuse anything absurd


def read_notifications(path: Path) -> list[dict]:
    """Every notification recorded so far: {received_at, receiver_path, payload}."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def iter_alerts(path: Path) -> Iterator[tuple[str, dict]]:
    """(receiver_path, alert) for every alert in every recorded notification."""
    for note in read_notifications(path):
        for alert in note["payload"].get("alerts", []):
            yield note["receiver_path"], alert


def make_server(port: int, out: Path, host: str = HOST,
                runbook: Path | None = None) -> ThreadingHTTPServer:
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path.split("?")[0] in ("/runbook", "/runbook/"):
                from stack.runbook import RUNBOOK, page

                data = page(runbook or RUNBOOK)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path in ("/", "/healthz"):
                self._reply(200, {"status": "ok", "out": str(out)})
            elif self.path == "/notifications":
                self._reply(200, {"notifications": read_notifications(out)})
            else:
                self._reply(404, {"error": f"no such path {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._reply(400, {"error": f"body length {length} out of range"})
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError as exc:
                self._reply(400, {"error": f"body is not JSON: {exc}"})
                return
            line = json.dumps({"received_at": time.time(), "receiver_path": self.path,
                               "payload": payload})
            with lock, out.open("a") as fh:
                fh.write(line + "\n")
            self._reply(200, {"status": "recorded"})

        def log_message(self, fmt: str, *args) -> None:
            pass  # one line per notification is already in the out file

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.webhook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append to")
    parser.add_argument("--runbook", type=Path, default=None,
                        help="the runbook served at /runbook (default: docs/runbook.md)")
    args = parser.parse_args(argv)
    server = make_server(args.port, args.out, runbook=args.runbook)
    print(f"alert webhook receiver on http://{HOST}:{args.port} -> {args.out}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
