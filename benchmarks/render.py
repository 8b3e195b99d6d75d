"""Render README's and docs/benchmarks.md's figures from the committed result files.

Every figure on those pages sits in a block between `<!-- render:NAME -->` and
`<!-- /render:NAME -->`, which this script rewrites from the files its renderer reads (result files
under docs/results/, written by the commands under benchmarks/ and `litevar bench --json`, and the
shipped profiles). `--check` changes nothing and exits 1 naming every block that differs from its
files (tests/test_results.py runs it), so a page cannot drift from its data.

    python benchmarks/render.py            # rewrite the pages
    python benchmarks/render.py --check    # exit 1 on drift

Units: memory in GiB (2**30 bytes) everywhere, time in ms or s as named; loss in the profile's
unit (nats: the CFG-guided next-token KL to the full-precision model, summed over scales).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGES = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
BLOCK = re.compile(r"(<!-- render:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /render:(?P=name) -->)", re.S)
RENDERERS: dict[str, Callable[[], str]] = {}


def renderer(name: str):
    def register(fn):
        RENDERERS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------------------------------------
# Reading the files


def result(name: str, kind: str | None = None) -> dict:
    """docs/results/NAME.json, checked to be a result file (of `kind`)."""
    path = RESULTS / f"{name}.json"
    d = json.loads(path.read_text())
    if d.get("format") != "litevar-result":
        raise SystemExit(f"{path.relative_to(ROOT)} is not a litevar result file")
    if kind and d.get("kind") != kind:
        raise SystemExit(f"{path.relative_to(ROOT)} holds {d.get('kind')!r}, expected {kind!r}")
    return d


MALLOC = {"retain": "malloc keeping freed memory", "default": "glibc's malloc policy"}


def amd_core(family, model) -> str | None:
    """The AMD core generation of a CPU family / model (as /proc/cpuinfo gives them), where known."""
    try:
        family, model = int(family), int(model)
    except (TypeError, ValueError):
        return None
    if family == 26:
        return "Zen 5"
    if family == 25:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF else "Zen 3"
    return None


def cpu_label(m: dict) -> str:
    """A CPU by name, family and model (and an AMD one's core), e.g. 'AMD EPYC (family 25 model 1, Zen 3'
    without the closing bracket, which the caller adds after what it appends."""
    core = amd_core(m.get("cpu_family"), m.get("cpu_model")) if "AMD" in str(m.get("name")) else None
    return f"{m.get('name')} (family {m.get('cpu_family')} model {m.get('cpu_model')}{f', {core}' if core else ''}"


def machine(prov: dict, policy: bool = True) -> str:
    """The machine in words; on a CPU with the host allocator's policy its timings ran under (a
    file from before the policy was recorded ran under glibc's own)."""
    m = prov["machine"]
    if m.get("type") == "cpu":
        f = m.get("flags", {})
        isa = ", ".join(k for k in ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f.get(k)) or "avx2"
        if policy:
            alloc = m.get("host_allocator") or {"policy": "default"}
            isa += ", " + MALLOC.get(alloc["policy"], f"malloc tunables {alloc.get('glibc_tunables')}")
        return f"{cpu_label(m)}, {m.get('usable_cores')} cores, {isa})"
    return str(m.get("name"))


def source(d: dict, name: str, policy: bool = True) -> str:
    """The line under a table: the command, the file, the machine (with the malloc policy unless
    the file compares policies), the date, the revision."""
    p = d["provenance"]
    rev = (p.get("git_revision") or "unknown")[:9] + (" + uncommitted changes" if p.get("git_dirty") else "")
    note = f" {p['note']}" if p.get("note") else ""
    return (f"<sub>`{p['command']}` → [docs/results/{name}.json](results/{name}.json) · {machine(p, policy)} · "
            f"{p['date'][:10]} · revision {rev}.{note}</sub>")


def gib(mib, digits: int = 2) -> str:
    return "-" if mib is None else f"{mib / 1024:.{digits}f}"


def pct(x, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:+.{digits}f}%"


def num(x, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def plan_row(bench: dict, stem: str) -> dict:
    for e in bench["plans"]:
        if Path(e["plan"]).stem == stem:
            return e
    raise SystemExit(f"no plan {stem} in the bench result")


def baseline_row(bench: dict, name: str) -> dict | None:
    return next((b for b in bench["baselines"] if b["name"] == name), None)


# ---------------------------------------------------------------------------------------------
# docs/benchmarks.md


@renderer("profile-losses")
def profile_losses() -> str:
    """Mean loss per layer type and format of the shipped default profile."""
    import pandas as pd

    from litevar.profiler.profile import Profile
    prof = Profile.load(ROOT / "profiles" / "default-cpu.json")
    table = prof.table("sensitivity").groupby(["kind", "format"])["loss"].mean().unstack()
    cols = [c for c in ("BF16", "W8A8", "W6A6", "W4A16", "W4A8", "W4A6", "W4A4", "KV8", "KV4", "QK8") if c in table]
    order = table[cols].max(axis=1).sort_values(ascending=False).index
    lines = ["| layer type | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for kind in order:
        lines.append(f"| {kind} | " + " | ".join("" if pd.isna(table.loc[kind, c]) else f"{table.loc[kind, c]:.4g}"
                                                for c in cols) + " |")
    meta = prof.meta
    runtime = meta.get("runtime_loss") or {}
    lines += ["", "Whole-model runtime dtypes (autocast), loss against the fp32 model: " + (
        ", ".join(f"{d} {v:.4g}" for d, v in runtime.items()) or "not measured") + "."]
    dev = meta.get("device", {})
    lines += ["", f"<sub>`{meta.get('command', 'litevar profile --out profiles/default-cpu.json')}` → "
                  f"profiles/default-cpu.json · {machine({'machine': dev})} · {str(meta.get('created'))[:10]}</sub>"]
    return "\n".join(lines)


@renderer("profile-validation")
def profile_validation() -> str:
    """The default profile's cost model on generations held out of its fit."""
    prof = json.loads((ROOT / "profiles" / "default-cpu.json").read_text())
    cm, rows = prof["meta"]["cost_model"], [v for v in prof["meta"]["validation"] if v["held_out"]]
    lines = ["| generation | dtype | ms measured | ms predicted | error | GiB measured | GiB predicted | error |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for v in rows:
        what = f"{v['resolution']} px, batch {v['batch']}, {v['config']}"
        lines.append(f"| {what} | {v.get('dtype', cm['dtype'])} | {v['measured_ms']:.1f} | {v['predicted_ms']:.1f} | "
                     f"{pct(v['latency_err'])} | {gib(v['measured_mb'], 4)} | {gib(v['predicted_mb'], 4)} | "
                     f"{pct(v['memory_err'])} |")
    alpha = ", ".join(f"{k} {v:.2f}" for k, v in cm["e2e"]["alpha"].items())
    worst = max(abs(v["latency_err"]) for v in rows)
    lines += ["", f"In-model factors: {alpha}; e2e fit error {100 * cm['e2e']['rmse_rel']:.1f}% on "
                  f"{cm['e2e']['n']} generations; the worst held-out latency error is {100 * worst:.1f}%."]
    return "\n".join(lines + ["", *loss_fits(prof)])


def loss_fits(prof: dict) -> list[str]:
    """The window and eviction loss fits (lines through the origin) against each of their own points."""
    from litevar.profiler.profile import Profile
    tables = Profile.load(ROOT / "profiles" / "default-cpu.json")
    out = []
    for name, what, label in (("window_fit", "windows keeping a share of each row's attention", "ratio"),
                              ("evict_fit", "KV eviction keeping the first S and the latest R scales", None)):
        fit = prof["meta"].get(name)
        if not fit:
            continue
        df = tables.table(name)
        out += [f"Loss fit for {what}: {fit['model']} (coef {fit['coef']:.4g}, r² {fit['r2']:.2f}); each point of "
                "the fit, measured against the line:", "",
                "| trial | lost attention mass | loss measured | loss from the fit | error |",
                "|---|---:|---:|---:|---:|"]
        for r in df.itertuples():
            trial = f"ratio {r.ratio:g}" if label else f"keep S={r.sinks}, R={r.recent}"
            pred = fit["coef"] * r.lost_mass
            out.append(f"| {trial} | {r.lost_mass:.3g} | {r.measured:.4g} | {pred:.4g} | "
                       f"{pct(pred / r.measured - 1 if r.measured else None)} |")
        out.append("")
    return out


@renderer("default-plans")
def default_plans() -> str:
    d = result("bench-default-cpu", "bench")
    b = d["data"]
    lines = ["| plan | dtype | pred ms / speedup | measured ms / speedup | adj | GiB pred / meas | process GiB "
             "| loss pred / meas |", "|---|---|---|---|---:|---|---:|---|"]
    dense = b["dense"]
    lines.append(f"| dense | {dense['dtype']} | {num(b['plans'][0]['predicted']['dense_latency_ms'])} / 1.00x | "
                 f"{dense['latency_ms']:.1f} / 1.00x | | {gib(b['plans'][0]['predicted']['dense_memory_mb'], 4)} / "
                 f"{gib(dense['peak_mb'], 4)} | {gib(dense['process_peak_mb'], 3)} | 0 / {num(dense['loss'], '.4f')} |")
    for base in b["baselines"]:
        m = base["measured"]
        lines.append(f"| {base['name']} (whole model) | {base['dtype']} | | {m['latency_ms']:.1f} / "
                     f"{base['speedup']['measured']:.2f}x | | - / {gib(m['peak_mb'], 4)} | "
                     f"{gib(m['process_peak_mb'], 3)} | - / {num(m['loss'], '.4f')} |")
    for e in b["plans"]:
        p, m, s = e["predicted"], e["measured"], e["speedup"]
        lines.append(f"| {e['plan_name']} | {m['dtype']} | {p['latency_ms']:.1f} / {s['promised']:.2f}x | "
                     f"{m['latency_ms']:.1f} / {s['measured']:.2f}x | "
                     f"{pct(e['prediction_error']['latency_drift_corrected'])} | {gib(p['memory_mb'], 4)} / "
                     f"{gib(m['peak_mb'], 4)} | {gib(m['process_peak_mb'], 3)} | {p['loss']:.4g} / "
                     f"{num(m['loss'], '.4g')} |")
    ladder = [e for e in b["plans"] if plan_budgets(e).get("min_speedup")]
    knobs = [first_knob(ladder, base) for base in b["baselines"]]
    lines += ["", budgets_kept(b), "",
              *(f"- The speedup ladder (`--min-speedup`) against the first knob: {k}." for k in knobs),
              "", source(d, "bench-default-cpu")]
    return "\n".join(lines)


def plan_budgets(e: dict) -> dict:
    """The budgets a benched plan was solved under (its plan file)."""
    path = ROOT / e["plan"]
    return json.loads(path.read_text()).get("budgets", {}) if path.exists() else {}


def budgets_kept(b: dict) -> str:
    """Which budgets each plan keeps, measured (speedup and allocator peak)."""
    from litevar.planner.plan import Plan
    kept, missed = [], []
    for e in b["plans"]:
        budgets = Plan.load(ROOT / e["plan"]).budgets
        m, s = e["measured"], e["speedup"]["measured"]
        if budgets.get("min_speedup"):
            ok = s >= budgets["min_speedup"]
            (kept if ok else missed).append(f"{e['plan_name']} {s:.2f}x for {budgets['min_speedup']:.2f}x")
        if budgets.get("max_memory_gib"):
            ok = m["peak_mb"] <= budgets["max_memory_gib"] * 1024
            (kept if ok else missed).append(f"{e['plan_name']} {gib(m['peak_mb'], 4)} GiB for "
                                            f"{budgets['max_memory_gib']:.4f}")
    text = "Budgets kept, measured: " + ("; ".join(kept) or "none") + "."
    if missed:
        text += " **Missed: " + "; ".join(missed) + ".**"
    off = [f"{e['plan_name']} {e['predicted']['loss']:.3g} predicted, {e['measured']['loss']:.3g} measured"
           for e in b["plans"] if e["measured"].get("loss") and e["measured"]["loss"] > 1e-3
           and abs(e["predicted"]["loss"] / e["measured"]["loss"] - 1) > 0.2]
    if off:
        text += " **Loss predicted more than 20% off: " + "; ".join(off) + ".**"
    return text


@renderer("planner-vs-recipes")
def planner_vs_recipes() -> str:
    return vs_recipes("planner-vs-recipes-cpu")


@renderer("planner-vs-recipes-b8")
def planner_vs_recipes_b8() -> str:
    return vs_recipes("planner-vs-recipes-cpu-b8")


def vs_recipes(name: str) -> str:
    d = result(name, "planner-vs-recipes")
    b = d["data"]["bench"]
    dense = b["dense"]
    lines = [f"Batch {b['batch']}, {b['resolution']} px; dense fp32 {dense['latency_ms']:.1f} ms, "
             f"{gib(dense['peak_mb'], 4)} GiB. Speedups are paired (vs dense, same rounds). Each cell: dtype, "
             "speedup, GiB, loss, measured; then whether the plan kept both of the recipe's measured figures "
             "(as fast, as little memory) and had less loss.", "",
             "| recipe | budgets (its predicted ms, GiB) | recipe | plan (guarded) | within both | lower loss "
             "| plan, no guard | within both | lower loss |", "|---|---|---|---|:-:|:-:|---|:-:|:-:|"]
    notes, guarded, bare = [], [], []
    for pair in d["data"]["pairs"]:
        r = plan_row(b, Path(pair["recipe_plan"]).stem)
        knob = pair.get("kind") == "knob"  # a speedup budget: the whole model's predicted speedup at a dtype
        budget = (f"{pair['budgets']['min_speedup']:.2f}x (its predicted speedup)" if knob else
                  f"{pair['budgets']['max_latency_ms']:.1f} ms, {pair['budgets']['max_memory_gib']:.4f}")
        cells = [f"| {pair['recipe']} | {budget} | {_cell(r)} "]
        knob_dtype = runtime_only(pair["recipe_plan"]) if knob else None
        same_as_knob = {}  # plan key -> whether that plan is the whole model at the knob's dtype itself
        for key, into in (("plan", guarded), ("plan_noguard", bare)):
            if not pair.get(key):
                cells.append(f"| {'no plan meets it' if key in pair else '-'} | | ")
                continue
            p = plan_row(b, Path(pair[key]).stem)
            into.append(p)
            rm, pm = r["measured"], p["measured"]
            same = same_as_knob[key] = knob and runtime_only(pair[key]) == knob_dtype
            within = same or (p["speedup"]["measured"] >= r["speedup"]["measured"]
                              and (knob or pm["peak_mb"] <= rm["peak_mb"]))
            lower = (pm["loss"] or 0) < (rm["loss"] or 0)
            cells.append(f"| {_cell(p)} | {'the same' if same else 'yes' if within else '**no**'} | "
                         f"{'the same' if same else 'yes' if lower else '**no**'} ")
        lines.append("".join(cells) + "|")
        rs = r["speedup"]["measured"]
        if knob and pair.get("plan_noguard"):
            nb = plan_row(b, Path(pair["plan_noguard"]).stem)
            seen = (f"the {pair['recipe']} row as the cost model saw it: it promised the whole model "
                    f"{r['speedup']['promised']:.2f}x (measured {rs:.2f}x)")
            if same_as_knob["plan_noguard"]:
                notes.append(seen + ", and no per-layer decision at that speed had less predicted loss: the "
                             "unguarded plan is the whole model itself")
            else:
                notes.append(seen + f" and the unguarded plan it preferred at less predicted loss "
                             f"{nb['speedup']['promised']:.2f}x (measured {nb['speedup']['measured']:.2f}x, runtime "
                             f"{nb['measured']['dtype']})")
        if rs < 1:
            notes.append(f"the {pair['recipe']} recipe is slower than dense on this CPU ({rs:.2f}x): "
                         "a plan within its budgets may be dense itself, which is no win")
    guards = {json.dumps(json.loads((ROOT / pair["plan"]).read_text())["solver"].get("guard"), sort_keys=True)
              for pair in d["data"]["pairs"] if pair.get("plan") and (ROOT / pair["plan"]).exists()}
    if any(pair.get("kind") == "knob" for pair in d["data"]["pairs"]):
        notes.append("a whole-model row asks the planner for that dtype's predicted speedup (`--min-speedup`); "
                     "'within both' there means at least as fast as the whole model measured (memory is no budget "
                     "there)")
    for g in map(json.loads, sorted(guards)):
        if g:
            notes.append(f"the guarded plans are solved against the recipe's budgets tightened by the guard "
                         f"({pct(g['latency'])} latency, {pct(g['memory'])} memory: {g['source']}); a recipe "
                         "gets no guard, nor do the plans of the last three columns")
    for base in b["baselines"]:
        notes.append(first_knob(guarded, base))
        if bare:
            notes.append("with no guard: " + first_knob(bare, base))
    lines += ["", *(f"- {n[0].upper()}{n[1:]}." for n in notes), "", source(d, name)]
    return "\n".join(lines)


def _cell(e: dict) -> str:
    m = e["measured"]
    return f"{m['dtype']}, {e['speedup']['measured']:.2f}x, {gib(m['peak_mb'], 4)}, {num(m['loss'], '.4f')}"


def runtime_only(plan: str) -> str | None:
    """The runtime dtype of a plan file that decides nothing else (every linear fp, no window, CFG
    sharing, QK8 or KV-cache decision): the whole model in that dtype. None otherwise."""
    p = json.loads((ROOT / plan).read_text())
    if (any(f != "fp" for f in p.get("formats", {}).values()) or p.get("qk_int8") or p.get("cfg_shared")
            or p.get("kv") or (p.get("windows") or {}).get("widths")):
        return None
    return p.get("dtype") or "fp32"


def is_baseline(e: dict, base: dict) -> bool:
    """Whether a benched plan runs exactly what a whole-model baseline runs (its dtype, no compile)."""
    return not base.get("compile") and runtime_only(e["plan"]) == base["dtype"]


def first_knob(plans: list[dict], base: dict) -> str:
    """Is the least-loss planner plan at least as fast as a whole-model baseline at no more loss (measured)?
    A plan that is the baseline itself (the same computation) counts as as fast: the two figures then
    differ by the machine's noise only, which is said."""
    bs, bl = base["speedup"]["measured"], base["measured"]["loss"] or 0.0
    fast = [e for e in plans if e["speedup"]["measured"] >= bs or is_baseline(e, base)]
    head = (f"the whole model in {base['name']} runs at {bs:.2f}x (loss {num(base['measured']['loss'], '.4f')}); ")
    if not fast:
        return head + "no planner plan here is as fast: **missed**"
    best = min(fast, key=lambda e: e["measured"]["loss"] or 0.0)
    met = (best["measured"]["loss"] or 0.0) <= bl
    verdict = "met" if met else "**missed** (more loss)"
    same = (f" (it is the whole model in {base['dtype']} itself: no per-layer decision pays here; the two runs of "
            f"the same computation differ by noise)" if is_baseline(best, base) else "")
    return head + (f"the least-loss planner plan at least as fast is {best['plan_name']} at "
                   f"{best['speedup']['measured']:.2f}x, loss {num(best['measured']['loss'], '.4f')}: {verdict}{same}")


def plan_since(g: dict) -> bool:
    """Whether the plan file a one-generation result names was re-made after the run with other
    decisions (another Plan.decisions_sha256; for files from before it was recorded, another
    predicted peak): the row then measured decisions that are no longer shipped."""
    from memory_check import measured
    path = ROOT / g["plan"]
    return not path.exists() or not measured(g, path.read_text())


def dense_mib(g: dict) -> float:
    """The dense reference (MiB) of the plan a one-generation result names, as the shipped plan
    states it (dense does not depend on the plan's decisions); the run's record if the plan is gone."""
    from litevar.planner.plan import Plan
    path = ROOT / g["plan"]
    return Plan.load(path).predicted.dense_memory_mb if path.exists() else g["dense_predicted_mib"]


def peak_set_by(g: dict) -> str:
    """The phase that set the measured peak (runs that measured both), else the predicted one."""
    from litevar.planner.plan import phase_peaks_mb
    phases = phase_peaks_mb(g.get("predicted_breakdown_mib")) or {"transformer": 0.0}
    predicted = max(phases, key=phases.get)
    if g.get("peak_transformer_mib") is None:
        return f"{predicted} (predicted)"
    seen = {"transformer": g["peak_transformer_mib"], "decode": g["peak_decode_mib"],
            "encode": g.get("peak_encode_mib") or 0.0}
    measured = max(seen, key=seen.get)
    enc = f" / encode {gib(g['peak_encode_mib'])}" if g.get("peak_encode_mib") else ""
    return f"{measured} ({gib(g['peak_transformer_mib'])} / {gib(g['peak_decode_mib'])}{enc})"


def priced_elsewhere(d: dict) -> str | None:
    """The CPU a one-generation run's plan was priced for, where the run was on another one (its
    time then tests no prediction), else None."""
    from litevar.planner.plan import Plan
    path, ran = ROOT / d["data"]["plan"], d["provenance"]["machine"]
    if not path.exists() or ran.get("type") != "cpu":
        return None
    dev = Plan.load(path).device
    if (str(dev.get("cpu_family")), str(dev.get("cpu_model"))) == (str(ran.get("cpu_family")),
                                                                   str(ran.get("cpu_model"))):
        return None
    return cpu_label(dev) + ")"


@renderer("one-generations")
def one_generations() -> str:
    files = {p.stem: result(p.stem, "one-generation") for p in sorted(RESULTS.glob("*-one.json"))}
    lines = ["| plan | batch, px | dtype | budget GiB | peak set by (transformer / decode GiB, measured) | KV cache "
             "GiB | allocator peak GiB predicted / measured | error | process peak GiB | time s predicted / "
             "measured |", "|---|---|---|---:|---|---:|---|---:|---:|---|"]
    stale, elsewhere = [], []
    for d in files.values():
        g = d["data"]
        b = g.get("predicted_breakdown_mib") or {}
        mark, other = "", priced_elsewhere(d)
        if other:
            elsewhere.append(f"{g['plan_name']} ran on {machine(d['provenance'], policy=False)}, its plan priced "
                             f"for {other}")
        if plan_since(g):
            mark = " ‡"
            stale.append(g["plan_name"])
        lines.append(f"| {g['plan_name']}{mark} | {g['batch']}, {g['resolution']} | {g['dtype']} | "
                     f"{num(g.get('budget_gib'), 'g')} | {peak_set_by(g)} | {gib(b.get('kv_cache'))} | "
                     f"{gib(g['predicted_mib'])} / **{gib(g['peak_mib'])}** | "
                     f"{pct(g['memory_err'])} | {gib(g.get('process_peak_mib'))} | "
                     f"{num(g.get('predicted_s'), '.0f')} / {g['seconds']:.0f}{' §' if other else ''} |")
    lines.append("")
    if elsewhere:
        lines += [f"§ Run on another CPU than its plan was priced for: {'; '.join(elsewhere)}. Such a run's "
                  "time tests no prediction (the plan priced the other CPU's kernels); its memory does, as the plan "
                  "predicts tensor bytes, which do not depend on the CPU.", ""]
    if stale:
        lines += [f"‡ Not re-measured since its plan was re-made: {', '.join(stale)}. The row is the run of the "
                  "plan's previous decisions and the prediction it carried then (the memory-model check below "
                  "prices those decisions again); the shipped plan file holds other decisions.", ""]
    for name, d in files.items():
        lines.append(f"- {d['data']['plan_name']}: " + source(d, name))
    return "\n".join(lines)


@renderer("memory-check")
def memory_check() -> str:
    d = result("memory-check", "memory-check")
    lines = ["| plan | measured GiB | predicted when run | error | predicted by the current model | error |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in d["data"]["rows"]:
        now = (f"{gib(r['predicted_now_mib'])} | {pct(r['error_now'])}" if r["checked"] else
               f"not checked: {r['why']} | -")
        lines.append(f"| {r['plan']} | {gib(r['measured_mib'])} | {gib(r['predicted_then_mib'])} | "
                     f"{pct(r['error_then'])} | {now} |")
    checked = [abs(r["error_now"]) for r in d["data"]["rows"] if r["checked"]]
    if checked:
        lines += ["", f"Worst error of the current model over the {len(checked)} checked runs: "
                      f"{100 * max(checked):.1f}%."]
    lines += ["", source(d, "memory-check")]
    return "\n".join(lines)


# devices made on the profile's machine; a real other CPU, measured twice
TRANSFER = ("transfer-cpu", "transfer-cpu-zen3", "transfer-cpu-zen3-run2")


@renderer("transfer")
def transfer() -> str:
    files = {name: result(name, "transfer") for name in TRANSFER}
    profiles = {(d["data"]["profile"], d["data"]["source_threads"]) for d in files.values()}
    lines = [f"Source profile: {p} (measured at full ISA, {n} threads)." for p, n in sorted(profiles)]
    lines += ["", "| device | calibration s | plans | median error, calibrated | Spearman | median error, profile "
              "as is | budget plan: predicted / measured |", "|---|---:|---:|---:|---:|---:|---|"]
    runs: dict[str, int] = {}  # CPU -> files so far: a repeat run on the same CPU is labelled with its number
    devices = []
    for d in files.values():
        cpu = cpu_label(d["provenance"]["machine"])
        runs[cpu] = runs.get(cpu, 0) + 1
        devices += [(dev, _transfer_label(dev, d["provenance"], runs[cpu])) for dev in d["data"]["devices"]]
    lines += [_transfer_row(dev, label) for dev, label in devices]
    notes = [f"{label}: {n}" for dev, label in devices for n in _transfer_notes(dev)]
    lines += ["", *(f"- {n}." for n in notes), ""]
    lines += [_transfer_plans(dev, label) for dev, label in devices if "in_model" in dev]
    lines += [f"- {name}: " + source(d, name) for name, d in files.items()]
    return "\n".join(lines)


def _transfer_label(dev: dict, prov: dict, run: int = 1) -> str:
    """The device: the CPU the run was on (family and model), what was made of it, and which run of
    the transfer on that CPU (from the second on)."""
    cpu = cpu_label(prov["machine"]) + ")"
    return f"{cpu}, {'as it is' if dev['name'] == 'host' else dev['name']}{f', run {run}' if run > 1 else ''}"


def _transfer_plans(dev: dict, label: str) -> str:
    """Each plan on a device calibrated with its generation and attention backends: measured,
    priced from its calibration, and as the profile priced it on its own machine."""
    def err(r, key):
        return "-" if r.get(key) is None else f"{100 * (r[key] / r['measured_ms'] - 1):+.1f}%"
    lines = [f"| plan ({label}) | measured ms | priced from its calibration | error | profile as is | "
             "error |", "|---|---:|---:|---:|---:|---:|"]
    for r in dev["rows"]:
        own = " (the calibration's own point)" if r.get("fit_point") else ""
        lines.append(f"| {r['plan'].removeprefix('default-cpu-256-')}{own} | {r['measured_ms']:.1f} | "
                     f"{num(r.get('priced_ms'))} | {err(r, 'priced_ms')} | {r['asis_ms']:.1f} | {err(r, 'asis_ms')} |")
    return "\n".join(lines) + "\n"


def _transfer_row(dev: dict, label: str) -> str:
    bp = dev.get("budget_plan") or {}
    priced = [r for r in dev["rows"] if r.get("priced_ms") is not None and not r.get("fit_point")]
    return (f"| {label} | {dev['calibration_s']:.0f} | {len(priced)} | {100 * dev['median_err']:.1f}% | "
            f"{dev['spearman']:.2f} | {100 * dev['asis_median_err']:.1f}% | {num(bp.get('predicted_ms'))} / "
            f"{num(bp.get('measured_ms'))} ms ({'met' if bp.get('met') else '**missed**'}) |")


def _transfer_notes(dev: dict) -> list[str]:
    bp, notes = dev.get("budget_plan") or {}, []
    if bp:
        notes.append(f"budget {bp['budget_ms']:.1f} ms, "
                     f"{bp.get('budget_rule', '90% of dense priced for the device')}")
    if "loss" in bp:
        notes.append(f"the budget plan's predicted loss is {bp['loss']:.3g} nats: {bp['quantized']} linears "
                     f"quantized, CFG shared in {bp['cfg_shared']} blocks, {bp['kv']} KV caches compressed, "
                     f"QK8 in {bp['qk8']} blocks, {100 * bp['attn_kept']:.0f}% of attention kept")
    skipped = [f"{r['plan']} ({r.get('not_priced', 'not offered')})" for r in dev["rows"] if r.get("priced_ms") is None]
    if skipped:
        notes.append(f"not priced, the device is not offered what they run: {'; '.join(skipped)}")
    for dtype, why in (dev.get("runtimes_left_out") or {}).items():
        notes.append(f"the {dtype} runtime is left out of its calibration: {why}")
    if "in_model" not in dev:
        notes.append("calibrated before `litevar calibrate` timed a generation and the attention "
                     "backends: its kernels priced as isolated calls ran, windows and KV caches as dense attention")
    else:
        factors = ", ".join(f"{d} {f:.2f}" for d, f in dev["in_model"].items())
        notes.append(f"in-model factor {factors or '1 (none)'}: {dev['in_model_note']}; dense, the "
                     "calibration's own point, is left out of the statistics")
    return notes


@renderer("probe-check")
def probe_check() -> str:
    d = result("probe-check", "probe-check")
    rows = d["data"]["rows"]
    lines = ["| transfer run | device | drift the probe found (fp32) | plans' median error, with / without "
             "the probe | dense, with / without |", "|---|---|---:|---:|---:|"]
    for r in rows:
        ratio = r["speed_ratio"].get("fp32")
        lines.append(f"| {r['transfer']} | {r['device']} | {pct(ratio - 1) if ratio else '-'} | "
                     f"{pct(r['median_err_probe']).lstrip('+')} / {pct(r['median_err_raw']).lstrip('+')} | "
                     f"{pct(r['dense_err_probe'])} / {pct(r['dense_err_raw'])} |")
    helped = sum(r["median_err_probe"] < r["median_err_raw"] for r in rows)
    lines += ["", f"The probe lowered the plans' median error in {helped} of {len(rows)} calibrations. Drift: how "
              "much slower (+) the machine ran during the generation than during the kernel sweep; dense: "
              "price / measured - 1, the calibration's own point.", "", source(d, "probe-check", policy=False)]
    return "\n".join(lines)


@renderer("gpu-fit")
def gpu_fit() -> str:
    d = result("gpu-fit", "gpu-fit")
    extra = [result("gpu-fit-infinity", "gpu-fit")] if (RESULTS / "gpu-fit-infinity.json").exists() else []
    rows = d["data"]["rows"] + [r for e in extra for r in e["data"]["rows"]]
    lines = ["| model | px | device (`litevar devices`) | memory GiB | dense: ms, GiB | plan "
             "| plan: dtype, ms, GiB, loss |",
             "|---|---:|---|---:|---|---|---|"]
    for r in rows:
        plan = r.get("plan")
        ptxt = (f"none fits: the least any plan reaches is {gib(r.get('least_mb'))} GiB" if plan is None else
                f"{plan['dtype']}, {plan['latency_ms']:.0f}, {gib(plan['memory_mb'])}, {plan['loss']:.3g}")
        lines.append(f"| {r['model']} | {r['resolution']} | `{r['catalogue']}` | {r['device_gib']:.1f} | "
                     f"{r['dense_ms']:.0f}, {gib(r['dense_mb'])}{'' if r['dense_fits'] else ' (does not fit)'} | "
                     f"{r['plan_kind']} | {ptxt} |")
    lines += ["", "All figures at the spec tier (the catalogue's datasheet figures and assumed efficiencies; "
                  "no GPU measured them).", "", source(d, "gpu-fit")]
    if extra:
        lines += ["", "Infinity rows: priced from the Infinity-2B cost-only profile (8B's wider shapes extrapolated "
                      "from it: `litevar plan --config 8b`), losses borrowed from the VAR default model. Dense holds "
                      "its T5 text encoder resident, as Infinity ships; a plan keeps it too unless it frees it "
                      "after encoding (`litevar plan --text-encoder`), paying its reload for each prompt.", "",
                  source(extra[0], "gpu-fit-infinity")]
    return "\n".join(lines)


def gpu_file(gpu: str, name: str) -> dict:
    """docs/gpu/GPU/NAME.json (the GPU evidence run's files); a result file's data, else the file."""
    d = json.loads((ROOT / "docs" / "gpu" / gpu / f"{name}.json").read_text())
    return d.get("data", d) if d.get("format") == "litevar-result" else d


def gpu_source(gpu: str) -> str:
    fp = gpu_file(gpu, "fingerprint")
    dev, env = fp["device"], fp["env"]
    note = json.loads((ROOT / "docs" / "gpu" / gpu / "summary.json").read_text()).get("provenance_note", "")
    return (f"<sub>`bash benchmarks/gpu_evidence.sh` → [docs/gpu/{gpu}/](gpu/{gpu}/) · {dev['name']} (compute "
            f"capability {dev['compute_capability']}, {dev['sm_count']} SMs, driver {dev.get('driver', '?')}, torch "
            f"{env['torch']}, triton {env['triton']}) · {gpu_file(gpu, 'summary')['date']} · {note}.</sub>")


@renderer("gpu-evidence")
def gpu_evidence() -> str:
    import statistics
    gpu = "h200"
    s, cal, k = gpu_file(gpu, "summary"), gpu_file(gpu, "calibration"), gpu_file(gpu, "bench_kernels")
    t = gpu_file(gpu, "gpu_tests")
    lines = [f"GPU tests (`pytest -m gpu`): {t['passed']} of {t['tests']} passed. Calibration: "
             f"{cal['seconds']:.0f} s; copy bandwidth {cal['bandwidth_gbs'] / 1e3:.2f} TB/s; "
             f"{1e3 * cal['dispatch_ms']:.1f} us per tiny op; CUDA context {gib(cal['context_mib'])} GiB; "
             f"held-out median error {100 * cal['validation']['latency_err']:.1f}%.", "",
             "**Attention** (one call, bf16, the last scale's queries against every key; MDWA keeps about 10%):", "",
             "| px | q / kv tokens | heads | backend | kept | ms | speedup vs dense SDPA |",
             "|---:|---|---:|---|---:|---:|---:|"]
    for r in k["attention"]:
        lines.append(f"| {r['resolution']} | {r['q_tokens']:,} / {r['kv_tokens']:,} | {r['heads']} | {r['backend']} | "
                     f"{100 * r['kept']:.0f}% | {r['ms']:.2f} | {r['speedup']:.2f}x |")
    lines += ["", "**Quantized linears against the bf16 cuBLAS linear** (d16 to d30 widths, 8,192 and 32,768 rows; "
              "the kernel alone, and the whole layer with its activation quantization and epilogue):", "",
              "| kernel | impl | shapes | kernel alone: median (range) | whole layer: median (range) | best TOPS |",
              "|---|---|---:|---|---|---:|"]
    groups: dict = {}
    for r in k["gemm"]:
        if r.get("status") == "ok" and r["kernel"] != "dense":
            groups.setdefault((r["kernel"], r["impl"]), []).append(r)
    for (kern, impl), rs in groups.items():
        a, b = [r["speedup"] for r in rs], [r["speedup_layer"] for r in rs]
        lines.append(f"| {kern} | {impl} | {len(rs)} | {statistics.median(a):.2f}x ({min(a):.2f}-{max(a):.2f}) | "
                     f"{statistics.median(b):.2f}x ({min(b):.2f}-{max(b):.2f}) | {max(r['tops'] for r in rs):.0f} |")
    lines += ["", "**Plans made on the GPU's own cost profiles** (d16 at random init and the default model; losses "
              "from the CPU profile):", "",
              "| plan | budget | result |", "|---|---|---|"]
    for step in ("d16_profile", "default_model"):
        for pl in s["steps"].get(step, {}).get("plans", []):
            budget = "1.2x faster (guarded)" if "-x12" in pl["plan"] else "memory half-way to the least"
            res = (f"no plan: {_best_reached(pl['failed'])}" if "failed" in pl else
                   f"{pl['speedup']:.2f}x predicted, {gib(pl['memory_mb'])} GiB, loss {pl['loss']:.3g}")
            lines.append(f"| {pl['plan']} | {budget} | {res} |")
    lines += ["", "**Benched** (7 interleaved rounds, 256 px, batch 1):", "",
              "| model | plan | dense ms | measured speedup | promised | allocator GiB: predicted / measured |",
              "|---|---|---:|---:|---:|---|"]
    for model in ("d16", "default"):
        b = gpu_file(gpu, f"bench-{model}-256")
        for e in b["plans"]:
            lines.append(f"| {model} | {Path(e['plan']).name} | {b['dense']['latency_ms']:.1f} | "
                         f"{e['speedup']['measured']:.2f}x | {e['speedup']['promised']:.2f}x | "
                         f"{gib(e['predicted']['memory_mb'])} / {gib(e['measured']['peak_mb'])} |")
    tiers = gpu_file(gpu, "tiers")["tiers"]
    lines += ["", "**How good each tier was**: the benched models (dense and plan, d16 and the default model) priced "
              "from the CPU profiles for the H200, against the bench:", "",
              "| tier | context GiB | latency: median error | allocator peak | process (reserve and context) |",
              "|---|---:|---:|---:|---:|"]
    for name, v in tiers.items():
        lines.append(f"| {name} | {gib(v['context_mib'])} | {100 * v['median_err']:.1f}% | "
                     f"{100 * v['memory_median_err']:.1f}% | {100 * v['process_median_err']:.1f}% |")
    lines += ["", "| tier | model | plan | ms: predicted / measured | GiB: predicted / measured | process GiB |",
              "|---|---|---|---|---|---|"]
    for name, v in tiers.items():
        for r in v["rows"]:
            lines.append(f"| {name} | {r['model']} | {r['plan']} | {r['predicted_ms']:.1f} / {r['measured_ms']:.1f} | "
                         f"{gib(r['predicted_mb'])} / {gib(r['measured_mb'])} | "
                         f"{gib(r['predicted_process_mb'])} / {gib(r['measured_process_mb'])} |")
    lines += ["", gpu_source(gpu)]
    if (RESULTS / "autocast-cache-cpu.json").exists():
        rows = tiers.get("calibrated", {}).get("rows", [])
        d16 = next((r for r in rows if r["model"] == "d16" and r["plan"] == "dense"), None)
        lines += ["", autocast_cache(None if d16 is None else d16["measured_mb"] - d16["predicted_mb"])]
    return "\n".join(lines)


def autocast_cache(miss_mib: float | None) -> str:
    """Why d16's allocator peak was under-predicted on the GPU: autocast's weight cache, measured."""
    d = result("autocast-cache-cpu", "autocast-cache")
    c = d["data"]
    by = {r["parameters"]: r for r in c["rows"]}
    return "\n".join([
        f"**Why d16's allocator peak was under-predicted above.** The benched d16 was built at random init with "
        f"trainable parameters, and autocast keeps the {c['dtype']} copy of a float32 parameter that requires grad "
        f"for the whole generation: half the bytes of every fp32 linear weight on top of the weights. The same "
        f"d{c['depth']} at {c['resolution']} px, {c['dtype']} autocast, on this CPU (fp32 linear weights "
        f"{gib(c['linear_weights_fp32_mib'])} GiB):", "",
        "| parameters | transformer phase GiB | decode phase GiB |", "|---|---:|---:|",
        *(f"| {k} | {gib(by[k]['transformer_mib'])} | {gib(by[k]['decode_mib'])} |" for k in ("frozen", "trainable")),
        "", f"The cache is {gib(c['cache_mib'])} GiB ({c['cache_mib'] / c['linear_weights_fp32_mib']:.2f} of the fp32 "
        f"linear weights); the H200's miss on d16 dense was {gib(miss_mib)} GiB. Models are frozen at load now, "
        "random-init ones too (loaded checkpoints always were); the d16 rows above (its H200 profile, plans and "
        "bench) were measured with the trainable model and have not been measured again on a GPU.", "",
        source(d, "autocast-cache-cpu")])


def _best_reached(why: str) -> str:
    m = re.search(r"reaches at best ([\d.]+) ms \(speedup ([\d.]+)x\)", why)
    return f"the best reachable is {m.group(2)}x ({m.group(1)} ms)" if m else why


@renderer("kernels")
def kernels() -> str:
    d = result("bench-kernels-cpu", "bench-kernels")
    k = d["data"]
    lines = ["| resolution | heads | q / kv tokens | backend | kept | ms | speedup vs dense SDPA | max err |",
             "|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in k.get("attention", []):
        lines.append(f"| {r['resolution']} | {r['heads']} | {r['q_tokens']:,} / {r['kv_tokens']:,} | {r['backend']} | "
                     f"{100 * r['kept']:.0f}% | {r['ms']:.1f} | {r['speedup']:.2f}x | {num(r.get('max_err'), '.1e')} |")
    # the dense reference: bf16, or fp32 where bf16 is emulated
    ref = next((r["format"] for r in k.get("gemm", []) if r["kernel"] == "dense"), "bf16")
    lines += ["", f"| layer | depth | M x N x K | kernel | impl | ms (layer) | speedup vs {ref} (layer) | SQNR dB |",
              "|---|---:|---|---|---|---:|---:|---:|"]
    for r in k.get("gemm", []):
        if r.get("status") != "ok":
            continue
        shape = f"{r['M']} x {r['N']} x {r['K']}"
        lines.append(f"| {r['layer']} | {r['depth']} | {shape} | {r['kernel']} ({r['format']}) | {r['impl']} | "
                     f"{r['ms_layer']:.2f} | {r['speedup_layer']:.2f}x | {num(r.get('sqnr_db'), '.1f')} |")
    lines += ["", source(d, "bench-kernels-cpu")]
    return "\n".join(lines)


@renderer("host-allocator")
def host_allocator() -> str:
    from host_allocator import table
    d = result("host-allocator-cpu", "host-allocator")
    k = d["data"]
    rows = {(r["batch"], r["config"]): r for r in k["rows"]}
    big = max(k["batches"])
    fp, w8 = rows[big, "fp32"], rows[big, "w8a8"]
    lines = [f"{k['rounds']} rounds, 256 px; ms and minor page faults per generation are medians, the ratios "
             "paired (the same round).", "", table(k), "",
             f"- At batch {big}, glibc's policy faulted {fp['default']['faults']:,.0f} pages per fp32 generation "
             f"and {w8['default']['faults']:,.0f} per W8A8 one; with freed memory kept, "
             f"{fp['retain']['faults']:,.0f} and {w8['retain']['faults']:,.0f}. fp32 ran {fp['ratio']:.2f}x and "
             f"W8A8 {w8['ratio']:.2f}x as fast, so W8A8 over fp32 went from {w8['default']['speedup_vs_fp32']:.2f}x "
             f"to {w8['retain']['speedup_vs_fp32']:.2f}x."]
    for b in k["batches"]:
        quiet = [r for r in k["rows"] if r["batch"] == b]
        if all(r[p]["faults"] == 0 for r in quiet for p in ("default", "retain")):
            ratios = [r["ratio"] for r in quiet]
            lines.append(f"- At batch {b} neither policy faulted (no block outgrew glibc's moving threshold): the "
                         f"policies' ratios there, {min(ratios):.2f}x to {max(ratios):.2f}x, and the speedups' "
                         "differences between them are this run's noise.")
    lines += ["", source(d, "host-allocator-cpu", policy=False)]
    return "\n".join(lines)


@renderer("distributed")
def distributed() -> str:
    d = result("distributed-profile-cpu", "distributed-profile")
    t = d["data"]
    diff = max(t["largest_relative_difference"].values()) if t["largest_relative_difference"] else 0.0
    lines = ["| run | wall time |", "|---|---:|",
             f"| one process, {d['provenance']['machine'].get('torch_threads')} threads | "
             f"{t['seconds_one_process']:.0f} s |",
             f"| torchrun, {t['nproc']} ranks x 1 thread | {t['seconds_torchrun']:.0f} s "
             f"({t['seconds_one_process'] / t['seconds_torchrun']:.2f}x) |", "",
             f"Stages {t['stages']}. The largest relative difference between the two runs' tables: {diff:.3g} "
             f"(over {', '.join(t['largest_relative_difference'])}).", "", source(d, "distributed-profile-cpu")]
    return "\n".join(lines)


@renderer("ablation")
def ablation() -> str:
    d = result("ablation", "ablation")
    a = d["data"]
    rows = {r["recipe"]: r for t in a["tables"].values() for r in t}
    lines = ["| recipe | attention FLOPs saved | avg bits | loss measured / predicted | class accuracy | paper: FID |",
             "|---|---:|---:|---|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['attn_flops_saved']:.1f}% | {r['avg_bits']:.1f} | {r['loss']:.4f} / "
                     f"{r['predicted_loss']:.4f} | {100 * r['class_accuracy']:.0f}% | "
                     f"{num((r.get('paper') or {}).get('fid'), '.2f')} |")
    lines += ["", f"On {a['n']} samples per recipe (class accuracy; chance {100 * a['chance']:.0f}%); the paper's "
                  "figures are its VAR-d16's on ImageNet. Every table: [ablation.md](ablation.md).", "",
              source(d, "ablation")]
    return "\n".join(lines)


@renderer("default-eval")
def default_eval() -> str:
    d = result("default-eval", "eval")
    e = d["data"]
    lines = [f"Class accuracy {100 * e['class_accuracy']:.1f}% on {e['n']} samples (chance {100 * e['chance']:.0f}%); "
             f"Frechet distance of the classifier's features {e['frechet_feature']:.1f} (real against real "
             f"{e['frechet_feature_real_vs_real']:.2f}).", "", source(d, "default-eval")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# README


@renderer("readme-results")
def readme_results() -> str:
    stale: list[str] = []
    bench = result("bench-default-cpu", "bench")
    home, elsewhere = machine(bench["provenance"], policy=False), set()
    lines = ["| model, resolution | what | dense | plan, predicted | plan, measured |", "|---|---|---|---|---|"]
    b = bench["data"]
    x = plan_row(b, "default-cpu-256-x25")
    lines.append(f"| default, 256 px | `--min-speedup 1.25` | {b['dense']['latency_ms']:.1f} ms | "
                 f"{x['speedup']['promised']:.2f}x, loss {x['predicted']['loss']:.2g} | "
                 f"**{x['speedup']['measured']:.2f}x**, loss {num(x['measured']['loss'], '.2g')} |")
    m = plan_row(b, "default-cpu-256-mem50")
    lines.append(f"| default, 256 px | `--max-memory-gib` 50% of dense | {gib(b['dense']['peak_mb'], 4)} GiB | "
                 f"{gib(m['predicted']['memory_mb'], 4)} GiB | **{gib(m['measured']['peak_mb'], 4)} GiB**, loss "
                 f"{num(m['measured']['loss'], '.2g')} |")
    for name, what in (("d16-cpu-2048-8gib-one", "`--max-memory-gib 8`"),
                       ("d30-cpu-1024-memhalf-one", "memhalf (`--max-memory-gib` half-way to the least reachable)"),
                       ("d30-cpu-2048-18gib-one", "`--max-memory-gib 18`"),
                       ("infinity-2b-cpu-1024-8gib-one", "`--max-memory-gib 8`, random init")):
        if not (RESULTS / f"{name}.json").exists():
            continue
        d = result(name, "one-generation")
        g, ran_on = d["data"], machine(d["provenance"], policy=False)
        model = {"infinity": "Infinity-2B"}.get(name.split("-")[0], name.split("-")[0])
        if plan_since(g):
            what += " ‡"
            stale.append(g["plan_name"])
        where = "" if ran_on == home else " §"
        if where:
            elsewhere.add(ran_on)
        lines.append(f"| {model}, {g['resolution']} px | {what}, one generation | {gib(dense_mib(g), 1)} "
                     f"GiB predicted | {gib(g['predicted_mib'])} GiB | **{gib(g['peak_mib'])} GiB** "
                     f"({pct(g['memory_err'])}), {g['seconds'] / 60:.0f} min{where} |")
    head = f"Measured on {home}"
    if elsewhere:
        head += f", and § on {' and '.join(sorted(elsewhere))}"
    lines = [head + "; each row's command, machine, date and revision are in [docs/benchmarks.md](docs/benchmarks.md), "
             "rendered from the result files under `docs/results/`.", ""] + lines
    lines += ["", "Memory: the allocator's peak, which plans predict and budgets govern (the process's peak is "
                  "beside it in docs/benchmarks.md); the error in brackets is predicted / measured - 1, so a "
                  "positive one is a prediction on the safe side. Dense: the shipped plan's reference, the dense "
                  "model as it ships (Infinity's text encoder resident) priced by the plan's profile."]
    if stale:
        lines += ["", f"‡ Measured on the plan's previous decisions: {', '.join(stale)} was re-made since and not "
                      "run again (docs/benchmarks.md, section 4, prices the measured decisions with the current "
                      "model)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# README's workflow: real output of commands that only read committed files


def cli_output(*argv, head: int | None = None) -> str:
    """stdout of `litevar ARGV` run here (commands that read files only: the output is a function of
    the committed files), as a text block headed by the command."""
    import contextlib
    import io
    import os

    from litevar.commands.cli import main
    buf, cwd = io.StringIO(), os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(buf):
            rc = main(list(argv))
    finally:
        os.chdir(cwd)
    if rc:
        raise SystemExit(f"litevar {' '.join(argv)} failed ({rc})")
    lines = buf.getvalue().rstrip("\n").splitlines()
    if head is not None and len(lines) > head:
        lines = lines[:head] + ["..."]
    return "```text\n$ litevar " + " ".join(argv) + "\n" + "\n".join(lines) + "\n```"


@renderer("cli-explain")
def cli_explain() -> str:
    return cli_output("explain", "plans/default-cpu-256-mem50.json", "--profile", "profiles/default-cpu.json",
                      head=9)


@renderer("cli-devices")
def cli_devices() -> str:
    return cli_output("devices")


@renderer("cli-bench")
def cli_bench() -> str:
    """The bench table of the shipped default plans' result file, as `litevar bench` prints it."""
    from litevar.commands.bench import format_table
    d = result("bench-default-cpu", "bench")
    r = dict(d["data"])
    r["plans"] = [e for e in r["plans"] if Path(e["plan"]).stem in ("default-cpu-256-x25", "default-cpu-256-mem50")]
    cmd = d["provenance"]["command"]
    return "```text\n$ " + cmd + "\n" + format_table(r, d["provenance"]["machine"]) + "\n```"


# ---------------------------------------------------------------------------------------------
# The pages


def render_block(name: str) -> str:
    """The block's text, or one line saying which result file is missing and what writes it."""
    try:
        return RENDERERS[name]()
    except FileNotFoundError as e:
        missing = Path(e.filename).relative_to(ROOT) if e.filename else "a result file"
        return (f"_Not measured at this revision: {missing} is missing. `bash benchmarks/cpu_evidence.sh` "
                "writes it._")


def render_page(text: str) -> tuple[str, list[str]]:
    """(the page with every block rendered, names of the blocks that changed)."""
    changed = []

    def sub(m):
        body = render_block(m["name"]).rstrip("\n") + "\n"
        if body != m["body"]:
            changed.append(m["name"])
        return m.group(1) + body + m.group(4)
    unknown = [m["name"] for m in BLOCK.finditer(text) if m["name"] not in RENDERERS]
    if unknown:
        raise SystemExit(f"no renderer for block(s) {unknown}")
    return BLOCK.sub(sub, text), changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the blocks that drifted")
    args = p.parse_args(argv)
    drift = []
    for page in PAGES:
        text = page.read_text()
        new, changed = render_page(text)
        drift += [f"{page.relative_to(ROOT)}: {name}" for name in changed]
        if changed and not args.check:
            page.write_text(new)
    if args.check and drift:
        print("pages differ from their result files (run `python benchmarks/render.py`):\n  " + "\n  ".join(drift))
        return 1
    print("rendered" if not args.check else "no drift", *(["(changed: " + ", ".join(drift) + ")"] if drift else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
