"""Quantizers, INT4 packing, format registry and capability table, kernel choice."""
import json

import pytest
import torch

from litevar.kernels.formats import FORMATS, Capability, QuantFormat, capability, get_format
from litevar.kernels.quant import (
    PerChannel,
    PerGroup,
    PerToken,
    choose_qparams,
    dequantize,
    fake_quantize,
    pack_int4,
    quant_range,
    quantize,
    sqnr,
    unpack_int4,
)
from litevar.kernels.select import KernelChoice, interpret_mode, resolve, triton_available
from litevar.models.core.errors import UserError

GRANULARITIES = [PerChannel(), PerToken(), PerGroup(32)]
# fake-quant SQNR floor (dB) of a Gaussian tensor with outliers, per bit width (~6 dB per bit)
QUANT_SQNR_DB = {4: 11.0, 6: 23.0, 8: 35.0}  # >= 1.5 dB under the worst of 300 seeds


def _tensor(rows: int, cols: int, scale: float = 0.05) -> torch.Tensor:
    """Gaussian with a few large outliers, as real weights and activations have."""
    x = torch.randn(rows, cols) * scale
    idx = torch.randint(0, x.numel(), (max(1, x.numel() // 500),))
    x.view(-1)[idx] *= 8
    return x


@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("granularity", GRANULARITIES, ids=repr)
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_formula_and_bounds(bits, granularity, symmetric):
    x = _tensor(24, 96)
    q, scale, zero = quantize(x, bits, granularity, symmetric)
    qmin, qmax = quant_range(bits)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert qmin <= q.min() and q.max() <= qmax
    # the paper's formula, written out: x_q = round(clamp((x - z) / s, qmin, qmax))
    g = x.shape[1] // scale.shape[1]
    s = scale.repeat_interleave(g, dim=1)
    z = 0 if zero is None else zero.repeat_interleave(g, dim=1)
    assert torch.equal(q, torch.clamp((x - z) / s, qmin, qmax).round().to(torch.int8))
    # min-max: every element within half a step (one step at the clamped top of asymmetric)
    err = (dequantize(q, scale, zero, granularity) - x).abs()
    assert (err <= s * (0.5 if symmetric else 1.0) + 1e-6).all()
    assert sqnr(x, fake_quantize(x, bits, granularity, symmetric)) > QUANT_SQNR_DB[bits]


def test_minmax_params():
    x = torch.tensor([[-1.0, 0.5, 3.0], [0.0, 0.0, 0.0]])
    s, z = choose_qparams(x, 8, PerToken(), symmetric=False)
    assert torch.allclose(s[0], torch.tensor([4.0 / 255]))
    assert torch.allclose(z[0], torch.tensor([1.0]))
    s, z = choose_qparams(x, 4, PerChannel(), symmetric=True)
    assert z is None and torch.allclose(s[0], torch.tensor([3.0 / 7]))
    q, s, z = quantize(x, 8, PerToken(), symmetric=False)  # all-zero row: no NaN, codes 0
    assert torch.isfinite(s).all() and (q[1] == 0).all()


def test_group_shapes_and_errors():
    x = torch.randn(3, 5, 64)
    q, s, z = quantize(x, 4, PerGroup(16), symmetric=False)
    assert s.shape == z.shape == (3, 5, 4)
    with pytest.raises(ValueError, match="multiple of"):
        quantize(torch.randn(4, 40), 4, PerGroup(16))
    with pytest.raises(ValueError, match="even size"):
        PerGroup(3)
    with pytest.raises(ValueError, match="2..8"):
        quant_range(16)


def test_int4_pack_roundtrip_and_order():
    q = torch.randint(-8, 8, (7, 3, 34), dtype=torch.int8)
    p = pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (7, 3, 17)
    assert torch.equal(unpack_int4(p), q)
    # documented order: code 2j in the low nibble, code 2j+1 in the high nibble
    assert pack_int4(torch.tensor([1, -2], dtype=torch.int8)).item() == 0xE1
    with pytest.raises(ValueError, match="odd"):
        pack_int4(torch.zeros(2, 5, dtype=torch.int8))
    with pytest.raises(ValueError, match="outside"):
        pack_int4(torch.full((2, 4), 9, dtype=torch.int8))


def test_registry_and_validation():
    assert set(FORMATS) >= {"fp", "W8A8", "W6A6", "W4A8", "W4A16", "W4A6", "W4A4"}
    assert get_format("W4A8").w_bits == 4 and get_format(FORMATS["W8A8"]) is FORMATS["W8A8"]
    with pytest.raises(UserError, match="known: fp, BF16, W8A8"):
        get_format("W3A3x")
    with pytest.raises(UserError, match="float_dtype='float64'.*bfloat16"):
        QuantFormat("bad", float_dtype="float64")
    with pytest.raises(UserError, match="w_bits=a_bits=16"):
        QuantFormat("bad", 8, 8, float_dtype="bfloat16")
    assert get_format("BF16").casts and get_format("BF16").is_float and not get_format("fp").casts
    with pytest.raises(UserError, match="2..8"):
        QuantFormat("bad", w_bits=12)
    with pytest.raises(UserError, match="activation-only"):
        QuantFormat("bad", a_bits=8)
    with pytest.raises(UserError, match="PerToken"):
        QuantFormat("bad", 8, 8, PerToken())


def test_formats_round_trip_json():
    for fmt in FORMATS.values():
        assert QuantFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_capability_table(device):
    native = {"fp": "dense", "BF16": "bf16", "W8A8": "w8a8", "W4A8": "w4a8", "W4A16": "w4a16"}
    for name in FORMATS:
        cap = capability(name, device)
        assert isinstance(cap, Capability)
        assert cap.native == (name in native)
        assert cap.kernel == native.get(name, "emulated")
        assert cap.native or "emulated" in cap.note
    grouped = QuantFormat("W8A8g", 8, 8, PerGroup(128))  # group scales break int32 accumulate
    assert capability(grouped, device).kernel == "emulated"


def test_kernel_choice_resolution():
    assert resolve(KernelChoice.AUTO, "cpu") is KernelChoice.TORCH
    assert resolve("emulated", "cpu") is KernelChoice.EMULATED
    assert resolve(KernelChoice.TORCH, "cpu") is KernelChoice.TORCH
    if not interpret_mode():
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            resolve(KernelChoice.TRITON, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_choice_cuda():
    want = KernelChoice.TRITON if triton_available() else KernelChoice.TORCH
    assert resolve(KernelChoice.AUTO, "cuda") is want
