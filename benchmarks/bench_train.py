"""Training throughput (images/s) of `upocr train`'s step, on 1 process and on N processes (DDP).

    python benchmarks/bench_train.py                        # small and paper at 256x256, 1 and 2 processes
    python benchmarks/bench_train.py --configs paper --size 512 --steps 2

Each measurement runs the trainer's own step (1:1:1 batch -> model in train mode -> task_loss ->
backward -> grad clipping -> AdamW with the lr schedule) on in-memory random batches, so data loading
is excluded. N processes use PyTorch's DDP over gloo on CPU (nccl on CUDA) with OMP threads split
between them, exactly like `torchrun --nproc_per_node=N`; images/s counts the images of all processes.
The paper config at 512x512 costs many seconds per image on a CPU: the default size is 256.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from upocr.model import build_model
from upocr.tasks import Task
from upocr.train.config import TrainConfig
from upocr.train.losses import task_loss
from upocr.train.trainer import build_optimizer, build_schedule, resolve_precision, setup_distributed


def _batch(batch_per_task: int, size: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    n = batch_per_task * len(Task)
    return {
        "image": torch.rand(n, 3, size, size, generator=generator).to(device),
        "target": torch.rand(n, 3, size, size, generator=generator).round().to(device),
        "mask": torch.rand(n, 1, size, size, generator=generator).round().to(device),
        "task": torch.tensor([int(t) for t in Task for _ in range(batch_per_task)], device=device),
    }


def _measure(rank: int, world: int, port: int, args: argparse.Namespace, preset: str, results) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, args.threads // world))
    context = setup_distributed(args.device)
    device = context.device
    config = TrainConfig(model=preset, image_size=args.size, batch_per_task=args.batch_per_task, iterations=1000,
                         precision=args.precision, device=args.device)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(preset).to(device).train()
    optimizer = build_optimizer(model, config)
    schedule = build_schedule(config)
    amp_dtype = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    net = torch.nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False) if world > 1 else model
    batch = _batch(args.batch_per_task, args.size, device)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        schedule.apply(optimizer, step)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            loss = task_loss(net(batch["image"], batch["task"]), batch)["loss"]
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if world > 1:
            dist.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - tick)
    if rank == 0:
        results.put((statistics.median(times), sum(p.numel() for p in model.parameters())))
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
