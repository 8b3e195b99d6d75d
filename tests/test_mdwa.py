"""MDWA backends (kernels/mdwa.py, kernels/mdwa_triton.py) against the masked reference.

Tolerances: torch paths in float32 vs a float64 reference, max error relative to max |ref|
<= 1e-5. Triton: float32 same 1e-5, float16 and bfloat16 2e-2 against a float64
reference computed from the same rounded inputs. QKV8 (int8 Q, K): Triton vs the
emulated torch path 1e-4, and SQNR vs float attention >= 30 dB.

Triton tests (names contain "triton") run in this process on CUDA, else in a child pytest
process with TRITON_INTERPRET=1 (test_triton_kernels_under_interpreter). FlexAttention
compiles once per shape on CPU (~15 s): two compiled shapes in this module.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from litevar.kernels.mdwa import (
    CFGShared,
    FlexMDWA,
    LayerOptions,
    MaskedReference,
    TritonMDWA,
    flex_block_mask,
    flex_exact,
    make_mdwa_backend,
)
from litevar.kernels.quant import fake_quant_qk, quantize_qk_int8, sqnr
from litevar.kernels.select import KernelChoice, triton_runs_on
from litevar.kernels.windows import FULL, WindowConfig, WindowFamily, dense_mask, mask_mod_fn, max_width
from litevar.models.core.attention import AttnCall, DenseAttention, ScaleLayout
from litevar.models.core.errors import UserError
from tests.triton_child import run_triton_tests_in_child

SEED = int.from_bytes(os.urandom(4), "little")
SCHEDULES = [(1, 2, 3, 4, 5, 6), (1, 2, 3, 5, 7)]
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
triton_here = pytest.mark.skipif(not triton_runs_on(DEVICE),
                                 reason="Triton needs CUDA or TRITON_INTERPRET=1 (child process)")


def _rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _random_config(rng: random.Random, pn, layers, H, family=WindowFamily.BAND) -> WindowConfig:
    """Random per-(layer, head, scale, part) widths, some FULL, some at the maximum."""
    S = len(pn)
    widths = {}
    for layer in layers:
        w = torch.full((H, S, S), FULL, dtype=torch.int32)
        for h in range(H):
            for k in range(S):
                for j in range(k + 1):
                    top = max_width(pn[j], family)
                    w[h, k, j] = rng.choice([FULL, 0, min(1, top), rng.randint(0, top), top])
        widths[layer] = w
    return WindowConfig(pn, family, widths)


def _inputs(B, H, layout: ScaleLayout, scale: int, c: int, dtype=torch.float32, seed=SEED):
    g = torch.Generator().manual_seed(seed)
    n, L = layout.patch_nums[scale] ** 2, layout.end[scale]
    q = torch.randn(B, H, n, c, generator=g).to(dtype)
    k = (torch.randn(B, H, L, c, generator=g) + torch.randn(c, generator=g)).to(dtype)  # K offset
    v = torch.randn(B, H, L, c, generator=g).to(dtype)
    return q, k, v


def _manual(q, k, v, mask, scale):
    """float64 softmax attention with -inf outside the mask."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return (s.masked_fill(~mask, float("-inf")).softmax(-1) @ v.double())


def _draw(salt: int):
    rng = random.Random(SEED * 100 + salt)
    pn = rng.choice(SCHEDULES)
    layout = ScaleLayout(pn)
    return rng, pn, layout, rng.randint(len(pn) - 2, len(pn) - 1), rng.randint(1, 3), rng.randint(1, 3)


@pytest.mark.parametrize("family", list(WindowFamily))
def test_reference_is_minus_inf_masked_softmax(family):
    rng, pn, layout, k, B, H = _draw(1)
    cfg = _random_config(rng, pn, [2], H, family)
    q, kk, v = _inputs(B, H, layout, k, 24, torch.float64)
    ctx = AttnCall(layer=2, scale=k, layout=layout, softmax_scale=0.3)
    out = MaskedReference(cfg)(q, kk, v, ctx)
    w = cfg.scale_widths(2, k)
    mask = torch.ones(H, q.shape[2], kk.shape[2], dtype=torch.bool) if w is None else \
        dense_mask(layout, k, w, family)
    torch.testing.assert_close(out, _manual(q, kk, v, mask, 0.3), rtol=1e-12, atol=1e-12)


def test_full_windows_equal_dense_attention():
    rng, pn, layout, k, B, H = _draw(2)
    S = len(pn)
    cfg = WindowConfig(pn, WindowFamily.BAND, {0: torch.full((H, S, S), FULL, dtype=torch.int32)})
    q, kk, v = _inputs(B, H, layout, k, 16)
    ctx = AttnCall(0, k, layout, 0.25)
    dense = DenseAttention()(q, kk, v, ctx)
    for backend in (MaskedReference(cfg), FlexMDWA(cfg, dense_below=0)):
        torch.testing.assert_close(backend(q, kk, v, ctx), dense, rtol=0, atol=0)
    assert dense_mask(layout, k, torch.full((H, k + 1), FULL), WindowFamily.BAND).all()


def _block_mask_as_dense(bm, n: int, L: int, mask_dense: torch.Tensor) -> torch.Tensor:
    """The (query, key) pairs a FlexAttention BlockMask keeps: full blocks, plus the mask_mod
    inside partial blocks (mask_dense: the mask_mod evaluated densely)."""
    bq, bk = bm.BLOCK_SIZE
    H, nQ = bm.kv_num_blocks.shape[1:]
    blocks = []
    for num, idx in ((bm.kv_num_blocks, bm.kv_indices), (bm.full_kv_num_blocks, bm.full_kv_indices)):
        sel = torch.zeros(H, nQ, idx.shape[-1], dtype=torch.bool)
        for h in range(H):
            for qb in range(nQ):
                sel[h, qb, idx[0, h, qb, :num[0, h, qb]].long()] = True
        blocks.append(sel.repeat_interleave(bq, 1).repeat_interleave(bk, 2)[:, :n, :L])
    partial, full = blocks
    assert not (partial & full).any()
    return full | (partial & mask_dense)


@pytest.mark.parametrize("family", list(WindowFamily))
def test_flex_block_mask_keeps_exactly_the_window(family):
    """The BlockMask (block lists + mask_mod) keeps exactly dense_mask; no compile needed."""
    for salt in range(4):
        rng, pn, layout, k, B, H = _draw(10 + salt)
        cfg = _random_config(rng, pn, [0], H, family)
        w = cfg.scale_widths(0, k)
        if w is None:
            continue
        n, L = pn[k] ** 2, layout.end[k]
        bs = rng.choice([8, 16, 32])
        bm = flex_block_mask(layout, k, w, family, bs)
        mm = mask_mod_fn(layout, k, w, family, pad_to=bs)(
            None, torch.arange(H)[:, None, None], torch.arange(n)[None, :, None],
            torch.arange(L)[None, None, :])
        kept = _block_mask_as_dense(bm, n, L, mm)
        assert torch.equal(kept, dense_mask(layout, k, w, family)), (SEED, pn, k, bs)


@pytest.mark.parametrize("family", list(WindowFamily))
def test_flex_backend_matches_reference(family):
    """One compiled shape per family (B=2, H=3, c=16, last scale of (1, 2, 3, 4, 5, 6)), with
    k and v strided like the model's KV-cache slices."""
    if not flex_exact():
        pytest.skip("compiled FlexAttention is wrong on this CPU (kernels.mdwa.flex_exact): the runtime skips it")
    rng = random.Random(SEED + 3)
    pn = SCHEDULES[0]
    layout, k, H = ScaleLayout(pn), len(pn) - 1, 3
    cfg = _random_config(rng, pn, [0, 1], H, family)
    cfg.widths[1][:, k, 5] = 1  # at least one windowed part
    q, kk, v = _inputs(2, H, layout, k, 16)
    kk, v = (torch.cat((x, x[:, :, :7]), 2)[:, :, :layout.L] for x in (kk, v))  # KV-cache views
    backend = FlexMDWA(cfg, block_size=16, dense_below=0)
    for layer in (0, 1):  # same shape: one compile, two block masks
        ctx = AttnCall(layer, k, layout, 0.3)
        ref = MaskedReference(cfg)(q.double(), kk.double(), v.double(), ctx)
        assert _rel_err(backend(q, kk, v, ctx), ref) <= 1e-5, SEED
    assert len(backend._masks) == sum(cfg.scale_widths(l, k) is not None for l in (0, 1))


def test_flex_dense_below_uses_the_same_window():
    rng, pn, layout, k, B, H = _draw(4)
    cfg = _random_config(rng, pn, [0], H)
    q, kk, v = _inputs(B, H, layout, k, 16)
    ctx = AttnCall(0, k, layout, 0.3)
    out = FlexMDWA(cfg, dense_below=10 ** 9)(q, kk, v, ctx)  # masked SDPA path, no compile
    ref = MaskedReference(cfg)(q.double(), kk.double(), v.double(), ctx)
    assert _rel_err(out, ref) <= 1e-5
    int8 = {0: LayerOptions(qk_int8=True)}
    out8 = FlexMDWA(cfg, int8, dense_below=10 ** 9)(q, kk, v, ctx)
    assert _rel_err(out8, MaskedReference(cfg, int8)(q, kk, v, ctx)) <= 1e-5


def test_qk_int8_reference_path_sqnr_and_smoothing():
    rng, pn, layout, k, B, H = _draw(5)
    cfg = _random_config(rng, pn, [0], H)
    q, kk, v = _inputs(B, H, layout, k, 32)
    ctx = AttnCall(0, k, layout, 0.3)
    ref = MaskedReference(cfg)(q, kk, v, ctx)
    int8 = MaskedReference(cfg, {0: LayerOptions(qk_int8=True)})
    out = int8(q, kk, v, ctx)
    assert sqnr(ref, out) >= 30, (SEED, sqnr(ref, out))
    # K smoothing: a per-channel shift of K changes neither the codes' use nor the output
    shifted = int8(q, kk + 5 * torch.randn(32), v, ctx)
    assert sqnr(out, shifted) >= 60
    q_i8, qs, k_i8, ks = quantize_qk_int8(q, kk)
    assert q_i8.dtype == k_i8.dtype == torch.int8
    assert qs.shape == q.shape[:3] and ks.shape == kk.shape[:3]
    fq, fk = fake_quant_qk(q, kk)
    assert (fk.mean(2).abs() < ks.max() / 2).all()  # k was centred before quantizing


def test_cfg_sharing_reuses_conditional_half():
    rng, pn, layout, k, B, H = _draw(6)
    cfg = _random_config(rng, pn, [0, 1], H)
    q, kk, v = _inputs(2 * B, H, layout, k, 16)
    seen = []

    def spy(q_, k_, v_, ctx_):
        seen.append((q_.shape[0], ctx_.cfg_batch))
        return MaskedReference(cfg)(q_, k_, v_, ctx_)

    asc = CFGShared(spy, layers=[1])
    ctx1 = AttnCall(1, k, layout, 0.3, cfg_batch=B)
    out = asc(q, kk, v, ctx1)
    cond = MaskedReference(cfg)(q[:B], kk[:B], v[:B], AttnCall(1, k, layout, 0.3))
    assert torch.equal(out[:B], cond) and torch.equal(out[B:], cond)
    assert seen == [(B, 0)]
    out0 = asc(q, kk, v, AttnCall(0, k, layout, 0.3, cfg_batch=B))  # layer 0 not shared
    torch.testing.assert_close(out0, MaskedReference(cfg)(q, kk, v, AttnCall(0, k, layout, 0.3)))
    assert not torch.equal(out0[:B], out0[B:])
    with pytest.raises(ValueError, match="cfg_batch"):
        asc(*(torch.cat((x, x[:1])) for x in (q, kk, v)), ctx1)


def test_make_backend_choices_and_layout_check(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = WindowConfig.uniform((1, 2, 3, 4, 5, 6), [0], heads=2, width=2)
    # FlexAttention where the probe finds it right on this CPU, else the masked reference (test_isa.py)
    assert isinstance(make_mdwa_backend(cfg, KernelChoice.AUTO, "cpu"), FlexMDWA if flex_exact() else MaskedReference)
    assert isinstance(make_mdwa_backend(cfg, KernelChoice.TORCH, "cpu"), MaskedReference)
    assert isinstance(make_mdwa_backend(cfg, "emulated", "cpu"), MaskedReference)
    asc = make_mdwa_backend(cfg, "torch", "cpu", {0: LayerOptions(share_cfg=True)})
    assert isinstance(asc, CFGShared) and asc.layers == {0}
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        make_mdwa_backend(cfg, KernelChoice.TRITON, "cpu")
    q, kk, v = _inputs(1, 2, ScaleLayout((1, 2, 3)), 2, 8)
    with pytest.raises(UserError, match="patch_nums"):
        MaskedReference(cfg)(q, kk, v, AttnCall(0, 2, ScaleLayout((1, 2, 3)), 1.0))


# ------------------------------------------------------------------------------------------
# Triton: in this process on CUDA; without CUDA under the interpreter in a child process


def _triton_case(salt: int):
    rng, pn, layout, k, B, H = _draw(salt)
    cfg = _random_config(rng, pn, [0], H)
    cfg.widths[0][:, k, k] = rng.randint(0, 3)  # the own scale always windowed
    cfg.validate()
    c = rng.choice([16, 24, 64])
    blocks = rng.choice([(16, 16), (16, 32), (32, 16)])
    return cfg, layout, k, B, H, c, blocks


def _on_device(*xs):
    return tuple(x.to(DEVICE) for x in xs)


@triton_here
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2),
                                       (torch.float16, 2e-2)])
def test_triton_matches_reference(dtype, tol):
    """bf16 and fp16 keep 8 and 11 mantissa bits: the inputs' rounding alone moves attention outputs
    by ~2**-9 and ~2**-12 relative, and p is rounded to v's dtype before its dot; 2e-2 is ~10x
    bf16's share. Under the interpreter a bf16 dot runs on its rounded operands in float32
    (kernels.gemm_triton.DOT_F32), since the interpreter's own bf16 dot is wrong."""
    from litevar.kernels.mdwa_triton import mdwa_attention
    cfg, layout, k, B, H, c, (bm, bn) = _triton_case(7)
    q, kk, v = _inputs(B, H, layout, k, c, dtype)
    w = cfg.scale_widths(0, k)
    out = mdwa_attention(*_on_device(q, kk, v), layout, k, w.to(DEVICE), 0.3, block_m=bm, block_n=bn)
    ref = _manual(q, kk, v, dense_mask(layout, k, w, WindowFamily.BAND), 0.3)
    assert out.dtype == dtype and _rel_err(out.cpu(), ref) <= tol, (SEED, _rel_err(out.cpu(), ref))


@triton_here
def test_triton_full_windows_and_strided_inputs():
    from litevar.kernels.mdwa_triton import mdwa_attention
    layout = ScaleLayout((1, 2, 3, 5, 7))
    q, kk, v = _inputs(1, 2, layout, 4, 16)
    kk_big = torch.cat((kk, torch.randn_like(kk)), 2)[:, :, :layout.L]  # a KV-cache-like view
    out = mdwa_attention(*_on_device(q, kk_big, v), layout, 4, torch.full((2, 5), FULL), 0.5,
                         block_m=16, block_n=16)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.double(), kk.double(), v.double(), scale=0.5)
    assert _rel_err(out.cpu(), dense) <= 1e-5


@triton_here
def test_triton_qk_int8():
    from litevar.kernels.mdwa_triton import mdwa_attention
    cfg, layout, k, B, H, c, (bm, bn) = _triton_case(8)
    q, kk, v = _inputs(B, H, layout, k, c)
    ctx = AttnCall(0, k, layout, 0.3)
    out = mdwa_attention(*_on_device(q, kk, v), layout, k, cfg.scale_widths(0, k).to(DEVICE), 0.3,
                         qk_int8=True, block_m=bm, block_n=bn).cpu()
    emulated = MaskedReference(cfg, {0: LayerOptions(qk_int8=True)})(q, kk, v, ctx)
    assert _rel_err(out, emulated) <= 1e-4
    assert sqnr(MaskedReference(cfg)(q, kk, v, ctx), out) >= 30, SEED


@triton_here
def test_triton_backend_and_launcher_checks():
    from litevar.kernels.mdwa_triton import mdwa_attention
    cfg, layout, k, B, H, c, _ = _triton_case(9)
    backend = make_mdwa_backend(cfg, KernelChoice.TRITON, DEVICE)
    assert isinstance(backend, TritonMDWA)
    q, kk, v = _inputs(B, H, layout, k, c)
    ctx = AttnCall(0, k, layout, 0.3)
    ref = MaskedReference(cfg)(q.double(), kk.double(), v.double(), ctx)
    assert _rel_err(backend(*_on_device(q, kk, v), ctx).cpu(), ref) <= 1e-5
    with pytest.raises(ValueError, match="needs k and v of shape"):
        mdwa_attention(q, kk[:, :, :-1], v, layout, k, torch.zeros(H, k + 1), 0.3)
    with pytest.raises(ValueError, match="widths"):
        mdwa_attention(q, kk, v, layout, k, torch.zeros(H, k), 0.3)
    with pytest.raises(UserError, match="band"):
        TritonMDWA(_random_config(random.Random(0), layout.patch_nums, [0], H, WindowFamily.SPATIAL))


@triton_here
def test_triton_offsets_past_2_31():
    """Batch rows 2**28 elements apart: b * stride passes 2**31 at row 8 (int32 would wrap)."""
    from litevar.kernels.mdwa_triton import mdwa_attention
    layout, k, B, H, c = ScaleLayout((1, 2, 3)), 2, 9, 2, 16
    l, L, stride = 9, layout.L, 2 ** 28
    base = torch.empty((B - 1) * stride + H * (l + 2 * L) * c, dtype=torch.float16, device=DEVICE)
    views = [base.as_strided((B, H, n, c), (stride, n * c, c, 1), off)
             for n, off in ((l, 0), (L, H * l * c), (L, H * (l + L) * c))]
    for x in views:
        x.copy_(torch.randn(x.shape, dtype=torch.float16))
    q, kk, v = views
    out = mdwa_attention(q, kk, v, layout, k, torch.full((H, k + 1), FULL), 0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float().cpu(), kk.float().cpu(), v.float().cpu(),
                                                           scale=0.5)
    assert _rel_err(out.float().cpu(), ref) <= 2e-3


@triton_here
def test_triton_qk8_reaches_the_kernel_on_dense_calls(monkeypatch):
    """QK8 without windows runs the INT8 kernel (every part whole), not fake quant; calls below
    min_queries take masked SDPA."""
    import litevar.kernels.mdwa_triton as MT
    calls = []
    real = MT.mdwa_attention
    monkeypatch.setattr(MT, "mdwa_attention", lambda *a, **k: calls.append(a[5]) or real(*a, **k))
    layout, k, H = ScaleLayout((1, 2, 3, 5, 7)), 4, 2
    q, kk, v = _inputs(1, H, layout, k, 32)
    ctx = AttnCall(0, k, layout, 0.3)
    dense = WindowConfig(layout.patch_nums)
    out = TritonMDWA(dense, {0: LayerOptions(qk_int8=True)})(*_on_device(q, kk, v), ctx).cpu()
    assert len(calls) == 1 and (calls[0] == FULL).all()
    emulated = MaskedReference(dense, {0: LayerOptions(qk_int8=True)})(q, kk, v, ctx)
    assert _rel_err(out, emulated) <= 1e-4
    TritonMDWA(dense, {0: LayerOptions(qk_int8=True)}, min_queries=64)(*_on_device(q, kk, v), ctx)
    assert len(calls) == 1  # 49 queries < 64: masked SDPA


def test_qk_quantizer_in_chunks_equals_one_pass():
    """K is quantized a chunk of keys at a time (bounded float32 temporaries), exactly as in one pass."""
    q, kk = torch.randn(2, 3, 9, 16), torch.randn(2, 3, 100, 16, dtype=torch.bfloat16)
    one = quantize_qk_int8(q, kk, chunk=10 ** 6)
    for got, want in zip(quantize_qk_int8(q, kk, chunk=7), one):
        assert torch.equal(got, want)


def test_triton_kernels_under_interpreter():
    """This module's Triton tests, in a child process with TRITON_INTERPRET=1."""
    run_triton_tests_in_child(__file__)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("qk_int8", [False, True])
def test_triton_cuda_matches_reference(qk_int8):
    from litevar.kernels.mdwa_triton import mdwa_attention
    pn = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
    layout, k, H = ScaleLayout(pn), len(pn) - 1, 4
    cfg = WindowConfig.uniform(pn, [0], H, 60)
    q, kk, v = (x.cuda() for x in _inputs(2, H, layout, k, 64, torch.bfloat16))
    w = cfg.scale_widths(0, k).cuda()
    out = mdwa_attention(q, kk, v, layout, k, w, 0.125, qk_int8=qk_int8)
    rows = slice(0, 512)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, rows].float(), kk.float(), v.float(), scale=0.125,
        attn_mask=dense_mask(layout, k, w, WindowFamily.BAND, (0, 512)))
    assert sqnr(ref, out[:, :, rows].float()) >= (30 if qk_int8 else 40)


def test_bench_windows_keep_about_ten_percent():
    from litevar.kernels.bench_attention import format_table, windows_for_kept
    from litevar.kernels.windows import kept_fraction
    from litevar.models.var.schedules import SCHEDULES
    for res in (256, 1024, 2048):
        cfg = windows_for_kept(SCHEDULES[res], heads=2)
        k = len(SCHEDULES[res]) - 1
        layout = ScaleLayout(SCHEDULES[res])
        assert 0.095 <= kept_fraction(layout, k, cfg.scale_widths(0, k)) <= 0.12, res
    table = format_table([{"backend": "flex MDWA", "resolution": 256, "ms": 1.5, "max_err": 1e-7}])
    assert "flex MDWA" in table and "1.00e-07" in table
