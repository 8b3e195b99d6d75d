"""MDWA attention backends (LiteVAR sections 2-4) behind litevar.models.core.attention's interface.

    MaskedReference  dense SDPA with windows.dense_mask (masked scores are -inf): the reference
    FlexMDWA         FlexAttention with a block mask built arithmetically from the windows
    TritonMDWA       kernels/mdwa_triton.py (band family; imported on first use)
    CFGShared        ASC wrapper: attention of the conditional half, reused for both halves
    make_mdwa_backend(windows, choice, device, options): pick one by KernelChoice

Per-layer options (LayerOptions): qk_int8 (QKV8: int8 per-token Q and K, K smoothed by its
per-channel mean over the keys) and share_cfg (ASC). Dense SDPA, the baseline, is
litevar.models.core.attention.DenseAttention.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from litevar.kernels.quant import fake_quant_qk
from litevar.kernels.select import KernelChoice, resolve, triton_available
from litevar.kernels.windows import FULL, WindowConfig, WindowFamily, block_structure, dense_mask, mask_mod_fn
from litevar.models.core.attention import AttentionBackend, AttnCall, ScaleLayout
from litevar.models.core.device import device_of
from litevar.models.core.errors import UserError

log = logging.getLogger(__name__)
TRITON_MIN_QUERIES = 64  # AUTO: calls with fewer queries (scales up to 7x7) stay on masked SDPA


@dataclass(frozen=True)
class LayerOptions:
    """Per-layer attention options of a plan."""

    qk_int8: bool = False  # QKV8: int8 per-token Q and K (K smoothed) in the QK product
    share_cfg: bool = False  # ASC: the unconditional half reuses the conditional half's output


def _sdpa(q_BHlc, k_BHLc, v_BHLc, scale: float, mask=None, qk_int8: bool = False):
    """SDPA with an optional bool mask [H, l, L]; QKV8 emulated in float32 when qk_int8."""
    if not qk_int8:
        return F.scaled_dot_product_attention(q_BHlc, k_BHLc, v_BHLc, attn_mask=mask, scale=scale)
    q, k = fake_quant_qk(q_BHlc, k_BHLc)
    o = F.scaled_dot_product_attention(q, k, v_BHLc.to(q.dtype), attn_mask=mask, scale=scale)
    return o.to(q_BHlc.dtype)


class _WindowedBackend:
    """Shared part of the MDWA backends: windows, per-layer options, layout check."""

    def __init__(self, windows: WindowConfig, options: Mapping[int, LayerOptions] | None = None):
        self.windows = windows
        self.options = dict(options or {})

    def _widths(self, ctx: AttnCall, device) -> torch.Tensor | None:
        """int32 [H, parts given] half-widths of the call (None: dense over the keys given)."""
        if ctx.layout.patch_nums != self.windows.patch_nums:
            raise UserError(f"window config is for patch_nums {self.windows.patch_nums}, the model "
                            f"runs {ctx.layout.patch_nums}: profile windows for this schedule")
        w_Hp = self.windows.scale_widths(ctx.layer, ctx.scale)
        if w_Hp is not None and ctx.parts is not None:
            w_Hp = w_Hp[:, list(ctx.parts)]
        return None if w_Hp is None else w_Hp.to(device)

    def _int8(self, ctx: AttnCall) -> bool:
        return self.options.get(ctx.layer, LayerOptions()).qk_int8


class MaskedReference(_WindowedBackend):
    """Dense SDPA with the window's bool mask (dense_mask): masked scores are -inf."""

    def __call__(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall) -> torch.Tensor:
        w_Hp = self._widths(ctx, q_BHlc.device)
        mask = None if w_Hp is None else dense_mask(*ctx.key_layout(), w_Hp, self.windows.family)
        return _sdpa(q_BHlc, k_BHLc, v_BHLc, ctx.softmax_scale, mask, self._int8(ctx))


@functools.cache
def _compiled_flex():
    """torch.compile(flex_attention), static shapes (it recompiles per new sequence length)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_block_mask(layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor,
                    family: WindowFamily, block_size: int = 128):
    """FlexAttention BlockMask of one (layer, scale), from windows.block_structure (no L x L)."""
    from torch.nn.attention.flex_attention import BlockMask
    partial, full = block_structure(layout, scale, widths_Hp.cpu(), family, block_size, block_size)
    dev = widths_Hp.device

    def to_kv(sel_HQK):  # -> (num [1, H, nQ], indices [1, H, nQ, nKV]): selected blocks first
        num = sel_HQK.sum(-1, dtype=torch.int32)
        idx = torch.argsort((~sel_HQK).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num[None].to(dev).contiguous(), idx[None].to(dev).contiguous()

    n_q, L = layout.patch_nums[scale] ** 2, layout.end[scale]
    return BlockMask.from_kv_blocks(*to_kv(partial), *to_kv(full), BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod_fn(layout, scale, widths_Hp, family, block_size),
                                    seq_lengths=(n_q, L))


def _mask_from_mask_mod(ctx: AttnCall, w_Hp: torch.Tensor, family: WindowFamily) -> torch.Tensor:
    """bool [H, l, L] from the division-free mask_mod (cheaper than dense_mask)."""
    layout, scale = ctx.key_layout()
    n, L, dev = layout.patch_nums[scale] ** 2, layout.end[scale], w_Hp.device
    mask_mod = mask_mod_fn(layout, scale, w_Hp, family, pad_to=1)
    h, q, kv = (torch.arange(m, device=dev) for m in (w_Hp.shape[0], n, L))
    return mask_mod(None, h[:, None, None], q[None, :, None], kv[None, None, :])


class FlexMDWA(_WindowedBackend):
    """FlexAttention MDWA. Block masks are cached per (layer, scale, device); the compiled
    kernel per shape (a compile costs ~10-20 s on CPU, cached on disk by inductor). Calls with
    fewer than `dense_below` keys take masked SDPA instead (no compile; on CPU slower than flex
    per call). QKV8 is emulated here (fake-quantized Q and K)."""

    def __init__(self, windows: WindowConfig, options: Mapping[int, LayerOptions] | None = None,
                 block_size: int = 128, dense_below: int = 0):
        super().__init__(windows, options)
        self.block_size, self.dense_below = block_size, dense_below
        self._masks = {}

    def block_mask(self, ctx: AttnCall, w_Hp: torch.Tensor):
        key = (ctx.layer, ctx.scale, ctx.parts, w_Hp.device)
        if key not in self._masks:
            self._masks[key] = flex_block_mask(*ctx.key_layout(), w_Hp, self.windows.family, self.block_size)
        return self._masks[key]

    def __call__(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall) -> torch.Tensor:
        w_Hp, int8 = self._widths(ctx, q_BHlc.device), self._int8(ctx)
        if w_Hp is None or k_BHLc.shape[2] < self.dense_below:
            mask = None if w_Hp is None else _mask_from_mask_mod(ctx, w_Hp, self.windows.family)
            return _sdpa(q_BHlc, k_BHLc, v_BHLc, ctx.softmax_scale, mask, int8)
        bm = self.block_mask(ctx, w_Hp)
        q, k, v = q_BHlc, k_BHLc, v_BHLc
        if int8:
            q, k = fake_quant_qk(q_BHlc, k_BHLc)
            q, k = q.to(q_BHlc.dtype), k.to(q_BHlc.dtype)
        with torch._dynamo.config.patch(recompile_limit=256):  # one compile per scale shape
            return _compiled_flex()(q, k, v, block_mask=bm, scale=ctx.softmax_scale)


class TritonMDWA(_WindowedBackend):
    """The Triton kernel (band family). Calls of fewer than `min_queries` queries (the first
    scales: too little work for a tile) take masked SDPA; dense calls take SDPA, except with QK8,
    which runs the kernel with every part whole so that the INT8 QK product is real."""

    def __init__(self, windows: WindowConfig, options: Mapping[int, LayerOptions] | None = None,
                 min_queries: int = 0):
        super().__init__(windows, options)
        if windows.family is not WindowFamily.BAND:
            raise UserError(f"the Triton MDWA kernel runs the band family, the windows are "
                            f"{windows.family.value}: use FlexMDWA or MaskedReference")
        self.min_queries = min_queries

    def __call__(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall) -> torch.Tensor:
        from litevar.kernels.mdwa_triton import mdwa_attention
        w_Hp, int8 = self._widths(ctx, "cpu"), self._int8(ctx)  # the launcher caches its device tables
        if q_BHlc.shape[2] < self.min_queries:
            mask = None if w_Hp is None else _mask_from_mask_mod(ctx, w_Hp.to(q_BHlc.device), self.windows.family)
            return _sdpa(q_BHlc, k_BHLc, v_BHLc, ctx.softmax_scale, mask, int8)
        if w_Hp is None and not int8:
            return _sdpa(q_BHlc, k_BHLc, v_BHLc, ctx.softmax_scale)
        layout, scale = ctx.key_layout()
        if w_Hp is None:  # QK8 on a dense call: every part whole
            w_Hp = torch.full((q_BHlc.shape[1], scale + 1), FULL, dtype=torch.int32)
        return mdwa_attention(q_BHlc, k_BHLc, v_BHLc, layout, scale, w_Hp, ctx.softmax_scale, int8)

    def attend_quantized(self, q_BHlc, make_block, ctx: AttnCall) -> torch.Tensor | None:
        """Attention over a quantized KV cache read as stored (make_block() -> the cache's
        kernels.kvcache.QuantizedBlock); None for calls below min_queries, which the cache then
        runs on its dequantized keys."""
        from litevar.kernels.mdwa_triton import mdwa_attention_kvq
        if self._int8(ctx):
            raise UserError(f"block {ctx.layer}: QK8 and a quantized KV cache do not combine; re-plan")
        if q_BHlc.shape[2] < self.min_queries:
            return None
        layout, scale = ctx.key_layout()
        block = make_block()
        w_Hp = self._widths(ctx, "cpu")
        if w_Hp is None:
            w_Hp = torch.full((q_BHlc.shape[1], scale + 1), FULL, dtype=torch.int32)
        return mdwa_attention_kvq(q_BHlc, block, layout, scale, w_Hp, ctx.softmax_scale)


class CFGShared:
    """ASC: with a CFG-doubled batch, attend with the conditional half only and reuse its
    output for the unconditional half, in `layers` (None: every layer)."""

    def __init__(self, inner: AttentionBackend, layers: Collection[int] | None = None):
        self.inner, self.layers = inner, None if layers is None else frozenset(layers)

    def __call__(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall) -> torch.Tensor:
        B = ctx.cfg_batch
        if B <= 0 or (self.layers is not None and ctx.layer not in self.layers):
            return self.inner(q_BHlc, k_BHLc, v_BHLc, ctx)
        if q_BHlc.shape[0] != 2 * B:
            raise ValueError(f"CFGShared: cfg_batch {B} but the batch has {q_BHlc.shape[0]} rows "
                             f"(expected {2 * B}: conditional rows first, then unconditional)")
        o_BHlc = self.inner(q_BHlc[:B], k_BHLc[:B], v_BHLc[:B], dataclasses.replace(ctx, cfg_batch=0))
        return torch.cat((o_BHlc, o_BHlc), 0)

    def __getattr__(self, name):
        if name == "attend_quantized" and hasattr(self.inner, "attend_quantized"):
            return self._attend_quantized
        raise AttributeError(name)

    def _attend_quantized(self, q_BHlc, make_block, ctx: AttnCall) -> torch.Tensor | None:
        """A CFG-shared layer's cache holds the conditional half only: attend with it, reuse the output."""
        B = ctx.cfg_batch
        if B <= 0 or (self.layers is not None and ctx.layer not in self.layers):
            return self.inner.attend_quantized(q_BHlc, make_block, ctx)
        o_BHlc = self.inner.attend_quantized(q_BHlc[:B], make_block, dataclasses.replace(ctx, cfg_batch=0))
        return None if o_BHlc is None else torch.cat((o_BHlc, o_BHlc), 0)


FLEX_PROBE_SCHEDULE = (1, 2, 3, 4, 5, 7)  # the last scale: 49 queries over 104 keys, wrong under AVX2
FLEX_PROBE_TRIALS = 4  # the wrong outputs vary from call to call (some calls come out right)


@functools.cache
def flex_exact(device_type: str = "cpu") -> bool:
    """Whether compiled FlexAttention gives the windowed attention on this machine, probed once per
    process: FlexMDWA against the masked reference on random inputs of a small band-window case.

    Inductor's FlexAttention kernels compiled for AVX2 (ATEN_CPU_CAPABILITY=avx2: AMD Zen 2/3 and
    other CPUs without AVX-512) return wrong outputs, sometimes NaN, at some shapes (49 queries over
    104 keys in this case; 64 or 81 queries come out right). Where the probe finds that, windowed
    attention takes the masked SDPA path (slower, right), and says so once."""
    pns, H = FLEX_PROBE_SCHEDULE, 2
    S, layout = len(pns), ScaleLayout(FLEX_PROBE_SCHEDULE)
    w = torch.full((H, S, S), FULL, dtype=torch.int32)
    for k in range(S):
        w[:, k, 3:k + 1] = 2
    windows = WindowConfig(pns, WindowFamily.BAND, {0: w})
    ctx = AttnCall(0, S - 1, layout, 0.25)
    g = torch.Generator().manual_seed(0)
    for _ in range(FLEX_PROBE_TRIALS):
        q, k, v = (torch.randn(2, H, n, 16, generator=g).to(device_type) for n in (pns[-1] ** 2, layout.L, layout.L))
        err = (FlexMDWA(windows)(q, k, v, ctx) - MaskedReference(windows)(q, k, v, ctx)).abs().max().item()
        if not err <= 1e-4:  # float32 attention over unit-variance inputs rounds to ~1e-6; NaN fails too
            log.warning("compiled FlexAttention gives wrong windowed attention on this %s (largest error %.3g "
                        "in a %d-query call; inductor's AVX2 kernels do that at some shapes): windowed "
                        "attention takes the masked SDPA path instead (slower, right)", device_type, err,
                        pns[-1] ** 2)
            return False
    return True


def make_mdwa_backend(windows: WindowConfig, choice: KernelChoice | str = KernelChoice.AUTO,
                      device: torch.device | str = "cpu",
                      options: Mapping[int, LayerOptions] | None = None) -> AttentionBackend:
    """Backend for `windows` (a config without layers: dense everywhere) chosen by KernelChoice,
    wrapped in CFGShared for the layers with share_cfg. AUTO: Triton on CUDA (band family, triton installed), else
    FlexAttention; TRITON: the Triton kernel; TORCH / EMULATED: MaskedReference."""
    choice, device = KernelChoice(choice), torch.device(device)
    options = dict(options or {})
    if choice is KernelChoice.AUTO:
        use_triton = (device_of(device).triton_native and triton_available()
                      and windows.family is WindowFamily.BAND)
        if use_triton:
            backend: AttentionBackend = TritonMDWA(windows, options, TRITON_MIN_QUERIES)
        elif windows.widths and not flex_exact(device.type):  # compiled flex is wrong here: the masked path
            backend = MaskedReference(windows, options)
        else:
            backend = FlexMDWA(windows, options)
    elif choice is KernelChoice.TRITON:
        resolve(choice, device)
        backend = TritonMDWA(windows, options)
    else:
        backend = MaskedReference(windows, options)
    shared = [layer for layer, opt in options.items() if opt.share_cfg]
    log.debug("MDWA backend %s, CFG sharing in layers %s", type(backend).__name__, shared)
    return CFGShared(backend, shared) if shared else backend
