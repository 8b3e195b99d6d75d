"""QuantLinear: an nn.Linear with weights quantized once; CastLinear: one run in a narrower float
dtype (BF16); and the swap by fully-qualified name."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from litevar.kernels import gemm
from litevar.kernels.formats import QuantFormat, capability, get_format
from litevar.kernels.quant import dequantize, pack_int4, quantize, unpack_int4
from litevar.kernels.select import KernelChoice
from litevar.models.core.errors import UserError


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """Quantization parameters stay float32 even after model.half() / .bfloat16()."""
    return None if t is None else t.float()


LINEAR_PATHS: dict = {}  # kernel name (kernels.formats.LINEAR_KERNELS, or "emulated") -> forward


def linear_path(*names: str):
    """Register a QuantLinear forward (m, x_MK, kernel choice, out dtype) -> y_MN for kernel names."""
    def register(fn):
        LINEAR_PATHS.update({n: fn for n in names})
        return fn
    return register


@linear_path("w8a8", "w4a8")
def _int8_act(m: QuantLinear, x_MK, kernel, out_dtype):
    return gemm.int8_act_linear(x_MK, m.path, m.weight_q, _f32(m.weight_scale[:, 0]),
                                _f32(m.weight_sum), _f32(m.bias), m.fmt.a_bits,
                                m.fmt.a_symmetric, kernel, out_dtype)


@linear_path("w4a16")
def _w4a16(m: QuantLinear, x_MK, kernel, out_dtype):
    return gemm.w4a16_linear(x_MK.to(out_dtype), m.weight_q, _f32(m.weight_scale), _f32(m.weight_zero),
                             _f32(m.bias), kernel)


@linear_path("emulated")
def _emulated(m: QuantLinear, x_MK, kernel, out_dtype):
    return gemm.emulated_linear(x_MK, m.dequantized_weight(), m.bias, m.fmt.a_bits,
                                m.fmt.a_symmetric).to(out_dtype)


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype nn.Linear would return for x: autocast's when it is on, else x's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class QuantLinear(nn.Module):
    """y = x @ W^T + b with W stored quantized (int8 [N, K] or packed INT4 uint8 [N, K // 2])."""

    def __init__(self, in_features: int, out_features: int, fmt: QuantFormat | str,
                 kernel: KernelChoice = KernelChoice.AUTO, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.kernel = get_format(fmt), KernelChoice(kernel)
        if self.fmt.is_float:
            raise UserError(f"QuantLinear: float format {self.fmt.name!r} quantizes nothing; keep the "
                            "nn.Linear ('fp') or use CastLinear (linear_in_format)")
        where = torch.device(device or "cpu")
        cap = capability(self.fmt, "cpu" if where.type == "meta" else where)  # a meta build loads onto the CPU
        self.path = "emulated" if self.kernel is KernelChoice.EMULATED else cap.kernel
        if self.path not in LINEAR_PATHS:
            raise UserError(f"QuantLinear: kernel {self.path!r} of format {self.fmt.name} has no forward path; "
                            "register one with @kernels.qlinear.linear_path")
        packed = self.fmt.w_bits == 4
        if packed and in_features % 2:
            raise UserError(f"QuantLinear: in_features={in_features} is odd; INT4 packing needs "
                            "an even K; use an 8-bit or 6-bit format for this layer")
        group = getattr(self.fmt.w_granularity, "group_size", in_features)
        if in_features % group:
            raise UserError(f"QuantLinear: in_features={in_features} is not a multiple of the "
                            f"group size {group} of format {self.fmt.name}; use a format with a "
                            "group size that divides it, or PerChannel()")
        G = in_features // group
        kw = dict(device=device)
        self.register_buffer("weight_q", torch.empty(out_features, in_features // (1 + packed),
                                                     dtype=torch.uint8 if packed else torch.int8,
                                                     **kw))
        self.register_buffer("weight_scale", torch.empty(out_features, G, **kw))
        self.register_buffer("weight_zero", None if self.fmt.symmetric else
                             torch.empty(out_features, G, **kw))
        self.register_buffer("weight_sum", torch.empty(out_features, **kw))  # sum_k of W[n, k]
        self.register_buffer("bias", torch.empty(out_features, **kw) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, fmt: QuantFormat | str,
                   kernel: KernelChoice = KernelChoice.AUTO) -> QuantLinear:
        """Quantize linear.weight once (min-max, fmt's granularity); bias kept in float32."""
        w_NK = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, fmt, kernel, linear.bias is not None,
                w_NK.device)
        q_NK, m.weight_scale, m.weight_zero = quantize(w_NK, m.fmt.w_bits, m.fmt.w_granularity,
                                                       m.fmt.symmetric)
        m.weight_q = pack_int4(q_NK) if m.fmt.w_bits == 4 else q_NK
        m.weight_sum = m.dequantized_weight().sum(-1)
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m

    def dequantized_weight(self) -> torch.Tensor:
        """Float32 W [N, K] as the quantized kernels see it."""
        q_NK = unpack_int4(self.weight_q) if self.fmt.w_bits == 4 else self.weight_q
        return dequantize(q_NK, self.weight_scale, self.weight_zero, self.fmt.w_granularity)

    def forward(self, x_BLK: torch.Tensor) -> torch.Tensor:
        """Output in the dtype nn.Linear would give (autocast's when on: bf16 stays bf16 downstream)."""
        y_MN = LINEAR_PATHS[self.path](self, x_BLK.reshape(-1, self.in_features), self.kernel, output_dtype(x_BLK))
        return y_MN.reshape(*x_BLK.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.fmt.name}, kernel={self.kernel.value}, path={self.path}, "
                f"bias={self.bias is not None}")


class CastLinear(nn.Module):
    """y = x @ W^T + b computed in the format's float dtype (W and b stored in it), returned in
    x's dtype; under autocast it returns what F.linear does there, as the nn.Linear would."""

    def __init__(self, in_features: int, out_features: int, fmt: QuantFormat | str,
                 bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features, self.fmt = in_features, out_features, get_format(fmt)
        if not self.fmt.casts:
            raise UserError(f"CastLinear: format {self.fmt.name!r} names no float dtype to cast to; "
                            "use QuantLinear for integer formats, the nn.Linear for 'fp'")
        kw = dict(device=device, dtype=getattr(torch, self.fmt.float_dtype))
        self.register_buffer("weight", torch.empty(out_features, in_features, **kw))
        self.register_buffer("bias", torch.empty(out_features, **kw) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, fmt: QuantFormat | str) -> CastLinear:
        m = cls(linear.in_features, linear.out_features, fmt, linear.bias is not None, linear.weight.device)
        m.weight = linear.weight.detach().to(m.weight.dtype).clone()
        if linear.bias is not None:
            m.bias = linear.bias.detach().to(m.weight.dtype).clone()
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(self.weight.dtype), self.weight, self.bias)
        return y if torch.is_autocast_enabled(x.device.type) else y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.fmt.name}, bias={self.bias is not None}")


def linear_in_format(linear: nn.Linear, fmt: QuantFormat | str,
                     kernel: KernelChoice = KernelChoice.AUTO) -> nn.Module:
    """The module that runs `linear` in `fmt`: itself for 'fp', a CastLinear for a float dtype
    (BF16), else a QuantLinear (weights quantized once)."""
    fmt = get_format(fmt)
    if fmt.casts:
        return CastLinear.from_float(linear, fmt)
    return linear if fmt.is_float else QuantLinear.from_float(linear, fmt, kernel)


def is_planned_layer(m: nn.Module) -> bool:
    """A layer that a plan swapped in (quantized or cast)."""
    return isinstance(m, (QuantLinear, CastLinear))


def swap_linears(model: nn.Module, fqn_to_format: dict[str, str | QuantFormat],
                 kernel: KernelChoice = KernelChoice.AUTO) -> nn.Module:
    """Replace each named nn.Linear by the module of its format (linear_in_format: "fp" leaves
    it). In place.

    Every name is checked before anything is swapped.
    """
    modules = dict(model.named_modules())
    plan = {fqn: get_format(fmt) for fqn, fmt in fqn_to_format.items()}
    for fqn in plan:
        if not isinstance(modules.get(fqn), nn.Linear):
            linears = [n for n, mod in modules.items() if isinstance(mod, nn.Linear)]
            what = ("no module" if fqn not in modules else
                    f"a {type(modules[fqn]).__name__}, not an nn.Linear,")
            raise UserError(f"swap_linears: {what} named {fqn!r} in {type(model).__name__}; "
                            f"linear layers are e.g. {', '.join(linears[:4]) or '(none)'}")
    for fqn, fmt in plan.items():
        try:
            layer = linear_in_format(modules[fqn], fmt, kernel)
        except UserError as e:
            raise UserError(f"swap_linears: layer {fqn!r}: {e}") from None
        if layer is not modules[fqn]:
            parent, _, child = fqn.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
    return model
