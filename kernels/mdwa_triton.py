"""Triton MDWA kernel: FlashAttention-style forward over the band window's key ranges only.

One program per (query tile, batch x head). For each part j the tile's allowed keys form one
contiguous range (windows.band_tile_ranges), computed in the kernel from the per-head
half-width table; the kernel loops over key blocks inside those ranges only, masks elements of
partial blocks with -inf and keeps an online softmax. No mask is materialised.

Optional INT8 QK (QKV8): q and k arrive as int8 per-token codes with float scales, the QK
product runs as an int8 dot with int32 accumulation. The kernel function is wrapped by
triton.jit on first use, so TRITON_INTERPRET is read at launch time, not at import.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from litevar.kernels.gemm_triton import dot_f32
from litevar.kernels.quant import quantize_qk_int8
from litevar.kernels.select import interpret_mode
from litevar.kernels.windows import EMPTY, FULL
from litevar.models.core.attention import ScaleLayout

LOG2E = 1.4426950408889634


@triton.jit
def _load_kv(base, offs_n, offs_d, stride_n, stride_d, mask_n, d_ok, SC, ZE, KV_BITS: tl.constexpr,
             PER_CHANNEL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A [BLOCK_N, BLOCK_D] float32 tile of K or V: float as stored, or codes (int8, or INT4 packed
    two per byte along the head dim) dequantized with scales and zeros per channel (K: SC / ZE
    point at the part's [BLOCK_D] row) or per token (V: at the part's tokens)."""
    if KV_BITS == 16:
        return tl.load(base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d,
                       mask=mask_n[:, None] & d_ok[None, :], other=0).to(tl.float32)
    if KV_BITS == 4:
        offs_p = tl.arange(0, BLOCK_D // 2)
        p = tl.load(base + offs_n[:, None] * stride_n + offs_p[None, :] * stride_d,
                    mask=mask_n[:, None] & (offs_p[None, :] < BLOCK_D // 2), other=0).to(tl.int32)
        codes = tl.interleave(((p & 0xF) ^ 8) - 8, (((p >> 4) & 0xF) ^ 8) - 8).to(tl.float32)
    else:
        codes = tl.load(base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d,
                        mask=mask_n[:, None] & d_ok[None, :], other=0).to(tl.float32)
    if PER_CHANNEL:
        sc = tl.load(SC + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        ze = tl.load(ZE + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        return codes * sc[None, :] + ze[None, :]
    sc = tl.load(SC + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    ze = tl.load(ZE + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    return codes * sc[:, None] + ze[:, None]


def _mdwa_fwd(Q, K, V, O, QS, KS, W, PB, PN, KSC, KZE, VSC, VZE,
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              n_q, L, H, num_parts, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, QK_INT8: tl.constexpr, PRECISION: tl.constexpr,
              KV_BITS: tl.constexpr, DOT_F32: tl.constexpr = False):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # 64-bit from here: b * stride_qb passes 2**31 at 2048 px
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ok = offs_m < n_q
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
    q = tl.load(q_ptrs + offs_d[None, :] * stride_qd, mask=q_ok[:, None] & d_ok[None, :], other=0)
    if QK_INT8:
        q_scale = tl.load(QS + pid_bh * n_q + offs_m, mask=q_ok, other=0.0) * qk_scale
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    q_first = pid_m * BLOCK_M
    q_last = tl.minimum(q_first + BLOCK_M, n_q) - 1
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for j in range(0, num_parts):
        r = tl.load(W + h * num_parts + j)  # FULL already replaced by n_j
        begin = tl.load(PB + j)
        n_j = tl.load(PN + j)
        # tile key range [lo, hi) of part j (windows.band_tile_ranges), absolute indices
        lo = begin + tl.maximum((2 * q_first + 1) * n_j // (2 * n_q) - r, 0)
        hi = begin + tl.minimum((2 * q_last + 1) * n_j // (2 * n_q) + r + 1, n_j)
        centre_m = (2 * offs_m + 1) * n_j // (2 * n_q)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            kv_ok = offs_n < hi
            if KV_BITS == 16:
                k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                            mask=kv_ok[:, None] & d_ok[None, :], other=0)
                v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                            mask=kv_ok[:, None] & d_ok[None, :], other=0)
            else:  # quantized cache: dequantized in registers, never stored in float
                ks = (pid_bh * num_parts + j) * HEAD_DIM
                k = _load_kv(k_base, offs_n, offs_d, stride_kn, stride_kd, kv_ok, d_ok, KSC + ks, KZE + ks,
                             KV_BITS, True, BLOCK_N, BLOCK_D).to(Q.dtype.element_ty)
                vs = pid_bh * L
                v = _load_kv(v_base, offs_n, offs_d, stride_vn, stride_vd, kv_ok, d_ok, VSC + vs, VZE + vs,
                             KV_BITS, False, BLOCK_N, BLOCK_D).to(Q.dtype.element_ty)
            if QK_INT8:
                k_scale = tl.load(KS + pid_bh * L + offs_n, mask=kv_ok, other=0.0)
                s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)
                s = s * q_scale[:, None] * k_scale[None, :]
            elif DOT_F32:  # the interpreter's bf16 dot is wrong (gemm_triton.bf16_dot_exact)
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee") * qk_scale
            else:
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            dist = tl.abs((offs_n - begin)[None, :] - centre_m[:, None])
            s = tl.where(kv_ok[None, :] & (dist <= r), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if DOT_F32:
                pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om
    tl.store(o_ptrs + offs_d[None, :] * stride_od, acc.to(O.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@functools.cache
def _kernel(interpret: bool):
    """triton.jit(_mdwa_fwd), built once per interpret mode (the mode is read at decoration)."""
    return triton.jit(_mdwa_fwd)


def _check(q_BHlc, k_BHLc, v_BHLc, layout: ScaleLayout, scale: int, widths_Hp) -> None:
    B, H, l, c = q_BHlc.shape
    L = layout.end[scale]
    if k_BHLc.shape != (B, H, L, c) or v_BHLc.shape != k_BHLc.shape:
        raise ValueError(f"mdwa_attention: q {tuple(q_BHlc.shape)} needs k and v of shape "
                         f"{(B, H, L, c)} (scale {scale} of {layout.patch_nums}); got "
                         f"{tuple(k_BHLc.shape)} and {tuple(v_BHLc.shape)}")
    if l != layout.patch_nums[scale] ** 2:
        raise ValueError(f"mdwa_attention: {l} queries, scale {scale} has "
                         f"{layout.patch_nums[scale] ** 2}")
    if tuple(widths_Hp.shape) != (H, scale + 1):
        raise ValueError(f"mdwa_attention: widths {tuple(widths_Hp.shape)}, expected {(H, scale + 1)}")
    if q_BHlc.dtype not in (torch.float32, torch.bfloat16, torch.float16) or \
            k_BHLc.dtype != q_BHlc.dtype or v_BHLc.dtype != q_BHlc.dtype:
        raise ValueError(f"mdwa_attention: q, k, v must share one of float32/bfloat16/float16, "
                         f"got {q_BHlc.dtype}, {k_BHLc.dtype}, {v_BHLc.dtype}")
    if c > 256:
        raise ValueError(f"mdwa_attention: head dim {c} > 256 is not supported")
    if 4 * l * max(layout.patch_nums[:scale + 1]) ** 2 >= 2 ** 31:
        raise ValueError(f"mdwa_attention: {l} queries overflow the kernel's int32 index math")


@functools.lru_cache(maxsize=4096)
def _part_tables(patch_nums: tuple[int, ...], scale: int, widths: tuple[tuple[int, ...], ...],
                 device: str) -> tuple[torch.Tensor, ...]:
    """int32 (widths with FULL -> n_j and EMPTY -> -2**30, an empty range, part begins, part sizes)
    for the kernel, cached."""
    layout = ScaleLayout(patch_nums)
    n_p = torch.tensor([s * s for s in patch_nums[:scale + 1]], dtype=torch.int32)
    w = torch.tensor(widths, dtype=torch.int32)
    w = torch.where(w == FULL, n_p[None, :], torch.where(w == EMPTY, -(2 ** 30), w.clamp(max=int(n_p.max()))))
    begin = torch.tensor(layout.begin[:scale + 1], dtype=torch.int32)
    return tuple(t.contiguous().to(device) for t in (w, begin, n_p))


def mdwa_config(dtype: torch.dtype, head_dim: int, qk_int8: bool, kv_bits: int = 16) -> dict:
    """Tiles and warps of a launch (the configurations kernels/compile_check.py builds for sm_80 and
    sm_90). BLOCK_D: the head dim padded to a power of two, at least 32 with INT8 QK (an int8 dot
    needs K >= 32), else 16. fp32 runs its dots in TF32 on the GPU (IEEE under the interpreter,
    where the tests compare with SDPA in full precision) on smaller tiles."""
    block_d = max(32 if qk_int8 else 16, triton.next_power_of_2(head_dim))
    if interpret_mode():
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, PRECISION="ieee" if dtype == torch.float32 else "tf32")
    if kv_bits < 16:  # K and V tiles dequantized in registers: narrow key blocks keep them in bounds
        return dict(BLOCK_M=128, BLOCK_N=16 if kv_bits == 8 else 32, BLOCK_D=block_d, PRECISION="tf32",
                    num_warps=8, num_stages=2)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=block_d, PRECISION="tf32", num_warps=4, num_stages=2)
    return dict(BLOCK_M=128 if block_d <= 64 else 64, BLOCK_N=64, BLOCK_D=block_d, PRECISION="tf32",
                num_warps=8 if block_d <= 64 else 4, num_stages=2)


def mdwa_attention(q_BHlc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor,
                   layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor, softmax_scale: float,
                   qk_int8: bool = False, block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """o_BHlc of band-windowed attention of the queries of `scale` (see module docstring); tiles
    from mdwa_config unless block_m / block_n are given."""
    _check(q_BHlc, k_BHLc, v_BHLc, layout, scale, widths_Hp)
    B, H, l, c = q_BHlc.shape
    L = layout.end[scale]
    o_BHlc = torch.empty_like(q_BHlc)
    w, begin, n_p = _part_tables(layout.patch_nums, scale, tuple(map(tuple, widths_Hp.tolist())),
                                 str(q_BHlc.device))
    if qk_int8:
        q_in, qs_BHl, k_in, ks_BHL = quantize_qk_int8(q_BHlc, k_BHLc)
    else:
        q_in, k_in, qs_BHl, ks_BHL = q_BHlc, k_BHLc, q_BHlc, k_BHLc  # scale pointers unused
    cfg = mdwa_config(q_BHlc.dtype, c, qk_int8)
    cfg.update({k: v for k, v in (("BLOCK_M", block_m), ("BLOCK_N", block_n)) if v is not None})
    grid = (triton.cdiv(l, cfg["BLOCK_M"]), B * H)
    _kernel(interpret_mode())[grid](
        q_in, k_in, v_BHLc, o_BHlc, qs_BHl, ks_BHL, w, begin, n_p, qs_BHl, qs_BHl, qs_BHl, qs_BHl,
        *q_in.stride(), *k_in.stride(), *v_BHLc.stride(), *o_BHlc.stride(),
        l, L, H, scale + 1, softmax_scale * LOG2E, HEAD_DIM=c, QK_INT8=qk_int8, KV_BITS=16,
        DOT_F32=dot_f32(q_BHlc.dtype), **cfg)
    return o_BHlc


def mdwa_attention_kvq(q_BHlc: torch.Tensor, block, layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor,
                       softmax_scale: float, block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """o_BHlc of band-windowed attention over a quantized KV cache read as it is stored
    (kernels.kvcache.QuantizedBlock: int8 or packed INT4 codes of the kept scales, K scales and
    zeros per part and channel, V's per token); layout / scale: the keys' (AttnCall.key_layout)."""
    B, H, l, c = q_BHlc.shape
    L = layout.end[scale]
    if block.k.shape[:3] != (B, H, L) or block.bits not in (4, 8):
        raise ValueError(f"mdwa_attention_kvq: a {block.bits}-bit block of shape {tuple(block.k.shape)} for queries "
                         f"{tuple(q_BHlc.shape)} and {L} keys")
    o_BHlc = torch.empty_like(q_BHlc)
    w, begin, n_p = _part_tables(layout.patch_nums, scale, tuple(map(tuple, widths_Hp.tolist())),
                                 str(q_BHlc.device))
    cfg = mdwa_config(q_BHlc.dtype, c, False, block.bits)
    cfg.update({k: v for k, v in (("BLOCK_M", block_m), ("BLOCK_N", block_n)) if v is not None})
    grid = (triton.cdiv(l, cfg["BLOCK_M"]), B * H)
    _kernel(interpret_mode())[grid](
        q_BHlc, block.k, block.v, o_BHlc, q_BHlc, q_BHlc, w, begin, n_p,
        block.k_scale, block.k_zero, block.v_scale, block.v_zero,
        *q_BHlc.stride(), *block.k.stride(), *block.v.stride(), *o_BHlc.stride(),
        l, L, H, scale + 1, softmax_scale * LOG2E, HEAD_DIM=c, QK_INT8=False, KV_BITS=block.bits,
        DOT_F32=dot_f32(q_BHlc.dtype), **cfg)
    return o_BHlc
