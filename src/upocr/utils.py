"""Small helpers shared across the package (one place for each)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import string
import unicodedata
from pathlib import Path
from typing import Iterator

# Temporary files of `atomic_output`: ".<stem>.<8 random characters>.tmp<suffix>" beside the final file.
# The random part uses tempfile.mkstemp's alphabet, so files left by earlier versions match too.
_TEMP_ALPHABET = string.ascii_lowercase + string.digits + "_"
TEMP_FILE_PATTERN = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[A-Za-z0-9]+)?$")


class OutputExistsError(FileExistsError):
    """`atomic_output(path, replace=False)` found `path` taken when it published its file."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.EEXIST, "file exists", str(path))
        self.path = path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` atomically.

    Readers never see a half-written file, and an exception (or a kill) leaves any previous file
    at `path` untouched. The temporary keeps the final suffix so writers that pick the format from
    the extension (PIL, cv2, safetensors) still work. The file gets the mode of the file it replaces,
    or a new file's usual mode (0o666 minus the umask), not mkstemp's (or safetensors') private 0o600.

    With `replace=False` an existing `path` is never replaced, even one another process creates while
    this one writes: the file is published with a hard link, which fails if the name is taken, and
    `OutputExistsError` is raised (checking first and renaming later would let two writers both win).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temporary(path)
    # The kernel gave the new temporary 0o666 minus the umask; a writer may replace it with its own
    # file (safetensors writes 0o600), so remember the mode now.
    new_file_mode = stat.S_IMODE(os.stat(tmp_path).st_mode)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:  # make the bytes durable before the rename
            os.fsync(handle.fileno())
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode) if replace else new_file_mode  # replacing: keep the old mode
        except FileNotFoundError:
            mode = new_file_mode
        os.chmod(tmp_path, mode)
        if replace:
            os.replace(tmp_path, path)
        else:
            _publish_new(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _publish_new(tmp_path: Path, path: Path) -> None:
    """Give the finished `tmp_path` the name `path` only if no file has it: OutputExistsError otherwise."""
    try:
        os.link(tmp_path, path)  # atomic, and fails with EEXIST whoever created `path` meanwhile
        return
    except FileExistsError:
        raise OutputExistsError(path) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
    # A file system without hard links (FAT, some network mounts): claim the name with O_EXCL, then
    # replace the empty placeholder (a reader may see it empty for a moment, but no file is lost).
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise OutputExistsError(path) from None
    os.replace(tmp_path, path)


def _create_temporary(path: Path) -> Path:
    """Create an empty, new temporary file for `path` (never an existing one: O_EXCL).

    Created with mode 0o666 so that the kernel applies the process umask, as for any new file
    (reading the umask with os.umask() would briefly change it for every thread).
    """
    for _ in range(100):
        token = "".join(secrets.choice(_TEMP_ALPHABET) for _ in range(8))
        candidate = path.with_name(f".{path.stem}.{token}.tmp{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float) -> list[Path]:
    """Delete `atomic_output` temporaries in `folder` (not below it) last modified before `older_than`
    (a time.time() value), e.g. left by a killed run. Only names of our own pattern, only regular files;
    a temporary being written right now is newer than the current run's start and stays."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # missing or unreadable: writing there will report it
        return removed
    for entry in entries:
        if not TEMP_FILE_PATTERN.match(entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def special_file_kind(mode: int) -> str | None:
    """What a non-regular, non-folder file is ("a FIFO", "a device", "a socket"), from its st_mode; None for
    a regular file or a folder. Opening a FIFO blocks until a writer comes, and /dev/zero never ends, so
    readers refuse these before opening them."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket"


def printable(text: object) -> str:
    """`text` with control characters (newlines, tabs, escape sequences, undecodable bytes) escaped as
    Python does in repr, so that a file name can never split or garble a one-line message."""
    return "".join(
        char.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") else char
        for char in str(text)
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere torch emulates bf16, many
    times slower than fp32 (a training step of the small model, 6 images at 256x256, on the 2-core AVX2
    development machine: 2.6 s fp32, 30 s bf16), so the
    "auto" precisions choose fp32 there. False where the flags cannot be read (not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
