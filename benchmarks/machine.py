"""The machine a benchmark ran on, printed above its table: the same code is several times faster or
slower with other instruction sets (bf16 is emulated without AVX512-BF16 / AMX; int8 uses VNNI), so a
number is only claimed with the CPU that produced it."""

from __future__ import annotations

import os
from pathlib import Path

# The instruction sets that change the numbers of this project's workloads (torch, ONNX Runtime, OpenCV).
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def cpu_flags() -> list[str]:
    """Which of FLAGS this CPU has (empty where /proc/cpuinfo cannot be read)."""
    present = set(_cpuinfo().split())
    return [flag for flag in FLAGS if flag in present]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def describe() -> str:
    """One line: CPU model, cores, flags, load average now."""
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores, flags: {' '.join(cpu_flags()) or 'none of ' + '/'.join(FLAGS)}; "
            f"load average {load_average()}")
