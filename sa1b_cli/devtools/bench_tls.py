"""The HTTPS case of `make bench`: Meta's CDN speaks TLS, so the download is timed over it.

nginx on loopback serves the bench shards over TLS with a throwaway self-signed
certificate (made with the openssl tool). sa1b trusts it through ``SSL_CERT_FILE``,
aria2c through ``--ca-certificate``; both fetch the same shards into tmpfs, alternated
REPEAT times. TLS hands over one 16 KiB record per receive, so this path costs more CPU
than plain HTTP and needs its own figure.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from sa1b_cli.devtools.nginx import NginxProcess
from sa1b_cli.devtools.timing import REPEAT, Run, measure, median_run, summary

__all__ = ["bench_https", "self_signed_certificate"]

PORT = 18600


def self_signed_certificate(work: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost, and its key (openssl)."""
    cert, key = work / "tls-cert.pem", work / "tls-key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
    command += ["-out", str(cert), "-days", "2", "-subj", "/CN=localhost"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(command, capture_output=True, check=True)
    return cert, key


def _tls_nginx(folder: Path, work: Path, cert: Path, key: Path) -> NginxProcess:
    server = f"""server {{ listen 127.0.0.1:{PORT} ssl; root {folder}; location / {{ }}
    ssl_certificate {cert}; ssl_certificate_key {key}; }}"""
    return NginxProcess(work, "nginx-tls", server)


def _commands(sa1b: str, cert: Path, names: list[str], base: Path) -> dict[str, list[str]]:
    links, urls, target = base / "links.txt", base / "urls.txt", base / "dl"
    url = f"https://127.0.0.1:{PORT}/{{}}?_nc_gid&ccb=10-5&oh=00_x&oe=7FFFFFFF&_nc_sid=1"
    links.write_text("file_name\tcdn_link\n" + "\n".join(f"{n}\t{url.format(n)}" for n in names))
    urls.write_text("".join(f"https://127.0.0.1:{PORT}/{n}\n" for n in names))
    sa1b_args = ["download", "--links", str(links), "--root", str(target / "r"), "--quiet"]
    aria_args = ["-j", str(len(names)), "-x", "1", f"--ca-certificate={cert}"]
    aria_args += ["--file-allocation=none", "-d", str(target), "-i", str(urls)]
    return {
        "sa1b": ["env", f"SSL_CERT_FILE={cert}", sa1b, *sa1b_args],
        "aria2c": ["aria2c", "-q", *aria_args],
    }


def bench_https(sa1b: str, shards: Path, names: list[str], work: Path) -> dict[str, object]:
    """sa1b (defaults, --jobs 4) and aria2c -j<shards> -x1 over TLS, into tmpfs."""
    if shutil.which("openssl") is None:
        return {"skipped": "openssl is not installed: no certificate"}
    cert, key = self_signed_certificate(work)
    server = _tls_nginx(shards, work, cert, key)
    base = Path(tempfile.mkdtemp(dir="/dev/shm"))
    target = base / "dl"

    def wipe() -> None:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)

    try:
        cmds = _commands(sa1b, cert, names, base)
        runs: dict[str, list[Run]] = {tool: [] for tool in cmds}
        for _ in range(REPEAT):  # interleaved, so drift hits both alike
            for tool, cmd in cmds.items():
                runs[tool].append(measure(cmd, before=wipe))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    total = sum((shards / n).stat().st_size for n in names)
    medians = {tool: median_run(measured) for tool, measured in runs.items()}
    report: dict[str, object] = {tool: summary(run, total) for tool, run in medians.items()}
    report["ratio_sa1b_vs_aria2c"] = round(medians["sa1b"].seconds / medians["aria2c"].seconds, 3)
    return report
