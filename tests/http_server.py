"""A real HTTP file server on 127.0.0.1 that can misbehave on purpose."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    drop_after: int | None = None
    """Close the connection after this many body bytes, on the first request only."""
    corrupt: bool = False
    """Flip the bytes of every answer (a sha256 check must catch it)."""
    server_errors: int = 0
    """Answer this many requests with 503 before serving."""
    seconds_per_mib: float = 0.0
    """Serve slowly: sleep this long after every MiB of body."""
    requests: list[dict] = field(default_factory=list)
    """The Range header of every request, for assertions."""


class FileServer:
    def __init__(self, files: dict[str, bytes], faults: Faults | None = None):
        self.files = files
        self.faults = faults or Faults()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        files, faults = self.files, self.faults

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                faults.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if faults.server_errors > 0:
                    faults.server_errors -= 1
                    self.send_error(503)
                    return
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                if faults.corrupt:
                    payload = bytes(b ^ 0xFF for b in payload)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if faults.drop_after is not None and len(faults.requests) == 1:
                    self.wfile.write(payload[:faults.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for start in range(0, len(payload), 1 << 20):
                    self.wfile.write(payload[start:start + (1 << 20)])
                    time.sleep(faults.seconds_per_mib)

        return Handler
