"""The HTTP API of `upocr serve` (FastAPI): one upload in, the task's result image or JSON out.

Endpoints (the schema is at ``/openapi.json``, browsable at ``/docs``):

* ``POST /v1/remove-text``, ``/v1/segment-text``, ``/v1/detect-tampering``: one task, named as the CLI's
  commands. ``format=json`` (default) answers the pictures as base64 PNG with the text regions (polygons,
  per-word tampering scores); ``format=png`` answers the result file itself (``picture=`` another one).
* ``POST /v1/predict?task=all|removal|segmentation|tampering``: one or all tasks in one answer (the page).
* ``POST /v1/samples/{name}?task=...``: the same on an image bundled with the package.
* ``GET /v1/health``: the model (file names only, never absolute paths), limits and samples.
* ``GET /``: the demo page, a client of this API.

The image is the request body (``Content-Type: application/octet-stream`` or ``image/...``) or the first
file of a ``multipart/form-data`` form. Every refusal answers ``{"error": "<one line>"}`` with its status.
The guards (`upocr.serve.guards`): Host allow-list, no cross-site requests, upload byte limit and
deadline, a work queue (503 + Retry-After), a pixel limit checked before decoding (413), and previews:
images over `PREVIEW_MAX_SIDE` are downscaled to it and run resized, not tiled, so that any accepted
upload costs one forward pass per prompt (finding N13).
"""


import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence

import anyio
import numpy as np
from fastapi import FastAPI, Path as PathParameter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from upocr.io import IMAGE_SUFFIXES, ImageError, read_image
from upocr.predict import Predictor
from upocr.removal import removal_pipeline
from upocr.serve import guards
from upocr.serve.answers import describe_result, picture_of, png_base64
from upocr.serve.models import (
    ErrorAnswer,
    HealthAnswer,
    PredictionAnswer,
    RequestOptions,
    TaskName,
)
from upocr.tasks import TASK_SPECS, Task

log = logging.getLogger("upocr.serve")

# The order the page shows the tasks in, and what "all" means.
ALL_TASKS = tuple(TASK_SPECS)
# The server's own pixel limit, below upocr.io's 100 MP for files: a 79 KB blank 9000 x 9000 PNG took the
# server to 7.2 GB. 25 MP still admits any phone photo (12-24 MP).
DEFAULT_MAX_PIXELS = 25_000_000
# Images with a longer side above this are answered with downscaled previews, run resized (one forward
# pass per prompt) rather than on native tiles; full resolution is the command line's job.
PREVIEW_MAX_SIDE = 2048
# The largest `grow` a request may ask for (pixels).
MAX_REQUEST_GROW = 64
UPLOAD_BODY = {
    "required": True,
    "description": "The image file: the raw body (`application/octet-stream` or `image/*`) or the first "
    "file field of a form (`multipart/form-data`, with the header `X-Upocr: 1`).",
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
    },
}
ERRORS = {status: {"model": ErrorAnswer} for status in (400, 403, 404, 408, 413, 500, 503)}


@dataclass
class Limits:
    """What one request may cost (the `upocr serve` options of the same names)."""

    max_upload_bytes: int = guards.DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_concurrent: int = guards.DEFAULT_MAX_CONCURRENT
    max_queue: int = guards.DEFAULT_MAX_QUEUE
    upload_seconds: float = guards.DEFAULT_UPLOAD_SECONDS


@dataclass
class ServeState:
    """Everything a request needs: the predictor (used under `lock`), the page, the queue and the limits."""

    predictor: Predictor
    model_label: str = "model"
    limits: Limits = field(default_factory=Limits)
    samples_dir: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    page: bytes = field(default_factory=lambda: load_page().encode("utf-8"))

    def __post_init__(self) -> None:
        if self.samples_dir is None:
            self.samples_dir = Path(str(resources.files("upocr") / "samples"))
        self.queue = guards.WorkQueue(self.limits.max_concurrent, self.limits.max_queue)
        self.uploads = guards.UploadBudget(guards.UPLOADS_BUFFERED * self.limits.max_upload_bytes)

    # ------------------------------------------------------------------ answers

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "api": "v1",
            "model": without_paths(self.model_label),
            "device": str(self.predictor.device),
            "size": self.predictor.size,
            "precision": self.predictor.precision,
            "backend": getattr(self.predictor, "backend", "pytorch"),
            "removal": removal_pipeline(self.predictor.removal).describe(),
            "segmentation": self.predictor.segmentation,
            "tasks": ["all"] + [task.short for task in ALL_TASKS],
            "samples": self.sample_names(),
            "max_upload_bytes": self.limits.max_upload_bytes,
            "max_pixels": self.limits.max_pixels,
            "preview_max_side": PREVIEW_MAX_SIDE,
            "worker": os.getpid(),  # which worker process answered (one model each)
            "queue": {"capacity": self.queue.capacity, "admitted": self.queue.admitted, "running": self.queue.running},
        }

    def sample_names(self) -> list[str]:
        folder = self.samples_dir
        if folder is None or not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def sample_path(self, name: str) -> Path:
        names = self.sample_names()
        if name not in names:  # also keeps the request inside the samples folder
            raise guards.RequestError(f"unknown sample {name!r}; choose one of: {', '.join(names) or 'none bundled'}",
                                      HTTPStatus.NOT_FOUND)
        assert self.samples_dir is not None
        return self.samples_dir / name

    def decode_upload(self, data: bytes, filename: str) -> np.ndarray:
        """The upload's pixels; over `max_pixels` (from the header, before decoding) -> 413, unreadable -> 400."""
        if not data:
            raise guards.RequestError("the upload is empty; choose an image file")
        suffix = Path(filename).suffix.lower() if Path(filename).suffix.lower() in IMAGE_SUFFIXES else ""
        # read_image works on files (EXIF, bombs, truncation, every format) - give it one to read.
        with tempfile.TemporaryDirectory(prefix="upocr-serve-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                return read_image(path, max_pixels=self.limits.max_pixels)
            except ImageError as error:
                # upocr.io words its pixel-limit refusal "image too large: ..." (tests/test_serve.py checks it).
                status = (HTTPStatus.REQUEST_ENTITY_TOO_LARGE if error.problem.startswith("image too large")
                          else HTTPStatus.BAD_REQUEST)
                raise guards.RequestError(f"{filename or 'upload'}: {error.problem}", status) from None

    def predictor_for(self, options: RequestOptions, preview: bool) -> Predictor:
        """The server's predictor with this request's options (sharing its model); previews run resized."""
        changes = options.predictor_changes()
        # What one request may cost stays the server's choice: no larger tiles than its working size, no
        # grow beyond MAX_REQUEST_GROW (the dilation's cost grows with its square).
        tile = changes.get("tile")
        if isinstance(tile, int) and not isinstance(tile, bool) and tile > self.predictor.size:
            raise guards.RequestError(f"tile {tile} is larger than this server's working size {self.predictor.size}")
        if (changes.get("grow") or 0) > MAX_REQUEST_GROW:
            raise guards.RequestError(f"grow must be at most {MAX_REQUEST_GROW} pixels here, got {changes['grow']}")
        if preview:
            changes["tile"] = None  # N13: a preview costs one forward pass per prompt, whatever its size
        if not changes:
            return self.predictor
        try:
            return self.predictor.with_options(**changes)
        except (TypeError, ValueError) as error:
            raise guards.RequestError(str(error)) from None

    def run(self, load: Callable[[], np.ndarray], tasks: Sequence[Task], options: RequestOptions,
            pictures: bool) -> dict[str, Any]:
        """The task(s) on the image `load()` gives, downscaled first when it is larger than a preview
        (the memory bound). Loading it here, nothing else holds its full-resolution pixels."""
        image = load()
        height, width = image.shape[:2]
        image = downscale(image, PREVIEW_MAX_SIDE)
        preview = image.shape[:2] != (height, width)
        predictor = self.predictor_for(options, preview)
        start = time.perf_counter()
        with self.lock:
            predictions = predictor.predict_tasks(image, list(tasks))
        seconds = time.perf_counter() - start
        scale = (width / image.shape[1], height / image.shape[0])
        return {
            "width": width,
            "height": height,
            "preview": preview,
            "result_width": image.shape[1],
            "result_height": image.shape[0],
            "tiled": predictor.uses_tiles(*image.shape[:2]),
            "tasks": [task.short for task in tasks],
            "seconds": round(seconds, 3),
            "input": png_base64(image) if pictures else None,
            "results": [describe_result(image, prediction, pictures=pictures, scale=scale) for prediction in predictions],
        }

    def run_picture(self, load: Callable[[], np.ndarray], task: Task, options: RequestOptions,
                    kind: str | None) -> tuple[bytes, str, bool]:
        """(PNG, file name, preview) of one picture of one task's result."""
        image = load()
        small = downscale(image, PREVIEW_MAX_SIDE)
        preview = small.shape[:2] != image.shape[:2]
        del image
        predictor = self.predictor_for(options, preview)
        with self.lock:
            prediction = predictor.predict(small, task)
        try:
            data, name = picture_of(small, prediction, kind)
        except ValueError as error:
            raise guards.RequestError(str(error)) from None
        return data, name, preview


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


def tasks_of(name: str) -> tuple[Task, ...]:
    return ALL_TASKS if name == "all" else (Task.parse(name),)


def first_multipart_file(body: bytes, content_type: str) -> tuple[bytes, str]:
    """(data, filename) of the first file field of a multipart/form-data body.

    A minimal parser over the body already read (within the upload deadline): parts are separated by
    "--boundary" lines; each has headers, a blank line, and its bytes up to the CRLF before the next one.
    """
    match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if not match:
        raise guards.RequestError("multipart upload without a boundary")
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
    raise guards.RequestError("the form has no file; send the image as a file field "
                              "(e.g. curl -H 'X-Upocr: 1' -F image=@photo.jpg)")


async def read_upload(state: ServeState, request: Request, filename: str) -> tuple[bytes, str]:
    """(data, file name) of the request's image, read within the upload deadline and limits."""
    limits = state.limits
    body = await guards.read_body(request.receive, request.headers, limit=limits.max_upload_bytes,
                                  seconds=limits.upload_seconds, budget=state.uploads)
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        return first_multipart_file(body, content_type)
    return body, Path(filename or "upload").name


async def in_queue(state: ServeState, work: Callable[[], Any]) -> Any:
    """`work()` in a worker thread, once admitted to the queue and given a slot (QueueFull: 503)."""
    with state.queue.place():
        async with state.queue.slot():
            return await anyio.to_thread.run_sync(work)


def json_bytes(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer).encode("utf-8")


def make_app(state: ServeState, *, host: str = "127.0.0.1", allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The ASGI application serving `state`, its guards around it (see the module docstring)."""
    app = FastAPI(
        title="upocr",
        version="1",
        summary="Unified pixel-level OCR: text removal, text segmentation, tampered text detection.",
        description="Upload an image, get the task's result image or JSON (pictures as base64 PNG, text "
        "regions as polygons, per-word tampering scores). Run locally by `upocr serve`.",
        redoc_url=None,
    )
    app.state.serve = state

    @app.exception_handler(guards.RequestError)
    async def refused(request: Request, error: guards.RequestError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=int(error.status), headers=guards.error_headers(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in problem['loc'][1:]) or problem['loc'][0]}: "
                             f"{problem['msg']}" for problem in error.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = f"no such page: {request.url.path}" if error.status_code == 404 else str(error.detail)
        return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(state.page, headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/v1/health", response_model=HealthAnswer, tags=["server"])
    async def health() -> dict[str, Any]:
        """The model, the limits and the bundled samples (never queued)."""
        return state.health()

    async def predict(load: Callable[[], np.ndarray], tasks: Sequence[Task], options: RequestOptions,
                      pictures: bool) -> Response:
        answer = await guarded(lambda: json_bytes(state.run(load, tasks, options, pictures)))
        return Response(answer, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def guarded(work: Callable[[], Any]) -> Any:
        try:
            return await in_queue(state, work)
        except guards.RequestError:
            raise
        except (MemoryError, ImageError) as error:
            raise guards.RequestError(_one_line(error), HTTPStatus.INTERNAL_SERVER_ERROR) from None
        except Exception as error:  # noqa: BLE001 - a bug or model failure must not take the server down
            log.error("prediction failed: %s: %s", type(error).__name__, _one_line(error))
            raise guards.RequestError(f"prediction failed: {_one_line(error)}", HTTPStatus.INTERNAL_SERVER_ERROR) from None

    @app.post("/v1/predict", response_model=PredictionAnswer, responses=ERRORS, tags=["tasks"],
              openapi_extra={"requestBody": UPLOAD_BODY})
    async def predict_upload(
        request: Request,
        options: Annotated[RequestOptions, Query()],
        task: Annotated[TaskName, Query(description="one task, or all three")] = "all",
        filename: Annotated[str, Query(max_length=255, description="the file's name (errors name it)")] = "",
        pictures: Annotated[bool, Query(description="include the pictures as base64 PNG")] = True,
    ) -> Response:
        """Run one task or all three on the uploaded image; pictures, text regions and legends as JSON."""
        data, name = await read_upload(state, request, filename)
        return await predict(lambda: state.decode_upload(data, name), tasks_of(task), options, pictures)

    @app.post("/v1/samples/{name}", response_model=PredictionAnswer, responses=ERRORS, tags=["tasks"])
    async def predict_sample(
        name: Annotated[str, PathParameter(description="a sample of /v1/health's `samples`")],
        options: Annotated[RequestOptions, Query()],
        task: Annotated[TaskName, Query()] = "all",
        pictures: Annotated[bool, Query()] = True,
    ) -> Response:
        """The same on an image bundled with the package (no upload)."""
        path = state.sample_path(name)
        return await predict(lambda: read_image(path), tasks_of(task), options, pictures)

    for task in ALL_TASKS:
        app.add_api_route(
            f"/v1/{task.spec.verb}", task_endpoint(state, task, guarded), methods=["POST"], tags=["tasks"],
            name=task.spec.verb.replace("-", "_"), summary=task.spec.help,
            response_model=PredictionAnswer, responses={**ERRORS, 200: {"content": {"image/png": {}}}},
            openapi_extra={"requestBody": UPLOAD_BODY},
            description=f"{task.spec.title} on the uploaded image. `format=json` (default): the answer of "
            f"/v1/predict for this task; `format=png`: the picture `picture` (default the result file: "
            f"{task.spec.result_label}) as image/png.",
        )

    rules = guards.HostRules(host, allowed_hosts)
    app.add_middleware(guards.RequestGuard, rules=rules, max_upload_bytes=state.limits.max_upload_bytes)
    return app


def task_endpoint(state: ServeState, task: Task, guarded: Callable[[Callable[[], Any]], Any]) -> Callable[..., Any]:
    """The handler of `POST /v1/<verb>` for one task."""
    kinds = tuple(output.kind for output in task.spec.pictures)

    async def endpoint(
        request: Request,
        options: Annotated[RequestOptions, Query()],
        format: Annotated[Literal["json", "png"], Query(description="json: pictures and regions; png: one picture")] = "json",
        picture: Annotated[str | None, Query(description=f"with format=png: one of {', '.join(kinds)}")] = None,
        filename: Annotated[str, Query(max_length=255)] = "",
        pictures: Annotated[bool, Query(description="with format=json: include the pictures as base64 PNG")] = True,
    ) -> Response:
        data, name = await read_upload(state, request, filename)
        load = lambda: state.decode_upload(data, name)  # noqa: E731
        if format == "json":
            answer = await guarded(lambda: json_bytes(state.run(load, (task,), options, pictures)))
            return Response(answer, media_type="application/json", headers={"Cache-Control": "no-store"})
        png, picture_name, preview = await guarded(lambda: state.run_picture(load, task, options, picture))
        stem = Path(name).stem or "upload"
        headers = {"Content-Disposition": f'attachment; filename="{_header_safe(stem)}_{picture_name}"',
                   "Cache-Control": "no-store", "X-Upocr-Preview": "true" if preview else "false"}
        return Response(png, media_type="image/png", headers=headers)

    return endpoint


def _header_safe(text: str) -> str:
    return re.sub(r"[^\w.-]", "_", text)[:100]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
