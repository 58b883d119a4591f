"""ONNX export (`upocr export-onnx`, `upocr.export`) and the onnxruntime backend of the Predictor and CLI."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upocr import export
from upocr.cli import main
from upocr.export import EXPORT_TOLERANCE, ExportError, OnnxRunner, export_onnx, max_difference
from upocr.model.checkpoint import load_model
from upocr.predict import Predictor
from upocr.tasks import Task
from upocr.weights import InferenceDefaults

SIZE = 64
# Predictor outputs on a real-looking image: the export check's 1e-4 holds on its random images, but here
# one value of 12,288 differed by 1.2e-4 (float32 summation order of ONNX Runtime's fused kernels).
OUTPUT_TOLERANCE = 3e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The tiny config with two blocks per stage, so that shifted windows (and their masks) are exported, and
    the extensions of the bundled model (image skip, removal residual: a task-dependent graph)."""
    from upocr.model import UPOCRConfig, build_model

    torch.manual_seed(0)
    config = dataclasses.replace(UPOCRConfig.preset("tiny"), encoder_depths=(2, 2, 2, 2), decoder_depths=(2,) * 5,
                                 image_skip=True, removal_residual=True)
    directory = tmp_path_factory.mktemp("weights") / "shifted"
    model = build_model(config)
    model.inference = InferenceDefaults(input_size=SIZE, segmentation_threshold=0.35)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory) -> tuple[Path, str]:
    """The tiny weights exported once through the CLI: (the .onnx file, what the command printed)."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "upocr.cli", "export-onnx", "--weights", str(weights), "--size", str(SIZE), "-o", str(path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    return path, result.stdout


@pytest.fixture(scope="module")
def tiny_model(weights):
    return load_model(weights)


def test_cli_export_writes_a_checked_file(exported):
    path, printed = exported
    assert path.is_file() and path.stat().st_size > 0
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporaries left beside it
    difference = float(printed.split("max abs difference from PyTorch ")[1].split()[0])
    assert difference <= EXPORT_TOLERANCE
    # The check covered every task in one batch (of a size the trace did not see), a single image, and an
    # image of another, non-square size.
    assert f"3x3x{SIZE}x{SIZE}" in printed and f"1x3x{SIZE}x{SIZE}" in printed and f"1x3x32x{SIZE + 32}" in printed


def test_onnx_matches_pytorch_for_every_task_in_mixed_batches(exported, tiny_model):
    runner = OnnxRunner(exported[0])
    assert runner.config == tiny_model.config  # carried in the file's metadata
    assert runner.inference == InferenceDefaults(input_size=SIZE, segmentation_threshold=0.35)
    # Batches that mix the three tasks, of sizes other than the traced one (2 x 64 x 64): batch, height and
    # width are dynamic, including sizes whose maps need no window padding (256) and tall/wide ones.
    assert max_difference(tiny_model, runner, [(4, 3, SIZE, SIZE), (5, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]) <= EXPORT_TOLERANCE
    # (larger maps sum longer rows: 1.1e-4 seen at 256 x 256; a wrong window or mask differs by far more)
    assert max_difference(tiny_model, runner, [(2, 3, 96, 160), (1, 3, 256, 256), (3, 3, 32, 224)]) <= OUTPUT_TOLERANCE
    with pytest.raises(ValueError, match="input 96x50 is not a multiple of 32; pad or resize to 96x64"):
        runner(torch.rand(1, 3, 96, 50), "removal")
    # The task input matters: a batch of one image under the three prompts gives three different outputs.
    image = torch.rand(1, 3, SIZE, SIZE).expand(3, -1, -1, -1)
    full = runner(image, [Task.TEXT_REMOVAL, Task.TEXT_SEGMENTATION, Task.TAMPERED_TEXT_DETECTION])[-1]
    assert not torch.allclose(full[0], full[1]) and not torch.allclose(full[1], full[2])


def test_predictor_onnxruntime_gives_the_pytorch_results(exported, weights):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
    tasks = ["removal", "segmentation", "tampering"]
    for removal in ("raw", "model-fill"):
        reference = Predictor(weights=weights, size=SIZE, removal=removal).predict_tasks(image, tasks)
        onnx = Predictor(weights=exported[0], backend="onnxruntime", size=SIZE, removal=removal).predict_tasks(image, tasks)
        for ours, theirs in zip(onnx, reference):
            np.testing.assert_allclose(ours.output, theirs.output, atol=OUTPUT_TOLERANCE)
        assert np.abs(onnx[0].image.astype(int) - reference[0].image).max() <= 1
        assert np.array_equal(onnx[1].mask, reference[1].mask)
        assert np.array_equal(onnx[2].classes, reference[2].classes)


def test_predictor_onnxruntime_exports_a_torch_model_in_memory(tiny_model):
    image = np.random.default_rng(1).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    onnx = Predictor(tiny_model, backend="onnxruntime", removal="raw")
    assert isinstance(onnx.model, OnnxRunner) and onnx.size == tiny_model.inference.input_size
    reference = Predictor(tiny_model, removal="raw")
    np.testing.assert_allclose(onnx.predict(image, "tampering").output, reference.predict(image, "tampering").output, atol=OUTPUT_TOLERANCE)


def test_predictor_onnxruntime_runs_at_any_size(exported, weights):
    """The file stores its working size (the Predictor's default) but runs at any: here 96 and tiles of 32."""
    image = np.random.default_rng(4).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    assert Predictor(weights=exported[0], backend="onnxruntime").size == SIZE
    for options in ({"size": 96}, {"size": SIZE, "tile": 32}):
        reference = Predictor(weights=weights, removal="raw", **options).predict(image, "segmentation")
        onnx = Predictor(weights=exported[0], backend="onnxruntime", removal="raw", **options).predict(image, "segmentation")
        np.testing.assert_allclose(onnx.output, reference.output, atol=OUTPUT_TOLERANCE)


def test_predictor_onnxruntime_refuses_other_precisions(exported):
    with pytest.raises(ValueError, match="fp32 only"):
        Predictor(weights=exported[0], backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(weights=exported[0], backend="tensorrt")


def test_cli_predict_with_backend_onnxruntime(exported, weights, tmp_path):
    image = np.random.default_rng(2).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    masks = {}
    for backend, weights in (("pytorch", weights), ("onnxruntime", exported[0])):
        out = tmp_path / backend
        assert main(["segment-text", str(tmp_path / "in.png"), "-o", str(out), "--weights", str(weights),
                     "--size", str(SIZE), "--backend", backend]) == 0
        masks[backend] = np.asarray(Image.open(out / "in_mask.png"))
    assert np.array_equal(masks["onnxruntime"], masks["pytorch"])


def test_serve_backend_onnxruntime_reaches_the_page(exported, monkeypatch):
    from upocr.commands import serve as serve_command
    from upocr.serve import ServeState

    started = {}
    monkeypatch.setattr(serve_command, "serve", lambda settings, port, **options: started.update(options))
    assert main(["serve", "--weights", str(exported[0]), "--port", "0", "--backend", "onnxruntime"]) == 0
    predictor = started["predictor"]
    assert isinstance(predictor.model, OnnxRunner) and predictor.size == SIZE  # the size stored in the file
    assert ServeState(predictor=predictor, model_label="m").health()["backend"] == "onnxruntime"
    image = np.random.default_rng(3).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    assert predictor.predict(image, "segmentation").mask.shape == (40, 50)


def test_bad_onnx_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    assert main(["remove-text", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--weights", str(bad),
                 "--backend", "onnxruntime"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(bad) in error and "not a loadable ONNX model" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        Predictor(weights=tmp_path / "missing.onnx", backend="onnxruntime")


def test_export_that_disagrees_with_pytorch_writes_nothing(exported, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "onnx_bytes", lambda model, size=None: exported[0].read_bytes())
    monkeypatch.setattr(export, "max_difference", lambda *args, **kwargs: 0.5)
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch by 5.00e-01"):
        export_onnx(tiny_model, target, size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export-onnx", "--weights", str(tmp_path / "nope"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert main(["export-onnx", "--config", "tiny", "-o", str(tmp_path / "m.txt")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "nope" in errors[0] and "must end in .onnx" in errors[1]
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_says_how_to_install(monkeypatch, exported):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"pip install 'upocr\[onnx\]'"):
        OnnxRunner(exported[0])


def test_importing_upocr_needs_no_onnx():
    code = ("import sys, upocr, upocr.predict, upocr.cli; upocr.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _documented_task_order(text: str) -> list[str]:
    """'(0 removal, 1 tampering, 2 segmentation; ...' after "`tasks` (B,) int64" -> the names by index."""
    import re

    listed = re.search(r"`tasks` \(B,\) int64 \(([^;)]*)[;)]", " ".join(text.split()))
    assert listed, "the task indices are no longer documented where this test looks"
    pairs = [item.split() for item in listed.group(1).split(",")]
    assert [int(index) for index, _ in pairs] == list(range(len(pairs)))
    return [name for _, name in pairs]


def test_the_documented_task_order_is_the_exported_one(exported, tiny_model):
    """The help and docs/inference.md said index 1 was segmentation; it is tampered text detection. The
    order the file stores (upocr_tasks) must be the one documented, and mean what it says."""
    import argparse

    import onnx

    from upocr.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    help_order = _documented_task_order(commands.choices["export-onnx"].description)
    doc_order = _documented_task_order((Path(__file__).resolve().parents[1] / "docs" / "inference.md").read_text())
    stored = {prop.key: prop.value for prop in onnx.load(str(exported[0])).metadata_props}
    import json

    assert help_order == doc_order == json.loads(stored["upocr_tasks"]) == ["removal", "tampering", "segmentation"]
    # and index i runs task i: the file's output for each index equals PyTorch's for the named task
    runner = OnnxRunner(exported[0])
    images = torch.rand(len(doc_order), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    indices = torch.arange(len(doc_order))
    with torch.inference_mode():
        expected = tiny_model(images, [Task.parse(name) for name in doc_order])
    for ours, theirs in zip(runner(images, indices), expected):
        # 10x the export check's tolerance: this checks the routing (another task's output is another
        # resolution and far off), and one batch of every task sums in another order on some CPUs (1.2e-4 on an
        # AVX-512 / AMX host)
        assert float((ours - theirs).abs().max()) <= 10 * EXPORT_TOLERANCE


def _rewritten(source: Path, target: Path, change) -> Path:
    import onnx

    proto = onnx.load(str(source))
    change(proto)
    onnx.save(proto, str(target))
    return target


def _segment_text_exit_status(weights: Path, tmp_path: Path) -> int:
    """`upocr segment-text` on a small image with these ONNX weights, into tmp_path/out."""
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    return main(["segment-text", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--weights", str(weights),
                 "--backend", "onnxruntime"])


def test_onnx_weights_with_nan_values_are_refused(exported, tmp_path):
    """N7: one NaN in the largest initializer loaded silently and wrote an empty mask with exit 0."""
    from onnx import numpy_helper

    def poison(proto) -> None:
        largest = max(proto.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
        values = numpy_helper.to_array(largest).copy()
        values.flat[0] = np.nan
        largest.CopyFrom(numpy_helper.from_array(values, largest.name))
        poison.name = largest.name

    bad = _rewritten(exported[0], tmp_path / "nan.onnx", poison)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: {re.escape(poison.name)} has NaN/Inf values$"):
        OnnxRunner(bad)
    assert _segment_text_exit_status(bad, tmp_path) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, reason", [
    ("upocr_config", "{'a': 1}", "Expecting property name enclosed in double quotes"),
    ("upocr_inference", "[1, 2]", "expected a JSON object, found list"),
    ("upocr_inference", '{"input_size": 64, "segmentation_threshold": NaN}', "segmentation_threshold must be in (0, 1), got nan"),
    ("upocr_inference", '{"input_size": 8192}', "input_size 8192 is too large"),
    ("upocr_config", '{"encoder_depths": "x"}', ""),
])
def test_broken_onnx_metadata_is_one_line_naming_the_file(exported, tmp_path, capsys, key, value, reason):
    """N15: "upocr: Expecting value: line 1 column 4 (char 3)", without the file's name."""

    def set_entry(proto) -> None:
        entry = next(prop for prop in proto.metadata_props if prop.key == key)
        entry.value = value

    bad = _rewritten(exported[0], tmp_path / "meta.onnx", set_entry)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: invalid {key} metadata \(.*{re.escape(reason)}"):
        OnnxRunner(bad)
    assert _segment_text_exit_status(bad, tmp_path) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"upocr: {bad}: invalid {key} metadata")


def test_a_fifo_as_onnx_weights_is_refused_without_opening_it(tmp_path):
    """N17: special files as --weights; a FIFO would block ONNX Runtime's read (a .onnx one said "no such ONNX file")."""
    import os

    os.mkfifo(tmp_path / "pipe.onnx")
    with pytest.raises(ValueError, match=r"pipe\.onnx: not a regular file \(a FIFO\)$"):
        Predictor(weights=tmp_path / "pipe.onnx", backend="onnxruntime")
