"""One exchange's HTTP/1.1, by h11 alone: the request's bytes, the final response head, the framing.

No sockets here: the connection's thread feeds it blocking (``wire._exchange``), the TLS
threads feed it from non-blocking reads (``steps.Exchanging``). Both read a head the same
way, within ``MAX_HEAD`` bytes and ``MAX_INTERIM`` interim heads, and every failure is an
``httpx`` error naming the cause.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
import httpx

from sa1b_cli.core.text import shown

__all__ = [
    "HEAD_READ",
    "MAX_HEAD",
    "MAX_INTERIM",
    "Head",
    "HeadReader",
    "framing",
    "request_bytes",
]

MAX_HEAD = 64 << 10  # bytes of response head (interim 1xx heads included) one exchange reads
MAX_INTERIM = 8  # 1xx heads before the final one
HEAD_READ = 16 << 10  # bytes one read of a head asks for (a TLS record at most)


@dataclass(slots=True)
class Head:
    """A final response head as h11 accepted it, and what that means for the body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    parser: h11.Connection  # holds the bytes received past the head
    length: int | None  # a sized body: its Content-Length; None when framed otherwise
    framed: bool  # chunked or sized (not delimited by the end of the connection)
    leftover: bytes  # body bytes that came with the head (a sized body only)


def protocol_error(exc: h11.ProtocolError) -> httpx.RemoteProtocolError:
    # h11 quotes the offending line: the server's bytes, escaped but up to 64 KiB of them.
    msg = f"malformed HTTP response ({shown(str(exc), 100)})"
    if "without a pending proposal" in str(exc):  # h11's words for a 101 never asked for
        msg = "the server switched protocols (HTTP 101), which was never asked for"
    return httpx.RemoteProtocolError(msg)


def request_bytes(request: h11.Request, body: bytes) -> tuple[h11.Connection, bytes]:
    """The parser for the exchange and the request's bytes (``h11.LocalProtocolError`` if
    h11 will not write it)."""
    parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    data = parser.send(request) or b""
    if body:
        data += parser.send(h11.Data(data=body)) or b""
    data += parser.send(h11.EndOfMessage()) or b""
    return parser, data


class HeadReader:
    """The final response head out of the bytes fed in, within MAX_HEAD and MAX_INTERIM."""

    def __init__(self, parser: h11.Connection) -> None:
        self.parser, self.seen, self.interim = parser, 0, 0

    def event(self) -> h11.Response | None:
        """The final head, or None while more bytes are needed."""
        try:
            return self._next()
        except h11.RemoteProtocolError as exc:
            raise protocol_error(exc) from exc

    def _next(self) -> h11.Response | None:
        while True:
            event = self.parser.next_event()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.InformationalResponse):
                self.interim += 1
                if self.interim > MAX_INTERIM:
                    msg = f"more than {MAX_INTERIM} interim (1xx) responses"
                    raise httpx.RemoteProtocolError(msg)
                continue
            if event is not h11.NEED_DATA:  # ConnectionClosed, or PAUSED: no response came
                msg = "the server closed the connection before a response"
                raise httpx.RemoteProtocolError(msg)
            if self.seen > MAX_HEAD:
                msg = f"response heads over {MAX_HEAD >> 10} KiB"
                raise httpx.RemoteProtocolError(msg)
            return None

    def room(self) -> int:
        """Bytes to read at most: never more than the limit (and a byte) before the head."""
        return MAX_HEAD + 1 - self.seen

    def feed(self, data: bytes) -> None:
        """Bytes received; b"" is the end of the stream."""
        if not data:
            msg = "the server closed the connection before a whole response head"
            raise httpx.RemoteProtocolError(msg)
        self.parser.receive_data(data)
        self.seen += len(data)

    @staticmethod
    def timeout() -> httpx.ReadTimeout:
        return httpx.ReadTimeout("no whole response head before the read timeout")


def framing(parser: h11.Connection, event: h11.Response, method: bytes) -> Head:
    """How the body is delimited, from the headers h11 validated (and collapsed)."""
    fields = dict(event.headers)  # names lowercased; h11 refused conflicting lengths
    chunked = b"transfer-encoding" in fields
    length_field = fields.get(b"content-length")
    if chunked and length_field is not None:
        msg = "the response has both Content-Length and Transfer-Encoding"
        raise httpx.RemoteProtocolError(msg)
    length: int | None = int(length_field) if length_field is not None else None
    if method == b"HEAD" or event.status_code in (204, 304):
        length = 0
    headers = [(bytes(k), bytes(v)) for k, v in event.headers.raw_items()]
    head = Head(event.status_code, headers, parser, length, chunked or length is not None, b"")
    if length is not None:
        head.leftover = _drain_data(parser)
    return head


def _drain_data(parser: h11.Connection) -> bytes:
    """The body bytes h11 already holds (at most the declared length)."""
    data = bytearray()
    try:
        while isinstance(event := parser.next_event(), h11.Data):
            data += event.data
    except h11.RemoteProtocolError as exc:
        raise protocol_error(exc) from exc
    return bytes(data)
