"""Quantization formats and the kernels that run them: two name-keyed registries.

A format (`register_format(QuantFormat(...))`) says what is quantized and how (or, for BF16, which
float dtype one layer runs in): its bits, granularity, bytes and which widths it applies to. A
kernel (`register_kernel(LinearKernel(...))`) says which formats it runs natively and on which
device types; `capability(fmt, device)` picks one, or fake quant (emulated). Adding a format is
one entry here (plus a LinearKernel and its forward path in kernels/qlinear.py when it is to run
natively): the profiler measures every registered format's loss and times every native one, and
the planner offers what the profile priced. Whether a native kernel is faster than the model's
own dtype on a device is measured by the profiler, not decided here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from litevar.kernels.quant import Granularity, PerChannel, PerGroup, PerToken
from litevar.models.core.device import device_of
from litevar.models.core.errors import UserError

FLOAT_BITS = 16  # w_bits / a_bits of 16 mean "kept in floating point"
CAST_DTYPES = {"bfloat16": "bf16"}  # float dtypes a layer can be cast to -> kernel name


@dataclass(frozen=True)
class QuantFormat:
    """Weights: min-max, offline, at `w_granularity`. Activations: dynamic per-token min-max."""

    name: str
    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS
    w_granularity: Granularity = field(default_factory=PerChannel)
    symmetric: bool = True  # weights: z = 0
    a_symmetric: bool = False  # activations: paper's z = (max + min) / 2
    version: int = 1
    # float formats: "" keeps the model's own dtype (fp); a torch dtype name ("bfloat16") runs
    # the layer in that dtype whatever the model's (weights stored in it, output cast back)
    float_dtype: str = ""

    def __post_init__(self):
        for what, bits in (("w_bits", self.w_bits), ("a_bits", self.a_bits)):
            if bits != FLOAT_BITS and not 2 <= bits <= 8:
                raise UserError(f"format {self.name!r}: {what}={bits} is not supported; use 2..8 "
                                f"for integer codes or {FLOAT_BITS} to keep it in float")
        if self.w_bits == FLOAT_BITS and self.a_bits != FLOAT_BITS:
            raise UserError(f"format {self.name!r}: activation-only quantization (a_bits="
                            f"{self.a_bits}, float weights) has no kernel; quantize the weights "
                            f"too or set a_bits={FLOAT_BITS}")
        if isinstance(self.w_granularity, PerToken):
            raise UserError(f"format {self.name!r}: PerToken() is for activations; weights take "
                            "PerChannel() or PerGroup(n)")
        if self.float_dtype and (not self.is_float or self.float_dtype not in CAST_DTYPES):
            raise UserError(f"format {self.name!r}: float_dtype={self.float_dtype!r} needs w_bits="
                            f"a_bits={FLOAT_BITS} and one of {', '.join(CAST_DTYPES)}; or leave it "
                            "empty to keep the model's dtype")
        if not isinstance(self.w_granularity, (PerChannel, PerGroup)):
            raise UserError(f"format {self.name!r}: w_granularity={self.w_granularity!r}; use "
                            "PerChannel() or PerGroup(128)")

    @property
    def is_float(self) -> bool:
        return self.w_bits == FLOAT_BITS

    @property
    def casts(self) -> bool:
        """A float format that runs the layer in another dtype than the model's (e.g. BF16)."""
        return self.is_float and bool(self.float_dtype)

    @property
    def weight_only(self) -> bool:
        return self.a_bits == FLOAT_BITS and not self.is_float

    def applies(self, K: int) -> bool:
        """Whether a linear with K input features can take this format (INT4 packing needs an even
        K, group-wise scales a K divisible by the group size), as QuantLinear requires."""
        if self.is_float:
            return True
        return (self.w_bits != 4 or K % 2 == 0) and K % getattr(self.w_granularity, "group_size", K) == 0

    def weight_bytes(self, K: int, N: int, fp_bytes: int = 4) -> int:
        """Stored bytes of one K x N weight in this format (bias excluded, it is float in every format).

        fp: K*N at the parameter dtype (fp_bytes; autocast does not change what is stored). Quantized
        (QuantLinear buffers): int8 codes (1 byte, also for 6-bit), INT4 packed two per byte, float32
        scales (and zeros when asymmetric) per output channel and group, and the float32 per-channel
        weight sum. Emulated formats store the same codes and dequantize per call. A cast format:
        K*N at its dtype (CastLinear)."""
        if self.casts:
            return K * N * getattr(torch, self.float_dtype).itemsize
        if self.is_float:
            return K * N * fp_bytes
        codes = K * N // 2 if self.w_bits == 4 else K * N
        groups = K // getattr(self.w_granularity, "group_size", K)
        return codes + N * groups * 4 * (1 if self.symmetric else 2) + N * 4

    def to_dict(self) -> dict:
        d = asdict(self)
        g = self.w_granularity
        d["w_granularity"] = {"type": type(g).__name__, **asdict(g)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuantFormat:
        g = dict(d["w_granularity"])
        kinds = {"PerChannel": PerChannel, "PerGroup": PerGroup}
        if g.get("type") not in kinds:
            raise UserError(f"format {d.get('name')!r}: unknown w_granularity {g!r}; use "
                            "{'type': 'PerChannel'} or {'type': 'PerGroup', 'group_size': 128}")
        return cls(**{**d, "w_granularity": kinds[g.pop("type")](**g)})


FORMATS: dict[str, QuantFormat] = {}


def register_format(fmt: QuantFormat) -> QuantFormat:
    """Add `fmt` to the registry under fmt.name (a name can be registered once)."""
    if fmt.name in FORMATS and FORMATS[fmt.name] != fmt:
        raise UserError(f"format {fmt.name!r} is already registered differently; pick a new name")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(fmt: QuantFormat | str) -> QuantFormat:
    """A registered format by name (or the format itself)."""
    if isinstance(fmt, QuantFormat):
        return fmt
    if fmt not in FORMATS:
        raise UserError(f"unknown quantization format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt]


FP = register_format(QuantFormat("fp"))
BF16 = register_format(QuantFormat("BF16", float_dtype="bfloat16"))  # one layer in bf16 in an fp32 model
W8A8 = register_format(QuantFormat("W8A8", 8, 8))
W6A6 = register_format(QuantFormat("W6A6", 6, 6))
W4A8 = register_format(QuantFormat("W4A8", 4, 8))
W4A16 = register_format(QuantFormat("W4A16", 4, FLOAT_BITS, PerGroup(128), symmetric=False))
W4A6 = register_format(QuantFormat("W4A6", 4, 6))
W4A4 = register_format(QuantFormat("W4A4", 4, 4))


@dataclass(frozen=True)
class Capability:
    native: bool  # a real integer or weight-only kernel exists; False = fake quant only
    kernel: str  # a LINEAR_KERNELS name ("dense", "bf16", "w8a8", "w4a8", "w4a16") or "emulated"
    note: str


@dataclass(frozen=True)
class LinearKernel:
    """A kernel family that runs formats natively. `applies(fmt)` says which formats it runs,
    `devices` the device types it has a kernel for; its forward path is registered in
    kernels.qlinear (`@linear_path(name)`); the cost stage times it and the planner offers its
    formats where the profile did."""

    name: str
    applies: Callable[[QuantFormat], bool]
    note: str  # "{where}" becomes "Triton on cuda" / "torch on cpu"
    devices: tuple[str, ...] = ("cpu", "cuda")


LINEAR_KERNELS: dict[str, LinearKernel] = {}


def register_kernel(kernel: LinearKernel) -> LinearKernel:
    LINEAR_KERNELS[kernel.name] = kernel
    return kernel


def _int_ok(f: QuantFormat) -> bool:
    """Per-channel symmetric weights: the int32 accumulation dequantizes with one scale per row."""
    return isinstance(f.w_granularity, PerChannel) and f.symmetric


register_kernel(LinearKernel("dense", lambda f: f.is_float and not f.casts, "float matmul, no quantization"))
for _dtype, _name in CAST_DTYPES.items():
    register_kernel(LinearKernel(_name, lambda f, d=_dtype: f.casts and f.float_dtype == d,
                                 f"{_dtype} matmul, weights stored in it, input cast to it and the output back to "
                                 "the input's dtype"))
register_kernel(LinearKernel("w8a8", lambda f: (f.w_bits, f.a_bits) == (8, 8) and _int_ok(f),
                             "int8 x int8 -> int32, fused dequant ({where})"))
register_kernel(LinearKernel("w4a8", lambda f: (f.w_bits, f.a_bits) == (4, 8) and _int_ok(f),
                             "INT4 unpacked to int8, int32 accumulate ({where})"))
register_kernel(LinearKernel("w4a16", lambda f: f.w_bits == 4 and f.weight_only,
                             "INT4 weights dequantized in the GEMM ({where})"))


def capability(fmt: QuantFormat | str, device: torch.device | str) -> Capability:
    """Which kernel runs `fmt` on `device`: the first registered LinearKernel that applies to it and
    has a kernel for the device type, else emulated. Native: a real kernel exists (not: it is fast)."""
    fmt, dev = get_format(fmt), torch.device(device).type
    where = f"{'Triton' if device_of(device).triton_native else 'torch'} on {dev}"
    for k in LINEAR_KERNELS.values():
        if k.applies(fmt) and dev in k.devices:
            return Capability(True, k.name, k.note.format(where=where))
    bits = (fmt.w_bits, fmt.a_bits)
    why = ("group-wise or asymmetric weights break the int32 accumulation"
           if bits in ((8, 8), (4, 8)) else f"no kernel for W{fmt.w_bits}A{fmt.a_bits} on {dev}")
    return Capability(False, "emulated", f"emulated ({why}): fake quant, quantize-dequantize "
                                         "+ float matmul; never credited with speed")
