"""`litevar plan` and `litevar explain`: the plan file loads and round-trips, an infeasible budget
is one line naming the reachable minima, a sweep writes a CSV and a PNG."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from litevar.planner.plan import Plan
from tests.cli_util import assert_one_line_error, run_cli
from tests.test_planner import synthetic_profile


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "d4.json"
    synthetic_profile(4, 256, device="cpu").save(path)
    return path


def test_plan_writes_a_plan_that_loads_and_round_trips(profile_path, tmp_path, capsys):
    out = tmp_path / "plans" / "fast.json"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", profile_path, "--resolution", 256, "--min-speedup", 1.05,
                              "--max-memory-gib", 0.2, "--out", out)
    assert rc == 0, err
    assert "wrote" in stdout and "gap" in stdout
    plan = Plan.load(out)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_dict(json.loads(out.read_text())) == plan
    assert plan.name == "fast" and plan.resolution == 256 and plan.batch == 1
    assert plan.budgets["min_speedup"] == 1.05 and plan.budgets["max_memory_gib"] == 0.2
    s, p = plan.solver, plan.predicted
    assert s["status"] == "Optimal" and 0 <= s["gap"] <= 0.005 and s["seconds"] > 0 and s["time_limit_s"] == 10
    assert p.speedup >= 1.05 * (1 - 1e-6) and p.memory_mb <= 0.2 * 1024
    assert len(plan.profile_sha256) == 64
    assert set(plan.formats) >= {"word_embed", "head", "blocks.3.ffn.fc2"}


def test_infeasible_budget_is_one_line_with_the_reachable_minima(profile_path, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "plan", "--profile", profile_path, "--resolution", 256, "--max-latency-ms", 0.5,
                         "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "no plan meets the budgets", "reaches at best", " ms", " GiB")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv, needles", [
    ((), ("give at least one budget",)),
    (("--max-latency-ms", 5, "--formats", "W9A9"), ("unknown format 'W9A9'",)),
    (("--max-attn-flops", 1.5), ("--max-attn-flops: 1.5 is out of range",)),
    (("--max-latency-ms", 5, "--gap", 2), ("--gap: 2 is out of range",)),
])
def test_bad_input_is_one_line(profile_path, tmp_path, capsys, argv, needles):
    rc, _, err = run_cli(capsys, "plan", "--profile", profile_path, "--resolution", 256, *argv,
                         "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, *needles)


def test_missing_profile(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "plan", "--profile", tmp_path / "nope.json", "--resolution", 256,
                         "--max-latency-ms", 5, "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "nope.json")


def test_sweep_writes_csv_and_png(profile_path, tmp_path, capsys):
    out = tmp_path / "front" / "latency.csv"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", profile_path, "--resolution", 256, "--sweep", "latency",
                              "--points", 4, "--out", out)
    assert rc == 0, err
    df = pd.read_csv(out)
    assert len(df) == 4 and df["pareto"].any()
    solved = df[df["loss"].notna()].sort_values("budget")
    assert (solved["latency_ms"] <= solved["budget"] * (1 + 1e-6)).all()
    assert solved["loss"].iloc[-1] <= solved["loss"].iloc[0]  # a looser budget never costs more loss
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain(profile_path, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert run_cli(capsys, "plan", "--profile", profile_path, "--resolution", 256, "--min-speedup", 1.06,
                   "--out", out)[0] == 0
    rc, stdout, err = run_cli(capsys, "explain", out, "--profile", profile_path)
    assert rc == 0, err
    for needle in ("format", "cfg_share", "alternative", "blocks.3.ffn.fc2", "window"):
        assert needle in stdout
    rc, stdout, _ = run_cli(capsys, "explain", out)
    assert rc == 0 and "pass --profile" in stdout
    rc, _, err = run_cli(capsys, "explain", tmp_path / "none.json")
    assert_one_line_error(rc, err, "none.json", "not found")


def _validation_row(pns, batch, config, measured_ms, predicted_ms, measured_mb=10.0, predicted_mb=10.0):
    return {"patch_nums": pns, "batch": batch, "config": config, "held_out": config != "dense",
            "measured_ms": measured_ms, "predicted_ms": predicted_ms, "measured_mb": measured_mb,
            "predicted_mb": predicted_mb}


def test_guard_band_is_the_worst_under_prediction_relative_to_dense():
    from litevar.planner.build import guard_band
    rows = [_validation_row("1,2", 1, "dense", 100.0, 90.0),  # dense itself 10% under-predicted: cancels
            _validation_row("1,2", 1, "W8A8:fc1", 80.0, 69.0, 9.0, 8.5),  # 0.8 vs 0.7667: 4.3% under
            _validation_row("1,2", 1, "W4A8:fc1", 70.0, 65.0),  # 0.7 vs 0.7222: over-predicted
            _validation_row("1,2,3", 1, "W4A8:fc1", 70.0, 10.0)]  # no dense at this schedule: not counted
    g = guard_band(rows)
    assert g["latency"] == pytest.approx((80 / 100) / (69 / 90) - 1)
    assert g["memory"] == pytest.approx(9.0 / 8.5 - 1)
    assert "of 2 quantized generations" in g["source"] and "of 4 generations" in g["source"]
    over = guard_band([_validation_row("1,2", 1, "dense", 90.0, 100.0, 9.0, 10.0)])  # over-predicted: no guard
    assert over["latency"] == 0.0 and over["memory"] == 0.0


def test_budgets_guarded():
    from litevar.planner.problem import Budgets
    b = Budgets(max_latency_ms=110.0, max_memory_gib=2.1, min_speedup=1.2, max_attn_flops=0.5, max_avg_bits=8)
    g = b.guarded(0.1, 0.05)
    assert g.max_latency_ms == pytest.approx(100.0) and g.max_memory_gib == pytest.approx(2.0)
    assert g.min_speedup == pytest.approx(1.32) and g.max_attn_flops == 0.5 and g.max_avg_bits == 8
    assert b.guarded() == b and Budgets().guarded(0.1, 0.1) == Budgets()


def test_plan_meets_its_budget_with_the_profiles_guard(tmp_path, capsys):
    from litevar.planner.build import guard_band
    from tests.test_planner import synthetic_profile
    profile = synthetic_profile(4, 256, device="cpu")
    profile.meta["validation"] = [_validation_row("1,2,3", 1, "dense", 50.0, 50.0, 20.0, 20.0),
                                  _validation_row("1,2,3", 1, "W8A8:fc1", 42.0, 40.0, 18.0, 17.0)]
    path = tmp_path / "p.json"
    profile.save(path)
    want = guard_band(profile.meta["validation"])
    out = tmp_path / "g.json"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--min-speedup", 1.05,
                              "--max-memory-gib", 0.2, "--out", out)
    assert rc == 0, err
    assert "guard: budgets tightened by 5.00% (latency) and 5.88% (memory)" in stdout
    plan = Plan.load(out)
    assert plan.solver["guard"] == want and plan.budgets["min_speedup"] == 1.05  # the user's budget is kept
    assert plan.predicted.speedup >= 1.05 * 1.05 * (1 - 1e-6)
    assert plan.predicted.memory_mb <= 0.2 * 1024 / (18 / 17) * (1 + 1e-6)
    rc, stdout, err = run_cli(capsys, "explain", out)
    assert rc == 0 and "guard of 5.00% on latency and 5.88% on memory" in stdout
    bare = tmp_path / "bare.json"
    assert run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--min-speedup", 1.05, "--guard", 0,
                   "--out", bare)[0] == 0
    assert Plan.load(bare).solver["guard"]["latency"] == 0
    assert Plan.load(bare).predicted.loss <= plan.predicted.loss
    rc, _, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--min-speedup", 1.05,
                         "--guard", "lots", "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "--guard: 'lots'", "auto")
    rc, _, err = run_cli(capsys, "plan", "--profile", path, "--resolution", 256, "--max-latency-ms", 0.5,
                         "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "no plan meets the budgets", "tightened by the guard", "--guard 0")


def test_cost_only_profile_plans_with_borrowed_losses(tmp_path, capsys):
    """A random-init (cost-only) d8 profile is refused alone and plans with the losses of a d4
    profile mapped by role and relative depth."""
    from tests.test_planner import synthetic_profile
    source = synthetic_profile(4, 256, seed=1, device="cpu")
    target = synthetic_profile(8, 256, seed=2, device="cpu")
    target.meta["model"]["random_init"] = True
    target.tables = {}  # cost only, as `litevar profile --random-init` writes it
    src, tgt = tmp_path / "d4.json", tmp_path / "d8.json"
    source.save(src)
    target.save(tgt)
    rc, _, err = run_cli(capsys, "plan", "--profile", tgt, "--resolution", 256, "--min-speedup", 1.05,
                         "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "no measured losses", "--losses-from")
    out = tmp_path / "d8.json.plan"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", tgt, "--losses-from", src, "--resolution", 256,
                              "--min-speedup", 1.05, "--out", out)
    assert rc == 0, err
    plan = Plan.load(out)
    lf = plan.solver["losses_from"]
    assert lf["model"] == "synthetic-d4" and lf["depth"] == 4 and lf["profile"] == str(src) and not lf["missing"]
    assert plan.predicted.speedup >= 1.05 * (1 - 1e-6) and not plan.windows.widths
    from litevar.planner.build import build_problem
    from litevar.planner.transfer import transfer_losses
    from litevar.profiler.profile import Profile
    merged = transfer_losses(Profile.load(tgt), source)
    sens = merged.table("sensitivity").set_index(["layer", "format"])["loss"]
    ref = source.table("sensitivity").set_index(["layer", "format"])["loss"]
    for i, j in [(0, 0), (2, 1), (3, 1), (4, 2), (7, 3)]:  # round(i * 3 / 7)
        for part in ("ffn.fc2", "attn.qk"):
            assert (sens.xs(f"blocks.{i}.{part}", level=0) == ref.xs(f"blocks.{j}.{part}", level=0)).all()
    assert (sens.xs("head", level=0) == ref.xs("head", level=0)).all()
    cfg = merged.table("cfg_share").set_index("layer")["loss"]
    assert cfg[7] == source.table("cfg_share").set_index("layer")["loss"][3]
    problem = build_problem(merged, 256)
    assert problem.windows.empty and len(problem.cfg_loss) == 8
    rc, _, err = run_cli(capsys, "plan", "--profile", src, "--losses-from", src, "--resolution", 256,
                         "--min-speedup", 1.05, "--out", tmp_path / "y.json")
    assert_one_line_error(rc, err, "measured its own losses", "drop --losses-from")


def test_recorded_loss_source_plans_without_losses_from(tmp_path, capsys):
    """A cost-only profile that records its loss source (`litevar profile --refit --losses-from`)
    plans without --losses-from, exactly as with it; a missing source, or one given to a profile
    that measured its own losses, gets one line."""
    import shutil
    prof, src = tmp_path / "d16-cpu.json", tmp_path / "default-cpu.json"
    shutil.copy("profiles/d16-cpu.json", prof)
    shutil.copy("profiles/default-cpu.json", src)
    rc, stdout, err = run_cli(capsys, "profile", "--out", prof, "--refit", "--losses-from", src)
    assert rc == 0, err
    from litevar.profiler.profile import Profile
    assert Profile.load(prof).meta["losses_source"]["profile"] == "default-cpu.json"
    budget = ("--resolution", 256, "--min-speedup", 1.1)
    assert run_cli(capsys, "plan", "--profile", prof, *budget, "--out", tmp_path / "a.json")[0] == 0
    rc, _, err = run_cli(capsys, "plan", "--profile", prof, "--losses-from", src, *budget, "--out", tmp_path / "b.json")
    assert rc == 0, err
    a, b = Plan.load(tmp_path / "a.json"), Plan.load(tmp_path / "b.json")
    assert a.decisions_sha256() == b.decisions_sha256() and a.predicted.loss == b.predicted.loss
    assert a.solver["losses_from"]["profile_sha256"] == b.solver["losses_from"]["profile_sha256"]
    src.unlink()
    rc, _, err = run_cli(capsys, "plan", "--profile", prof, *budget, "--out", tmp_path / "c.json")
    assert_one_line_error(rc, err, "default-cpu.json", "--losses-from")
    shutil.copy("profiles/default-cpu.json", src)
    rc, _, err = run_cli(capsys, "profile", "--out", src, "--refit", "--losses-from", src)
    assert_one_line_error(rc, err, "measures its own losses", "drop --losses-from")


def test_decisions_hash_ignores_pricing_and_sees_decisions():
    plan = Plan.load("plans/default-cpu-256-x15.json")
    d = plan.to_dict()
    repriced = Plan.from_dict({**d, "name": "other", "profile_sha256": "0" * 64, "solver": {},
                               "predicted": {**d["predicted"], "latency_ms": 1.0}})
    assert repriced.decisions_sha256() == plan.decisions_sha256()
    layer = next(iter(d["formats"]))
    other = "W8A8" if d["formats"][layer] != "W8A8" else "fp"
    changed = Plan.from_dict({**d, "formats": {**d["formats"], layer: other}})
    assert changed.decisions_sha256() != plan.decisions_sha256()


def _infinity_profile(tmp_path, load_gbs=2.0):
    """The shipped Infinity-2B cost profile, its loss source beside it, the load rate as given."""
    import shutil

    from litevar.profiler.profile import Profile
    prof = Profile.load("profiles/infinity-2b-cpu.json")
    prof.meta["cost_model"].setdefault("host", {})["load_gbs"] = load_gbs
    path = tmp_path / "inf.json"
    prof.save(path)
    shutil.copy("profiles/default-cpu.json", tmp_path / "default-cpu.json")
    return path


def test_text_encoder_lever(tmp_path, capsys):
    """Infinity-2B at 1024 px: in 8 GiB the planner frees the T5 encoder (its 2.28 GiB in bf16 do not
    fit beside the generation), paying its reload per prompt at the measured load rate; with room
    it keeps it resident. The plan's figures are the cost model's (encoding phase included), a
    reload amortised over --images-per-prompt, and VAR gets one line for the flag."""
    from litevar.planner.build import plan_prediction
    from litevar.profiler.costmodel import TEXT_ENCODER_BYTES
    from litevar.profiler.profile import Profile
    path = _infinity_profile(tmp_path)
    common = ("plan", "--profile", path, "--losses-from", tmp_path / "default-cpu.json", "--resolution", 1024)
    enc_mib = 1_223_527_424 * TEXT_ENCODER_BYTES / 2 ** 20
    reload_ms = 1_223_527_424 * TEXT_ENCODER_BYTES / 2.0e9 * 1e3
    plans = {}
    for name, extra in (("tight", ("--max-memory-gib", 8)), ("roomy", ("--max-memory-gib", 24)),
                        ("tight4", ("--max-memory-gib", 8, "--images-per-prompt", 4)),
                        ("forced", ("--max-memory-gib", 24, "--text-encoder", "freed"))):
        rc, out, err = run_cli(capsys, *common, *extra, "--out", tmp_path / f"{name}.json")
        assert rc == 0, err
        plans[name] = Plan.load(tmp_path / f"{name}.json")
    profile = Profile.load(path)
    assert plans["tight"].text_encoder == {"mode": "freed", "images_per_prompt": 1}
    assert plans["roomy"].text_encoder["mode"] == "resident"
    for p in plans.values():
        pred = plan_prediction(p, profile)
        assert pred.memory_mb == pytest.approx(p.predicted.memory_mb, rel=1e-9)
        assert pred.latency_ms == pytest.approx(p.predicted.latency_ms, rel=1e-9)
        b = p.predicted.memory_breakdown_mb
        assert b["encode_phase"] == pytest.approx(b["weights"] + b["other"] - _fixed(profile) + enc_mib, rel=1e-9)
        assert ("text_encoder" in b) == (p.text_encoder["mode"] == "resident")
    assert plans["tight"].predicted.memory_mb <= 8 * 1024
    # dense, the reference, is the model as it ships: its encoder resident, as the plans count theirs
    dense = profile.cost_model.predict(profile.arch, plans["tight"].patch_nums, 1)
    assert plans["roomy"].predicted.dense_memory_mb == pytest.approx(dense.memory_mb + enc_mib, rel=1e-9)
    # `litevar bench` loads no encoder: what it compares against is the same decisions without one
    from litevar.commands.bench import without_text_encoder
    from litevar.planner.build import plan_decisions
    for p in plans.values():
        bare = dataclasses.replace(plan_decisions(p), text_encoder=None)
        want = profile.cost_model.predict(profile.arch, p.patch_nums, p.batch, bare, p.dtype)
        got = without_text_encoder(p, enc_mib)
        assert got.memory_mb == pytest.approx(want.memory_mb, rel=1e-9)
        assert got.dense_memory_mb == pytest.approx(dense.memory_mb, rel=1e-9)
        assert (got.latency_ms is None) == (p.text_encoder["mode"] == "freed")
    # the same decisions, resident vs freed: the reload is the only latency difference
    same = Plan.from_dict({**plans["forced"].to_dict(), "text_encoder": {"mode": "resident", "images_per_prompt": 1}})
    d = plan_prediction(plans["forced"], profile).latency_ms - plan_prediction(same, profile).latency_ms
    assert d == pytest.approx(reload_ms, rel=1e-9)
    four = Plan.from_dict({**plans["forced"].to_dict(), "text_encoder": {"mode": "freed", "images_per_prompt": 4}})
    assert plan_prediction(plans["forced"], profile).latency_ms - plan_prediction(four, profile).latency_ms == \
        pytest.approx(reload_ms * 3 / 4, rel=1e-9)
    rc, _, err = run_cli(capsys, "plan", "--profile", "profiles/default-cpu.json", "--resolution", 256,
                         "--min-speedup", 1.1, "--text-encoder", "freed", "--out", tmp_path / "v.json")
    assert_one_line_error(rc, err, "no text encoder")
    rc, stdout, err = run_cli(capsys, "explain", tmp_path / "tight.json", "--profile", path, "--losses-from",
                              tmp_path / "default-cpu.json")
    assert rc == 0, err
    assert "text_encoder" in stdout and "freed" in stdout


def _fixed(profile) -> float:
    """The memory model's fixed term m0 (MiB), part of 'other' in a breakdown but not of the encoding phase."""
    return profile.cost_model.memory.coef[0]


def test_plan_notes_when_the_profile_measured_another_cpu():
    """Planned from a profile of another CPU (family or model differs), `litevar plan` says so and how
    to plan for this one; the same CPU, or a GPU plan, gets no note."""
    from litevar.commands.plan import _another_cpu
    from litevar.models.core.device import fingerprint
    here = fingerprint("cpu")
    assert _another_cpu(here) is None
    other = {**here, "cpu_family": "not " + str(here["cpu_family"])}
    assert "cpu_family" in _another_cpu(other)
    assert _another_cpu({"type": "cuda", "name": "NVIDIA H100"}) is None
