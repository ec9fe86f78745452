#!/usr/bin/env python3
"""A webhook receiver on loopback to watch the agent's notifications (README, "Notifications"):
prints one line per JSON notification apprise posts (``json://127.0.0.1:PORT/``) and answers 200.
Standard library only; it keeps nothing and listens on 127.0.0.1 only.

    python3 hack/notify-receiver.py [--port 8765]
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()
        try:
            notice = json.loads(body)
            line = f"{notice.get('title', '')} | {notice.get('message', '')}"
        except ValueError:
            line = body.decode(errors="replace")
        print(line, flush=True)

    def log_message(self, format: str, *args: object) -> None:  # no access log: only notices
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{args.port}/ (json://127.0.0.1:{args.port}/)", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a quiet exit
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
