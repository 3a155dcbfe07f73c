"""`make bench`: sa1b against curl, aria2c, dd, xxhsum and tar, side by side in one run.

Every figure is the median of several runs, and every comparison is a ratio measured in
the same run, because absolute times on shared machines drift. Needs nginx, aria2c,
xxhsum and curl (the Makefile installs them with apt-get).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sa1b_cli.devtools.nginx import NginxProcess
from sa1b_cli.devtools.synth import IMAGES_PER_SHARD, ShardSpec, jpeg_bytes, make_shard
from sa1b_cli.devtools.timing import GIB, REPEAT, Run, measure, repeat, summary

__all__ = ["main"]

SA1B = str(Path(sys.executable).with_name("sa1b"))
SHARDS = int(os.environ.get("BENCH_SHARDS", "4"))
SHARD_MIB = int(os.environ.get("BENCH_SHARD_MIB", "512"))


# -- data --------------------------------------------------------------------------------


def _annotation_template(width: int, height: int, masks: int) -> bytes:
    from sa1b_cli.devtools.synth import annotation_json

    return annotation_json(424242, width, height, masks, seed=1)


def make_realistic_shard(path: Path, index: int, images: int) -> None:
    """SA-1B-like: 1500x2250 JPEGs of ~400 KB and ~100 masks an image (one template reused)."""
    import io
    import random
    import tarfile

    from isal import igzip

    jpgs = [jpeg_bytes(2250, 1500, seed=k, pad=360_000, smooth=True) for k in range(2)]
    template = _annotation_template(2250, 1500, 100)
    first = index * IMAGES_PER_SHARD + 1
    members = []
    for image_id in range(first, first + images):
        members.append((f"./sa_{image_id}.jpg", jpgs[image_id % 2]))
        doc = template.replace(b'"image_id": 424242', b'"image_id": %d' % image_id)
        doc = doc.replace(b"sa_424242.jpg", b"sa_%d.jpg" % image_id)
        members.append((f"./sa_{image_id}.json", doc))
    random.Random(index).shuffle(members)
    raw = path.open("wb")
    gz = igzip.IGzipFile(fileobj=raw, mode="wb", compresslevel=1)  # type: ignore[no-untyped-call]
    with raw, gz, tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_big_shards(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pad = 2 << 20
    images = max(1, SHARD_MIB * (1 << 20) // pad)
    paths = []
    for index in range(SHARDS):
        path = folder / f"sa_{index:06d}.tar"
        if not path.exists():
            make_shard(
                path,
                ShardSpec(
                    index, images=images, width=64, height=48, masks=2, pad_bytes=pad, seed=index
                ),
            )
        paths.append(path)
    return paths


# -- servers -------------------------------------------------------------------------------


class Nginx(NginxProcess):
    def __init__(self, folder: Path, work: Path, port: int = 18473) -> None:
        self.port = port
        server = f"server {{ listen 127.0.0.1:{port}; root {folder}; location / {{ }} }}"
        super().__init__(work, "nginx", server)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}?_nc_gid&ccb=10-5&oh=00_x&oe=7FFFFFFF&_nc_sid=1"


# -- benchmarks ------------------------------------------------------------------------------


def _clean(folder: Path) -> Callable[[], None]:
    def wipe() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        subprocess.run(["sync"], check=False)

    return wipe


def sa1b_download(
    links: Path, root: Path, names: list[str], *, jobs: int, workers: int = 1
) -> list[str]:
    return [
        SA1B,
        "download",
        "--links",
        str(links),
        "--root",
        str(root),
        "--jobs",
        str(jobs),
        "--workers",
        str(workers),
        "--quiet",
        "--shards",
        ",".join(names),
    ]


def bench_download(
    server: Nginx, names: list[str], total: int, base: Path, label: str
) -> dict[str, object]:
    target = base / "dl"
    links = base / "links.txt"
    links.write_text("file_name\tcdn_link\n" + "\n".join(f"{n}\t{server.url(n)}" for n in names))
    urls = base / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:{server.port}/{n}\n" for n in names))
    wipe = _clean(target)
    count = total // (4 << 20)
    results = {
        "dd_fsync": repeat(
            ["dd", "if=/dev/zero", f"of={target}/dd.bin", "bs=4M", f"count={count}", "conv=fsync"],
            wipe,
        ),
        "curl": repeat(
            [
                "curl",
                "-s",
                "-Z",
                "--parallel-max",
                "4",
                "-o",
                f"{target}/#1",
                f"http://127.0.0.1:{server.port}/{{{','.join(names)}}}",
            ],
            wipe,
        ),
        "aria2c": repeat(
            [
                "aria2c",
                "-q",
                "-j",
                "4",
                "-x",
                "1",
                "--file-allocation=none",
                "-d",
                str(target),
                "-i",
                str(urls),
            ],
            wipe,
        ),
        # aria2c exits with its bytes still in the page cache; sa1b fsyncs before it renames.
        "aria2c_then_sync": repeat(
            [
                "sh",
                "-c",
                f"aria2c -q -j 4 -x 1 --file-allocation=none -d {target} -i {urls} && sync",
            ],
            wipe,
        ),
        "sa1b": repeat(sa1b_download(links, target / "r", names, jobs=4), wipe),
    }
    results["sa1b_workers2"] = repeat(
        sa1b_download(links, target / "r", names, jobs=4, workers=2), wipe
    )
    rss16 = measure(sa1b_download(links, target / "r16", names, jobs=16), before=wipe)
    report: dict[str, object] = {"target": label, "bytes": total}
    for tool, run in results.items():
        report[tool] = summary(run, total)
    sa1b = results["sa1b"].seconds
    report["ratio_sa1b_vs_aria2c"] = round(sa1b / results["aria2c"].seconds, 3)
    report["ratio_sa1b_vs_aria2c_then_sync"] = round(sa1b / results["aria2c_then_sync"].seconds, 3)
    report["ratio_sa1b_vs_curl"] = round(sa1b / results["curl"].seconds, 3)
    report["ratio_sa1b_vs_dd_fsync"] = round(sa1b / results["dd_fsync"].seconds, 3)
    workers2 = results["sa1b_workers2"].seconds
    report["ratio_sa1b_workers2_vs_aria2c"] = round(workers2 / results["aria2c"].seconds, 3)
    report["ratio_sa1b_workers2_vs_dd_fsync"] = round(workers2 / results["dd_fsync"].seconds, 3)
    report["sa1b_jobs16_peak_rss_MB"] = round(rss16.rss_mb, 1)
    shutil.rmtree(target, ignore_errors=True)
    return report


def bench_verify(root: Path, names: list[str], deep_root: Path) -> dict[str, object]:
    files = [str(root / "tars" / n) for n in names]
    for path in files:  # warm the cache for both tools
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    total = sum(os.path.getsize(p) for p in files)
    xxh = repeat(["xxhsum", "-H2", *files], lambda: None)
    ours = repeat(
        [SA1B, "verify", "--root", str(root), "--quiet", "--shards", ",".join(names)], lambda: None
    )
    inside = json.loads(
        subprocess.run(
            [SA1B, "verify", "--root", str(root), "--json", "--shards", ",".join(names)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    report: dict[str, object] = {
        "sa1b_GB/s_excluding_startup": round(inside["throughput_mib_s"] * 2**20 / 1e9, 2),
        "xxhsum_GB/s": round(total / 1e9 / xxh.seconds, 2),
        "sa1b_GB/s": round(total / 1e9 / ours.seconds, 2),
        "ratio_sa1b_throughput_vs_xxhsum": round(xxh.seconds / ours.seconds, 3),
    }
    report["known_md5"] = bench_verify_known(root, names, files, total)
    for jobs in (1, 2):
        out = subprocess.run(
            [
                SA1B,
                "verify",
                "--root",
                str(deep_root),
                "--deep",
                "--jobs",
                str(jobs),
                "--json",
                "--shards",
                "0",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        data = json.loads(out.stdout)
        report[f"deep_jobs{jobs}"] = {
            "MiB/s": data["throughput_mib_s"],
            "images/s": data["images_per_s"],
            "status": data["shards"][0]["status"],
        }
    return report


def _forget_md5(root: Path, names: list[str]) -> None:
    """Make the next verify compute the md5 again (it is recorded after the first check)."""
    for name in names:
        path = root / "state" / f"{name}.json"
        record = json.loads(path.read_text())
        record["digests"].pop("md5", None)
        record["checked"] = []
        path.write_text(json.dumps(record))


def bench_verify_known(
    root: Path, names: list[str], files: list[str], total: int
) -> dict[str, object]:
    """verify --known, the first time (md5 computed) and after (md5 from the record)."""
    md5sum = repeat(["md5sum", *files], lambda: None)
    listing = subprocess.run(["md5sum", *files], capture_output=True, check=True).stdout
    listing = b"".join(
        line.split(b" ", 1)[0] + b"  " + Path(line.split(b"  ", 1)[1].decode()).name.encode()
        for line in listing.splitlines(keepends=True)
    )
    (root / "known").mkdir(exist_ok=True)
    (root / "known" / "community-md5.txt").write_bytes(listing)
    cmd = [SA1B, "verify", "--root", str(root), "--quiet", "--known", "--shards", ",".join(names)]
    os.environ["SA1B_KNOWN_SHA256"] = hashlib.sha256(listing).hexdigest()
    try:
        first = repeat(cmd, lambda: _forget_md5(root, names))
        cached = repeat(cmd, lambda: None)
    finally:
        del os.environ["SA1B_KNOWN_SHA256"]
    return {
        "md5sum_GB/s": round(total / 1e9 / md5sum.seconds, 2),
        "sa1b_first_check_GB/s": round(total / 1e9 / first.seconds, 2),
        "sa1b_first_check_cpu_s_per_GiB": round(first.cpu / (total / GIB), 2),
        "ratio_first_check_throughput_vs_md5sum": round(md5sum.seconds / first.seconds, 3),
        "sa1b_later_checks_GB/s": round(total / 1e9 / cached.seconds, 2),
    }


def sa1b_extract(root: Path, out: Path, shards: str, *, jobs: int) -> list[str]:
    return [
        SA1B,
        "extract",
        "--root",
        str(root),
        "--out",
        str(out),
        "--quiet",
        "--shards",
        shards,
        "--jobs",
        str(jobs),
    ]


def bench_extract(deep_root: Path, work: Path) -> dict[str, object]:
    tar = deep_root / "tars" / "sa_000000.tar"
    out_tar, out_ours = work / "x-tar", work / "x-sa1b"
    tar_run = repeat(["tar", "-xzf", str(tar), "-C", str(out_tar)], _clean(out_tar))
    ours = repeat(sa1b_extract(deep_root, out_ours, "0", jobs=1), _clean(out_ours))
    report: dict[str, object] = {
        "shard_GiB": round(tar.stat().st_size / GIB, 2),
        "tar_xzf_s": round(tar_run.seconds, 2),
        "sa1b_s": round(ours.seconds, 2),
        "ratio_sa1b_vs_tar": round(ours.seconds / tar_run.seconds, 3),
    }
    for jobs in (1, 2):
        run = repeat(sa1b_extract(deep_root, out_ours, "0-1", jobs=jobs), _clean(out_ours))
        size = sum((deep_root / "tars" / f"sa_00000{k}.tar").stat().st_size for k in range(2))
        report[f"two_shards_jobs{jobs}_MB/s"] = round(size / 1e6 / run.seconds, 1)
    shutil.rmtree(out_tar, ignore_errors=True)
    shutil.rmtree(out_ours, ignore_errors=True)
    return report


def _with_peak_disk(folder: Path, run: Callable[[], Run]) -> tuple[Run, int]:
    """Run, sampling the filesystem's used bytes every 20 ms: the peak above the start."""
    import threading

    def used() -> int:
        usage = shutil.disk_usage(folder)
        return usage.total - usage.free

    base, peak, done = used(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], used() - base)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return run(), peak[0]
    finally:
        done.set()
        sampler.join()


def bench_repack(deep_root: Path, work: Path) -> dict[str, object]:
    """One SA-1B-like gzip shard to a sorted, uncompressed WebDataset tar, against the recipe."""
    tar = deep_root / "tars" / "sa_000000.tar"
    loose, recipe_out, ours_out = work / "repack-x", work / "repack-tar", work / "repack-sa1b"
    recipe = (
        f"mkdir -p {loose} {recipe_out} && tar -xzf {tar} -C {loose} && "
        f"tar --sort=name -cf {recipe_out}/sa_000000.tar -C {loose} ."
    )

    def wipe() -> None:
        for folder in (loose, recipe_out, ours_out):
            shutil.rmtree(folder, ignore_errors=True)

    ours_cmd = [*sa1b_extract(deep_root, ours_out, "0", jobs=1), "--layout", "webdataset"]
    theirs, ours = repeat(["sh", "-c", recipe], wipe), repeat(ours_cmd, wipe)
    peaks = []
    for cmd in (["sh", "-c", recipe], ours_cmd):  # once more each, from a settled disk
        wipe()
        os.sync()
        peaks.append(_with_peak_disk(work, partial(measure, cmd))[1])
    their_peak, our_peak = peaks
    wipe()
    return {
        "shard_GiB": round(tar.stat().st_size / GIB, 2),
        "recipe_s": round(theirs.seconds, 2),
        "sa1b_s": round(ours.seconds, 2),
        "ratio_sa1b_vs_recipe": round(ours.seconds / theirs.seconds, 3),
        "recipe_peak_disk_GiB": round(their_peak / GIB, 2),
        "sa1b_peak_disk_GiB": round(our_peak / GIB, 2),
        "sa1b_peak_rss_MB": round(ours.rss_mb, 1),
    }


def bench_workers(server: Nginx, names: list[str], total: int) -> dict[str, object]:
    """Client-bound (loopback into tmpfs): one event loop against two processes."""
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    links = shm / "links.txt"
    links.write_text("file_name\tcdn_link\n" + "\n".join(f"{n}\t{server.url(n)}" for n in names))
    report: dict[str, object] = {}
    try:
        for workers in (1, 2):
            cmd = sa1b_download(links, shm / "r", names, jobs=4, workers=workers)
            run = repeat(cmd, _clean(shm / "r"))
            report[f"workers{workers}_GB/s"] = round(total / 1e9 / run.seconds, 3)
            report[f"workers{workers}_cpu_s_per_GiB"] = round(run.cpu / (total / GIB), 3)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    return report


def bench_verify_10gib(work: Path, big: list[Path]) -> dict[str, object]:
    """Warm-cache verify of one file the size of a real shard (the 512 MiB files, 20 times)."""
    root = work / "verify-10gib"
    (root / "tars").mkdir(parents=True, exist_ok=True)
    shard = root / "tars" / "sa_000000.tar"
    if not shard.exists() or shard.stat().st_size != 20 * big[0].stat().st_size:
        with shard.open("wb") as out:
            for k in range(20):
                with big[k % len(big)].open("rb") as part:
                    shutil.copyfileobj(part, out, 8 << 20)
    _install_as_downloaded(root, [shard])
    total = shard.stat().st_size
    xxh = repeat(["xxhsum", "-H2", str(shard)], lambda: None)
    ours = repeat([SA1B, "verify", "--root", str(root), "--quiet"], lambda: None)
    return {
        "bytes": total,
        "xxhsum_GB/s": round(total / 1e9 / xxh.seconds, 2),
        "sa1b_GB/s": round(total / 1e9 / ours.seconds, 2),
        "ratio_sa1b_throughput_vs_xxhsum": round(xxh.seconds / ours.seconds, 3),
    }


def bench_status(work: Path) -> dict[str, object]:
    """`sa1b status` on a root holding records for all 1000 shards."""
    from sa1b_cli.core.store import Record, Store

    store = Store(work / "status-root").ensure()
    for k in range(1000):
        store.write(Record(f"sa_{k:06d}.tar", "complete", size=10, expected_size=10))
        store.final_path(f"sa_{k:06d}.tar").write_bytes(b"0123456789")
    run = repeat([SA1B, "status", "--root", str(store.root), "--json"], lambda: None)
    return {"status_1000_shards_s": round(run.seconds, 3)}


def _install_as_downloaded(root: Path, paths: list[Path]) -> None:
    """Hard-link files into a root; `verify` adopts what a checksum list vouches for."""
    import xxhash

    (root / "tars").mkdir(parents=True, exist_ok=True)
    lines = []
    for path in paths:
        target = root / "tars" / path.name
        if not target.exists():
            os.link(path, target)
        digest = xxhash.xxh3_128()
        with path.open("rb") as handle:
            while block := handle.read(8 << 20):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {path.name}\n")
    listing = root / "bench.xxh128"
    listing.write_text("".join(lines))
    names = ",".join(p.name for p in paths)
    subprocess.run(
        [
            SA1B,
            "verify",
            "--root",
            str(root),
            "--quiet",
            "--checksums",
            str(listing),
            "--shards",
            names,
        ],
        check=True,
    )


def far_cases(work: Path) -> dict[str, object]:
    """Per-connection caps (a far CDN) and a connection-limited server; see bench_far."""
    from sa1b_cli.devtools.bench_far import (
        CappedNginx,
        bench_connection_limited,
        bench_far_busy,
        bench_far_cdn,
        far_files,
    )
    from sa1b_cli.devtools.bench_tls import self_signed_certificate

    files = far_files(work / "far")
    cert = self_signed_certificate(work)[0] if shutil.which("openssl") else None
    server = CappedNginx(work / "far", work, cert)
    try:
        return {
            "far_cdn": bench_far_cdn(SA1B, files, cert),
            "far_cdn_busy_cores": bench_far_busy(SA1B, files, cert),
            "connection_limited": bench_connection_limited(SA1B, files["10x96MiB"], server.log),
        }
    finally:
        server.stop()


def _download_cases(work: Path, names: list[str], total: int) -> dict[str, object]:
    results: dict[str, object] = {}
    server = Nginx(work / "shards", work)
    try:
        results["download_disk"] = bench_download(server, names, total, work, "disk")
        shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            results["download_tmpfs"] = bench_download(server, names, total, shm, "tmpfs")
        finally:
            shutil.rmtree(shm, ignore_errors=True)
        results["workers"] = bench_workers(server, names, total)
    finally:
        server.stop()
    from sa1b_cli.devtools.bench_tls import bench_https

    results["download_https"] = bench_https(SA1B, work / "shards", names, work)
    return results


def main() -> None:
    work = Path(os.environ.get("BENCH_DIR", "bench-out")).resolve()
    work.mkdir(exist_ok=True)
    if os.environ.get("BENCH_ONLY") == "far":  # the far-CDN cases alone, for a quick look
        text = json.dumps(far_cases(work), indent=2)
        (work / "results-far.json").write_text(text)
        print(text)
        return
    print(f"generating {SHARDS} shards of ~{SHARD_MIB} MiB and 2 SA-1B-like shards in {work} ...")
    big = make_big_shards(work / "shards")
    deep_src = work / "deep-src"
    deep_src.mkdir(exist_ok=True)
    deep_images = int(os.environ.get("BENCH_DEEP_IMAGES", "2900"))
    for k in range(2):
        path = deep_src / f"sa_00000{k}.tar"
        if not path.exists():
            make_realistic_shard(path, k, deep_images)
    names = [p.name for p in big]
    total = sum(p.stat().st_size for p in big)
    results: dict[str, object] = {
        "repeat": REPEAT,
        "shards": SHARDS,
        "shard_bytes": total // SHARDS,
    }
    # "files": verify, extract and repack alone; "download": the download cases alone
    only = os.environ.get("BENCH_ONLY")
    if only != "files":
        results.update(_download_cases(work, names, total))
    if only == "download":  # every download case (loopback and far CDN), nothing else
        results.update(far_cases(work))
        _report(work, results)
        return
    verify_root = work / "verify-root"
    _install_as_downloaded(verify_root, big)
    deep_root = work / "deep-root"
    _install_as_downloaded(deep_root, sorted(deep_src.iterdir()))
    results["verify"] = bench_verify(verify_root, names, deep_root)
    results["verify_10GiB"] = bench_verify_10gib(work, big)
    results["extract"] = bench_extract(deep_root, work)
    results["repack_webdataset"] = bench_repack(deep_root, work)
    results["status"] = bench_status(work)
    if only != "files":
        results.update(far_cases(work))
    _report(work, results)


def _report(work: Path, results: dict[str, object]) -> None:
    text = json.dumps(results, indent=2)
    (work / "results.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
