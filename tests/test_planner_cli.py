"""`litevar plan` and `litevar explain`: the plan file loads and round-trips, an infeasible budget
is one line naming the reachable minima, a sweep writes a CSV and a PNG."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.cli_util import assert_one_line_error, run_cli
from planner.plan import Plan
from tests.test_planner import synthetic_profile


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "d4.json"
    synthetic_profile(4, 256, device="cpu").save(path)
    return path


def test_plan_writes_a_plan_that_loads_and_round_trips(profile_path, tmp_path, capsys):
    out = tmp_path / "plans" / "fast.json"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", profile_path, "--resolution", 256, "--min-speedup", 1.05,
                              "--max-memory-gb", 0.2, "--out", out)
    assert rc == 0, err
    assert "wrote" in stdout and "gap" in stdout
    plan = Plan.load(out)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_dict(json.loads(out.read_text())) == plan
    assert plan.name == "fast" and plan.resolution == 256 and plan.batch == 1
    assert plan.budgets["min_speedup"] == 1.05 and plan.budgets["max_memory_gb"] == 0.2
    s, p = plan.solver, plan.predicted
    assert s["status"] == "Optimal" and 0 <= s["gap"] <= 0.005 and s["seconds"] > 0 and s["time_limit_s"] == 10
    assert p["speedup"] >= 1.05 * (1 - 1e-6) and p["memory_mb"] <= 0.2 * 1024
    assert len(plan.profile_sha256) == 64
    assert set(plan.formats) >= {"word_embed", "head", "blocks.3.ffn.fc2"}


def test_infeasible_budget_is_one_line_with_the_reachable_minima(profile_path, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "plan", "--profile", profile_path, "--resolution", 256, "--max-latency-ms", 0.5,
                         "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "no plan meets the budgets", "reaches at best", " ms", " MB")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv, needles", [
    ((), ("give at least one budget",)),
    (("--max-latency-ms", 5, "--formats", "W9A9"), ("unknown format 'W9A9'",)),
    (("--max-attn-flops", 1.5), ("--max-attn-flops 1.5",)),
    (("--max-latency-ms", 5, "--gap", 2), ("--gap 2",)),
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
