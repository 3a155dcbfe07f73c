"""Bad input, checked from the outside: exit code, one clear message, a hint, no traceback,
no signature, and with --json one error object on stdout. A new case is one row."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.site import SA1B, build_site, env, tmpfs, wait_for

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path], list[str]]  # given a scratch folder with files made below
    code: int
    says: str  # a piece of the message on stderr
    env: tuple[tuple[str, str], ...] = ()  # extra environment, SLURM's for instance


def scratch(tmp: Path) -> Path:
    (tmp / "empty.txt").write_text("")
    (tmp / "header.txt").write_text("file_name\tcdn_link\n")
    (tmp / "shard.tar").write_bytes(b"\x1f\x8b\x08\x00" + bytes(512))
    good = "file_name\tcdn_link\nsa_000000.tar\thttps://cdn.example/m1/v/t6/a.tar?oh=00_SECRET&oe=7FFFFFFF\n"
    (tmp / "links.txt").write_text(good)
    (tmp / "rootfile").write_text("not a folder")
    bad = "file_name\tcdn_link\nsa_000000.tar\thttps://cdn..example/a.tar?oh=00_SECRET\n"
    (tmp / "badhost.txt").write_text(bad)
    tls = "file_name\tcdn_link\nsa_000000.tar\thttps://127.0.0.1:9/a.tar?oh=00_SECRET\n"
    (tmp / "tls.txt").write_text(tls)
    return tmp


def with_a_shard(tmp: Path) -> Path:
    """A root holding one finished-looking shard, for commands that only act on shards."""
    (tmp / "root" / "tars").mkdir(parents=True, exist_ok=True)
    (tmp / "root" / "tars" / "sa_000000.tar").write_bytes(b"\x1f\x8b\x08\x00" + bytes(512))
    return tmp / "root"


def links(tmp: Path) -> list[str]:
    return ["--links", str(tmp / "links.txt"), "--root", str(tmp / "root")]


def root_file(command: str) -> Callable[[Path], list[str]]:
    return lambda t: [*command.split(), "--root", str(t / "rootfile")]


CASES = [
    Case("links: missing manifest", lambda t: ["links", str(t / "nope.txt")], 2, "not found"),
    Case(
        "links: --links missing manifest",
        lambda t: ["links", "--links", str(t / "nope.txt")],
        2,
        "not found",
    ),
    Case("links: empty manifest", lambda t: ["links", str(t / "empty.txt")], 2, "header"),
    Case("links: header only", lambda t: ["links", str(t / "header.txt")], 2, "no rows"),
    Case(
        "links: a shard given as manifest",
        lambda t: ["links", str(t / "shard.tar")],
        2,
        "not a link manifest",
    ),
    Case(
        "links: an endless file",  # read at most 16 MiB, never into all memory
        lambda t: ["links", "/dev/zero"],
        2,
        "larger than 16.0 MiB",
    ),
    Case(
        "download: an endless file as checksum list",
        lambda t: ["download", *links(t), "--checksums", "md5:/dev/zero"],
        2,
        "larger than 64.0 MiB",
    ),
    Case(
        "links: a host IDNA refuses",
        lambda t: ["links", str(t / "badhost.txt")],
        2,
        "line 2: the link's host is not a usable name ('cdn..example')",
    ),
    Case(
        "download: --timeout nan",  # nan passes any range check
        lambda t: ["download", *links(t), "--timeout", "nan"],
        2,
        "nan is not a number of seconds",
    ),
    Case(
        "download: --timeout inf",
        lambda t: ["download", *links(t), "--timeout", "inf"],
        2,
        "not in the range 1.0<=x<=3600.0",
    ),
    Case(
        "download: a proxy httpx cannot use",  # its password is a secret like a link's
        lambda t: ["download", *links(t)],
        2,
        "the proxy in HTTPS_PROXY cannot be used (Unknown scheme for proxy URL",
        env=(("HTTPS_PROXY", "ftp://user:00_SECRET@proxy.example:21"),),
    ),
    Case(
        "download: a SOCKS proxy",
        lambda t: ["download", *links(t)],
        2,
        "the proxy in ALL_PROXY cannot be used (Using SOCKS proxy",
        env=(("ALL_PROXY", "socks5://127.0.0.1:1080"),),
    ),
    Case(
        "download: SSL_CERT_FILE that cannot be read",  # every TLS connect would fail
        lambda t: ["download", "--links", str(t / "tls.txt"), "--root", str(t / "root")],
        2,
        "SSL_CERT_FILE=/nonexistent/ca.pem cannot be used (No such file or directory)",
        env=(("SSL_CERT_FILE", "/nonexistent/ca.pem"),),
    ),
    Case(
        "links: a path that holds a terminal escape",  # shown, never obeyed
        lambda t: ["links", str(t / "evil\x1b[2J\x1b]0;title\x07.txt")],
        2,
        "evil\\x1b[2J\\x1b]0;title\\x07.txt: file not found",
    ),
    Case(
        "download: --shards abc",
        lambda t: ["download", *links(t), "--shards", "abc"],
        2,
        "--shards",
    ),
    Case(
        "download: --subset 0%", lambda t: ["download", *links(t), "--subset", "0%"], 2, "--subset"
    ),
    Case(
        "download: --subset with --shards",
        lambda t: ["download", *links(t), "--subset", "1%", "--shards", "1"],
        2,
        "not both",
    ),
    Case("download: --part 3/3", lambda t: ["download", *links(t), "--part", "3/3"], 2, "--part"),
    Case(
        "download: --part auto outside SLURM",
        lambda t: ["download", *links(t), "--part", "auto"],
        2,
        "SLURM_ARRAY_TASK_ID",
    ),
    Case(
        "download: --max-rate fast",
        lambda t: ["download", *links(t), "--max-rate", "fast"],
        2,
        "rate",
    ),
    Case(
        "download: --layout odd",
        lambda t: ["download", *links(t), "--extract", "--layout", "odd"],
        2,
        "--layout",
    ),
    Case(
        "download: --retries -1",
        lambda t: ["download", *links(t), "--retries", "-1"],
        2,
        "--retries",
    ),
    Case(
        "download: --retries many",
        lambda t: ["download", *links(t), "--retries", "many"],
        2,
        "--retries",
    ),
    Case(
        "download: the root is a file",
        lambda t: ["download", "--links", str(t / "links.txt"), "--root", str(t / "rootfile")],
        2,
        "is a file, not a folder",
    ),
    *(
        Case(f"{command}: the root is a file", root_file(command), 2, "is a file, not a folder")
        for command in ("verify", "extract", "status", "show 1")
    ),
    Case("verify: --algo crc", lambda t: ["verify", "--export", "x", "--algo", "crc"], 2, "--algo"),
    Case(
        "verify: unreadable --checksums",
        lambda t: ["verify", "--root", str(t / "root"), "--checksums", str(t / "none.md5")],
        2,
        "cannot read checksum list",
    ),
    Case("status: --shards 5-2", lambda t: ["status", "--shards", "5-2"], 2, "--shards"),
    Case(
        "verify: --part auto with inconsistent SLURM variables",
        lambda t: ["verify", "--root", str(t / "root"), "--part", "auto"],
        2,
        "outside",
        (
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ),
    ),
    Case("extract: --only both", lambda t: ["extract", "--only", "both"], 2, "--only"),
    Case(
        "download: --jobs 0 (typer's own check)", lambda t: ["download", "--jobs", "0"], 2, "--jobs"
    ),
    Case("verify: an unknown option", lambda t: ["verify", "--bogus"], 2, "No such option"),
    Case("extract: --layout bogus", lambda t: ["extract", "--layout", "bogus"], 2, "--layout"),
    Case("extract: --salvage=yes", lambda t: ["extract", "--salvage=yes"], 2, "--salvage"),
    Case(
        "verify: --part auto/4 with task 5",
        lambda t: ["verify", "--root", str(t / "root"), "--part", "auto/4"],
        2,
        "not below 4",
        (("SLURM_ARRAY_TASK_ID", "5"),),
    ),
    Case(
        "status: --part auto in a SLURM job without an array",
        lambda t: ["status", "--root", str(t / "root"), "--part", "auto"],
        2,
        "not a job array",
        (("SLURM_JOB_ID", "77"),),
    ),
    Case(
        "verify: --known without network",
        lambda t: ["verify", "--root", str(with_a_shard(t)), "--known"],
        1,
        "cannot fetch the community md5 list",
        (("SA1B_KNOWN_URL", "http://127.0.0.1:9/checklist.txt?token=SECRET"),),
    ),
    Case("show: not an image id", lambda t: ["show", "cat.jpg"], 2, "not an image id"),
    Case("show: --shard abc", lambda t: ["show", "1", "--shard", "abc"], 2, "--shard"),
    Case(
        "show: an image in no extracted shard",
        lambda t: ["show", "sa_1", "--root", str(t / "root")],
        1,
        "is not in any extracted shard",
    ),
    Case(
        "links: an unreadable manifest",
        lambda t: ["links", str(t / "links.txt" / "x")],
        2,
        "links.txt",
    ),
]


def run(
    args: list[str], cwd: Path, extra: tuple[tuple[str, str], ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SA1B, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env(), **dict(extra)},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_said_once_with_a_hint_and_as_json(tmp_path: Path, case: Case):
    tmp = scratch(tmp_path)
    before = sorted(p.name for p in tmp.iterdir())
    done = run(case.args(tmp), tmp, case.env)
    assert done.returncode == case.code, done.stderr
    assert case.says in done.stderr
    assert done.stderr.count("error:") == 1 and "hint:" in done.stderr
    assert "Traceback" not in done.stderr and "SECRET" not in done.stderr + done.stdout
    assert "\x1b" not in done.stderr  # nothing for the terminal to obey

    with_json = run([*case.args(tmp), "--json"], tmp, case.env)
    assert with_json.returncode == case.code
    error = json.loads(with_json.stdout)
    assert error["exit_code"] == case.code and case.says in error["error"] and error["hint"]
    after = sorted(p.name for p in tmp.iterdir() if p.name != "root")
    assert after == [n for n in before if n != "root"]  # nothing written beside the root


def test_ctrl_c_before_any_byte_exits_130_and_says_nothing_was_kept(big_site):
    site = big_site
    site.mirror.faults.fail_status["sa_000000.tar"] = [429] * 20  # Retry-After: 1, each time
    proc = site.popen(
        "download", "--links", str(site.manifest()), "--root", str(site.root), "--shards", "0"
    )
    wait_for(lambda: any(r.get("status") == 429 for r in site.mirror.requests), what="a 429")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "oh=" not in stderr
    assert "interrupted" in stderr and "run the same command" in stderr
    assert "partial bytes kept" not in stderr  # nothing was kept: it never got a byte


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_extraction_exits_130_and_marks_nothing_half_done(tmp_path):
    site = build_site(tmp_path, shards=3, images=500)
    try:
        root = str(site.root)
        assert site.run("download", "--links", str(site.manifest()), "--root", root).returncode == 0
    finally:
        site.mirror.stop()
    log = tmp_path / "extract.log"
    with log.open("w") as sink:
        command = site.cmd("extract", "--root", root, "--jobs", "1")
        # A runner started in the background (``cmd &``) passes SIGINT on ignored, and Python
        # then leaves it ignored: the child gets the default back, as a terminal's job has.
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=sink, env=env(), preexec_fn=_sigint_default
        )
    out = site.root / "extracted"
    try:
        # Interrupted once it says a shard has started.
        wait_for(lambda: "started" in log.read_text() or proc.poll() is not None, what="a start")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = log.read_text()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    for marker in out.glob(".done/*.json"):  # a marked shard is whole: its images and JSONs
        assert len(list((out / marker.stem).iterdir())) == 1000, marker.stem
    again = site.run("extract", "--root", root, "--jobs", "1")
    assert again.returncode == 0, again.stderr
    assert not list(out.glob(".tmp-*"))


def test_a_read_only_root_says_so_and_what_to_do(tmp_path: Path):
    tmp = scratch(tmp_path)
    with tmpfs(tmp_path / "ro", "ro,size=1m", why="a read-only tmpfs") as readonly:
        args = ["download", "--links", str(tmp / "links.txt"), "--root", str(readonly / "root")]
        for extra in ([], ["--json"]):
            done = run([*args, *extra], tmp)
            assert done.returncode == 2, done.stderr  # bad input, as README's exit codes say
            assert "error:" in done.stderr and "hint:" in done.stderr
            assert "Traceback" not in done.stderr and "SECRET" not in done.stderr
        assert json.loads(done.stdout)["exit_code"] == 2


@pytest.mark.parametrize(
    "command", [[], ["download"], ["verify"], ["extract"], ["status"], ["show"]]
)
def test_dash_h_is_help(command: list[str]):
    done = subprocess.run([SA1B, *command, "-h"], capture_output=True, text=True, env=env())
    assert done.returncode == 0 and "Usage: sa1b" in done.stdout, done.stderr


@pytest.mark.parametrize(
    "args",
    [["show", "99999"], ["download", "--subset", "150%", "--links", "/dev/null"]],
    ids=["show", "download"],
)
def test_lines_are_never_cut_in_a_pipe_or_a_log(tmp_path: Path, args: list[str]):
    quiet = {k: v for k, v in env().items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [SA1B, *args, "--root", str(tmp_path)], capture_output=True, text=True, env=quiet
    )
    lines = done.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["error", "hint"], done.stderr
    assert max(map(len, lines)) > 80  # one line each, though longer than a terminal's 80


def test_no_manifest_says_how_to_give_one(tmp_path: Path):
    done = run(["download", "--root", str(tmp_path / "root")], tmp_path)
    assert done.returncode == 2 and "no manifest given" in done.stderr
    assert "--links FILE" in done.stderr and "links/README.md" in done.stderr
