"""nginx on loopback for the benchmarks: one foreground process, every path under ``work``."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

__all__ = ["NginxProcess"]


class NginxProcess:
    """Runs ``servers`` (nginx ``server`` blocks) until ``stop``; ``name`` keeps configs apart."""

    def __init__(
        self, work: Path, name: str, servers: str, *, http: str = "", connections: int = 256
    ) -> None:
        conf = work / f"{name}.conf"
        conf.write_text(f"""
user root; worker_processes 2; pid {work}/{name}.pid; error_log {work}/error-{name}.log;
events {{ worker_connections {connections}; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_timeout 30; {http}
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  {servers}
}}""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
        time.sleep(0.5)  # nginx has no readiness signal in the foreground

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
