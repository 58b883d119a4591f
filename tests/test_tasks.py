"""The task spec table (`upocr.tasks.TASK_SPECS`): complete, consistent, and the only place that names
the output files."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

import upocr
from upocr.files import task_outputs
from upocr.predict import Prediction
from upocr.tasks import (
    OVERLAY_SUFFIX,
    TASK_SPECS,
    Task,
    TaskSpec,
    decode_removal,
    decode_segmentation,
    decode_tampering,
    spec,
)

SOURCES = Path(upocr.__file__).resolve().parent
PREDICTION_FIELDS = {"image", "mask", "classes"}  # upocr.predict.Prediction's result fields


def test_every_task_has_exactly_one_spec_naming_it():
    assert set(TASK_SPECS) == set(Task)
    for task, entry in TASK_SPECS.items():
        assert isinstance(entry, TaskSpec) and entry.task is task and task.spec is entry
        assert spec(task.short) is entry and spec(int(task)) is entry


@pytest.mark.parametrize("attribute", ["title", "short", "verb", "help"])
def test_names_are_filled_in_and_unique(attribute):
    values = [getattr(entry, attribute) for entry in TASK_SPECS.values()]
    assert all(values) and len(set(values)) == len(values)


@pytest.mark.parametrize("task", list(Task))
def test_every_name_parses_back_to_its_task(task):
    entry = task.spec
    for name in (entry.title, entry.short, entry.verb, task.name, task.name.lower(), *entry.aliases,
                 entry.title.upper(), f"  {entry.verb}  "):
        assert Task.parse(name) is task, name
    assert Task.parse(int(task)) is task and Task.parse(task) is task
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", entry.verb)  # a command name


def test_an_unknown_name_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown task 'ocr'; expected one of: removal, segmentation, tampering"):
        Task.parse("ocr")


def test_output_files_are_distinct_and_the_result_file_comes_first():
    kinds_by_task: dict[Task, list[str]] = {}
    suffixes_of_all_tasks = []
    for task, entry in TASK_SPECS.items():
        outputs = entry.outputs
        assert outputs[0].suffix == entry.result_file.suffix and outputs[0].kind == entry.result_kind
        suffixes = [o.suffix for o in outputs]
        assert len(set(suffixes)) == len(suffixes)
        assert all(re.fullmatch(r"(_[a-z]+)*\.(png|jpg)", s) for s in suffixes), suffixes
        assert entry.result_suffix.endswith(".png")  # results are exact values: never a lossy format
        assert all(o.label for o in outputs)
        assert entry.picture in outputs
        kinds_by_task[task] = [o.kind for o in outputs]
        suffixes_of_all_tasks.extend(suffixes)
        assert len(set(kinds_by_task[task])) == len(kinds_by_task[task])
    # The files of different tasks (results and overlays) can share a folder without replacing each other.
    assert len(set(suffixes_of_all_tasks)) == len(suffixes_of_all_tasks)


def test_overlays_become_png_only_where_jpeg_cannot_store_the_image():
    overlay = Task.TEXT_SEGMENTATION.spec.overlay
    assert overlay is not None and overlay.suffix == "_mask" + OVERLAY_SUFFIX
    assert overlay.path(Path("out/a"), (100, 200)) == Path("out/a_mask_overlay.jpg")
    assert overlay.path(Path("out/a"), (65_501, 2)) == Path("out/a_mask_overlay.png")
    assert Task.TEXT_REMOVAL.spec.result_file.path(Path("out/a.b"), (65_501, 2)) == Path("out/a.b.png")


def test_classes_colours_and_overlays_agree():
    for entry in TASK_SPECS.values():
        assert set(entry.colours) <= set(range(1, len(entry.classes)))  # background (0) is never tinted
        assert (entry.overlay is None) == (not entry.colours)
        assert [name for name, _ in entry.legend()] == [entry.classes[v] for v in sorted(entry.colours)]
    assert Task.TAMPERED_TEXT_DETECTION.spec.classes == ("background", "real text", "tampered text")


@pytest.mark.parametrize("task", list(Task))
def test_encode_gives_a_target_the_model_can_output_and_decode_inverts_it(task):
    """A perfect model outputs the target: decoding it gives back the label (ignored pixels aside)."""
    entry = task.spec
    rng = np.random.default_rng(int(task))
    if task is Task.TEXT_REMOVAL:
        label = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    else:
        label = rng.integers(0, len(entry.classes), (5, 7)).astype(np.uint8)
        label[0, 0] = 255  # ignored
    target = entry.encode(label)
    assert target.shape == (3, 5, 7) and target.dtype == torch.float32
    assert float(target.min()) >= 0 and float(target.max()) <= 1
    result = entry.decode(target, 0.4).numpy()
    assert entry.result_field in PREDICTION_FIELDS
    if task is Task.TEXT_REMOVAL:
        assert result.shape == (5, 7, 3) and result.dtype == np.uint8
        assert np.abs(result.astype(int) - label).max() <= 1  # *255 truncates, as the original
    else:
        assert result.shape == (5, 7)
        assert np.array_equal(result[label != 255], label[label != 255])
    # Batched outputs decode to batched results.
    assert entry.decode(target.expand(2, -1, -1, -1), 0.4).shape == (2, *result.shape)


@pytest.mark.parametrize("task", list(Task))
def test_every_output_file_is_drawn_at_the_input_size_in_uint8(task):
    entry = task.spec
    image = np.full((6, 9, 3), 100, np.uint8)
    output = torch.rand(3, 6, 9)
    result = entry.decode(output, 0.4).numpy()
    for file in entry.outputs:
        pixels = file.draw(image, result)
        assert pixels.dtype == np.uint8 and pixels.shape[:2] == (6, 9), file
    stored = entry.store(result)
    assert np.array_equal(stored, entry.result_file.draw(image, result))


def test_decode_is_the_public_decoders():
    output = torch.rand(3, 4, 4)
    assert torch.equal(Task.TEXT_REMOVAL.spec.decode(output, 0.4), decode_removal(output))
    assert torch.equal(Task.TEXT_SEGMENTATION.spec.decode(output, 0.3), decode_segmentation(output, 0.3))
    assert torch.equal(Task.TAMPERED_TEXT_DETECTION.spec.decode(output, 0.4), decode_tampering(output))


def test_the_mask_file_is_0_and_255_and_the_overlay_tints_text_only():
    entry = Task.TEXT_SEGMENTATION.spec
    mask = np.array([[True, False]])
    image = np.full((1, 2, 3), 50, np.uint8)
    assert entry.store(mask).tolist() == [[255, 0]]
    overlay = entry.overlay.draw(image, mask)
    assert overlay[0, 1].tolist() == [50, 50, 50] and overlay[0, 0].tolist() != [50, 50, 50]


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string literal of a module (docstrings and f-string text included)."""
    literals = []
    with path.open("rb") as source:
        for token in tokenize.tokenize(source.readline):
            if token.type == tokenize.STRING or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
                literals.append((token.start[0], token.string))
    return literals


def test_no_module_but_tasks_spells_out_an_output_file_name():
    """Output names are written once, in the specs: a module that spells one out ("_mask.png", or the
    "_mask" its readers look for) would drift from them. ".png" alone is every image's suffix: not counted."""
    files = [file for entry in TASK_SPECS.values() for file in entry.outputs]
    suffixes = {name for file in files for name in (file.suffix, file.suffix_for((10**6, 1))) if name.rpartition(".")[0]}
    name_suffixes = {file.name_suffix for file in files if file.name_suffix}
    assert "_mask.png" in suffixes and "_mask_overlay.png" in suffixes and "_classes" in name_suffixes  # the test sees them
    offenders = []
    for path in sorted(SOURCES.rglob("*.py")):
        if path == SOURCES / "tasks.py":
            continue
        for line, literal in _string_literals(path):
            value = literal.strip("\'\"rbfuRBFU")
            if any(suffix in literal for suffix in suffixes) or value in name_suffixes:
                offenders.append(f"{path.relative_to(SOURCES)}:{line}: {literal[:60]}")
    assert not offenders, "output file names spelled outside upocr/tasks.py:\n" + "\n".join(offenders)


def _tinted(image: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The overlay as upocr drew it before the specs: 55 % of the colour over the pixel, rounded."""
    result = image.astype(np.float32)
    result[where] = 0.45 * result[where] + 0.55 * np.asarray(colour, np.float32)
    return np.rint(result).astype(np.uint8)


def test_files_keep_their_names_and_pixels():
    """The names and contents `upocr remove-text | segment-text | detect-tampering` write (as before the
    specs, but for the overlays, named after their result file since both tasks wrote `_overlay.jpg`)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    removed = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    mask = rng.random((4, 5)) > 0.5
    classes = rng.integers(0, 3, (4, 5)).astype(np.uint8)
    output = np.zeros((3, 4, 5), np.float32)
    red, green = (255, 40, 40), (40, 220, 40)
    expected = {
        Task.TEXT_REMOVAL: (Prediction(Task.TEXT_REMOVAL, output, image=removed), {"w.png": removed}),
        Task.TEXT_SEGMENTATION: (Prediction(Task.TEXT_SEGMENTATION, output, mask=mask), {
            "w_mask.png": mask.astype(np.uint8) * 255, "w_mask_overlay.jpg": _tinted(image, mask, red)}),
        Task.TAMPERED_TEXT_DETECTION: (Prediction(Task.TAMPERED_TEXT_DETECTION, output, classes=classes), {
            "w_classes.png": classes,
            "w_classes_overlay.jpg": _tinted(_tinted(image, classes == 1, green), classes == 2, red)}),
    }
    for task, (prediction, files) in expected.items():
        outputs = task_outputs(task, Path("out"), Path("w"), (4, 5))
        assert [path for path, _ in outputs] == [Path("out") / name for name in files]
        for (path, render), pixels in zip(outputs, files.values()):
            assert np.array_equal(render(image, prediction), pixels), path


def test_every_layer_table_covers_every_task():
    """What a fourth task needs besides its spec (docs/architecture.md): each table names the place."""
    from upocr.data import datasets, layouts, transforms
    from upocr.data.synth import generate
    from upocr.evaluate import baselines, report, runner
    from upocr.train import losses

    tables = {
        "data/layouts.py TASK_DIRS": layouts.TASK_DIRS,
        "data/layouts.py SAMPLE_READERS": layouts.SAMPLE_READERS,
        "data/layouts.py SAMPLE_WRITERS": layouts.SAMPLE_WRITERS,
        "data/synth/generate.py SAMPLE_PIXELS": generate.SAMPLE_PIXELS,
        "data/datasets.py DATASETS": datasets.DATASETS,
        "data/transforms.py TRAIN_AUGMENTATION": transforms.TRAIN_AUGMENTATION,
        "data/transforms.py NEW_PIXEL_FILL": transforms.NEW_PIXEL_FILL,
        "train/losses.py TASK_LOSSES": losses.TASK_LOSSES,
        "evaluate/runner.py _SCORERS": runner._SCORERS,
        "evaluate/runner.py _GROUND_TRUTH_PICTURES": runner._GROUND_TRUTH_PICTURES,
        "evaluate/runner.py _PREDICTION_PICTURES": runner._PREDICTION_PICTURES,
        "evaluate/runner.py _PER_IMAGE_SCORES": runner._PER_IMAGE_SCORES,
        "evaluate/baselines.py GROUND_TRUTH_FIELDS": baselines.GROUND_TRUTH_FIELDS,
        "evaluate/report.py _COLUMNS": report._COLUMNS,
    }
    missing = [f"{place}: {task.short}" for place, table in tables.items() for task in Task if task not in table]
    assert not missing, missing
    assert all(datasets.DATASETS[task].task is task for task in Task)
    assert all(task.short in losses.LOSS_TERMS for task in Task)  # each task's total is logged
    assert all(callable(baseline.predict) for baseline in baselines.BASELINES)
    # a task outside the tables is refused, not treated as the last one in an if chain (tampering)
    with pytest.raises(KeyError):
        runner.per_image_score(len(Task), Path("p.png"), Path("g.png"))
    with pytest.raises(KeyError):
        baselines.ground_truth_path(object(), len(Task))
