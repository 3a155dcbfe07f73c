"""The redirect policy (MockTransport): hops, schemes, downgrades, loops, other hosts."""

from __future__ import annotations

import httpx
import pytest

from sa1b_cli.download.redirects import MAX_REDIRECTS, RedirectRefused, send_following

START = "https://cdn.example/m1/a.tar?oh=SECRET"


def client_for(routes: dict[str, str]) -> httpx.AsyncClient:
    """Each URL in ``routes`` redirects to its value; any other URL answers 200."""

    def handle(request: httpx.Request) -> httpx.Response:
        target = routes.get(str(request.url))
        if target is None:
            return httpx.Response(200, content=b"ok")
        return httpx.Response(302, headers={"Location": target})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def follow(routes: dict[str, str], hosts: list[str] | None = None) -> httpx.Response:
    async with client_for(routes) as client:
        request = client.build_request("GET", START, headers={"Range": "bytes=5-"})
        told = hosts if hosts is not None else []
        response = await send_following(client, request, on_host=told.append)
        await response.aread()
        return response


async def test_a_short_chain_is_followed_and_keeps_the_range():
    routes = {START: "/b", "https://cdn.example/b": "https://cdn.example/c?x=1"}
    response = await follow(routes)
    assert response.status_code == 200
    assert str(response.request.url) == "https://cdn.example/c?x=1"
    assert response.request.headers["Range"] == "bytes=5-"


async def test_another_host_is_followed_and_told_by_host_alone():
    hosts: list[str] = []
    response = await follow({START: "https://mirror.example/a.tar?oh=OTHER"}, hosts)
    assert response.status_code == 200 and hosts == ["mirror.example"]
    assert response.request.headers["Host"] == "mirror.example"


@pytest.mark.parametrize(
    ("routes", "says"),
    [
        ({START: START}, "a redirect loop"),
        ({START: "/b", "https://cdn.example/b": START}, "a redirect loop"),
        ({START: "file:///etc/passwd"}, "'file' address"),
        ({START: "ftp://cdn.example/a.tar"}, "'ftp' address"),
        ({START: "http://cdn.example/a.tar"}, "from https down to plain http"),
        ({START: ""}, "without a Location"),
        ({START: "https://[bad/a?oh=SECRET"}, "unusable address"),
        ({START: "https://a b.example/a"}, "unusable address"),
        ({START: "https://a..b.example/a?oh=SECRET"}, "unusable address"),  # IDNA refuses
        ({START: "https://xn--a.example/a"}, "unusable address"),
        ({START: "https://" + "a" * 64 + ".example/a"}, "unusable address"),
    ],
)
async def test_refused_redirects_say_why_without_the_query(routes, says):
    with pytest.raises(RedirectRefused, match=says) as refused:
        await follow(routes)
    assert "SECRET" not in str(refused.value)


@pytest.mark.parametrize(
    "target", ["https://[::1]:8443/a", "https://xn--bcher-kva.example/a", "https://a_b.example/a"]
)
async def test_hosts_as_they_go_on_the_wire_are_followed(target):
    response = await follow({START: target})
    assert response.status_code == 200


async def test_more_than_the_limit_of_hops_is_refused():
    routes = {START: "/h1"} | {
        f"https://cdn.example/h{k}": f"/h{k + 1}" for k in range(1, MAX_REDIRECTS + 1)
    }
    with pytest.raises(RedirectRefused, match=f"more than {MAX_REDIRECTS} redirects"):
        await follow(routes)
    five = {START: "/h1"} | {f"https://cdn.example/h{k}": f"/h{k + 1}" for k in range(1, 5)}
    assert (await follow(five)).status_code == 200  # exactly the limit: followed


async def test_credentials_in_a_link_never_follow_a_redirect_to_another_host():
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "cdn.example":
            return httpx.Response(302, headers={"Location": "https://mirror.example/a.tar"})
        return httpx.Response(200, content=b"ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        request = client.build_request("GET", "https://user:pass@cdn.example/a.tar")
        response = await send_following(client, request)
        await response.aclose()
    assert "Authorization" in seen[0].headers  # the link's own host gets them
    assert "Authorization" not in seen[1].headers
