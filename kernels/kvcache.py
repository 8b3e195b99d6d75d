"""A layer's KV cache as a plan sets it: precision, the scales it keeps, the CFG half it stores.

    KVSpec(fmt, keep, cfg_shared)   one layer's decisions
    KeepRule(sinks, recent)         for the queries of scale k the layer keeps the first `sinks`
                                    scales and the `recent` latest (k among them); a scale is
                                    never stored twice and is freed after the last scale that reads it
    PlannedKVCache(patch_nums, spec)   the cache (litevar.models.core.attention's `attend` protocol)

Each scale's keys and values are written once, as a segment in the layer's format
(kernels/kvquant.py); a CFG-shared layer (ASC) stores the conditional half only, since it never
reads the unconditional one. A call gets the kept segments as one buffer in the compute dtype,
assembled for that call and freed after it (`gather`: the only full-precision copy, one layer's
kept keys at a time), with `ctx.parts` naming the scales it holds, so that windowed backends
(kernels/mdwa.py) place their windows on the right keys. Evicting a scale is the same attention
as an EMPTY window on that part in every later scale (tests/test_kvcache.py checks it); the
planner writes those EMPTY windows into a plan that evicts, and Plan.validate refuses a plan whose
windows read an evicted scale.

`cache_bytes` / `gather_bytes` give the bytes this cache holds and assembles, exactly;
`held_bytes` / `written_bytes` split the former at the transformer phase's peak (the last scale,
where a quantized or evicting cache is freed layer by layer as its last call ends): the memory
model (profiler.costmodel) uses the same formulas. The profiler measures the loss of a format
with `FakeQuantKV` (keys and values as the cache would return them, teacher-forced) and that of
a keep rule with `eviction_windows` (its EMPTY windows).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from litevar.kernels.kvquant import KV_FP, KVFormat, Segment, get_kv_format, quantize_segment, segment_bytes
from litevar.models.core.attention import AttnCall, DenseAttention, KVCache, ScaleLayout, attend_scales
from litevar.models.core.errors import UserError


@dataclass(frozen=True)
class KeepRule:
    """The scales a layer keeps for the queries of scale k: 0..sinks-1 and k-recent+1..k
    (recent None: every scale)."""

    sinks: int = 0
    recent: int | None = None

    def __post_init__(self):
        if self.sinks < 0 or (self.recent is not None and self.recent < 1):
            raise UserError(f"KV keep rule sinks={self.sinks}, recent={self.recent}: use sinks >= 0 and recent >= 1 "
                            "(the scale being generated is always kept), or recent null to keep every scale")

    @property
    def keeps_all(self) -> bool:
        return self.recent is None

    def parts(self, k: int) -> tuple[int, ...]:
        """The scales read by the queries of scale k."""
        if self.recent is None:
            return tuple(range(k + 1))
        return tuple(j for j in range(k + 1) if j < self.sinks or j > k - self.recent)

    def evicted(self, k: int) -> tuple[int, ...]:
        return tuple(j for j in range(k + 1) if j not in self.parts(k))

    def last_reader(self, j: int, num_scales: int) -> int:
        """The last query scale that reads scale j."""
        if self.recent is None or j < self.sinks:
            return num_scales - 1
        return min(num_scales - 1, j + self.recent - 1)

    def to_dict(self) -> dict:
        return {"sinks": self.sinks, "recent": self.recent}

    def name(self) -> str:
        return "all" if self.recent is None else f"s{self.sinks}r{self.recent}"


@dataclass(frozen=True)
class KVSpec:
    """One layer's KV-cache decisions."""

    fmt: KVFormat = KV_FP
    keep: KeepRule = field(default_factory=KeepRule)
    cfg_shared: bool = False

    def __post_init__(self):
        object.__setattr__(self, "fmt", get_kv_format(self.fmt))

    @property
    def preallocated(self) -> bool:
        """A float cache that keeps every scale: one buffer for every token of the schedule, handed
        out as views and held until the generation ends (the model's own KVCache, or a CFG-shared
        layer's half cache)."""
        return not self.fmt.quantized and self.keep.keeps_all

    @property
    def plain(self) -> bool:
        """Nothing planned: the model's own KVCache does."""
        return not self.fmt.quantized and self.keep.keeps_all and not self.cfg_shared


@dataclass
class QuantizedBlock:
    """The kept scales of a quantized cache as one block, as the Triton kernel reads it
    (kernels.mdwa_triton.mdwa_attention_kvq): codes (B, H, L_kept, c or c // 2), K scales and zeros
    (B, H, parts, c), V scales and zeros (B, H, L_kept), all contiguous."""

    bits: int
    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor
    k_zero: torch.Tensor
    v_scale: torch.Tensor
    v_zero: torch.Tensor

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in dataclasses.astuple(self)[1:])


class PlannedKVCache:
    """The `attend` protocol of litevar.models.core.attention for one layer and one generation."""

    def __init__(self, patch_nums, spec: KVSpec):
        self.layout, self.spec = ScaleLayout(tuple(patch_nums)), spec
        self.segments: dict[int, Segment] = {}
        # float, every scale kept (a CFG-shared layer's half cache): preallocated, handed out as views
        self.arena = KVCache(self.layout.L) if spec.preallocated else None

    def attend(self, backend, q_BHlc, k_BHlc, v_BHlc, ctx: AttnCall) -> torch.Tensor:
        if self.arena is not None:
            k_BHLc, v_BHLc = self.arena.append(*self._rows(k_BHlc, v_BHlc, ctx))
            return backend(q_BHlc, k_BHLc, v_BHLc, ctx)
        if ctx.scale in self.segments:
            raise RuntimeError(f"KV cache of layer {ctx.layer}: scale {ctx.scale} written twice (reset the cache "
                               "between generations)")
        self.segments[ctx.scale] = quantize_segment(*self._rows(k_BHlc, v_BHlc, ctx), self.spec.fmt)
        parts = self.spec.keep.parts(ctx.scale)
        call = dataclasses.replace(ctx, parts=None if len(parts) == ctx.scale + 1 else parts)
        o_BHlc = None
        if self.spec.fmt.quantized and hasattr(backend, "attend_quantized"):  # a kernel that reads the codes
            o_BHlc = backend.attend_quantized(q_BHlc, lambda: self.quantized_block(parts), call)
        if o_BHlc is None:
            k_BHLc, v_BHLc = self.gather(parts, q_BHlc.dtype)
            o_BHlc = backend(q_BHlc, k_BHLc, v_BHLc, call)
        for j in [j for j in self.segments if self.spec.keep.last_reader(j, len(self.layout.patch_nums)) <= ctx.scale]:
            del self.segments[j]  # no later scale reads it
        return o_BHlc

    def attend_scales(self, backend, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall, scales: range) -> torch.Tensor:
        """Teacher forcing (every scale at once, nothing stored): the attention the cache gives,
        keys and values quantized per scale's segment as written and each scale's queries over the
        scales it keeps (ctx.parts)."""
        if self.spec.fmt.quantized:
            k_BHLc, v_BHLc = fake_quantize_scales(k_BHLc, v_BHLc, ctx.layout, scales[-1] + 1, self.spec.fmt)
        if self.spec.keep.keeps_all:
            return attend_scales(backend, q_BHlc, k_BHLc, v_BHLc, ctx, scales)
        lay, offset, outs = ctx.layout, ctx.layout.begin[scales[0]], []
        for si in scales:
            parts = self.spec.keep.parts(si)
            idx = torch.cat([torch.arange(lay.begin[j], lay.end[j], device=k_BHLc.device) for j in parts])
            call = dataclasses.replace(ctx, scale=si, parts=None if len(parts) == si + 1 else parts)
            q = q_BHlc[:, :, lay.begin[si] - offset:lay.end[si] - offset]
            outs.append(backend(q, k_BHLc[:, :, idx], v_BHLc[:, :, idx], call))
        return torch.cat(outs, dim=2)

    def _rows(self, k_BHlc, v_BHlc, ctx: AttnCall):
        """The rows stored: the conditional half only when CFG-shared (ASC never reads the other)."""
        if not self.spec.cfg_shared:
            return k_BHlc, v_BHlc
        if not ctx.cfg_batch or k_BHlc.shape[0] != 2 * ctx.cfg_batch:
            raise RuntimeError(f"layer {ctx.layer}: a CFG-shared KV cache needs the CFG-doubled batch "
                               f"(cfg_batch {ctx.cfg_batch}, {k_BHlc.shape[0]} rows)")
        return k_BHlc[:ctx.cfg_batch], v_BHlc[:ctx.cfg_batch]

    def gather(self, parts, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept segments' keys and values, in order, as one (B, H, L_kept, c) buffer each,
        each segment dequantized straight into its slice."""
        segs = [self.segments[j] for j in parts]
        if len(segs) == 1:
            return segs[0].dequantize(dtype)
        B, H, _, _ = segs[0].k.shape
        L = sum(s.tokens for s in segs)
        k, v = (torch.empty(B, H, L, segs[0].head_dim, dtype=dtype, device=segs[0].k.device) for _ in "kv")
        a = 0
        for s in segs:
            s.dequantize_into(k[:, :, a:a + s.tokens], v[:, :, a:a + s.tokens])
            a += s.tokens
        return k, v

    def quantized_block(self, parts) -> QuantizedBlock:
        segs = [self.segments[j] for j in parts]
        cat = lambda xs: torch.cat(xs, 2).contiguous()  # noqa: E731
        return QuantizedBlock(self.spec.fmt.storage_bits, cat([s.k for s in segs]), cat([s.v for s in segs]),
                              cat([s.k_scale for s in segs]), cat([s.k_zero for s in segs]),
                              cat([s.v_scale for s in segs])[..., 0].contiguous(),
                              cat([s.v_zero for s in segs])[..., 0].contiguous())

    def nbytes(self) -> int:
        if self.arena is not None:
            return sum(x.numel() * x.element_size() for x in (self.arena.k_BHLc, self.arena.v_BHLc) if x is not None)
        return sum(s.nbytes() for s in self.segments.values())


def set_kv_caches(attn_modules, patch_nums, specs: dict[int, KVSpec]) -> None:
    """Give each block's attention module (a family's attention_modules, in block order) the cache
    its spec says (a plain spec, or none: the model's own)."""
    import functools
    for layer, attn in enumerate(attn_modules):
        spec = specs.get(layer, KVSpec())
        attn.kv_factory = None if spec.plain else functools.partial(PlannedKVCache, tuple(patch_nums), spec)


def reads_codes(spec: KVSpec) -> bool:
    """A block whose attention should run on the MDWA backend (kernels.mdwa.make_mdwa_backend) so
    that, on CUDA, the Triton kernel reads its quantized cache directly."""
    return spec.fmt.quantized


def spec_rows(spec: KVSpec, batch: int) -> int:
    """Batch rows a layer's cache stores for `batch` images (CFG doubles them unless shared)."""
    return batch if spec.cfg_shared else 2 * batch


def cache_bytes(patch_nums, spec: KVSpec, batch: int, heads: int, head_dim: int, fp_bytes: int,
                at_scale: int | None = None) -> int:
    """Bytes one layer's cache holds while the queries of `at_scale` (default: the last) attend."""
    k = len(patch_nums) - 1 if at_scale is None else at_scale
    if spec.preallocated:  # every token of the schedule
        return segment_bytes(spec_rows(spec, batch), heads, sum(p * p for p in patch_nums), head_dim, spec.fmt,
                             fp_bytes)
    return sum(segment_bytes(spec_rows(spec, batch), heads, patch_nums[j] ** 2, head_dim, spec.fmt, fp_bytes)
               for j in spec.keep.parts(k))


def held_bytes(patch_nums, spec: KVSpec, batch: int, heads: int, head_dim: int, fp_bytes: int) -> int:
    """Bytes one layer's cache holds at the transformer phase's peak, while another layer's
    queries of the last scale attend. A preallocated float cache holds every token until the
    generation ends. Any other holds the segments the last scale reads but its own: that one is
    written by the layer's own last call, and every segment is freed after that call (no later
    scale reads it), so layers before the attending one hold nothing then and later ones have
    not written it yet (`written_bytes`)."""
    if spec.preallocated:
        return cache_bytes(patch_nums, spec, batch, heads, head_dim, fp_bytes)
    last = len(patch_nums) - 1
    return sum(segment_bytes(spec_rows(spec, batch), heads, patch_nums[j] ** 2, head_dim, spec.fmt, fp_bytes)
               for j in spec.keep.parts(last) if j != last)


def written_bytes(patch_nums, spec: KVSpec, batch: int, heads: int, head_dim: int, fp_bytes: int) -> int:
    """Bytes the layer's own last-scale call adds to `held_bytes` while it attends (its last
    scale's segment; 0 for a preallocated float cache, whose held bytes count every token).

    The caches' bytes at the transformer phase's peak are at most the sum of every layer's held
    bytes plus one layer's written bytes and gathered buffer: exactly that when the layer with the
    largest of these comes first, as when every layer has the same spec."""
    if spec.preallocated:
        return 0
    last = len(patch_nums) - 1
    return segment_bytes(spec_rows(spec, batch), heads, patch_nums[last] ** 2, head_dim, spec.fmt, fp_bytes)


def gather_bytes(patch_nums, spec: KVSpec, batch: int, heads: int, head_dim: int, act_bytes: int,
                 at_scale: int | None = None) -> int:
    """Bytes of the buffer a call assembles from the kept segments (0 for a float cache that
    keeps every scale, a preallocated one handing out views, and for a single float segment)."""
    k = len(patch_nums) - 1 if at_scale is None else at_scale
    parts = spec.keep.parts(k)
    if spec.preallocated or (not spec.fmt.quantized and len(parts) == 1):  # views of the float cache
        return 0
    tokens = sum(patch_nums[j] ** 2 for j in parts)
    return segment_bytes(spec_rows(spec, batch), heads, tokens, head_dim, KV_FP, act_bytes)


class FakeQuantKV:
    """An attention backend over keys and values as a cache in `fmt` returns them: each scale's
    segment quantized and dequantized (the same quantizer, per segment), then `inner` (default
    dense). Per call or teacher-forced over every scale at once: the emulation whose loss the
    profiler's sensitivity stage measures."""

    def __init__(self, fmt: KVFormat | str, inner=None):
        self.fmt, self.inner = get_kv_format(fmt), inner or DenseAttention()

    def __call__(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall) -> torch.Tensor:
        layout, si = ctx.key_layout()
        return self.inner(q_BHlc, *fake_quantize_scales(k_BHLc, v_BHLc, layout, si + 1, self.fmt), ctx)

    def attend_scales(self, q_BHlc, k_BHLc, v_BHLc, ctx: AttnCall, scales: range) -> torch.Tensor:
        k_BHLc, v_BHLc = fake_quantize_scales(k_BHLc, v_BHLc, ctx.layout, scales[-1] + 1, self.fmt)
        return attend_scales(self.inner, q_BHlc, k_BHLc, v_BHLc, ctx, scales)


def fake_quantize_scales(k_BHLc, v_BHLc, layout: ScaleLayout, scales: int, fmt: KVFormat):
    """Keys and values of the first `scales` scales of `layout` as a cache in `fmt` returns them:
    each scale's segment quantized and dequantized on its own."""
    from litevar.kernels.kvquant import fake_quantize_kv
    k_out, v_out = torch.empty_like(k_BHLc), torch.empty_like(v_BHLc)
    for j in range(scales):
        b, e = layout.begin[j], layout.end[j]
        k_out[:, :, b:e], v_out[:, :, b:e] = fake_quantize_kv(k_BHLc[:, :, b:e], v_BHLc[:, :, b:e], fmt)
    return k_out, v_out


def eviction_windows(patch_nums, heads: int, keep: dict[int, KeepRule]):
    """litevar.kernels.windows.WindowConfig giving each layer of `keep` the attention of its keep rule:
    EMPTY on every evicted (query scale, key scale), FULL elsewhere."""
    from litevar.kernels.windows import EMPTY, FULL, WindowConfig
    S = len(patch_nums)
    widths = {}
    for layer, rule in keep.items():
        w = torch.full((heads, S, S), FULL, dtype=torch.int32)
        for k in range(S):
            for j in rule.evicted(k):
                w[:, k, j] = EMPTY
        widths[layer] = w
    return WindowConfig(tuple(patch_nums), widths=widths)
