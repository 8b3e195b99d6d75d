"""Every shipped plan comes from a shipped profile and is what that profile gives today.

For each plan under plans/: its profile (by the sha256 it records) is shipped under profiles/;
the plan loads; its predicted latency, memory and loss are what the profile's cost model and
losses give its decisions now; and a few plans, solved again from their recorded budgets
through `litevar plan`, come out with the same decisions. A change to the cost model, the
planner or the files that moves a shipped figure fails here: re-make the plans
(benchmarks/make_plans.py) and their benches, or find the regression."""
import json
from pathlib import Path

import pytest

from litevar.planner.build import build_problem, plan_prediction, profile_sha256, selection_kv_specs, selection_of
from litevar.planner.plan import Plan
from litevar.planner.problem import evaluate
from litevar.planner.transfer import transfer_losses
from litevar.profiler.profile import Profile
from tests.cli_util import run_cli

ROOT = Path(__file__).resolve().parents[1]
PLANS = sorted((ROOT / "plans").glob("*.json"))
PROFILES = {profile_sha256(p): p for p in sorted((ROOT / "profiles").glob("*.json"))}
RESOLVED = ("default-cpu-256-x25", "default-cpu-256-mem50", "d16-cpu-1024-memhalf")  # solved again


def profile_of(plan: Plan) -> tuple[Profile, Path]:
    path = PROFILES.get(plan.profile_sha256)
    assert path is not None, f"{plan.name}: its profile (sha256 {plan.profile_sha256}) is not shipped"
    profile = Profile.load(path)
    if plan.solver.get("priced_from"):  # another configuration of the family, priced from this profile
        from litevar.commands.plan import with_config
        profile = with_config(profile, plan.solver["priced_from"]["config"], path)
    src = plan.solver.get("losses_from")
    if src:
        source = ROOT / src["profile"]
        assert profile_sha256(source) == src["profile_sha256"], f"{plan.name}: its --losses-from profile changed"
        profile = transfer_losses(profile, Profile.load(source), src["profile"])
    return profile, path


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_plan_predictions_are_what_its_profile_gives(path):
    plan = Plan.load(path)
    profile, _ = profile_of(plan)
    pred = plan_prediction(plan, profile)
    rel = 1e-9  # the same arithmetic on the same numbers; only summation order may differ
    assert pred.latency_ms == pytest.approx(plan.predicted.latency_ms, rel=rel)
    assert pred.memory_mb == pytest.approx(plan.predicted.memory_mb, rel=rel)
    if plan.solver.get("name") != "recipe" or not plan.solver.get("loss_leaves_out"):
        family = None if plan.windows is None else plan.windows.family.value
        problem = build_problem(profile, plan.resolution, plan.batch, family=family, dtype=plan.dtype,
                                **_recipe_kv(plan))
        sel = selection_of(plan)
        assert selection_kv_specs(problem, sel) is not None
        assert evaluate(problem, sel).loss == pytest.approx(plan.predicted.loss, rel=1e-9, abs=1e-12)


def _recipe_kv(plan: Plan) -> dict:
    """build_problem's kv_option for a recipe plan that sets every block's KV cache."""
    if plan.solver.get("name") != "recipe" or not plan.kv:
        return {}
    e = next(iter(plan.kv.values()))
    keep = e.get("keep", {})
    return {"kv_option": (e["format"], (keep.get("sinks", 0), keep.get("recent")))}


@pytest.mark.slow
@pytest.mark.parametrize("name", RESOLVED)
def test_plans_solved_again_are_the_same(name, tmp_path, capsys):
    plan = Plan.load(ROOT / "plans" / f"{name}.json")
    _, profile_path = profile_of(plan)
    flags = {"max_latency_ms": "--max-latency-ms", "max_memory_gib": "--max-memory-gib", "min_speedup": "--min-speedup",
             "max_attn_flops": "--max-attn-flops", "max_avg_bits": "--max-avg-bits"}
    budgets = [a for k, flag in flags.items() if plan.budgets.get(k) is not None for a in (flag, plan.budgets[k])]
    src = plan.solver.get("losses_from")
    out = tmp_path / "again.json"
    rc, _, err = run_cli(capsys, "plan", "--profile", profile_path, "--resolution", plan.resolution, *budgets,
                         *(["--losses-from", ROOT / src["profile"]] if src else []), "--out", out)
    assert rc == 0, err
    again = json.loads(out.read_text())
    shipped = plan.to_dict()
    for key in ("formats", "qk_int8", "cfg_shared", "kv", "windows"):
        assert again[key] == shipped[key], key
