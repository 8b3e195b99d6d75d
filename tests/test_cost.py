"""litevar.profiler.cost and profiler.device on tiny real models: the measurements run the real
backends and return positive medians, the memory tracker is exact on known allocations,
linear_calls matches what the VAR really calls, and the whole stage runs end to end.

FlexAttention (the CPU windowed backend) compiles ~20 s per shape, so the stage test here
times dense attention only (CostSettings.mdwa=False)."""
from __future__ import annotations

import collections
import os

import pytest
import torch
from torch import nn

from litevar.kernels.qlinear import QuantLinear, swap_linears
from litevar.models.core.device import device_of, environment, fingerprint
from litevar.models.core.family import get_family
from litevar.models.var.build import build_vae_var
from litevar.models.var.var import shared_copy
from litevar.profiler import costmodel as cmod
from litevar.profiler.cost import (
    CostSettings,
    measure_attention,
    measure_e2e,
    measure_linear,
    module_bytes,
    run_cost_stage,
)

VAR_FAMILY = get_family("var")


def arch_of(var):
    return VAR_FAMILY.arch_of(var)


def model_for_schedule(vae, var, patch_nums):
    return VAR_FAMILY.model_for_schedule(vae, var, patch_nums)

PNS = (1, 2, 3, 4)
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny():
    """Frozen, as every model litevar loads is: bf16 autocast keeps a bf16 copy of each weight that
    requires grad until its region ends, which would add to the decode phase's peak."""
    vae, var = build_vae_var("cpu", patch_nums=PNS, V=32, Cvae=8, ch=32, share_quant_resi=4, num_classes=4,
                             depth=1, ch_mult=(1, 2), num_res_blocks=1)
    return vae.requires_grad_(False), var.requires_grad_(False)


def test_cpu_fingerprint_and_environment():
    fp = fingerprint("cpu")
    assert fp["type"] == "cpu" and fp["name"] and fp["cores"] >= 1
    assert "avx512_bf16" in fp["flags"] and "amx_tile" in fp["flags"]
    env = environment()
    assert env["torch"] == torch.__version__ and len(env["sha256"]) == 64


def test_measure_linear_real_backends():
    for fmt in ("fp", "W8A8", "W4A16"):
        ms, mem = measure_linear(128, 64, [4, 32], fmt, "cpu", "fp32", warmup=1, repeats=3, memory_Ms=[32])
        assert len(ms) == 2 and all(t > 0 for t in ms), fmt
        assert mem[32] >= 32 * 64 * 4 / 2 ** 20  # at least the fp32 output
    ms, _ = measure_linear(128, 64, [16], "fp", "cpu", "bf16", warmup=1, repeats=3)
    assert ms[0] > 0


def test_measure_attention_dense_and_qk8():
    for backend in ("dense", "dense_qk8", "dense_kvfp", "dense_kv8", "dense_kv4"):
        ms, kept = measure_attention((1, 2, 3, 4, 5, 6), 5, 2, 2, 64, backend, "cpu", warmup=1, repeats=3)
        assert ms > 0 and kept == 1.0


def test_allocated_peak_is_exact():
    def fn():
        a = torch.empty(2 ** 18)  # 1 MB
        b = a * 2  # 1 MB more, peak 2 MB
        del a, b
        c = torch.empty(2 ** 17)  # 0.5 MB after the frees
        del c

    assert device_of("cpu").peak_memory_mb(fn) == pytest.approx(2.0, abs=1e-3)


def test_allocated_peak_forgets_what_earlier_measurements_left():
    """torch's tracked running total outlives a profiler: a tensor allocated under one measurement
    and freed outside any stays counted in it. The peak is growth from where a measurement began,
    so neither such a tensor nor one an earlier phase keeps counts in a later peak (as on CUDA,
    where each phase counts from what the allocator held when it began). 1 MiB tensors; the
    bound is the few bytes of a scalar aten may allocate beside them."""
    cpu, kept = device_of("cpu"), {}
    assert cpu.peak_memory_mb(lambda: kept.setdefault("x", torch.empty(2 ** 18))) == pytest.approx(1.0, abs=1e-3)
    del kept["x"]  # freed with no profiler on: stays in torch's running total
    assert cpu.peak_memory_mb(lambda: torch.empty(2 ** 18)) == pytest.approx(1.0, abs=1e-3)
    assert cpu.peak_memory_mb(lambda: None) == 0.0
    peaks, _ = cpu.phases_peaks_mb([lambda: kept.setdefault("y", torch.empty(2 ** 18)),
                                    lambda: torch.empty(2 ** 19)])
    assert peaks == pytest.approx([1.0, 2.0], abs=1e-3)
    assert cpu.peak_memory_mb(lambda: kept.pop("y")) == 0.0  # a block that only frees grows nothing


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the resident-set peak is Linux's")
def test_process_peak_in_a_settled_heap_counts_what_the_block_made():
    """Inside settled_heap (the cost stage) the collector skips the objects alive before it, and
    process_peak_mb still reads a block's pages: 64 MiB written by fn is a peak growth of about
    64 MiB (less pages the process frees meanwhile; the heap adds little), under 96 (the
    high-water mark of the 128 MiB that only its collection frees, had clear_refs not reset it,
    would add 64 more). The freeze ends with the block."""
    import gc

    from litevar.models.core.device import settled_heap
    cpu = device_of("cpu")
    with settled_heap():
        assert gc.get_freeze_count() > 0
        big = torch.ones(2 ** 25)  # 128 MiB: the session's high-water mark, above what fn reaches
        cycle = [big]
        cycle.append(cycle)  # garbage only the collector frees
        del big, cycle
        grew = cpu.process_peak_mb(lambda: torch.ones(2 ** 24).sum())  # 64 MiB written
    assert gc.get_freeze_count() == 0
    assert 60 <= grew < 96


def test_measure_e2e(tiny):
    vae, var = tiny
    ms, peak = measure_e2e(vae, var, PNS, 2, "cpu", repeats=2)
    assert ms > 0 and peak > module_bytes(var, vae) / 2 ** 20
    with pytest.raises(ValueError, match="model_for_schedule"):
        measure_e2e(vae, var, (1, 2, 3), 1, "cpu")


def test_model_for_schedule_shares_the_vae(tiny):
    vae, var = tiny
    vae_s, var_s = model_for_schedule(vae, var, (1, 2, 3, 4, 5))
    assert var_s.patch_nums == (1, 2, 3, 4, 5) and vae_s.quantize.patch_nums == (1, 2, 3, 4, 5)
    assert vae.quantize.patch_nums == PNS and vae_s.decoder is vae.decoder
    img = var_s.autoregressive_infer_cfg(1, g_seed=0)
    assert img.shape[-1] == 5 * vae.downsample
    own = {n: p.data_ptr() for n, p in var.named_parameters()}
    fresh = sorted(n for n, p in var_s.named_parameters() if own.get(n) != p.data_ptr())
    assert fresh == ["lvl_embed.weight", "pos_1LC"]  # the rest is the model's memory, not a copy
    assert var_s.pos_1LC.shape[1] == 55 and var_s.pos_1LC.std() > 0


def test_shared_copy_swaps_without_touching_the_model(tiny):
    vae, var = tiny
    before = var.blocks[0].ffn.fc1.weight.clone()
    c = swap_linears(shared_copy(var), {"blocks.0.ffn.fc1": "W8A8"})
    assert isinstance(c.blocks[0].ffn.fc1, QuantLinear) and isinstance(var.blocks[0].ffn.fc1, nn.Linear)
    assert torch.equal(var.blocks[0].ffn.fc1.weight, before)
    assert c.blocks[0].ffn.fc2.weight is var.blocks[0].ffn.fc2.weight and c.vae_proxy[0] is vae


def test_linear_calls_match_the_model(tiny):
    """Rows of every nn.Linear call during generation (mat_qkv is called through F.linear
    with its weight, not as a module, so it is checked by its shape rule only)."""
    var = tiny[1]
    seen = collections.Counter()
    names = {m: n for n, m in var.named_modules() if isinstance(m, nn.Linear)}
    def count(m, inp, out):
        seen.update([(names[m], inp[0].reshape(-1, m.in_features).shape[0])])

    hooks = [m.register_forward_hook(count) for m in names]
    try:
        var.autoregressive_infer_cfg(3, g_seed=0)
    finally:
        for h in hooks:
            h.remove()
    expected = collections.Counter((s.fqn, M) for s, M in cmod.linear_calls(arch_of(var), PNS, 3)
                                   if not s.fqn.endswith("mat_qkv"))
    assert seen == expected


def test_run_cost_stage_tiny(tiny, tmp_path):
    vae, var = tiny
    settings = CostSettings(warmup=1, repeats=2, e2e_repeats=1, mdwa=False, formats=("W8A8", "W6A6"),
                            fit_configs=("W8A8:fc1,fc2",), validate_configs=("W8A8:fc1,fc2,proj", "KV4:s1r1"))
    tables, cm, validation = run_cost_stage(vae, var, arch_of(var), "cpu", batches=(1, 2), progress=False,
                                            settings=settings)
    assert list(tables["cost_linear"].columns)[:6] == ["K", "N", "M", "format", "backend", "ms"]
    assert list(tables["cost_attn"].columns) == ["B", "H", "D", "q_len", "kv_len", "kept", "backend", "ms"]
    assert set(tables["cost_linear"]["backend"]) >= {"dense-fp32", "dense-bf16", "w8a8-fp32", "emulated-fp32"}
    assert (tables["cost_linear"]["ms"] > 0).all() and (tables["cost_attn"]["ms"] > 0).all()
    held = [v for v in validation if v["held_out"]]
    assert {(v["batch"], v["config"]) for v in held} == {(1, "dense"), (4, "dense"), (1, "W8A8:fc1,fc2,proj"),
                                                         (1, "KV4:s1r1"), (2, "W8A8:fc1,fc2,proj"), (2, "KV4:s1r1")}
    assert set(cm.e2e.gamma) == {"w8a8"}  # its fitted config ran at batches 1 and 2
    assert any(v["resolution"] > PNS[-1] * vae.downsample for v in held)  # an unmeasured resolution
    # memory: weights, buffers and KV caches are counted exactly; what is fitted (a constant, the
    # activation factor, the workspace share) is a small part of this toy model's ~3 MB peak, and the
    # held-out batch 4 doubles the fitted activations beyond the batches fitted on: 15% bounds a
    # doubling error of that part (a wrong exact term, e.g. weights counted twice, is off by > 30%)
    for v in validation:
        assert v["measured_ms"] > 0 and v["predicted_ms"] > 0 and abs(v["memory_err"]) < 0.15, v
    assert set(tables["cost_attn"]["backend"]) >= {"dense", "dense_kvfp", "dense_kv8", "dense_kv4"}
    e2e = tables["cost_e2e"]  # a generation's peak is its larger phase's (the latent held between them aside)
    both = e2e[["peak_tf_mb", "peak_decode_mb"]].max(axis=1)
    assert ((e2e["peak_mb"] - both).abs() <= 0.02 * e2e["peak_mb"]).all(), e2e
    assert cm.memory.decode is not None
    dec = tables["cost_decode"]  # decodes alone up to twice the largest image, the points of the decode fit
    sides = sorted(set(tables["cost_e2e"][~tables["cost_e2e"]["held_out"]]["resolution"]))
    assert list(dec["resolution"]) == sides + [2 * sides[-1]]
    assert (dec["peak_mb"] > 0).all() and len(cm.memory.decode["points"]) >= 2
    assert cm.kernels["int8_gemm"] in ("torch._int_mm", "split-K float")
    import json
    json.dumps(cm.to_dict())
    # `litevar profile --refit`: the same model again from the tables as a profile stores them
    from litevar.commands.profile import _refit
    from litevar.profiler.profile import Profile
    path = tmp_path / "cost.json"
    arch = arch_of(var).to_dict()
    Profile(meta={"cost_model": cm.to_dict()}, tables=tables).save(path)
    again = _refit(Profile.load(path, arch=arch), arch, "cpu", vae, var)
    assert again["cost_model"]["e2e"]["alpha"] == pytest.approx(cm.e2e.alpha)
    assert again["cost_model"]["e2e"]["coef"] == pytest.approx(cm.e2e.coef, rel=1e-6, abs=1e-9)
    assert [v["predicted_ms"] for v in again["validation"]] == pytest.approx([v["predicted_ms"] for v in validation])
    assert again["cost_model"]["memory"]["decode"] == cm.memory.decode
    # a cache from before the decodes alone: --refit measures them first, at the same sides
    before = {k: v for k, v in tables.items() if k != "cost_decode"}
    Profile(meta={"cost_model": cm.to_dict()}, tables=before).save(path)
    hit = Profile.load(path, arch=arch)
    _refit(hit, arch, "cpu", vae, var)
    assert list(hit.tables["cost_decode"]["resolution"]) == list(dec["resolution"])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_fingerprint_and_kernels():
    fp = fingerprint("cuda")
    assert fp["type"] == "cuda" and fp["name"] and fp["memory_mb"] > 0 and fp["compute_capability"]
    ms, mem = measure_linear(256, 256, [64], "W8A8", "cuda", "bf16", warmup=2, repeats=3, memory_Ms=[64])
    assert ms[0] > 0 and mem[64] > 0
    ms, kept = measure_attention((1, 2, 3, 4, 5, 6), 5, 2, 2, 64, "mdwa", "cuda", "bf16", kept_target=0.5)
    assert ms > 0 and 0 < kept < 1


def test_slower_than_dense_names_quantized_generations_that_bought_nothing():
    from litevar.profiler.cost import slower_than_dense

    def row(res, pns, config, ms):
        return {"resolution": res, "patch_nums": pns, "batch": 1, "config": config, "measured_ms": ms}
    rows = [row(256, "1,2", "dense", 100.0), row(256, "1,2", "W8A8:fc1,fc2", 90.0),
            row(256, "1,2", "W8A8:mat_qkv", 101.0),
            row(128, "1", "W8A8:fc1,fc2", 200.0)]  # no dense at its schedule: not compared
    msgs = slower_than_dense(rows)
    assert len(msgs) == 1 and msgs[0].startswith("W8A8:mat_qkv took 101.0 ms, dense 100.0 ms (256 px, batch 1)")


def test_nvml_fingerprint_by_uuid_and_field_by_field(monkeypatch):
    """The GPU is found by its UUID (torch's index is not NVML's under CUDA_VISIBLE_DEVICES) and a
    field the GPU does not report leaves the others in the fingerprint."""
    import sys
    import types

    from litevar.models.core import device

    class NVMLError(Exception):
        pass

    looked_up = []

    def not_supported(*a):
        raise NVMLError("Not Supported")

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: (_ for _ in ()).throw(AssertionError("looked up by index")),
        nvmlDeviceGetHandleByUUID=lambda u: looked_up.append(u) or "h",
        nvmlSystemGetDriverVersion=lambda: b"560.35", nvmlDeviceGetName=lambda h: "NVIDIA H200",
        nvmlDeviceGetMaxClockInfo=lambda h, c: 1980, nvmlDeviceGetClockInfo=not_supported,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    out = device._nvml("GPU-1234")
    assert looked_up == ["GPU-1234"]
    assert out == {"driver": "560.35", "nvml_name": "NVIDIA H200", "sm_clock_max_mhz": 1980,
                   "mem_clock_max_mhz": 1980, "power_limit_w": 700.0}


def test_variants_one_at_a_time_when_memory_is_short(tiny, monkeypatch):
    """Where the quantized variants' weights would not fit in a quarter of the free memory, the
    cost stage builds one at a time (the d30 BF16 profile's OOM) and measures the same things."""
    from litevar.profiler import cost
    vae, var = tiny
    from litevar.models.core.device import CPUDevice
    monkeypatch.setattr(CPUDevice, "available_bytes", lambda self: 0)
    plan = [(PNS, 1, "dense", False, "fp32"), (PNS, 1, "W8A8:fc1,fc2", False, "fp32"),
            (PNS, 1, "KV8:all", True, "fp32")]
    v = cost._Variants(vae, var, arch_of(var), plan, "cpu", "fp32")
    assert not v.keep
    for i in (1, 2, 0, 1):
        _, var_i = v.get(i)
        assert len(v.built) == 1 and isinstance(var_i.blocks[0].ffn.fc1, QuantLinear) == (i == 1)
    df = cost.measure_generations(vae, var, arch_of(var), plan, "cpu", CostSettings(e2e_repeats=2), progress=False)
    assert (df["ms"] > 0).all() and (df["peak_tf_mb"] > 0).all() and list(df["config"]) == [c for _, _, c, _, _ in plan]
