"""The web demo server: a real server on 127.0.0.1 (a free port) with a tiny model, spoken to over HTTP."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr import serve as serve_module
from upocr.cli import build_parser
from upocr.predict import Predictor
from upocr.serve import DemoApp, DemoServer, first_multipart_file, make_server

SIZE = 64
UPLOAD_LIMIT = 200_000  # bytes; small so the "too large" test sends little


@pytest.fixture(scope="module")
def server(tiny_weights):
    predictor = Predictor(weights=tiny_weights, size=SIZE)
    demo = make_server(predictor, "127.0.0.1", 0, model_label="tiny test model",
                       max_upload_bytes=UPLOAD_LIMIT, log_requests=False)
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    yield demo
    demo.shutdown()
    demo.server_close()
    thread.join(timeout=5)


def _request(server, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes, str]:
    headers = {"Content-Type": "application/octet-stream", **(headers or {})} if data is not None else headers or {}
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def _json(server, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    status, body, content_type = _request(server, path, data, headers)
    assert content_type == "application/json"
    return status, json.loads(body)


def _png_bytes(height: int, width: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(png_base64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))))


def test_page_and_health(server):
    status, body, content_type = _request(server, "/")
    assert status == 200 and content_type.startswith("text/html")
    page = body.decode("utf-8")
    assert "/api/predict" in page and 'type="file"' in page
    # Self-contained: nothing is loaded from another host.
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    status, health = _json(server, "/api/health")
    assert status == 200 and health["status"] == "ok"
    assert health["model"] == "tiny test model" and health["size"] == SIZE
    assert health["max_upload_bytes"] == UPLOAD_LIMIT
    assert "receipt.jpg" in health["samples"]


EXPECTED_IMAGES = {"removal": ["result"], "segmentation": ["overlay", "mask"], "tampering": ["overlay", "classes"]}


@pytest.mark.parametrize("task", ["removal", "segmentation", "tampering", "all"])
def test_predict_raw_upload_each_task(server, task):
    height, width = 45, 70  # not a multiple of 32 and not square: results must come back at this size
    status, answer = _json(server, f"/api/predict?task={task}&filename=photo.png", _png_bytes(height, width),
                           {"Content-Type": "application/octet-stream"})
    assert status == 200, answer
    expected_tasks = ["removal", "segmentation", "tampering"] if task == "all" else [task]
    assert answer["tasks"] == expected_tasks
    assert [r["task"] for r in answer["results"]] == expected_tasks
    assert (answer["width"], answer["height"]) == (width, height)
    assert _decode(answer["input"]).shape == (height, width, 3)
    for result in answer["results"]:
        assert [i["kind"] for i in result["images"]] == EXPECTED_IMAGES[result["task"]]
        for picture in result["images"]:
            assert picture["filename"] == f"{result['task']}_{picture['kind']}.png"
            assert _decode(picture["png"]).shape[:2] == (height, width)
    by_task = {r["task"]: r for r in answer["results"]}
    if "segmentation" in by_task:
        mask = _decode(by_task["segmentation"]["images"][1]["png"])
        assert set(np.unique(mask)) <= {0, 255}
    if "tampering" in by_task:
        classes = _decode(by_task["tampering"]["images"][1]["png"])
        assert set(np.unique(classes)) <= {0, 1, 2}
        assert [entry["label"] for entry in by_task["tampering"]["legend"]] == ["real text", "tampered text"]


def test_predict_matches_predictor(server):
    """The server's removal result is exactly the Predictor's (no extra resizing or colour changes)."""
    data = _png_bytes(40, 52, seed=3)
    status, answer = _json(server, "/api/predict?task=removal", data)
    assert status == 200
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    expected = server.app.predictor.predict(pixels, "removal").image
    np.testing.assert_array_equal(_decode(answer["results"][0]["images"][0]["png"]), expected)


def test_predict_multipart_upload(server):
    boundary = "----upocr-test-boundary"
    image = _png_bytes(33, 47, seed=1)
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scan.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    status, answer = _json(server, "/api/predict?task=segmentation", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-Upocr": "1"})
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == (47, 33)
    assert first_multipart_file(body, f"multipart/form-data; boundary={boundary}") == (image, "scan.png")


def test_example_endpoint_runs_a_bundled_sample(server):
    status, answer = _json(server, "/api/example?name=receipt.jpg&task=removal")
    assert status == 200, answer
    assert _decode(answer["results"][0]["images"][0]["png"]).shape[:2] == (answer["height"], answer["width"])
    status, answer = _json(server, "/api/example?name=../../__init__.py")
    assert status == 404 and "unknown sample" in answer["error"]


@pytest.mark.parametrize(
    ("data", "query", "message"),
    [
        (b"this is not an image at all", "task=all&filename=notes.txt", "notes.txt: not an image file"),
        (b"", "task=removal", "empty"),
        (_png_bytes(40, 40)[:60], "task=removal&filename=cut.png", "cut.png: "),  # truncated PNG
        (_png_bytes(40, 40), "task=ocr", "unknown task 'ocr'"),
    ],
    ids=["garbage", "empty", "truncated", "bad-task"],
)
def test_bad_uploads_answer_400_and_server_keeps_serving(server, data, query, message):
    status, answer = _json(server, f"/api/predict?{query}", data)
    assert status == 400
    assert message in answer["error"] and "\n" not in answer["error"]
    status, health = _json(server, "/api/health")
    assert status == 200 and health["status"] == "ok"
    status, answer = _json(server, "/api/predict?task=removal", _png_bytes(20, 30))
    assert status == 200 and (answer["width"], answer["height"]) == (30, 20)


def test_too_large_upload_is_refused(server):
    status, answer = _json(server, "/api/predict?task=removal", b"\0" * (UPLOAD_LIMIT + 1))
    assert status == 413 and "upload too large" in answer["error"]
    assert _json(server, "/api/health")[0] == 200


def test_unknown_paths_are_404_json(server):
    assert _json(server, "/nothing-here")[0] == 404
    assert _json(server, "/api/other", b"x")[0] == 404


def test_concurrent_requests_are_all_answered(server):
    """Requests arriving together are served one at a time by the model and all succeed."""
    results: list[int] = []

    def one(seed: int) -> None:
        results.append(_json(server, "/api/predict?task=all", _png_bytes(24 + seed, 40, seed))[0])

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200] * 4


def test_cli_options():
    args = build_parser().parse_args(["serve", "--port", "0", "--weights", "w", "--size", "64", "--device", "cpu"])
    assert (args.host, args.port, args.weights, args.size, args.device) == ("127.0.0.1", 0, Path("w"), 64, "cpu")
    assert args.func.__module__ == "upocr.commands.serve"
    defaults = build_parser().parse_args(["serve"])
    assert defaults.size is None  # the weights' own training size, as the other commands
    assert defaults.removal_mode == "telea-fill"


def test_cli_missing_weights_is_one_line_error(tmp_path, capsys):
    from upocr.cli import main

    assert main(["serve", "--weights", str(tmp_path / "missing"), "--port", "0"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("upocr: ") and "missing" in error and "\n" not in error


# ---------------------------------------------------------------------- hardening (reliability finding D5, D20)

def _raw(server, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, dict]:
    """A request with exactly these headers (urllib always sends its own Host): (status, JSON, headers)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.headers)
    finally:
        connection.close()


def _running(demo):
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    return demo


def _stop(demo) -> None:
    demo.shutdown()
    demo.server_close()


@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "localhost.evil.example:{port}", ""])
def test_foreign_host_header_is_refused(server, host):
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 sends Host: evil.example."""
    port = server.server_address[1]
    status, answer, _ = _raw(server, "GET", "/api/health", {"Host": host.format(port=port)})
    assert status == 403 and "Host" in answer["error"] and "\n" not in answer["error"]
    status, _, _ = _raw(server, "POST", "/api/predict?task=segmentation",
                        {"Host": host.format(port=port), "Content-Type": "image/png"}, _png_bytes(20, 20))
    assert status == 403


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "LOCALHOST:{port}"])
def test_own_host_names_are_served(server, host):
    status, answer, _ = _raw(server, "GET", "/api/health", {"Host": host.format(port=server.server_address[1])})
    assert status == 200 and answer["status"] == "ok"


def test_host_check_of_a_wildcard_bind(tiny_weights):
    """Bound to 0.0.0.0: any IP address of this computer is fine, names only when allowed (--allow-host).
    (Not bound for real: the tests listen on loopback only.)"""
    app = DemoApp(Predictor(BlockingModel(), size=32))
    demo = DemoServer(("0.0.0.0", 8000), app, allowed_hosts=["mybox.local"], bind_and_activate=False)
    try:
        assert demo.host_allowed("192.168.1.20:8000") and demo.host_allowed("mybox.local:8000")
        assert demo.host_allowed("[::1]:8000") and demo.host_allowed("localhost:8000")
        assert not demo.host_allowed("evil.example:8000") and not demo.host_allowed("192.168.1.20:8001")
        assert not demo.host_allowed("192.168.1.20") and not demo.host_allowed("mybox.local:8000:1")
    finally:
        demo.server_close()


def test_cross_origin_post_is_refused(server):
    port = server.server_address[1]
    own = {"Host": f"127.0.0.1:{port}"}
    image = _png_bytes(20, 24)
    # Another site's page: the browser adds its Origin.
    status, answer, _ = _raw(server, "POST", "/api/predict?task=segmentation",
                             {**own, "Origin": "http://evil.example", "Content-Type": "image/png"}, image)
    assert status == 403 and "cross-origin" in answer["error"]
    status, _, _ = _raw(server, "POST", "/api/predict?task=segmentation",
                        {**own, "Origin": "null", "Content-Type": "image/png"}, image)
    assert status == 403
    # A "simple" (no preflight) content type without Origin, as an old browser's form post: needs X-Upocr.
    path = "/api/predict?task=segmentation"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, answer, _ = _raw(server, "POST", path, {**own, "Content-Type": content_type}, image)
        assert status == 403 and "X-Upocr" in answer["error"], content_type
    status, _, _ = _raw(server, "POST", path, own, image)  # no Content-Type at all
    assert status == 403
    # The page itself (same origin, application/octet-stream) and scripts with the header are served.
    same_origin = {**own, "Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/octet-stream"}
    status, answer, _ = _raw(server, "POST", path, same_origin, image)
    assert status == 200 and answer["width"] == 24
    status, _, _ = _raw(server, "POST", path, {**own, "Content-Type": "text/plain", "X-Upocr": "1"}, image)
    assert status == 200
    # A cross-origin GET of a prediction is refused too.
    status, _, _ = _raw(server, "GET", "/api/example?task=segmentation", {**own, "Origin": "http://evil.example"})
    assert status == 403


def test_page_posts_with_a_non_simple_content_type(server):
    page = _request(server, "/")[1].decode("utf-8")
    assert '"Content-Type": "application/octet-stream"' in page


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose pixel data is 8 garbage bytes: decoding it would fail, so a 413
    for it shows that the size was refused from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"garbage!")


def test_too_many_pixels_is_413_before_decoding(server):
    # 9000 x 9000 = 81 MP: under upocr.io's 100 MP default for files, over the server's 25 MP.
    status, answer = _json(server, "/api/predict?task=all&filename=bomb.png", _png_header_only(9000, 9000))
    assert status == 413 and answer["error"].startswith("bomb.png: image too large: 9000x9000")
    assert "limit 25,000,000" in answer["error"]
    # Just under the limit the same kind of file is decoded, and fails: a 400.
    status, answer = _json(server, "/api/predict?task=all&filename=cut.png", _png_header_only(5000, 5000))
    assert status == 400 and "cut.png" in answer["error"]


def test_max_pixels_option(tiny_weights):
    demo = _running(make_server(Predictor(weights=tiny_weights, size=SIZE), "127.0.0.1", 0, max_pixels=1000,
                                log_requests=False))
    try:
        status, answer = _json(demo, "/api/predict?task=removal&filename=big.png", _png_bytes(40, 40))
        assert status == 413 and "big.png: image too large: 40x40" in answer["error"]
        assert _json(demo, "/api/health")[1]["max_pixels"] == 1000
        status, answer = _json(demo, "/api/predict?task=removal", _png_bytes(20, 30))
        assert status == 200
    finally:
        _stop(demo)


def test_large_images_are_answered_with_previews(server, monkeypatch):
    """Above PREVIEW_MAX_SIDE the model runs on (and the answer carries) a downscaled copy, and says so."""
    monkeypatch.setattr(serve_module, "PREVIEW_MAX_SIDE", 32)
    status, answer = _json(server, "/api/predict?task=all", _png_bytes(45, 70))
    assert status == 200
    assert (answer["width"], answer["height"], answer["preview"]) == (70, 45, True)
    assert (answer["result_width"], answer["result_height"]) == (32, 21)
    assert _decode(answer["input"]).shape == (21, 32, 3)
    for result in answer["results"]:
        for picture in result["images"]:
            assert _decode(picture["png"]).shape[:2] == (21, 32)
    status, answer = _json(server, "/api/predict?task=removal", _png_bytes(20, 30))
    assert (answer["preview"], answer["result_width"]) == (False, 30)
    page = _request(server, "/")[1].decode("utf-8")
    assert "answer.preview" in page  # the page tells the user the results are previews


class BlockingModel:
    """A stand-in model whose forward pass waits until `release` is set (records that it was entered)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, images, tasks):
        self.entered.set()
        assert self.release.wait(30)
        return images.clone()


def _post_in_thread(demo, results: list, path: str = "/api/predict?task=segmentation") -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(_json(demo, path, _png_bytes(16, 16))[0]))
    thread.start()
    return thread


def _wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_queue_full_is_503_with_retry_after():
    model = BlockingModel()
    demo = _running(make_server(Predictor(model, size=32), "127.0.0.1", 0, max_concurrent=1, max_queue=1,
                                log_requests=False))
    try:
        results: list[int] = []
        running = _post_in_thread(demo, results)
        assert model.entered.wait(20)
        waiting = _post_in_thread(demo, results)
        _wait_for(lambda: demo.app.queue.admitted == 2)
        status, answer, headers = _raw(demo, "POST", "/api/predict?task=segmentation",
                                       {"Host": f"127.0.0.1:{demo.server_address[1]}", "Content-Type": "image/png"},
                                       _png_bytes(16, 16))
        assert status == 503 and headers["Retry-After"] == str(serve_module.RETRY_AFTER_SECONDS)
        assert answer["error"].startswith("server busy") and "\n" not in answer["error"]
        assert _json(demo, "/api/health")[0] == 200  # health is not queued
        model.release.set()
        running.join(30)
        waiting.join(30)
        assert results == [200, 200]
        assert _json(demo, "/api/predict?task=segmentation", _png_bytes(16, 16))[0] == 200  # places are freed
    finally:
        model.release.set()
        _stop(demo)


def test_decoding_model_and_encoding_all_run_inside_the_concurrency_limit(tiny_weights, monkeypatch):
    """With max_concurrent=1, no two requests ever decode, predict or encode PNGs at the same time."""
    active, most = [0], [0]
    lock = threading.Lock()

    def counted(function):
        def wrapper(*args, **kwargs):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                time.sleep(0.02)  # widen the window in which an overlap would show
                return function(*args, **kwargs)
            finally:
                with lock:
                    active[0] -= 1
        return wrapper

    monkeypatch.setattr(serve_module, "read_image", counted(serve_module.read_image))
    monkeypatch.setattr(serve_module, "png_base64", counted(serve_module.png_base64))
    demo = _running(make_server(Predictor(weights=tiny_weights, size=SIZE), "127.0.0.1", 0, max_concurrent=1,
                                log_requests=False))
    try:
        results: list[int] = []
        threads = [_post_in_thread(demo, results, "/api/predict?task=all") for _ in range(4)]
        for thread in threads:
            thread.join(60)
        assert results == [200] * 4
        assert most[0] == 1
    finally:
        _stop(demo)


def test_health_has_no_absolute_paths(tiny_weights):
    from upocr import describe_weights
    from upocr.weights import DEFAULT_WEIGHTS

    label = describe_weights(None) + f" and {tiny_weights}"  # what `upocr serve` passes, plus a user path
    assert str(DEFAULT_WEIGHTS) in label
    demo = _running(make_server(Predictor(weights=tiny_weights, size=SIZE), "127.0.0.1", 0, model_label=label,
                                log_requests=False))
    try:
        status, health = _json(demo, "/api/health")
        assert status == 200
        text = json.dumps(health)
        assert str(DEFAULT_WEIGHTS) not in text and str(tiny_weights.parent) not in text
        assert not re.search(r'(^|[\s="(])/\w', text), text
        assert "upocr/weights" in health["model"] and tiny_weights.name in health["model"]
    finally:
        _stop(demo)


def test_ipv6_loopback():
    """--host ::1 serves over IPv6 (it used to fail: the server was IPv4-only)."""
    demo = _running(make_server(Predictor(BlockingModel(), size=32), "::1", 0, log_requests=False))
    try:
        assert demo.url == f"http://[::1]:{demo.server_address[1]}/"
        status, health = _json(demo, "/api/health")
        assert status == 200 and health["status"] == "ok"
    finally:
        _stop(demo)


@pytest.mark.parametrize(
    "option",
    [["--max-upload-mb", "-1"], ["--max-upload-mb", "0"], ["--max-upload-mb", "nan"], ["--max-pixels", "0"],
     ["--max-concurrent", "0"], ["--max-queue", "-1"], ["--max-pixels", "lots"]],
)
def test_cli_refuses_bad_limits(option, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["serve", *option])
    assert stop.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_cli_limit_options():
    args = build_parser().parse_args(["serve", "--max-upload-mb", "0.5", "--max-pixels", "1000000",
                                      "--max-concurrent", "2", "--max-queue", "0", "--allow-host", "a.local"])
    assert (args.max_upload_mb, args.max_pixels, args.max_concurrent, args.max_queue, args.allow_host) == (
        0.5, 1_000_000, 2, 0, ["a.local"])
    assert build_parser().parse_args(["serve"]).max_pixels == 25_000_000


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_cli_precision_reaches_the_predictor_and_health(precision, tiny_weights, monkeypatch):
    from upocr.cli import main
    from upocr.commands import serve as serve_command

    started = {}
    monkeypatch.setattr(serve_command, "serve", lambda predictor, *args, **options: started.update(predictor=predictor))
    assert main(["serve", "--weights", str(tiny_weights), "--size", str(SIZE), "--port", "0",
                 "--precision", precision]) == 0
    predictor = started["predictor"]
    assert predictor.precision == precision
    quantized = any("quantized" in type(module).__module__ for module in predictor.model.modules())
    assert quantized == (precision == "int8")  # int8: Linear layers really replaced
    assert DemoApp(predictor=predictor, model_label="m").health()["precision"] == precision
    assert build_parser().parse_args(["serve"]).precision == "fp32"


def test_cli_fp16_on_cpu_is_one_line_error(tiny_weights, capsys):
    from upocr.cli import main

    assert main(["serve", "--weights", str(tiny_weights), "--port", "0", "--precision", "fp16"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("upocr: ") and "fp16" in error and "\n" not in error
