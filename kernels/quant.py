"""Min-max quantizers (LiteVAR section 4). Pure torch, no side effects.

    x_q = round(clamp((x - z) / s, -2^(B-1), 2^(B-1) - 1)),   x ~ x_q * s + z

symmetric:  s = max|x| / (2^(B-1) - 1), z = 0
asymmetric: s = (max - min) / (2^B - 1), z = (max + min) / 2   (z is a float, in x's units)

Min and max are taken per row (PerChannel for a weight w_NK, PerToken for an activation
x_..K, computed online = dynamic) or per group of `group_size` consecutive columns (PerGroup).
Scales and zeros have shape [..., G]: G = 1 per row, K // group_size per group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PerChannel:
    """One (s, z) per output channel: per row of a weight w_NK."""


@dataclass(frozen=True)
class PerToken:
    """One (s, z) per token: per row of an activation x_..K, computed at run time."""


@dataclass(frozen=True)
class PerGroup:
    """One (s, z) per `group_size` consecutive input channels of each row."""

    group_size: int = 128

    def __post_init__(self):
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"PerGroup(group_size={self.group_size}): use an even size >= 2, "
                             "e.g. PerGroup(128) or PerGroup(64)")


Granularity = PerChannel | PerToken | PerGroup


def quant_range(bits: int) -> tuple[int, int]:
    """Signed integer range [qmin, qmax] of a `bits`-bit code."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: integer codes have 2..8 bits (16 means float, no quant)")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _grouped(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """View x[..., K] as [..., G, g]."""
    K = x.shape[-1]
    g = granularity.group_size if isinstance(granularity, PerGroup) else K
    if K % g:
        raise ValueError(f"last dim {K} is not a multiple of {granularity}: pick a group size "
                         f"that divides {K} or use PerChannel()")
    return x.reshape(*x.shape[:-1], K // g, g)


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or as it is when wider (float64 numerics references keep their precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def choose_qparams(x: torch.Tensor, bits: int, granularity: Granularity, symmetric: bool,
                   eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max (scale, zero) of x, float32 (float64 for float64 x), shape [..., G]; zero is None
    when symmetric."""
    qmin, qmax = quant_range(bits)
    x_g = _grouped(wide(x), granularity)
    if symmetric:
        return (x_g.abs().amax(-1) / qmax).clamp_min(eps), None
    lo, hi = x_g.amin(-1), x_g.amax(-1)
    return ((hi - lo) / (qmax - qmin)).clamp_min(eps), (hi + lo) / 2


def quantize_with(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                  granularity: Granularity) -> torch.Tensor:
    """Integer codes (int8) of x for given (scale, zero)."""
    qmin, qmax = quant_range(bits)
    x_g = _grouped(wide(x), granularity)
    if zero is not None:
        x_g = x_g - zero[..., None]
    q = torch.clamp(x_g / scale[..., None], qmin, qmax).round()
    return q.to(torch.int8).reshape(x.shape)


def quantize(x: torch.Tensor, bits: int, granularity: Granularity, symmetric: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(q int8 like x, scale [..., G], zero [..., G] or None) by min-max."""
    scale, zero = choose_qparams(x, bits, granularity, symmetric)
    return quantize_with(x, scale, zero, bits, granularity), scale, zero


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
               granularity: Granularity, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * s + z, cast to dtype."""
    x_g = _grouped(q.float(), granularity) * scale[..., None]
    if zero is not None:
        x_g = x_g + zero[..., None]
    return x_g.reshape(q.shape).to(dtype)


def fake_quantize(x: torch.Tensor, bits: int, granularity: Granularity,
                  symmetric: bool = True) -> torch.Tensor:
    """Quantize then dequantize, same dtype as x (the emulated path)."""
    q, scale, zero = quantize(x, bits, granularity, symmetric)
    return dequantize(q, scale, zero, granularity, x.dtype)


# INT4 packing: two signed nibbles per uint8 byte along the last dim.
# byte j holds code 2j in the low nibble (bits 0-3) and code 2j+1 in the high nibble (bits 4-7).
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7], shape [..., K] (K even) -> uint8 [..., K // 2]."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: last dim {q.shape[-1]} is odd; INT4 packing needs an even "
                         "number of input channels (pad K or use an 8-bit format)")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError("pack_int4: codes outside [-8, 7]; quantize with bits=4 first")
    nib = q.to(torch.int16) & 0xF
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K // 2] -> int8 codes [..., K] (inverse of pack_int4)."""
    p = packed.to(torch.int16)
    lo, hi = ((p & 0xF) ^ 8) - 8, ((p >> 4) ^ 8) - 8  # (v ^ 8) - 8 sign-extends a nibble
    return torch.stack((lo, hi), dim=-1).reshape(*p.shape[:-1], -1).to(torch.int8)


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 20 log10(||ref|| / ||out - ref||)."""
    ref, out = ref.double(), out.double()
    noise = torch.linalg.vector_norm(out - ref).item()
    return math.inf if noise == 0 else 20 * math.log10(torch.linalg.vector_norm(ref).item() / noise)


# QKV8 (LiteVAR's INT8 QK product): per-token int8 Q and K, K smoothed by its per-channel mean.
def quantize_qk_int8(q_BHlc: torch.Tensor, k_BHLc: torch.Tensor, chunk: int = 4096):
    """(q_i8, q_scale [B,H,l], k_i8, k_scale [B,H,L]): symmetric per-token int8 of q and of
    k minus its per-channel mean over the keys (softmax is invariant to that shift). K is done
    `chunk` keys at a time, so the float32 temporaries stay a chunk's size, not the cache's."""
    mean_BH1c = k_BHLc.mean(dim=2, keepdim=True, dtype=torch.float32)
    q_i8, qs, _ = quantize(q_BHlc, 8, PerToken())
    k_i8 = torch.empty(k_BHLc.shape, dtype=torch.int8, device=k_BHLc.device)
    ks = torch.empty(k_BHLc.shape[:-1], dtype=torch.float32, device=k_BHLc.device)
    for a in range(0, k_BHLc.shape[2], chunk):
        codes, s, _ = quantize(k_BHLc[:, :, a:a + chunk].float() - mean_BH1c, 8, PerToken())
        k_i8[:, :, a:a + chunk], ks[:, :, a:a + chunk] = codes, s[..., 0]
    return q_i8, qs[..., 0].contiguous(), k_i8, ks


def fake_quant_qk(q_BHlc: torch.Tensor, k_BHLc: torch.Tensor):
    """Dequantized (q, k) of quantize_qk_int8, in float32 or wider: the emulated QKV8."""
    dtype = torch.promote_types(q_BHlc.dtype, torch.float32)
    q_i8, qs, k_i8, ks = quantize_qk_int8(q_BHlc, k_BHLc)
    return q_i8.to(dtype) * qs[..., None].to(dtype), k_i8.to(dtype) * ks[..., None].to(dtype)
