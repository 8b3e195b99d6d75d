"""Quantized GEMMs: for each format a torch reference beside its Triton launcher.

Every GEMM computes y[M, N] = x[M, K] @ w[N, K]^T (+ bias) from quantized operands:
- W8A8:  int8 a_MK x int8 w_NK -> int32, dequant (per-token x per-channel) + bias fused.
- W4A8:  as W8A8 with w packed INT4 [N, K // 2] (unpacked to int8 inside the kernel).
- W4A16: float x_MK x packed INT4 w (group-wise s, z), dequantized to x's dtype in the kernel.
- emulated: fake quant (quantize-dequantize) then a float matmul; any format, never "fast".
The `*_linear` functions add the dynamic per-token activation quantization in front.
Triton is imported only when a Triton launcher runs, so this module imports without it.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from litevar.kernels.quant import PerGroup, PerToken, dequantize, fake_quantize, quantize, unpack_int4
from litevar.kernels.select import KernelChoice, interpret_mode, resolve
from litevar.models.core.device import device_of
from litevar.models.core.errors import UserError

log = logging.getLogger(__name__)


def _triton():
    from litevar.kernels import gemm_triton  # lazy: needs triton, reads TRITON_INTERPRET once

    return gemm_triton


def _check(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...], shape: tuple) -> None:
    """Raise naming `name` when t's dtype or shape (None = any size) is wrong."""
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: dtype {t.dtype}, expected one of {dtypes}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {shape} (None = any)")


def _check_int_operands(a_MK, w, s_a_M, s_w_N, z_a_M, wsum_N, bias_N, packed: bool):
    M, K = a_MK.shape
    N = w.shape[0]
    _check("a_MK", a_MK, (torch.int8,), (None, None))
    _check("w_NK2" if packed else "w_NK", w, (torch.uint8,) if packed else (torch.int8,),
           (None, K // 2) if packed else (None, K))
    if packed and K % 2:
        raise ValueError(f"a_MK: K={K} is odd; packed INT4 weights need an even K")
    _check("s_a_M", s_a_M, (torch.float32,), (M,))
    _check("s_w_N", s_w_N, (torch.float32,), (N,))
    if (z_a_M is None) != (wsum_N is None):
        raise ValueError("z_a_M and wsum_N go together (asymmetric activations need both)")
    if z_a_M is not None:
        _check("z_a_M", z_a_M, (torch.float32,), (M,))
        _check("wsum_N", wsum_N, (torch.float32,), (N,))
    if bias_N is not None:
        _check("bias_N", bias_N, (torch.float32,), (N,))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


TRITON_MIN_M = 64  # AUTO runs smaller calls (VAR's first scales) on the torch path: too little work per tile


def gemm_config(kind: str, M: int, dtype: torch.dtype = torch.bfloat16, group_size: int | None = None) -> dict:
    """Tiles, warps and stages of a Triton GEMM launch, bucketed by M. kind: w8a8 | w4a8 | w4a16;
    dtype: the activations' (W4A16); group_size: W4A16's weight group (a K tile lies inside one).
    The compile check (kernels/compile_check.py) builds every one of these for sm_80 and sm_90:
    none spills registers or passes the shared-memory limit, and the large tiles take Hopper's
    warp-group MMA (wgmma)."""
    if interpret_mode():
        block_k = 32 if kind != "w4a16" else min(32, group_size or 32)
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=block_k, GROUP_M=4)
    if M <= 32:  # an explicit TRITON call below AUTO's threshold (mma.sync, not wgmma)
        bm, bn, bk, warps, stages = 32, 64, 64, 4, 3
    elif M <= 128:
        bm, bn, bk, warps, stages = 64, 128, 32, 4, 4
    else:
        bm, bn, bk, warps, stages = 128, 128, 32, 8, 4
    if kind == "w4a16":
        bk = min(bk, w4a16_block_k(group_size or 64))
        if dtype == torch.float32:  # tf32 dots on 4-byte tiles: smaller tiles keep registers in bounds
            bm, bn, warps, stages = min(bm, 64), 64, 4, 2
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)


def w4a16_block_k(group_size: int, largest: int = 64) -> int:
    """The largest power-of-two K tile (<= largest) inside one weight group (0: none >= 16, the dot's least)."""
    block_k = largest
    while block_k >= 16 and group_size % block_k:
        block_k //= 2
    return block_k if block_k >= 16 else 0


def use_triton(kernel: KernelChoice | str, device, M: int) -> bool:
    """Whether a GEMM of M rows runs its Triton kernel: TRITON always; AUTO on CUDA from
    TRITON_MIN_M rows up (smaller calls stay on the torch path, cuBLAS / torch._int_mm)."""
    if resolve(kernel, device) is not KernelChoice.TRITON:
        return False
    return KernelChoice(kernel) is KernelChoice.TRITON or M >= TRITON_MIN_M


# ---- integer matmul + epilogue (references) ---------------------------------------------

INT_MM_PROBE_SHAPES = ((17, 8, 16), (64, 128, 256), (256, 64, 1024))  # (M, N, K): gemv-like, mid, deep K
SPLIT_K = 1024  # float32 holds every integer up to 2**24 = SPLIT_K * 128 * 128: a K chunk's products sum exactly


@functools.cache
def int_mm_exact(device_type: str = "cpu") -> bool:
    """Whether torch._int_mm gives exact products on this machine, probed once per process and
    device type on full-range int8 operands (seeded, with rows and columns of -128 and 127, the
    extremes a saturating 16-bit pair sum gets wrong) against the int64 product.

    oneDNN's int8 GEMM on CPUs without VNNI (AVX2, AVX-512 without VNNI: AMD Zen 2/3,
    Skylake-class Xeons) sums pairs of u8 x s8 products in saturating 16-bit lanes: most outputs
    of a full-range product are wrong there, and nothing else would notice."""
    dev = device_of(device_type)
    try:
        dev.check()
    except UserError:
        return False
    g = torch.Generator().manual_seed(0)
    for M, N, K in INT_MM_PROBE_SHAPES:
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g)
        w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
        a[0], a[1], w[0], w[1] = 127, -128, 127, -128
        exact = a.long() @ w.long().t()
        if not dev.int_mm_shape_ok(M, K, N):
            continue
        got = torch._int_mm(a.to(dev.torch), w.to(dev.torch).t()).cpu().long()
        if not torch.equal(got, exact):
            wrong = (got != exact).float().mean().item()
            log.warning("torch._int_mm gives wrong int8 products on this %s (%.1f%% of a %dx%d @ %dx%d product "
                        "differ; oneDNN without VNNI sums in saturating 16-bit lanes): W8A8 and W4A8 run an exact "
                        "split-K float GEMM instead (slower, and the profiler times that)", device_type,
                        100 * wrong, M, K, K, N)
            return False
    return True


def int8_gemm_path(device_type: str = "cpu") -> str:
    """The int8 GEMM this process runs on `device_type` (recorded in profiles): torch._int_mm where
    the probe found it exact, else the exact split-K float GEMM (int_mm_float)."""
    return "torch._int_mm" if int_mm_exact(device_type) else "split-K float"


def int_mm_float(a_MK: torch.Tensor, w_NK: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [N, K]^T -> int32 [M, N], exact, through float matmuls over chunks of
    SPLIT_K columns: every partial sum of a chunk is an integer of magnitude <= 2**24, which
    float32 holds exactly whatever the order of the additions, so each chunk's result is exact;
    chunks are added in int32. float64 where float32 matmuls may run in lower precision
    (torch.set_float32_matmul_precision other than 'highest', TF32 on CUDA)."""
    lossy = torch.get_float32_matmul_precision() != "highest" or device_of(a_MK).triton_native  # TF32 on GPUs
    ftype = torch.float64 if lossy else torch.float32
    acc = torch.zeros(a_MK.shape[0], w_NK.shape[0], dtype=torch.int32, device=a_MK.device)
    for k in range(0, a_MK.shape[1], SPLIT_K):
        acc += (a_MK[:, k:k + SPLIT_K].to(ftype) @ w_NK[:, k:k + SPLIT_K].to(ftype).t()).to(torch.int32)
    return acc


def _row_major(t_RC: torch.Tensor) -> torch.Tensor:
    """t with strides (C, 1). cuBLASLt's int8 GEMM takes one layout (row-major A, B as a transposed
    row-major [N, K]) and refuses a strided activation (CUBLAS_STATUS_NOT_SUPPORTED); oneDNN's
    misreads a one-row view whose row stride is not its width, which .contiguous() leaves as is
    (a one-row tensor counts as contiguous whatever that stride)."""
    return t_RC if t_RC.stride() == (t_RC.shape[1], 1) else t_RC.clone(memory_format=torch.contiguous_format)


def int_mm(a_MK: torch.Tensor, w_NK: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [N, K]^T -> int32 [M, N], exact.

    torch._int_mm where it applies (M > 16, K and N multiples of 8) and the probe found it exact
    on this machine (int_mm_exact); otherwise the exact split-K float GEMM (int_mm_float).
    """
    M, K = a_MK.shape
    N = w_NK.shape[0]
    if not int_mm_exact(a_MK.device.type):
        return int_mm_float(a_MK, w_NK)
    a_MK, w_NK = _row_major(a_MK), _row_major(w_NK)
    if device_of(a_MK).int_mm_shape_ok(M, K, N):
        return torch._int_mm(a_MK, w_NK.t())
    pad_M, pad_K, pad_N = max(17 - M, 0), -K % 8, -N % 8  # the shapes cuBLASLt takes
    a = F.pad(a_MK, (0, pad_K, 0, pad_M))
    w = F.pad(w_NK, (0, pad_K, 0, pad_N))
    return torch._int_mm(a, w.t())[:M, :N]


def dequant_epilogue(acc_MN, s_a_M, s_w_N, z_a_M=None, wsum_N=None, bias_N=None,
                     out_dtype=torch.float32) -> torch.Tensor:
    """acc * s_a * s_w (+ z_a * wsum) (+ bias) in float32, cast to out_dtype."""
    y_MN = acc_MN.float() * s_a_M[:, None] * s_w_N[None, :]
    if z_a_M is not None:
        y_MN += z_a_M[:, None] * wsum_N[None, :]
    if bias_N is not None:
        y_MN += bias_N[None, :]
    return y_MN.to(out_dtype)


# ---- W8A8 --------------------------------------------------------------------------------

def w8a8_gemm_ref(a_MK, w_NK, s_a_M, s_w_N, z_a_M=None, wsum_N=None, bias_N=None,
                  out_dtype=torch.float32) -> torch.Tensor:
    """Torch reference of w8a8_gemm_triton."""
    _check_int_operands(a_MK, w_NK, s_a_M, s_w_N, z_a_M, wsum_N, bias_N, packed=False)
    return dequant_epilogue(int_mm(a_MK, w_NK), s_a_M, s_w_N, z_a_M, wsum_N, bias_N, out_dtype)


def _launch_int(kernel, a_MK, w, s_a_M, s_w_N, z_a_M, wsum_N, bias_N, out_dtype):
    M, K = a_MK.shape
    N = w.shape[0]
    c_MN = torch.empty(M, N, device=a_MK.device, dtype=out_dtype)
    cfg = gemm_config("w8a8" if w.dtype == torch.int8 else "w4a8", M)
    grid = (_cdiv(M, cfg["BLOCK_M"]) * _cdiv(N, cfg["BLOCK_N"]),)
    s_a_M, s_w_N = s_a_M.contiguous(), s_w_N.contiguous()  # vectors are read with stride 1
    vec = lambda v: s_w_N if v is None else v.contiguous()  # noqa: E731 (unread if HAS_* False)
    kernel[grid](a_MK, w, c_MN, s_a_M, vec(z_a_M), s_w_N, vec(wsum_N), vec(bias_N),
                 M, N, K, a_MK.stride(0), a_MK.stride(1), w.stride(0), w.stride(1),
                 c_MN.stride(0), c_MN.stride(1),
                 HAS_ZA=z_a_M is not None, HAS_BIAS=bias_N is not None, **cfg)
    return c_MN


def w8a8_gemm_triton(a_MK, w_NK, s_a_M, s_w_N, z_a_M=None, wsum_N=None, bias_N=None,
                     out_dtype=torch.float32) -> torch.Tensor:
    """int8 x int8 -> int32 Triton GEMM with fused per-token x per-channel dequant and bias."""
    _check_int_operands(a_MK, w_NK, s_a_M, s_w_N, z_a_M, wsum_N, bias_N, packed=False)
    return _launch_int(_triton().w8a8_kernel, a_MK, w_NK, s_a_M, s_w_N, z_a_M, wsum_N, bias_N,
                       out_dtype)


# ---- W4A8 --------------------------------------------------------------------------------

def w4a8_gemm_ref(a_MK, w_NK2, s_a_M, s_w_N, z_a_M=None, wsum_N=None, bias_N=None,
                  out_dtype=torch.float32) -> torch.Tensor:
    """Torch reference of w4a8_gemm_triton: unpack INT4 to int8, then as W8A8."""
    _check_int_operands(a_MK, w_NK2, s_a_M, s_w_N, z_a_M, wsum_N, bias_N, packed=True)
    acc_MN = int_mm(a_MK, unpack_int4(w_NK2))
    return dequant_epilogue(acc_MN, s_a_M, s_w_N, z_a_M, wsum_N, bias_N, out_dtype)


def w4a8_gemm_triton(a_MK, w_NK2, s_a_M, s_w_N, z_a_M=None, wsum_N=None, bias_N=None,
                     out_dtype=torch.float32) -> torch.Tensor:
    """int8 activations x packed INT4 weights (unpacked to int8 in registers), int32 accumulate."""
    _check_int_operands(a_MK, w_NK2, s_a_M, s_w_N, z_a_M, wsum_N, bias_N, packed=True)
    return _launch_int(_triton().w4a8_kernel, a_MK, w_NK2, s_a_M, s_w_N, z_a_M, wsum_N, bias_N,
                       out_dtype)


# ---- W4A16 -------------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_w4a16(x_MK, w_NK2, s_w_NG, z_w_NG, bias_N):
    M, K = x_MK.shape
    N = w_NK2.shape[0]
    _check("x_MK", x_MK, FLOAT_DTYPES, (None, None))
    _check("w_NK2", w_NK2, (torch.uint8,), (None, K // 2))
    if K % 2:
        raise ValueError(f"x_MK: K={K} is odd; packed INT4 weights need an even K")
    _check("s_w_NG", s_w_NG, (torch.float32,), (N, None))
    if K % s_w_NG.shape[1]:
        raise ValueError(f"s_w_NG: {s_w_NG.shape[1]} groups do not divide K={K}")
    if z_w_NG is not None:
        _check("z_w_NG", z_w_NG, (torch.float32,), tuple(s_w_NG.shape))
    if bias_N is not None:
        _check("bias_N", bias_N, (torch.float32,), (N,))


def w4a16_gemm_ref(x_MK, w_NK2, s_w_NG, z_w_NG=None, bias_N=None) -> torch.Tensor:
    """Torch reference of w4a16_gemm_triton: dequantize w to x's dtype, then x @ w^T."""
    _check_w4a16(x_MK, w_NK2, s_w_NG, z_w_NG, bias_N)
    K = x_MK.shape[1]
    w_NK = dequantize(unpack_int4(w_NK2), s_w_NG, z_w_NG, PerGroup(K // s_w_NG.shape[1]),
                      x_MK.dtype)
    y_MN = (x_MK @ w_NK.t()).float()
    if bias_N is not None:
        y_MN += bias_N
    return y_MN.to(x_MK.dtype)


def w4a16_gemm_triton(x_MK, w_NK2, s_w_NG, z_w_NG=None, bias_N=None) -> torch.Tensor:
    """Weight-only INT4 Triton GEMM: group-wise dequant to x's dtype inside the K loop.

    fp16/bf16 x use tensor cores directly; fp32 x runs the dot in TF32 on GPU.
    """
    _check_w4a16(x_MK, w_NK2, s_w_NG, z_w_NG, bias_N)
    M, K = x_MK.shape
    N, G = s_w_NG.shape
    if G > 1 and not interpret_mode() and not w4a16_block_k(K // G):
        raise ValueError(f"w4a16_gemm_triton: weight groups of {K // G} are smaller than the kernel's K tile "
                         "(16, the dot's least); use w4a16_gemm_ref (w4a16_linear does)")
    c_MN = torch.empty(M, N, device=x_MK.device, dtype=x_MK.dtype)
    cfg = gemm_config("w4a16", M, x_MK.dtype, K // G)
    # per-channel (G == 1): stride 0 makes every k read group 0, whatever GROUP_SIZE says
    group_size, stride_sg = (K // G, s_w_NG.stride(1)) if G > 1 else (cfg["BLOCK_K"], 0)
    grid = (_cdiv(M, cfg["BLOCK_M"]) * _cdiv(N, cfg["BLOCK_N"]),)
    _triton().w4a16_kernel[grid](
        x_MK, w_NK2, c_MN, s_w_NG, s_w_NG if z_w_NG is None else z_w_NG,
        s_w_NG if bias_N is None else bias_N.contiguous(), M, N, K,
        x_MK.stride(0), x_MK.stride(1), w_NK2.stride(0), w_NK2.stride(1),
        c_MN.stride(0), c_MN.stride(1), s_w_NG.stride(0), stride_sg, GROUP_SIZE=group_size,
        HAS_ZW=z_w_NG is not None, HAS_BIAS=bias_N is not None, DOT_F32=_triton().dot_f32(x_MK.dtype), **cfg)
    return c_MN


# ---- emulated (fake quant) ---------------------------------------------------------------

def emulated_linear(x_MK, w_deq_NK, bias_N=None, a_bits: int = 16,
                    a_symmetric: bool = False) -> torch.Tensor:
    """EMULATED path: fake-quantize x per token (a_bits < 16), then a float matmul in x's dtype.

    w_deq_NK holds already quantize-dequantized weights. Runs any format; never fast.
    """
    if a_bits < 16:
        x_MK = fake_quantize(x_MK, a_bits, PerToken(), a_symmetric)
    bias = None if bias_N is None else bias_N.to(x_MK.dtype)
    return F.linear(x_MK, w_deq_NK.to(x_MK.dtype), bias)


# ---- linear level: dynamic activation quant + GEMM ----------------------------------------

def quantize_activation(x_MK, a_bits: int = 8, a_symmetric: bool = False):
    """Dynamic per-token min-max: (q int8 [M, K], s_a [M], z_a [M] or None)."""
    q_MK, s_M1, z_M1 = quantize(x_MK, a_bits, PerToken(), a_symmetric)
    return q_MK, s_M1[:, 0], None if z_M1 is None else z_M1[:, 0]


INT8_ACT_GEMMS = {("w8a8", KernelChoice.TORCH): w8a8_gemm_ref,
                  ("w8a8", KernelChoice.TRITON): w8a8_gemm_triton,
                  ("w4a8", KernelChoice.TORCH): w4a8_gemm_ref,
                  ("w4a8", KernelChoice.TRITON): w4a8_gemm_triton}


def int8_act_linear(x_MK, kind: str, w, s_w_N, wsum_N=None, bias_N=None, a_bits: int = 8,
                    a_symmetric: bool = False, kernel: KernelChoice = KernelChoice.TORCH,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """kind "w8a8" (w int8 [N, K]) or "w4a8" (w packed uint8 [N, K // 2]) linear on float x_MK;
    the output in out_dtype (default x's)."""
    q_MK, s_a_M, z_a_M = quantize_activation(x_MK, a_bits, a_symmetric)
    impl = KernelChoice.TRITON if use_triton(kernel, x_MK.device, x_MK.shape[0]) else KernelChoice.TORCH
    return INT8_ACT_GEMMS[kind, impl](q_MK, w, s_a_M, s_w_N, z_a_M, None if z_a_M is None else wsum_N, bias_N,
                                      out_dtype or x_MK.dtype)


def w4a16_linear(x_MK, w_NK2, s_w_NG, z_w_NG=None, bias_N=None,
                 kernel: KernelChoice = KernelChoice.TORCH) -> torch.Tensor:
    """Weight-only INT4 linear on float x_MK (output in x's dtype). Groups no Triton K tile fits in
    (w4a16_block_k) run on the torch path."""
    group = x_MK.shape[1] // s_w_NG.shape[1]
    triton_ok = s_w_NG.shape[1] == 1 or w4a16_block_k(group) > 0
    fn = w4a16_gemm_triton if triton_ok and use_triton(kernel, x_MK.device, x_MK.shape[0]) else w4a16_gemm_ref
    return fn(x_MK, w_NK2, s_w_NG, z_w_NG, bias_N)
