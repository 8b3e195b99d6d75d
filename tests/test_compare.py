"""`litevar compare`: one row per plan, bench figures matched by sha256, a self-contained HTML report."""
import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from litevar.commands.cli import main
from litevar.commands.compare import head_kept
from litevar.kernels.windows import FULL, WindowConfig, kept_fraction
from litevar.models.var.schedules import SCHEDULES
from litevar.planner.frontier import COLUMNS as FRONTIER_COLUMNS
from litevar.planner.plan import Plan
from tests.cli_util import assert_one_line_error, run_cli
from tests.test_plan import make_plan

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "plans").glob("*.json"))
# the report's shipped plans: a CPU and a GPU device, three models (default, d16, Infinity), plans
# with a memory breakdown (every shipped plan's 62 take 28 s of figures on 2 cores)
REPORTED = ("default-cpu-256-x25", "default-cpu-256-mem50", "default-h200-256-memhalf", "d16-cpu-1024-memhalf",
            "infinity-2b-cpu-1024-8gib")
PNS = SCHEDULES[256]
WINDOWED = 'win$ <b>&"q"'  # HTML and matplotlib mathtext special characters


def windows_256() -> WindowConfig:
    """Block 1: half-width 3 for every head; block 3: per-head widths FULL, 1, 3, 8."""
    per_head = [WindowConfig.uniform(PNS, [3], 1, r).widths[3][0] for r in (FULL, 1, 3, 8)]
    return WindowConfig(PNS, widths={1: WindowConfig.uniform(PNS, [1], 4, 3).widths[1],
                                     3: torch.stack(per_head)})


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_bench(path, plan_path, version=2) -> Path:
    entry = {"plan": str(plan_path), "plan_name": "x", "plan_sha256": sha256(plan_path),
             "measured": {"latency_ms": 123.4, "latency_ms_runs": [123.4], "peak_mb": 45.6, "model_mb": 20.0,
                          "loss": 0.0123, "top1": 0.9},
             "predicted": {}, "speedup": {"measured": 1.23, "promised": 1.1, "of_medians": 150 / 123.4},
             "prediction_error": {"latency": 0.1, "memory": 0.0}}
    stranger = dict(entry, plan="other.json", plan_sha256="0" * 64)
    d = {"format": "litevar-bench", "version": version, "device": {"type": "cpu", "name": "test cpu"},
         "batch": 1, "resolution": 256, "repeats": 1, "warmup": 0, "kernel": "auto", "dtype": "fp32",
         "quality": None, "dense": {"latency_ms": 150.0, "latency_ms_runs": [150.0], "peak_mb": 50.0,
                                    "model_mb": 24.0, "loss": 0.0, "top1": 1.0},
         "plans": [entry, stranger]}
    Path(path).write_text(json.dumps(d))
    return Path(path)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Shipped plans, a windowed 256 px plan, a 512 px plan on another device, a bench, a frontier."""
    d = tmp_path_factory.mktemp("compare")
    plans = [Path(shutil.copy(p, d / p.name)) for p in SHIPPED]
    w = windows_256()
    pred = {"latency_ms": 120.0, "memory_mb": 35.0, "loss": 0.05, "speedup": 1.25, "attn_kept": w.kept_fraction()}
    plans.append(make_plan(name=WINDOWED, windows=w, predicted=pred).save(d / "windowed.json"))
    plans.append(make_plan(name="gpu-512", resolution=512, windows=None, device={"type": "cuda", "name": "H100"},
                           predicted={"latency_ms": 30.0, "memory_mb": 900.0}).save(d / "gpu512.json"))
    bench = write_bench(d / "bench.json", plans[-2])
    reported = [p for p in plans if p.stem in REPORTED] + plans[len(SHIPPED):]  # and the two made here
    assert len(reported) == len(REPORTED) + 2
    frontier = d / "frontier.csv"
    rows = [[b, b, 30 + i, 1.1, 0.5 / (i + 1), 1.0, 1.0, 16.0, 0, "Optimal", 0.0, 0.0, 0.1, True]
            for i, b in enumerate((125.0, 135.0, 145.0))]
    pd.DataFrame(rows, columns=FRONTIER_COLUMNS).to_csv(frontier, index=False)
    html, png = d / "report.html", d / "frontier.png"
    assert main(["compare", *map(str, reported), "--bench", str(bench), "--frontier", str(frontier),
                 "--html", str(html), "--png", str(png)]) == 0
    return {"dir": d, "plans": plans, "reported": reported, "bench": bench, "frontier": frontier, "html": html,
            "png": png}


def test_one_row_per_plan_sorted_and_json_rows_match(case, capsys):
    out_json = case["dir"] / "rows.json"
    rc, out, err = run_cli(capsys, "compare", *case["plans"], "--json", out_json)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["plan", "device"] and lines[-1] == f"wrote {out_json}"
    plans = [Plan.load(p) for p in case["plans"]]
    for p in plans:
        assert sum(line.startswith(p.name + " ") for line in lines[1:-1]) == 1, p.name
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == len(plans) == len(lines) - 2
    assert [r["plan"] for r in rows] == [next(p.name for p in plans if line.startswith(p.name + " "))
                                         for line in lines[1:-1]]
    order = [(r["device"], r["resolution"], r["pred_latency_ms"]) for r in rows]
    assert order == sorted(order)  # AMD EPYC 256 px by latency, H100 512 px, test cpu 256 px
    by_name = {r["plan"]: r for r in rows}
    shipped = Plan.load(case["plans"][0])
    r = by_name[shipped.name]
    assert r["pred_latency_ms"] == shipped.predicted.latency_ms and r["meas_latency_ms"] is None
    quantized = Counter(f for f in shipped.formats.values() if f != "fp")
    assert all(f"{n} {fmt}" in r["formats"] for fmt, n in quantized.items()), r["formats"]
    assert r["cfg_shared_blocks"] == len(shipped.cfg_shared)
    assert by_name["gpu-512"]["pred_loss"] is None and by_name["gpu-512"]["resolution"] == 512
    assert by_name[WINDOWED]["qk8_blocks"] == 1 and by_name[WINDOWED]["cfg_shared_blocks"] == 1


def test_bench_fills_measured_columns_of_the_matching_plan_only(case, capsys, caplog):
    out_json = case["dir"] / "benched.json"
    rc, out, err = run_cli(capsys, "compare", *case["plans"], "--bench", case["bench"], "--json", out_json)
    assert rc == 0, err
    assert "matches no plan" in caplog.text  # the bench's second entry
    rows = {r["plan"]: r for r in json.loads(out_json.read_text())["rows"]}
    hit = rows[WINDOWED]
    assert (hit["meas_latency_ms"], hit["meas_peak_gib"], hit["meas_loss"], hit["speedup_meas"]) == (
        123.4, 45.6 / 1024, 0.0123, 1.23)
    for name, r in rows.items():
        if name != WINDOWED:
            assert r["meas_latency_ms"] is r["meas_peak_gib"] is r["speedup_meas"] is None, name
    line = next(line for line in out.splitlines() if WINDOWED in line)
    assert "123.4" in line and f"{45.6 / 1024:.4g}" in line and "1.23x" in line
    other = next(line for line in out.splitlines() if "gpu-512" in line)
    assert "123.4" not in other


def test_bench_written_before_paired_speedups_is_read_as_paired(case, tmp_path):
    """A bench file from before the paired speedup (no of_medians) held the ratio of medians in
    speedup.measured: compare recomputes the paired one from the recorded runs."""
    from litevar.commands.compare import load_bench
    d = json.loads(Path(case["bench"]).read_text())
    d["dense"]["latency_ms_runs"] = [150.0, 300.0, 150.0]
    for e in d["plans"]:
        e["measured"]["latency_ms_runs"] = [120.0, 240.0, 250.0]
        e["speedup"] = {"measured": 150 / 240, "promised": 1.1}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(d))
    (e, _) = load_bench(str(old))
    assert e["speedup"] == {"measured": 1.25, "promised": 1.1, "of_medians": 150 / 240}
    assert load_bench(str(case["bench"]))[0]["speedup"]["measured"] == 1.23  # new files are read as written


def test_old_bench_version_is_one_line_error(case, capsys):
    old = write_bench(case["dir"] / "bench_v1.json", case["plans"][0], version=1)
    rc, _, err = run_cli(capsys, "compare", case["plans"][0], "--bench", old)
    assert_one_line_error(rc, err, str(old), "version 1", "re-run `litevar bench")


@pytest.mark.parametrize("what", ["bench-missing", "bench-not-json", "bench-not-bench", "frontier-missing",
                                  "frontier-columns", "html-folder", "plan-missing"])
def test_bad_inputs_are_one_line_errors(case, capsys, what):
    d, plan = case["dir"], case["plans"][0]
    bad = d / f"bad-{what}"
    args = {"bench-missing": ["--bench", bad],
            "bench-not-json": ["--bench", bad],
            "bench-not-bench": ["--bench", bad],
            "frontier-missing": ["--frontier", bad],
            "frontier-columns": ["--frontier", bad],
            "html-folder": ["--html", d / "no-such-folder" / "r.html"],
            "plan-missing": []}[what]
    if what == "bench-not-json":
        bad.write_text("{not json")
    if what == "bench-not-bench":
        bad.write_text(json.dumps({"format": "litevar-plan", "version": 2}))
    if what == "frontier-columns":
        bad.write_text("a,b\n1,2\n")
    first = bad if what == "plan-missing" else plan
    rc, _, err = run_cli(capsys, "compare", first, *args)
    assert_one_line_error(rc, err, "no-such-folder" if what == "html-folder" else bad.name)


def test_no_plans_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare"])
    assert e.value.code == 2
    assert "PLAN" in capsys.readouterr().err


def test_head_kept_agrees_with_the_window_description():
    w = windows_256()
    kept = head_kept(w, depth=4, heads=4)  # [S, layer, head]
    assert kept.shape == (len(PNS), 4, 4)
    assert (kept[:, [0, 2]] == 1).all() and (kept[:, 3, 0] == 1).all()  # dense blocks, FULL head
    for k in range(len(PNS)):
        w_Hp = w.scale_widths(3, k)
        if w_Hp is not None:
            assert kept[k, 3].mean() == pytest.approx(kept_fraction(w.layout, k, w_Hp, w.family))
    assert (kept[-1, 3, 1] < kept[-1, 3, 2] < kept[-1, 3, 3] < 1)  # wider window, more kept
    assert kept[:, 1].mean() < 1


def test_html_is_self_contained_and_names_every_plan(case):
    text = case["html"].read_text()
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", text)  # nothing loaded from elsewhere
    for p in case["reported"]:
        assert html.escape(Plan.load(p).name) in text, p
    assert "win$ &lt;b&gt;&amp;&quot;q&quot;" in text and "<b>&" not in text  # escaped
    loaded = [Plan.load(p) for p in case["reported"]]  # one frontier panel per (device, model, resolution)
    groups = len({(q.device.get("name"), q.model.get("name"), q.arch["depth"], q.resolution) for q in loaded})
    assert groups >= 3  # (AMD EPYC, default, 256), (H100, 512), (test cpu, 256) at least
    windowed = sum(bool(Plan.load(p).windows and Plan.load(p).windows.widths) for p in case["reported"])
    breakdown = any(q.predicted.memory_breakdown_mb for q in loaded)  # the memory-by-part figure
    assert text.count('src="data:image/png;base64,') == groups + 1 + breakdown + windowed
    assert text.count("no windows") == len(case["reported"]) - windowed
    assert "frontier.csv" in text and "bench.json" in text


def test_png_is_the_first_groups_frontier(case):
    """--png: the report's first frontier panel as a PNG file (the README's picture)."""
    data = case["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    first = re.search(r'src="data:image/png;base64,([^"]+)"', case["html"].read_text())[1]
    assert data == base64.b64decode(first)


def test_report_renders_in_headless_chromium(case, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not found: `apt-get install chromium` to run the screenshot test")
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", f"--screenshot={shot}",
           case["html"].resolve().as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert px.shape[:2] == (2000, 1280)
    assert px.std() > 20  # not one colour
    non_white = (px < 240).any(axis=2).mean()
    assert 0.05 < non_white < 0.9, non_white
