"""SwinV2 building blocks, written once and shared by the encoder and the decoder.

Tokens travel as (B, H*W, C) with the map size passed alongside. Feature maps whose size is not a
multiple of the window are zero-padded right/bottom before windowing and the padded tokens are *not*
masked: the original does exactly this, and its weights expect it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

# Cosine-attention temperatures are capped at 1/0.01 (SwinV2).
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
# Attention logit added between tokens of different shifted-window regions.
SHIFT_MASK_VALUE = -100.0


def exporting() -> bool:
    """Whether the model is being traced for export (`upocr.export`): then the position biases and shift
    masks are computed in the graph rather than read from Python-side caches, and attention is written
    out so that one graph serves any batch size."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability `rate` (train only)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Mlp(nn.Module):
    def __init__(self, *, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def relative_coords_table(window: int, pretrained_window: int) -> torch.Tensor:
    """(1, 2w-1, 2w-1, 2) log-spaced relative coordinates fed to the position-bias MLP."""
    offsets = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).unsqueeze(0)
    table = table / (pretrained_window - 1) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the flattened (2w-1)^2 table for every pair of tokens in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


class WindowAttention(nn.Module):
    """Scaled cosine attention with a learnable per-head temperature and a continuous position bias.

    At inference (autograd off) the position bias is computed once and cached: it depends on the weights
    alone, and recomputing it (an MLP, a gather and a sigmoid per block) cost about a tenth of a forward
    pass. The cache is keyed on the storage and version counter of every tensor it is derived from, so
    loading weights, an optimizer step or moving the module recomputes it; train() drops it.
    """

    def __init__(self, *, dim: int, heads: int, window: int, pretrained_window: int, cpb_hidden: int = 512) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, cpb_hidden), nn.ReLU(inplace=True), nn.Linear(cpb_hidden, heads, bias=False))
        # Derived from the window size alone: recomputed, never stored in checkpoints.
        self.register_buffer("relative_coords_table", relative_coords_table(window, pretrained_window), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))  # keys get no bias (SwinV2)
        self.proj = nn.Linear(dim, dim)
        self._cached_bias: tuple[tuple, torch.Tensor] | None = None  # (source key, (heads, N, N) bias)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias in (0, 16): computed when autograd is on, else cached (class docstring)."""
        if torch.is_grad_enabled() or exporting():  # exported: a constant of the graph
            return self._compute_position_bias()
        key = self._bias_source_key()
        if key is None:
            return self._compute_position_bias()
        if self._cached_bias is None or self._cached_bias[0] != key:
            self._cached_bias = (key, self._compute_position_bias())
        return self._cached_bias[1]

    def _compute_position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.heads)
        bias = table[self.relative_position_index.view(-1)].view(n, n, self.heads).permute(2, 0, 1)
        bias = bias.contiguous()  # else the mask built from it is strided too, and attention copies it
        return 16 * torch.sigmoid(bias)

    def _bias_source_key(self) -> tuple | None:
        """What the position bias is computed from: (storage, version) of each tensor, and the autocast
        state; None when a tensor has no version counter (created under inference_mode): no caching."""
        sources = [*self.cpb_mlp.parameters(), self.relative_coords_table, self.relative_position_index]
        if any(t.is_inference() for t in sources):
            return None
        device = self.relative_coords_table.device.type
        autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device)
        return (autocast, *((t.data_ptr(), t.dtype, t._version) for t in sources))

    def train(self, mode: bool = True) -> "WindowAttention":
        self._cached_bias = None
        return super().train(mode)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (num_windows*B, N, C); mask: (num_windows, N, N) additive, or None."""
        windows, n, channels = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        if isinstance(self.qkv, nn.Linear):
            qkv = F.linear(x, self.qkv.weight, bias)
        else:  # an int8 (dynamically quantized) layer keeps its weight packed: apply it, then the bias
            qkv = self.qkv(x) + bias
        qkv = qkv.view(windows, n, 3, self.heads, -1)
        q, k = self._scaled_unit_query_key(qkv[:, :, :2])
        v = qkv[:, :, 2].transpose(1, 2)  # (windows, heads, N, d), as q and k
        attn_bias = self.position_bias().to(q.dtype)
        if mask is not None:
            attn_bias = attn_bias + mask.to(q.dtype).unsqueeze(1)  # (groups, heads, N, N)
        if exporting():
            out = exportable_attention(q, k, v, attn_bias if mask is not None else attn_bias.unsqueeze(0))
        elif mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.unsqueeze(0), scale=1.0)
        else:
            groups = mask.shape[0]
            # One call per image: all images share the mask, and repeating it for the batch would copy it.
            out = torch.cat([
                F.scaled_dot_product_attention(q[i : i + groups], k[i : i + groups], v[i : i + groups], attn_mask=attn_bias, scale=1.0)
                for i in range(0, windows, groups)
            ]) if windows > groups else F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(windows, n, channels))

    def _scaled_unit_query_key(self, qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """qk: (windows, N, 2, heads, d) -> q / |q| * temperature and k / |k|, each (windows, heads, N, d).

        One norm and one division for both (F.normalize semantics: norms clamped at 1e-12); the temperature
        divides q's norms, so that cos-sim * scale needs no extra pass over q."""
        norms = torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min(1e-12)
        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp().view(1, 1, self.heads, 1)
        unit = qk / norms
        return (unit[:, :, 0] * scale).transpose(1, 2), unit[:, :, 1].transpose(1, 2)


def exportable_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v for (windows, heads, N, d) inputs and a (groups, heads, N, N) bias shared by
    every image (windows = batch * groups): what `scaled_dot_product_attention(scale=1)` computes, written
    out for export: one graph for any batch size (no loop over images), and an output layout that does
    not change when the exporter decomposes the attention."""
    groups = bias.shape[0]
    per_image = (-1, groups, *q.shape[1:])  # (B, groups, heads, N, d)
    logits = q.view(per_image) @ k.view(per_image).transpose(-2, -1) + bias
    return (logits.softmax(dim=-1) @ v.view(per_image)).flatten(0, 1)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*H/w*W/w, w*w, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B*H/w*W/w, w*w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shift_mask(padded_h: int, padded_w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(nW, N, N) additive mask keeping attention inside each region of a cyclically shifted map.

    Cached per map size and device (it depends on nothing else): every shifted block of a stage shares it.
    While exporting (`upocr.export`) the mask is built inside the graph, from the (symbolic) map size."""
    if exporting():
        return _region_mask(padded_h, padded_w, window, shift).to(device)
    return _cached_shift_mask(padded_h, padded_w, window, shift, device)


@lru_cache(maxsize=32)
def _cached_shift_mask(padded_h: int, padded_w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    # Built outside inference mode, so that a mask first made at inference also serves training.
    with torch.inference_mode(False):
        return _region_mask(padded_h, padded_w, window, shift).to(device)


def _region_mask(padded_h: int, padded_w: int, window: int, shift: int) -> torch.Tensor:
    # The shifted map's 3 x 3 regions: per axis, [0, n - window) -> 0, [n - window, n - shift) -> 1, the last
    # `shift` -> 2. Built from comparisons of positions (no Python slicing by size), so that an ONNX trace
    # keeps the map size symbolic: the export takes any height and width.
    def axis(n: int) -> torch.Tensor:
        positions = torch.arange(n)
        return (positions >= n - window).long() + (positions >= n - shift).long()

    regions = (axis(padded_h).view(-1, 1) * 3 + axis(padded_w).view(1, -1)).view(1, padded_h, padded_w, 1)
    ids = window_partition(regions, window).squeeze(-1)  # (nW, N)
    different = ids.unsqueeze(1) != ids.unsqueeze(2)
    return torch.zeros(different.shape).masked_fill(different, SHIFT_MASK_VALUE)


class SwinV2Block(nn.Module):
    """Res-post-norm block: x + DropPath(norm1(attn(x))), then x + DropPath(norm2(mlp(x)))."""

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        window: int,
        pretrained_window: int,
        shifted: bool,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        cpb_hidden: int = 512,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2 if shifted else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim=dim, heads=heads, window=window, pretrained_window=pretrained_window, cpb_hidden=cpb_hidden)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        ws = self.window
        pad_b, pad_r = (-h) % ws, (-w) % ws
        y = x.view(b, h, w, c)
        if pad_b or pad_r or exporting():  # F.pad copies even when it pads nothing; an export pads always,
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))  # since its padding depends on the (symbolic) size
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shift_mask(hp, wp, ws, self.shift, x.device)
        y = window_reverse(self.attn(window_partition(y, ws), mask), ws, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)
        x = x + self.drop_path(self.norm1(y))
        return x + self.drop_path(self.norm2(self.mlp(x)))


def swin_blocks(
    *,
    dim: int,
    depth: int,
    heads: int,
    window: int,
    pretrained_window: int,
    mlp_ratio: float,
    drop_path: list[float],
    cpb_hidden: int,
) -> nn.ModuleList:
    """`depth` blocks at one resolution, alternating plain and shifted windows."""
    return nn.ModuleList(
        SwinV2Block(
            dim=dim,
            heads=heads,
            window=window,
            pretrained_window=pretrained_window,
            shifted=i % 2 == 1,
            mlp_ratio=mlp_ratio,
            drop_path=drop_path[i],
            cpb_hidden=cpb_hidden,
        )
        for i in range(depth)
    )


def space_to_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/2, W/2, 4C), sub-pixels in the order (0,0), (1,0), (0,1), (1,1) as (dy, dx)."""
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)


def channels_to_space(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 4C) -> (B, 2H, 2W, C): the exact inverse of `space_to_channels`."""
    b, h, w, c4 = x.shape
    x = x.view(b, h, w, 2, 2, c4 // 4)  # channel group g = 2*dx + dy
    return x.permute(0, 1, 4, 2, 3, 5).reshape(b, 2 * h, 2 * w, c4 // 4)  # -> (B, H, dy, W, dx, C)


def swin_stages(
    *,
    dims: list[int],
    depths: tuple[int, ...],
    heads: tuple[int, ...],
    window: int,
    pretrained_window: int,
    drop_path_rate: float,
    mlp_ratio: float,
    cpb_hidden: int,
) -> list[nn.ModuleList]:
    """The blocks of every stage, drop path rising linearly from 0 to `drop_path_rate` over all blocks."""
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [
        swin_blocks(
            dim=dim,
            depth=depth,
            heads=stage_heads,
            window=window,
            pretrained_window=pretrained_window,
            mlp_ratio=mlp_ratio,
            drop_path=rates[start : start + depth],
            cpb_hidden=cpb_hidden,
        )
        for dim, depth, stage_heads, start in zip(dims, depths, heads, starts)
    ]


class PatchMerging(nn.Module):
    """Halve the resolution, double the channels: 2x2 neighbours concatenated -> Linear -> LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        return self.norm(self.reduction(space_to_channels(x).flatten(1, 2)))


class PatchSplit(nn.Module):
    """Double the resolution, halve the channels: the inverse arrangement of PatchMerging.

    The C channels of a token are read as 4 groups of C/4, one per sub-pixel (g0 -> (0,0), g1 -> (1,0),
    g2 -> (0,1), g3 -> (1,1)), then Linear(C/4 -> C/2) and LayerNorm.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.upsample = nn.Linear(dim // 4, dim // 2, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = channels_to_space(x.view(b, h, w, c))
        return self.norm(self.upsample(x.flatten(1, 2)))


def init_swin_weights(module: nn.Module) -> None:
    """Original init: trunc-normal Linear weights, zero biases, unit LayerNorms, then every block's
    norm1/norm2 zeroed so each residual block starts as the identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, SwinV2Block):
            for norm in (m.norm1, m.norm2):
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)
