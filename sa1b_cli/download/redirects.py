"""Following redirects by a stated policy, for every request a download sends.

At most ``MAX_REDIRECTS`` hops; http and https targets only, to a host name or address;
never from https down to plain http; a loop or anything else refused fails the shard
(``RedirectRefused``), never the run. A hop to another host is reported once through
``on_host`` (the host alone: a redirect target's query is as secret as the manifest's),
and never carries the credentials of a ``user:password@`` link.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from sa1b_cli.core.manifest import usable_host

__all__ = ["MAX_REDIRECTS", "RedirectRefused", "send_following"]

MAX_REDIRECTS = 5
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
# A host as it goes on the wire (IDNA as xn--, IPv6 bare): httpx percent-encodes anything
# else ("http://[bad" became host "%5bbad", tried as a name and retried as unresolvable).
_HOST_RE = re.compile(rb"[A-Za-z0-9._:-]+")
_UNUSABLE = "a redirect to an unusable address"


class RedirectRefused(Exception):
    """A redirect the policy does not follow; ``reason`` says why, without the target's query."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _target(request: httpx.Request, location: str | None) -> httpx.URL:
    if not location:
        msg = "a redirect without a Location"
        raise RedirectRefused(msg)
    try:
        target = request.url.join(location)
    except (httpx.InvalidURL, ValueError) as exc:
        raise RedirectRefused(_UNUSABLE) from exc
    raw = target.raw_host
    if raw and not (_HOST_RE.fullmatch(raw) and usable_host(raw.decode("ascii"))):
        raise RedirectRefused(_UNUSABLE)
    if target.scheme not in ("http", "https") or not target.host:
        shown = target.scheme[:16].encode("ascii", "replace").decode() or "no scheme"
        msg = f"a redirect to a {shown!r} address (only http and https are followed)"
        raise RedirectRefused(msg)
    if request.url.scheme == "https" and target.scheme == "http":
        msg = f"a redirect from https down to plain http ({target.host})"
        raise RedirectRefused(msg)
    return target


async def send_following(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    on_host: Callable[[str], None] = lambda host: None,
) -> httpx.Response:
    """Send ``request`` (streamed), following redirects by the policy above."""
    first = request.url
    seen = {first}
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except UnicodeError as exc:  # httpx reads any Location's host, even when not following
            raise RedirectRefused(_UNUSABLE) from exc
        if response.status_code not in _REDIRECT_STATUS:
            return response
        await response.aclose()
        target = _target(request, response.headers.get("Location"))
        if target in seen:
            msg = "a redirect loop"
            raise RedirectRefused(msg)
        seen.add(target)
        if target.host != first.host:
            on_host(target.host)
        headers = request.headers.copy()
        del headers["Host"]
        if (target.scheme, target.host, target.port) != (
            request.url.scheme,
            request.url.host,
            request.url.port,
        ):
            headers.pop("Authorization", None)  # a link's credentials stay with its origin
        request = httpx.Request("GET", target, headers=headers, extensions=dict(request.extensions))
    msg = f"more than {MAX_REDIRECTS} redirects"
    raise RedirectRefused(msg)
