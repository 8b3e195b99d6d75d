"""@triton.jit kernels of the quantized GEMMs. Launchers and torch references: kernels/gemm.py.

All kernels compute C[M, N] = A[M, K] @ W[N, K]^T with W stored row-major as w_NK (packed
INT4: [N, K // 2] uint8, low nibble = even k). Integer kernels accumulate in int32 and fuse
the dequant into the epilogue:

    C = acc * s_a[m] * s_w[n]  (+ z_a[m] * wsum[n] for asymmetric activations)  (+ bias[n])

DOT_F32 (a constexpr of the float kernels) runs tl.dot on the same operands, rounded to their
dtype, upcast to float32: the launchers set it only under the interpreter for bfloat16, whose dot
there multiplies the raw 16-bit patterns (bf16_dot_exact), so that every other step of a bf16
kernel (loads, dequantization to bf16, masks, the output cast) is still checked on the CPU.

Importing this module requires triton; TRITON_INTERPRET is read when it is first imported.
"""
import functools

import torch
import triton
import triton.language as tl

from litevar.kernels.select import interpret_mode


@triton.jit
def _dot_probe(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
    r = tl.arange(0, N)
    a = tl.load(a_ptr + r[:, None] * N + r[None, :])
    b = tl.load(b_ptr + r[:, None] * N + r[None, :])
    tl.store(c_ptr + r[:, None] * N + r[None, :], tl.dot(a, b))


@functools.cache
def bf16_dot_exact() -> bool:
    """Whether tl.dot on bfloat16 gives the float32 product of its operands here: a 16 x 16 product
    of bf16 values, whose products and sums of 16 are exact in float32 but for rounding (< 1e-5).
    Triton 3.9's interpreter fails it (its numpy dot multiplies the raw uint16 patterns)."""
    g = torch.Generator().manual_seed(0)
    dev = "cpu" if interpret_mode() else "cuda"
    a, b = (torch.randn(16, 16, generator=g).to(dev, torch.bfloat16) for _ in "ab")
    c = torch.empty(16, 16, device=dev)
    _dot_probe[(1,)](a, b, c, 16)
    return bool((c - a.float() @ b.float()).abs().max() < 1e-3)


def dot_f32(dtype: torch.dtype) -> bool:
    """DOT_F32 of a launch at `dtype`: only where a bf16 dot is wrong (the interpreter)."""
    return dtype == torch.bfloat16 and interpret_mode() and not bf16_dot_exact()


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program, grouped along M for L2 reuse of W tiles."""
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (pid % size_m), (pid % (GROUP_M * num_n)) // size_m


@triton.jit
def _unpack_int4_NK(p, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """uint8 [BLOCK_N, BLOCK_K // 2] -> int32 codes [BLOCK_N, BLOCK_K], k order restored."""
    p = p.to(tl.int32)
    lo = ((p & 0xF) ^ 8) - 8  # (v ^ 8) - 8 sign-extends a nibble
    hi = (((p >> 4) & 0xF) ^ 8) - 8
    return tl.interleave(lo, hi)


@triton.jit
def _tile_origin(ptr, row0, col0, stride_r, stride_c):
    """ptr moved to element (row0, col0) in 64-bit arithmetic (M * K passes 2**31 at 2048 px),
    so that the offsets inside a tile stay 32-bit."""
    return ptr + tl.cast(row0, tl.int64) * stride_r + tl.cast(col0, tl.int64) * stride_c


@triton.jit
def _dequant_store(acc, offs_m, offs_n, M, N, c_ptr, stride_cm, stride_cn,
                   sa_ptr, za_ptr, sw_ptr, wsum_ptr, bias_ptr,
                   HAS_ZA: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """Shared epilogue of the integer kernels: int32 acc -> float C tile (c_ptr at the tile origin)."""
    mask_m, mask_n = offs_m < M, offs_n < N
    s_a = tl.load(sa_ptr + offs_m, mask=mask_m, other=0.0)
    s_w = tl.load(sw_ptr + offs_n, mask=mask_n, other=0.0)
    c = acc.to(tl.float32) * s_a[:, None] * s_w[None, :]
    if HAS_ZA:
        z_a = tl.load(za_ptr + offs_m, mask=mask_m, other=0.0)
        wsum = tl.load(wsum_ptr + offs_n, mask=mask_n, other=0.0)
        c += z_a[:, None] * wsum[None, :]
    if HAS_BIAS:
        c += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    rm, rn = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def w8a8_kernel(a_ptr, w_ptr, c_ptr, sa_ptr, za_ptr, sw_ptr, wsum_ptr, bias_ptr, M, N, K,
                stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
                HAS_ZA: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """int8 A [M, K] x int8 W [N, K] -> int32, dequant + bias in the epilogue."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rm, rn = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N)
    a_ptrs = (_tile_origin(a_ptr, pid_m * BLOCK_M, 0, stride_am, 0)
              + rm[:, None] * stride_am + offs_k[None, :] * stride_ak)
    w_ptrs = (_tile_origin(w_ptr, pid_n * BLOCK_N, 0, stride_wn, 0)
              + offs_k[:, None] * stride_wk + rn[None, :] * stride_wn)  # W^T tile [K, N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & mask_k[None, :], other=0)
        w = tl.load(w_ptrs, mask=mask_k[:, None] & (offs_n[None, :] < N), other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    _dequant_store(acc, offs_m, offs_n, M, N,
                   _tile_origin(c_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, stride_cm, stride_cn), stride_cm, stride_cn,
                   sa_ptr, za_ptr, sw_ptr, wsum_ptr, bias_ptr, HAS_ZA, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit
def w4a8_kernel(a_ptr, wp_ptr, c_ptr, sa_ptr, za_ptr, sw_ptr, wsum_ptr, bias_ptr, M, N, K,
                stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
                HAS_ZA: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """int8 A [M, K] x packed INT4 W [N, K // 2], unpacked to int8 in registers (QServe style)."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 2)  # packed bytes of one K tile
    rm, rn = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N)
    a_ptrs = (_tile_origin(a_ptr, pid_m * BLOCK_M, 0, stride_am, 0)
              + rm[:, None] * stride_am + offs_k[None, :] * stride_ak)
    wp_ptrs = (_tile_origin(wp_ptr, pid_n * BLOCK_N, 0, stride_wn, 0)
               + rn[:, None] * stride_wn + offs_kp[None, :] * stride_wk)  # [N, K/2]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < K - k0), other=0)
        p = tl.load(wp_ptrs, mask=(offs_n[:, None] < N) & (offs_kp[None, :] < (K - k0) // 2),
                    other=0)
        w = _unpack_int4_NK(p, BLOCK_N, BLOCK_K).to(tl.int8)
        acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        wp_ptrs += (BLOCK_K // 2) * stride_wk
    _dequant_store(acc, offs_m, offs_n, M, N,
                   _tile_origin(c_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, stride_cm, stride_cn), stride_cm, stride_cn,
                   sa_ptr, za_ptr, sw_ptr, wsum_ptr, bias_ptr, HAS_ZA, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit
def w4a16_kernel(x_ptr, wp_ptr, c_ptr, sw_ptr, zw_ptr, bias_ptr, M, N, K,
                 stride_xm, stride_xk, stride_wn, stride_wk, stride_cm, stride_cn,
                 stride_sn, stride_sg, GROUP_SIZE: tl.constexpr,
                 HAS_ZW: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                 DOT_F32: tl.constexpr = False):
    """float X [M, K] x INT4 W [N, K // 2] dequantized (q * s + z per group) to X's dtype.

    A K tile lies inside one group (the launcher picks BLOCK_K dividing GROUP_SIZE), so each tile
    loads one scale (and zero) per output channel: a vector, not a [BLOCK_N, BLOCK_K] gather."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 2)
    mask_n = offs_n < N
    rm, rn = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N)
    x_ptrs = (_tile_origin(x_ptr, pid_m * BLOCK_M, 0, stride_xm, 0)
              + rm[:, None] * stride_xm + offs_k[None, :] * stride_xk)
    wp_ptrs = (_tile_origin(wp_ptr, pid_n * BLOCK_N, 0, stride_wn, 0)
               + rn[:, None] * stride_wn + offs_kp[None, :] * stride_wk)
    s_ptrs = sw_ptr + offs_n * stride_sn
    z_ptrs = zw_ptr + offs_n * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & mask_k[None, :], other=0.0)
        p = tl.load(wp_ptrs, mask=mask_n[:, None] & (offs_kp[None, :] < (K - k0) // 2), other=0)
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptrs + g * stride_sg, mask=mask_n, other=0.0)
        w = _unpack_int4_NK(p, BLOCK_N, BLOCK_K).to(tl.float32) * s[:, None]
        if HAS_ZW:
            w += tl.load(z_ptrs + g * stride_sg, mask=mask_n, other=0.0)[:, None]
        wx = w.to(x_ptr.dtype.element_ty)
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), tl.trans(wx.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(wx), acc)
        x_ptrs += BLOCK_K * stride_xk
        wp_ptrs += (BLOCK_K // 2) * stride_wk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    c_ptrs = (_tile_origin(c_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, stride_cm, stride_cn)
              + rm[:, None] * stride_cm + rn[None, :] * stride_cn)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & mask_n[None, :])
