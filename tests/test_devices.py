"""Planning for devices that are not here: the catalogue's figures, the capability matrix, the
roofline against hand-computed cases, the host's operator counts, pricing a profile for a target,
the runtime dtype as a planned decision, and a plan refused on another kind of device."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from litevar.planner.build import plan_prediction
from litevar.planner.plan import Plan
from litevar.profiler import costmodel as C
from litevar.profiler.devices import (
    TIER_GUARD,
    Throughput,
    attention_work,
    capabilities,
    catalogue,
    from_calibration,
    from_spec,
    linear_bytes,
    load_target,
    priced,
    roofline_ms,
)
from litevar.profiler.profile import Profile
from tests.cli_util import assert_one_line_error, run_cli
from tests.test_planner import synthetic_profile

# ---------------------------------------------------------------------------------------------
# The catalogue


def test_every_catalogue_figure_has_a_source_and_a_sane_value():
    cat = catalogue()
    assert {"H100-SXM", "H200", "A100-40GB", "A100-80GB", "L40S", "L4", "RTX-4090", "T4"} <= set(cat)
    for key, s in cat.items():
        for what, fig in [("memory", s.memory_gb), ("bandwidth", s.bandwidth_gbs), ("int4 cores", s.int4_tensor_cores),
                          *s.peaks.items()]:
            assert fig.source.strip(), f"{key} {what} has no source"
            if fig.from_sparse:  # every value is dense: a datasheet's sparse figure is halved, and says so
                assert "sparsity, halved" in fig.source, (key, what)
        assert 8 <= s.memory_gb.value <= 200, key
        assert 100 <= s.bandwidth_gbs.value <= 10_000, key
        assert 1 <= s.peaks["fp32"].value <= 100, key  # TFLOP/s
        assert s.peaks["fp16"].value > s.peaks["fp32"].value, key  # tensor cores beat the fp32 units
        assert s.peaks["int8"].value >= s.peaks["fp16"].value, key
        assert 40 <= s.sm_count <= 200 and s.smem_per_sm_kib >= 64 and s.cc >= (7, 5), key


def test_capability_matrix():
    cat = catalogue()
    t4, h100 = capabilities(cat["T4"]), capabilities(cat["H100-SXM"])
    assert "BF16" not in t4.allowed_formats() and "bf16 tensor cores" in t4.formats["BF16"]
    assert t4.windows and t4.qk8  # Triton kernels need sm_80
    assert {"BF16", "W8A8", "W4A8", "W4A16"} <= h100.allowed_formats() and not h100.windows
    assert not cat["H100-SXM"].int4_tensor_cores.value and "int4" not in cat["H100-SXM"].peaks
    # W4A8 is never priced at an INT4 rate, even where INT4 tensor cores exist (T4)
    for key in ("T4", "H100-SXM", "A100-80GB"):
        t = from_spec(cat[key])
        eff = cat[key].defaults["efficiency"]["gemm"]
        assert t.gemm["W4A8"].tflops == pytest.approx(cat[key].peaks["int8"].value * eff)
    assert from_spec(cat["T4"]).dtype == "fp16" and set(from_spec(cat["T4"]).runtimes) == {"fp16", "fp32"}
    assert from_spec(cat["H100-SXM"]).dtype == "bf16"


def test_devices_command_lists_the_catalogue(capsys):
    rc, out, err = run_cli(capsys, "devices")
    assert rc == 0, err
    for key in catalogue():
        assert key in out
    assert "T4" in out and "BF16" in out.splitlines()[[k for k in catalogue()].index("T4") + 1]


# ---------------------------------------------------------------------------------------------
# The roofline


def test_roofline_hand_cases():
    # 2 GFLOP at 10 TFLOP/s = 0.2 ms of compute; 1 MB at 1000 GB/s = 0.001 ms: compute-bound
    assert roofline_ms(2e9, 1e6, 10.0, 1000.0, 0.005) == pytest.approx(0.205)
    # 2 MFLOP at 10 TFLOP/s = 0.0002 ms; 100 MB at 1000 GB/s = 0.1 ms: memory-bound
    assert roofline_ms(2e6, 1e8, 10.0, 1000.0) == pytest.approx(0.1)
    # a linear on an H100 at the spec tier: M=4096, K=N=1024 in bf16 at 60% of 989 TFLOP/s
    t = from_spec(catalogue()["H100-SXM"])
    p = priced(synthetic_profile(2, 256, device="cpu"), t).cost_model
    M, K, N = 4096, 1024, 1024
    flops, nbytes = 2.0 * M * K * N, (M * K + K * N + M * N) * 2
    assert linear_bytes(K, N, M, "fp", 2) == nbytes
    compute = flops / (989.5 * 0.6 * 1e9)  # ms
    memory = nbytes / (3350 * 0.8 * 1e6)
    assert p.linear_ms(K, N, M, "fp") == pytest.approx(0.005 + max(compute, memory), rel=1e-9)
    # W8A8 at the int8 rate, with the activations' quantization as a second launch
    w8 = (2 * M * K * N) / (1979.0 * 0.6 * 1e9)
    assert p.linear_ms(K, N, M, "W8A8") == pytest.approx(0.010 + max(w8, linear_bytes(K, N, M, "W8A8", 2)
                                                                     / (3350 * 0.8 * 1e6)), rel=1e-9)
    # fp32 runtime: the fp32 peak (TF32 is left off)
    fp32 = 0.005 + max(flops / (67.0 * 0.6 * 1e9), (M * K + K * N + M * N) * 4 / (3350 * 0.8 * 1e6))
    assert p.linear_ms(K, N, M, "fp", "fp32") == pytest.approx(fp32, rel=1e-9)
    assert Throughput(1.0, 0.0).ms(1e9, 0.0, 1.0) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Pricing a profile for a target


def test_host_ops_follow_scales_and_blocks():
    """The operator count's fit (two depths, two schedules) predicts a third model's count."""
    import torch

    from litevar.models.core.family import ModelFlags, get_family
    from litevar.profiler.hostops import count_ops, host_ops
    ops = host_ops("var")
    family = get_family("var")
    vae, model = family.load(ModelFlags(family="var", random_init=True, depth=3, patch_nums=(1, 2, 3, 4)),
                             torch.device("cpu"))
    # frozen like a loaded checkpoint (a parameter that requires grad has its bf16 copy held by
    # autocast's weight cache through a whole generation: more memory than the model prices)
    assert not any(p.requires_grad for m in (vae, model) for p in m.parameters())
    measured = count_ops(family.transformer_phase(model, 1, "fp32"))
    predicted = ops.count(4, 3) - ops.decode
    # the fit has 3 parameters on 4 counts; sampling adds a few operators per scale that do not
    # follow S*D exactly: within 2% of a count of ~800
    assert abs(predicted / measured - 1) < 0.02, (predicted, measured)
    assert ops.c > 10 and ops.decode > 10


def test_priced_profile_keeps_what_stays_and_reprices_what_moves():
    prof = synthetic_profile(4, 256, device="cpu")
    t = from_spec(catalogue()["A100-80GB"])
    p = priced(prof, t)
    assert p.meta["target"]["tier"] == "spec" and "validation" not in p.meta
    assert p.tables["sensitivity"] is prof.tables["sensitivity"]  # losses stay
    arch, pns = prof.arch, prof.arch.patch_nums
    base, there = prof.cost_model.predict(arch, pns, 1), p.cost_model.predict(arch, pns, 1)
    # the same exact bytes (weights, KV) at the target's dtype, the target's host and kernels
    assert there.memory_parts_mb["weights_mb"] == base.memory_parts_mb["weights_mb"]
    assert there.memory_parts_mb["kv_mb"] == pytest.approx(base.memory_parts_mb["kv_mb"] / 2)  # bf16 vs fp32
    assert there.latency_ms != base.latency_ms and there.overhead_ms > 0
    assert set(p.cost_model.dtypes()) == {"bf16", "fp32"}


def test_memory_budget_above_the_device_is_refused(tmp_path, capsys):
    path = tmp_path / "p.json"
    synthetic_profile(4, 256, device="cpu").save(path)
    rc, _, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--device", "T4",
                         "--max-memory-gib", 40, "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "40", "NVIDIA Tesla T4", "15.00 GiB")


def test_plan_for_a_catalogue_gpu_respects_its_capabilities(tmp_path, capsys):
    path = tmp_path / "p.json"
    prof = synthetic_profile(4, 256, device="cpu")
    prof.meta["runtime_loss"] = {"bf16": 1e-4, "fp16": 2e-4}
    prof.save(path)
    out = tmp_path / "t4.json"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--device", "T4",
                              "--max-memory-gib", 1, "--out", out)
    assert rc == 0, err
    plan = Plan.load(out)
    assert plan.predicted.tier == "spec" and plan.device["tier"] == "spec" and plan.device["type"] == "cuda"
    assert "BF16" not in set(plan.formats.values()) and plan.dtype in ("fp16", "fp32")
    assert not (plan.windows and plan.windows.widths) and not plan.qk_int8  # no Triton kernels below sm_80
    assert "spec tier" in stdout and "CUDA context" in plan.predicted.memory_covers
    # budget on what the process holds: allocator peak x (1 + reserve) + context <= budget
    assert plan.predicted.process_memory_mb <= 1024 * (1 + 1e-9)


def test_a_plan_for_a_gpu_is_refused_on_this_cpu(tmp_path, capsys):
    out = tmp_path / "l4.json"
    rc, _, err = run_cli(capsys, "plan", "--profile", "profiles/default-cpu.json", "--resolution", 256,
                         "--device", "L4", "--max-memory-gib", 2, "--out", out)
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "generate", "--plan", out, "--classes", "1", "--out", tmp_path / "x.png")
    assert_one_line_error(rc, err, "NVIDIA L4", "spec tier", "litevar calibrate")


def test_explain_needs_the_device_of_a_priced_plan(tmp_path, capsys):
    path = tmp_path / "p.json"
    prof = synthetic_profile(4, 256, device="cpu")
    prof.meta["runtime_loss"] = {"bf16": 1e-4, "fp16": 2e-4}
    prof.save(path)
    out = tmp_path / "h100.json"
    assert run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--device", "H100-SXM",
                   "--min-speedup", 1.0, "--guard", 0, "--out", out)[0] == 0
    rc, _, err = run_cli(capsys, "explain", out, "--profile", path)
    assert_one_line_error(rc, err, "--device", "spec tier")
    rc, stdout, err = run_cli(capsys, "explain", out, "--profile", path, "--device", "H100-SXM")
    assert rc == 0, err
    assert "spec tier" in stdout


# ---------------------------------------------------------------------------------------------
# The runtime dtype as a decision


def _two_dtype_profile(bf16_loss: float) -> Profile:
    """A synthetic profile that priced bf16 as well: its linears and attention 1.6x faster (no
    coverage table, so no windows: the synthetic coverage's kept fractions are approximate)."""
    prof = synthetic_profile(4, 256, device="cpu")
    del prof.tables["coverage"]
    cm = prof.meta["cost_model"]
    for key in [k for k in cm["linear"] if k.endswith("|fp32")]:
        fit = dict(cm["linear"][key])
        fit["coef"] = [c / 1.6 for c in fit["coef"]]
        cm["linear"][key.replace("|fp32", "|bf16")] = fit
    for key in list(cm["attn"]):
        cm["attn"][f"{key}@bf16"] = {**cm["attn"][key], "coef": [c / 1.6 for c in cm["attn"][key]["coef"]]}
    cm["runtimes"] = {"bf16": dict(cm["e2e"])}
    prof.meta["runtime_loss"] = {"bf16": bf16_loss}
    return prof


@pytest.mark.parametrize("bf16_loss, expect", [(1e-6, "bf16"), (10.0, "fp32")])
def test_auto_dtype_keeps_the_least_loss_plan(tmp_path, capsys, bf16_loss, expect):
    path = tmp_path / "p.json"
    prof = _two_dtype_profile(bf16_loss)
    prof.save(path)
    out = tmp_path / "plan.json"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--min-speedup", 1.1,
                              "--guard", 0, "--out", out)
    assert rc == 0, err
    plan = Plan.load(out)
    tried = plan.solver["dtypes"]
    assert set(tried) == {"fp32", "bf16"} and plan.dtype == expect
    losses = {d: v["loss"] for d, v in tried.items() if v is not None}
    assert plan.predicted.loss == pytest.approx(min(losses.values()))
    assert plan.predicted.loss >= (bf16_loss if expect == "bf16" else 0.0)
    # its figures are the cost model's at that dtype
    pred = plan_prediction(plan, Profile.load(path))
    assert pred.latency_ms == pytest.approx(plan.predicted.latency_ms, rel=1e-9)


def test_plan_never_slower_than_the_best_single_dtype(tmp_path, capsys):
    """At a budget of the whole-model bf16 run's own predicted speed, the plan is at least as fast
    at no more loss (the bf16 run is one of its candidates)."""
    prof = _two_dtype_profile(1e-3)
    path = tmp_path / "p.json"
    prof.save(path)
    cm, arch, pns = prof.cost_model, prof.arch, prof.arch.patch_nums
    knob = cm.predict(arch, pns, 1).latency_ms / cm.predict(arch, pns, 1, dtype="bf16").latency_ms
    out = tmp_path / "plan.json"
    rc, _, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--min-speedup", knob,
                         "--guard", 0, "--out", out)
    assert rc == 0, err
    plan = Plan.load(out)
    assert plan.predicted.speedup >= knob * (1 - 1e-6) and plan.predicted.loss <= 1e-3 + 1e-12


def test_a_dtype_without_a_measured_loss_is_refused(tmp_path, capsys):
    prof = _two_dtype_profile(1e-3)
    del prof.meta["runtime_loss"]
    path = tmp_path / "p.json"
    prof.save(path)
    rc, _, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--min-speedup", 1.0,
                         "--dtype", "bf16", "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "bf16", "runtime_loss", "--stages sensitivity")
    rc, _, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--min-speedup", 1.0,
                         "--dtype", "fp16", "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "fp16", "--runtime-dtypes")


# ---------------------------------------------------------------------------------------------
# Calibration


def test_calibration_file_round_trips_into_a_target(tmp_path):
    """A short calibration of this CPU at the shipped default model's shapes: every fit positive,
    the target it loads as is at the calibrated tier with both runtime dtypes."""
    from litevar.models.core.family import get_family
    from litevar.profiler import calibrate as cal
    profile = Profile.load("profiles/default-cpu.json")
    arch = profile.arch
    c = cal.calibrate("cpu", get_family("var"), arch, ("fp32", "bf16"), budget_s=20.0, progress=False,
                      profile=profile)
    path = tmp_path / "here.json"
    cal.write(c, path)
    t = load_target(str(path))
    # the dense generation it timed (the shipped default model, fp32 at least: 0.2 s on a Zen 3)
    # sets the in-model factor, so the dense model priced for it comes out as that generation measured
    gen = c["generation"]
    assert gen["arch"] == arch.to_dict() and gen["ms"]["fp32"] > 0
    for dtype, ms in gen["ms"].items():  # as timed, scaled to the kernel sweep's speed
        assert gen["speed_ratio"][dtype] > 0 and ms * gen["speed_ratio"][dtype] == pytest.approx(gen["raw_ms"][dtype])
    assert set(gen["ms"]) | set(gen["skipped"]) == set(t.runtimes)
    cm = priced(profile, t).cost_model
    for dtype, ms in gen["ms"].items():
        assert cm.predict(arch, arch.patch_nums, 1, dtype=dtype).latency_ms == pytest.approx(ms, rel=1e-9)
    # each other attention backend (a KV-cache format's call, QK8, windows), timed at the model's own
    # scales, prices that backend's calls (else priced as dense attention): KV8's dequantisation and
    # a window's masking are not free on any CPU
    from litevar.profiler.calibrate import backend_jobs
    from litevar.profiler.devices import attention_work
    # (a short budget times the first few: KV8's first; a full calibration times them all)
    for dtype, rt in t.runtimes.items():
        assert "dense_kv8" in rt.backends and set(rt.backends) <= {b for b, _ in backend_jobs()}
        assert all(k.tflops > 0 for k in rt.backends.values())
        fitted = [p for p in c["points"][dtype]["backends"] if p["backend"] in rt.backends]
        for p in (fitted[0], fitted[-1]):
            args = p["B"], p["H"], p["D"], p["q_len"], p["kv_len"]
            priced_ms = cm.attn_ms(*args, p["kept"], p["backend"], dtype)
            flops, nbytes = attention_work(*args, p["kept"], C.DTYPE_BYTES[dtype])
            assert priced_ms == pytest.approx(rt.backends[p["backend"]].ms(flops, nbytes, t.bandwidth_gbs), rel=1e-9)
            assert priced_ms != cm.attn_ms(*args, p["kept"], "dense", dtype)
    # bf16 where it was timed in its share (an AVX2-only CPU emulates it, ~60x slower than fp32:
    # then it is left out, said why, and never planned)
    assert t.tier == "calibrated" and t.type == "cpu" and "fp32" in t.runtimes
    assert set(t.runtimes) | set(c["runtimes_left_out"]) == {"fp32", "bf16"}
    assert all("budget" in why for why in c["runtimes_left_out"].values())
    for rt in t.runtimes.values():
        assert rt.gemm["fp"].tflops > 0 and rt.attention.tflops > 0
    assert t.guard["latency"] >= TIER_GUARD["calibrated"]["latency"]
    assert t.bandwidth_gbs > 0 and 0 < t.dispatch_ms < 1.0
    bad = json.loads(path.read_text()) | {"version": 1}
    path.write_text(json.dumps(bad))
    with pytest.raises(Exception, match="version 2"):
        load_target(str(path))


def test_in_model_factor_prices_the_timed_generation_and_only_for_its_model(tmp_path, capsys):
    """The factor on the target's kernel prices: with a dense generation of the profile's model timed
    (a random time, from twice to five times the kernels' price plus the overhead), the dense model
    is priced at exactly that, and every plan's dense kernels take the same factor. Another model's
    generation, or none, leaves the kernels as the isolated calls ran (factor 1); a generation
    faster than the overhead priced for it floors the factor."""
    import random

    from litevar.profiler.devices import IN_MODEL_FLOOR, in_model_factors
    profile = Profile.load("profiles/default-cpu.json")
    arch, cal = profile.arch, json.loads(Path("devices/avx2.json").read_text())
    cal.pop("generation", None)
    bare = priced(profile, from_calibration(cal)).cost_model
    p = bare.predict(arch, arch.patch_nums, 1, dtype="fp32")
    kernels = p.latency_ms - p.overhead_ms
    factor = random.uniform(2.0, 5.0)
    cal["generation"] = {"arch": arch.to_dict(), "batch": 1, "ms": {"fp32": p.overhead_ms + factor * kernels},
                         "skipped": {}}
    prof = priced(profile, from_calibration(cal))
    assert prof.meta["target"]["in_model"]["fp32"] == pytest.approx(factor, rel=1e-9)
    assert prof.cost_model.predict(arch, arch.patch_nums, 1, dtype="fp32").latency_ms == pytest.approx(
        p.overhead_ms + factor * kernels, rel=1e-9)
    # a plan with quantized layers: its fp linears and attention take the factor, its quantized
    # linears (no generation ran them there) do not
    plan = Plan.load("plans/default-cpu-256-x10.json")
    a, b = (plan_prediction(plan, pp) for pp in (priced(profile, from_calibration({**cal, "generation": None})), prof))
    quant = sum(v for n, v in a.per_layer_ms.items() if plan.formats.get(n, "fp") != "fp" and not n.endswith(".qk"))
    assert 0 < quant < a.latency_ms - a.overhead_ms
    assert b.latency_ms - b.overhead_ms == pytest.approx(factor * (a.latency_ms - a.overhead_ms - quant) + quant,
                                                         rel=1e-9)
    other = {**cal["generation"], "arch": {**arch.to_dict(), "depth": arch.depth + 1}}
    factors, note = in_model_factors(bare, arch, from_calibration({**cal, "generation": other}))
    assert factors == {} and "another model" in note
    assert priced(profile, from_calibration({**cal, "generation": None})).meta["target"]["in_model"] == {}
    fast = {**cal["generation"], "ms": {"fp32": 0.5 * p.overhead_ms}}
    assert in_model_factors(bare, arch, from_calibration({**cal, "generation": fast}))[0] == {"fp32": IN_MODEL_FLOOR}
    # `litevar plan --device CALIBRATION` says which factor priced it and records it in the plan
    path, out = tmp_path / "cal.json", tmp_path / "plan.json"
    path.write_text(json.dumps(cal))
    rc, text, _ = run_cli(capsys, "plan", "--profile", "profiles/default-cpu.json", "--resolution", 256, "--device",
                          path, "--max-latency-ms", 2 * p.latency_ms * factor, "--out", out)
    assert rc == 0 and f"in-model factor: fp32 {factor:.2f}" in text
    assert Plan.load(out).device["in_model"]["fp32"] == pytest.approx(factor, rel=1e-9)


def test_linear_bytes_counts_weights_in_their_format():
    assert linear_bytes(64, 32, 8, "fp", 2) == 8 * 64 * 2 + 64 * 32 * 2 + 8 * 32 * 2
    assert linear_bytes(64, 32, 8, "W8A8", 2) == 8 * 64 * 2 + C.weight_bytes(64, 32, "W8A8", 2) + 8 * 32 * 2


def test_throughput_fit_is_bounded_by_the_peak():
    """Calls whose time is all overhead (t = 0.05 ms whatever the flops, as small GEMMs on a GPU)
    leave the throughput free: unbounded it runs past any hardware; bounded by the catalogue's
    peak it stops there, and the fit's times are the same (overhead-bound either way)."""
    from litevar.profiler.calibrate import fit_throughput
    flops = [2e5, 2e6, 2e7, 2e8]
    ms = [0.05] * 4
    free, _ = fit_throughput(flops, [1.0] * 4, ms, 1000.0)
    bound, rms = fit_throughput(flops, [1.0] * 4, ms, 1000.0, peak_tflops=100.0)
    assert free.tflops > 100.0 >= bound.tflops
    assert rms < 0.05  # 2e8 flops at 100 TFLOP/s is 0.002 ms: the overhead still explains every point


def test_a_caches_cost_per_scale_is_fitted_and_priced_per_scale_it_assembles():
    """A KV-cache call writes, reads and dequantizes each scale it holds on its own. Timed at the
    scales of a schedule (noise-free times from a random overhead, throughput and cost per scale),
    the fit recovers all three; the roofline alone cannot (its rms is the miss). Priced, a cache
    keeping two scales pays two scales' cost, one keeping ten pays ten (costmodel.kv_call_ms)."""
    import numpy as np

    from litevar.kernels.kvcache import KeepRule, KVSpec
    from litevar.profiler.calibrate import fit_throughput
    rng = np.random.default_rng()
    o, P, s, bw = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.5), rng.uniform(0.02, 0.3), 20.0
    pns = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    ends = np.cumsum([p * p for p in pns])
    work = [attention_work(2, 4, 64, p * p, int(e), 1.0, 4) for p, e in zip(pns, ends)]
    segs = np.arange(1, len(pns) + 1)
    ms = [o + s * n + max(f / (P * 1e9), b / (bw * 1e6)) for (f, b), n in zip(work, segs)]
    fit, rms = fit_throughput([f for f, _ in work], [b for _, b in work], ms, bw, None, segs)
    # noise-free points of the fitted form: recovered to the solver's tolerance
    assert (fit.overhead_ms, fit.tflops, fit.per_segment_ms) == pytest.approx((o, P, s), rel=1e-4)
    assert rms < 1e-6
    assert fit_throughput([f for f, _ in work], [b for _, b in work], ms, bw)[1] > 1e-3
    # priced for a target whose KV8 calls have that fit
    profile = Profile.load("profiles/default-cpu.json")
    t = load_target("devices/avx2.json")
    rt = t.runtime(t.dtype)
    rt.backends["dense_kv8"] = fit
    cm = priced(profile, t).cost_model
    arch, si = profile.arch, len(pns) - 1
    q, kv = pns[si] ** 2, int(ends[si])
    for keep, n in ((KeepRule(0, None), len(pns)), (KeepRule(1, 1), 2)):
        spec = KVSpec("KV8", keep)
        kv_kept = sum(pns[j] ** 2 for j in spec.keep.parts(si))
        plain = cm.attn_ms(2, arch.num_heads, arch.head_dim, q, kv, 1.0, "dense")
        dense_kept = cm.attn_ms(2, arch.num_heads, arch.head_dim, q, kv_kept, 1.0, "dense")
        one = cm.attn_ms(2, arch.num_heads, arch.head_dim, q, kv_kept, 1.0, "dense_kv8", segments=1)
        got = cm.kv_call_ms(arch, pns, si, 2, spec, plain)
        assert got == pytest.approx(dense_kept + max(0.0, one + s * (n - 1) - dense_kept), rel=1e-9)


def test_refit_of_a_calibration_reproduces_its_fits(tmp_path, capsys):
    """`litevar calibrate --refit` fits again from the recorded points: on a CPU calibration (no
    catalogue peak bounds it) the fits come out as recorded (the same least squares on the same
    points); a file without points gets one line."""
    src = json.loads(open("devices/avx2.json").read())
    out = tmp_path / "refit.json"
    assert run_cli(capsys, "calibrate", "--refit", "devices/avx2.json", "--out", out)[0] == 0
    new = json.loads(out.read_text())
    for dtype, rt in src["runtimes"].items():
        for fmt, g in rt["gemm"].items():
            assert new["runtimes"][dtype]["gemm"][fmt]["tflops"] == pytest.approx(g["tflops"], rel=1e-3)
            assert new["runtimes"][dtype]["gemm"][fmt]["overhead_ms"] == pytest.approx(g["overhead_ms"], rel=1e-3)
    assert new["points"] == src["points"] and "refitted" in new
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in src.items() if k != "points"}))
    rc, _, err = run_cli(capsys, "calibrate", "--refit", bad, "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "with its points", "litevar calibrate")


def test_activation_memory_is_never_scaled_below_what_was_measured():
    """Autocast keeps the residual stream, norms and softmax in float32, so the activation factor at
    bf16 is the one measured on bf16 generations where the profile has them, else the fp32 one
    (never halved by the dtype's bytes); fp32 on a bf16 target doubles what bf16 holds."""
    prof = Profile.load("profiles/default-cpu.json")
    cm = prof.cost_model
    assert cm.activation_coef("bf16") == cm.runtimes["bf16"].act_coef
    assert cm.activation_coef("fp32") == cm.memory.coef[1]
    d16 = Profile.load("profiles/d16-cpu.json").cost_model
    assert "bf16" not in d16.runtimes and d16.activation_coef("bf16") == d16.memory.coef[1]
    t = priced(prof, from_spec(catalogue()["H100-SXM"]))
    assert t.cost_model.activation_coef(t.cost_model.dtype) == pytest.approx(cm.activation_coef(t.cost_model.dtype))
    assert t.cost_model.activation_coef("fp32") == pytest.approx(cm.memory.coef[1])


def test_calibration_report_names_every_left_out_kernel_and_dtype(capsys):
    """`litevar calibrate` prints a format whose kernel failed under its dtype, a runtime dtype left
    out of the calibration, and the dense generation it timed or not, each on its own line."""
    from litevar.commands.calibrate import _report
    fit = {"tflops": 1.0, "overhead_ms": 0.01}
    rt = {"gemm": {"fp": {**fit, "efficiency": None}}, "attention": fit, "failed": {"W4A8": "no kernel"}}
    _report("here.json", {"name": "cpu", "runtimes": {"fp32": rt}, "seconds": 1.0, "bandwidth_gbs": 1.0,
                          "dispatch_ms": 0.001, "validation": {"latency_err": 0.1},
                          "runtimes_left_out": {"bf16": "too slow in its share"},
                          "generation": {"ms": {"fp32": 12.5}, "skipped": {"fp16": "priced at 9 s"}}})
    out = capsys.readouterr().out
    assert "fp32  W4A8   left out: its kernel fails on this device (no kernel)" in out
    assert "bf16  left out: too slow in its share" in out
    assert "fp32  dense generation (batch 1) 12.5 ms at the kernel sweep's speed (timed 12.5 ms)" in out
    assert "fp16  dense generation not timed: priced" in out


def test_a_generation_out_of_reach_is_not_timed():
    """calibrate times a generation only where its price (twice: a warm-up and a run) fits the time
    left and its memory fits what the device has free; each refusal says which and the fix."""
    import time
    from types import SimpleNamespace

    from litevar.models.core.device import device_of
    from litevar.profiler.calibrate import _generation_out_of_reach
    dev, free_mib = device_of("cpu"), device_of("cpu").available_bytes() / 2 ** 20
    soon = time.monotonic() + 10.0
    assert _generation_out_of_reach(dev, SimpleNamespace(latency_ms=100.0, memory_mb=1.0), soon) is None
    assert "--budget-s" in _generation_out_of_reach(dev, SimpleNamespace(latency_ms=6e3, memory_mb=1.0), soon)
    why = _generation_out_of_reach(dev, SimpleNamespace(latency_ms=100.0, memory_mb=2 * free_mib), soon)
    assert "GiB free" in why and "--no-generation" in why


def test_timing_model_is_exactly_the_architecture_or_none(monkeypatch):
    """What `litevar calibrate` times: the shipped default model for its own architecture; for an
    architecture neither it nor an untrained official one of that depth has (the default's
    narrow width at another depth), None, found on the meta device without building anything."""
    from litevar.models.core.family import get_family
    fam, arch = get_family("var"), Profile.load("profiles/default-cpu.json").arch
    vae, model = fam.timing_model(arch, "cpu")
    assert fam.arch_of(model) == arch
    other = fam.arch_from_dict({**arch.to_dict(), "depth": arch.depth + 1})
    built, load = [], type(fam).load
    monkeypatch.setattr(type(fam), "load", lambda self, flags, device: built.append(str(device)) or load(self, flags,
                                                                                                        device))
    assert fam.timing_model(other, "cpu") is None
    assert built == ["meta"]


def test_calibrate_times_a_generation_of_the_profiles_model_unless_told_not_to(tmp_path, capsys, monkeypatch):
    """`litevar calibrate --profile P` hands P to the calibration (which times its model's
    generation); --no-generation does not; without --profile there is no model to time."""
    from litevar.profiler import calibrate as cal
    seen = []

    def fake(device, family, arch, dtypes, budget, name, profile=None):
        seen.append(profile)
        raise SystemExit(0)  # stop before anything is timed
    monkeypatch.setattr(cal, "calibrate", fake)
    out = tmp_path / "c.json"
    for flags in (["--profile", "profiles/default-cpu.json"], ["--profile", "profiles/default-cpu.json",
                                                                "--no-generation"], []):
        assert run_cli(capsys, "calibrate", *flags, "--out", out)[0] == 0
    assert seen[0] is not None and seen[0].arch.depth == 4 and seen[1] is None and seen[2] is None


def test_backend_scales_span_the_calls_each_backend_makes():
    """Windows are timed where they apply (the three largest scales from the fifth on); a backend
    that every scale's call runs (a KV cache's, QK8) from the first scale to the largest that fits
    the work cap, so its fit sees the small calls' fixed cost as well as the large calls' work."""
    import random

    import numpy as np

    from litevar.profiler.calibrate import backend_scales
    rng = random.Random()
    for _ in range(20):
        pns = tuple(sorted(rng.sample(range(1, 70), rng.randint(6, 13))))
        ends = np.cumsum([p * p for p in pns])
        work = [pns[s] ** 2 * ends[s] for s in range(len(pns))]
        cap = rng.choice(work[5:])
        fits = [s for s in range(len(pns)) if work[s] <= cap]
        spread, windowed = backend_scales(pns, cap, False), backend_scales(pns, cap, True)
        assert spread[0] == fits[0] == 0 and spread[-1] == fits[-1] and len(spread) == min(5, len(fits))
        assert spread == sorted(set(spread)) and set(spread) <= set(fits)
        assert windowed == [s for s in fits if s >= 5][-3:]
