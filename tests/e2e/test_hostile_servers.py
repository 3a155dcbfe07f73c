"""Hostile and broken HTTP servers, checked from outside through the installed ``sa1b download``.

Each row points shard 0 at one misbehaviour and shard 1 at a good server in the same run.
Every row checks: the exit code; one line naming shard 0 and the cause; no traceback and no
signed query on screen; nothing at a final name that is not the source's bytes; shard 1
finishes. A new behaviour is one row here and one entry in tests/hostile.py.
"""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile import BEHAVIOURS, DATA, HostileServer
from tests.servers import make_certificate
from tests.site import SA1B, env

pytestmark = pytest.mark.slow

BAD, GOOD = "sa_000000.tar", "sa_000001.tar"
TIMEOUT, RETRIES = 2, 1  # small, so a row that must give up does so in seconds


@dataclass(frozen=True)
class Row:
    behaviour: str
    ok: bool  # shard 0 ends downloaded (a harmless quirk) or failed
    says: str  # a piece of shard 0's line


ROWS = [
    Row("bad_status", False, "malformed HTTP response"),
    Row("no_colon", False, "malformed HTTP response"),
    Row("long_bad_line", False, "malformed HTTP response"),
    Row("two_lengths", False, "conflicting Content-Length"),
    Row("length_and_chunked", False, "both Content-Length and Transfer-Encoding"),
    Row("chunk_negative", False, "malformed HTTP response"),
    Row("chunk_not_hex", False, "malformed HTTP response"),
    Row("chunk_extension", False, "malformed HTTP response"),
    Row("chunk_too_big", False, "sent more than the 293.0 KiB it said before"),
    Row("interim_flood", False, "more than 8 interim (1xx) responses"),
    Row("switch_protocols", False, "the server switched protocols (HTTP 101), which was never"),
    Row("huge_head", False, "malformed HTTP response"),
    Row("slow_head", False, "no answer from the server, 2 times"),
    Row("longer_body", True, ""),
    Row("shorter_body", False, "gave up after"),
    Row("size_changes", False, "the server now says 62.5 KiB; it said 7.0 KiB before"),
    Row("redirect_loop", False, "not followed: a redirect loop"),
    Row("redirect_chain", False, "not followed: more than 5 redirects"),
    Row("redirect_file", False, "not followed: a redirect to a 'file' address"),
    Row("redirect_bad_host", False, "not followed: a redirect to an unusable address; 0 B"),
    Row("redirect_bad_name", False, "not followed: a redirect to an unusable address; 0 B"),
    Row("redirect_empty_label", False, "not followed: a redirect to an unusable address; 0 B"),
    Row("redirect_host", True, "redirected to another host, localhost"),
    Row("forbidden_escapes", False, r"HTTP 403 '\x1b[2J\x1b[31mgone\nerror: forged line'"),
    Row("hangup_near_end", False, "the connection closed 1.2 KiB before the end, 2 times"),
    Row("silence", False, "gave up after"),
    Row("trickle", False, "slower than 1.0 KiB/s for 2s, 2 times"),
    Row("empty", False, "the server says the file is empty (no SA-1B file is), 2 times"),
    Row("empty_range", False, "the server says the file is empty (no SA-1B file is), 2 times"),
    Row("encoded", False, "the server sent the file encoded (gzip), 2 times"),
    Row("huge_size", False, "the server says it is 909.5 TiB, and"),
    Row("huge_length", False, "the server says it is 909.5 TiB, and"),
    Row("odd_digit", False, "unusable Content-Range 'bytes 0-0/\u00b2'"),
]


def test_every_behaviour_has_a_row():
    assert {r.behaviour for r in ROWS} | {"good"} == set(BEHAVIOURS)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture(scope="module")
def hostile_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    """The same behaviours over TLS: there a connection's steps run on the TLS threads."""
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    with HostileServer(served, cafile=cert) as server:
        yield server


def download(server: HostileServer, behaviour: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    links = tmp / "links.txt"
    rows = [f"{BAD}\t{server.url(behaviour, BAD)}", f"{GOOD}\t{server.url('good', GOOD)}"]
    links.write_text("file_name\tcdn_link\n" + "\n".join(rows) + "\n")
    args = ["download", "--links", str(links), "--root", str(tmp / "root"), "--shards", "0,1"]
    args += ["--timeout", str(TIMEOUT), "--retries", str(RETRIES)]
    trust = {"SSL_CERT_FILE": str(server.cafile)} if server.cafile else {}
    return subprocess.run(
        [SA1B, *args], capture_output=True, text=True, timeout=120, env=env() | trust, check=False
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.behaviour)
def test_a_hostile_server_fails_its_shard_and_never_the_run(request, scheme, row, tmp_path):
    hostile = request.getfixturevalue("hostile" if scheme == "http" else "hostile_tls")
    started = time.monotonic()
    done = download(hostile, row.behaviour, tmp_path)
    seconds = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == (0 if row.ok else 1), out
    assert "Traceback" not in out and "unexpected error" not in out, out
    assert "SECRET" not in out, out  # no signed query, ours or a redirect's
    assert "\x1b" not in out and "\nerror: forged" not in out, out  # nothing foreign raw
    lines = [line for line in out.splitlines() if BAD in line and row.says in line]
    assert lines, f"no line names {BAD} with {row.says!r}:\n{out}"
    assert max(map(len, out.splitlines())) < 2000, "a server's bytes were quoted at length"
    tars = tmp_path / "root" / "tars"
    assert (tars / GOOD).read_bytes() == DATA[GOOD]  # the other shard finished
    if row.ok:
        assert (tars / BAD).read_bytes() == DATA[BAD]
    else:
        assert not (tars / BAD).exists()  # nothing of another size or content is final
    # A dead or hostile shard is given up within its budget: attempts x timeout plus backoff.
    assert seconds < (RETRIES + 1) * (TIMEOUT + 2) + 15, seconds


def test_a_cross_host_redirect_is_told_once(hostile, tmp_path):
    done = download(hostile, "redirect_host", tmp_path)
    told = [line for line in done.stderr.splitlines() if "redirected to another host" in line]
    assert len(told) == 1, done.stderr


def test_a_host_that_refuses_connections_fails_its_shard_and_never_the_run(hostile, tmp_path):
    """Nothing listens where shard 0's link points: its line names the refusal, shard 1 lands.

    (Beside the table, whose rows are behaviours of a server that answers.)
    """
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        links = tmp_path / "links.txt"
        dead = f"http://127.0.0.1:{port}/{BAD}?oh=00_SECRETSIG&oe=7FFFFFFF"
        links.write_text(
            f"file_name\tcdn_link\n{BAD}\t{dead}\n{GOOD}\t{hostile.url('good', GOOD)}\n"
        )
        args = ["download", "--links", str(links), "--root", str(tmp_path / "root")]
        args += ["--timeout", str(TIMEOUT), "--retries", str(RETRIES)]
        done = subprocess.run(
            [SA1B, *args], capture_output=True, text=True, timeout=120, env=env(), check=False
        )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out and "unexpected error" not in out and "SECRET" not in out, out
    refused = "could not connect (connection refused)"
    assert [line for line in out.splitlines() if BAD in line and refused in line], out
    tars = tmp_path / "root" / "tars"
    assert (tars / GOOD).read_bytes() == DATA[GOOD] and not (tars / BAD).exists()


def test_a_server_nobody_can_reach_stops_its_other_shards_at_once(hostile, tmp_path):
    """Twelve shards point where nothing listens, one at a good server. Once one of the
    twelve gives up, the others are not tried: one line says so for all of them, and what
    to do. The good server's shard lands; nothing is left at a final name or as an empty
    part file for a shard that was not tried."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        dead = [f"sa_{k:06d}.tar" for k in range(12)]
        rows = [f"{n}\thttp://u:pw@127.0.0.1:{port}/{n}?oh=00_SECRETSIG&oe=7FFFFFFF" for n in dead]
        rows.append(f"sa_000012.tar\t{hostile.url('good', GOOD)}")
        links = tmp_path / "links.txt"
        links.write_text("file_name\tcdn_link\n" + "\n".join(rows) + "\n")
        args = ["download", "--links", str(links), "--root", str(tmp_path / "root"), "--json"]
        args += ["--timeout", str(TIMEOUT), "--retries", "0", "--jobs", "2"]
        done = subprocess.run(
            [SA1B, *args], capture_output=True, text=True, timeout=120, env=env(), check=False
        )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out and "unexpected error" not in out, out
    assert "SECRET" not in out and "pw@" not in out, out
    shards = {s["name"]: s for s in json.loads(done.stdout)["shards"]}
    assert shards["sa_000012.tar"]["status"] == "downloaded"
    details = [shards[n]["detail"] for n in dead]
    server = f"127.0.0.1:{port}"
    skipped = [d for d in details if d.startswith("not tried, as ") and server in d]
    assert len(skipped) >= len(dead) - 2, details  # all but the two shards run at first
    assert all(
        d.startswith(("not tried, as ", "gave up after 1 attempt ", "stopped, as "))
        for d in details
    )
    hint = f"Check that this machine can reach {server}, then run the same command."
    assert all(shards[n]["hint"] == hint for n in dead if shards[n]["detail"] in skipped)
    parts = {p.name for p in (tmp_path / "root" / "tars").glob("*.part")}
    assert len(parts) <= 2 and not (tmp_path / "root" / "tars" / dead[-1]).exists()
    # Without --json, one line for all of them, with the next step.
    again = subprocess.run(
        [SA1B, *[a for a in args if a != "--json"]],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
        check=False,
    )
    said = [line for line in again.stderr.splitlines() if "all the same way" in line]
    assert len(said) == 1 and hint in said[0], again.stderr


def test_an_untrusted_certificate_fails_its_shard_at_once_and_says_what_to_do(
    hostile, tmp_path, certificate
):
    """A self-signed server, and no SSL_CERT_FILE: the line names the certificate and the fix."""
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    httpd.socket = served.wrap_socket(httpd.socket, server_side=True)
    httpd.handle_error = lambda *_: None  # type: ignore[method-assign]  # the refused handshakes
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        links = tmp_path / "links.txt"
        bad = f"https://127.0.0.1:{httpd.server_address[1]}/{BAD}?oh=00_SECRETSIG&oe=7FFFFFFF"
        links.write_text(
            f"file_name\tcdn_link\n{BAD}\t{bad}\n{GOOD}\t{hostile.url('good', GOOD)}\n"
        )
        args = ["download", "--links", str(links), "--root", str(tmp_path / "root")]
        untrusting = {k: v for k, v in env().items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        done = subprocess.run(
            [SA1B, *args], capture_output=True, text=True, timeout=120, env=untrusting, check=False
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out and "SECRET" not in out, out
    said = [line for line in out.splitlines() if BAD in line and "not trusted" in line]
    assert said and "SSL_CERT_FILE" in out, out
    assert "retry" not in out, out  # every attempt would fail the same way
    assert (tmp_path / "root" / "tars" / GOOD).read_bytes() == DATA[GOOD]
