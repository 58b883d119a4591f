"""upocr.files: the file pipeline behind remove-text / segment-text / detect-tampering (names,
overwriting, per-input errors, interrupts, temporaries, folders that cannot be listed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr.files import FilesInterrupted, is_out_of_memory, output_names, predict_files, task_outputs
from upocr.predict import Predictor
from upocr.tasks import Task

COLOURS = {"x.jpg": "red", "x.png": "lime", "x_png.jpg": "blue", "x_png_2.jpg": "yellow"}


@pytest.fixture(scope="module")
def predictor(tiny_weights) -> Predictor:
    return Predictor(weights=tiny_weights, size=64, tile=None, removal="raw")


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three small images."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.new("RGB", (40, 30), (index * 80, 0, 0)).save(folder / name)
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_names_that_clash_after_disambiguation_are_still_distinct(tmp_path):
    """D2: x_png.jpg and x_png_2.jpg both used to become x_png_2 (one result silently lost)."""
    items = [(tmp_path / name, tmp_path) for name in COLOURS]
    names = output_names(items)
    assert len({str(name) for name in names}) == 4
    assert names == [Path("x_jpg"), Path("x_png_3"), Path("x_png"), Path("x_png_2")]  # files keep their own stem
    # names differing only in case are one file on macOS and Windows
    upper = [(tmp_path / "A.jpg", None), (tmp_path / "a.jpg", None), (tmp_path / "a_jpg.png", None)]
    assert len({str(name).casefold() for name in output_names(upper)}) == 3


def test_four_clashing_inputs_give_four_outputs(tmp_path, predictor):
    for name, colour in COLOURS.items():
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
    report = predict_files(predictor, [tmp_path], tmp_path / "out", "removal")
    assert report.done == 4 and len(set(report.written)) == 4
    assert _files(tmp_path / "out") == ["x_jpg.png", "x_png.png", "x_png_2.png", "x_png_3.png"]


def test_existing_files_are_kept_unless_overwrite(tmp_path, folder, predictor):
    """D1: a user's own file at an output path used to be replaced silently."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_mask.png").write_bytes(b"the user's own file")
    errors: list[str] = []
    report = predict_files(predictor, [folder], out, "segmentation", on_error=errors.append)
    assert errors == [f"{folder / 'b.png'}: output {out / 'b_mask.png'} exists (use --overwrite)"]
    assert (out / "b_mask.png").read_bytes() == b"the user's own file"
    assert not (out / "b_mask_overlay.jpg").exists()  # none of that input's files
    assert report.done == 2 and report.existing == 1
    # running again into the same folder: every input refused, nothing touched
    again = predict_files(predictor, [folder], out, "segmentation")
    assert again.done == 0 and again.existing == 3
    replaced = predict_files(predictor, [folder], out, "segmentation", overwrite=True)
    assert replaced.done == 3 and not replaced.errors
    assert (out / "b_mask.png").read_bytes() != b"the user's own file"


def test_an_input_is_never_overwritten_even_with_overwrite(tmp_path, predictor):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "keep.png")
    before = (tmp_path / "keep.png").read_bytes()
    report = predict_files(predictor, [tmp_path / "keep.png"], tmp_path, "removal", overwrite=True)
    assert report.done == 0 and "would overwrite an input" in report.errors[0]
    assert (tmp_path / "keep.png").read_bytes() == before


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 972000000 bytes. Error code 12 (Cannot allocate memory)"),
        MemoryError(),
    ],
    ids=["torch-cpu-allocator", "MemoryError"],
)
def test_out_of_memory_fails_one_image_and_the_run_goes_on(tmp_path, folder, predictor, monkeypatch, error):
    """D4: torch's CPU allocator raises a plain RuntimeError, which used to abort the whole batch."""
    real_predict = Predictor.predict_many

    def predict_many(self, images, tasks, **options):
        if any(image[0, 0, 0] == 80 for image in images):  # b.png
            raise error
        return real_predict(self, images, tasks)

    monkeypatch.setattr(Predictor, "predict_many", predict_many)
    report = predict_files(predictor, [folder], tmp_path / "out", "tampering")
    assert report.done == 2
    assert report.errors == [f"{folder / 'b.png'}: out of memory; try a smaller --size, "
                             "or skip images this large with a lower --max-pixels"]
    assert _files(tmp_path / "out") == ["a_classes.png", "a_classes_overlay.jpg", "c_classes.png", "c_classes_overlay.jpg"]


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float but found Half"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocator errors


def test_interrupt_reports_progress_and_leaves_only_complete_outputs(tmp_path, folder, predictor, monkeypatch):
    """D12: Ctrl-C between or inside images: FilesInterrupted with the count; no partial or temp files."""
    real_write = Image.Image.save
    calls = {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the second file of the second image: its first file must go too
            raise KeyboardInterrupt
        return real_write(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(FilesInterrupted) as caught:
        predict_files(predictor, [folder], tmp_path / "out", "segmentation")
    assert (caught.value.report.done, caught.value.report.total) == (1, 3)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert [p.name for p in (tmp_path / "out").iterdir()] and _files(tmp_path / "out") == ["a_mask.png", "a_mask_overlay.jpg"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_stale_temporaries_in_output_folders_are_removed(tmp_path, folder, predictor):
    """D9: a killed run's hidden temporaries used to stay forever."""
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a_mask.x1y2z3w4.tmp.png"
    stale.write_bytes(b"half a picture")
    os.utime(stale, (time.time() - 600,) * 2)
    mine = out / ".notes.tmp.png"  # not our pattern
    mine.write_bytes(b"x")
    os.utime(mine, (time.time() - 600,) * 2)
    predict_files(predictor, [folder], out, "segmentation")
    assert not stale.exists() and mine.exists()
    assert _files(out) == [".notes.tmp.png"] + [f"{n}_{k}" for n in "abc" for k in ("mask.png", "mask_overlay.jpg")]


def test_folders_that_cannot_be_listed_are_errors(tmp_path, folder, predictor, refuse_listing):
    """D16: an unreadable folder was "no images found", an unreadable subfolder skipped silently.
    Root ignores permissions, so os.scandir (which os.walk uses) refuses as it would for a user."""
    (folder / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "sub" / "d.png")
    (tmp_path / "noread").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "noread" / "e.png")
    refuse_listing(folder / "sub", tmp_path / "noread")
    report = predict_files(predictor, [folder, tmp_path / "noread"], tmp_path / "out", "removal")
    assert report.errors == [f"{folder / 'sub'}: permission denied", f"{tmp_path / 'noread'}: permission denied"]
    assert report.done == 3


def test_overlays_of_images_too_wide_for_jpeg_are_png(tmp_path):
    """D13: libjpeg cannot store a side over 65500 px."""
    names = [path.name for path, _ in task_outputs(Task.TEXT_SEGMENTATION, tmp_path, Path("w"), (1, 65_501))]
    assert names == ["w_mask.png", "w_mask_overlay.png"]
    names = [path.name for path, _ in task_outputs(Task.TAMPERED_TEXT_DETECTION, tmp_path, Path("w"), (65_500, 2))]
    assert names == ["w_classes.png", "w_classes_overlay.jpg"]


def test_outputs_are_written_with_the_usual_permissions(tmp_path, folder, predictor):
    previous = os.umask(0o022)
    try:
        report = predict_files(predictor, [folder / "a.png"], tmp_path / "out", "removal")
    finally:
        os.umask(previous)
    assert [oct(path.stat().st_mode & 0o777) for path in report.written] == ["0o644"]


def test_report_pixels_match_the_predictor(tmp_path, folder, predictor):
    report = predict_files(predictor, [folder / "c.png"], tmp_path / "out", "removal")
    expected = predictor.predict(np.asarray(Image.open(folder / "c.png").convert("RGB")), "removal").image
    np.testing.assert_array_equal(np.asarray(Image.open(report.written[0])), expected)


def test_a_folder_runs_in_batches_of_images_with_the_same_files(tmp_path):
    """batch_size images share forward passes (a corrupt one in the middle still fails alone); with a
    model that returns its input, the files equal those of one image at a time byte for byte."""
    batches: list[int] = []

    def identity(images, tasks):
        batches.append(len(images))
        return [images]

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    (folder / "2.png").write_bytes(b"not a picture")
    one_by_one = predict_files(Predictor(identity, size=64, removal="raw"), [folder], tmp_path / "one", "removal")
    assert batches == [1] * 4
    batches.clear()
    batched = predict_files(Predictor(identity, size=64, removal="raw", batch_size=3), [folder], tmp_path / "three", "removal")
    assert batches == [3, 1]  # 0, 1, 3 (2 is corrupt), then 4
    assert batched.done == one_by_one.done == 4 and len(batched.errors) == 1 and "2.png" in batched.errors[0]
    assert _files(tmp_path / "three") == _files(tmp_path / "one") == ["0.png", "1.png", "3.png", "4.png"]
    for name in _files(tmp_path / "one"):
        assert (tmp_path / "three" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_two_runs_writing_one_output_name_at_once_keep_one_and_refuse_the_other(tmp_path, predictor, monkeypatch):
    """N2: two runs checked that x.png was free, then both renamed onto it: one result lost, both said
    "1 of 1 image(s) written". Now the second to publish is refused (hard link: EEXIST)."""
    import threading

    import upocr.files

    inputs = []
    for colour in ("red", "blue"):
        (tmp_path / colour).mkdir()
        Image.new("RGB", (32, 32), colour).save(tmp_path / colour / "x.png")
        inputs.append(tmp_path / colour / "x.png")
    both_checked = threading.Barrier(2, timeout=30)
    real_write_image = upocr.files.write_image

    def write_image_after_both_checked(path, array, **options):
        both_checked.wait()  # both runs have found the name free
        return real_write_image(path, array, **options)

    monkeypatch.setattr(upocr.files, "write_image", write_image_after_both_checked)
    reports: dict[str, object] = {}
    errors: dict[str, list[str]] = {"red": [], "blue": []}

    def run(colour: str, path: Path) -> None:
        reports[colour] = predict_files(predictor, [path], tmp_path / "out", "removal", on_error=errors[colour].append)

    threads = [threading.Thread(target=run, args=(colour, path)) for colour, path in zip(errors, inputs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(report.done for report in reports.values()) == [0, 1]
    loser = next(colour for colour, report in reports.items() if report.done == 0)
    assert errors[loser] == [f"{tmp_path / loser / 'x.png'}: output {tmp_path / 'out' / 'x.png'} exists (use --overwrite)"]
    assert reports[loser].existing == 1
    assert _files(tmp_path / "out") == ["x.png"]  # and no temporary left
    winner = "red" if loser == "blue" else "blue"
    expected = predictor.predict(np.asarray(Image.open(tmp_path / winner / "x.png")), "removal").image
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), expected)


def test_an_output_folder_inside_the_input_folder_is_not_read_back(tmp_path, folder, predictor):
    """N12: the second `segment-text nest -o nest/out` read nest/out's masks as inputs (out/out/a_mask_mask.png)
    and refused the real inputs as "would overwrite an input"."""
    out = folder / "out"
    first = predict_files(predictor, [folder], out, "segmentation")
    assert first.done == 3 and not first.notes
    notes: list[str] = []
    second = predict_files(predictor, [folder], out, "segmentation", overwrite=True, on_note=notes.append)
    assert second.total == 3 and second.done == 3 and not second.errors
    assert notes == second.notes == [f"{out}: the output folder is inside the input folder {folder}; its files are not read as inputs"]
    assert _files(out) == sorted(f"{name}_mask{suffix}" for name in "abc" for suffix in (".png", "_overlay.jpg"))


@pytest.mark.parametrize("make, problem", [
    (lambda out: out.symlink_to(out.name), "symlink loop"),
    (lambda out: out.symlink_to(out.parent / "nowhere"), "the output folder is a broken symlink"),
    (lambda out: out.write_bytes(b"a file"), "exists and is not a folder; choose another output folder (-o)"),
])
def test_an_output_folder_that_cannot_be_one_is_one_line(tmp_path, folder, predictor, make, problem):
    """N16/N17: -o through a symlink loop gave a 37-line traceback (Path.resolve's RuntimeError); a dangling
    symlink "File exists: sl/dangling" once per input."""
    out = tmp_path / "out"
    make(out)
    errors: list[str] = []
    report = predict_files(predictor, [folder], out, "segmentation", on_error=errors.append)
    assert errors == [f"{out}: {problem}"] and report.done == 0 and report.total == 3


def test_a_symlink_loop_below_the_output_folder_fails_that_input_only(tmp_path, predictor):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("sub/a.png", "b.png"):
        Image.new("RGB", (32, 32), "red").save(tmp_path / "in" / name)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to("sub")  # out/sub -> itself
    errors: list[str] = []
    report = predict_files(predictor, [tmp_path / "in"], tmp_path / "out", "segmentation", on_error=errors.append)
    assert report.done == 1 and len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'in' / 'sub' / 'a.png'}: output {tmp_path / 'out' / 'sub'}")
    assert errors[0].endswith("symlink loop")
