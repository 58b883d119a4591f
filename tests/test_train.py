"""Training on tiny synthetic data: the loss falls, checkpoints are complete and resumable, bad runs stop."""

from __future__ import annotations

import csv
import dataclasses
import json
from functools import partial

import pytest
import torch
import yaml

from upocr.cli import main as cli_main
from upocr.model.checkpoint import load_model
from upocr.tasks import Task
from upocr.train import checkpoint as ckpt
from upocr.train.config import TrainConfig, resolve_config
from upocr.train.multitask import MultiTaskLoader
from upocr.train.trainer import NonFiniteLossError, train, weights_sha256
import upocr.train.trainer as trainer_module


def _config(tmp_path, **changes) -> TrainConfig:
    values = dict(
        model="tiny", image_size=64, batch_per_task=2, iterations=8, lr=1e-3, lr_epoch_steps=1,
        precision="fp32", num_workers=0, checkpoint_every=4, log_every=1, output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def test_a_few_steps_lower_the_loss(tmp_path, synthetic_datasets):
    config = _config(tmp_path, iterations=24, checkpoint_every=0)
    result = train(config, datasets=synthetic_datasets(), progress=False)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.finished and result.step == 24
    assert last < 0.75 * first, result.losses
    rows = list(csv.DictReader(open(tmp_path / "run" / "train.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 25))
    assert all(float(r["images_per_s"]) > 0 for r in rows) and float(rows[0]["lr"]) == pytest.approx(2e-4)
    # The end of a run writes a checkpoint, the exported model and the sample picture.
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-00000024.pt"
    exported = load_model(tmp_path / "run" / "model")
    assert weights_sha256(exported) == result.weights_sha256
    assert (tmp_path / "run" / "samples.png").stat().st_size > 1000


class _Crash(Exception):
    pass


class _HookedDataset(torch.utils.data.Dataset):
    """Wraps a dataset and calls `hook(n)` before its n-th item read (from 1): a crash or a Ctrl+C mid-run."""

    def __init__(self, dataset, hook) -> None:
        self.dataset, self.hook, self.reads = dataset, hook, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads += 1
        self.hook(self.reads)
        return self.dataset[index]


def _crash_after(after: int, reads: int) -> None:
    """Raise from every read after the first `after`: an interrupted run."""
    if reads > after:
        raise _Crash("killed")


def _sigint_at(at: int, reads: int) -> None:
    """Send this process SIGINT (Ctrl+C) while item number `at` is read."""
    import os
    import signal

    if reads == at:
        os.kill(os.getpid(), signal.SIGINT)


def test_resume_after_an_interrupted_run_gives_the_same_weights(tmp_path, synthetic_datasets):
    # 10 steps, checkpoints every 3; 8 samples per task, batches of 2 -> epochs of 4 steps, so the
    # run resumes mid-epoch (step 6) and then crosses an epoch boundary (re-shuffle).
    datasets = synthetic_datasets(count=8)
    straight = train(_config(tmp_path / "a", iterations=10, checkpoint_every=3), datasets=datasets, progress=False)

    interrupted = dict(datasets)
    interrupted[Task.TEXT_SEGMENTATION] = _HookedDataset(datasets[Task.TEXT_SEGMENTATION], partial(_crash_after, 2 * 6 + 1))
    config = _config(tmp_path / "b", iterations=10, checkpoint_every=3)
    with pytest.raises(_Crash):
        train(config, datasets=interrupted, progress=False)  # dies during step 7, after the step-6 checkpoint
    assert ckpt.latest_checkpoint(config.output_dir).name == "step-00000006.pt"
    resumed = train(dataclasses.replace(config, resume="auto"), datasets=datasets, progress=False)

    assert resumed.step == 10 and len(resumed.losses) == 4
    assert resumed.losses == straight.losses[6:]
    a = load_model(tmp_path / "a" / "run" / "model").state_dict()
    b = load_model(tmp_path / "b" / "run" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The log of the resumed run has each step once.
    rows = list(csv.DictReader(open(tmp_path / "b" / "run" / "train.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))


def test_max_steps_stops_cleanly_and_resume_replays_the_straight_run(tmp_path, synthetic_datasets):
    datasets = synthetic_datasets(count=8)
    straight = train(_config(tmp_path / "a", iterations=6, checkpoint_every=0), datasets=datasets, progress=False)
    config = _config(tmp_path / "b", iterations=6, checkpoint_every=0, max_steps=4)
    stopped = train(config, datasets=datasets, progress=False)
    assert stopped.step == 4 and not stopped.finished
    assert ckpt.latest_checkpoint(config.output_dir).name == "step-00000004.pt"
    resumed = train(dataclasses.replace(config, resume="auto", max_steps=None), datasets=datasets, progress=False)
    assert resumed.finished and resumed.weights_sha256 == straight.weights_sha256


def test_checkpoint_is_complete_and_loads_with_weights_only(tmp_path, synthetic_datasets):
    config = _config(tmp_path, iterations=4, checkpoint_every=2, keep_checkpoints=1)
    train(config, datasets=synthetic_datasets(), progress=False)
    paths = ckpt.list_checkpoints(config.output_dir)
    assert [p.name for p in paths] == ["step-00000004.pt"]  # older ones pruned
    state = torch.load(paths[0], weights_only=True)  # plain data only
    assert state["format"] == "upocr-train" and state["step"] == 4
    assert set(state) >= {"model", "model_config", "optimizer", "scheduler", "scaler", "rng", "data", "config"}
    assert len(state["rng"]) == 1 and state["rng"][0]["torch"].dtype == torch.uint8
    # 8 samples per task, batch 2: after 4 steps each task finished epoch 0.
    assert state["data"] == {t.short: {"epoch": 0, "batch": 4} for t in Task}
    assert state["model_config"]["embed_dim"] == 16
    assert state["optimizer"]["param_groups"][1]["initial_lr"] == pytest.approx(1e-4)  # encoder at lr x 0.1


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, synthetic_datasets, monkeypatch):
    config = _config(tmp_path, iterations=4, checkpoint_every=2, keep_checkpoints=0)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way through writing
            with open(f, "wb") as handle:
                handle.write(b"PK\x03\x04 half a zip")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(config, datasets=synthetic_datasets(), progress=False)
    folder = ckpt.checkpoint_dir(config.output_dir)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002.pt"]  # no temp file, no partial file
    assert ckpt.load_checkpoint(folder / "step-00000002.pt")["step"] == 2


def test_non_finite_loss_stops_the_run_without_writing(tmp_path, synthetic_datasets):
    class Poisoned(torch.utils.data.Dataset):
        def __init__(self, dataset):
            self.dataset = dataset

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, index):
            item = dict(self.dataset[index])
            item["image"] = torch.full_like(item["image"], float("nan"))
            return item

    datasets = synthetic_datasets()
    datasets[Task.TEXT_REMOVAL] = Poisoned(datasets[Task.TEXT_REMOVAL])
    config = _config(tmp_path, iterations=4, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"step 1: non-finite loss"):
        train(config, datasets=datasets, progress=False)
    assert ckpt.list_checkpoints(config.output_dir) == []
    assert not (tmp_path / "run" / "model").exists()


def test_loader_is_one_to_one_to_one_and_resumable(synthetic_datasets):
    datasets = synthetic_datasets(count=6)
    loader = MultiTaskLoader(datasets, batch_per_task=2, seed=3)
    batches = [next(loader) for _ in range(5)]
    for batch in batches:
        assert batch["task"].tolist() == [0, 0, 1, 1, 2, 2]  # prompt-index order, equal counts
        assert batch["image"].shape == (6, 3, 64, 64)
    # One epoch (3 batches) covers every sample of a task once.
    names = [n for b in batches[:3] for n in b["name"] if n.startswith("removal")]
    assert sorted(names) == sorted(f"removal-{i:03d}" for i in range(6))
    # A new loader at the saved position continues with identical batches (augmentations included).
    restarted = MultiTaskLoader(datasets, batch_per_task=2, seed=3)
    replay = MultiTaskLoader(datasets, batch_per_task=2, seed=3)
    for _ in range(2):
        next(replay)
    restarted.load_state_dict(replay.state_dict())
    for expected in batches[2:]:
        got = next(restarted)
        assert got["name"] == expected["name"] and torch.equal(got["image"], expected["image"])
    # Two ranks split every task's batch: together they see what one process with both halves sees.
    ranks = [MultiTaskLoader(datasets, batch_per_task=1, seed=3, rank=r, world_size=2) for r in range(2)]
    first = [next(r) for r in ranks]
    assert sorted(first[0]["name"] + first[1]["name"]) == sorted(batches[0]["name"])


def test_cli_trains_from_a_yaml_config_with_flag_overrides(tmp_path, tiny_data_root, capsys):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump({"model": "tiny", "image_size": 64, "batch_per_task": 2, "iterations": 50, "lr": 1e-3,
                        "precision": "fp32", "num_workers": 0, "checkpoint_every": 2, "log_every": 1})  # fmt: skip
    )
    out = tmp_path / "run"
    code = cli_main(["train", "--config", str(config_file), "--data-root", str(tiny_data_root), "--iterations", "3",
                     "--tasks", "removal", "segmentation", "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["iterations"] == 3 and resolved["model"] == "tiny" and resolved["tasks"] == ["removal", "segmentation"]
    assert resolved["lr"] == pytest.approx(1e-3) and resolved["weight_decay"] == pytest.approx(1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3 and summary["finished"] and summary["ranks_agree"]
    rows = list(csv.DictReader(open(out / "train.csv")))
    assert float(rows[-1]["tampering"]) == 0 and float(rows[-1]["segmentation"]) > 0
    assert "perceptual and style terms" in capsys.readouterr().err
    # --resume with a longer run continues from the last checkpoint.
    code = cli_main(["train", "--config", str(config_file), "--data-root", str(tiny_data_root), "--iterations", "4",
                     "--tasks", "removal", "segmentation", "--output", str(out), "--no-progress", "--resume"])  # fmt: skip
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["step"] == 4


def test_cli_stops_at_the_time_limit_and_reports_bad_options(tmp_path, tiny_data_root, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "tiny", "--image-size", "64", "--batch-per-task", "1", "--iterations", "100",
            "--precision", "fp32", "--num-workers", "0", "--data-root", str(tiny_data_root), "--output", str(out),
            "--no-progress"]  # fmt: skip
    assert cli_main(args + ["--max-minutes", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 1 and not summary["finished"]
    assert ckpt.latest_checkpoint(out).name == "step-00000001.pt"
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert cli_main(["train", "--config", str(bad)]) == 2
    assert "bad.yaml: unknown training option(s) learning_rate" in capsys.readouterr().err
    assert cli_main(args + ["--precision", "fp16"]) == 2
    assert "fp16 training needs CUDA" in capsys.readouterr().err
    assert cli_main(args + ["--tampering-scale", "crop"]) == 2
    assert "tampering_scale must be one of resize, native, got 'crop'" in capsys.readouterr().err
    assert cli_main(args + ["--tampering-text-weight", "-1"]) == 2
    assert "tampering_text_weight must be >= 0, got -1.0" in capsys.readouterr().err


def test_resolve_config_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nbatch-per-task: 3\nmodel: {preset: tiny, encoder_drop_path: 0.0}\n")
    config = resolve_config(path, {"lr": 0.02, "iterations": None})
    assert config.lr == 0.02 and config.batch_per_task == 3 and config.iterations == 80_000
    assert config.model == {"preset": "tiny", "encoder_drop_path": 0.0}


def test_bundled_configs_resolve_and_paper_is_the_original_recipe():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    paper = resolve_config(root / "paper.yaml")
    assert (paper.model, paper.image_size, paper.batch_per_task, paper.iterations) == ("paper", 512, 8, 80_000)
    assert (paper.lr, paper.encoder_lr_ratio, paper.weight_decay, paper.grad_clip) == (5e-4, 0.1, 1e-4, 0.1)
    from upocr.train.trainer import build_schedule

    schedule = build_schedule(paper)
    assert paper.lr * schedule.factor(0) == pytest.approx(1e-4) and paper.lr * schedule.factor(2000) == pytest.approx(4.8625e-4)
    assert resolve_config(root / "small-synth.yaml").model == "small"


# --------------------------------------------------------------------------------------------
# Run folders, interrupted writes, bad data, interrupts (reliability findings D3-D23)
# --------------------------------------------------------------------------------------------


def _cli_args(data_root, *extra: str) -> list[str]:
    return ["train", "--model", "tiny", "--image-size", "64", "--batch-per-task", "2", "--precision", "fp32",
            "--num-workers", "0", "--lr-epoch-steps", "1", "--no-progress", "--data-root", str(data_root), *extra]  # fmt: skip


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note:")]


def test_a_new_run_into_another_runs_folder_is_refused_unless_overwrite(tmp_path, tiny_data_root, capsys, monkeypatch):
    out = tmp_path / "runs" / "x"
    args = _cli_args(tiny_data_root, "--checkpoint-every", "1", "--keep-checkpoints", "3")
    assert cli_main(args + ["--iterations", "3", "--output", str(out)]) == 0
    capsys.readouterr()
    assert cli_main(args + ["--iterations", "2", "--output", str(out)]) == 2
    assert _error_lines(capsys) == [
        f"upocr train: error: {out} already holds a training run (checkpoints/step-00000003.pt); "
        "use --resume to continue it, --overwrite to replace it, or another --output"
    ]
    assert [p.name for p in ckpt.list_checkpoints(out)] == [f"step-0000000{n}.pt" for n in (1, 2, 3)]  # untouched
    assert cli_main(args + ["--iterations", "2", "--output", str(out), "--overwrite"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000001.pt", "step-00000002.pt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 2 and summary["last_checkpoint"] == str(out / "checkpoints" / "step-00000002.pt")
    assert load_model(out / "model").config.embed_dim == 16
    # Without --output every run gets a new folder runs/<model>-<date>-<time>[-n].
    monkeypatch.chdir(tmp_path / "runs")
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "1")) == 0
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "1")) == 0
    made = sorted(p.name for p in (tmp_path / "runs" / "runs").iterdir())
    assert len(made) == 2 and all(name.startswith("tiny-20") for name in made)
    assert all(ckpt.latest_checkpoint(tmp_path / "runs" / "runs" / name).name == "step-00000001.pt" for name in made)


def test_resume_removes_temp_files_of_a_killed_write(tmp_path, synthetic_datasets):
    config = _config(tmp_path, iterations=2, checkpoint_every=1)
    train(config, datasets=synthetic_datasets(), progress=False)
    run = tmp_path / "run"
    stale = [run / "checkpoints" / ".step-00000003.wvif39jh.tmp.pt", run / "model" / ".model.qpc5wsdo.tmp.safetensors"]
    for path in stale:
        path.write_bytes(b"half a file")
    # Only the atomic-write names in checkpoints/ and model/ go (N3): nothing else, nowhere else.
    kept = [run / "checkpoints" / "notes.txt", run / "checkpoints" / ".notes.tmp", run / "model" / ".draft.tmp.md",
            run / ".train.abcd1234.tmp.csv"]  # fmt: skip
    for path in kept:
        path.write_text("mine")
    train(dataclasses.replace(config, iterations=3, resume="auto"), datasets=synthetic_datasets(), progress=False)
    assert not any(path.exists() for path in stale)
    assert all(path.read_text() == "mine" for path in kept)


def _bad_copy(tiny_data_root, tmp_path, keep_bytes) -> tuple[object, object]:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data_root, root)
    victim = sorted((root / "TextRemoval" / "SCUT-ENS" / "train" / "image").iterdir())[4]
    data = victim.read_bytes()
    victim.write_bytes(data[: keep_bytes(len(data))])
    return root, victim


def test_unreadable_samples_are_listed_before_training(tmp_path, tiny_data_root, capsys):
    root, victim = _bad_copy(tiny_data_root, tmp_path, lambda n: 200)  # the reproduction of D10: 200 bytes left
    out = tmp_path / "run"
    assert cli_main(_cli_args(root, "--iterations", "2", "--output", str(out))) == 2
    lines = _error_lines(capsys)
    assert lines[0].startswith(f"bad sample: {victim}: not a readable image")
    assert lines[-1].startswith(f"upocr train: error: 1 of 24 training samples unusable: {victim}: not a readable image")
    assert len(lines) == 2 and ckpt.list_checkpoints(out) == []


def test_a_truncated_image_found_during_training_is_one_line_also_with_loader_workers(tmp_path, tiny_data_root, capsys):
    # Header intact, pixel data cut: the default header check passes it; --check-data full finds it.
    root, victim = _bad_copy(tiny_data_root, tmp_path, lambda n: n - 100)
    out = tmp_path / "run"
    assert cli_main(_cli_args(root, "--iterations", "8", "--output", str(out), "--num-workers", "2",
                              "--checkpoint-every", "0")) == 2  # fmt: skip
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"upocr train: error: {victim}: ") and "truncated" in lines[0], lines
    assert cli_main(_cli_args(root, "--iterations", "2", "--output", str(out), "--check-data", "full")) == 2
    lines = _error_lines(capsys)
    assert lines[0].startswith(f"bad sample: {victim}: ") and "1 of 24 training samples unusable" in lines[-1]


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_earlier_checkpoints(tmp_path, tiny_data_root, capsys, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # what torch's zip writer raises when the disk fills up
            with open(f, "wb") as handle:
                handle.write(b"PK\x03\x04 half a zip")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5527488 vs 5527376")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    out = tmp_path / "run"
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "3", "--checkpoint-every", "1", "--output", str(out))) == 1
    lines = _error_lines(capsys)
    target = out / "checkpoints" / "step-00000002.pt"
    assert len(lines) == 1 and lines[0].startswith(f"upocr train: error: cannot write checkpoint {target}: write failed (")
    assert lines[0].endswith(" free)")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001.pt"]  # no temp, earlier intact
    assert ckpt.load_checkpoint(out / "checkpoints" / "step-00000001.pt")["step"] == 1




def test_ctrl_c_checkpoints_the_current_step_and_resume_is_exact(tmp_path, synthetic_datasets):
    from upocr.train.trainer import TrainingInterrupted

    datasets = synthetic_datasets(count=8)
    straight = train(_config(tmp_path / "a", iterations=8, checkpoint_every=0), datasets=datasets, progress=False)
    interrupted = dict(datasets)
    interrupted[Task.TEXT_SEGMENTATION] = _HookedDataset(datasets[Task.TEXT_SEGMENTATION], partial(_sigint_at, 2 * 4 + 1))
    config = _config(tmp_path / "b", iterations=8, checkpoint_every=0)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 5; resume with --resume") as stop:
        train(config, datasets=interrupted, progress=False)  # Ctrl+C while step 5 loads: step 5 completes
    assert stop.value.step == 5 and stop.value.checkpoint.name == "step-00000005.pt"
    assert ckpt.latest_checkpoint(config.output_dir).name == "step-00000005.pt"
    resumed = train(dataclasses.replace(config, resume="auto"), datasets=datasets, progress=False)
    assert resumed.losses == straight.losses[5:] and resumed.weights_sha256 == straight.weights_sha256


def test_cli_ctrl_c_exits_130_with_a_resume_hint(tmp_path, tiny_data_root, capsys, monkeypatch):
    import os
    import signal

    from upocr.train import trainer

    real = trainer._to_device
    calls = {"n": 0}

    def interrupt_on_second_batch(batch, device):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(batch, device)

    monkeypatch.setattr(trainer, "_to_device", interrupt_on_second_batch)
    out = tmp_path / "run"
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "5", "--output", str(out))) == 130
    assert _error_lines(capsys)[-1] == "upocr train: interrupted at step 2; resume with --resume"
    assert ckpt.latest_checkpoint(out).name == "step-00000002.pt"


def test_resume_refuses_another_model_and_records_the_checkpoints(tmp_path, tiny_data_root, capsys):
    out = tmp_path / "run"
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "1", "--output", str(out))) == 0
    capsys.readouterr()
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "2", "--output", str(out), "--resume", "--model", "small")) == 2
    assert _error_lines(capsys) == [
        f"upocr train: error: model small (from --model or --config) differs from {out / 'checkpoints' / 'step-00000001.pt'}, "
        "which holds model tiny; leave --model out to continue it, or start a new run with another --output"
    ]
    args = [a for a in _cli_args(tiny_data_root, "--iterations", "2", "--output", str(out), "--resume") if a not in ("--model", "tiny")]
    assert cli_main(args) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "tiny"
    assert json.loads((out / "summary.json").read_text())["step"] == 2


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, synthetic_datasets, capsys):
    config = _config(tmp_path, iterations=3, checkpoint_every=1, keep_checkpoints=3)
    train(config, datasets=synthetic_datasets(), progress=False)
    newest = ckpt.checkpoint_dir(config.output_dir) / "step-00000003.pt"
    newest.write_bytes(newest.read_bytes()[:5000])  # truncated
    capsys.readouterr()
    resumed = train(dataclasses.replace(config, iterations=4, resume="auto"), datasets=synthetic_datasets(), progress=False)
    err = capsys.readouterr().err
    assert f"warning: {newest}: unreadable training checkpoint" in err and "resuming from the intact step-00000002.pt" in err
    assert resumed.step == 4 and len(resumed.losses) == 2
    assert (newest.parent / "step-00000003.pt.unreadable").is_file()  # kept for the user, out of the listing


def test_train_csv_after_a_resume_matches_the_uninterrupted_run(tmp_path, synthetic_datasets):
    datasets = synthetic_datasets(count=8)
    train(_config(tmp_path / "a", iterations=6, checkpoint_every=0, log_every=3), datasets=datasets, progress=False)
    config = _config(tmp_path / "b", iterations=6, checkpoint_every=0, log_every=3, max_steps=4)
    train(config, datasets=datasets, progress=False)  # stops at step 4, in the middle of the window 4..6
    train(dataclasses.replace(config, resume="auto", max_steps=None), datasets=datasets, progress=False)

    def rows(folder):
        return [{k: r[k] for k in ("step", "lr", "loss", "removal", "segmentation", "tampering")}
                for r in csv.DictReader(open(folder / "run" / "train.csv"))]  # fmt: skip

    assert [r["step"] for r in rows(tmp_path / "a")] == ["3", "6"]
    assert rows(tmp_path / "b") == rows(tmp_path / "a")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_is_bf16_only_on_cpus_that_have_it(monkeypatch, native, expected):
    """auto used to mean bf16 on every CPU; on AVX2-only CPUs torch emulates it, ~10x slower than fp32."""
    from upocr.train import distributed

    monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: native)
    assert distributed.resolve_precision("auto", torch.device("cpu")) == expected
    assert distributed.resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16  # asked for: kept


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import upocr.utils as utils

    cpuinfo = tmp_path / "cpuinfo"
    real_path = utils.Path
    monkeypatch.setattr(utils, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not utils.cpu_has_native_bf16()
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert utils.cpu_has_native_bf16()
    cpuinfo.unlink()
    assert not utils.cpu_has_native_bf16()  # unreadable: fp32, the safe choice


def test_tampering_options_reach_the_datasets_and_the_logged_loss(tmp_path, tiny_data_root):
    config = TrainConfig(data_root=str(tiny_data_root), image_size=32, tampering_scale="native")
    datasets = trainer_module.build_datasets(config)
    assert datasets[Task.TAMPERED_TEXT_DETECTION].native
    assert not datasets[Task.TEXT_SEGMENTATION].native and not datasets[Task.TEXT_REMOVAL].native
    settings = dict(data_root=str(tiny_data_root), tasks=["tampering"], model="tiny", image_size=64, batch_per_task=2,
                    iterations=1, precision="fp32", num_workers=0, log_every=1, seed=3)  # fmt: skip
    logged = []
    for weight in (0.0, 1.0):
        out = tmp_path / f"w{weight}"
        train(TrainConfig(**settings, tampering_text_weight=weight, output_dir=str(out)), progress=False)
        with open(out / "train.csv") as handle:
            logged.append(float(next(csv.DictReader(handle))["tampering"]))
    assert logged[1] > logged[0]  # same seed, same first batch: the added term is in the logged loss


# --------------------------------------------------------------------------------------------
# A user's folder as --output, two trainers at once, option types (reliability findings N3, N5, N8)
# --------------------------------------------------------------------------------------------


def _user_folder(tmp_path, data_root):
    """The reproduction of N3: a project folder with the user's config (comments and all) and own files."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.yaml").write_text(f"# my notes\nmodel: tiny\nimage_size: 64\nbatch_per_task: 2\nprecision: fp32\n"
                                         f"num_workers: 0\ndata_root: {data_root}\niterations: 2\n")  # fmt: skip
    (project / "train.csv").write_text("mine\n")
    (project / ".notes.tmp").write_text("secret\n")
    (project / ".draft.tmp.md").write_text("draft\n")
    return project


def _snapshot(folder) -> dict:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def test_output_over_a_users_folder_is_refused_and_never_loses_their_files(tmp_path, tiny_data_root, capsys):
    project = _user_folder(tmp_path, tiny_data_root)
    before = _snapshot(project)
    args = ["train", "--config", str(project / "config.yaml"), "--output", str(project), "--no-progress"]
    assert cli_main(args) == 2
    assert _error_lines(capsys) == [
        f"upocr train: error: {project} is not empty and is not a run folder (it holds .draft.tmp.md, .notes.tmp, "
        "train.csv); choose a new or empty --output, or --overwrite to write the run's files into it"
    ]
    assert _snapshot(project) == before and sorted(p.name for p in project.iterdir()) == sorted(before)
    # --overwrite writes the run there, but never over the --config file and never deletes the user's files.
    assert cli_main(args + ["--overwrite"]) == 0
    after = _snapshot(project)
    assert after["config.yaml"] == before["config.yaml"]  # comments and layout kept
    assert after[".notes.tmp"] == before[".notes.tmp"] and after[".draft.tmp.md"] == before[".draft.tmp.md"]
    assert yaml.safe_load(after["config.resolved.yaml"])["iterations"] == 2  # the resolved options, beside it
    assert ckpt.latest_checkpoint(project).name == "step-00000002.pt"


def test_a_folder_holding_only_the_config_file_is_a_fine_output_and_keeps_it(tmp_path, tiny_data_root):
    project = _user_folder(tmp_path, tiny_data_root)
    for name in ("train.csv", ".notes.tmp", ".draft.tmp.md"):
        (project / name).unlink()
    mine = (project / "config.yaml").read_bytes()
    args = ["train", "--config", str(project / "config.yaml"), "--output", str(project), "--no-progress"]
    assert cli_main(args) == 0
    assert (project / "config.yaml").read_bytes() == mine
    # What the run wrote is its own: continuing it, or a new run after a failed start, is not refused.
    (project / "checkpoints" / "step-00000002.pt").unlink()
    (project / "model" / "model.safetensors").unlink()
    assert cli_main(args) == 0 and (project / "config.yaml").read_bytes() == mine


def test_a_second_trainer_on_a_run_folder_is_refused_while_the_first_runs(tmp_path, tiny_data_root, synthetic_datasets, capsys):
    """N5: both used to 'finish'; pruning deleted the other's checkpoints and the model was the other run's."""
    out = tmp_path / "race"
    second: dict = {}

    def start_a_second_trainer(reads: int) -> None:
        if reads == 1 and not second:  # while the first run loads its first batch: no checkpoint yet
            second["code"] = cli_main(_cli_args(tiny_data_root, "--iterations", "8", "--seed", "2", "--output", str(out),
                                                "--checkpoint-every", "1", "--keep-checkpoints", "3"))  # fmt: skip
            second["err"] = _error_lines(capsys)

    datasets = synthetic_datasets(count=8)
    datasets[Task.TEXT_SEGMENTATION] = _HookedDataset(datasets[Task.TEXT_SEGMENTATION], start_a_second_trainer)
    config = _config(tmp_path, iterations=6, checkpoint_every=1, keep_checkpoints=3, output_dir=str(out), seed=1)
    first = train(config, datasets=datasets, progress=False)
    assert second["code"] == 2
    assert len(second["err"]) == 1 and second["err"][0].startswith(
        f"upocr train: error: {out} is in use by another training run (process {__import__('os').getpid()}, run.lock)"
    ), second["err"]
    assert first.step == 6 and [p.name for p in ckpt.list_checkpoints(out)] == [f"step-0000000{n}.pt" for n in (4, 5, 6)]
    assert weights_sha256(load_model(out / "model")) == first.weights_sha256
    assert not (out / "run.lock").exists()  # released: the folder is free again
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "7", "--output", str(out), "--resume")) == 0


def test_run_lock_is_exclusive_and_released(tmp_path):
    from upocr.train.run_dir import RunLock

    folder = tmp_path / "new" / "run"
    held = RunLock(folder).acquire()
    with pytest.raises(ValueError, match=r"is in use by another training run \(process \d+, run\.lock\)"):
        RunLock(folder).acquire()
    held.release()
    assert not folder.exists()  # made for a run that wrote nothing: gone again
    RunLock(folder).acquire().release()


@pytest.mark.parametrize("field, value, message", [
    ("lr", "fast", "lr must be a number, got 'fast'"),
    ("lr", 0, "lr must be > 0, got 0"),
    ("lr", -1e-3, "lr must be > 0, got -0.001"),
    ("image_size", "64x", "image_size must be a whole number, got '64x'"),
    ("batch_per_task", 2.5, "batch_per_task must be a whole number, got 2.5"),
    ("tasks", 5, "tasks must be a list of texts or null, got 5"),
    ("tasks", ["nope"], "tasks: unknown task 'nope'"),
    ("model", 5, "model must be text or a mapping or null, got 5"),
    ("weight_decay", "none", "weight_decay must be a number, got 'none'"),
    ("max_steps", -5, "max_steps must be >= 1, got -5"),
    ("max_minutes", -1, "max_minutes must be >= 0, got -1.0"),
    ("keep_checkpoints", -1, "keep_checkpoints must be >= 0, got -1"),
    ("grad_clip", -1, "grad_clip must be >= 0, got -1.0"),
    ("augment", "maybe", "augment must be true or false, got 'maybe'"),
    ("precision", "fp8", "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
])  # fmt: skip
def test_training_options_are_checked_by_type_and_range_naming_the_field(field, value, message):
    """N8: YAML 1.1 reads `lr: 1e-4` as text; such values used to fail deep inside training with a traceback."""
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({field: value}, source="c.yaml")
    assert str(error.value).startswith(f"c.yaml: {message}"), str(error.value)


def test_numeric_text_becomes_a_number(tmp_path, tiny_data_root, capsys):
    config = TrainConfig.from_dict({"lr": "1e-4", "iterations": "1e3", "image_size": "64", "max_minutes": "2.5"})
    assert (config.lr, config.iterations, config.image_size, config.max_minutes) == (0.0001, 1000, 64, 2.5)
    assert type(config.iterations) is int and type(config.lr) is float
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nlr_epoch_steps: 1e3\n")  # both text to PyYAML
    assert resolve_config(path).lr == 0.0001 and resolve_config(path).lr_epoch_steps == 1000
    # A bad value in the file names the file; a bad flag names the option.
    path.write_text("lr: fast\n")
    assert cli_main(["train", "--config", str(path), "--data-root", str(tiny_data_root)]) == 2
    assert _error_lines(capsys) == [f"upocr train: error: {path}: lr must be a number, got 'fast'"]
    assert cli_main(_cli_args(tiny_data_root, "--iterations", "2", "--lr", "0")) == 2
    assert _error_lines(capsys) == ["upocr train: error: lr must be > 0, got 0.0"]
