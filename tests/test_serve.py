"""The web demo server: a real server on 127.0.0.1 (a free port) with a tiny model, spoken to over HTTP."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr.cli import build_parser
from upocr.predict import Predictor
from upocr.serve import first_multipart_file, make_server

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
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers=headers or {},
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
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
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


def test_pixel_limit_from_predictor(tiny_weights):
    """An image over the predictor's pixel limit (upocr.io's decompression-bomb check) is a 400."""
    predictor = Predictor(weights=tiny_weights, size=SIZE, max_pixels=1000)
    demo = make_server(predictor, "127.0.0.1", 0, log_requests=False)
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    try:
        status, answer = _json(demo, "/api/predict?task=removal&filename=big.png", _png_bytes(40, 40))
        assert status == 400 and "big.png: image too large" in answer["error"]
    finally:
        demo.shutdown()
        demo.server_close()


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
