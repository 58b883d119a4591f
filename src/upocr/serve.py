"""A small local web demo: one page where a person uploads an image and sees the three tasks' results.

Standard library only (`http.server.ThreadingHTTPServer`): no web framework to install, nothing fetched
from the internet (the page's CSS and JavaScript are inline). The model is loaded once; requests are
answered by threads, but the model runs one request at a time behind a lock (it is not meant for
concurrent use, and on a few CPU cores parallel forward passes would only slow each other down).

Bounds, so that one upload or a crowd of them cannot exhaust memory (reliability finding D5):

* a work queue (`WorkQueue`): at most `max_concurrent` predictions are in flight - decoding, model and PNG
  encoding, which is where the memory goes - and at most `max_queue` more wait (their bodies read);
  beyond that the answer is 503 with ``Retry-After``;
* a pixel limit (`max_pixels`, default 25 MP) checked from the image header before decoding: 413;
* images whose longer side exceeds `PREVIEW_MAX_SIDE` are downscaled to it before the model runs, and the
  answer says ``"preview": true``: a request's working memory is that of a 2048 x 2048 image at most;
* only requests naming this server in ``Host`` (localhost, 127.0.0.1, [::1], the bound address, or
  `allowed_hosts`) are served (DNS rebinding), requests whose ``Origin`` is another site are refused, and
  ``POST /api/predict`` needs a non-form ``Content-Type`` or an ``X-Upocr`` header, which a web page of
  another site cannot send without a CORS preflight that this server never grants.

Endpoints:

* ``GET /``: the page (``upocr/web/index.html``). ``/?example=1`` runs a bundled sample on load.
* ``GET /api/health``: ``{"status": "ok", "model": ..., "device": ..., "size": ..., "precision": ..., "samples": [...], ...}``
  (the model is described by file names only, never by absolute paths).
* ``POST /api/predict?task=all|removal|segmentation|tampering``: the image as the raw request body
  (``Content-Type: application/octet-stream`` or ``image/...``), or as the first file of a
  ``multipart/form-data`` form sent with an ``X-Upocr: 1`` header.
* ``GET /api/example?name=receipt.jpg&task=all``: the same on a bundled sample image.

A prediction answers JSON: ``{"width", "height", "tasks", "seconds", "input": <png>, "results": [{"task",
"title", "images": [{"kind", "label", "filename", "png"}], "legend": [...]}], "preview", "result_width",
"result_height"}`` where every ``png`` is a base64 PNG at the upload's resolution, or for a preview at
(result_width, result_height). Every failure answers ``{"error": "<one line>"}`` with a 4xx/5xx status;
the server keeps serving.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import json
import re
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from upocr.io import IMAGE_SUFFIXES, ImageError, read_image
from upocr.predict import Prediction, Predictor
from upocr.tasks import TASK_SPECS, Task

# Uploads larger than this are refused before they are read (a 100 MP JPEG is still far below it).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Bodies up to this size are read and discarded before refusing them, so that the browser sees our error
# message; anything larger gets the error and a closed connection (the client may then see a reset).
_DRAIN_LIMIT_FACTOR = 4
# The order the page shows the tasks in, and what "all" means.
ALL_TASKS = tuple(TASK_SPECS)
# The server's own pixel limit, below upocr.io's 100 MP for files: a 79 KB blank 9000 x 9000 PNG took the
# server to 7.2 GB. 25 MP still admits any phone photo (12-24 MP).
DEFAULT_MAX_PIXELS = 25_000_000
# Images with a longer side above this are answered with downscaled previews (the model's input is
# `size` x `size` anyway in the server's resize mode); full resolution is the command line's job.
PREVIEW_MAX_SIDE = 2048
# Predictions in flight at once (the model lock serializes the forward passes anyway) and waiting.
DEFAULT_MAX_CONCURRENT = 1
DEFAULT_MAX_QUEUE = 32
# What a refused (queue full) client is told to wait; a small request takes about a second on a CPU.
RETRY_AFTER_SECONDS = 5
# Names a Host header may carry besides the bound address (with this server's port).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
# Content types a web page of another site can POST without a CORS preflight ("simple requests"). For
# them POST /api/predict also needs CUSTOM_HEADER, which such a page cannot add without a preflight.
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""})
CUSTOM_HEADER = "X-Upocr"
# PNG zlib level for answers: level 1 is several times faster than PIL's default 6 and the files are
# only slightly larger; the answer goes over the loopback interface anyway.
_PNG_COMPRESS_LEVEL = 1


class RequestError(Exception):
    """A request we refuse; `str(error)` is the one-line message the page shows."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status


class QueueFull(RequestError):
    """More requests than the queue holds: 503, and the client should retry after `RETRY_AFTER_SECONDS`."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"server busy: {capacity} requests already running or waiting; "
                         f"try again in {RETRY_AFTER_SECONDS} s", HTTPStatus.SERVICE_UNAVAILABLE)


class WorkQueue:
    """At most `max_concurrent` jobs run at once and at most `max_queue` more wait; others are refused.

    `place()` admits a request (or raises QueueFull) for as long as it holds memory: its body, its work
    and its answer. `slot()` is then taken around the memory-heavy part (decode, model, encode).
    """

    def __init__(self, max_concurrent: int = DEFAULT_MAX_CONCURRENT, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError(f"need max_concurrent >= 1 and max_queue >= 0, got {max_concurrent} and {max_queue}")
        self.capacity = max_concurrent + max_queue
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._count_lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        return self._admitted

    @contextlib.contextmanager
    def place(self) -> Iterator[None]:
        with self._count_lock:
            if self._admitted >= self.capacity:
                raise QueueFull(self.capacity)
            self._admitted += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._admitted -= 1

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._slots:
            yield


@dataclass
class DemoApp:
    """Everything a request needs: the predictor (used under `lock`), the page, the queue and the limits."""

    predictor: Predictor
    model_label: str = "model"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    samples_dir: Path | None = None
    queue: WorkQueue = field(default_factory=WorkQueue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    page: bytes = field(default_factory=lambda: load_page().encode("utf-8"))

    def __post_init__(self) -> None:
        if self.samples_dir is None:
            self.samples_dir = Path(str(resources.files("upocr") / "samples"))

    # ------------------------------------------------------------------ answers

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": without_paths(self.model_label),
            "device": str(self.predictor.device),
            "size": self.predictor.size,
            "precision": self.predictor.precision,
            "backend": getattr(self.predictor, "backend", "pytorch"),
            "tasks": ["all"] + [task.short for task in ALL_TASKS],
            "samples": self.sample_names(),
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "preview_max_side": PREVIEW_MAX_SIDE,
        }

    def sample_names(self) -> list[str]:
        folder = self.samples_dir
        if folder is None or not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def predict_upload(self, data: bytes, filename: str, task_text: str) -> dict[str, Any]:
        """Decode an uploaded file with `upocr.io.read_image` (all its checks) and run the task(s) on it."""
        tasks = parse_tasks(task_text)
        if not data:
            raise RequestError("the upload is empty; choose an image file")
        return self.run_preview(lambda: self.decode_upload(data, filename), tasks)

    def decode_upload(self, data: bytes, filename: str) -> np.ndarray:
        """The upload's pixels; over `max_pixels` (from the header, before decoding) -> 413, unreadable -> 400."""
        suffix = Path(filename).suffix.lower() if Path(filename).suffix.lower() in IMAGE_SUFFIXES else ""
        # read_image works on files (EXIF, bombs, truncation, every format) - give it one to read.
        with tempfile.TemporaryDirectory(prefix="upocr-serve-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                return read_image(path, max_pixels=self.max_pixels)
            except ImageError as error:
                # upocr.io words its pixel-limit refusal "image too large: ..." (tests/test_serve.py checks it).
                status = (HTTPStatus.REQUEST_ENTITY_TOO_LARGE if error.problem.startswith("image too large")
                          else HTTPStatus.BAD_REQUEST)
                raise RequestError(f"{filename or 'upload'}: {error.problem}", status) from None

    def predict_sample(self, name: str, task_text: str) -> dict[str, Any]:
        tasks = parse_tasks(task_text)
        names = self.sample_names()
        if not names:
            raise RequestError("no sample images are bundled with this installation", HTTPStatus.NOT_FOUND)
        name = name or names[0]
        if name not in names:  # also keeps the request inside the samples folder
            raise RequestError(f"unknown sample {name!r}; choose one of: {', '.join(names)}", HTTPStatus.NOT_FOUND)
        assert self.samples_dir is not None
        samples_dir = self.samples_dir
        return self.run_preview(lambda: read_image(samples_dir / name), tasks)

    def run_preview(self, load: Callable[[], np.ndarray], tasks: Sequence[Task]) -> dict[str, Any]:
        """`run` on the image `load()` gives, downscaled first when it is larger than a preview (the
        memory bound). Loading it here, nothing else holds its full-resolution pixels: they are freed
        before the model runs."""
        image = load()
        full_size = image.shape[:2]
        image = downscale(image, PREVIEW_MAX_SIDE)
        return self.run(image, tasks, full_size)

    def run(self, image: np.ndarray, tasks: Sequence[Task], full_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """The task(s) on `image`, which is a preview of an image of `full_size` (height, width) if given."""
        height, width = full_size or image.shape[:2]
        start = time.perf_counter()
        with self.lock:
            predictions = self.predictor.predict_tasks(image, list(tasks))
        seconds = time.perf_counter() - start
        return {
            "width": width,
            "height": height,
            "preview": image.shape[:2] != (height, width),
            "result_width": image.shape[1],
            "result_height": image.shape[0],
            "tasks": [task.short for task in tasks],
            "seconds": round(seconds, 3),
            "input": png_base64(image),
            "results": [describe_result(image, prediction) for prediction in predictions],
        }


def load_page() -> str:
    """The demo page shipped in the package (upocr/web/index.html)."""
    return (resources.files("upocr") / "web" / "index.html").read_text(encoding="utf-8")


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` shrunk (aspect kept, antialiased) so that its longer side is at most `max_side` pixels."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a fast box reduction by an integer factor first, then Lanczos over at least twice the
    # target size (PIL's suggested trade-off; 2.5x faster than Lanczos alone from 9000 px).
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0))


def without_paths(text: str) -> str:
    """`text` with every absolute filesystem path replaced by its last two parts ("runs/exp1/model"):
    what the page (and anyone who can reach the server) may know about the weights."""
    return re.sub(r"(?<![\w.~-])(?:[A-Za-z]:)?(?:[/\\][^/\\\s,;()]+){2,}",
                  lambda match: "/".join(re.split(r"[/\\]", match.group(0))[-2:]), text)


def parse_tasks(text: str | None) -> tuple[Task, ...]:
    """'all' (or nothing) -> the three tasks; otherwise one task name as `Task.parse` understands it."""
    text = (text or "all").strip()
    if text.lower() == "all":
        return ALL_TASKS
    try:
        return (Task.parse(text),)
    except ValueError as error:
        raise RequestError(f"{error}, or all") from None


def describe_result(image: np.ndarray, prediction: Prediction) -> dict[str, Any]:
    """The pictures the page shows for one task (each also offered as a download), with its legend.

    They are the task's output files (`TaskSpec.pictures`: the one to look at first; the mask or class
    map, as `upocr segment-text` / `detect-tampering` write it, for programs)."""
    spec = prediction.task.spec
    result = prediction.result
    return {
        "task": spec.short,
        "title": spec.title,
        "legend": [{"label": name, "colour": hex_colour(colour)} for name, colour in spec.legend()],
        "images": [
            {"kind": output.kind, "label": output.label, "filename": f"{spec.short}_{output.kind}.png",
             "png": png_base64(output.draw(image, result))}
            for output in spec.pictures
        ],
    }


def png_base64(picture: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3) -> base64 text of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def hex_colour(colour: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def first_multipart_file(body: bytes, content_type: str) -> tuple[bytes, str]:
    """(data, filename) of the first file field of a multipart/form-data body.

    A minimal parser (the standard library's `cgi` is gone in Python 3.13): parts are separated by
    "--boundary" lines; each has headers, a blank line, and its bytes up to the CRLF before the next one.
    """
    match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if not match:
        raise RequestError("multipart upload without a boundary")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, separator, data = part.partition(b"\r\n\r\n")
        if not separator:
            continue
        headers = head.decode("latin-1")
        disposition = re.search(r"content-disposition:[^\r\n]*", headers, re.IGNORECASE)
        if not disposition or "filename=" not in disposition.group(0).lower():
            continue  # an ordinary form field (e.g. task=...), not a file
        filename = re.search(r'filename="([^"]*)"', disposition.group(0), re.IGNORECASE)
        return data.removesuffix(b"\r\n"), Path((filename.group(1) if filename else "") or "upload").name
    raise RequestError("the form has no file; send the image as a file field "
                       "(e.g. curl -H 'X-Upocr: 1' -F image=@photo.jpg)")


class DemoHandler(BaseHTTPRequestHandler):
    """Routes requests to the server's `DemoApp`; every answer is the page or one JSON object."""

    server: "DemoServer"
    server_version = "upocr-demo"
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    timeout = 120  # seconds a client may stall mid-request before its thread gives up

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._request_allowed():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        app = self.server.app
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, app.page, "text/html; charset=utf-8")
        elif url.path == "/api/health":
            self._send_json(HTTPStatus.OK, app.health())
        elif url.path == "/api/example":
            self._answer(lambda: self._in_slot(lambda: app.predict_sample(_one(query, "name"), _one(query, "task"))))
        elif url.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        self._body_handled = False
        url = urlsplit(self.path)
        if not self._request_allowed():
            return
        if url.path != "/api/predict":
            self.close_connection = True  # its body was not read, so this connection cannot be reused
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {url.path}"})
            return
        query = parse_qs(url.query)
        self._answer(lambda: self._predict(query))

    # ------------------------------------------------------------------ who may ask

    def _request_allowed(self) -> bool:
        """Refuse (403, and True -> False) requests for another host name or from another site's page."""
        try:
            self._check_host_and_origin()
        except RequestError as error:
            self._refuse_unread_body()
            self._send_json(error.status, {"error": str(error)})
            return False
        return True

    def _check_host_and_origin(self) -> None:
        host = self.headers.get("Host", "")
        if not self.server.host_allowed(host):
            # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends Host: evil.example.
            raise RequestError(f"refused: Host {host!r} is not this server's address; open {self.server.url}",
                               HTTPStatus.FORBIDDEN)
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}".lower():
            raise RequestError(f"refused: a cross-origin request from {origin!r}", HTTPStatus.FORBIDDEN)
        if self.command == "POST":
            media_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if media_type in SIMPLE_CONTENT_TYPES and self.headers.get(CUSTOM_HEADER) is None:
                # Without Origin (curl, old browsers) a form-type POST may still come from another site's form.
                raise RequestError(
                    f"refused: a {media_type or 'untyped'} POST needs the header '{CUSTOM_HEADER}: 1' (or send the "
                    "image with Content-Type: application/octet-stream)", HTTPStatus.FORBIDDEN)

    # ------------------------------------------------------------------ predictions

    def _predict(self, query: dict[str, list[str]]) -> bytes:
        body = self._read_body()
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            data, filename = first_multipart_file(body, content_type)
        else:  # the raw file; the page sends its name in a query parameter
            data, filename = body, Path(_one(query, "filename") or "upload").name
        del body  # a multipart body's file part is a copy
        return self._in_slot(lambda: self.server.app.predict_upload(data, filename, _one(query, "task")))

    def _in_slot(self, work: Callable[[], dict[str, Any]]) -> bytes:
        """`work()` as JSON bytes, computed and encoded in one of the queue's slots (the memory-heavy part)."""
        with self.server.app.queue.slot():
            return json.dumps(work()).encode("utf-8")

    def _read_body(self) -> bytes:
        self._body_handled = True  # read, drained or the connection closed, whatever happens below
        limit = self.server.app.max_upload_bytes
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True  # chunked or unknown-length bodies are not read at all
            raise RequestError("the request has no Content-Length; send the image as the body or a form file",
                               HTTPStatus.LENGTH_REQUIRED)
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise RequestError(f"bad Content-Length {length_text!r}") from None
        if length > limit:
            if length <= _DRAIN_LIMIT_FACTOR * limit:
                self._discard(length)  # so the client reads our answer instead of a reset connection
            else:
                self.close_connection = True
            raise RequestError(
                f"upload too large: {length / 2**20:.1f} MB (limit {limit / 2**20:.0f} MB)",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise RequestError(f"upload cut short: got {len(body)} of {length} bytes")
        return body

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _refuse_unread_body(self) -> None:
        """Before answering a refusal: drain a POST's unread body if it is small, else close the connection."""
        if self.command != "POST" or getattr(self, "_body_handled", True):
            return
        self._body_handled = True
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if 0 <= length <= _DRAIN_LIMIT_FACTOR * self.server.app.max_upload_bytes:
            self._discard(length)  # so the client reads our answer instead of a reset connection
        else:
            self.close_connection = True

    def _answer(self, work: Callable[[], bytes]) -> None:
        """Admit the request to the queue, run `work` (JSON bytes) and send them; any failure becomes a
        one-line JSON error, never a dead server. The queue place is held until the answer is sent."""
        try:
            with self.server.app.queue.place():
                self._send(HTTPStatus.OK, work(), "application/json")
        except RequestError as error:
            self._refuse_unread_body()
            self._send_json(error.status, {"error": str(error)})
        except (MemoryError, ImageError) as error:
            self._refuse_unread_body()
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": _one_line(error)})
        except Exception as error:  # noqa: BLE001 - a bug or model failure must not take the server down
            self._refuse_unread_body()
            self.log_error("prediction failed: %s: %s", type(error).__name__, _one_line(error))
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"prediction failed: {_one_line(error)}"})

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if status == HTTPStatus.SERVICE_UNAVAILABLE:
                self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser went away (page reloaded); nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if self.server.log_requests:
            sys.stderr.write(f"upocr serve: {self.address_string()} {format % args}\n")


class DemoServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer carrying the `DemoApp` its handlers use; IPv6 when `host` is an IPv6 address."""

    daemon_threads = True  # Ctrl+C does not wait for open browser connections

    def __init__(self, address: tuple[str, int], app: DemoApp, *, log_requests: bool = True,
                 allowed_hosts: Iterable[str] = (), bind_and_activate: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests
        host = address[0].strip("[]")
        self.address_family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
        self.host_names = LOOPBACK_NAMES | {host.lower()} | {name.lower().strip("[]") for name in allowed_hosts}
        # Bound to every address: any IP literal is an address of this computer; a DNS-rebinding page
        # always uses a name, so names must still be listed (`allowed_hosts`).
        self.any_ip_host = host in WILDCARD_ADDRESSES
        super().__init__((host, address[1]), DemoHandler, bind_and_activate)

    def host_allowed(self, host_header: str) -> bool:
        """Whether a Host header ("name:port", "[v6]:port") names this server and its port."""
        match = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(\d+))?", host_header.strip())
        if not match:
            return False
        name, port_text = match.group(1).strip("[]").lower(), match.group(2)
        port = self.server_address[1]
        if (int(port_text) if port_text else 80) != port:
            return False
        return name in self.host_names or (self.any_ip_host and _is_ip(name))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that hangs up (reload, closed tab) is normal: no traceback. Anything else: one line."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        sys.stderr.write(f"upocr serve: request from {client_address[0]} failed: "
                         f"{type(error).__name__}: {_one_line(error) if error else ''}\n")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"


def make_server(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_label: str = "model",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_queue: int = DEFAULT_MAX_QUEUE,
    allowed_hosts: Iterable[str] = (),
    log_requests: bool = True,
) -> DemoServer:
    """A demo server bound to (host, port) (port 0: any free port; see `server.url`), not yet serving.

    Call `serve_forever()` (in a thread for tests) and `shutdown()` + `server_close()` to stop it.
    """
    app = DemoApp(predictor=predictor, model_label=model_label, max_upload_bytes=max_upload_bytes,
                  max_pixels=max_pixels, queue=WorkQueue(max_concurrent, max_queue))
    return DemoServer((host, port), app, log_requests=log_requests, allowed_hosts=allowed_hosts)


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve the demo until Ctrl+C (KeyboardInterrupt is handled: the socket is closed and we return).
    `options`: those of `make_server`."""
    server = make_server(predictor, host, port, **options)
    print(f"upocr demo: open {server.url}  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nupocr demo: stopped", flush=True)
    finally:
        server.server_close()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    return _is_ip(text) and ":" in text


def _one(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key)
    return values[0] if values else ""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
