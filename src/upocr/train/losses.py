"""Training losses of the original UPOCR (reference section 2).

* Text removal: ``1 * MSR + 0.01 * perceptual + 120 * style`` — a multi-scale L1 that weights text
  and non-text pixels differently, plus VGG16 perceptual and style terms on the full-size output and
  on its composite with the input.
* Text segmentation and tampered text detection: a multi-scale smooth-L1 (beta 1) averaged over the
  target elements that are not the ignore grey, scales weighted ``[5, 6, 10]``.
* Optional (not the original's; the training option ``tampering_text_weight`` > 0, see
  :func:`build_task_losses`): for tampering, a class-balanced
  real-vs-tampered term on the text pixels alone (:func:`real_vs_tampered_loss`). Under the smooth-L1
  alone the few, subtle tampered pixels barely move the loss, and a small model settles on calling all
  text "real" with the blue channel at the tampered share.

A training batch is a concatenation of per-task sub-batches; :func:`task_loss` applies each image's
task loss to its own images (each task term is a mean over that task's images, as the original, which
computed every task's loss on its own sub-batch) and sums the tasks.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from upocr.tasks import IGNORE_VALUE, Task

if TYPE_CHECKING:
    from upocr.train.config import TrainConfig

# (weight on text pixels, weight on non-text pixels) for the [1/4, 1/2, full] outputs (engine/train.py).
MSR_WEIGHTS: tuple[tuple[float, float], ...] = ((5.0, 0.8), (6.0, 1.0), (10.0, 2.0))
# Removal = MSR_SCALE * MSR + PERCEPTUAL_WEIGHT * perceptual + STYLE_WEIGHT * style.
PERCEPTUAL_WEIGHT = 0.01
STYLE_WEIGHT = 120.0
# Smooth-L1 weights of the [1/4, 1/2, full] outputs for segmentation and tampering.
REGRESSION_WEIGHTS: tuple[float, ...] = (5.0, 6.0, 10.0)
# Targets are float32 images; the ignore grey 128/255 survives nearest resizing exactly, the tolerance
# only guards against a target built in another dtype.
_IGNORE_TOLERANCE = 1e-3

TaskLoss = Callable[
    [Sequence[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, "torch.nn.Module | None"], dict[str, torch.Tensor]
]

# Names of the logged terms, in the order they appear in logs.
LOSS_TERMS = ("loss", "removal", "removal_msr", "removal_perceptual", "removal_style", "tampering", "segmentation")


def resize_nearest(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize to `size` (no-op when it already has that size).

    Equal to the original's ``F.interpolate(x, scale_factor=s, recompute_scale_factor=True)`` (default
    mode nearest) whenever the output size is ``floor(H * s)``, which holds for the model's outputs.
    """
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=tuple(size), mode="nearest")


def msr_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-scale masked L1 of text removal.

    outputs: [1/4, 1/2, full] (B,3,h,w); target: (B,3,H,W) text-free image; mask: (B,1,H,W) with
    1 = non-text, 0 = text. Each L1 is a mean over all elements (zeros outside the region count).
    """
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for output, (w_text, w_nontext) in zip(outputs, MSR_WEIGHTS, strict=True):
        output = output.float()
        size = output.shape[-2:]
        gt = resize_nearest(target.float(), size)
        m = resize_nearest(mask.float(), size)
        text = 1.0 - m
        total = total + w_text * F.l1_loss(text * output, text * gt) + w_nontext * F.l1_loss(m * output, m * gt)
    return total


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,C) Gram matrix f fᵀ / (C·H·W), always computed in float32 (as the original)."""
    b, c, h, w = features.shape
    flat = features.float().reshape(b, c, h * w)
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def perceptual_style_losses(
    vgg: torch.nn.Module, output: torch.Tensor, image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """VGG16 perceptual and style terms on the full-size output and its composite with the input.

    comp = M·input + (1-M)·output keeps the input's non-text pixels and the prediction's text pixels.
    Returns (perceptual, style), each summed over the three VGG stages.
    """
    mask = resize_nearest(mask.to(output.dtype), output.shape[-2:])
    composite = mask * image.to(output.dtype) + (1.0 - mask) * output
    # One VGG pass over the three stacks (output, composite, target) instead of three passes.
    batch = output.shape[0]
    features = vgg(torch.cat([output, composite, target.to(output.dtype)], dim=0))
    perceptual = output.new_zeros((), dtype=torch.float32)
    style = output.new_zeros((), dtype=torch.float32)
    for feature in features:
        out_f, comp_f, gt_f = feature.float().split(batch, dim=0)
        perceptual = perceptual + F.l1_loss(out_f, gt_f) + F.l1_loss(comp_f, gt_f)
        gt_gram = gram_matrix(gt_f)
        style = style + F.l1_loss(gram_matrix(out_f), gt_gram) + F.l1_loss(gram_matrix(comp_f), gt_gram)
    return perceptual, style


def ignore_masked_regression_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Segmentation / tampering loss: Σ_k w_k · mean over non-ignored elements of SmoothL1(o_k, t_k).

    t_k is the target resized (nearest) to o_k's size; elements whose target is the ignore grey
    (128/255) are left out element-wise. A scale with every element ignored contributes 0 (the
    original would give NaN there).
    """
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for output, weight in zip(outputs, REGRESSION_WEIGHTS, strict=True):
        output = output.float()
        gt = resize_nearest(target.float(), output.shape[-2:])
        keep = ((gt - IGNORE_VALUE).abs() > _IGNORE_TOLERANCE).float()
        elementwise = F.smooth_l1_loss(output, gt, reduction="none", beta=1.0)
        total = total + weight * (elementwise * keep).sum() / keep.sum().clamp_min(1.0)
    return total


# real_vs_tampered_loss: (blue - green) output difference -> logit. The outputs live in [0, 1], so the
# difference in [-1, 1] spans logits -4..4 (probabilities 0.02..0.98).
_REAL_VS_TAMPERED_GAIN = 4.0


def real_vs_tampered_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k · mean(BCE over real-text pixels, BCE over tampered-text pixels) of the logit
    4 · (blue - green), on the tampering outputs [1/4, 1/2, full] (target one-hot, resized nearest).

    Each class counts half whatever its pixel share, so the rare tampered text weighs as much as the
    real text; background and ignored pixels are left out. A scale without text contributes 0.
    """
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for output, weight in zip(outputs, REGRESSION_WEIGHTS, strict=True):
        gt = resize_nearest(target.float(), output.shape[-2:])
        logit = (output[:, 2].float() - output[:, 1].float()) * _REAL_VS_TAMPERED_GAIN
        terms = [
            F.binary_cross_entropy_with_logits(logit[selected], torch.full_like(logit[selected], label))
            for selected, label in ((gt[:, 1] == 1, 0.0), (gt[:, 2] == 1, 1.0))
            if bool(selected.any())
        ]
        if terms:
            total = total + weight * sum(terms) / len(terms)
    return total


def removal_loss(
    outputs: Sequence[torch.Tensor],
    image: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    vgg: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Text-removal terms; without `vgg` the perceptual and style terms are 0 (off)."""
    msr = msr_loss(outputs, target, mask)
    if vgg is None:
        zero = msr.new_zeros(())
        perceptual, style = zero, zero
    else:
        perceptual, style = perceptual_style_losses(vgg, outputs[-1], image, target, mask)
    total = msr + PERCEPTUAL_WEIGHT * perceptual + STYLE_WEIGHT * style
    return {"removal": total, "removal_msr": msr, "removal_perceptual": perceptual, "removal_style": style}


def task_loss(
    outputs: Sequence[torch.Tensor], batch: Mapping[str, object], *, vgg: torch.nn.Module | None = None,
    losses: Mapping[Task, TaskLoss] | None = None,
) -> dict[str, torch.Tensor]:
    """Apply each image's task loss to a (possibly mixed) batch and sum the tasks.

    outputs: the model's [1/4, 1/2, full] outputs for `batch`; batch: dict with `image` (B,3,H,W),
    `target` (B,3,H,W), `mask` (B,1,H,W) and `task` (B,) prompt indices; losses: the table of each task's
    loss (default TASK_LOSSES, the original's; a training run's comes from :func:`build_task_losses`).
    Returns a dict of scalar tensors: "loss" (the total to back-propagate) and every term of LOSS_TERMS
    (0 for absent tasks).
    """
    table = TASK_LOSSES if losses is None else losses
    tasks = torch.as_tensor(batch["task"]).long().flatten().to(outputs[0].device)
    image, target, mask = batch["image"], batch["target"], batch["mask"]
    zero = outputs[0].new_zeros((), dtype=torch.float32)
    terms: dict[str, torch.Tensor] = {name: zero for name in LOSS_TERMS}
    total = zero
    for task in Task:
        selected = tasks == int(task)
        if not bool(selected.any()):
            continue
        if bool(selected.all()):  # single-task batch: no copies
            sub_outputs, sub_image, sub_target, sub_mask = outputs, image, target, mask
        else:
            index = selected.nonzero().flatten()
            sub_outputs = [o.index_select(0, index) for o in outputs]
            sub_image, sub_target, sub_mask = (t.index_select(0, index.to(t.device)) for t in (image, target, mask))
        task_terms = table[task](sub_outputs, sub_image, sub_target, sub_mask, vgg)
        terms.update(task_terms)
        total = total + task_terms[task.short]
    terms["loss"] = total
    return terms


@torch.no_grad()
def mean_losses(model: torch.nn.Module, batches: Iterable[Mapping[str, object]], *, vgg: torch.nn.Module | None = None,
                losses: Mapping[Task, TaskLoss] | None = None,
                autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, float]:  # fmt: skip
    """Mean of every term of LOSS_TERMS over `batches` (on the model's device), in eval mode (evaluation)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {name: 0.0 for name in LOSS_TERMS}
    count = 0
    for batch in batches:
        with autocast():
            terms = task_loss(model(batch["image"], batch["task"]), batch, vgg=vgg, losses=losses)
        for name in LOSS_TERMS:
            sums[name] += float(terms[name])
        count += 1
    model.train(was_training)
    return {name: value / count for name, value in sums.items()}


def _map_loss(task: Task) -> TaskLoss:
    """The loss of a task whose target is a map with ignored pixels: one term named `task.short`."""

    def loss(outputs: Sequence[torch.Tensor], image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             vgg: torch.nn.Module | None) -> dict[str, torch.Tensor]:
        return {task.short: ignore_masked_regression_loss(outputs, target)}

    return loss


# Each task's loss: (outputs, image, target, mask, vgg) -> its terms, the task's total under `task.short`.
TASK_LOSSES: dict[Task, TaskLoss] = {
    Task.TEXT_REMOVAL: removal_loss,
    Task.TEXT_SEGMENTATION: _map_loss(Task.TEXT_SEGMENTATION),
    Task.TAMPERED_TEXT_DETECTION: _map_loss(Task.TAMPERED_TEXT_DETECTION),
}


def _with_real_vs_tampered(base: TaskLoss, weight: float) -> TaskLoss:
    """`base` (the tampering loss) plus `weight` x :func:`real_vs_tampered_loss` on the same images."""
    short = Task.TAMPERED_TEXT_DETECTION.short

    def loss(outputs: Sequence[torch.Tensor], image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             vgg: torch.nn.Module | None) -> dict[str, torch.Tensor]:
        terms = base(outputs, image, target, mask, vgg)
        return {short: terms[short] + weight * real_vs_tampered_loss(outputs, target)}

    return loss


def build_task_losses(config: "TrainConfig") -> dict[Task, TaskLoss]:
    """The loss table of a training run: TASK_LOSSES with the options of `config` applied
    (`tampering_text_weight` > 0 adds the real-vs-tampered term to the tampering loss)."""
    table = dict(TASK_LOSSES)
    if config.tampering_text_weight > 0:
        table[Task.TAMPERED_TEXT_DETECTION] = _with_real_vs_tampered(table[Task.TAMPERED_TEXT_DETECTION],
                                                                     config.tampering_text_weight)  # fmt: skip
    return table
