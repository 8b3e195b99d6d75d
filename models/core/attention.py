"""The one attention interface of the VAR transformer.

Every attention call of the model, teacher-forced or autoregressive, is the same call: the
queries of one scale attend to the keys and values of every scale up to and including it
(block-causal across scales, bidirectional inside a scale; at inference that is the whole
KV cache, with no mask). A backend receives

    q_BHlc  (B, H, l, c)  queries of scale `si` (l = patch_nums[si] ** 2)
    k_BHLc  (B, H, L, c)  keys of scales 0..si (L = sum of their squares)
    v_BHLc  (B, H, L, c)
    ctx     AttnCall: layer index, scale index, token layout, softmax scale, CFG batch size

and returns o_BHlc (B, H, l, c). Per-head windows, CFG sharing and quantized QK plug in as
backends (`set_attention_backend`) without touching the model code.

A KV cache either returns the keys and values of every scale so far (`append`, KVCache) or, when a
plan sets how it stores them (quantized, some scales evicted, the unconditional half not stored),
runs the call itself (`attend(backend, q, k_new, v_new, ctx)`): it then hands the backend only the
key scales it kept, named by `ctx.parts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ScaleLayout:
    """Token layout of a schedule: scale si owns tokens [begin[si], end[si]). Scales are squares of
    side patch_nums[si], or, when `hw` is given (an aspect-ratio schedule), hw[si] = (rows, columns);
    then patch_nums holds the rows, and kernels that assume squares refuse the layout."""

    patch_nums: tuple[int, ...]
    hw: tuple[tuple[int, int], ...] | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        """Tokens per scale."""
        if self.hw is None:
            return tuple(pn * pn for pn in self.patch_nums)
        return tuple(h * w for h, w in self.hw)

    @property
    def begin(self) -> tuple[int, ...]:
        return tuple(e - n for e, n in zip(self.end, self.sizes))

    @property
    def end(self) -> tuple[int, ...]:
        ends, total = [], 0
        for n in self.sizes:
            total += n
            ends.append(total)
        return tuple(ends)

    @property
    def L(self) -> int:
        return self.end[-1]


@dataclass(frozen=True)
class AttnCall:
    """What a backend knows about one call, besides the tensors."""

    layer: int  # block index
    scale: int  # scale index si (0-based)
    layout: ScaleLayout
    softmax_scale: float
    cfg_batch: int = 0  # B of the conditional half when the batch is CFG-doubled, else 0
    parts: tuple[int, ...] | None = None  # the key scales given, in order (None: every scale 0..scale)

    def key_layout(self) -> tuple[ScaleLayout, int]:
        """(layout, scale) of the keys as given: the keys of `parts` in order, the query scale last."""
        if self.parts is None:
            return self.layout, self.scale
        hw = None if self.layout.hw is None else tuple(self.layout.hw[j] for j in self.parts)
        return ScaleLayout(tuple(self.layout.patch_nums[j] for j in self.parts), hw), len(self.parts) - 1


class AttentionBackend(Protocol):
    def __call__(self, q_BHlc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor,
                 ctx: AttnCall) -> torch.Tensor: ...


def attend_scales(backend: AttentionBackend, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall, scales: range) -> torch.Tensor:
    """Queries of several consecutive scales (teacher forcing): the backend's own multi-scale
    path when it has one, else one call per scale. q starts at the first token of scales[0]."""
    if len(scales) > 1 and hasattr(backend, "attend_scales"):
        return backend.attend_scales(q_BHlc, k_BHLc, v_BHLc, ctx, scales)
    return attend_per_scale(backend, q_BHlc, k_BHLc, v_BHLc, ctx, scales)


def attend_per_scale(backend: AttentionBackend, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall, scales: range) -> torch.Tensor:
    """One backend call per scale: its queries against the keys of every scale up to it."""
    offset, outs = ctx.layout.begin[scales[0]], []
    for si in scales:
        b, e = ctx.layout.begin[si] - offset, ctx.layout.end[si] - offset
        call = AttnCall(ctx.layer, si, ctx.layout, ctx.softmax_scale, ctx.cfg_batch)
        end = ctx.layout.end[si]
        outs.append(backend(q_BHlc[:, :, b:e], k_BHLc[:, :, :end], v_BHLc[:, :, :end], call))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class DenseAttention:
    """Reference backend: dense scaled-dot-product attention over every visible key."""

    max_masked_L = 4096  # teacher forcing with one masked call up to this many tokens

    def __call__(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall) -> torch.Tensor:
        return F.scaled_dot_product_attention(q_BHlc, k_BHLc, v_BHLc, scale=ctx.softmax_scale)

    def attend_scales(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall, scales: range) -> torch.Tensor:
        """All scales from 0 at once (training): the last scale sees every key, so it runs
        unmasked; the scales before it run as one call with a block-causal boolean mask when
        their L is small."""
        if scales[0] != 0 or ctx.layout.end[scales[-1]] > self.max_masked_L:
            return attend_per_scale(self, q_BHlc, k_BHLc, v_BHLc, ctx, scales)
        head, last = scales[:-1], scales[-1]
        L, Lh = ctx.layout.end[last], ctx.layout.begin[last]  # all tokens; those before the last scale
        o_last = F.scaled_dot_product_attention(q_BHlc[:, :, Lh:L], k_BHLc[:, :, :L], v_BHLc[:, :, :L],
                                                scale=ctx.softmax_scale)
        if not head:
            return o_last
        lvl = torch.repeat_interleave(torch.arange(len(head), device=q_BHlc.device),
                                      torch.tensor(ctx.layout.sizes[:len(head)], device=q_BHlc.device))
        mask_LL = lvl[:, None] >= lvl[None, :]
        o_head = F.scaled_dot_product_attention(q_BHlc[:, :, :Lh], k_BHLc[:, :, :Lh], v_BHLc[:, :, :Lh],
                                                attn_mask=mask_LL, scale=ctx.softmax_scale)
        return torch.cat([o_head, o_last], dim=2)


class KVCache:
    """Per-layer K/V for one generation: preallocated to the full L, filled scale by scale."""

    def __init__(self, L: int):
        self.L = L
        self.k_BHLc: torch.Tensor | None = None
        self.v_BHLc: torch.Tensor | None = None
        self.len = 0

    def append(self, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, l, c = k_BHlc.shape
        if self.k_BHLc is None or self.k_BHLc.shape[0] != B or self.k_BHLc.dtype != k_BHlc.dtype:
            self.k_BHLc = k_BHlc.new_empty(B, H, self.L, c)
            self.v_BHLc = v_BHlc.new_empty(B, H, self.L, c)
            self.len = 0
        if self.len + l > self.L:
            raise RuntimeError(f"KV cache overflow: {self.len} + {l} tokens > L = {self.L}")
        self.k_BHLc[:, :, self.len:self.len + l] = k_BHlc
        self.v_BHLc[:, :, self.len:self.len + l] = v_BHlc
        self.len += l
        return self.k_BHLc[:, :, :self.len], self.v_BHLc[:, :, :self.len]

    def reset(self) -> None:
        self.k_BHLc = self.v_BHLc = None
        self.len = 0


def set_attention_backend(model_or_modules, backend: AttentionBackend, layers=None) -> None:
    """Route the attention of `layers` (block indices; default all) of a model (through its family's
    attention_modules) or of the blocks' attention modules in order, through `backend`."""
    attn_modules = model_or_modules
    if hasattr(model_or_modules, "family_name"):
        from litevar.models.core.family import family_of_model
        attn_modules = family_of_model(model_or_modules).attention_modules(model_or_modules)
    for i, attn in enumerate(attn_modules):
        if layers is None or i in layers:
            attn.backend = backend
