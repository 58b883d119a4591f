"""What keeps `upocr serve` up under careless or hostile clients: who may ask, how much, and how many at once.

* `RequestGuard` (ASGI middleware, runs before any body is read): the ``Host`` header must name this
  server (DNS rebinding), an ``Origin`` must be this server's, the API (``/v1/*``) refuses requests a
  browser marks ``Sec-Fetch-Site: cross-site``/``same-site`` (another site's page must not run the model,
  finding N14), and a POST with a "simple" content type (one another site's form may send without a CORS
  preflight) needs ``X-Upocr: 1`` or the browser's ``Sec-Fetch-Site: same-origin``.
* `read_body`: the upload, refused 413 over the byte limit (from ``Content-Length`` before reading, or as
  it arrives), with one deadline for the whole body (408): a client trickling bytes cannot keep a
  connection busy for long (finding N1). Bodies being read hold no queue place; their bytes together are
  bounded by an `UploadBudget` (503 beyond it).
* `WorkQueue`: at most `max_concurrent` predictions in flight and `max_queue` more waiting, admitted only
  once their body is read; beyond that 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
from http import HTTPStatus
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, MutableMapping

# The order of these defaults is what `upocr serve --help` shows.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a 100 MP JPEG is still far below it
DEFAULT_MAX_CONCURRENT = 1  # predictions decoded, run and encoded at once
DEFAULT_MAX_QUEUE = 32  # predictions that may wait for one
# Seconds a client has to send its whole upload (20 MB at 1 MB/s is 20 s); slower ones get 408.
DEFAULT_UPLOAD_SECONDS = 30.0
# Bytes of uploads being received at once, as a number of largest uploads: beyond it 503. Counted as the
# bytes arrive, so connections trickling a few bytes take nothing from anyone else (N1).
UPLOADS_BUFFERED = 8
# What a refused (queue full) client is told to wait; a small request takes about a second on a CPU.
RETRY_AFTER_SECONDS = 5
# Bodies of refused requests up to this many times the upload limit are received and dropped by the
# server, so that the client reads our answer; larger ones get the answer and a closed connection.
DRAIN_LIMIT_FACTOR = 4
# Names a Host header may carry besides the bound address (with this server's port).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
# Content types a web page of another site can POST without a CORS preflight ("simple requests"). For
# them a POST also needs CUSTOM_HEADER, which such a page cannot add without a preflight (never granted).
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""})
CUSTOM_HEADER = "x-upocr"
# Sec-Fetch-Site values a browser sends for requests started by a page of another site (N14).
FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})
API_PREFIX = "/v1/"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestError(Exception):
    """A request we refuse; `str(error)` is the one-line message the page shows."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, *, close: bool = False) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status
        self.close = close  # answer with Connection: close (the body was not, or not wholly, read)


class QueueFull(RequestError):
    """More requests than the queue holds: 503, and the client should retry after `RETRY_AFTER_SECONDS`."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"server busy: {capacity} requests already running or waiting; "
                         f"try again in {RETRY_AFTER_SECONDS} s", HTTPStatus.SERVICE_UNAVAILABLE)


def error_headers(error: RequestError) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    if error.status == HTTPStatus.SERVICE_UNAVAILABLE:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if error.close:
        headers["Connection"] = "close"
    return headers


class WorkQueue:
    """At most `max_concurrent` jobs run at once and at most `max_queue` more wait; others are refused.

    `place()` admits a request whose body has been read (or raises QueueFull) for as long as it holds
    memory: its body, its work and its answer. `slot()` is then taken around the memory-heavy part
    (decode, model, encode). Both are used from the event loop only; waiting for a slot holds no thread.
    """

    def __init__(self, max_concurrent: int = DEFAULT_MAX_CONCURRENT, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError(f"need max_concurrent >= 1 and max_queue >= 0, got {max_concurrent} and {max_queue}")
        self.max_concurrent = max_concurrent
        self.capacity = max_concurrent + max_queue
        self._slots: asyncio.Semaphore | None = None  # made in the serving event loop
        self.admitted = 0  # requests running or waiting now
        self.running = 0  # requests in a slot now

    @contextlib.contextmanager
    def place(self) -> Any:
        if self.admitted >= self.capacity:
            raise QueueFull(self.capacity)
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1


class UploadBudget:
    """Bytes of request bodies being received, all requests together; a request that would go over
    `limit` is refused (503). Counted as bytes arrive and released when the body has been read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int) -> None:
        if self.used + count > self.limit:
            raise RequestError(f"server busy: {self.used / 2**20:.0f} MB of uploads are arriving; "
                               f"try again in {RETRY_AFTER_SECONDS} s", HTTPStatus.SERVICE_UNAVAILABLE, close=True)
        self.used += count

    def give_back(self, count: int) -> None:
        self.used -= count


async def read_body(receive: Receive, headers: Any, *, limit: int, seconds: float, budget: UploadBudget) -> bytes:
    """The request body, read within `seconds` in all, at most `limit` bytes (else RequestError 408/413/400).

    `headers`: the request's (a Starlette Headers). A declared Content-Length over the limit is refused
    before a byte is read; chunked bodies are counted as they arrive."""
    length_text = headers.get("content-length")
    length: int | None = None
    if length_text is not None:
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            raise RequestError(f"bad Content-Length {length_text!r}", close=True) from None
        if length > limit:
            raise RequestError(f"upload too large: {length / 2**20:.1f} MB (limit {limit / 2**20:.0f} MB)",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE, close=length > DRAIN_LIMIT_FACTOR * limit)
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError("the client went away during the upload", close=True)
                chunk = message.get("body", b"")
                if chunk:
                    if received + len(chunk) > limit:
                        raise RequestError(f"upload too large: more than {limit / 2**20:.0f} MB",
                                           HTTPStatus.REQUEST_ENTITY_TOO_LARGE, close=True)
                    budget.take(len(chunk))
                    received += len(chunk)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestError(f"upload too slow: {received:,} of {length if length is not None else '?'} bytes in "
                           f"{seconds:g} s", HTTPStatus.REQUEST_TIMEOUT, close=True) from None
    finally:
        budget.give_back(received)
    if length is not None and received != length:
        raise RequestError(f"upload cut short: got {received} of {length} bytes", close=True)
    return b"".join(chunks)


class HostRules:
    """Which Host header values name this server: loopback names, the bound address, `allowed_hosts`
    and, bound to every address, any IP literal (a DNS-rebinding page always uses a name)."""

    def __init__(self, host: str, allowed_hosts: Iterable[str] = ()) -> None:
        host = host.strip("[]")
        self.names = LOOPBACK_NAMES | {host.lower()} | {name.lower().strip("[]") for name in allowed_hosts}
        self.any_ip = host in WILDCARD_ADDRESSES

    def allows(self, host_header: str, port: int) -> bool:
        """Whether a Host header ("name:port", "[v6]:port") names this server and its `port`."""
        match = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(\d+))?", host_header.strip())
        if not match:
            return False
        name, port_text = match.group(1).strip("[]").lower(), match.group(2)
        if (int(port_text) if port_text else 80) != port:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))


class RequestGuard:
    """ASGI middleware refusing (403, one-line JSON) requests for another host or from another site."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, rules: HostRules,
                 max_upload_bytes: int) -> None:
        self.app = app
        self.rules = rules
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            self.check(scope, headers)
        except RequestError as error:
            await send_error(send, error, body_length=_int_or_none(headers.get("content-length")),
                             drain_limit=DRAIN_LIMIT_FACTOR * self.max_upload_bytes)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope, headers: dict[str, str]) -> None:
        host = headers.get("host", "")
        port = (scope.get("server") or ("", 0))[1]
        if not self.rules.allows(host, port):
            # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends Host: evil.example.
            raise RequestError(f"refused: Host {host!r} is not this server's address", HTTPStatus.FORBIDDEN)
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{host}".lower():
            raise RequestError(f"refused: a cross-origin request from {origin!r}", HTTPStatus.FORBIDDEN)
        fetch_site = headers.get("sec-fetch-site", "").lower()
        if scope["path"].startswith(API_PREFIX) and fetch_site in FOREIGN_FETCH_SITES:
            # An <img>/<form>/fetch of another site's page: it must not make this computer run the model.
            raise RequestError(f"refused: a {fetch_site} request (from another site's page)", HTTPStatus.FORBIDDEN)
        if scope["method"] == "POST":
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type in SIMPLE_CONTENT_TYPES and CUSTOM_HEADER not in headers and fetch_site != "same-origin":
                # Without Origin (curl, old browsers) a form-type POST may still come from another site's form.
                raise RequestError(
                    f"refused: a {media_type or 'untyped'} POST needs the header 'X-Upocr: 1' (or send the "
                    "image with Content-Type: application/octet-stream)", HTTPStatus.FORBIDDEN)


async def send_error(send: Send, error: RequestError, *, body_length: int | None = None,
                     drain_limit: int | None = None) -> None:
    """Send `error` as `{"error": ...}`. A request body not read yet is dropped by the server as it
    arrives when it is small (so the client reads this answer); otherwise the connection is closed."""
    headers = error_headers(error)
    if body_length is not None and drain_limit is not None and body_length > drain_limit:
        headers["Connection"] = "close"
    body = json.dumps({"error": str(error)}).encode("utf-8")
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": int(error.status), "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_ipv6(text: str) -> bool:
    return _is_ip(text) and ":" in text


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
