"""Uniform recipes (planner/recipes.py): parsing, what each part selects, and `plan --recipe`,
whose predicted figures are the planner's own evaluation of the same selection."""
from __future__ import annotations

import pytest

from litevar.models.core.errors import UserError
from litevar.planner.build import COVERAGE_TARGETS, build_problem
from litevar.planner.plan import Plan
from litevar.planner.problem import Budgets, evaluate
from litevar.planner.recipes import parse_recipe, select, targets_for
from litevar.planner.solve import SolverSettings, solve
from tests.cli_util import assert_one_line_error, run_cli
from tests.test_planner import synthetic_profile


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    p = synthetic_profile(4, 256, device="cpu")
    path = tmp_path_factory.mktemp("profile") / "d4.json"
    p.save(path)
    return p, path


def test_parse_names_and_parts():
    r = parse_recipe("paper")
    assert (r.fmt, r.keep_fp, r.qk8, r.mdwa, r.asc) == ("W4A8", ("fc2",), True, 0.95, True)
    assert parse_recipe("W8A8+QK8") == parse_recipe("w8a8+qk8")
    assert parse_recipe("dense").fmt == "fp" and parse_recipe("mdwa0.6").mdwa == 0.6
    assert "MDWA 0.95" in r.describe() and "fc2 full precision" in r.describe()


@pytest.mark.parametrize("text, needle", [("w9a9", "unknown part 'w9a9'"), ("mdwa1.5", "unknown part"),
                                          ("w8a8+fast", "unknown part 'fast'")])
def test_parse_rejects_unknown_parts(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_recipe(text)


def test_selection_follows_the_recipe(profile):
    r = parse_recipe("w4a8+mp+qk8+asc+mdwa0.9")
    problem = build_problem(profile[0], 256, coverage_targets=targets_for(r, COVERAGE_TARGETS))
    sel = select(problem, r).selection
    for g in problem.formats:
        has = any(o.format == "W4A8" for o in g.options)
        want = "W4A8" if has and not g.layer.endswith("ffn.fc2") else None
        assert sel.formats.get(g.layer) == want, g.layer
    assert sel.qk_int8 == sel.cfg_shared == frozenset(range(4))
    w = problem.windows
    assert sel.widths, "the synthetic profile has windows reaching 0.9"
    assert min(part for _, _, _, part in sel.widths) >= 3  # keys of the first three scales stay whole
    for key, width in sel.widths.items():  # the narrowest width reaching the threshold
        part = w[(w["layer"] == key[0]) & (w["head"] == key[1]) & (w["scale"] == key[2]) & (w["part"] == key[3])]
        assert width == part[part.coverage >= 0.9 - 1e-12].width.min()


def test_planner_beats_a_recipe_at_its_own_latency(profile):
    """The recipe is a feasible point of the integer program, so the optimum at the recipe's
    predicted latency and memory has no more predicted loss."""
    for text in ("w8a8", "w4a8+mp+qk8+asc+mdwa0.9"):
        r = parse_recipe(text)
        problem = build_problem(profile[0], 256, coverage_targets=targets_for(r, COVERAGE_TARGETS))
        m = evaluate(problem, select(problem, r).selection)
        sol = solve(problem, Budgets(max_latency_ms=m.latency_ms, max_memory_gib=m.memory_mb / 1024),
                    SolverSettings(20, 0.0))
        assert sol.metrics.loss <= m.loss + 1e-9 and sol.metrics.latency_ms <= m.latency_ms * (1 + 1e-6)


def test_plan_recipe_cli(profile, tmp_path, capsys):
    out = tmp_path / "paper.json"
    rc, stdout, err = run_cli(capsys, "plan", "--profile", profile[1], "--resolution", 256, "--recipe", "paper",
                              "--out", out)
    assert rc == 0, err
    plan = Plan.load(out)
    assert "recipe w4a8+qk8+mp+mdwa0.95+asc" in stdout
    assert plan.solver["recipe"] == "w4a8+qk8+mp+mdwa0.95+asc" and plan.solver["status"] == "fixed"
    assert plan.qk_int8 == plan.cfg_shared == [0, 1, 2, 3]
    assert plan.formats.get("blocks.0.ffn.fc2", "fp") == "fp" and plan.formats["blocks.0.ffn.fc1"] == "W4A8"
    assert plan.predicted.loss > 0 and plan.predicted.attn_kept < 1.0


def test_plan_recipe_with_budget_is_refused(profile, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "plan", "--profile", profile[1], "--resolution", 256, "--recipe", "w8a8",
                         "--max-latency-ms", 10, "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "--recipe writes a fixed recipe")
    rc, _, err = run_cli(capsys, "plan", "--profile", profile[1], "--resolution", 256, "--recipe", "w3a3",
                         "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "unknown part 'w3a3'")
    assert not (tmp_path / "x.json").exists()
