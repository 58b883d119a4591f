"""upocr.io: every common kind of image file reads as upright (H, W, 3) uint8 RGB; bad files fail clearly."""

from __future__ import annotations

import os
import stat
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr.io import ImageError, expand_inputs, list_images, read_image, write_image
from upocr.utils import OutputExistsError, atomic_output, remove_stale_temporaries

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_formats_read_back_exactly(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    Image.fromarray(PIXELS).save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (24, 40, 3)
    np.testing.assert_array_equal(pixels, PIXELS)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_formats_read_close(tmp_path, suffix):
    smooth = np.dstack([np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (24, 1))] * 3)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(smooth).save(path, quality=95)
    pixels = read_image(path)
    assert pixels.shape == (24, 40, 3)
    assert np.abs(pixels.astype(int) - smooth).mean() < 4


def test_grayscale_becomes_three_equal_channels(tmp_path):
    grey = PIXELS[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    pixels = read_image(tmp_path / "grey.png")
    assert pixels.shape == (24, 40, 3)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], grey)


def test_16_bit_png_uses_the_full_range(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[0, :, 0], [0, 100, 255])


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 200  # red ink
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[0, 2, 3] = 0, 255, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    pixels = read_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])  # transparent -> white
    np.testing.assert_array_equal(pixels[0, 1], [200, 0, 0])  # opaque -> its colour
    assert 220 <= pixels[0, 2, 0] <= 235 and 120 <= pixels[0, 2, 1] <= 135  # half -> halfway to white


def test_palette_images_with_and_without_transparency(tmp_path):
    palette_image = Image.fromarray(PIXELS).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_image.save(tmp_path / "palette.png")
    expected = np.asarray(palette_image.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), expected)

    index = np.asarray(palette_image)[0, 0]
    palette_image.save(tmp_path / "palette_t.png", transparency=int(index))
    pixels = read_image(tmp_path / "palette_t.png")
    transparent = np.asarray(palette_image) == index
    assert (pixels[transparent] == 255).all()
    np.testing.assert_array_equal(pixels[~transparent], expected[~transparent])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(PIXELS)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image.save(tmp_path / "rotated.png", exif=exif)
    pixels = read_image(tmp_path / "rotated.png")
    assert pixels.shape == (40, 24, 3)
    np.testing.assert_array_equal(pixels, np.rot90(PIXELS, k=-1))


def _png_claiming_size(path: Path, width: int, height: int) -> None:
    """A tiny valid-looking PNG whose header claims width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, I am not a picture"), "not an image"),
        (lambda p: _png_claiming_size(p, 50_000, 50_000), "too large"),  # over PIL's own hard limit
        (lambda p: _png_claiming_size(p, 11_000, 11_000), "too large"),  # over ours (121 MP > 100 MP)
    ],
    ids=["missing", "empty", "not-an-image", "bomb-huge", "bomb-over-our-limit"],
)
def test_bad_files_raise_one_line_image_error(tmp_path, make, problem):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message
    assert caught.value.path == path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_raise(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(cut)


def test_pixel_limit_is_an_option(tmp_path):
    Image.fromarray(PIXELS).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="960 pixels"):
        read_image(tmp_path / "small.png", max_pixels=900)
    assert read_image(tmp_path / "small.png", max_pixels=960).shape == (24, 40, 3)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_write_image_formats_and_atomicity(tmp_path):
    write_image(tmp_path / "sub" / "rgb.png", PIXELS)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "rgb.png"), PIXELS)
    mask = PIXELS[:, :, 0] > 128
    write_image(tmp_path / "mask.png", mask)
    stored = np.asarray(Image.open(tmp_path / "mask.png"))
    assert stored.ndim == 2 and set(np.unique(stored)) <= {0, 255}
    np.testing.assert_array_equal(stored == 255, mask)
    write_image(tmp_path / "photo.jpg", PIXELS)
    assert Image.open(tmp_path / "photo.jpg").format == "JPEG"
    with pytest.raises(ValueError, match="suffix"):
        write_image(tmp_path / "what.xyz", PIXELS)
    with pytest.raises(TypeError):
        write_image(tmp_path / "float.png", PIXELS.astype(np.float32))
    # nothing but the finished files: no temporaries left behind, none for the failed writes
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["mask.png", "photo.jpg", "rgb.png"]


def test_list_images_expands_folders(tmp_path):
    for name in ["b.png", "a.JPG", "sub/c.webp", "notes.txt", ".hidden.png", ".cache/d.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = list_images([tmp_path, tmp_path / "b.png", tmp_path / "missing.png"])
    assert found == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "sub/c.webp", tmp_path / "missing.png"]
    assert expand_inputs([tmp_path / "sub", tmp_path / "b.png"]) == [
        (tmp_path / "sub/c.webp", tmp_path / "sub"),
        (tmp_path / "b.png", None),
    ]


def test_folder_walk_reports_folders_it_cannot_list(tmp_path, refuse_listing):
    """D16: rglob skipped unreadable folders silently. We run as root (permissions are not enforced),
    so os.scandir, which os.walk lists folders with, refuses the two folders as it would for a user."""
    for name in ["top/a.png", "top/locked/b.png", "top/open/c.png", "shut/d.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    locked = {str(tmp_path / "top" / "locked"), str(tmp_path / "shut")}
    refuse_listing(*locked)
    errors: list[tuple[Path, OSError]] = []
    found = expand_inputs([tmp_path / "top", tmp_path / "shut"], on_error=lambda folder, error: errors.append((folder, error)))
    assert [path for path, _ in found] == [tmp_path / "top/a.png", tmp_path / "top/open/c.png"]
    assert sorted(str(folder) for folder, _ in errors) == sorted(locked)
    assert all(isinstance(error, PermissionError) for _, error in errors)


def test_fifo_and_devices_are_not_regular_files(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    for path in (tmp_path / "pipe.png", Path("/dev/zero")):
        with pytest.raises(ImageError, match="not a regular file"):  # was "empty file" (D22)
            read_image(path)


def test_newline_in_a_file_name_keeps_the_error_on_one_line(tmp_path):
    path = tmp_path / "bad\nname.png"
    path.write_text("not a picture")
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert "\n" not in str(caught.value) and "bad\\nname.png: not an image" in str(caught.value)
    assert caught.value.path == path


def test_corrupt_exif_warning_is_not_printed(tmp_path):
    """D22: PIL warns "Corrupt EXIF data" (2 lines on stderr) for a truncated EXIF block; the image reads."""
    ifd = struct.pack("<H", 5) + struct.pack("<HHI4s", 0x0112, 3, 1, b"\x06\x00\x00\x00")  # 5 tags, 1 present
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd
    Image.fromarray(PIXELS).save(tmp_path / "exif.jpg", exif=exif)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = read_image(tmp_path / "exif.jpg")
    assert pixels.shape == (40, 24, 3)  # the orientation tag that is there still applies
    assert [str(w.message) for w in caught] == []


def test_atomic_output_gives_new_files_the_usual_mode_and_keeps_a_replaced_files_mode(tmp_path):
    """D8: mkstemp's 0600 used to stick to every output."""
    previous = os.umask(0o022)
    try:
        write_image(tmp_path / "new.png", PIXELS)
        assert stat.S_IMODE((tmp_path / "new.png").stat().st_mode) == 0o644
        (tmp_path / "shared.png").write_bytes(b"old")
        os.chmod(tmp_path / "shared.png", 0o664)
        write_image(tmp_path / "shared.png", PIXELS)
        assert stat.S_IMODE((tmp_path / "shared.png").stat().st_mode) == 0o664
        os.umask(0o077)
        with atomic_output(tmp_path / "private.txt") as tmp:
            tmp.write_text("x")
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_atomic_output_sets_the_usual_mode_even_when_the_writer_replaced_the_temporary(tmp_path):
    """N11: safetensors replaces the temporary with its own 0600 file; save_pretrained's model.safetensors
    stayed 0600 beside a 0644 config.json."""
    import upocr

    previous = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "replaced.bin") as tmp:
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # what safetensors does
            os.close(fd)
        assert stat.S_IMODE((tmp_path / "replaced.bin").stat().st_mode) == 0o644
        upocr.build_model("tiny").save_pretrained(tmp_path / "model")
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "model").iterdir()}
        assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
    finally:
        os.umask(previous)


def test_atomic_output_without_replace_never_replaces_a_file(tmp_path):
    """N2: replace=False publishes with a hard link, so a file that appeared meanwhile is kept."""
    with pytest.raises(OutputExistsError) as raised:
        with atomic_output(tmp_path / "x.txt", replace=False) as tmp:
            tmp.write_text("mine")
            (tmp_path / "x.txt").write_text("theirs")  # another process, while this one writes
    assert raised.value.path == tmp_path / "x.txt"
    assert (tmp_path / "x.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # no temporary left
    write_image(tmp_path / "new.png", PIXELS, replace=False)
    np.testing.assert_array_equal(read_image(tmp_path / "new.png"), PIXELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.png", "x.txt"]


def test_remove_stale_temporaries_only_touches_old_files_of_our_pattern(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "photo.png") as tmp:
            left = tmp
            raise RuntimeError("fail")
    assert not left.exists()  # a failed write cleans up after itself
    stale = [tmp_path / ".photo_mask.ab12_z9q.tmp.png", tmp_path / ".step-00000006.wvif39jh.tmp.pt"]
    kept = [
        tmp_path / ".photo.tmp.png",  # no random part: not ours
        tmp_path / ".notes.abcdefgh.tmp.txt.bak",  # does not end like ours
        tmp_path / "photo.ab12cd34.tmp.png",  # not hidden
        tmp_path / ".Photo.ABCDEFGH.tmp.png",  # upper case random part: not mkstemp's
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 3600,) * 2)
    fresh = tmp_path / ".photo_overlay.k2j4h5g6.tmp.jpg"  # being written by a run that is still going
    fresh.write_bytes(b"x")
    (tmp_path / ".sub.abcdefgh.tmp.png").mkdir()  # a folder, whatever its name
    os.utime(tmp_path / ".sub.abcdefgh.tmp.png", (time.time() - 3600,) * 2)
    removed = remove_stale_temporaries(tmp_path, older_than=time.time() - 60)
    assert sorted(removed) == sorted(stale)
    assert all(path.exists() for path in [*kept, fresh, tmp_path / ".sub.abcdefgh.tmp.png"])
