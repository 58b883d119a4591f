"""Load test of `upocr serve` on loopback: many small clients and one huge upload at once, server memory.

    python benchmarks/bench_serve.py                          # 20 clients x 2 small PNGs + a 9000x9000 blank PNG
    python benchmarks/bench_serve.py --baseline 22efcb4       # the same against that commit's server, side by side
    python benchmarks/bench_serve.py --huge-side 5000         # the largest image the default limit (25 MP) accepts
    python benchmarks/bench_serve.py --serve-args "--workers 2"               # two worker processes
    python benchmarks/bench_serve.py --serve-args "--max-pixels 100000000"   # as before the limit: 81 MP accepted

Starts `upocr serve` (bundled weights unless --weights) on 127.0.0.1 and a free port in a subprocess, then
`--clients` threads each POST `--requests` small document-like PNGs (`--task`), and one more thread POSTs a
blank `--huge-side` square PNG (79 KB at 9000 px) with task=all while they run. A client told 503 (queue
full) waits its Retry-After and tries again (counted in "503 retries"). The server's RSS (VmRSS, summed over
its processes: with --workers N the supervisor and its workers) is sampled every 50 ms from /proc and the
processes' VmHWM summed at the end. --baseline REF exports `git archive REF src` into a temporary folder and
runs that server the same way (the API of before 2026-12, /api/predict, is detected from its health path). Everything stops by itself: after the
last answer or after --max-seconds (the server is then stopped with SIGINT, SIGKILL if it does not exit).
Linux only (/proc). The loopback interface only; nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)


@dataclass
class Outcome:
    status: int
    seconds: float
    retries: int = 0
    error: str = ""


@dataclass
class Memory:
    """Server RSS samples in bytes (VmRSS), and its high-water mark (VmHWM) when last read."""

    samples: list[int] = field(default_factory=list)
    high_water: int = 0


def proc_status_bytes(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status in bytes (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the worker processes of `upocr serve --workers N`)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


def tree_bytes(pid: int, key: str) -> int:
    return sum(proc_status_bytes(p, key) for p in process_tree(pid))


def sample_memory(pid: int, memory: Memory, stop: threading.Event) -> None:
    while not stop.wait(0.05):
        pids = process_tree(pid)
        rss = sum(proc_status_bytes(p, "VmRSS") for p in pids)
        if rss:
            memory.samples.append(rss)
            memory.high_water = max(memory.high_water, sum(proc_status_bytes(p, "VmHWM") for p in pids))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def small_document(seed: int, height: int, width: int) -> bytes:
    """A light page with a few dark 'lines of text' (bars): what the demo is for, and cheap to fill."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 235, np.uint8)
    for _ in range(3):
        top, left = rng.integers(4, height - 12), rng.integers(4, width // 3)
        pixels[top : top + 8, left : left + rng.integers(width // 4, width // 2)] = rng.integers(0, 60)
    return png(pixels)


def post(url: str, data: bytes, deadline: float) -> Outcome:
    """POST an image as the page does; on 503 wait Retry-After and retry until `deadline`."""
    start, retries = time.perf_counter(), 0
    while True:
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as response:
                response.read()
                return Outcome(response.status, time.perf_counter() - start, retries)
        except urllib.error.HTTPError as error:
            body = error.read()
            wait = float(error.headers.get("Retry-After") or 0)
            if error.code == 503 and time.monotonic() + wait < deadline:
                retries += 1
                time.sleep(wait)
                continue
            message = json.loads(body).get("error", "") if body.startswith(b"{") else ""
            return Outcome(error.code, time.perf_counter() - start, retries, message)
        except (OSError, TimeoutError) as error:  # refused, reset, timed out
            return Outcome(0, time.perf_counter() - start, retries, f"{type(error).__name__}: {error}")


def start_server(port: int, weights: str | None, extra: list[str], log, source: Path | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "upocr.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    if weights:
        command += ["--weights", weights]
    env = dict(os.environ)
    if source is not None:  # another commit's package, exported by `git archive`
        env["PYTHONPATH"] = os.pathsep.join([str(source / "src"), env.get("PYTHONPATH", "")])
    # The server logs one line per request to stderr: into a file (a pipe nobody reads would fill and stall it).
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)


HEALTH_PATHS = {"v1/health": "v1/predict", "api/health": "api/predict"}  # this API, and the one before it


def wait_healthy(base: str, server: subprocess.Popen, seconds: float, log) -> tuple[dict, str]:
    """(health answer, prediction path) once the server answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"bench_serve: the server exited: {log.read().strip()[-500:]}")
        for health_path, predict_path in HEALTH_PATHS.items():
            try:
                with urllib.request.urlopen(base + health_path, timeout=2) as response:
                    return json.loads(response.read()), predict_path
            except urllib.error.HTTPError:
                continue  # 404: the other API
            except OSError:
                time.sleep(0.2)
                break
    raise SystemExit(f"bench_serve: the server did not answer within {seconds:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_load(args: argparse.Namespace, source: Path | None) -> tuple[list[tuple[str, str]], list[str], bool, dict]:
    """One server under the load: (table rows, error messages, all small requests answered 200, health)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    deadline = started + args.max_seconds
    log = tempfile.TemporaryFile("w+")
    server = start_server(port, args.weights, shlex.split(args.serve_args), log, source)
    memory, stop = Memory(), threading.Event()
    try:
        health, predict_path = wait_healthy(base, server, min(120.0, args.max_seconds), log)
        time.sleep(1.0)  # with --workers N, let every worker finish loading
        idle_rss = tree_bytes(server.pid, "VmRSS")
        sampler = threading.Thread(target=sample_memory, args=(server.pid, memory, stop), daemon=True)
        sampler.start()
        huge = png(np.zeros((args.huge_side, args.huge_side), np.uint8)) if args.huge_side else b""
        height, width = args.small_size
        small_url = f"{base}{predict_path}?task={args.task}&filename=small.png"
        small: list[Outcome] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            for k in range(args.requests):
                outcome = post(small_url, small_document(index * 1000 + k, height, width), deadline)
                with lock:
                    small.append(outcome)

        huge_outcome: list[Outcome] = []

        def huge_client() -> None:
            time.sleep(args.huge_delay)
            huge_outcome.append(post(f"{base}{predict_path}?task=all&filename=huge.png", huge, deadline))

        load_start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        if huge:
            threads.append(threading.Thread(target=huge_client, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        load_seconds = time.perf_counter() - load_start
        health_after = wait_healthy(base, server, 10, log)[0]["status"]
    finally:
        stop.set()
        memory.high_water = max(memory.high_water, tree_bytes(server.pid, "VmHWM"))
        stop_server(server)

    ok = [o for o in small if o.status == 200]
    latencies = [o.seconds for o in ok]
    expected = args.clients * args.requests
    mb = 2**20
    rows = [
        ("API", predict_path.split("/")[0]),
        ("small requests sent / answered", f"{expected} / {len(small)}"),
        ("  ok (200)", str(len(ok))),
        ("  4xx / 5xx / no answer", f"{sum(400 <= o.status < 500 for o in small)} / "
                                    f"{sum(o.status >= 500 for o in small)} / {sum(o.status == 0 for o in small)}"),
        ("  503 retries (queue full)", str(sum(o.retries for o in small))),
        ("  latency p50 / p95 / max (s)", f"{percentile(latencies, 50):.2f} / {percentile(latencies, 95):.2f} / "
                                          f"{max(latencies, default=float('nan')):.2f}"),
        ("  requests/s (ok)", f"{len(ok) / load_seconds:.2f}"),
    ]
    if huge:
        outcome = huge_outcome[0] if huge_outcome else Outcome(0, float("nan"), error="no answer before the deadline")
        rows.append(("huge upload", f"{outcome.status} after {outcome.seconds:.2f} s"))
    rows += [
        ("server RSS idle (MB)", f"{idle_rss / mb:.0f}"),
        ("server RSS peak sampled / VmHWM (MB)",
         f"{max(memory.samples, default=0) / mb:.0f} / {memory.high_water / mb:.0f}"),
        ("health after the load", health_after),
        ("wall time (s)", f"{time.monotonic() - started:.1f}"),
    ]
    errors = sorted({o.error for o in small if o.error})[:5]
    return rows, errors, len(ok) == expected, health


def export_source(ref: str, folder: Path) -> Path:
    """`src/` of git commit `ref` (of this repository) under `folder`."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="parallel small clients (default 20)")
    parser.add_argument("--requests", type=int, default=2, help="small requests per client (default 2)")
    parser.add_argument("--small-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"),
                        help="small image size (default 96 128)")
    parser.add_argument("--task", default="segmentation", help="task of the small requests (default segmentation)")
    parser.add_argument("--huge-side", type=int, default=9000,
                        help="side of the blank huge PNG; 0: none (default 9000)")
    parser.add_argument("--huge-delay", type=float, default=1.0, help="seconds after the clients start (default 1)")
    parser.add_argument("--weights", help="checkpoint (default: the bundled weights)")
    parser.add_argument("--serve-args", default="", help="more `upocr serve` options, one string")
    parser.add_argument("--baseline", metavar="REF", help="also load the server of this git commit, for comparison")
    parser.add_argument("--max-seconds", type=float, default=170, help="stop each server after this (default 170)")
    args = parser.parse_args()

    runs: list[tuple[str, list[tuple[str, str]], list[str], bool]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        rows, errors, complete, health = run_load(args, None)
        runs.append(("this checkout", rows, errors, complete))
        if args.baseline:
            base_rows, base_errors, _, _ = run_load(args, export_source(args.baseline, Path(folder)))
            runs.append((args.baseline, base_rows, base_errors, True))
    height, width = args.small_size
    print(describe())
    print(f"upocr serve load test: {args.clients} clients x {args.requests} {height}x{width} PNGs (task={args.task})"
          + (f" + one blank {args.huge_side}x{args.huge_side} PNG (task=all)" if args.huge_side else "")
          + f"; server options: {args.serve_args or '(defaults)'}; max_pixels={health['max_pixels']:,}")
    print(f"  {'':<38} " + "  ".join(f"{name:<22}" for name, *_ in runs))
    for index, (label, _) in enumerate(runs[0][1]):
        print(f"  {label:<38} " + "  ".join(f"{run[1][index][1]:<22}" for run in runs))
    for name, _, errors, _ in runs:
        for message in errors:
            print(f"  error ({name}): {message}")
    return 0 if runs[0][3] else 1


if __name__ == "__main__":
    sys.exit(main())
