"""A CDN-like mirror on 127.0.0.1: signed links with expiry, Range, no ETag, faults, a request log.

It serves ``<dir>/<file_name>`` at ``/m1/v/t6/<opaque>.tar`` and answers like the SA-1B
CDN as far as it is known: 200/206/416, ``Accept-Ranges: bytes``, no ETag, 403
``URL signature expired`` past ``oe``, ``URL signature mismatch`` for a bad ``oh``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Faults", "Mirror", "write_manifest"]

SECRET = b"sa1b-mirror-secret"
PREFIX = "/m1/v/t6/"


def _opaque(name: str) -> str:
    return "An" + hashlib.sha1(name.encode()).hexdigest()[:24]


def _signature(path: str, oe: str) -> str:
    return "00_" + hmac.new(SECRET, f"{path}|{oe}".encode(), "sha256").hexdigest()[:32]


@dataclass
class Faults:
    """Misbehaviour to inject; counters are consumed by the requests they hit."""

    drop_after: dict[str, int] = field(default_factory=dict)  # name -> bytes before a reset (once)
    ignore_range: set[str] = field(default_factory=set)  # always answer 200
    rate: float | None = None  # bytes per second per connection
    fail_status: dict[str, list[int]] = field(
        default_factory=dict
    )  # name -> statuses to send first
    ignore_range_past_zero: bool = False  # answer 200 (whole file) to a Range not at byte 0
    max_bodies: int | None = None  # more bodies at once get 503 + Retry-After: 1


class Mirror:
    """A threaded HTTP server serving a folder of shards like the CDN."""

    def __init__(
        self, folder: Path, *, host: str = "127.0.0.1", port: int = 0, log: Path | None = None
    ) -> None:
        self.folder = folder
        self.host = host
        self.faults = Faults()
        self.log_path = log
        self.requests: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self.bodies = 0  # bodies being sent right now
        self.names = {_opaque(p.name): p.name for p in folder.iterdir() if p.is_file()}
        self.published: dict[str, bytes] = {}  # unsigned files, as raw.githubusercontent serves
        handler = type("Handler", (_Handler,), {"mirror": self})
        self.server = _QuietServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def url(self, name: str, *, expires: float) -> str:
        path = f"{PREFIX}{_opaque(name)}.tar"
        oe = f"{int(expires):X}"
        return (
            f"{self.base}{path}?_nc_gid&ccb=10-5&oh={_signature(path, oe)}&oe={oe}&_nc_sid=5cd70e"
        )

    def publish(self, name: str, data: bytes) -> str:
        """Serve ``data`` without a signature (a checksum list, say); returns its URL."""
        self.published[name] = data
        return f"{self.base}/pub/{name}"

    def start(self) -> Mirror:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, entry: dict[str, object]) -> None:
        with self._lock:
            self.requests.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a") as log:
                    log.write(json.dumps(entry) + "\n")

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-body are expected here, not errors


class _Handler(BaseHTTPRequestHandler):
    mirror: Mirror
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # the mirror keeps its own structured log

    def _send(self, code: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(code)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/pub/"):
            self._serve_published(parts.path.removeprefix("/pub/"))
            return
        name = self.mirror.names.get(parts.path.removeprefix(PREFIX).removesuffix(".tar"))
        params = dict(p.partition("=")[::2] for p in parts.query.split("&"))
        entry: dict[str, object] = {
            "name": name,
            "range": self.headers.get("Range"),
            "time": time.time(),
            "raw_query_has_bare_nc_gid": parts.query.startswith("_nc_gid&"),
        }
        self.mirror.record(entry)
        if name is None:
            self._send(404, b"Not Found")
            return
        problem = self._check_signature(parts.path, params)
        if problem:
            self._send(403, problem.encode(), [("Content-Type", "text/plain")])
            return
        statuses = self.mirror.faults.fail_status.get(name)
        if statuses:
            code = statuses.pop(0)
            entry["status"] = code
            self._send(code, b"try later", [("Retry-After", "1")] if code == 429 else [])
            return
        if not self._take_body_slot():
            entry["status"] = 503
            self._send(503, b"too many connections", [("Retry-After", "1")])
            return
        try:
            self._serve_file(name)
        finally:
            with self.mirror._lock:
                self.mirror.bodies -= 1

    def _serve_published(self, name: str) -> None:
        self.mirror.record({"name": name, "range": None, "time": time.time(), "published": True})
        data = self.mirror.published.get(name)
        if data is None:
            self._send(404, b"Not Found")
        else:
            self._send(200, data, [("Content-Type", "text/plain")])

    def _take_body_slot(self) -> bool:
        limit = self.mirror.faults.max_bodies
        with self.mirror._lock:
            if limit is not None and self.mirror.bodies >= limit:
                return False
            self.mirror.bodies += 1
            return True

    def _check_signature(self, path: str, params: dict[str, str]) -> str | None:
        oe = params.get("oe", "")
        try:
            expires = int(oe, 16)
        except ValueError:
            return "Bad URL timestamp"
        if not hmac.compare_digest(params.get("oh", ""), _signature(path, oe)):
            return "URL signature mismatch"
        if expires <= time.time():
            return "URL signature expired"
        return None

    def _serve_file(self, name: str) -> None:
        path = self.mirror.folder / name
        size = path.stat().st_size
        start = 0
        wanted = self.headers.get("Range")
        headers = [("Accept-Ranges", "bytes"), ("Content-Type", "application/x-tar")]
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
        faults = self.mirror.faults
        if match and int(match.group(1)) > 0 and faults.ignore_range_past_zero:
            match = None
        if match and name not in faults.ignore_range:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else size - 1
            if start >= size:
                self._send(416, b"", [*headers, ("Content-Range", f"bytes */{size}")])
                return
            end = min(end, size - 1)
            self.send_response(206)
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        else:
            end = size - 1
            self.send_response(200)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if self.command != "HEAD":
            self._copy(path, name, start, end - start + 1)

    def _copy(self, path: Path, name: str, start: int, length: int) -> None:
        faults = self.mirror.faults
        drop = faults.drop_after.get(name)
        if drop is not None and length > drop:  # a tiny probe does not use up the fault
            faults.drop_after.pop(name, None)
        else:
            drop = None
        sent = 0
        began = time.monotonic()
        with path.open("rb") as source:
            source.seek(start)
            while sent < length:
                step = int(faults.rate / 20) if faults.rate else 256 << 10  # smooth when capped
                block = source.read(min(max(step, 4096), length - sent))
                if drop is not None and sent + len(block) >= drop:
                    self.wfile.write(block[: max(0, drop - sent)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()  # a reset mid-body
                    return
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(block)
                if faults.rate:
                    ahead = sent / faults.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


def write_manifest(path: Path, mirror: Mirror, names: list[str], *, expires: float) -> Path:
    """A manifest in Meta's exact format: unsorted rows, aux row mid-file, no final newline."""
    ordered = sorted(names)
    shuffled = ordered[1::2] + ordered[0::2]  # blocks out of order, like the real file
    rows = [f"{name}\t{mirror.url(name, expires=expires)}" for name in shuffled]
    path.write_text("\n".join(["file_name\tcdn_link", *rows]), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--expires-in", type=float, default=30 * 86400)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    mirror = Mirror(args.folder, port=args.port, log=args.log)
    names = sorted(mirror.names.values())
    write_manifest(args.manifest, mirror, names, expires=time.time() + args.expires_in)
    print(mirror.base, flush=True)
    mirror.server.serve_forever()


if __name__ == "__main__":
    main()
