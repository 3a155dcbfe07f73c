"""A throwaway single-node SLURM cluster on loopback: its own munge key, config and state.

Everything lives in one temporary folder and goes with it. It needs root (munged runs as
the munge user, slurmctld and slurmd as root) and Debian's slurm-wlm and munge packages,
which it installs with apt when they are missing, as .ci/run does for xxhash.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


class Unavailable(Exception):
    """SLURM cannot run here; the reason is what the tests print when they skip."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_packages() -> None:
    if all(Path(d).exists() for d in DAEMONS):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        msg = "slurm-wlm and munge are not installed, and apt-get as root is not available"
        raise Unavailable(msg)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")


def _config(base: Path, host: str) -> str:
    return f"""\
ClusterName=sa1btest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={base}/munge/socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=600
JobRequeue=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


@dataclass
class Cluster:
    base: Path
    started_in: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=False)
        if check and done.returncode != 0:
            msg = f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}"
            raise RuntimeError(msg)
        return done.stdout

    def sbatch(self, *args: str) -> str:
        """Submit; returns the job id (of the array, for --array)."""
        return self.run("sbatch", "--parsable", *args).strip().split(";")[0]

    def jobs(self, job: str) -> dict[str, str]:
        """Task id ("123_1") -> state, for every task of the array still known to slurmctld."""
        out = self.run("squeue", "-h", "-j", job, "-o", "%i %T", check=False)
        pairs = (line.split() for line in out.splitlines() if line.strip())
        return dict(pairs)

    def log(self, name: str) -> str:
        path = self.base / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.base / pid_file).read_text().split()[0]), signal.SIGTERM)
        time.sleep(0.5)
        shutil.rmtree(self.base, ignore_errors=True)


def _start_munge(base: Path) -> None:
    munge = pwd.getpwnam("munge")
    folder = base / "munge"
    folder.mkdir(mode=0o711)  # munged wants every folder above its socket executable by all
    (folder / "key").write_bytes(os.urandom(1024))
    for path in (folder, folder / "key"):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    (folder / "key").chmod(0o400)
    subprocess.run(
        [
            "runuser", "-u", "munge", "--", DAEMONS[0],
            f"--key-file={folder}/key", f"--socket={folder}/socket",
            f"--pid-file={folder}/pid", f"--log-file={folder}/log", f"--seed-file={folder}/seed",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def start_cluster() -> Cluster:
    """Start munged, slurmctld and slurmd; raise Unavailable (with the logs) if they fail."""
    if os.geteuid() != 0:
        raise Unavailable("a throwaway SLURM needs root (munged, slurmctld, slurmd)")
    ensure_packages()
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="sa1b-slurm-", dir="/tmp"))
    base.chmod(0o711)
    for sub in ("state", "spool", "log"):
        (base / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = base / "slurm.conf"
    conf.write_text(_config(base, host))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SA1B_", "SLURM_"))}
    cluster = Cluster(base, env={**clean, "SLURM_CONF": str(conf)})
    try:
        _start_munge(base)
        cluster.run("/usr/sbin/slurmctld", "-f", str(conf))
        cluster.run("/usr/sbin/slurmd", "-f", str(conf))
        deadline = time.monotonic() + 30
        while "idle" not in cluster.run("sinfo", "-h", "-o", "%T", check=False):
            if time.monotonic() > deadline:
                msg = f"the node never became idle: {cluster.log('slurmctld.log')[-600:]}"
                raise Unavailable(msg)
            time.sleep(0.2)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        logs = cluster.log("slurmctld.log")[-400:] + cluster.log("slurmd.log")[-400:]
        cluster.stop()
        raise Unavailable(f"SLURM did not start: {exc} {logs}") from exc
    except Unavailable:
        cluster.stop()
        raise
    cluster.started_in = time.monotonic() - started
    return cluster
