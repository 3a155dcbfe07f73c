"""Behind an HTTP proxy: httpx's own transport carries the bodies, through the same body path.

A small forwarding proxy on loopback (absolute-form GET, as httpx sends it to a proxy)
relays every request to the mirror and streams the answer back in small pieces. The
installed ``sa1b download`` with ``HTTP_PROXY`` set must fetch every byte through it,
resume through it after a drop, and never write the signed query anywhere but the wire.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.site import Site

pytestmark = pytest.mark.slow

PIECE = 7_000  # bytes the proxy relays at a time: many small chunks for the reader


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[str]


class _Relay(BaseHTTPRequestHandler):
    server: _Proxy

    def do_GET(self) -> None:  # the stdlib's name
        target = urllib.parse.urlsplit(self.path)
        self.server.seen.append(target.path)
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        path = target.path + (f"?{target.query}" if target.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
        upstream.request("GET", path, headers=headers)
        answer = upstream.getresponse()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        while data := answer.read(PIECE):
            self.wfile.write(data)
        upstream.close()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    server = _Proxy(("127.0.0.1", 0), _Relay)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_download_through_a_proxy_is_whole_and_resumes_after_a_drop(site: Site, proxy: _Proxy):
    port = proxy.server_address[1]
    site.extra_env = {"HTTP_PROXY": f"http://127.0.0.1:{port}", "NO_PROXY": ""}
    name = "sa_000001.tar"
    site.mirror.faults.drop_after[name] = len(site.source(name)) // 3  # once, mid-body
    links = str(site.manifest())
    code, report = site.run_json("download", "--links", links, "--root", str(site.root))
    assert code == 0, report
    shards = [n for n in site.names if n.endswith(".tar")]
    for shard in shards:
        assert (site.root / "tars" / shard).read_bytes() == site.source(shard)
    assert len(proxy.seen) > len(shards)  # every request went through the proxy
    assert len(site.mirror.requests) == len(proxy.seen)
    resumed = [r for r in site.ranges(name) if r not in (None, "bytes=0-0")]
    assert resumed, site.ranges(name)  # the drop was resumed with a Range, not refetched
