"""Checksum lists in every supported format."""

from __future__ import annotations

from pathlib import Path

import pytest

from sa1b_cli.core.checksums import load_checksum_lists, parse_checksum_text, parse_hash
from sa1b_cli.core.errors import ChecksumFileError

MD5 = "0123456789abcdef0123456789abcdef"
SHA = "ab" * 32


@pytest.mark.parametrize(
    ("text", "source", "alg", "hexdigest"),
    [
        (f"{MD5}  sa_000000.tar\n", "community.md5", "md5", MD5),
        (f"{MD5} *sa_000000.tar", "list.txt", "md5", MD5),
        (f"{MD5}  tars/sa_000000.tar", "sums.xxh128", "xxh128", MD5),
        (f"{SHA}  ./sa_000000.tar", "x", "sha256", SHA),
        (f"MD5 (sa_000000.tar) = {MD5.upper()}", "x", "md5", MD5),
        (f"SHA256 (sa_000000.tar) = {SHA}", "x", "sha256", SHA),
        (f"XXH128 (sa_000000.tar) = {MD5}", "x", "xxh128", MD5),
        ("XXH3 (sa_000000.tar) = 9555e8555c62dcfd", "x", "xxh3_64", "9555e8555c62dcfd"),
        ("26c7827d889f6da3  sa_000000.tar", "x", "xxh64", "26c7827d889f6da3"),
    ],
)
def test_formats(text, source, alg, hexdigest):
    parsed = parse_checksum_text(text, source=source)
    assert parsed.expected("sa_000000.tar") == {alg: hexdigest}


def test_comments_blank_lines_and_forced_algorithm(tmp_path: Path):
    path = tmp_path / "list.txt"
    path.write_text(f"# community list\n\n{MD5}  sa_000001.tar\n")
    merged = load_checksum_lists([f"xxh128:{path}"])
    assert merged.expected("sa_000001.tar") == {"xxh128": MD5}


def test_conflicting_lists_are_refused(tmp_path: Path):
    (tmp_path / "a.md5").write_text(f"{MD5}  sa_000001.tar\n")
    (tmp_path / "b.md5").write_text(f"{'f' * 32}  sa_000001.tar\n")
    with pytest.raises(ChecksumFileError, match="another list"):
        load_checksum_lists([str(tmp_path / "a.md5"), str(tmp_path / "b.md5")])


@pytest.mark.parametrize("text", ["nothing here", "", "abc  sa.tar", "FOO (x) = 12ab"])
def test_garbage_is_an_error(text):
    with pytest.raises(ChecksumFileError):
        parse_checksum_text(text, source="x")


def test_parse_hash():
    assert parse_hash("XXH3_128:ABCD") == ("xxh128", "abcd")
    with pytest.raises(ChecksumFileError):
        parse_hash("crc:12")


def test_lines_for_files_no_manifest_serves_are_checked_but_not_kept():
    text = f"{MD5}  sa_1.jpg\n{MD5}  sa_000002.tar\r\n{SHA}  extracted/sa_2.json\n"
    parsed = parse_checksum_text(text, source="all.sums")
    assert parsed.entries == {"sa_000002.tar": {"md5": MD5}}
    with pytest.raises(ChecksumFileError, match="2 lines, none for an SA-1B file"):
        parse_checksum_text(f"{MD5}  sa_1.jpg\n{MD5}  sa_2.jpg\n", source="images.md5")
    with pytest.raises(ChecksumFileError, match="line 2: not a checksum line"):
        parse_checksum_text(f"{MD5}  sa_1.jpg\nnonsense\n", source="x")  # still checked


def test_a_long_list_of_other_files_is_parsed_in_little_memory():
    """A list of every image's md5 (1.3 M lines in 60 MiB) took 900 MB when kept whole."""
    import tracemalloc

    text = "".join(f"{i:032x}  sa_{i}.jpg\n" for i in range(100_000)) + f"{MD5}  sa_000003.tar\n"
    parse_checksum_text(f"{MD5}  sa_000003.tar\n", source="warm.md5")  # patterns compiled
    tracemalloc.start()
    try:
        parsed = parse_checksum_text(text, source="images.md5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed.expected("sa_000003.tar") == {"md5": MD5}
    assert peak < 1 << 20, peak
