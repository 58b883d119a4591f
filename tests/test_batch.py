"""`upocr batch` on a real local Ray (one per module: `ray.init(num_cpus=2)`), against the task commands."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from upocr.batch import CRASH_ONCE_ENV, plan_actors, run_batch
from upocr.cli import main
from upocr.io import read_image
from upocr.options import PredictorOptions

RNG = np.random.default_rng(7)
BAD = ["empty.png", "text.jpg"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (it takes seconds to start); every run_batch below uses it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Ten small images (some sharing a stem, in sub-folders, grey, with alpha) and two bad files."""
    folder = tmp_path_factory.mktemp("batch") / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    for index in range(6):
        Image.fromarray(RNG.integers(0, 256, (30 + 4 * index, 50, 3), dtype=np.uint8)).save(folder / f"img{index}.jpg")
    Image.fromarray(RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / "a" / "photo.jpg")
    Image.fromarray(RNG.integers(0, 256, (36, 28, 3), dtype=np.uint8)).save(folder / "b" / "photo.png")
    Image.fromarray(RNG.integers(0, 256, (33, 45), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(RNG.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    return folder


def _run(*argv, capsys) -> tuple[int, list[str], list[str]]:
    """main(argv): exit status, the `upocr: ` error lines (sorted: actors finish in any order), the summary
    lines (stdout also has Ray's own, e.g. "(raylet) A worker died")."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    errors = sorted(line for line in captured.err.splitlines() if line.startswith("upocr: "))
    return code, errors, [line for line in captured.out.splitlines() if " image(s) written to " in line]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (temporaries too: they start with a dot) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cli_files(inputs, tiny_weights, tmp_path_factory) -> dict:
    """What `upocr segment-text` writes for the inputs, and says: the reference for every batch run."""
    out = tmp_path_factory.mktemp("cli") / "out"
    code = main(["segment-text", str(inputs), "-o", str(out), "--weights", str(tiny_weights), "--size", "64"])
    return {"code": code, "files": _files(out)}


def _batch(inputs, out, weights, *extra, capsys):
    return _run("batch", "segment-text", inputs, "-o", out, "--weights", weights, "--size", "64", "--actors", "2",
                *extra, capsys=capsys)


def test_batch_writes_the_files_of_the_cli_and_reports_each_bad_input(inputs, tiny_weights, cli_files, tmp_path, capsys):
    code, errors, out = _batch(inputs, tmp_path / "out", tiny_weights, capsys=capsys)
    assert code == cli_files["code"] == 1
    assert errors == sorted(f"upocr: {inputs / name}: {problem}" for name, problem in
                            [("empty.png", "empty file"), ("text.jpg", "not an image file (or an unsupported format)")])
    assert out == [f"text segmentation: 10 of 12 image(s) written to {tmp_path / 'out'}; 2 failed"]
    files = _files(tmp_path / "out")
    assert len(files) == 20 and {"a/photo_mask.png", "b/photo_mask_overlay.jpg", "grey_mask.png"} <= set(files)
    assert files == cli_files["files"]  # same names, same bytes, nothing else (no temporaries)


def test_a_second_run_skips_finished_inputs_and_redoes_half_done_ones(inputs, tiny_weights, cli_files, tmp_path, capsys):
    out = tmp_path / "out"
    for name, data in cli_files["files"].items():  # a finished run (the files of the CLI: equal, test above)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "img0_mask_overlay.jpg").unlink()  # img0 half done: a run killed between its two files
    (out / "a" / "photo_mask.png").unlink()
    (out / "a" / "photo_mask_overlay.jpg").unlink()  # a/photo not done
    before = {path: os.stat(out / path).st_mtime_ns for path in _files(out)}

    # the same folder as an fsspec URL: the same names, so the same finished inputs
    code, errors, lines = _batch(f"file://{inputs}", out, tiny_weights, capsys=capsys)
    assert code == 1 and len(errors) == 2
    assert lines == [f"text segmentation: 2 of 12 image(s) written to {out}; 8 already done; 2 failed"]
    assert _files(out) == cli_files["files"]
    rewritten = {path for path, mtime in before.items() if os.stat(out / path).st_mtime_ns != mtime}
    assert rewritten == {"img0_mask.png"}  # finished inputs untouched; img0's leftover file replaced

    top_level = sorted(inputs.glob("img*.jpg"))  # named as in the folder: all finished
    again = run_batch(top_level, out, "segmentation", weights=tiny_weights, options=PredictorOptions(size=64, keep_output=False), actors=2)
    assert (again.total, again.done, again.finished, again.errors) == (6, 0, 6, [])
    assert again.actors == 0  # nothing to do: no actor was even started


def test_a_killed_actor_is_restarted_and_leaves_no_partial_files(inputs, tiny_weights, cli_files, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))  # the first write of the run: os._exit mid-file
    code, errors, lines = _batch(inputs, tmp_path / "out", tiny_weights, capsys=capsys)
    assert marker.exists()  # an actor did die, half-way through an input's files
    assert code == 1 and len(errors) == 2
    assert lines == [f"text segmentation: 10 of 12 image(s) written to {tmp_path / 'out'}; 2 failed"]
    assert _files(tmp_path / "out") == cli_files["files"]  # the dead actor's temporary is gone too


def test_removal_with_batched_forward_passes_matches_the_cli(inputs, tiny_weights, tmp_path, capsys):
    options = ["--weights", tiny_weights, "--size", "64", "--batch-size", "3", "--mode", "model-fill"]
    assert _run("remove-text", inputs / "a", inputs / "b", inputs / "img1.jpg", "-o", tmp_path / "cli", *options, capsys=capsys)[0] == 0
    code, errors, _ = _run("batch", "remove-text", inputs / "a", inputs / "b", f"file://{inputs}/img1.jpg", "-o", tmp_path / "ray",
                           *options, "--actors", "1", capsys=capsys)
    assert (code, errors) == (0, [])
    assert sorted(_files(tmp_path / "ray")) == sorted(_files(tmp_path / "cli")) == ["a/photo.png", "b/photo.png", "img1.png"]
    for name in _files(tmp_path / "cli"):  # the CLI's clash names; the same pictures, to a grey level: the actor
        # runs torch on 1 thread and the CLI on every core, and on some CPUs (AVX-512 / AMX) the kernels then
        # sum in another order and round a few fills' pixels the other way
        ours, theirs = read_image(tmp_path / "ray" / name), read_image(tmp_path / "cli" / name)
        assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs).max() <= 1, name


def test_an_output_named_like_an_input_is_refused(tmp_path, tiny_weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "x.png")
    Image.fromarray(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "x_mask.png")
    code, errors, _ = _run("batch", "segment-text", folder, "-o", folder, "--weights", tiny_weights, "--size", "64",
                           "--actors", "1", capsys=capsys)  # -o the input folder
    assert code == 1
    assert errors == [f"upocr: {folder / 'x.png'}: output {folder / 'x_mask.png'} would overwrite an input; "
                      "choose another output folder (-o)"]
    assert (folder / "x_mask_mask.png").exists()  # the other input still ran


def test_weights_that_cannot_be_loaded_are_one_line(inputs, tmp_path, capsys):
    code, errors, _ = _run("batch", "segment-text", inputs / "a", "-o", tmp_path / "out", "--weights", tmp_path / "none",
                           "--actors", "1", capsys=capsys)
    assert (code, errors) == (1, [f"upocr: {tmp_path / 'none'}: no such file or directory"])  # as `upocr segment-text`
    assert not (tmp_path / "out").exists()


def test_missing_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    code, errors, _ = _run("batch", "segment-text", tmp_path, "-o", tmp_path / "out", capsys=capsys)
    assert code == 1
    assert errors == ["upocr: upocr batch needs Ray Data: pip install -e '.[ray]'"]


def test_ray_is_imported_only_by_upocr_batch():
    code = ("import sys, upocr, upocr.cli, upocr.files; upocr.cli.build_parser(); upocr.Predictor; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})


def test_the_actor_plan_follows_the_cluster():
    assert plan_actors({"CPU": 8}) == plan_actors({"CPU": 8}, "cpu")
    assert (plan_actors({"CPU": 8}).device, plan_actors({"CPU": 8}).actors) == ("cpu", 8)
    assert plan_actors({"CPU": 8}, cpus_per_actor=4).actors == 2
    gpu = plan_actors({"CPU": 16, "GPU": 4})  # auto: the GPUs, one model each
    assert (gpu.device, gpu.actors, gpu.gpus) == ("cuda", 4, 1.0)
    assert plan_actors({"CPU": 16, "GPU": 2}, gpus_per_actor=0.5).actors == 4
    assert plan_actors({"CPU": 16, "GPU": 4}, "cpu").gpus == 0
    with pytest.raises(ValueError, match="no GPU"):
        plan_actors({"CPU": 4}, "cuda")
    assert plan_actors({"CPU": 4}, "cuda", actors=2).actors == 2  # an autoscaling cluster may add GPU nodes
