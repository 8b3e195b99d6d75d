"""apply_plan on the shipped default model, `generate --plan` and `bench --plan`.

Numerics: teacher-forced CFG logits of the planned model against the dense one on the dense
model's own samples. W8A8 on four linears: SQNR >= 35 dB and mean KL <= 5e-3 nats (measured
~46 dB, 4e-4). Windows + CFG sharing + QK INT8 + W8A8 together: SQNR >= 12 dB, KL <= 0.5 nats
(measured ~19 dB, 0.16): the plan's changes are real, and the model still works.
"""
import hashlib
import json
import logging

import pytest
import torch

from litevar.commands.cli import main
from litevar.kernels.mdwa import CFGShared, MaskedReference
from litevar.kernels.qlinear import QuantLinear
from litevar.kernels.windows import WindowConfig
from litevar.models.core.attention import DenseAttention
from litevar.models.core.device import fingerprint
from litevar.models.core.errors import UserError
from litevar.models.default import load_default
from litevar.models.var.build import arch_of, weights_sha256
from litevar.models.var.inference import cfg_logits
from litevar.models.var.schedules import SCHEDULES
from litevar.planner.plan import Plan
from litevar.runtime import apply_plan
from tests.cli_util import assert_one_line_error, run_cli
from tests.test_plan import ARCH, make_plan

W8A8_LAYERS = {"blocks.0.ffn.fc1": "W8A8", "blocks.1.attn.proj": "W8A8", "blocks.2.ada_lin.1": "W8A8",
               "head": "W8A8"}
CFG = 4.0


@pytest.fixture(scope="module")
def reference():
    """Dense model's labels, sampled tokens and CFG logits (teacher-forced on those tokens)."""
    vae, var = load_default()
    labels = torch.arange(4)
    _, tokens = var.autoregressive_infer_cfg(4, labels, g_seed=0, cfg=CFG, top_k=900, top_p=0.95,
                                             return_tokens=True)
    return labels, tokens, cfg_logits(var, vae, labels, tokens, CFG), weights_sha256(var)


def plan_for(sha: str, **kw) -> Plan:
    kw.setdefault("formats", {})
    kw.setdefault("windows", None)
    kw.setdefault("qk_int8", [])
    kw.setdefault("cfg_shared", [])
    kw.setdefault("device", fingerprint("cpu"))
    return make_plan(sha=sha, **kw)


def planned(plan: Plan, **kw):
    vae, var = load_default()
    return vae, apply_plan(vae, var, plan, kernel="torch", **kw)


def load_double():
    """The dense default model in float64."""
    vae, var = load_default()
    return vae.double(), var.double()


def sqnr_db(ref, test) -> float:
    return (10 * torch.log10(ref.pow(2).mean() / (ref - test).pow(2).mean())).item()


def mean_kl(p_BLV, q_BLV) -> float:
    lp, lq = p_BLV.log_softmax(-1), q_BLV.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).mean().item()


def closeness(reference, vae, var) -> tuple[float, float]:
    labels, tokens, ref, _ = reference
    out = cfg_logits(var, vae, labels, tokens, CFG)
    return sqnr_db(ref, out), mean_kl(ref, out)


def quantized_fqns(var) -> set[str]:
    return {n for n, m in var.named_modules() if isinstance(m, QuantLinear)}


def test_fingerprints_of_the_default_model():
    _, a = load_default()
    _, b = load_default()
    assert arch_of(a) == ARCH
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        b.blocks[0].ffn.fc1.bias[0] += 1e-3
    assert weights_sha256(a) != weights_sha256(b)


def test_w8a8_layers_are_swapped_exactly_and_stay_close(reference):
    vae, var = planned(plan_for(reference[3], formats=W8A8_LAYERS))
    assert quantized_fqns(var) == set(W8A8_LAYERS)
    fc1 = var.blocks[0].ffn.fc1
    assert fc1.weight_q.dtype == torch.int8 and fc1.path == "w8a8" and not hasattr(fc1, "weight")
    assert all(isinstance(b.attn.backend, DenseAttention) for b in var.blocks)
    sqnr, kl = closeness(reference, vae, var)
    assert sqnr >= 35 and kl <= 5e-3, (sqnr, kl)


def test_int4_weights_are_stored_packed(reference):
    _, var = planned(plan_for(reference[3], formats={"head": "W4A16", "blocks.3.ffn.fc2": "W4A8"}))
    assert quantized_fqns(var) == {"head", "blocks.3.ffn.fc2"}
    assert var.head.weight_q.dtype == torch.uint8 and var.head.weight_q.shape == (512, 128)
    assert var.blocks[3].ffn.fc2.weight_q.shape == (256, 512)


def test_full_plan_sets_attention_per_block_and_stays_usable(reference):
    windows = WindowConfig.uniform(SCHEDULES[256], [1], 4, 3)
    plan = plan_for(reference[3], formats=W8A8_LAYERS, windows=windows, cfg_shared=[2], qk_int8=[3])
    vae, var = planned(plan)
    assert quantized_fqns(var) == set(W8A8_LAYERS)
    assert isinstance(var.blocks[0].attn.backend, DenseAttention)
    backend = var.blocks[1].attn.backend
    assert all(var.blocks[i].attn.backend is backend for i in (1, 2, 3))
    assert isinstance(backend, CFGShared) and backend.layers == {2}
    inner = backend.inner
    assert isinstance(inner, MaskedReference) and set(inner.windows.widths) == {1}
    assert inner.options[3].qk_int8 and not inner.options[3].share_cfg and inner.options[2].share_cfg
    sqnr, kl = closeness(reference, vae, var)
    assert 12 <= sqnr < 35 and kl <= 0.5, (sqnr, kl)
    img = var.autoregressive_infer_cfg(2, torch.tensor([1, 2]), g_seed=0, cfg=CFG, top_k=900, top_p=0.95)
    assert img.shape == (2, 3, 64, 64) and 0 <= img.min() and img.max() <= 1


def test_options_without_windows_still_configure_attention(reference):
    _, var = planned(plan_for(reference[3], cfg_shared=[0], qk_int8=[1]))
    assert quantized_fqns(var) == set()
    backend = var.blocks[0].attn.backend
    assert isinstance(backend, CFGShared) and backend.layers == {0}
    assert var.blocks[1].attn.backend is backend and backend.inner.options[1].qk_int8
    assert backend.inner.windows.widths == {}
    assert all(isinstance(var.blocks[i].attn.backend, DenseAttention) for i in (2, 3))


def test_mat_qkv_can_be_quantized(reference):
    qkv = {f"blocks.{i}.attn.mat_qkv": "W8A8" for i in range(4)}
    vae, var = planned(plan_for(reference[3], formats=qkv))
    assert quantized_fqns(var) == set(qkv)
    sqnr, kl = closeness(reference, vae, var)
    assert sqnr >= 25 and kl <= 2e-2, (sqnr, kl)


@pytest.mark.parametrize("fmt", ["BF16", "W8A8", "W4A16"])
def test_a_swapped_mat_qkv_keeps_the_runtime_dtype(reference, fmt):
    """Under bf16 autocast a swapped mat_qkv gives queries, keys and values in bf16, as the dense
    projection does, so the KV cache (allocated in the keys' dtype) holds bf16: its bias (q_bias, v_bias, float32
    parameters) is added in the module's output dtype, not the input's, which would promote the
    cache and attention of every block to float32 (twice the cache the memory model counts). In
    float32 nothing changes dtype. Dtypes are exact."""
    vae, dense = load_default()
    _, swapped = planned(plan_for(reference[3], formats={f"blocks.{i}.attn.mat_qkv": fmt for i in range(4)}))
    x_BlC = torch.randn(2, 5, dense.C)
    for dtype in (torch.bfloat16, torch.float32):
        with torch.no_grad(), torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
            want = [t.dtype for t in dense.blocks[0].attn.qkv(x_BlC)]
            got = [t.dtype for t in swapped.blocks[0].attn.qkv(x_BlC)]
        assert got == want and want[2] == dtype, (dtype, got, want)


@pytest.mark.parametrize("kw,needles", [
    (dict(resolution=512), ["schedule differs", "plan 512 px", "model 256 px"]),
    (dict(arch={**ARCH, "depth": 8, "num_heads": 8}), ["architecture differs", "depth: plan 8, model 4",
                                                      "num_heads: plan 8, model 4"]),
    (dict(sha="ef" * 32), ["weights differ", "efefefefefef"]),
])
def test_plan_for_another_model_is_refused(reference, kw, needles):
    plan = make_plan(**{"sha": reference[3], "windows": None, "qk_int8": [], "cfg_shared": [], **kw})
    vae, var = load_default()
    with pytest.raises(UserError) as e:
        apply_plan(vae, var, plan)
    msg = str(e.value)
    assert "\n" not in msg and "made for another model" in msg, msg
    assert all(n in msg for n in needles), msg
    assert quantized_fqns(var) == set()  # refused before anything changed


def test_applying_twice_is_refused(reference):
    plan = plan_for(reference[3], formats=W8A8_LAYERS)
    vae, var = planned(plan)
    with pytest.raises(UserError, match="already has quantized layers"):
        apply_plan(vae, var, plan)


def test_other_device_warns_or_refuses(reference, caplog):
    """Another CPU model: a warning (--strict-device refuses); another kind of device: refused."""
    from litevar.models.core.device import fingerprint
    here = fingerprint("cpu")
    other_cpu = plan_for(reference[3], device={"type": "cpu", "name": "Intel Xeon", "cpu_family": "6",
                                                "cpu_model": "143" if here.get("cpu_model") != "143" else "106"})
    with caplog.at_level(logging.WARNING, logger="litevar.runtime"):
        planned(other_cpu)
    assert "Intel Xeon" in caplog.text and "re-plan for this device" in caplog.text
    with pytest.raises(UserError, match="Intel Xeon"):
        planned(other_cpu, strict_device=True)
    gpu = plan_for(reference[3], device={"type": "cuda", "name": "NVIDIA H100 80GB HBM3"})
    with pytest.raises(UserError, match="NVIDIA H100.*litevar calibrate"):
        planned(gpu)


def test_apply_plan_reads_a_plan_file(reference, tmp_path):
    path = plan_for(reference[3], formats=W8A8_LAYERS).save(tmp_path / "plan.json")
    _, var = planned(str(path))
    assert quantized_fqns(var) == set(W8A8_LAYERS)


# ---- CLI ------------------------------------------------------------------------------------


def test_generate_with_plan_writes_png(reference, tmp_path, capsys):
    path = plan_for(reference[3], formats=W8A8_LAYERS, cfg_shared=[2]).save(tmp_path / "plan.json")
    out = tmp_path / "s.png"
    assert main(["generate", "--plan", str(path), "--classes", "1,2", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.read_bytes()[:4] == b"\x89PNG"


def test_generate_refuses_plan_for_another_resolution(reference, tmp_path, capsys):
    path = plan_for(reference[3], resolution=512).save(tmp_path / "plan.json")
    assert main(["generate", "--plan", str(path), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plan 512 px" in err, err


BENCH_KEYS = {"version", "batch", "resolution", "repeats", "warmup", "kernel", "dtype", "quality", "dense",
              "baselines", "plans", "text_encoder_mb"}
E2E_KEYS = {"latency_ms", "latency_ms_runs", "peak_mb", "process_peak_mb", "model_mb", "dtype", "loss", "top1"}


def test_bench_writes_every_figure(reference, tmp_path, capsys):
    windows = WindowConfig.uniform(SCHEDULES[256], [1], 4, 3)
    plan = plan_for(reference[3], formats=W8A8_LAYERS, windows=windows, cfg_shared=[2])
    path = plan.save(tmp_path / "plan.json")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--plan", str(path), "--repeats", "2", "--warmup", "1", "--kernel", "torch",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "dense" in text and "plan" in text, text
    whole = json.loads(out.read_text())
    assert whole["kind"] == "bench" and whole["provenance"]["command"].startswith("litevar bench")
    r = whole["data"]
    assert set(r) == BENCH_KEYS and r["version"] == 3 and r["quality"] is None and r["baselines"] == []
    assert r["text_encoder_mb"] is None  # VAR has none: every prediction is compared as the plan states it
    (e,) = r["plans"]
    for m in (r["dense"], e["measured"]):
        assert set(m) == E2E_KEYS and m["loss"] is None
        assert len(m["latency_ms_runs"]) == 2 and m["latency_ms"] > 0 and m["peak_mb"] >= m["model_mb"] > 0
    assert e["measured"]["model_mb"] < r["dense"]["model_mb"]  # int8 weights
    assert e["predicted"]["latency_ms"] == 55.0 and e["speedup"]["promised"] == pytest.approx(80 / 55)
    ratios = [d / m for d, m in zip(r["dense"]["latency_ms_runs"], e["measured"]["latency_ms_runs"])]
    assert e["speedup"]["measured"] == pytest.approx(sum(ratios) / 2)  # median of the two rounds' ratios
    assert e["speedup"]["of_medians"] == pytest.approx(r["dense"]["latency_ms"] / e["measured"]["latency_ms"])
    err = e["prediction_error"]
    assert err["latency"] == pytest.approx((55.0 - e["measured"]["latency_ms"]) / e["measured"]["latency_ms"])
    assert set(err) == {"latency", "memory", "process_memory", "loss", "dense_latency", "dense_memory",
                        "latency_drift_corrected"}
    pred_dense = e["predicted"]["dense_latency_ms"]  # the plan predicts 80 ms
    assert err["latency_drift_corrected"] == pytest.approx(55.0 / pred_dense * e["speedup"]["measured"] - 1)
    assert e["plan_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bench_several_plans_with_quality(reference, tmp_path):
    """Plans side by side in one run; --quality measures the loss the planner predicts: zero for
    the dense model, small for W8A8, larger when two blocks share attention across CFG too."""
    w8 = plan_for(reference[3], formats=W8A8_LAYERS).save(tmp_path / "w8.json")
    shared = plan_for(reference[3], formats=W8A8_LAYERS, cfg_shared=[0, 1, 2, 3]).save(tmp_path / "asc.json")
    out = tmp_path / "bench.json"
    assert main(["bench", "--plan", str(w8), "--plan", str(shared), "--repeats", "1", "--warmup", "0",
                 "--quality", "4", "--kernel", "torch", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["data"]
    assert r["quality"] == {"n": 4, "cfg": 4.0, "seed": 0}
    assert [e["plan"] for e in r["plans"]] == [str(w8), str(shared)]
    assert r["dense"]["loss"] == pytest.approx(0.0, abs=1e-6) and r["dense"]["top1"] == 1.0
    loss_w8, loss_asc = (e["measured"]["loss"] for e in r["plans"])
    assert 0 < loss_w8 < loss_asc
    assert all(0.5 < e["measured"]["top1"] < 1.0 for e in r["plans"])


def test_bench_refuses_plans_of_different_batches(reference, tmp_path, capsys):
    a = plan_for(reference[3], formats=W8A8_LAYERS).save(tmp_path / "a.json")
    b = plan_for(reference[3], formats=W8A8_LAYERS)
    b.batch = 2
    b = b.save(tmp_path / "b.json")
    rc, _, err = run_cli(capsys, "bench", "--plan", a, "--plan", b)
    assert_one_line_error(rc, err, "bench plans of one batch")


def test_eval_with_plan_reports_fidelity_to_dense(reference, tmp_path, capsys):
    path = plan_for(reference[3], formats=W8A8_LAYERS).save(tmp_path / "plan.json")
    out = tmp_path / "eval.json"
    assert main(["eval", "--plan", str(path), "--n", "4", "--batch", "4", "--no-ceiling", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fidelity vs dense" in printed and "reconstruction ceiling" not in printed
    r = json.loads(out.read_text())["data"]
    assert "reconstruction" not in r
    f = r["fidelity_vs_dense"]
    assert r["plan"] == str(path) and len(f["token_agreement_per_scale"]) == len(SCHEDULES[256])
    assert 0 <= f["cfg_kl_sum"] < 0.05  # W8A8 on four layers barely moves the distribution


def test_drift_corrected_error_cancels_a_uniform_slowdown():
    from litevar.commands.bench import drift_corrected_err
    # profiled: dense 100 ms, plan 50 ms; benched on a machine 20% slower that day: 120 and 60 ms
    assert drift_corrected_err(50.0, 100.0, 120 / 60) == pytest.approx(0.0)
    # the plan really is 10% slower than its predicted share of dense
    assert drift_corrected_err(50.0, 100.0, 120 / 66) == pytest.approx(60 / 66 - 1)
    assert drift_corrected_err(50.0, None, 2.0) is None


def test_paired_speedup_cancels_slow_rounds():
    """A VM runs whole rounds slow (1.6x here, 7 of 15 rounds at random) and a spell can begin
    between a round's two runs: the paired speedup still reads the true 1.25x, where the ratio of
    medians lands dense's median in the slow rounds and the plan's in the fast ones."""
    from litevar.commands.bench import paired_speedup
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    order = torch.randperm(15, generator=g)
    slow_R = torch.ones(15)
    slow_R[order[:7]] = 1.6
    jitter_2R = 1 + 0.01 * torch.rand(2, 15, generator=g)
    dense_R, plan_R = 100 * slow_R * jitter_2R[0], 80 * slow_R * jitter_2R[1]
    dense_R[order[7]] *= 1.6  # the spell began after dense's run of that round
    assert paired_speedup(dense_R.tolist(), plan_R.tolist()) == pytest.approx(1.25, rel=0.011)
    assert dense_R.median() / plan_R.median() > 1.9  # the unpaired estimate
    assert paired_speedup([100.0, 200.0], [50.0, 100.0]) == 2.0
    with pytest.raises(ValueError, match="equally many"):
        paired_speedup([100.0], [50.0, 60.0])


def test_planned_copy_costs_only_its_swapped_layers(reference):
    from litevar.runtime import planned_copy
    vae, var = load_default()
    logits = cfg_logits(var, vae, *reference[:2], CFG)
    planned_var = planned_copy(vae, var, plan_for(reference[3], formats=W8A8_LAYERS), kernel="torch")
    assert quantized_fqns(planned_var) == set(W8A8_LAYERS) and not quantized_fqns(var)
    own = {n: p.data_ptr() for n, p in var.named_parameters()}
    fresh = {n.rpartition(".")[0] for n, p in planned_var.named_parameters() if own.get(n) != p.data_ptr()}
    assert fresh <= set(W8A8_LAYERS)  # every other tensor is the dense model's own
    assert planned_var.vae_proxy[0] is vae
    assert torch.equal(cfg_logits(var, vae, *reference[:2], CFG), logits)  # the dense model is untouched


def test_eval_by_scale_reports_where_the_class_shows(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--n", "2", "--batch", "2", "--by-scale", "2", "--no-ceiling", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "where the class shows (2 held-out real images" in printed and "per class: disc" in printed
    r = json.loads(out.read_text())["data"]
    c, S = r["class_by_scale"], len(SCHEDULES[256])
    assert c["n"] == 2 and len(c["decoded"]) == S and len(c["forced"]) == S
    assert c["decoded"][-1] == 1.0  # every real test image decodes to its class (ceiling: 100% on 500)
    assert sum(map(sum, r["confusion"])) == 2 and len(r["per_class_accuracy"]) == 10


def test_reconstruction_ceiling_is_the_vqvae_on_real_images(capsys):
    """eval's ceiling (on 500 real images there; 64 here): the real test images encoded to tokens and
    decoded back, scored like generated ones, and printed."""
    from litevar.commands.eval import print_report
    from litevar.models.default.evaluation import Scorer
    vae, _ = load_default("cpu")
    scorer = Scorer(64)
    c = scorer.reconstruction(vae)
    assert c["n"] == 64 and 0.5 <= c["class_accuracy"] <= 1  # chance is 0.1
    assert c["psnr_db"] > 20  # each image's own flat mean colour scores 13.4 dB on these images, noise 6.7
    print_report({"n": 2, "cfg": 4.0, "top_k": 900, "top_p": 0.95, "seed": 0, "dtype": "fp32", "plan": None,
                  "world_size": 1, "seconds": 1.0, **scorer(torch.rand(2, 3, 64, 64), [0, 1]), "reconstruction": c,
                  "inception": {"skipped": "not asked for"}})
    assert f"VQVAE reconstruction ceiling (64 real images encoded and decoded): PSNR {c['psnr_db']:.1f} dB" in \
        capsys.readouterr().out


def test_device_mismatch_sees_a_cpu_generation_behind_one_model_name():
    from litevar.runtime import device_mismatch
    here = {"type": "cpu", "name": "AMD EPYC", "cpu_family": "26", "cpu_model": "2"}
    assert device_mismatch(dict(here), here) is None
    assert device_mismatch({"type": "cpu", "name": "AMD EPYC"}, here) is None  # older plans: not recorded
    assert device_mismatch({**here, "cpu_family": "25", "cpu_model": "17"}, here) == \
        "cpu_family: plan '25', here '26', cpu_model: plan '17', here '2'"


def test_kv_plan_teacher_forced_equals_cached_generation(reference):
    """A KV plan's loss is measured teacher-forced (bench --quality, profiler.quality.loss_of): each
    planned block gives those calls the keys and values its cache would hold, so the teacher-forced
    logits equal the logits of generating with the caches on the same tokens (KV4 evicting, KV8,
    a CFG-shared half cache), and differ from the dense model's."""
    labels, tokens, _, sha = reference
    plan = plan_for(sha, kv={0: {"format": "KV4", "keep": {"sinks": 1, "recent": 2}}, 1: {"format": "KV8"}},
                    kv_layout={"heads": ARCH["num_heads"], "head_dim": ARCH["embed_dim"] // ARCH["num_heads"]},
                    cfg_shared=[3])
    vae, var = planned(plan)
    vae, var = vae.double(), var.double()
    forced = cfg_logits(var, vae, labels, tokens, CFG)
    seen = []
    var.autoregressive_infer_cfg(len(labels), labels, g_seed=0, cfg=CFG, prefix_tokens=tokens,
                                 callback=lambda si, lg: seen.append(lg))
    cached = torch.cat(seen, 1)
    assert forced.dtype == cached.dtype == torch.float64
    # The two runs compute the same keys and values in a different order (every scale at once, or
    # one scale at a time), so they differ by rounding. In float32 that is ~1e-7 relative, enough
    # for a KV4 code at a rounding boundary to flip now and then (a key moves by one step of its
    # segment's scale, ~1/15 of the segment's range), and how often depends on the CPU's kernels.
    # In float64 the difference is ~1e-16 relative: a code flips only for a value within that of a
    # boundary, about 1e-15 of the ~1e5 values quantized here, so none flips and the logits (|.| <
    # 100) agree to float64 rounding through four blocks, ~1e-13. The bound, 1e-9, is 1e4 times
    # that and far below what one flipped code or any real difference between the paths moves (CFG
    # weights rounded to float32 in the teacher-forced path alone moved the logits by 6e-6).
    assert (cached - forced).abs().max().item() < 1e-9
    vae_d, var_d = load_double()
    ref = cfg_logits(var_d, vae_d, labels, tokens, CFG)
    assert mean_kl(ref, forced) > 1e-2  # the plan changes the model: 0.67 nats (eviction in block 0, ASC in 3)
