"""The HTTP API (`upocr serve`): a real uvicorn server on 127.0.0.1 (a free port) with a tiny model,
spoken to over HTTP, with every guard of the earlier http.server page (D5, D20, N1, N4, N13, N14)."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upocr.cli import build_parser
from upocr.predict import Prediction, Predictor
from upocr.options import PredictorOptions
from upocr.serve import Limits, ServeSettings, ServeState, start_server
from upocr.serve import answers as answers_module
from upocr.serve import app as app_module
from upocr.serve import guards
from upocr.serve.answers import text_regions
from upocr.serve.app import first_multipart_file
from upocr.serve.server import LISTEN_BACKLOG
from upocr.tasks import Task

SIZE = 64
UPLOAD_LIMIT = 200_000  # bytes; small so the "too large" test sends little
VERBS = {"removal": "remove-text", "segmentation": "segment-text", "tampering": "detect-tampering"}


@pytest.fixture(scope="module")
def server(tiny_weights):
    running = start_server(Predictor(weights=tiny_weights, size=SIZE, keep_output=False), model_label="tiny test model",
                           limits=Limits(max_upload_bytes=UPLOAD_LIMIT))
    yield running
    running.stop()


def _request(server, path: str, data: bytes | None = None, headers: dict | None = None,
             method: str | None = None) -> tuple[int, bytes, dict]:
    headers = {"Content-Type": "application/octet-stream", **(headers or {})} if data is not None else headers or {}
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers=headers,
                                     method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def _json(server, path: str, data: bytes | None = None, headers: dict | None = None,
          method: str | None = None) -> tuple[int, dict]:
    status, body, response_headers = _request(server, path, data, headers, method)
    assert response_headers["content-type"] == "application/json", (status, body[:200])
    return status, json.loads(body)


def _raw(server, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, dict]:
    """A request with exactly these headers (urllib always sends its own Host): (status, JSON, headers)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}
    finally:
        connection.close()


def _own(server) -> dict:
    return {"Host": f"127.0.0.1:{server.port}"}


def _png_bytes(height: int, width: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(png: str | bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png) if isinstance(png, str) else png)))


# ---------------------------------------------------------------------- the API


def test_page_health_and_schema(server):
    status, body, headers = _request(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode("utf-8")
    assert "/v1/predict" in page and "/v1/samples/" in page and 'type="file"' in page
    # Self-contained: nothing is loaded from another host.
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    status, health = _json(server, "/v1/health")
    assert status == 200 and health["status"] == "ok" and health["api"] == "v1"
    assert health["model"] == "tiny test model" and health["size"] == SIZE
    assert health["max_upload_bytes"] == UPLOAD_LIMIT
    assert "receipt.jpg" in health["samples"]
    assert health["removal"].startswith("telea-fill: ") and health["segmentation"] == "model"  # the tiny weights' defaults
    status, schema = _json(server, "/openapi.json")
    assert status == 200 and schema["openapi"].startswith("3.")
    assert {"/v1/health", "/v1/predict", "/v1/samples/{name}", "/v1/remove-text", "/v1/segment-text",
            "/v1/detect-tampering"} <= set(schema["paths"])
    status, docs, headers = _request(server, "/docs")
    assert status == 200 and b"/openapi.json" in docs


def test_schema_describes_typed_options_and_upload(server):
    """What a generated client needs: the upload's media types, and the options as validated, typed parameters."""
    schema = _json(server, "/openapi.json")[1]
    operation = schema["paths"]["/v1/remove-text"]["post"]
    assert {"application/octet-stream", "multipart/form-data"} <= set(operation["requestBody"]["content"])
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert {"removal", "threshold", "grow", "tile", "format", "picture", "filename"} <= set(parameters)
    # Made from PredictorOptions: its choices, its help (no copy of either here).
    removal_field = next(f for f in dataclasses.fields(PredictorOptions) if f.name == "removal")
    assert set(json.dumps(parameters["removal"]).split('"')) >= set(removal_field.metadata["choices"])
    assert removal_field.metadata["help"] in json.dumps(schema)
    # A value outside the schema is refused with one line naming the parameter.
    status, answer = _json(server, "/v1/remove-text?removal=smudge", _png_bytes(20, 20))
    assert status == 400 and "removal" in answer["error"] and "\n" not in answer["error"]
    # Text goes through the command line's own parser (tile "off"/"auto"/N) and its message.
    status, answer = _json(server, "/v1/segment-text?tile=sideways", _png_bytes(20, 20))
    assert status == 400 and "expected off, auto or a tile size in pixels" in answer["error"]
    # PredictorOptions' own checks run too (a tile must be a multiple of 32), and the server's bounds.
    assert "multiple of 32" in _json(server, "/v1/segment-text?tile=40", _png_bytes(20, 20))[1]["error"]
    assert "larger than this server's working size" in _json(server, "/v1/segment-text?tile=4096", _png_bytes(20, 20))[1]["error"]
    assert "grow must be at most" in _json(server, "/v1/remove-text?grow=5000", _png_bytes(20, 20))[1]["error"]
    status, answer = _json(server, "/v1/segment-text?threshold=1.5", _png_bytes(20, 20))
    assert status == 400 and "threshold" in answer["error"]


def test_a_client_driven_by_the_schema_runs_all_three_tasks(server):
    """What a generated client does: every operation taking an image body, called as the schema says
    (its binary body, each `format` value it lists), answers 200 with a media type the schema declares."""
    schema = _json(server, "/openapi.json")[1]
    data = _png_bytes(30, 40, seed=7)
    called = set()
    for path, operations in schema["paths"].items():
        operation = operations.get("post", {})
        if "application/octet-stream" not in operation.get("requestBody", {}).get("content", {}):
            continue
        formats = next((p["schema"]["enum"] for p in operation["parameters"] if p["name"] == "format"), ["json"])
        declared = set(operation["responses"]["200"]["content"])
        for answer_format in formats:
            status, body, headers = _request(server, f"{path}?format={answer_format}", data)
            assert status == 200 and headers["content-type"] in declared, (path, answer_format, body[:200])
            called.add((path, headers["content-type"]))
    assert {(f"/v1/{verb}", kind) for verb in VERBS.values() for kind in ("application/json", "image/png")} <= called


EXPECTED_IMAGES = {"removal": ["result"], "segmentation": ["overlay", "mask"], "tampering": ["overlay", "classes"]}


@pytest.mark.parametrize("task", ["removal", "segmentation", "tampering", "all"])
def test_predict_raw_upload_each_task(server, task):
    height, width = 45, 70  # not a multiple of 32 and not square: results must come back at this size
    status, answer = _json(server, f"/v1/predict?task={task}&filename=photo.png", _png_bytes(height, width))
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
        assert (result["regions"] is None) == (result["task"] == "removal")
    by_task = {r["task"]: r for r in answer["results"]}
    if "segmentation" in by_task:
        mask = _decode(by_task["segmentation"]["images"][1]["png"])
        assert set(np.unique(mask)) <= {0, 255}
        assert by_task["segmentation"]["text_fraction"] == pytest.approx(np.mean(mask > 0), abs=1e-6)
    if "tampering" in by_task:
        classes = _decode(by_task["tampering"]["images"][1]["png"])
        assert set(np.unique(classes)) <= {0, 1, 2}
        assert [entry["label"] for entry in by_task["tampering"]["legend"]] == ["real text", "tampered text"]


@pytest.mark.parametrize("task", ["removal", "segmentation", "tampering"])
def test_task_endpoints_answer_json_or_the_result_png(server, task):
    """`POST /v1/<verb>`: JSON like /v1/predict for one task, or with format=png the result file itself,
    exactly the predictor's result (no extra resizing or colour changes)."""
    data = _png_bytes(40, 52, seed=3)
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    expected = Task.parse(task).spec.store(server.state.predictor.predict(pixels, task).result)
    status, answer = _json(server, f"/v1/{VERBS[task]}?pictures=false", data)
    assert status == 200 and answer["tasks"] == [task] and answer["input"] is None
    assert answer["results"][0]["images"] == []
    status, png, headers = _request(server, f"/v1/{VERBS[task]}?format=png&filename=scan.png", data)
    assert status == 200 and headers["content-type"] == "image/png"
    assert f'filename="scan_{task}_' in headers["content-disposition"]
    np.testing.assert_array_equal(_decode(png), expected)
    status, answer = _json(server, f"/v1/{VERBS[task]}?format=png&picture=nothing", data)
    assert status == 400 and "no picture 'nothing'" in answer["error"]


def test_request_options_reach_the_predictor(server):
    """threshold=0.01 marks nearly everything as text on this model; 0.99 nearly nothing."""
    data = _png_bytes(40, 40, seed=5)
    fractions = [_json(server, f"/v1/segment-text?pictures=false&threshold={t}", data)[1]["results"][0]["text_fraction"]
                 for t in (0.01, 0.99)]
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    for fraction, threshold in zip(fractions, (0.01, 0.99)):
        mask = server.state.predictor.with_options(threshold=threshold).predict(pixels, "segmentation").mask
        assert fraction == pytest.approx(mask.mean(), abs=1e-6)
    assert fractions[0] > fractions[1]
    assert server.state.predictor.threshold not in (0.01, 0.99)  # the server's own predictor is unchanged


def test_removal_with_the_word_detector_answers_its_polygons(server):
    """A removal pipeline that finds words with the detector gives the predictor's own regions (scored)."""
    status, answer = _json(server, "/v1/samples/receipt.jpg?task=removal&removal=words-telea&tile=off&pictures=false",
                           b"", {"X-Upocr": "1"})
    assert status == 200, answer
    regions = answer["results"][0]["regions"]
    assert len(regions) > 5 and all(0 < region["score"] <= 1 for region in regions)
    for region in regions:
        xs, ys = zip(*region["polygon"])
        assert 0 <= min(xs) and max(xs) <= answer["width"] and 0 <= min(ys) and max(ys) <= answer["height"]
    status, answer = _json(server, "/v1/samples/receipt.jpg?task=removal&removal=telea-fill&tile=off&pictures=false",
                           b"", {"X-Upocr": "1"})
    assert status == 200 and answer["results"][0]["regions"] is None  # a model mask: no words to give


def test_predict_multipart_upload(server):
    boundary = "----upocr-test-boundary"
    image = _png_bytes(33, 47, seed=1)
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scan.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    status, answer = _json(server, "/v1/segment-text", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-Upocr": "1"})
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == (47, 33)
    assert first_multipart_file(body, f"multipart/form-data; boundary={boundary}") == (image, "scan.png")


def test_sample_endpoint_runs_a_bundled_sample(server):
    status, answer = _json(server, "/v1/samples/receipt.jpg?task=removal&tile=off", b"", {"X-Upocr": "1"})
    assert status == 200, answer
    assert _decode(answer["results"][0]["images"][0]["png"]).shape[:2] == (answer["height"], answer["width"])
    for name in ("..%2F..%2F__init__.py", "nothing.jpg"):
        status, answer = _json(server, f"/v1/samples/{name}", b"", {"X-Upocr": "1"})
        assert status == 404, answer


@pytest.mark.parametrize(
    ("data", "query", "message"),
    [
        (b"this is not an image at all", "task=all&filename=notes.txt", "notes.txt: not an image file"),
        (b"", "task=removal", "empty"),
        (_png_bytes(40, 40)[:60], "task=removal&filename=cut.png", "cut.png: "),  # truncated PNG
        (_png_bytes(40, 40), "task=ocr", "task: Input should be 'all', 'removal'"),
    ],
    ids=["garbage", "empty", "truncated", "bad-task"],
)
def test_bad_uploads_answer_400_and_server_keeps_serving(server, data, query, message):
    status, answer = _json(server, f"/v1/predict?{query}", data)
    assert status == 400
    assert message in answer["error"] and "\n" not in answer["error"]
    status, health = _json(server, "/v1/health")
    assert status == 200 and health["status"] == "ok"
    status, answer = _json(server, "/v1/predict?task=removal", _png_bytes(20, 30))
    assert status == 200 and (answer["width"], answer["height"]) == (30, 20)


def test_too_large_upload_is_refused(server):
    status, answer = _json(server, "/v1/predict?task=removal", b"\0" * (UPLOAD_LIMIT + 1))
    assert status == 413 and "upload too large" in answer["error"]
    # Without a Content-Length (chunked), counted as it arrives.
    chunks = iter([b"\0" * 65536] * 4)
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request("POST", "/v1/segment-text", body=chunks, encode_chunked=True,
                           headers={"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert response.status == 413 and "upload too large" in json.loads(response.read())["error"]
    finally:
        connection.close()
    assert _json(server, "/v1/health")[0] == 200


def test_unknown_paths_are_404_json(server):
    assert _json(server, "/nothing-here")[0] == 404
    assert _json(server, "/v1/other", b"x")[0] == 404
    assert _json(server, "/api/predict?task=all", b"x")[0] == 404  # the unversioned API is gone


def test_concurrent_requests_are_all_answered(server):
    """Requests arriving together are served one at a time by the model and all succeed."""
    results: list[int] = []

    def one(seed: int) -> None:
        results.append(_json(server, "/v1/predict?task=all", _png_bytes(24 + seed, 40, seed))[0])

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200] * 4


# ---------------------------------------------------------------------- text regions


def test_text_regions_are_word_polygons_with_tampering_scores():
    classes = np.zeros((60, 200), np.uint8)
    classes[10:20, 10:40] = 1  # a real word
    classes[10:20, 120:150] = 2  # a tampered word
    classes[40:52, 60:100] = 1  # a word with a few tampered letters
    classes[40:52, 95:100] = 2
    classes[55, 5] = 1  # a speck: not a word
    prediction = Prediction(Task.TAMPERED_TEXT_DETECTION, None, classes=classes)
    regions = text_regions(prediction)
    assert len(regions) == 3
    by_box = {tuple(r["box"]): r for r in regions}
    assert by_box[(10.0, 10.0, 30.0, 10.0)]["tampered_score"] == 0 and by_box[(10.0, 10.0, 30.0, 10.0)]["label"] == "real text"
    assert by_box[(120.0, 10.0, 30.0, 10.0)]["tampered_score"] == 1 and by_box[(120.0, 10.0, 30.0, 10.0)]["label"] == "tampered text"
    mixed = by_box[(60.0, 40.0, 40.0, 12.0)]
    assert mixed["tampered_score"] == pytest.approx(5 / 40) and mixed["pixels"] == 480
    polygon = np.array(mixed["polygon"])
    assert polygon.min(0).tolist() == [60, 40] and polygon.max(0).tolist() == [99, 51]
    # Segmentation: words without scores; for a preview the coordinates are the upload's (scaled).
    mask = Prediction(Task.TEXT_SEGMENTATION, None, mask=classes > 0)
    scaled = text_regions(mask, scale=(2.0, 2.0))
    assert len(scaled) == 3 and "tampered_score" not in scaled[0]
    assert sorted(tuple(r["box"]) for r in scaled)[0] == (20.0, 20.0, 60.0, 20.0)
    assert text_regions(Prediction(Task.TEXT_REMOVAL, None, image=np.zeros((4, 4, 3), np.uint8))) is None


# ---------------------------------------------------------------------- who may ask (D20, N14)


@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "localhost.evil.example:{port}", ""])
def test_foreign_host_header_is_refused(server, host):
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 sends Host: evil.example."""
    host = host.format(port=server.port)
    status, answer, _ = _raw(server, "GET", "/v1/health", {"Host": host})
    assert status == 403 and "Host" in answer["error"] and "\n" not in answer["error"]
    status, _, _ = _raw(server, "POST", "/v1/segment-text", {"Host": host, "Content-Type": "image/png"}, _png_bytes(20, 20))
    assert status == 403
    assert _raw(server, "GET", "/openapi.json", {"Host": host})[0] == 403


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "LOCALHOST:{port}"])
def test_own_host_names_are_served(server, host):
    status, answer, _ = _raw(server, "GET", "/v1/health", {"Host": host.format(port=server.port)})
    assert status == 200 and answer["status"] == "ok"


def test_host_check_of_a_wildcard_bind():
    """Bound to 0.0.0.0: any IP address of this computer is fine, names only when allowed (--allow-host)."""
    rules = guards.HostRules("0.0.0.0", ["mybox.local"])
    assert rules.allows("192.168.1.20:8000", 8000) and rules.allows("mybox.local:8000", 8000)
    assert rules.allows("[::1]:8000", 8000) and rules.allows("localhost:8000", 8000)
    assert not rules.allows("evil.example:8000", 8000) and not rules.allows("192.168.1.20:8001", 8000)
    assert not rules.allows("192.168.1.20", 8000) and not rules.allows("mybox.local:8000:1", 8000)
    assert not guards.HostRules("127.0.0.1").allows("192.168.1.20:8000", 8000)


def test_cross_origin_post_is_refused(server):
    own = _own(server)
    image = _png_bytes(20, 24)
    path = "/v1/segment-text"
    # Another site's page: the browser adds its Origin.
    status, answer, _ = _raw(server, "POST", path, {**own, "Origin": "http://evil.example", "Content-Type": "image/png"}, image)
    assert status == 403 and "cross-origin" in answer["error"]
    assert _raw(server, "POST", path, {**own, "Origin": "null", "Content-Type": "image/png"}, image)[0] == 403
    # A "simple" (no preflight) content type without Origin, as an old browser's form post: needs X-Upocr.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, answer, _ = _raw(server, "POST", path, {**own, "Content-Type": content_type}, image)
        assert status == 403 and "X-Upocr" in answer["error"], content_type
    assert _raw(server, "POST", path, own, image)[0] == 403  # no Content-Type at all
    # The page itself (same origin, application/octet-stream) and scripts with the header are served.
    same_origin = {**own, "Origin": f"http://127.0.0.1:{server.port}", "Content-Type": "application/octet-stream"}
    status, answer, _ = _raw(server, "POST", path, same_origin, image)
    assert status == 200 and answer["width"] == 24
    assert _raw(server, "POST", path, {**own, "Content-Type": "text/plain", "X-Upocr": "1"}, image)[0] == 200
    # A browser's same-origin form (e.g. /docs' "try it out") is marked so by the browser itself.
    assert _raw(server, "POST", path, {**own, "Content-Type": "text/plain", "Sec-Fetch-Site": "same-origin"}, image)[0] == 200
    # A cross-origin request for a sample prediction is refused too.
    status, _, _ = _raw(server, "POST", "/v1/samples/receipt.jpg", {**own, "Origin": "http://evil.example", "X-Upocr": "1"})
    assert status == 403


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_other_sites_pages_cannot_run_the_model(server, site):
    """N14: an <img>/<form>/fetch of another site's page sends no Origin on GET but Sec-Fetch-Site: the
    API refuses it; a link from another site to the page itself still opens it."""
    own = {**_own(server), "Sec-Fetch-Site": site}
    status, answer, _ = _raw(server, "POST", "/v1/samples/receipt.jpg?task=all", {**own, "X-Upocr": "1"})
    assert status == 403 and site in answer["error"]
    assert _raw(server, "POST", "/v1/segment-text", {**own, "Content-Type": "image/png"}, _png_bytes(20, 20))[0] == 403
    assert _raw(server, "GET", "/v1/health", own)[0] == 403
    status, body, _ = _request(server, "/", headers={"Sec-Fetch-Site": site})
    assert status == 200 and b"<html" in body
    assert _raw(server, "GET", "/v1/health", {**_own(server), "Sec-Fetch-Site": "same-origin"})[0] == 200


def test_page_posts_with_a_non_simple_content_type(server):
    page = _request(server, "/")[1].decode("utf-8")
    assert '"Content-Type": "application/octet-stream"' in page


# ---------------------------------------------------------------------- how much (D5, N13)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose pixel data is 8 garbage bytes: decoding it would fail, so a 413
    for it shows that the size was refused from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"garbage!")


def test_too_many_pixels_is_413_before_decoding(server):
    # 9000 x 9000 = 81 MP: under upocr.io's 100 MP default for files, over the server's 25 MP.
    status, answer = _json(server, "/v1/predict?task=all&filename=bomb.png", _png_header_only(9000, 9000))
    assert status == 413 and answer["error"].startswith("bomb.png: image too large: 9000x9000")
    assert "limit 25,000,000" in answer["error"]
    # Just under the limit the same kind of file is decoded, and fails: a 400.
    status, answer = _json(server, "/v1/predict?task=all&filename=cut.png", _png_header_only(5000, 5000))
    assert status == 400 and "cut.png" in answer["error"]


def test_max_pixels_option(tiny_weights):
    demo = start_server(Predictor(weights=tiny_weights, size=SIZE), limits=Limits(max_pixels=1000))
    try:
        status, answer = _json(demo, "/v1/predict?task=removal&filename=big.png", _png_bytes(40, 40))
        assert status == 413 and "big.png: image too large: 40x40" in answer["error"]
        assert _json(demo, "/v1/health")[1]["max_pixels"] == 1000
        assert _json(demo, "/v1/predict?task=removal", _png_bytes(20, 30))[0] == 200
    finally:
        demo.stop()


def test_large_images_are_answered_with_previews(server, monkeypatch):
    """Above PREVIEW_MAX_SIDE the model runs on (and the answer carries) a downscaled copy, and says so;
    regions are in the upload's coordinates."""
    monkeypatch.setattr(app_module, "PREVIEW_MAX_SIDE", 32)
    status, answer = _json(server, "/v1/predict?task=all", _png_bytes(45, 70))
    assert status == 200
    assert (answer["width"], answer["height"], answer["preview"]) == (70, 45, True)
    assert (answer["result_width"], answer["result_height"]) == (32, 21)
    assert _decode(answer["input"]).shape == (21, 32, 3)
    for result in answer["results"]:
        for picture in result["images"]:
            assert _decode(picture["png"]).shape[:2] == (21, 32)
        for region in result["regions"] or []:
            assert max(x for x, _ in region["polygon"]) <= 70 and max(y for _, y in region["polygon"]) <= 45
    status, png, headers = _request(server, "/v1/segment-text?format=png", _png_bytes(45, 70))
    assert status == 200 and headers["x-upocr-preview"] == "true" and _decode(png).shape == (21, 32)
    status, answer = _json(server, "/v1/predict?task=removal", _png_bytes(20, 30))
    assert (answer["preview"], answer["result_width"]) == (False, 30)
    page = _request(server, "/")[1].decode("utf-8")
    assert "answer.preview" in page  # the page tells the user the results are previews


class CountingModel:
    """A stand-in model recording the (height, width) of every batch it is given."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, images, tasks):
        self.shapes.append(tuple(images.shape[-2:]))
        return images.clone()


def test_previews_run_resized_not_tiled(monkeypatch):
    """N13: a preview costs one forward pass per prompt, at the working size, whatever the upload's size;
    an image below the preview side keeps `--tile auto` (native tiles, as the command line)."""
    model = CountingModel()
    monkeypatch.setattr(app_module, "PREVIEW_MAX_SIDE", 160)
    demo = start_server(Predictor(model, size=32, tile="auto", keep_output=False))
    try:
        status, answer = _json(demo, "/v1/segment-text?pictures=false", _png_bytes(600, 400))
        assert status == 200 and answer["preview"] and not answer["tiled"]
        assert model.shapes == [(32, 32)]
        model.shapes.clear()
        status, answer = _json(demo, "/v1/segment-text?pictures=false", _png_bytes(150, 100))
        assert status == 200 and not answer["preview"] and answer["tiled"]
        assert len(model.shapes) > 4  # the tiles of the image at its own resolution
    finally:
        demo.stop()


# ---------------------------------------------------------------------- how many (D5, N1, N4)


class BlockingModel:
    """A stand-in model whose forward pass waits until `release` is set (records that it was entered)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, images, tasks):
        self.entered.set()
        assert self.release.wait(30)
        return images.clone()


def _post_in_thread(demo, results: list, path: str = "/v1/segment-text") -> threading.Thread:
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
    demo = start_server(Predictor(model, size=32), limits=Limits(max_concurrent=1, max_queue=1))
    try:
        results: list[int] = []
        running = _post_in_thread(demo, results)
        assert model.entered.wait(20)
        waiting = _post_in_thread(demo, results)
        _wait_for(lambda: demo.state.queue.admitted == 2)
        status, answer, headers = _raw(demo, "POST", "/v1/segment-text", {**_own(demo), "Content-Type": "image/png"},
                                       _png_bytes(16, 16))
        assert status == 503 and headers["retry-after"] == str(guards.RETRY_AFTER_SECONDS)
        assert answer["error"].startswith("server busy") and "\n" not in answer["error"]
        assert _json(demo, "/v1/health")[0] == 200  # health is not queued
        model.release.set()
        running.join(30)
        waiting.join(30)
        assert results == [200, 200]
        assert _json(demo, "/v1/segment-text", _png_bytes(16, 16))[0] == 200  # places are freed
    finally:
        model.release.set()
        demo.stop()


def _trickle(demo, length: int = 100_000) -> socket.socket:
    """A client that sends a POST's headers and 10 bytes of its body, then stalls (N1)."""
    sock = socket.create_connection((demo.host, demo.port))
    sock.sendall(f"POST /v1/segment-text HTTP/1.1\r\nHost: 127.0.0.1:{demo.port}\r\n"
                 f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n0123456789".encode())
    return sock


def test_stalled_uploads_hold_no_queue_place_and_time_out(tiny_weights):
    """N1: with room for one request, three clients trickling their uploads do not keep a prediction
    out, and each is answered 408 once its upload deadline has passed."""
    demo = start_server(Predictor(weights=tiny_weights, size=SIZE), limits=Limits(max_queue=0, upload_seconds=1.5))
    stalled = [_trickle(demo) for _ in range(3)]
    in_headers = [socket.create_connection((demo.host, demo.port)) for _ in range(50)]
    for sock in in_headers:  # and many more that never finish their headers
        sock.sendall(b"POST /v1/segment-text HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        time.sleep(0.3)
        start = time.monotonic()
        status, answer = _json(demo, "/v1/segment-text?pictures=false", _png_bytes(20, 20))
        assert status == 200, answer
        assert time.monotonic() - start < 1.2  # not after the stalled ones gave up
        for sock in stalled:
            sock.settimeout(10)
            reply = sock.recv(4096).decode("latin-1")
            assert reply.startswith("HTTP/1.1 408") and "upload too slow" in reply and "connection: close" in reply.lower()
    finally:
        for sock in stalled + in_headers:
            sock.close()
        demo.stop()


def test_upload_budget_refuses_what_does_not_fit():
    """Bodies being received count against one byte budget (bytes as they arrive, not as declared)."""
    budget = guards.UploadBudget(100)

    def body(*chunks: bytes):
        messages = iter([{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)])

        async def receive():
            return next(messages)
        return receive

    import asyncio

    read = lambda receive, headers: asyncio.run(guards.read_body(receive, headers, limit=1000, seconds=5, budget=budget))  # noqa: E731
    assert read(body(b"a" * 60, b"b" * 30), {"content-length": "90"}) == b"a" * 60 + b"b" * 30
    assert budget.used == 0  # given back once read
    budget.take(50)  # another upload arriving
    with pytest.raises(guards.RequestError) as refused:
        read(body(b"a" * 60), {})
    assert refused.value.status == 503 and budget.used == 50
    with pytest.raises(guards.RequestError) as cut:
        read(body(b"a" * 10), {"content-length": "20"})
    assert "cut short" in str(cut.value)


def test_a_burst_gets_answers_not_resets(tiny_weights):
    """N4: 40 clients at once against room for 3: each gets 200 or 503 (never a reset connection), and the
    listen backlog holds far more than the queue."""
    demo = start_server(Predictor(weights=tiny_weights, size=SIZE), limits=Limits(max_queue=2))
    assert demo.config.backlog == LISTEN_BACKLOG >= 128
    try:
        outcomes: list[object] = []
        data = _png_bytes(24, 24)
        barrier = threading.Barrier(40)

        def client() -> None:
            barrier.wait()
            try:
                outcomes.append(_request(demo, "/v1/segment-text?pictures=false", data)[0])
            except OSError as error:
                outcomes.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=client) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(outcomes) == 40 and set(outcomes) <= {200, 503}, outcomes
        assert 200 in outcomes
    finally:
        demo.stop()


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

    monkeypatch.setattr(app_module, "read_image", counted(app_module.read_image))
    monkeypatch.setattr(answers_module, "png_base64", counted(answers_module.png_base64))
    monkeypatch.setattr(app_module, "png_base64", counted(app_module.png_base64))
    demo = start_server(Predictor(weights=tiny_weights, size=SIZE), limits=Limits(max_concurrent=1))
    try:
        results: list[int] = []
        threads = [_post_in_thread(demo, results, "/v1/predict?task=all") for _ in range(4)]
        for thread in threads:
            thread.join(60)
        assert results == [200] * 4
        assert most[0] == 1
    finally:
        demo.stop()


def test_graceful_shutdown_finishes_accepted_work():
    """Stopping (Ctrl+C, SIGTERM) refuses new connections but answers the requests already running or queued."""
    model = BlockingModel()
    demo = start_server(Predictor(model, size=32))
    results: list[int] = []
    try:
        running = _post_in_thread(demo, results)
        assert model.entered.wait(20)
        queued = _post_in_thread(demo, results)
        _wait_for(lambda: demo.state.queue.admitted == 2)
        stopping = threading.Thread(target=demo.stop)
        stopping.start()
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection((demo.host, demo.port), timeout=2).close()
        assert stopping.is_alive()  # waiting for the accepted requests
        model.release.set()
        running.join(30)
        queued.join(30)
        stopping.join(30)
        assert results == [200, 200] and not stopping.is_alive()
    finally:
        model.release.set()
        demo.stop()


# ---------------------------------------------------------------------- the rest of the server


def test_health_has_no_absolute_paths(tiny_weights):
    from upocr import describe_weights
    from upocr.weights import DEFAULT_WEIGHTS

    label = describe_weights(None) + f" and {tiny_weights}"  # what `upocr serve` passes, plus a user path
    assert str(DEFAULT_WEIGHTS) in label
    demo = start_server(Predictor(weights=tiny_weights, size=SIZE), model_label=label)
    try:
        status, health = _json(demo, "/v1/health")
        assert status == 200
        text = json.dumps(health)
        assert str(DEFAULT_WEIGHTS) not in text and str(tiny_weights.parent) not in text
        assert not re.search(r'(^|[\s="(])/\w', text), text
        assert "upocr/weights" in health["model"] and tiny_weights.name in health["model"]
    finally:
        demo.stop()


def test_ipv6_loopback():
    """--host ::1 serves over IPv6."""
    demo = start_server(Predictor(BlockingModel(), size=32), "::1")
    try:
        assert demo.url == f"http://[::1]:{demo.port}/"
        status, health = _json(demo, "/v1/health")
        assert status == 200 and health["status"] == "ok"
    finally:
        demo.stop()


def test_cli_options():
    args = build_parser().parse_args(["serve", "--port", "0", "--weights", "w", "--size", "64", "--device", "cpu",
                                      "--workers", "3", "--tile", "off", "--threshold", "0.3", "--grow", "2",
                                      "--removal", "telea-fill"])
    assert (args.host, args.port, args.weights, args.size, args.device) == ("127.0.0.1", 0, Path("w"), 64, "cpu")
    assert (args.workers, args.tile, args.threshold, args.grow) == (3, None, 0.3, 2)
    assert args.func.__module__ == "upocr.commands.serve"
    defaults = build_parser().parse_args(["serve"])
    assert not hasattr(defaults, "size") and defaults.workers == 1  # the weights' own training size, as the other commands
    assert not hasattr(defaults, "removal")  # the weights' pipeline, as the task commands
    assert defaults.upload_seconds == guards.DEFAULT_UPLOAD_SECONDS
    assert build_parser().parse_args(["serve", "--mode", "raw"]).removal == "raw"


def test_cli_missing_weights_is_one_line_error(tmp_path, capsys):
    from upocr.cli import main

    assert main(["serve", "--weights", str(tmp_path / "missing"), "--port", "0"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("upocr: ") and "missing" in error and "\n" not in error


@pytest.mark.parametrize(
    "option",
    [["--max-upload-mb", "-1"], ["--max-upload-mb", "0"], ["--max-upload-mb", "nan"], ["--max-pixels", "0"],
     ["--max-concurrent", "0"], ["--max-queue", "-1"], ["--max-pixels", "lots"], ["--workers", "0"],
     ["--upload-seconds", "0"], ["--size", "16384"], ["--threshold", "2"]],
)
def test_cli_refuses_bad_limits(option, capsys):
    """Including N6: `serve --size` is bounded as the task commands' --size is."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["serve", *option])
    assert stop.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_cli_limit_options():
    args = build_parser().parse_args(["serve", "--max-upload-mb", "0.5", "--max-pixels", "1000000",
                                      "--max-concurrent", "2", "--max-queue", "0", "--allow-host", "a.local"])
    assert (args.max_upload_mb, args.max_pixels, args.max_concurrent, args.max_queue, args.allow_host) == (
        0.5, 1_000_000, 2, 0, ["a.local"])
    assert not hasattr(build_parser().parse_args(["serve"]), "max_pixels")  # the server's 25 MP, below


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_cli_precision_reaches_the_predictor_and_health(precision, tiny_weights, monkeypatch):
    from upocr.cli import main
    from upocr.commands import serve as serve_command

    started = {}
    monkeypatch.setattr(serve_command, "serve", lambda settings, port, **options: started.update(settings=settings, **options))
    assert main(["serve", "--weights", str(tiny_weights), "--size", str(SIZE), "--port", "0",
                 "--precision", precision]) == 0
    predictor = started["predictor"]
    assert predictor.precision == precision
    quantized = any("quantized" in type(module).__module__ for module in predictor.model.modules())
    assert quantized == (precision == "int8")  # int8: Linear layers really replaced
    assert ServeState(predictor=predictor, model_label="m").health()["precision"] == precision
    settings = started["settings"]
    assert settings.options.precision == precision  # what --workers N processes load
    assert settings.limits.max_pixels == 25_000_000 == settings.options.max_pixels  # the server's default
    assert ServeSettings.from_json(settings.to_json()) == settings  # as the worker processes read it
    assert settings.options.precision == PredictorOptions().precision == "fp32" or precision != "fp32"


def test_cli_fp16_on_cpu_is_one_line_error(tiny_weights, capsys):
    from upocr.cli import main

    assert main(["serve", "--weights", str(tiny_weights), "--port", "0", "--precision", "fp16"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("upocr: ") and "fp16" in error and "\n" not in error


def test_workers_each_load_a_model_and_stop_on_sigint(tiny_weights):
    """`upocr serve --workers 2`: two processes answer (each its own model), and Ctrl+C stops all cleanly."""
    command = [sys.executable, "-m", "upocr.cli", "serve", "--workers", "2", "--port", "0", "--size", str(SIZE),
               "--weights", str(tiny_weights)]
    # Its own process group, so a failed run can stop the workers too (killing uvicorn's parent leaves them).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    reader = None
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            match = re.search(r"open (http://\S+/)", line)
            url = match.group(1) if match else None
        assert url, "no address printed"
        # Every probe writes an access-log line to the pipe: read it all along, or a full pipe (64 KiB, some
        # hundreds of probes while the second worker is still loading) blocks the workers in their logging.
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
        reader.start()
        # Each worker imports torch and loads its model before it accepts; beside the rest of the suite
        # (`-n 2` on 2 cores) the second can take a minute longer than the first, so it gets its own wait.
        # The kernel picks which worker accepts a connection; a short pause between probes lets both idle.
        workers: set[int] = set()
        probes, started = 0, time.monotonic()
        while len(workers) < 2 and time.monotonic() < started + 180:
            probes += 1
            try:
                with urllib.request.urlopen(url + "v1/health", timeout=5) as response:
                    workers.add(json.loads(response.read())["worker"])
            except OSError:
                pass
            time.sleep(0.05)
        assert len(workers) == 2 and os.getpid() not in workers, (
            f"workers that answered: {sorted(workers)} after {probes} probes in {time.monotonic() - started:.0f} s; "
            f"the server's last lines: {output[-5:]}")
        request = urllib.request.Request(url + "v1/segment-text?pictures=false", data=_png_bytes(20, 20),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if reader is not None:
            reader.join(10)  # the pipe ends with the process
        process.stdout.close()


def test_sigterm_stops_the_server_cleanly(tiny_weights):
    """SIGTERM (what service managers send) stops one process the way Ctrl+C does: accepted work done, exit 0."""
    process = subprocess.Popen([sys.executable, "-m", "upocr.cli", "serve", "--port", "0", "--size", str(SIZE),
                                "--weights", str(tiny_weights)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        while url is None:
            line = process.stdout.readline()
            assert line, "the server exited before printing its address"
            match = re.search(r"open (http://\S+/)", line)
            url = match.group(1) if match else None
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "v1/health", timeout=5) as response:
                    assert response.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "upocr serve: stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
