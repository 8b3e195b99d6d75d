"""Published figures come from result files: every block of README.md and docs/benchmarks.md is
what benchmarks/render.py makes of the committed files, every result file says where it came
from, and the pages use one memory unit."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import render  # noqa: E402

RESULTS = sorted((ROOT / "docs" / "results").glob("*.json"))


def test_pages_are_rendered_from_their_files():
    for page in render.PAGES:
        _, changed = render.render_page(page.read_text())
        assert not changed, f"{page.name}: blocks {changed} differ from their files; run `python benchmarks/render.py`"


def test_every_block_has_a_renderer_and_every_page_has_blocks():
    for page in render.PAGES:
        names = [m["name"] for m in render.BLOCK.finditer(page.read_text())]
        assert names, page.name
        assert set(names) <= set(render.RENDERERS), page.name


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_result_file_says_where_it_came_from(path):
    d = json.loads(path.read_text())
    assert d["format"] == "litevar-result" and d["version"] == 1 and d["kind"]
    p = d["provenance"]
    assert p["command"].split()[0] in ("litevar", "python"), p["command"]
    assert re.fullmatch(r"[0-9a-f]{40}", p["git_revision"] or ""), p["git_revision"]
    assert p["machine"]["type"] in ("cpu", "cuda") and p["machine"].get("name")
    assert re.match(r"\d{4}-\d{2}-\d{2}T", p["date"])
    assert d["data"]


def _prose(text: str) -> str:
    """The page less its code: fenced blocks and inline code spans (commands and names such as the
    catalogue key `A100-40GB`, not figures)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


@pytest.mark.parametrize("page", render.PAGES, ids=lambda p: p.name)
def test_one_memory_unit(page):
    """GiB (2**30 bytes) everywhere: no figure in MB or GB on the page."""
    bad = re.findall(r"\d[\d,.]*\s?(?:MB|GB|MiB)\b", _prose(page.read_text()))
    assert not bad, f"{page.name}: memory figures not in GiB: {bad[:5]}"


@pytest.mark.parametrize("family,model,core", [("26", "2", "Zen 5"), ("25", "1", "Zen 3"), ("25", "17", "Zen 4"),
                                               ("25", "97", "Zen 4"), ("25", "33", "Zen 3"), ("23", "49", None),
                                               ("6", "143", None), (None, None, None)])
def test_amd_core_generation_from_family_and_model(family, model, core):
    """The pages name a CPU's core from /proc/cpuinfo's decimal family and model (17 = 0x11 Genoa,
    97 = 0x61 Raphael, 33 = 0x21 Vermeer); anything it does not know is left unnamed."""
    assert render.amd_core(family, model) == core


def test_memory_check_is_what_the_current_memory_model_makes_of_the_measured_runs():
    """docs/results/memory-check.json prices every measured generation's plan again with the memory
    model and profiles as they are: a change to either that moves a prediction leaves the file
    (and the pages rendered from it) stale until `python benchmarks/memory_check.py` is run again.
    Same inputs, same arithmetic: the bound is float64 summation order."""
    import memory_check
    rows = json.loads((ROOT / "docs/results/memory-check.json").read_text())["data"]["rows"]
    committed = {r["result"]: r for r in rows}
    runs = sorted((ROOT / "docs" / "results").glob("*-one.json"))
    assert {p.name for p in runs} == set(committed), "a one-generation result is missing from memory-check.json"
    profiles: dict = {}
    for path in runs:
        now, then = memory_check.check(path, profiles), committed[path.name]
        assert now["checked"] == then["checked"], path.name
        if now["checked"]:
            for k in ("predicted_now_mib", "predicted_transformer_mib", "predicted_decode_mib"):
                assert now[k] == pytest.approx(then[k], rel=1e-9), (path.name, k)
            assert now["phase"] == then["phase"], path.name


TRANSFERS = sorted((ROOT / "docs" / "results").glob("transfer-cpu*.json"))


@pytest.mark.parametrize("path", TRANSFERS, ids=[p.stem for p in TRANSFERS])
def test_transfer_prices_are_what_the_committed_files_give(path):
    """Each transfer row's price is the committed profile priced for the committed calibration, of
    the plan on disk: a change to the pricing, a calibration or a plan re-made since the run fails
    here, so the measured column never sits beside a price of other decisions. The statistics
    follow from the rows. Same inputs, same arithmetic: the bound is float64 summation order."""
    import transfer_cpu

    from litevar.profiler.devices import load_target, median_rel_err, priced
    from litevar.profiler.profile import Profile
    data = json.loads(path.read_text())["data"]
    profile = Profile.load(ROOT / data["profile"])
    for dev in data["devices"]:
        now = transfer_cpu.row_prices(priced(profile, load_target(str(ROOT / dev["calibration"]))), dev["rows"])
        priced_rows = [r for r in dev["rows"] if r["priced_ms"] is not None]
        assert set(now) == {r["plan"] for r in priced_rows}, dev["name"]
        for row in priced_rows:
            assert now[row["plan"]] == pytest.approx(row["priced_ms"], rel=1e-9), (dev["name"], row["plan"])
        rows = [r for r in dev["rows"] if r["priced_ms"] is not None and not r.get("fit_point")]
        pri, meas = [r["priced_ms"] for r in rows], [r["measured_ms"] for r in rows]
        assert median_rel_err(pri, meas) == pytest.approx(dev["median_err"], rel=1e-9), dev["name"]
        assert transfer_cpu.spearman(pri, meas) == pytest.approx(dev["spearman"], rel=1e-9), dev["name"]


GPU_FITS = sorted((ROOT / "docs" / "results").glob("gpu-fit*.json"))


@pytest.mark.parametrize("path", GPU_FITS, ids=[p.stem for p in GPU_FITS])
def test_gpu_fit_rows_are_what_the_committed_profiles_and_plans_give(path):
    """Each row of a GPU-on-paper table is its profile priced for the catalogue GPU: the dense
    figures as the script computes them now, and the plan file on disk priced again (latency and
    process memory) to the row's figures. A change to the catalogue, the pricing or a profile, or
    a plan re-made since, fails here. Same inputs, same arithmetic: float64 summation order."""
    import shlex

    import gpu_fit

    from litevar.planner.build import plan_prediction
    from litevar.planner.plan import Plan
    from litevar.profiler.devices import catalogue, from_spec, priced
    data = json.loads(path.read_text())
    args = gpu_fit.parse_args(shlex.split(data["provenance"]["command"])[2:])
    profiles = {label: gpu_fit.model_profile(str(ROOT / p), extra) for label, p, extra in gpu_fit.models(args)}
    for row in data["data"]["rows"]:
        target, profile = from_spec(catalogue()[row["catalogue"]]), profiles[row["model"]]
        where = (row["model"], row["resolution"], row["catalogue"])
        assert gpu_fit.dense(profile, target, row["resolution"]) == pytest.approx(
            (row["dense_ms"], row["dense_mb"]), rel=1e-9), where
        if row["plan"]:
            plan = Plan.load(ROOT / row["plan"]["path"])
            assert (plan.predicted.latency_ms, plan.predicted.process_memory_mb) == pytest.approx(
                (row["plan"]["latency_ms"], row["plan"]["memory_mb"]), rel=1e-9), where
            pred = plan_prediction(plan, priced(profile, target))
            assert (pred.latency_ms, target.process_mib(pred.memory_mb)) == pytest.approx(
                (row["plan"]["latency_ms"], row["plan"]["memory_mb"]), rel=1e-9), where


def test_probe_check_is_what_the_committed_transfer_runs_give():
    """docs/results/probe-check.json prices the committed transfer runs again from their
    calibrations, with and without the drift probe: a change to the pricing, a calibration, a plan
    or a new transfer run leaves it stale until `python benchmarks/probe_check.py` is run again.
    The 'without' side must differ from the committed one wherever the probe found drift (else it
    tests nothing). Same inputs, same arithmetic: float64 summation order."""
    import probe_check
    committed = json.loads((ROOT / "docs/results/probe-check.json").read_text())["data"]["rows"]
    now = probe_check.check_all()
    assert [(r["transfer"], r["device"]) for r in now] == [(r["transfer"], r["device"]) for r in committed]
    for r, then in zip(now, committed):
        for k in ("median_err_probe", "median_err_raw", "dense_err_probe", "dense_err_raw"):
            assert r[k] == pytest.approx(then[k], rel=1e-9, abs=1e-12), (r["transfer"], r["device"], k)
        if abs(r["speed_ratio"]["fp32"] - 1) > 1e-3:
            assert r["dense_err_raw"] != pytest.approx(r["dense_err_probe"], rel=1e-6)
