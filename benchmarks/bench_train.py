"""Training throughput (images/s) of `upocr train`'s step, on 1 process and on N processes (DDP).

    python benchmarks/bench_train.py                        # small and paper at 256x256, 1 and 2 processes
    python benchmarks/bench_train.py --configs paper --size 512 --steps 2

Each measurement runs the trainer's own step (`Trainer.train_step`: 1:1:1 batch -> model in train mode
-> task_loss -> the per-step loss all-reduce -> backward -> grad clipping -> AdamW with the lr schedule)
on in-memory random batches, so data loading is excluded. N processes use PyTorch's DDP over gloo on CPU (nccl on CUDA) with OMP threads split
between them, exactly like `torchrun --nproc_per_node=N`; images/s counts the images of all processes.
The paper config at 512x512 costs many seconds per image on a CPU: the default size is 256.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from machine import describe  # the CPU and its flags, above every table (benchmarks/machine.py)

from upocr.tasks import Task
from upocr.train.config import TrainConfig
from upocr.train.trainer import Trainer, setup_distributed


def _batch(batch_per_task: int, size: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    n = batch_per_task * len(Task)
    return {
        "image": torch.rand(n, 3, size, size, generator=generator).to(device),
        "target": torch.rand(n, 3, size, size, generator=generator).round().to(device),
        "mask": torch.rand(n, 1, size, size, generator=generator).round().to(device),
        "task": torch.tensor([int(t) for t in Task for _ in range(batch_per_task)], device=device),
    }


class _RandomItems(torch.utils.data.Dataset):
    """Enough in-memory items for the Trainer's loader to start (the timed steps use `_batch`)."""

    def __init__(self, task: Task, size: int, count: int) -> None:
        self.task, self.size, self.count = task, size, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        s = self.size
        return {"image": torch.zeros(3, s, s), "target": torch.zeros(3, s, s), "mask": torch.ones(1, s, s), "task": int(self.task)}


def _measure(rank: int, world: int, port: int, args: argparse.Namespace, preset: str, results) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, args.threads // world))
    context = setup_distributed(args.device)
    device = context.device
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(model=preset, image_size=args.size, batch_per_task=args.batch_per_task, iterations=1000,
                             precision=args.precision, device=args.device, num_workers=0, output_dir=scratch)  # fmt: skip
        datasets = {t: _RandomItems(t, args.size, args.batch_per_task * world) for t in Task}
        trainer = Trainer(config, context, datasets=datasets, progress=False)
        trainer.restore()  # the model, optimizer, schedule and DDP wrapper of a real run (writes nothing)
        batch = _batch(args.batch_per_task, args.size, device)
        times = []
        for step in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            tick = time.perf_counter()
            trainer.train_step(batch)  # the trainer's own step: forward, loss, all-reduce, backward, clip, update
            if device.type == "cuda":
                torch.cuda.synchronize()
            if world > 1:
                dist.barrier()
            if step >= args.warmup:
                times.append(time.perf_counter() - tick)
    if rank == 0:
        results.put((statistics.median(times), sum(p.numel() for p in trainer.model.parameters())))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace, preset: str, world: int) -> tuple[float, int]:
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    if world == 1:
        _measure(0, 1, port, args, preset, results)
    else:
        mp.start_processes(_measure, args=(world, port, args, preset, results), nprocs=world, start_method="spawn")
    return results.get()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "paper"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-per-task", type=int, default=1, help="per process")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads shared by the processes")
    args = parser.parse_args()

    print(describe())
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, {os.cpu_count()} CPUs; "
          f"size {args.size}, {args.batch_per_task} image(s) per task per process, median of {args.steps} steps")  # fmt: skip
    header = f"{'config':<7} {'params':>8} {'precision':<9} {'procs':>5} {'images/step':>11} {'s/step':>8} {'images/s':>9}"
    print(header)
    print("-" * len(header))
    for preset in args.configs:
        for precision in args.precision:
            for world in args.processes:
                run_args = argparse.Namespace(**{**vars(args), "precision": precision})
                seconds, params = run(run_args, preset, world)
                images = args.batch_per_task * len(Task) * world
                print(f"{preset:<7} {params / 1e6:>7.1f}M {precision:<9} {world:>5} {images:>11} {seconds:>8.2f} {images / seconds:>9.2f}",
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
