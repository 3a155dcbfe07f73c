"""HostWatch: when a shard giving up on a server stops the server's other shards, and when not."""

from __future__ import annotations

import pytest

from sa1b_cli.core.manifest import host_of
from sa1b_cli.download.hosts import HostWatch

WHY = "sa_000000.tar could not connect to cdn.example and gave up"


def test_a_server_that_never_answered_is_down_for_every_shard_of_it():
    watch = HostWatch()
    watch.gave_up("cdn.example", began=10.0, why=WHY)
    assert watch.down("cdn.example") == WHY
    assert watch.down("other.example") is None  # another server is not touched


def test_an_answer_since_the_shard_began_keeps_the_server_up():
    watch = HostWatch()
    watch.answered("cdn.example", now=12.0)
    watch.gave_up("cdn.example", began=10.0, why=WHY)  # it answered someone meanwhile
    assert watch.down("cdn.example") is None


def test_an_answer_before_the_shard_began_does_not():
    watch = HostWatch()
    watch.answered("cdn.example", now=5.0)  # then it went away
    watch.gave_up("cdn.example", began=10.0, why=WHY)
    assert watch.down("cdn.example") == WHY


def test_a_body_still_arriving_keeps_the_server_up():
    watch = HostWatch()
    with watch.streaming("cdn.example"):
        watch.gave_up("cdn.example", began=10.0, why=WHY)
        assert watch.down("cdn.example") is None
    assert watch.down("cdn.example") is None  # judged when the shard gave up: it was up


def test_a_server_found_down_is_up_again_while_a_body_arrives_and_after_an_answer():
    watch = HostWatch()
    watch.gave_up("cdn.example", began=10.0, why=WHY)
    with watch.streaming("cdn.example"):  # a connection made before still receives
        assert watch.down("cdn.example") is None
    assert watch.down("cdn.example") == WHY
    watch.answered("cdn.example", now=20.0)
    assert watch.down("cdn.example") is None


def test_a_link_without_a_host_never_stops_the_others():
    watch = HostWatch()
    watch.gave_up("", began=10.0, why=WHY)
    assert watch.down("") is None


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("https://cdn.example/m/a.tar?oh=00_SECRET&oe=7FFFFFFF", "cdn.example"),
        ("https://User:password@CDN.Example:443/a.tar", "cdn.example"),  # no userinfo, ever
        ("http://cdn.example:80/a.tar", "cdn.example"),
        ("https://cdn.example:8443/a.tar", "cdn.example:8443"),  # another port, another server
        ("http://127.0.0.1:18490/a.tar", "127.0.0.1:18490"),
        ("http://[::1]:8080/a.tar", "[::1]:8080"),
        ("http://[::1/a.tar", ""),  # malformed: its requests fail on their own
        ("http://cdn.example:99999/a.tar", ""),
        ("not a link", ""),
    ],
)
def test_host_of_names_the_server_and_nothing_secret(url, server):
    assert host_of(url) == server
