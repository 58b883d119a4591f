"""Process set-up of a training run: the process group and device, the precision, seeds, gathers and
Ctrl+C. The same code runs single-process or as every rank of ``torchrun --nproc_per_node=N``
(env:// rendezvous; gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from upocr.model.checkpoint import resolve_device
from upocr.utils import cpu_has_native_bf16


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call initialised the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (a picklable object), in rank order."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def main_decides(self, decide: Callable[[], Any], errors: tuple[type[Exception], ...] = (ValueError,)) -> Any:
        """Run `decide` on rank 0 only and give its (picklable) result to every rank. One of `errors` raised
        there is raised on every rank, with the same type and message (so that the other ranks do not wait
        forever in the next collective)."""
        result, problem = None, None
        if self.is_main:
            try:
                result = decide()
            except errors as error:
                problem = error
        shared, kind, message = self.all_gather((result, type(problem) if problem else None, str(problem)))[0]
        if problem is not None:
            raise problem
        if kind is not None:
            raise kind(message)
        return shared

    def say(self, message: str) -> None:
        """One line on stderr from rank 0 (through tqdm, so that a progress bar stays intact)."""
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        """Leave the process group if this context joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (env://); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", local_rank if target.index is None else target.index)
        torch.cuda.set_device(target)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo", init_method="env://")
        owns = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=target, owns_group=owns)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of `precision` ("auto": bf16 on GPUs and CPUs that have it natively, fp16 on GPUs
    without bf16, fp32 on CPUs that would only emulate bf16)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA (loss scaling); use --precision bf16 or fp32 on CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class InterruptFlag:
    """While active, Ctrl+C only sets `raised`: the step in progress completes and the loop then writes a
    checkpoint and stops (a checkpoint in mid-step could not resume exactly). A second Ctrl+C stops at once.
    Signal handlers can only be set from the main thread; elsewhere Ctrl+C keeps its default behaviour."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> "InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        sys.stderr.write("\ninterrupt: finishing this step and writing a checkpoint (Ctrl+C again to stop at once)\n")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of every tensor of the state dict (names, dtypes, shapes, bytes) in key order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
