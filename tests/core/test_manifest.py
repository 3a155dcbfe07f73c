"""Manifest parsing: the quirks seen in the wild and hostile rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sa1b_cli.core.errors import ManifestError
from sa1b_cli.core.manifest import (
    expiry_of,
    object_path,
    parse_manifest,
    read_manifest,
    redact_text,
)

URL = "https://scontent.xx.fbcdn.net/m1/v/t6/An_{n}.tar?_nc_gid&ccb=10-5&oh=00_SIG{n}&oe=6A1B2C3D&_nc_sid=0fdd"


def manifest(*names: str, header: str = "file_name\tcdn_link", end: str = "\n") -> str:
    rows = [f"{name}\t{URL.format(n=i)}" for i, name in enumerate(names)]
    return end.join([header, *rows])


def test_quirks_crlf_padded_header_no_final_newline_unsorted():
    text = manifest(
        "sa_000010.tar",
        "sa_images_ids.txt",
        "sa_000001.tar",
        header="file_name\t    cdn_link",
        end="\r\n",
    )
    parsed = parse_manifest(text)
    assert [r.file_name for r in parsed.shards] == ["sa_000001.tar", "sa_000010.tar"]
    assert [r.file_name for r in parsed.aux] == ["sa_images_ids.txt"]
    assert parsed.rows["sa_000001.tar"].url == URL.format(n=2)  # byte for byte
    assert 0 in parsed.missing_shards and 1 not in parsed.missing_shards


def test_unknown_rows_warn_and_duplicates_are_reported():
    parsed = parse_manifest(manifest("sa_000001.tar", "sa_new_thing.bin", "sa_000001.tar"))
    assert [r.file_name for r in parsed.unknown] == ["sa_new_thing.bin"]
    assert parsed.duplicates == ("sa_000001.tar",)
    assert any("unknown row" in w for w in parsed.warnings)


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "/abs.tar",
        "a/b.tar",
        "..",
        "sa\x00.tar",
        "sa_\x1b[31m.tar",
        "..sa.tar",
        "C:\\x.tar",
    ],
)
def test_hostile_file_names_are_rejected_with_line_number(name):
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest("sa_000000.tar", name))
    assert info.value.line == 3


@pytest.mark.parametrize(
    "text",
    [
        "",
        "name\turl\nsa_000000.tar\thttps://x/y",
        "file_name\tcdn_link\n",
        "file_name\tcdn_link\nsa_000000.tar",
    ],
)
def test_bad_headers_and_rows(text):
    with pytest.raises(ManifestError):
        parse_manifest(text)


@pytest.mark.parametrize(
    ("link", "said"),
    [
        ("https://cdn.exa\x1b[2Jmple/m1/a.tar?oh=SIG", "control characters"),
        ("https://cdn.example/m1/a\x7fb.tar", "control characters"),
        ("https://cdn.example/m1/a b.tar", "spaces"),
        ("https://cdn.exa[mple/m1/a.tar", "not a usable URL"),
        ("https://cdn.example:99999999/a.tar", "not a usable URL"),
        ("https://cdn..example/a.tar", "host is not a usable name"),  # an empty label
        ("https://.../a.tar", "host is not a usable name"),
        ("https://" + "a" * 64 + ".example/a.tar", "host is not a usable name"),
        ("https://xn--a.example/a.tar", "host is not a usable name"),  # no IDNA label
        ("https://user@/a.tar", "host is not a usable name"),
    ],
)
def test_hostile_links_are_rejected_with_line_number(link, said):
    text = "file_name\tcdn_link\nsa_000000.tar\t" + link
    with pytest.raises(ManifestError, match=said) as info:
        parse_manifest(text)
    assert info.value.line == 2


@pytest.mark.parametrize(
    "link",
    [
        "https://b\u00e9b\u00e9.example/a.tar",  # IDNA, sent as xn--bb-bjab
        "https://xn--bb-bjab.example/a.tar",
        "http://[::1]:8080/a.tar",
        "http://127.0.0.1/a.tar",
        "https://" + "a" * 63 + ".example/a.tar",
        "https://CDN.Example./a.tar",  # a trailing dot: the root
    ],
)
def test_usable_hosts_are_accepted(link):
    assert parse_manifest("file_name\tcdn_link\nsa_000000.tar\t" + link).rows


def test_non_http_link_is_rejected():
    with pytest.raises(ManifestError, match="not an http"):
        parse_manifest("file_name\tcdn_link\nsa_000000.tar\tfile:///etc/passwd")


def test_expiry_redaction_and_object_path():
    url = URL.format(n=1)
    assert expiry_of(url) == datetime.fromtimestamp(0x6A1B2C3D, tz=UTC)
    assert expiry_of("https://h/p?oe=zz") is None
    shown = redact_text(url)
    assert "SIG" not in shown and "_nc_sid" not in shown and shown.startswith("https://scontent")
    assert object_path(url) == "/m1/v/t6/An_1.tar"
    window = parse_manifest(manifest("sa_000000.tar")).expiry_window()
    assert window is not None and window[0] == window[1]


def test_redact_text_hides_queries_inside_free_text():
    message = f"Request failed for '{URL.format(n=3)}' after 3 tries"
    shown = redact_text(message)
    assert "oh=" not in shown and "_nc_sid" not in shown and "SIG3" not in shown
    assert "scontent.xx.fbcdn.net/m1/v/t6/An_3.tar" in shown
    assert (
        redact_text("quoted: oh=00_SIG9&oe=6A1B2C3D, ok") == "quoted: oh=<hidden>&oe=<hidden>, ok"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pa55word@cdn.example/m1/a.tar?oh=SIG",
        "http://pa55word@cdn.example:8080/m1/a.tar",
        "https://user:pa55word@cdn.example/m1/a.tar",
    ],
)
def test_a_link_s_userinfo_is_a_secret_like_its_query(url):
    for shown in (redact_text(url), redact_text(f"failed for {url} (HTTP 403)")):
        assert "pa55word" not in shown and "user" not in shown, shown
        assert "cdn.example" in shown and "<credentials hidden>@" in shown
    assert redact_text("https://cdn.example/a.tar") == "https://cdn.example/a.tar"


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"\x1f\x8b\x08\x00" + bytes(100), "gzip stream"),
        (bytes(257) + b"ustar\x0000" + bytes(200), "tar archive"),
        (b"file_name\tcdn_link\n\x00\x01", "binary file"),
        (b"file_name\tcdn_link\n" + b"\xff\xfe bad", "not UTF-8 text"),
    ],
)
def test_a_file_that_is_no_manifest_says_what_it_is(tmp_path, data, said):
    path = tmp_path / "sa_000000.tar"
    path.write_bytes(data)
    with pytest.raises(ManifestError, match=f"this is (a |an )?{said}.*not a link manifest"):
        read_manifest(path)
