"""A profile is input too: every malformed profile is refused in one line, exit 2, nothing written.

The corpus is built by mutating the shipped default profile (a real one), one rule of
docs/profile-schema.md each, and run through every command that reads profiles."""
import copy
import json
import math
from pathlib import Path

import pytest

from tests.cli_util import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "default-cpu.json"
PLAN = ROOT / "plans" / "default-cpu-256-x10.json"


def _rows(d, table, column):
    t = d["tables"][table]
    return t["rows"], t["columns"].index(column)


def set_cell(table, column, value, rows=(0,)):
    def mutate(d):
        data, j = _rows(d, table, column)
        for i in rows:
            data[i][j] = value
    return mutate


def coverage_falls(d):
    data, j = _rows(d, "coverage", "coverage")
    w = d["tables"]["coverage"]["columns"].index("width")
    seen = {}
    for r in data:  # the first part with two windowed widths: the wider one made to hold less
        key = tuple(r[:5])
        if r[w] >= 0 and key in seen and r[w] > seen[key][w]:
            r[j] = seen[key][j] - 0.1
            return
        if r[w] >= 0:
            seen[key] = r
    raise AssertionError("no two widths of one part found")


def drop_column(table, column):
    def mutate(d):
        t = d["tables"][table]
        j = t["columns"].index(column)
        t["columns"].pop(j)
        for r in t["rows"]:
            r.pop(j)
    return mutate


def meta(path, value):
    def mutate(d):
        *head, last = path.split(".")
        obj = d["meta"]
        for k in head:
            obj = obj[k] if not isinstance(obj, list) else obj[int(k)]
        if value is KeyError:
            del obj[last]
        else:
            obj[last] = value
    return mutate


def first_linear_coef(d):
    d["meta"]["cost_model"]["linear"][next(iter(d["meta"]["cost_model"]["linear"]))]["coef"][1] = math.nan


CASES = {  # name -> (mutation, words the one-line error must hold)
    "three losses NaN": (set_cell("sensitivity", "loss", math.nan, rows=(0, 5, 9)), ["'sensitivity'", "row 0", "loss"]),
    "negative linear times": (lambda d: [r.__setitem__(_rows(d, "cost_linear", "ms")[1], -5.0)
                                         for r in d["tables"]["cost_linear"]["rows"]], ["'cost_linear'", "ms = -5.0"]),
    "infinite peak memory": (set_cell("cost_e2e", "peak_mb", math.inf), ["'cost_e2e'", "peak_mb"]),
    "coverage above 1": (set_cell("coverage", "coverage", 1.5, rows=(3,)), ["'coverage'", "row 3", "[0, 1]"]),
    "coverage falls with width": (coverage_falls, ["coverage falls as the window widens"]),
    "kept fraction negative": (set_cell("coverage", "kept", -0.2, rows=(7,)), ["'coverage'", "row 7", "kept"]),
    "attention kept above 1": (set_cell("cost_attn", "kept", 2.0), ["'cost_attn'", "kept"]),
    "layer out of range": (set_cell("coverage", "layer", 99, rows=(2,)), ["layer = 99", "blocks 0..3"]),
    "head out of range": (set_cell("sinks", "head", 7), ["head = 7", "heads 0..3"]),
    "scale out of range": (set_cell("cfg", "scale", 12), ["scale = 12", "scales 0..9"]),
    "part after its scale": (set_cell("coverage", "part", 9, rows=(0,)), ["part 9 of scale"]),
    "unknown layer name": (set_cell("sensitivity", "layer", "blocks.9.ffn.fc9"), ["'blocks.9.ffn.fc9'"]),
    "unknown format": (set_cell("sensitivity", "format", "W3A3"), ["unknown format 'W3A3'"]),
    "KV format on a linear": (set_cell("sensitivity", "format", "KV8"),
                              ["KV-cache formats", "KV-cache rows", "blocks.0.attn.kv"]),
    "unknown family": (set_cell("coverage", "family", "diagonal"), ["unknown window family"]),
    "text in an integer column": (set_cell("coverage", "layer", "one"), ["'coverage'", "layer"]),
    "missing column": (drop_column("cost_attn", "ms"), ["'cost_attn'", "lacks columns ['ms']"]),
    "non-finite cost coefficient": (first_linear_coef, ["meta.cost_model.linear", "not finite"]),
    "cost model missing": (meta("cost_model", KeyError), ["meta.cost_model", "--stages cost"]),
    "arch without depth": (meta("model.arch.depth", KeyError), ["meta.model.arch", "depth"]),
    "window fit missing": (meta("window_fit", KeyError), ["meta.window_fit.coef"]),
    "validation row zero": (meta("validation.0.measured_ms", 0.0), ["meta.validation[0].measured_ms"]),
    "wrong version": (lambda d: d.__setitem__("version", 99), ["version 99"]),
}


@pytest.fixture(scope="module")
def source():
    return json.loads(PROFILE.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_profile_is_refused_by_every_command(case, source, tmp_path, capsys):
    mutate, needles = CASES[case]
    d = copy.deepcopy(source)
    mutate(d)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    out = tmp_path / "out.json"
    commands = [("plan", "--profile", bad, "--resolution", 256, "--min-speedup", 1.05, "--out", out),
                ("explain", PLAN, "--profile", bad),
                ("compare", PLAN, "--profile", bad, "--json", out)]
    for argv in commands:
        rc, _, err = run_cli(capsys, *argv)
        assert_one_line_error(rc, err, str(bad), *needles)
        assert not out.exists(), argv


def test_truncated_profile(source, tmp_path, capsys):
    bad = tmp_path / "cut.json"
    bad.write_text(json.dumps(source)[:5000])
    rc, _, err = run_cli(capsys, "plan", "--profile", bad, "--resolution", 256, "--min-speedup", 1.05,
                         "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "not valid JSON", "truncated")


def test_every_shipped_profile_passes():
    from litevar.profiler.profile import Profile
    for path in sorted((ROOT / "profiles").glob("*.json")):
        Profile.load(path)


def test_solver_failure_is_one_line(tmp_path, capsys, monkeypatch):
    import pulp

    def crash(self, *a, **k):
        raise pulp.PulpSolverError("Pulp: Error while executing cbc")
    monkeypatch.setattr(pulp.LpProblem, "solve", crash)
    out = tmp_path / "x.json"
    rc, _, err = run_cli(capsys, "plan", "--profile", PROFILE, "--resolution", 256, "--min-speedup", 1.05,
                         "--out", out)
    assert_one_line_error(rc, err, "the solver (CBC) failed", "--time-limit")
    assert not out.exists()
