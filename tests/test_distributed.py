"""`upocr train` under torchrun: 2 CPU processes (DDP over gloo) train, checkpoint and resume in agreement."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from upocr.model.checkpoint import load_model
from upocr.train import checkpoint as ckpt
from upocr.train.config import TrainConfig
from upocr.train.trainer import train, weights_sha256

# No drop path, so a 2-process step and a 1-process step over the same images compute the same loss.
TINY = {"preset": "tiny", "encoder_drop_path": 0.0, "decoder_drop_path": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config_file, data_root, out, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "upocr.cli", "train", "--config", str(config_file),
        "--data-root", str(data_root), "--output", str(out), "--no-progress", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_two_process_run_trains_checkpoints_and_resumes(tmp_path, tiny_data_root):
    config_file = tmp_path / "run.yaml"
    settings = {"model": TINY, "image_size": 64, "batch_per_task": 1, "iterations": 4, "lr": 1e-3, "lr_epoch_steps": 1,
                "precision": "fp32", "num_workers": 0, "checkpoint_every": 2, "log_every": 1, "seed": 5}  # fmt: skip
    config_file.write_text(yaml.safe_dump(settings))

    # Uninterrupted 2-process run.
    straight = tmp_path / "straight"
    _torchrun(config_file, tiny_data_root, straight)
    summary = _summary(straight)
    assert summary["world_size"] == 2 and summary["step"] == 4 and summary["finished"]
    assert summary["ranks_agree"] and len(summary["weights_sha256"]) == 2
    assert weights_sha256(load_model(straight / "model")) == summary["weights_sha256"][0]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(straight))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not all((a == b).all() for a, b in zip(state["rng"][0]["torch"], state["rng"][1]["torch"]))  # per-rank seeds

    # Interrupted at the time limit after one step (checkpoint written), then resumed to the end.
    resumed = tmp_path / "resumed"
    _torchrun(config_file, tiny_data_root, resumed, "--max-minutes", "0")
    assert _summary(resumed)["step"] == 1 and not _summary(resumed)["finished"]
    _torchrun(config_file, tiny_data_root, resumed, "--resume")
    summary = _summary(resumed)
    assert summary["step"] == 4 and summary["ranks_agree"]
    assert summary["weights_sha256"] == _summary(straight)["weights_sha256"]

    # One process with twice the batch sees the same images at step 1: same loss (up to summation order).
    single = train(TrainConfig(**{**settings, "batch_per_task": 2, "iterations": 4, "data_root": str(tiny_data_root),
                                  "output_dir": str(tmp_path / "single"), "checkpoint_every": 0}), progress=False)  # fmt: skip
    rows = list(csv.DictReader(open(straight / "train.csv")))
    assert float(rows[0]["loss"]) == pytest.approx(single.losses[0], rel=1e-4)
