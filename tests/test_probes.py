"""The probes that keep a wrong kernel from running: each agrees with a direct check on this
machine, and the kernel the runtime picks after it gives the right answer. tests/test_isa.py runs
this file again on other x86 CPUs' kernels (AVX2; AVX-512 without VNNI), where the probes do find
wrong kernels: oneDNN's int8 GEMM without VNNI, inductor's FlexAttention compiled for AVX2."""
import torch

from litevar.kernels import gemm
from litevar.kernels.mdwa import FLEX_PROBE_SCHEDULE, MaskedReference, flex_exact, make_mdwa_backend
from litevar.kernels.qlinear import QuantLinear
from litevar.kernels.windows import FULL, WindowConfig
from litevar.models.core.attention import AttnCall, ScaleLayout


def _int8(*shape, generator):
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=generator)


def test_int8_probe_agrees_with_a_direct_check():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    a, w = _int8(96, 512, generator=g), _int8(64, 512, generator=g)
    raw_exact = torch.equal(torch._int_mm(a, w.t()).long(), a.long() @ w.long().t())
    assert gemm.int_mm_exact("cpu") == raw_exact
    assert gemm.int8_gemm_path("cpu") == ("torch._int_mm" if raw_exact else "split-K float")


def test_every_int8_gemm_is_exact():
    """Whichever path the probe left: gemv-like, odd, mid-size and deep-K products (K = 4096 takes
    four split-K chunks on the float path), against int64."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    for M, K, N in ((1, 64, 8), (5, 40, 70), (17, 512, 64), (96, 512, 64), (300, 4096, 40)):
        a, w = _int8(M, K, generator=g), _int8(N, K, generator=g)
        a[0], w[0] = 127, -128  # the extremes a saturating 16-bit pair sum gets wrong
        assert torch.equal(gemm.int_mm(a, w).long(), a.long() @ w.long().t()), (M, K, N)
    assert torch.equal(gemm.int_mm_float(a, w).long(), a.long() @ w.long().t())


def test_the_int_mm_path_hands_its_kernel_only_shapes_it_takes(monkeypatch):
    """The branch of int_mm that machines with an exact torch._int_mm take (VNNI, AMX, GPUs),
    run on any CPU: the probe is set to 'exact' and torch._int_mm is replaced by an exact int64
    product that refuses what the real kernels refuse (cuBLASLt: M <= 16, K or N not multiples of
    8, an activation that is not row-major, a weight that is not a transposed row-major [N, K]).
    With the GPU's shape rule int_mm pads and slices; the products must stay exact."""
    from litevar.models.core.device import CPUDevice, CUDADevice
    calls = []

    def strict_int_mm(a_MK, b_KN):
        M, K = a_MK.shape
        N = b_KN.shape[1]
        assert a_MK.dtype == b_KN.dtype == torch.int8
        assert M > 16 and K % 8 == 0 and N % 8 == 0, (M, K, N)
        assert a_MK.stride() == (K, 1) and b_KN.stride() == (1, K), (a_MK.stride(), b_KN.stride())
        calls.append((M, K, N))
        return (a_MK.long() @ b_KN.long()).int()

    monkeypatch.setattr(gemm, "int_mm_exact", lambda device_type="cpu": True)
    monkeypatch.setattr(torch, "_int_mm", strict_int_mm)
    monkeypatch.setattr(CPUDevice, "int_mm_shape_ok", CUDADevice.int_mm_shape_ok)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    for M, K, N in ((1, 64, 8), (5, 40, 70), (16, 20, 12), (17, 512, 64), (33, 100, 24)):
        a, w = _int8(M, K, generator=g), _int8(N, K, generator=g)
        a[0], w[0] = 127, -128
        # row-major, transposed and strided activations
        a_views = (a, _int8(K, M, generator=g).t(), _int8(M, 2 * K, generator=g)[:, :K])
        for a_v in a_views:
            assert torch.equal(gemm.int_mm(a_v, w).long(), a_v.long() @ w.long().t()), (M, K, N, a_v.stride())
    assert len(calls) == 15  # every product went through the kernel, none fell back


def test_w8a8_layer_equals_its_dequantized_math():
    lin = torch.nn.Linear(512, 64)
    q = QuantLinear.from_float(lin, "W8A8")
    x = torch.randn(40, 512)
    q_a, s_a, z_a = gemm.quantize_activation(x, 8, False)
    ref = (q_a.double() * s_a[:, None].double() + z_a[:, None].double()) @ q.dequantized_weight().double().t()
    err = (q(x).double() - ref - lin.bias.double()).abs().max().item()
    # exact int32 sums round to ~1e-6 in the float32 epilogue (outputs ~1); one wrong sum moves ~0.1
    assert err < 1e-3, err


def test_windowed_attention_the_runtime_picks_is_right():
    """FlexAttention where the probe found it right, else the masked reference: either way the
    output of the probe's shape (49 queries over 104 keys, which inductor's AVX2 kernels get
    wrong) equals the reference's, on fresh inputs, several times (the wrong outputs vary)."""
    pns, S = FLEX_PROBE_SCHEDULE, len(FLEX_PROBE_SCHEDULE)
    width = torch.full((2, S, S), FULL, dtype=torch.int32)
    width[:, S - 1, 3:] = 2
    cfg, layout = WindowConfig(pns, "band", {0: width}), ScaleLayout(pns)
    auto = make_mdwa_backend(cfg, "auto", "cpu")
    assert isinstance(auto, MaskedReference) != flex_exact("cpu")
    ctx = AttnCall(0, S - 1, layout, 0.25)
    for _ in range(8):
        q, k, v = (torch.randn(2, 2, n, 16) for n in (pns[-1] ** 2, layout.L, layout.L))
        err = (auto(q, k, v, ctx) - MaskedReference(cfg)(q, k, v, ctx)).abs().max().item()
        assert err <= 1e-4, (type(auto).__name__, err)  # float32 rounding ~1e-6; a wrong kernel ~1 or NaN
