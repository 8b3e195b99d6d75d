"""Quantized GEMMs, QuantLinear and swap_linears.

Triton tests (names contain "triton") run in this process on CUDA. Without CUDA they run
under the Triton interpreter in a child pytest process that
`test_triton_kernels_under_interpreter` starts with TRITON_INTERPRET=1 in its environment:
triton 3.9 reads the variable when a kernel is decorated (when kernels.gemm_triton is first
imported), so setting os.environ here could come too late if another test module imported it
first, and would leak interpreter mode into every test module collected after this one.
The child keeps the variable out of this process.
Known interpreter limit (triton 3.9): tl.dot on bf16 multiplies the raw uint16 bit patterns
(kernels.gemm_triton.bf16_dot_exact checks it). Under the interpreter the kernels then run that dot
on its bf16-rounded operands in float32 (DOT_F32), so every other step of the bf16 path (loads,
dequantization to bf16, masks, the output cast) is still checked on the CPU; the bf16 MMA itself
only on CUDA.
"""
import json

import pytest
import torch
import torch.nn as nn

from litevar.kernels import gemm
from litevar.kernels.formats import FORMATS
from litevar.kernels.qlinear import CastLinear, QuantLinear, linear_in_format, swap_linears
from litevar.kernels.quant import PerChannel, PerGroup, dequantize, pack_int4, quantize, sqnr, unpack_int4
from litevar.kernels.select import KernelChoice, interpret_mode, triton_available
from litevar.models.core.errors import UserError
from tests.triton_child import run_triton_tests_in_child

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
triton_here = pytest.mark.skipif(
    not triton_available() or not (CUDA or interpret_mode()),
    reason="no CUDA: run under the interpreter by test_triton_kernels_under_interpreter")
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")

# QuantLinear vs the float layer, dB (activations with outlier channels, nn.Linear init);
# each >= 2 dB under the worst of 60 random layers and shapes.
FORMAT_SQNR_DB = {"W8A8": 30.0, "W6A6": 18.0, "W4A8": 19.0, "W4A16": 20.0, "W4A6": 16.0,
                  "W4A4": 7.0}
KERNEL_VS_FAKE_QUANT_DB = 90.0  # integer / weight-only kernels vs fake quant: float rounding only
# odd, tiny and larger-than-one-tile sizes (interpreter tiles are 32; GPU tiles 32..128)
SHAPES_MNK = [(1, 8, 16), (37, 45, 72), (70, 33, 130), (17, 128, 96), (5, 70, 40)]


def _act(*shape, device=DEVICE) -> torch.Tensor:
    """Activations: Gaussian * 2 with three outlier channels * 10."""
    x = torch.randn(*shape, device=device) * 2
    x[..., torch.randint(0, shape[-1], (3,))] *= 10
    return x


def _int_operands(M, N, K, w_bits=8, a_symmetric=False, bias=True, device=DEVICE):
    """Quantized operands of an int8-activation GEMM plus the float reference y = x @ w^T + b."""
    x, w = _act(M, K, device=device), torch.randn(N, K, device=device) * 0.05
    b = torch.randn(N, device=device) if bias else None
    q_a, s_a, z_a = gemm.quantize_activation(x, 8, a_symmetric)
    q_w, s_w, _ = quantize(w, w_bits, PerChannel(), symmetric=True)
    wsum = dequantize(q_w, s_w, None, PerChannel()).sum(-1)
    w_arg = pack_int4(q_w) if w_bits == 4 else q_w
    ops = (q_a, w_arg, s_a, s_w[:, 0], z_a, None if z_a is None else wsum, b)
    return ops, x @ w.t() + (0 if b is None else b)


# ---- torch references ---------------------------------------------------------------------

@pytest.mark.parametrize("M,N,K", SHAPES_MNK + [(64, 64, 64)])
def test_int_mm_exact(M, N, K):
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    assert torch.equal(gemm.int_mm(a, w), (a.long() @ w.long().t()).int())
    a_t = torch.randint(-128, 128, (K, M), dtype=torch.int8).t()  # a strided activation (cuBLASLt refuses it)
    assert torch.equal(gemm.int_mm(a_t, w), (a_t.long() @ w.long().t()).int())


@pytest.mark.parametrize("w_bits", [8, 4])
@pytest.mark.parametrize("a_symmetric", [False, True])
@pytest.mark.parametrize("M,N,K", SHAPES_MNK)
def test_int_gemm_ref_matches_dequantized_math(w_bits, a_symmetric, M, N, K):
    ops, _ = _int_operands(M, N, K, w_bits, a_symmetric)
    q_a, w, s_a, s_w, z_a, wsum, b = ops
    ref = (gemm.w8a8_gemm_ref if w_bits == 8 else gemm.w4a8_gemm_ref)(*ops)
    # the same math on dequantized operands in float64
    q_w = w if w_bits == 8 else unpack_int4(w)
    x_deq = q_a.double() * s_a[:, None].double() + (0 if z_a is None else z_a[:, None].double())
    y64 = x_deq @ (q_w.double() * s_w[:, None].double()).t() + b.double()
    assert sqnr(y64, ref) > 100  # quality vs float: test_quantlinear_vs_float_and_fake_quant


@pytest.mark.parametrize("M,N,K", SHAPES_MNK)
def test_w4a16_ref_matches_dequantized_math(M, N, K):
    x, w = _act(M, K), torch.randn(N, K, device=DEVICE) * 0.05
    gran = PerGroup(8) if K % 8 == 0 else PerGroup(2)
    q, s, z = quantize(w, 4, gran, symmetric=False)
    ref = gemm.w4a16_gemm_ref(x, pack_int4(q), s, z)
    assert sqnr(x.double() @ dequantize(q, s, z, gran).double().t(), ref) > 100


def test_launchers_name_the_bad_input():
    ops, _ = _int_operands(20, 16, 32)
    q_a, w, s_a, s_w, z_a, wsum, b = ops
    for fn in (gemm.w8a8_gemm_ref, gemm.w8a8_gemm_triton):  # checks run before triton loads
        with pytest.raises(TypeError, match="a_MK"):
            fn(q_a.float(), w, s_a, s_w)
        with pytest.raises(ValueError, match="w_NK"):
            fn(q_a, w[:, :16], s_a, s_w)
        with pytest.raises(ValueError, match="s_w_N"):
            fn(q_a, w, s_a, s_w[:3])
        with pytest.raises(ValueError, match="wsum_N"):
            fn(q_a, w, s_a, s_w, z_a_M=z_a)
    with pytest.raises(ValueError, match="odd"):
        gemm.w4a16_gemm_ref(torch.randn(4, 7), torch.zeros(8, 3, dtype=torch.uint8),
                            torch.ones(8, 1))


# ---- Triton kernels vs their references ----------------------------------------------------

@triton_here
@pytest.mark.parametrize("w_bits", [8, 4])
@pytest.mark.parametrize("a_symmetric", [False, True])
@pytest.mark.parametrize("M,N,K", SHAPES_MNK)
def test_triton_int_gemm_matches_ref(w_bits, a_symmetric, M, N, K):
    ops, _ = _int_operands(M, N, K, w_bits, a_symmetric, bias=(M % 2 == 1))
    ref_fn, tri_fn = ((gemm.w8a8_gemm_ref, gemm.w8a8_gemm_triton) if w_bits == 8 else
                      (gemm.w4a8_gemm_ref, gemm.w4a8_gemm_triton))
    ref, out = ref_fn(*ops), tri_fn(*ops)
    # int32 accumulators are exact; only the float epilogue may round differently (FMA)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5 * ref.abs().max().item())


@triton_here
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("group", [8, 32, 0])  # 0 = per channel
@pytest.mark.parametrize("M,N,K", SHAPES_MNK)
def test_triton_w4a16_matches_ref(dtype, group, M, N, K):
    if CUDA and 0 < group < 16:
        pytest.skip("groups below the GPU kernel's K tile run on the torch path")
    _w4a16_case(dtype, group, M, N, K)


def _w4a16_case(dtype, group, M, N, K):
    x = _act(M, K).to(dtype)
    w, b = torch.randn(N, K, device=DEVICE) * 0.05, torch.randn(N, device=DEVICE)
    gran = PerGroup(group) if group and K % group == 0 else PerChannel()
    q, s, z = quantize(w, 4, gran, symmetric=False)
    ref = gemm.w4a16_gemm_ref(x, pack_int4(q), s, z, b)
    out = gemm.w4a16_gemm_triton(x, pack_int4(q), s, z, b)
    assert out.dtype == dtype
    err, bound = (out.float() - ref.float()).abs(), _w4a16_bound(x, q, s, z, gran, b, ref)
    assert (err <= bound).all(), f"worst error / bound {(err / bound).max().item():.2f}"


def _w4a16_bound(x, q, s, z, gran, b, ref) -> torch.Tensor:
    """Per output, what two implementations of one w4a16 product may differ by. With u the unit
    roundoff of x's dtype (bf16 2**-8, fp16 2**-11; fp32: TF32's 2**-11 on a GPU, else 0) and one
    ulp at most 2u of a value:
    - each dequantized weight may round to a neighbour: the reference rounds to nearest, Triton's
      interpreter truncates its casts (rounding_mode None) and a GPU kernel may fuse q * s + z,
      so each product term x_k w_k may differ by 2u |x_k w_k|;
    - the reference rounds x @ w^T to x's dtype before its bias (u |x| @ |w|^T);
    - both round the biased output (the reference to nearest, u |ref|; the interpreter by
      truncation, 2u |out|);
    - the float32 accumulations differ in order (K * 2**-24 |x| @ |w|^T).
    The error of an output is bounded by the magnitude of its terms, not by |ref|: an output near
    zero can sum large terms (the activations carry x10 outlier channels, and the bias cancels).
    Triton's float32 dot under the interpreter is numpy's, so fp32 on a CPU differs by order only."""
    K = x.shape[-1]
    u = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11, torch.float32: 2 ** -11 if CUDA else 0.0}[x.dtype]
    w = dequantize(q, s, z, gran).float()
    terms = x.float().abs() @ w.abs().t()
    return (3 * u + K * 2 ** -24) * terms + 3 * u * ref.float().abs() + 1e-30


@triton_here
def test_triton_quantlinear_forward():
    lin = nn.Linear(128, 96).to(DEVICE)
    x = _act(2, 19, 128)
    for fmt in ("W8A8", "W4A8", "W4A16"):
        tri = QuantLinear.from_float(lin, fmt, kernel=KernelChoice.TRITON)(x)
        ref = QuantLinear.from_float(lin, fmt, kernel=KernelChoice.TORCH)(x)
        assert sqnr(ref, tri) > 60, fmt


def _rows_past_2_31(M: int, K: int, dtype) -> torch.Tensor:
    """An [M, K] view whose rows sit 2**26 elements apart: the tile of rows 32.. starts at 2**31,
    where an int32 offset overflows (in real runs: M * K >= 2**31 at 2048 px). Its storage is
    reserved, not touched, but for the M rows."""
    stride = 2 ** 26
    base = torch.empty((M - 1) * stride + K, dtype=dtype, device=DEVICE)
    x = base.as_strided((M, K), (stride, 1))
    x.copy_((torch.randint(-100, 100, (M, K)) if dtype == torch.int8 else torch.randn(M, K)).to(dtype))
    return x


@triton_here
def test_triton_gemm_offsets_past_2_31():
    M, N, K = 40, 32, 64  # two row tiles of 32 (the interpreter's); the second starts past 2**31
    a = _rows_past_2_31(M, K, torch.int8)
    w = torch.randint(-100, 100, (N, K), dtype=torch.int8, device=DEVICE)
    s_a, s_w = torch.rand(M, device=DEVICE) + 0.1, torch.rand(N, device=DEVICE) + 0.1
    for tri, ref, wq in ((gemm.w8a8_gemm_triton, gemm.w8a8_gemm_ref, w),
                         (gemm.w4a8_gemm_triton, gemm.w4a8_gemm_ref, pack_int4(w.clamp(-8, 7)))):
        torch.testing.assert_close(tri(a, wq, s_a, s_w), ref(a.contiguous(), wq, s_a, s_w), rtol=1e-6, atol=1e-3)
    x = _rows_past_2_31(M, K, torch.float16)
    q, s, z = quantize(torch.randn(N, K, device=DEVICE), 4, PerGroup(32), symmetric=False)
    torch.testing.assert_close(gemm.w4a16_gemm_triton(x, pack_int4(q), s, z).float(),
                               gemm.w4a16_gemm_ref(x.contiguous(), pack_int4(q), s, z).float(), rtol=2e-3, atol=2e-3)


def test_gemm_dispatch_keeps_small_calls_on_torch():
    """AUTO on CUDA: the first scales' few rows stay on the torch path; TRITON always runs Triton."""
    from litevar.kernels.gemm import TRITON_MIN_M, use_triton
    if not triton_available():
        pytest.skip("triton missing")
    cuda = torch.device("cuda")
    assert not use_triton(KernelChoice.AUTO, cuda, TRITON_MIN_M - 1)
    assert use_triton(KernelChoice.AUTO, cuda, TRITON_MIN_M) and use_triton(KernelChoice.TRITON, cuda, 2)
    assert not use_triton(KernelChoice.AUTO, torch.device("cpu"), 10 ** 6)


@pytest.mark.parametrize("fmt", ["W8A8", "W4A8", "W4A16", "W6A6"])
def test_quantlinear_returns_the_autocast_dtype(fmt):
    """Under bf16 autocast a quantized layer returns bf16, as nn.Linear does (not fp32 downstream)."""
    lin = nn.Linear(128, 32)
    q = QuantLinear.from_float(lin, fmt)
    x = torch.randn(3, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q(x).dtype == lin(x).dtype == torch.bfloat16
    assert q(x).dtype == torch.float32
    assert sqnr(lin(x), q(x)) > 12


def test_triton_kernels_under_interpreter():
    """This module's Triton tests, in a child process with TRITON_INTERPRET=1."""
    run_triton_tests_in_child(__file__)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", [(2 * 256, 1024, 1024), (2 * 4096, 4096, 1024),
                                   (300, 1024, 4096)])
def test_triton_at_var_shapes_cuda(M, N, K):
    for w_bits in (8, 4):
        ops, _ = _int_operands(M, N, K, w_bits)
        ref_fn, tri_fn = ((gemm.w8a8_gemm_ref, gemm.w8a8_gemm_triton) if w_bits == 8 else
                          (gemm.w4a8_gemm_ref, gemm.w4a8_gemm_triton))
        ref, out = ref_fn(*ops), tri_fn(*ops)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5 * ref.abs().max().item())
    _w4a16_case(torch.bfloat16, 128, M, N, K)


# ---- QuantLinear ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(FORMAT_SQNR_DB))
def test_quantlinear_vs_float_and_fake_quant(fmt):
    K, N = 128 * int(torch.randint(1, 4, ())), int(torch.randint(8, 200, ()))
    lin = nn.Linear(K, N)
    x = _act(2, int(torch.randint(1, 40, ())), K, device="cpu")
    q = QuantLinear.from_float(lin, fmt, kernel=KernelChoice.TORCH)
    y = q(x)
    assert y.shape == (*x.shape[:-1], N) and y.dtype == x.dtype
    assert sqnr(lin(x), y) > FORMAT_SQNR_DB[fmt]
    fake = QuantLinear.from_float(lin, fmt, kernel=KernelChoice.EMULATED)
    assert fake.path == "emulated"
    assert sqnr(fake(x), y) > KERNEL_VS_FAKE_QUANT_DB
    assert f"format={fmt}" in repr(q) and "kernel=torch" in repr(q)


def test_quantlinear_storage_and_dtypes():
    lin = nn.Linear(256, 64, bias=False)
    w8, w4 = QuantLinear.from_float(lin, "W8A8"), QuantLinear.from_float(lin, "W4A16")
    assert w8.weight_q.dtype == torch.int8 and w8.weight_q.shape == (64, 256)
    assert w4.weight_q.dtype == torch.uint8 and w4.weight_q.shape == (64, 128)
    assert w4.weight_scale.shape == w4.weight_zero.shape == (64, 2)
    x = _act(3, 256, device="cpu").bfloat16()
    for m in (w8, w4):
        assert m(x).dtype == torch.bfloat16 and sqnr(lin(x.float()), m(x).float()) > 18
    w8.bfloat16()  # a model cast after the swap keeps working (params used in float32)
    assert sqnr(lin(x.float()), w8(x).float()) > 18


@pytest.mark.parametrize("fmt", ["W8A8", "W4A8", "W4A16", "W6A6"])
def test_quantlinear_state_dict_meta_round_trip(fmt):
    q = QuantLinear.from_float(nn.Linear(256, 48), fmt)
    fresh = QuantLinear(256, 48, fmt, device="meta")  # built on meta, loaded with assign=True
    fresh.load_state_dict(q.state_dict(), assign=True)
    x = _act(5, 256, device="cpu")
    assert torch.equal(fresh(x), q(x))
    with pytest.raises(UserError, match="group size 128"):
        QuantLinear.from_float(nn.Linear(192, 8), "W4A16")


class _Block(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.attn = nn.Module()
        self.attn.mat_qkv, self.attn.proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C)
        self.ffn = nn.Sequential()
        self.ffn.fc1, self.ffn.fc2 = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)


def test_castlinear_bf16():
    """BF16: weights stored in bf16, the matmul in bf16, the output back in x's dtype (fp32); under
    bf16 autocast it returns bf16 as the nn.Linear does. bf16 keeps 8 mantissa bits: > 40 dB."""
    K, N = int(torch.randint(8, 300, ())), int(torch.randint(8, 300, ()))
    lin, x = nn.Linear(K, N), _act(2, int(torch.randint(1, 40, ())), K, device="cpu")
    m = linear_in_format(lin, "BF16")
    assert isinstance(m, CastLinear) and m.weight.dtype == m.bias.dtype == torch.bfloat16
    y = m(x)
    assert y.dtype == torch.float32 and y.shape == (*x.shape[:-1], N)
    assert sqnr(lin(x), y) > 40
    torch.testing.assert_close(y, nn.functional.linear(x.bfloat16(), lin.weight.bfloat16(),
                                                       lin.bias.bfloat16()).float())
    with torch.autocast("cpu", torch.bfloat16):
        assert m(x).dtype == lin(x).dtype == torch.bfloat16
    assert linear_in_format(lin, "fp") is lin and isinstance(linear_in_format(lin, "W8A8"), QuantLinear)
    with pytest.raises(UserError, match="CastLinear"):
        QuantLinear.from_float(lin, "BF16")
    with pytest.raises(UserError, match="names no float dtype"):
        CastLinear(K, N, "W8A8")


def test_swap_linears_by_fqn():
    model = nn.Module()
    model.blocks = nn.ModuleList([_Block(128) for _ in range(2)])
    plan = {"blocks.0.attn.mat_qkv": "W8A8", "blocks.1.ffn.fc2": "fp", "blocks.1.attn.mat_qkv": "BF16",
            "blocks.1.ffn.fc1": FORMATS["W4A8"], "blocks.0.ffn.fc2": "W6A6"}
    plan = json.loads(json.dumps({k: getattr(v, "name", v) for k, v in plan.items()}))
    fc2 = model.blocks[1].ffn.fc2
    swap_linears(model, plan, kernel=KernelChoice.TORCH)
    assert isinstance(model.blocks[0].attn.mat_qkv, QuantLinear)
    assert model.blocks[1].ffn.fc1.path == "w4a8" and model.blocks[0].ffn.fc2.path == "emulated"
    assert model.blocks[1].ffn.fc2 is fc2  # "fp" leaves the layer untouched
    assert isinstance(model.blocks[1].attn.mat_qkv, CastLinear)
    assert isinstance(model.blocks[0].attn.proj, nn.Linear)
    with pytest.raises(UserError, match=r"no module named 'blocks.7.ffn.fc2'.*blocks\.0\.attn"):
        swap_linears(model, {"blocks.1.attn.proj": "W8A8", "blocks.7.ffn.fc2": "W8A8"})
    assert isinstance(model.blocks[1].attn.proj, nn.Linear)  # nothing swapped on error
    with pytest.raises(UserError, match="not an nn.Linear"):
        swap_linears(model, {"blocks.0.ffn": "W8A8"})


def test_bench_rows_at_a_tiny_shape():
    from litevar.kernels.bench_gemm import _bench_shape, format_table, var_shapes

    assert ("fc2", 30, 2 * 16384, 1920, 4 * 1920) in var_shapes("full", device="cuda")
    rows = _bench_shape("proj", 2, 32, 128, 128, "cpu", triton_ok=False, peaks=None)
    by = {(r["kernel"], r["impl"]): r for r in rows}
    assert by["dense", "torch"]["speedup"] == 1.0 and by["emulated", "torch"]["native"] is False
    # the reference is bf16 only where this CPU computes bf16 faster (an AVX2-only one emulates it)
    from litevar.models.core.device import device_of
    assert by["dense", "torch"]["format"] == ("bf16" if device_of("cpu").bf16_faster() else "fp32")
    assert by["w8a8", "triton"]["status"].startswith("skipped")
    assert by["w8a8", "triton"]["ms"] is None
    assert all(r["ms"] > 0 and r["peak_frac"] is None for r in rows if r["status"] == "ok")
    assert by["w8a8", "torch"]["sqnr_db"] > 25
    assert "w4a16" in format_table(rows)


def test_interleaved_ms_rotates_the_order_each_round():
    """One call each per round, round r starting at the r-th fn: no fn always runs first or always
    after the same one; samples come back in round order."""
    from litevar.kernels.bench_gemm import interleaved_ms
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = {}
    med = interleaved_ms(fns, 4, torch.device("cpu"), samples=samples)
    assert calls[:3] == list("abc")  # the warm-up
    assert calls[3:] == list("abc" "bca" "cab" "abc")
    assert set(med) == set("abc") and all(len(samples[n]) == 4 for n in "abc")


def test_time_ms_times_batches_of_short_calls():
    """A sample times many back-to-back calls of a short op (one launch per event pair would time
    the launch overhead); a long op is timed one call at a time."""
    import time as _time

    from litevar.kernels.bench_gemm import time_ms
    calls = []
    ms = time_ms(lambda: calls.append(1), "cpu", warmup=2, repeats=3, min_batch_ms=0.5)
    per_sample = (len(calls) - 2 - 1) / 3
    assert per_sample > 20 and per_sample == int(per_sample) and ms < 0.05
    calls.clear()
    ms = time_ms(lambda: (calls.append(1), _time.sleep(0.002)), "cpu", warmup=1, repeats=3, min_batch_ms=1.0)
    assert len(calls) == 1 + 1 + 3 and 1.5 < ms < 20
