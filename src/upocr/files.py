"""Image files and folders in, result files out: the one file pipeline of upocr.

`predict_files(predictor, inputs, out_dir, task)` is what `upocr remove-text | segment-text |
detect-tampering` run, for any caller that wants the same rules:

* inputs: files, and folders searched recursively (`upocr.io.expand_inputs`); a folder that cannot be
  listed, or holds no images, is an error of its own;
* output names: the path below the folder given (or the file's stem), made unique (`output_names`);
* writing: each input's files all or none, every file atomically (`upocr.io.write_image`); an existing
  file is never replaced unless `overwrite=True`, and an input never; stale temporaries of a killed run
  are removed from the folders written to;
* errors: a bad input (unreadable, corrupt, too large, out of memory, unwritable output) is one line
  "<input>: <problem>" and the others go on; Ctrl-C raises `FilesInterrupted` with the report so far;
* overlap: the next images are decoded and the previous ones' files encoded in threads while the model runs;
* batches: up to `predictor.batch_size` resized images share forward passes (`Predictor.predict_many`);
* given masks (`masks=`: one mask file, or a folder of masks named like the outputs) replace the removal
  pipeline's finder; `regions=True` adds `<name>_regions.json`, the word detector's polygons.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from upocr.io import IMAGE_SUFFIXES, ImageError, expand_inputs, read_image, write_image, write_text
from upocr.predict import Prediction, Predictor
from upocr.tasks import OutputFile, Task
from upocr.utils import OutputExistsError, printable, remove_stale_temporaries

# Errors that concern one input (or its outputs) only: report the file and go on with the others.
# Out of memory also arrives as a RuntimeError from torch's CPU allocator: see `is_out_of_memory`.
PER_INPUT_ERRORS = (ImageError, OSError, MemoryError, torch.OutOfMemoryError)

# How allocators word a failed allocation (torch CPU, CUDA, OpenCV).
_OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "out of memory", "failed to allocate", "insufficient memory")

Renderer = Callable[[np.ndarray, Prediction], np.ndarray | str]  # an image, or a text file's content
REGIONS_SUFFIX = "_regions.json"
MASK_SUFFIXES = ("", "_mask")  # a mask folder's names: <name>.png, or segment-text's <name>_mask.png
ErrorHandler = Callable[[str], None]


@dataclass
class FilesReport:
    """What `predict_files` did. `errors` holds one line per failed input or folder."""

    task: Task
    out_dir: Path
    total: int = 0  # images found
    done: int = 0  # images whose outputs were all written
    written: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    existing: int = 0  # images refused because an output already existed (overwrite=False)
    notes: list[str] = field(default_factory=list)  # not errors (e.g. the output folder was not searched)


class FilesInterrupted(KeyboardInterrupt):
    """Ctrl-C during `predict_files`; `report` says what was done. Every output written is complete."""

    def __init__(self, report: FilesReport) -> None:
        super().__init__(f"interrupted after {report.done} of {report.total} image(s)")
        self.report = report


def predict_files(
    predictor: Predictor,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    task: Task | str,
    *,
    overwrite: bool = False,
    on_error: ErrorHandler | None = None,
    on_note: ErrorHandler | None = None,
    progress: bool = False,
    masks: str | os.PathLike | None = None,
    regions: bool = False,
) -> FilesReport:
    """Run `task` on every image of `inputs` and write its result files under `out_dir`.

    `masks`: where the text is, for removal: one mask image for every input, or a folder of masks named
    like the outputs (`mask_for`). `regions`: also write the word detector's polygons as JSON.

    `on_error(line)` is called with each error line as it happens (they are also in the report), and
    `on_note(line)` with each note (not an error: e.g. the output folder inside an input folder is not
    read as input); `progress` shows a progress bar on stderr when it is a terminal and there are
    several images.
    """
    started = time.time()
    task = Task.parse(task)
    out_dir = Path(out_dir)
    report = FilesReport(task=task, out_dir=out_dir)
    masks = Path(masks) if masks is not None else None
    if masks is not None and not masks.exists():
        raise FileNotFoundError(f"{printable(masks)}: mask file or folder not found")
    if regions and not predictor.finds_words(task):
        raise ValueError(f"regions come from the word detector, which the {task.short} settings do not run "
                         "(choose a words pipeline, e.g. --removal words-telea)")

    def fail(line: str) -> None:
        report.errors.append(line)
        if on_error is not None:
            on_error(line)

    def note(line: str) -> None:
        report.notes.append(line)
        if on_note is not None:
            on_note(line)

    items = find_images(inputs, fail, skip=out_dir, note=note)
    report.total = len(items)
    problem = output_folder_problem(out_dir)
    if problem is not None and items:  # one line, not one per input
        fail(f"{printable(out_dir)}: {problem}")
        return report
    names = output_names(items)
    planned = [task_outputs(task, out_dir, name, regions=regions) for name in names]
    check_unique([path for outputs in planned for path, _ in outputs])
    inputs_resolved = {path.resolve() for path, _ in items}
    written: set[Path] = set()  # outputs of this run: the only existing files it may replace
    cleaned: set[Path] = set()
    bar = tqdm(total=len(items), desc=task.short, unit="image", file=sys.stderr,
               disable=True if not progress or len(items) < 2 else None)  # None: only on a terminal
    # Overlap: a reader thread decodes the next images and a writer thread renders and encodes the last
    # group's files while the model runs on this group (decoding, PNG/JPEG encoding and the model release
    # the GIL). A group is up to `batch_size` images that the model sees resized, run in shared forward
    # passes (`Predictor.predict_many`); a tiled image ends its group. Memory: about two groups of images.
    reader = ThreadPoolExecutor(1, thread_name_prefix="upocr-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="upocr-write")
    reading: dict[int, Future[np.ndarray]] = {}  # by input index
    submitted = 0  # inputs [0, submitted) have been given to the reader
    writing: list[_Writing] = []

    def read_ahead(stop: int) -> None:
        nonlocal submitted
        for index in range(submitted, min(stop, len(items))):
            reading[index] = reader.submit(read_image, items[index][0], max_pixels=predictor.max_pixels)
        submitted = max(submitted, min(stop, len(items)))

    def finish_writing() -> None:
        """Wait for the submitted inputs' files; count them, or report their errors."""
        while writing:
            done = writing.pop(0)
            try:
                files = done.future.result()
                written.update(files)
                report.written.extend(files)
                report.done += 1
            except Exception as error:  # noqa: BLE001 - as for prediction errors below
                failed(done.path, error)  # counts it on the bar
                continue
            bar.update()

    def failed(path: Path, error: Exception) -> None:
        if isinstance(error, OutputRefused):
            report.existing += error.exists
            fail(f"{printable(path)}: {error}")
        else:  # sorted by `_per_input_problem`, re-raised if not per input
            fail_input(error, path, predictor, fail)
        bar.update()

    try:
        index = 0
        while index < len(items):
            group: list[_Input] = []
            while index < len(items) and len(group) < predictor.batch_size:
                path, name, outputs = items[index][0], names[index], planned[index]
                read_ahead(index + predictor.batch_size + 1)
                pixels = reading.pop(index)
                index += 1
                try:
                    check_may_write(outputs, inputs_resolved, written, overwrite)  # before any work
                    image = pixels.result()
                    outputs = task_outputs(task, out_dir, name, image.shape[:2], regions=regions)  # overlay: maybe PNG
                    check_may_write(outputs, inputs_resolved, written, overwrite)
                    mask = mask_for(masks, name, image.shape[:2]) if masks is not None else None
                except Exception as error:  # noqa: BLE001 - see `failed`
                    failed(path, error)
                    continue
                group.append(_Input(path, image, outputs, mask))
                if predictor.uses_tiles(*image.shape[:2]):
                    break  # tiled images run alone (their tiles share the batches)
            if not group:
                continue
            try:
                predictions = predictor.predict_many([one.image for one in group], [task],
                                                     masks=[one.mask for one in group] if masks is not None else None)
            except Exception as error:  # noqa: BLE001 - see `failed`
                for one in group:
                    failed(one.path, error)
                continue
            finish_writing()  # the previous group's files, before this one's are written
            for one, (prediction,) in zip(group, predictions):
                try:
                    check_may_write(one.outputs, inputs_resolved, written, overwrite)  # the model may have run for minutes
                except OutputRefused as refused:
                    failed(one.path, refused)
                    continue
                for folder in {out.parent for out, _ in one.outputs} - cleaned:
                    remove_stale_temporaries(folder, older_than=started)
                    cleaned.add(folder)
                writing.append(_Writing(one.path, writer.submit(render_and_write, one.outputs, one.image, prediction,
                                                                 replace=overwrite)))
        finish_writing()
    except KeyboardInterrupt:
        # let the files being written finish (atomic anyway), and count them
        with contextlib.suppress(BaseException):
            finish_writing()
        raise FilesInterrupted(report) from None
    finally:
        reader.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=True)
        bar.close()
    return report


@dataclass
class _Input:
    """One decoded input waiting for the model, with the files it will produce."""

    path: Path
    image: np.ndarray
    outputs: list[tuple[Path, Renderer]]
    mask: np.ndarray | None = None  # a given text mask


@dataclass
class _Writing:
    """One input's files being rendered and written by the writer thread."""

    path: Path
    future: Future[list[Path]]


def fail_input(error: Exception, path: Path | str, predictor: Predictor, fail: ErrorHandler) -> None:
    """Report an error that concerns one input (a file, or a URL: `upocr.batch`); re-raise any other (a bug)."""
    problem = _per_input_problem(error, predictor)
    if problem is None:
        raise error
    fail(problem if isinstance(error, ImageError) else f"{printable(path)}: {problem}")


def render_and_write(outputs: list[tuple[Path, Renderer]], image: np.ndarray, prediction: Prediction, *,
                     replace: bool = True) -> list[Path]:
    """Draw one input's files from its prediction and write them all, or none (`write_all`). Each file is
    drawn just before it is written, so only one full-size picture exists at a time. With
    `replace=False` a file that appeared meanwhile (another process writing the same name) is kept and
    the input refused: `OutputRefused`."""
    try:
        write_all(((out, render(image, prediction)) for out, render in outputs), replace=replace)
    except OutputExistsError as error:
        raise OutputRefused(f"output {printable(error.path)} exists (use --overwrite)", exists=True) from None
    return [out for out, _ in outputs]


class OutputRefused(Exception):
    """An output of this input may not be written: it is an input, or it exists (`exists`)."""

    def __init__(self, message: str, *, exists: bool) -> None:
        super().__init__(message)
        self.exists = exists


def check_may_write(outputs: list[tuple[Path, Renderer]], inputs: set[Path], written: set[Path], overwrite: bool) -> None:
    """Raise OutputRefused unless every output may be written. An input is never replaced; any other
    existing file only with `overwrite`, or when this run wrote it."""
    for out, _ in outputs:
        try:
            resolved = out.resolve()
        except (OSError, RuntimeError):  # RuntimeError on Python < 3.13: "Symlink loop from ..."
            raise OutputRefused(f"output {printable(out)}: symlink loop", exists=False) from None
        if resolved in inputs:
            raise OutputRefused(f"output {printable(out)} would overwrite an input; choose another output folder (-o)", exists=False)
    for out, _ in outputs:
        if not overwrite and os.path.lexists(out) and out not in written:
            raise OutputRefused(f"output {printable(out)} exists (use --overwrite)", exists=True)


def _per_input_problem(error: Exception, predictor: Predictor) -> str | None:
    """The one-line problem of an error that concerns one input only, or None (a bug: re-raise it)."""
    if is_out_of_memory(error):
        # The model's memory depends on --size (or the tile and batch); the image and its full-size
        # results (about 16 bytes per pixel) on the image alone, whatever the mode.
        model = "a smaller --size" if predictor.tile is None else "a smaller --tile or --batch-size 1"
        return f"out of memory; try {model}, or skip images this large with a lower --max-pixels"
    if isinstance(error, ImageError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {printable(error.filename)}" if error.filename else "")
    if isinstance(error, PER_INPUT_ERRORS):
        return " ".join(str(error).split()) or type(error).__name__
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: MemoryError, torch.OutOfMemoryError, or torch's CPU allocator's RuntimeError
    ("DefaultCPUAllocator: can't allocate memory", e.g. under `ulimit -v`), or OpenCV's."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(error, ImageError) or not isinstance(error, (RuntimeError, *_cv2_error())):
        return False
    message = str(error).lower()
    return any(words in message for words in _OUT_OF_MEMORY_MESSAGES)


def _cv2_error() -> tuple[type[BaseException], ...]:
    cv2 = sys.modules.get("cv2")  # only loaded when Telea inpainting ran
    return (cv2.error,) if cv2 is not None else ()


def output_folder_problem(out_dir: Path) -> str | None:
    """Why nothing can be written below `out_dir` (a symlink loop, a broken symlink, a file), or None: a
    folder, or a name that writing will create (other problems are reported by the writes)."""
    try:
        info = os.stat(out_dir)
    except FileNotFoundError:
        return "the output folder is a broken symlink" if os.path.islink(out_dir) else None
    except OSError as error:
        return "symlink loop" if error.errno == errno.ELOOP else None
    return None if stat.S_ISDIR(info.st_mode) else "exists and is not a folder; choose another output folder (-o)"


def find_images(inputs: Iterable[str | os.PathLike], fail: ErrorHandler, *, skip: Path | None = None,
                note: ErrorHandler | None = None) -> list[tuple[Path, Path | None]]:
    """`expand_inputs`, with a line to `fail` for each folder that cannot be listed (permission denied)
    and for each folder argument with no images in it. The folder `skip` (the output folder) is not
    searched; `note` says so when it lies inside a folder argument (else a second run would read the
    first one's results as inputs)."""
    inputs = [Path(item) for item in inputs]
    if skip is not None and note is not None and skip.is_dir():
        inside = [folder for folder in dict.fromkeys(inputs) if os.path.isdir(folder) and _strictly_below(skip, folder)]
        if inside:
            note(f"{printable(skip)}: the output folder is inside the input folder {printable(inside[0])}; "
                 "its files are not read as inputs")
    unreadable: set[Path] = set()

    def cannot_list(folder: Path, error: OSError) -> None:
        unreadable.add(folder)
        problem = "permission denied" if isinstance(error, PermissionError) else (error.strerror or str(error))
        fail(f"{printable(folder)}: {problem}")

    items = expand_inputs(inputs, on_error=cannot_list, skip=skip)
    for folder in dict.fromkeys(item for item in inputs if os.path.isdir(item)):
        hidden_by_error = any(bad == folder or folder in bad.parents for bad in unreadable)
        if not hidden_by_error and not any(root == folder for _, root in items):
            fail(f"{printable(folder)}: no images found in this folder")
    return items


def _strictly_below(path: Path, folder: Path) -> bool:
    try:
        return folder.resolve() in path.resolve().parents
    except (OSError, RuntimeError):
        return False


def task_outputs(task: Task, out_dir: Path, name: Path, shape: tuple[int, int] | None = None,
                 *, regions: bool = False) -> list[tuple[Path, Renderer]]:
    """The files one input produces for `task` (its spec's `outputs`, and with `regions` the word
    polygons' JSON), and how each is drawn from (image, prediction). Overlays are JPEG, or PNG for an
    image (`shape` = (H, W)) with a side JPEG cannot store."""
    base = out_dir / name
    outputs = [(output.path(base, shape), _renderer(output)) for output in task.spec.outputs]
    if regions:
        outputs.append((base.with_name(base.name + REGIONS_SUFFIX), regions_json))
    return outputs


def regions_json(image: np.ndarray, prediction: Prediction) -> str:
    """`<name>_regions.json`: the word detector's polygons (x, y in image pixels) and scores."""
    if prediction.regions is None:
        raise RuntimeError("the prediction carries no word regions")  # a bug: predict_files checked the settings
    height, width = image.shape[:2]
    content = {"width": width, "height": height, "regions": prediction.regions.to_json()}
    if prediction.words is not None:  # detect-tampering --tampering words: each word's box, probability, flag
        content["words"] = prediction.words
    return json.dumps(content) + "\n"


def mask_for(masks: Path, name: Path, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W): the given text mask of the input whose outputs are named `name` (white = text).

    `masks` is one mask file (for every input) or a folder holding `<name>.<image suffix>` or
    `<name>_mask.<suffix>` (segment-text's output name). A missing or mis-sized mask is a one-line error."""
    path = masks
    if masks.is_dir():
        candidates = [masks / f"{name}{tail}{suffix}" for tail in MASK_SUFFIXES
                      for suffix in sorted(IMAGE_SUFFIXES, key=lambda suffix: suffix != ".png")]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"no mask {printable(masks / name)}.png (or _mask.png) for it")
    pixels = read_image(path)
    if pixels.shape[:2] != shape:
        raise ImageError(f"{printable(path)}: mask is {pixels.shape[1]}x{pixels.shape[0]}, image {shape[1]}x{shape[0]}")
    return pixels.max(axis=2) > 127


def _renderer(output: OutputFile) -> Renderer:
    return lambda image, prediction: output.draw(image, prediction.result)


def write_all(files: Iterable[tuple[Path, np.ndarray]], *, replace: bool = True) -> None:
    """Write every file of one input, or none: on a failure the ones already written are removed."""
    written: list[Path] = []
    try:
        for path, content in files:
            if isinstance(content, str):
                write_text(path, content, replace=replace)
            else:
                write_image(path, content, replace=replace)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def output_names(items: list[tuple[Path, Path | None]]) -> list[Path]:
    """A distinct output name (relative path, no suffix) for each input.

    Images found in a folder argument keep their path relative to that folder; files named directly use
    their stem. Inputs whose names still clash (same stem in different folders, or x.jpg beside x.png)
    keep their path relative to the clashing files' common folder, then their suffix (x_jpg), then a
    counter (x_jpg_2, the first number no other name has). Names are compared ignoring case, as
    macOS and Windows file systems do.
    """
    names = [path.relative_to(root).with_suffix("") if root else Path(path.stem) for path, root in items]
    natural = list(names)

    def key(name: Path) -> str:
        return name.as_posix().casefold()

    def clashes() -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(key(name), []).append(index)
        return [group for group in groups.values() if len(group) > 1]

    for group in clashes():  # 1: the path below the clashing files' common folder
        resolved = [items[i][0].resolve() for i in group]
        common = Path(os.path.commonpath([p.parent for p in resolved]))
        for i, path in zip(group, resolved):
            names[i] = path.relative_to(common).with_suffix("")
    for group in clashes():  # 2: keep the suffix in the name
        for i in group:
            suffix = items[i][0].suffix.lstrip(".")
            names[i] = names[i].with_name(f"{names[i].name}_{suffix}" if suffix else names[i].name)
    taken = {key(name) for name in names}
    for group in clashes():  # 3: number what is left, skipping numbers another name already has
        group.sort(key=lambda i: names[i] != natural[i])  # a file named x_png.jpg keeps x_png
        for i in group[1:]:
            number = 2
            while key(candidate := names[i].with_name(f"{names[i].name}_{number}")) in taken:
                number += 1
            names[i] = candidate
            taken.add(key(candidate))
    return names


def check_unique(paths: list[Path]) -> None:
    """Refuse to start when two outputs would be the same file (one input's result would be lost)."""
    seen: set[str] = set()
    for path in paths:
        key = path.as_posix().casefold()
        if key in seen:
            raise RuntimeError(f"internal error: two inputs would both write {path}; please report this")
        seen.add(key)
