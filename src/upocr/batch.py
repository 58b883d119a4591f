"""Batch inference on Ray Data: the CLI's folder pipeline (`upocr.files`) run by a pool of actors, on one
machine or a Ray cluster. What `upocr batch remove-text | segment-text | detect-tampering` runs.

`run_batch(inputs, out_dir, task)` keeps the rules of `upocr.files.predict_files`:

* inputs: local files and folders (found as the CLI finds them, `find_images`), and fsspec URLs
  (`s3://bucket/photos/`, `gs://...`, `file:///data/photos`, `https://host/x.jpg`): a URL folder is listed
  recursively with the CLI's image suffixes, hidden files and folders skipped;
* names and files: the CLI's (`output_names`, `task_outputs`), each input's files written all or none,
  every file atomically (`render_and_write`), so the files equal the CLI's byte for byte;
* errors: a bad input is one line "<input>: <problem>" and the others go on; a bug stops the run;
* resume: an input whose files all exist is skipped without being read (`BatchReport.finished`), unless
  `overwrite`; an input with only some of its files (a run killed between them) is done again.

The work: the driver lists the inputs and plans every output name (names depend on all inputs), then
`Dataset.map_batches` sends rows (input, output name) to a fixed pool of `_PredictActor`s, one `Predictor`
each, which read, predict and write, and send back one line per row (empty: done). The output folder must
be one that every actor can write: a local folder on one machine, a shared file system (NFS, a volume
mounted on every pod) on a cluster. Ray Data restarts an actor that dies (out-of-memory kill, node lost)
and retries its rows, without limit (its default; `--max-pixels` bounds what one image may take); files are
atomic, so a killed actor leaves complete files or temporaries, which the driver removes at the end.

Ray is imported only here, inside functions (`import_ray`), so `import upocr` and the other commands never
load it; without it the one line says `RAY_INSTALL_HINT`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from upocr.files import (
    ErrorHandler,
    FilesInterrupted,
    FilesReport,
    OutputRefused,
    check_may_write,
    check_unique,
    fail_input,
    find_images,
    output_names,
    render_and_write,
    task_outputs,
)
from upocr.io import IMAGE_SUFFIXES, JPEG_MAX_SIDE, ImageError, read_image
from upocr.options import PredictorOptions
from upocr.predict import Predictor
from upocr.tasks import Task
from upocr.utils import atomic_output, printable, remove_stale_temporaries

RAY_INSTALL_HINT = "pip install -e '.[ray]'"
# Rows per actor call: enough to fill `batch_size` forward passes, few enough that the pool stays balanced
# and a retried call (a killed actor) redoes little (rows whose files exist are not redone anyway).
ROWS_PER_CALL = 8
MAX_BLOCKS = 4096
# Test hook (tests/test_batch.py): a file name; the first actor call that creates it dies with os._exit
# halfway through writing an input's files, as a kill would, to check that Ray's retry finishes the run.
CRASH_ONCE_ENV = "UPOCR_BATCH_CRASH_ONCE"

DEVICES = ("auto", "cpu", "cuda")  # --device of `upocr batch`: auto is cuda when the cluster has GPUs


class RayMissing(ImportError):
    """Ray Data is not installed (the optional extra `[ray]`)."""


class ActorSetupError(RuntimeError):
    """An actor could not build its `Predictor` (weights missing or unreadable, options the weights refuse):
    the run stops; the message is the predictor's error, one line, as the task commands print it."""


def import_ray() -> Any:
    """The `ray` module with `ray.data`, or RayMissing whose message says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra's part this module needs
    except ImportError:
        raise RayMissing(f"upocr batch needs Ray Data: {RAY_INSTALL_HINT}") from None
    return ray


@dataclass
class BatchReport(FilesReport):
    """What `run_batch` did: `FilesReport`'s counts (`done`: written by this run), and `finished`: inputs
    skipped because their files were all there; `device` and `actors`: the pool that ran."""

    finished: int = 0
    device: str = ""
    actors: int = 0


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, on which device, with what each reserves from the cluster."""

    device: str
    actors: int
    cpus: float  # per actor; also its torch threads (at least 1)
    gpus: float  # per actor; 0 on CPU


def plan_actors(cluster: dict[str, float], device: str = "auto", actors: int | None = None,
                cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None) -> ActorPlan:
    """The actor pool for a cluster's resources (`ray.cluster_resources()`). auto: cuda when the cluster has a
    GPU. Default count: one actor per GPU (`gpus_per_actor` each, default 1), or on CPU one per
    `cpus_per_actor` CPUs (the model's threads scale worse than separate actors; see docs/batch.md)."""
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if cpus_per_actor <= 0:
        raise ValueError(f"CPUs per actor must be more than 0, got {cpus_per_actor}")
    if actors is not None and actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    if device == "cpu":
        return ActorPlan("cpu", actors or max(1, int(cpus // cpus_per_actor)), cpus_per_actor, 0.0)
    per_actor = 1.0 if gpus_per_actor is None else float(gpus_per_actor)
    if not 0 < per_actor:
        raise ValueError(f"GPUs per actor must be more than 0, got {per_actor}")
    if actors is None:
        if gpus == 0:  # with a count given, an autoscaling cluster may still add GPU nodes: let Ray wait
            raise ValueError("device cuda: the Ray cluster has no GPU (give --actors N to wait for GPU nodes)")
        actors = max(1, int(gpus // per_actor))
    return ActorPlan("cuda", actors, cpus_per_actor, per_actor)


def is_url(location: str | os.PathLike) -> bool:
    """Whether an input is an fsspec URL (protocol://...) rather than a local path."""
    return "://" in os.fspath(location)


def find_sources(inputs: Iterable[str | os.PathLike], fail: ErrorHandler) -> list[tuple[str, Path, Path | None]]:
    """(location to read, path for naming, folder argument or None) for every image of `inputs`: local ones as
    the CLI finds them (`find_images`), then URLs (`_list_url`). The naming paths go to `output_names`."""
    inputs = list(inputs)
    local = [(os.fspath(path), path, root) for path, root in find_images([i for i in inputs if not is_url(i)], fail)]
    remote = [found for url in dict.fromkeys(os.fspath(i) for i in inputs if is_url(i)) for found in _list_url(url, fail)]
    return local + remote


def _list_url(url: str, fail: ErrorHandler) -> list[tuple[str, Path, Path | None]]:
    """A URL's images: the URL itself when it is not a folder (reading it reports what is wrong), else the
    image files below it, sorted, hidden names skipped, each named by its path below the folder."""
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
        if not fs.isdir(root):
            return [(url, Path(root), None)]
        found = []
        for path in sorted(fs.find(root)):
            below = PurePosixPath(path).relative_to(PurePosixPath(root))
            if PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in below.parts):
                found.append((fs.unstrip_protocol(path), Path(path), Path(root)))
    except (ImportError, OSError, ValueError) as error:  # unknown protocol, missing driver (s3fs), no access
        fail(f"{printable(url)}: {' '.join(str(error).split()) or type(error).__name__}")
        return []
    if not found:
        fail(f"{printable(url)}: no images found in this folder")
    return found


def read_source(location: str, max_pixels: int) -> np.ndarray:
    """`read_image` for a local path or a URL (copied to a local temporary file first, so that the image is
    decoded exactly as the CLI decodes files); errors name the URL."""
    if not is_url(location):
        return read_image(location, max_pixels=max_pixels)
    import fsspec

    suffix = PurePosixPath(location.split("?")[0]).suffix
    with tempfile.TemporaryDirectory(prefix="upocr-batch-") as folder:
        local = Path(folder) / f"input{suffix}"
        try:
            with fsspec.open(location, "rb") as remote, open(local, "wb") as copy:
                shutil.copyfileobj(remote, copy, 1 << 20)
        except FileNotFoundError:
            raise ImageError(location, "no such file") from None
        except OSError as error:
            raise ImageError(location, f"cannot read ({error})") from None
        try:
            return read_image(local, max_pixels=max_pixels)
        except ImageError as error:
            raise ImageError(location, error.problem) from None


def is_finished(task: Task, out_dir: Path, name: Path) -> bool:
    """Whether all of an input's files exist, for either size it may have (an overlay becomes a PNG for a
    side JPEG cannot store): the input need not be read again."""
    return any(all(path.exists() for path, _ in task_outputs(task, out_dir, name, shape))
               for shape in (None, (JPEG_MAX_SIDE + 1, 1)))


@dataclass
class _Input:
    row: int
    location: str
    image: np.ndarray
    outputs: list


class _PredictActor:
    """One Ray Data actor: one `Predictor`, called with batches of rows {index, location, name}; returns
    {index, error ('' when the input's files were written), written (its files, one a line), setup_error}.

    A Predictor that cannot be built is not raised from `__init__` (Ray would print the traceback of each
    try, then fail the run with it): every call answers `setup_error`, and the driver stops with that line."""

    def __init__(self, task: str, out_dir: str, options: PredictorOptions, weights: str | None, device: str,
                 threads: int, overwrite: bool, crash_once: str | None = None) -> None:
        torch.set_num_threads(threads)  # the CPUs the actor reserved, not every core of the node
        self.task = Task.parse(task)
        self.out_dir = Path(out_dir)
        self.setup_error = ""
        try:
            self.predictor = Predictor(options=options, weights=weights, device=device)
        except Exception as error:  # noqa: BLE001 - weights or options: one line, as `upocr segment-text` says it
            self.setup_error = printable(" ".join(str(error).split()) or type(error).__name__)
        self.overwrite = overwrite
        self.crash_once = crash_once

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(rows["index"])
        errors, written = [""] * count, [""] * count
        if self.setup_error:
            return self._answer(rows, errors, written)
        group: list[_Input] = []

        def failed(row: int, location: str, error: Exception) -> None:
            lines: list[str] = []
            fail_input(error, location, self.predictor, lines.append)  # re-raises a bug
            errors[row] = lines[0]

        def run_group() -> None:
            try:
                predictions = self.predictor.predict_many([one.image for one in group], [self.task])
            except Exception as error:  # noqa: BLE001 - per input, or re-raised by `failed`
                for one in group:
                    failed(one.row, one.location, error)
            else:
                for one, (prediction,) in zip(group, predictions):
                    try:
                        written[one.row] = "\n".join(map(str, self._write(one.outputs, one.image, prediction)))
                    except Exception as error:  # noqa: BLE001 - as above
                        failed(one.row, one.location, error)
            group.clear()

        for row, (location, name) in enumerate(zip(rows["location"], rows["name"])):
            location = str(location)
            try:
                image = read_source(location, self.predictor.max_pixels)
                outputs = task_outputs(self.task, self.out_dir, Path(str(name)), image.shape[:2])
            except Exception as error:  # noqa: BLE001 - as above
                failed(row, location, error)
                continue
            if not self.overwrite and all(path.exists() for path, _ in outputs):
                continue  # written by an earlier try of this call, by an actor that was killed after
            # The CLI's groups (`predict_files`): up to batch_size resized images; a tiled image ends its group.
            group.append(_Input(row, location, image, outputs))
            if len(group) >= self.predictor.batch_size or self.predictor.uses_tiles(*image.shape[:2]):
                run_group()
        if group:
            run_group()
        return self._answer(rows, errors, written)

    def _answer(self, rows: dict[str, np.ndarray], errors: list[str], written: list[str]) -> dict[str, np.ndarray]:
        return {"index": rows["index"], "error": np.array(errors, dtype=object), "written": np.array(written, dtype=object),
                "setup_error": np.array([self.setup_error] * len(errors), dtype=object)}

    def _write(self, outputs: list, image: np.ndarray, prediction: Any) -> list[Path]:
        if self.crash_once and _claim(self.crash_once):
            _die_while_writing(outputs, image, prediction)
        return render_and_write(outputs, image, prediction)


def _claim(marker: str) -> bool:
    """Create `marker`; False when it exists (the crash of CRASH_ONCE_ENV happens once per run)."""
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


def _die_while_writing(outputs: list, image: np.ndarray, prediction: Any) -> None:
    """CRASH_ONCE_ENV: write all but the last file of this input, then half of the last one's temporary, and
    exit without cleaning up, as a process killed for memory would."""
    render_and_write(outputs[:-1], image, prediction)
    with atomic_output(outputs[-1][0]) as temporary:
        temporary.write_bytes(b"\x89PNG\r\n\x1a\n half an image")
        os._exit(1)


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    task: Task | str,
    *,
    weights: str | os.PathLike | None = None,
    options: PredictorOptions | None = None,
    device: str = "auto",
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    overwrite: bool = False,
    address: str | None = None,
    on_error: ErrorHandler | None = None,
    progress: bool = False,
) -> BatchReport:
    """Run `task` on every image of `inputs` (paths or fsspec URLs) with a Ray Data actor pool and write its
    files under `out_dir` (the rules: module docstring). `options`: the predictor's (default: the defaults with
    keep_output=False, as the task commands run them); `weights`: None for the bundled ones. Uses the Ray of this process
    when `ray.init` was called, else connects to `address` (None: $RAY_ADDRESS, else a new local Ray, shut
    down at the end). `on_error(line)` is called with each error line; `progress`: a bar on a terminal."""
    ray = import_ray()
    started = time.time()
    task = Task.parse(task)
    out_dir = Path(out_dir)
    options = options if options is not None else PredictorOptions(keep_output=False)
    report = BatchReport(task=task, out_dir=out_dir)

    def fail(line: str) -> None:
        report.errors.append(line)
        if on_error is not None:
            on_error(line)

    sources = find_sources(inputs, fail)
    report.total = len(sources)
    names = output_names([(path, root) for _, path, root in sources])
    check_unique([path for name in names for path, _ in task_outputs(task, out_dir, name)])
    local_inputs = {Path(location).resolve() for location, _, _ in sources if not is_url(location)}
    rows = []
    for index, ((location, _, _), name) in enumerate(zip(sources, names)):
        try:  # an input is never replaced, whatever size it has (files named like another input's outputs)
            for shape in (None, (JPEG_MAX_SIDE + 1, 1)):
                check_may_write(task_outputs(task, out_dir, name, shape), local_inputs, set(), overwrite=True)
        except OutputRefused as refused:
            fail(f"{printable(location)}: {refused}")
            continue
        if not overwrite and is_finished(task, out_dir, name):
            report.finished += 1
            continue
        rows.append({"index": index, "location": location, "name": name.as_posix()})
    folders = {(out_dir / name).parent for name in names}
    if not rows:
        return report

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    bar = tqdm(total=len(rows), desc=f"{task.short} (ray)", unit="image", file=sys.stderr,
               disable=True if not progress or len(rows) < 2 else None)  # None: only on a terminal
    try:
        plan = plan_actors(ray.cluster_resources(), device, actors, cpus_per_actor, gpus_per_actor)
        calls = math.ceil(len(rows) / ROWS_PER_CALL)
        report.device, report.actors = plan.device, min(plan.actors, calls)
        _quiet_ray_data(ray)
        # One block per actor call, which the pool shares out evenly; at most MAX_BLOCKS (each is an object in
        # Ray's store): a million images make blocks of ~250 rows, still thousands per actor to balance.
        blocks = min(calls, MAX_BLOCKS)
        results = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _PredictActor,
            batch_size=ROWS_PER_CALL,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=report.actors),
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
            fn_constructor_kwargs={
                "task": task.short, "out_dir": str(out_dir), "options": options,
                "weights": None if weights is None else os.fspath(weights), "device": plan.device,
                "threads": max(1, int(plan.cpus)), "overwrite": overwrite, "crash_once": os.environ.get(CRASH_ONCE_ENV),
            },
        )  # Ray Data's actors are restarted and their calls retried when they die (its default: without limit)
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            if len(batch["setup_error"]) and batch["setup_error"][0]:
                raise ActorSetupError(str(batch["setup_error"][0]))
            for error, written in zip(batch["error"], batch["written"]):
                if error:
                    fail(str(error))
                else:
                    report.done += 1
                    report.written.extend(Path(line) for line in str(written).splitlines())
                bar.update()
    except KeyboardInterrupt:
        _remove_temporaries(folders, started)  # only those of earlier runs: actors may still be writing
        raise FilesInterrupted(report) from None
    finally:
        bar.close()
        if started_ray:
            ray.shutdown()
    # Every actor is done: a temporary left now is a killed actor's (or an earlier run's).
    _remove_temporaries(folders, time.time())
    return report


def _quiet_ray_data(ray: Any) -> None:
    """Ray Data's progress bars and execution logs off: the bar of `run_batch` counts images, and stderr
    keeps one line per failed input (Ray Data's warnings stay)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")  # its one-time "progress bars disabled" warning: done
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _remove_temporaries(folders: Iterable[Path], older_than: float) -> None:
    for folder in folders:
        remove_stale_temporaries(folder, older_than=older_than)
