"""KV-cache formats: fp (the model's dtype), KV8 and KV4 (INT4 packed two per byte).

VAR writes its cache one scale at a time, every token of the scale at once, so a scale's keys and
values form a segment that is quantized once, when it is written, and never again:

    K  per channel, over the segment's tokens: one (scale, zero) per (row, head, channel) of the
       segment. Keys have outlier channels (a few channels carry values 10-100x the others, as
       KIVI and KVQuant find in LLMs); per-token scales would spend the whole range of every token
       on them and crush the rest.
    V  per token, over its channels: one (scale, zero) per (row, head, token). Values have no
       such channels, and a token's value is what attention mixes whole.

Both asymmetric min-max (kernels.quant: s = (max - min) / (2^B - 1), z = (max + min) / 2, signed
codes). Codes are int8 (KV8) or INT4 packed two per byte along the channels (KV4); scales and
zeros are float16 (V: 4 bytes per token and head; K: 4 bytes per channel, head and segment).
`segment_bytes` is the exact size of a stored segment: the memory model counts it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from litevar.kernels.quant import PerToken, choose_qparams, pack_int4, quantize_with, wide
from litevar.models.core.errors import UserError

SCALE_DTYPE = torch.float16
SCALE_BYTES = 2


@dataclass(frozen=True)
class KVFormat:
    """A KV-cache format: everything the profiler (its loss and timing), the memory model (its
    bytes), the planner (offered where the profile priced it) and the runtime (the planned cache,
    the Triton kernel) need. Adding one is one register_kv_format entry: codes of 5..8 bits are
    stored in int8, of 2..4 bits two per byte, so the quantizer, the bytes and the kernel's reads
    follow from `bits`."""

    name: str
    bits: int  # 2..8 integer codes; 16: kept in the model's float dtype

    def __post_init__(self):
        if self.bits != 16 and not 2 <= self.bits <= 8:
            raise UserError(f"KV format {self.name!r}: bits={self.bits}; use 2..8 for integer codes or 16 for float")

    @property
    def quantized(self) -> bool:
        return self.bits < 16

    @property
    def packed(self) -> bool:
        """Codes stored two per byte (INT4 packing) rather than one int8 each."""
        return self.bits <= 4

    @property
    def storage_bits(self) -> int:
        """Bits a stored code takes (what the Triton kernel reads): 4, 8, or 16 (float)."""
        return 16 if not self.quantized else (4 if self.packed else 8)

    @property
    def attn_backend(self) -> str:
        """The cost stage's name for an attention call on a cache in this format."""
        return "dense_kv" + ("fp" if not self.quantized else str(self.bits))


KV_FORMATS: dict[str, KVFormat] = {}


def register_kv_format(fmt: KVFormat) -> KVFormat:
    KV_FORMATS[fmt.name] = fmt
    return fmt


KV_FP = register_kv_format(KVFormat("fp", 16))
KV8 = register_kv_format(KVFormat("KV8", 8))
KV4 = register_kv_format(KVFormat("KV4", 4))


def get_kv_format(name: str | KVFormat) -> KVFormat:
    if isinstance(name, KVFormat):
        return name
    if name not in KV_FORMATS:
        raise UserError(f"unknown KV-cache format {name!r}; use one of {', '.join(KV_FORMATS)}")
    return KV_FORMATS[name]


@dataclass
class Segment:
    """One scale's keys and values in a KV format (float: k, v as they are)."""

    fmt: KVFormat
    k: torch.Tensor  # float (B, H, n, c) | int8 codes (B, H, n, c) | packed uint8 (B, H, n, c // 2)
    v: torch.Tensor
    k_scale: torch.Tensor | None = None  # (B, H, 1, c) float16
    k_zero: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None  # (B, H, n, 1) float16
    v_zero: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        return self.k.shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.k_scale, self.k_zero,
                                                            self.v_scale, self.v_zero) if t is not None)

    def dequantize(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) in `dtype` (the float format's own tensors when it is that dtype)."""
        if not self.fmt.quantized and self.k.dtype == dtype:
            return self.k, self.v
        k, v = (torch.empty(self.k.shape[:3] + (self.head_dim,), dtype=dtype, device=self.k.device) for _ in "kv")
        self.dequantize_into(k, v)
        return k, v

    @property
    def head_dim(self) -> int:
        return self.k.shape[3] * (2 if self.fmt.quantized and self.fmt.packed else 1)

    def dequantize_into(self, k_out: torch.Tensor, v_out: torch.Tensor) -> None:
        """Write (k, v) into float buffers of the segment's shape, with no float temporaries."""
        if not self.fmt.quantized:
            k_out.copy_(self.k), v_out.copy_(self.v)
            return
        for out, codes, scale, zero in ((k_out, self.k, self.k_scale, self.k_zero),
                                        (v_out, self.v, self.v_scale, self.v_zero)):
            if self.fmt.packed:
                out[..., 0::2].copy_(((codes & 0xF).view(torch.int8) ^ 8) - 8)  # sign-extended low nibbles
                out[..., 1::2].copy_(((codes >> 4).view(torch.int8) ^ 8) - 8)
            else:
                out.copy_(codes)
            out.mul_(scale).add_(zero)


def quantize_segment(k_BHnc: torch.Tensor, v_BHnc: torch.Tensor, fmt: KVFormat | str) -> Segment:
    """The segment of one scale's keys and values in `fmt` (see the module docstring)."""
    fmt = get_kv_format(fmt)
    if not fmt.quantized:
        return Segment(fmt, k_BHnc, v_BHnc)
    if k_BHnc.shape[-1] % 2 and fmt.packed:
        raise UserError(f"{fmt.name} packs two codes per byte along the head dim; head dim {k_BHnc.shape[-1]} is odd")
    k32 = wide(k_BHnc)  # float32; float64 keeps its precision
    lo, hi = k32.amin(dim=2, keepdim=True), k32.amax(dim=2, keepdim=True)  # per channel, over tokens
    qmax = 2 ** fmt.bits - 1
    k_scale = ((hi - lo) / qmax).clamp_min(1e-8).to(SCALE_DTYPE)
    k_zero = ((hi + lo) / 2).to(SCALE_DTYPE)
    k_codes = _codes(k32, k_scale.to(k32.dtype), k_zero.to(k32.dtype), fmt.bits)
    v_scale, v_zero = (t.to(SCALE_DTYPE) for t in choose_qparams(v_BHnc, fmt.bits, PerToken(), symmetric=False))
    v_codes = quantize_with(v_BHnc, v_scale.to(k32.dtype), v_zero.to(k32.dtype), fmt.bits, PerToken())  # (B, H, n, 1)
    if fmt.packed:
        k_codes, v_codes = pack_int4(k_codes), pack_int4(v_codes)
    return Segment(fmt, k_codes, v_codes, k_scale, k_zero, v_scale, v_zero)


def _codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return torch.clamp((x - zero) / scale, lo, hi).round().to(torch.int8)


def fake_quantize_kv(k_BHnc: torch.Tensor, v_BHnc: torch.Tensor, fmt: KVFormat | str):
    """(k, v) as they come back out of the cache in `fmt`, in their own dtype (the emulation the
    profiler measures the loss of)."""
    return quantize_segment(k_BHnc, v_BHnc, fmt).dequantize(k_BHnc.dtype)


def segment_bytes(rows: int, heads: int, tokens: int, head_dim: int, fmt: KVFormat | str,
                  fp_bytes: int) -> int:
    """Bytes of one stored segment (rows: the batch rows stored, CFG halves included)."""
    fmt = get_kv_format(fmt)
    if not fmt.quantized:
        return 2 * rows * heads * tokens * head_dim * fp_bytes
    codes = rows * heads * tokens * (head_dim // 2 if fmt.packed else head_dim)
    return 2 * codes + 2 * rows * heads * head_dim * SCALE_BYTES + 2 * rows * heads * tokens * SCALE_BYTES
