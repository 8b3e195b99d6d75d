"""`litevar compare PLAN...`: plans side by side across devices, resolutions and budgets.

One row per plan: its predicted figures, and the measured ones of `litevar bench --json` files
(--bench, format version 2) whose entry has the sha256 of the plan file's bytes. Rows are sorted
by device, resolution, then predicted latency. --json writes the rows; --html writes one
self-contained page (no network: every figure is a base64 PNG drawn with matplotlib's Agg
backend) with the table, loss against latency and memory per (device, resolution) with the
--frontier curves of `litevar plan --sweep`, a layer x format map and per-plan window maps.
Memory in GiB (2**30 bytes); loss in the profile's unit (nats, see README); tier: what priced a
plan's figures (spec: the device catalogue; calibrated: `litevar calibrate`; profiled: a profile).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from litevar.models.core.atomic import atomic_path, read_json, write_json, write_text
from litevar.models.core.errors import UserError

if TYPE_CHECKING:
    from litevar.planner.plan import Plan

log = logging.getLogger(__name__)

BENCH_FORMAT, BENCH_VERSION = "litevar-bench", 2
FRONTIER_COLUMNS = ("latency_ms", "memory_mb", "loss")
RERUN_BENCH = "re-run `litevar bench --plan PLAN --json FILE` with this litevar"
MEMORY_PARTS = ("weights", "kv_cache", "activations", "other")  # planner.build.MEMORY_PARTS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plans", nargs="+", metavar="PLAN", help="plan files written by `litevar plan`")
    p.add_argument("--bench", action="append", default=[], metavar="BENCH.json",
                   help="measured figures written by `litevar bench --json` (repeatable)")
    p.add_argument("--frontier", action="append", default=[], metavar="CSV",
                   help="Pareto frontier written by `litevar plan --sweep` (repeatable; drawn in every panel)")
    p.add_argument("--profile", action="append", default=[], metavar="PROFILE.json",
                   help="profiles the plans were made from (repeatable; matched by sha256): the memory breakdown "
                   "of plans that do not record it")
    p.add_argument("--html", help="write a self-contained HTML report here")
    p.add_argument("--png", help="also write the report's loss-latency-memory frontier of the first group of "
                   "plans (device, model, resolution) as a PNG here, e.g. for a README")
    p.add_argument("--json", help="write the table rows here as JSON")


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Entry:
    path: str
    plan: Plan
    sha256: str
    bench: dict | None = None  # the matching entry of a bench file's "plans" list
    memory: dict | None = None  # MB by part: weights, kv_cache, activations, other (planner.build.MEMORY_PARTS)


def load_plans(paths: list[str]) -> list[Entry]:
    from litevar.planner.build import profile_sha256  # sha256 of a file's bytes
    from litevar.planner.plan import Plan
    return [Entry(str(p), Plan.load(p), profile_sha256(p)) for p in paths]


def load_bench(path: str) -> list[dict]:
    """The "plans" entries of a bench file: a result file of kind bench (version 3 data), or the
    litevar-bench format version 2 written before result files."""
    d = read_json(path, "--bench", "pass the JSON written by `litevar bench --json`")
    if isinstance(d, dict) and d.get("format") == "litevar-result":
        if d.get("kind") != "bench" or not isinstance(d.get("data"), dict):
            raise UserError(f"--bench {path}: a result file of kind {d.get('kind')!r}, not a bench; "
                            "pass the JSON written by `litevar bench --json`")
        d = {**d["data"], "format": BENCH_FORMAT, "version": BENCH_VERSION}  # the plans' entries are alike
    if not isinstance(d, dict) or d.get("format") != BENCH_FORMAT:
        fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise UserError(f"--bench {path}: not a litevar bench file (format {fmt!r}); "
                        "pass the JSON written by `litevar bench --json`")
    if d.get("version") != BENCH_VERSION:
        raise UserError(f"--bench {path}: bench file version {d.get('version')!r}, this litevar reads "
                        f"version {BENCH_VERSION}; {RERUN_BENCH}")
    entries = d.get("plans")
    ok = isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("plan_sha256"), str)
                                           and isinstance(e.get("measured"), dict) for e in entries)
    if not ok:
        raise UserError(f"--bench {path}: 'plans' must be a list of entries with plan_sha256 and "
                        f"measured; {RERUN_BENCH}")
    dense_runs = (d.get("dense") or {}).get("latency_ms_runs")
    return [_paired(e, dense_runs) for e in entries]


def _paired(entry: dict, dense_runs) -> dict:
    """A bench entry whose measured speedup is the paired one (litevar.commands.bench.paired_speedup).
    Files written before it (no speedup.of_medians) held the ratio of medians there; it is
    recomputed from the recorded runs where they pair up."""
    from litevar.commands.bench import paired_speedup
    speed, runs = entry.get("speedup") or {}, entry["measured"].get("latency_ms_runs")
    if "of_medians" in speed or not dense_runs or not runs or len(runs) != len(dense_runs):
        return entry
    return {**entry, "speedup": {**speed, "measured": paired_speedup(dense_runs, runs),
                                 "of_medians": speed.get("measured")}}


def attach_bench(entries: list[Entry], bench_paths: list[str]) -> None:
    """Give each plan the bench entry with its file's sha256 (the last one given wins)."""
    for path in bench_paths:
        for b in load_bench(path):
            mine = [e for e in entries if e.sha256 == b["plan_sha256"]]
            if not mine:
                log.warning("%s: bench of %s matches no plan given (sha256 %s...)", path,
                            b.get("plan_name") or b.get("plan"), b["plan_sha256"][:12])
            for e in mine:
                if e.bench is not None:
                    log.warning("several bench entries for plan %s; using the one in %s", e.path, path)
                e.bench = b


def attach_memory(entries: list[Entry], profile_paths: list[str]) -> None:
    """Each plan's memory breakdown: as the plan records it, else from the --profile it was made
    from (profiles are validated on load)."""
    from litevar.planner.build import plan_memory_breakdown, profile_sha256
    from litevar.profiler.profile import Profile
    profiles = {profile_sha256(p): (p, Profile.load(p)) for p in profile_paths}
    used = set()
    for e in entries:
        e.memory = e.plan.predicted.memory_breakdown_mb
        if e.memory is None and e.plan.profile_sha256 in profiles:
            e.memory = plan_memory_breakdown(e.plan, profiles[e.plan.profile_sha256][1])
            used.add(e.plan.profile_sha256)
    for sha, (path, _) in profiles.items():
        if sha not in used and not any(e.plan.profile_sha256 == sha for e in entries):
            log.warning("--profile %s: no plan given was made from it", path)


def load_frontier(path: str) -> pd.DataFrame:
    fix = "pass a CSV written by `litevar plan --sweep`"
    if not Path(path).is_file():
        raise UserError(f"--frontier {path} not found; {fix}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"--frontier {path} is not a readable CSV ({type(e).__name__}); {fix}") from None
    missing = [c for c in FRONTIER_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"--frontier {path} has no column(s) {', '.join(missing)}; {fix}")
    for c in FRONTIER_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


# ---------------------------------------------------------------------------------------------
# Rows


def budgets_text(budgets: dict) -> str:
    """{'max_latency_ms': 137, 'max_memory_gib': 0.03} -> 'lat<=137ms mem<=0.03GiB'."""
    short = {"max_latency_ms": lambda v: f"lat<={v:g}ms", "max_memory_gib": lambda v: f"mem<={v:.4g}GiB",
             "min_speedup": lambda v: f"speedup>={v:g}x", "max_attn_flops": lambda v: f"flops<={v:g}",
             "max_avg_bits": lambda v: f"bits<={v:g}"}
    parts = []
    for k, v in budgets.items():
        if v is None:
            continue
        try:
            parts.append(short[k](v) if k in short else f"{k}={v}")
        except (TypeError, ValueError):
            parts.append(f"{k}={v}")
    return " ".join(parts) or "none"


def formats_text(formats: dict) -> str:
    """{'a': 'W8A8', 'b': 'fp', 'c': 'W8A8'} -> '2 W8A8, 1 fp' (most used first)."""
    counts = sorted(Counter(formats.values()).items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {f}" for f, n in counts) or "-"


def kv_text(plan) -> str:
    """The KV caches a plan sets: '3 KV4, 1 KV8 s1r2' (per format and keep rule, most used first)."""
    names = []
    for layer in range(plan.arch["depth"]):
        spec = plan.kv_spec(layer)
        if spec.fmt.quantized or not spec.keep.keeps_all:
            names.append(spec.fmt.name + ("" if spec.keep.keeps_all else f" {spec.keep.name()}"))
    return formats_text(dict(enumerate(names))) if names else "-"


def device_name(plan) -> str:
    return str(plan.device.get("name") or plan.device.get("type") or "-")


def plan_name(e: Entry) -> str:
    return e.plan.name or Path(e.path).stem


def budgets_of(plan) -> str:
    return f"recipe {plan.solver['recipe'] or 'dense'}" if "recipe" in plan.solver else budgets_text(plan.budgets)


def row(e: Entry) -> dict:
    """One table row: plain JSON data, None where a figure is unknown."""
    p, pred = e.plan, e.plan.predicted
    meas = (e.bench or {}).get("measured", {})
    speed = (e.bench or {}).get("speedup") or {}
    return {"plan": plan_name(e), "path": e.path, "device": device_name(p), "tier": pred.tier or "profiled",
            "dtype": p.dtype or "fp32", "resolution": p.resolution, "batch": p.batch, "budgets": budgets_of(p),
            "pred_latency_ms": pred.latency_ms, "pred_memory_gib": _gib(pred.memory_mb),
            "pred_loss": pred.loss, "meas_latency_ms": meas.get("latency_ms"),
            "meas_peak_gib": _gib(meas.get("peak_mb")), "meas_loss": meas.get("loss"),
            "speedup_pred": pred.speedup, "speedup_meas": speed.get("measured"),
            "formats": formats_text(p.formats), "kv": kv_text(p), "qk8_blocks": len(p.qk_int8),
            "cfg_shared_blocks": len(p.cfg_shared), "attn_kept": pred.attn_kept,
            **{f"mem_{k}_gib": _gib((e.memory or {}).get(k)) for k in (*MEMORY_PARTS, "decode_phase")}}


def _gib(mb):
    return None if mb is None else mb / 1024


def _order(r: dict) -> tuple:
    lat = r["pred_latency_ms"]
    return r["device"], r["resolution"], lat if isinstance(lat, (int, float)) else math.inf, r["plan"]


def sort_entries(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: _order(row(e)))


COLUMNS = (  # row key, header, cell format (None: text, left-aligned; else right-aligned)
    ("plan", "plan", None), ("device", "device", None), ("tier", "tier", None), ("dtype", "dtype", None),
    ("resolution", "px", "{:d}"), ("batch", "batch", "{:d}"), ("budgets", "budgets", None),
    ("pred_latency_ms", "pred ms", "{:.1f}"), ("pred_memory_gib", "pred GiB", "{:.4g}"),
    ("pred_loss", "pred loss", "{:.4g}"), ("meas_latency_ms", "meas ms", "{:.1f}"),
    ("meas_peak_gib", "meas GiB", "{:.4g}"), ("meas_loss", "meas loss", "{:.4g}"),
    ("speedup_pred", "speedup pred", "{:.2f}x"), ("speedup_meas", "speedup meas", "{:.2f}x"),
    ("formats", "formats", None), ("kv", "KV cache", None), ("qk8_blocks", "QK8", "{:d}"),
    ("cfg_shared_blocks", "CFG-shared", "{:d}"),
    ("attn_kept", "attn kept", "{:.1%}"), ("mem_weights_gib", "weights GiB", "{:.4g}"),
    ("mem_kv_cache_gib", "KV GiB", "{:.4g}"), ("mem_activations_gib", "act GiB", "{:.4g}"),
    ("mem_other_gib", "other GiB", "{:.4g}"), ("mem_decode_phase_gib", "decode GiB", "{:.4g}"),
)


def cell(value, spec: str | None) -> str:
    if value is None:
        return "-"
    if spec is None:
        return str(value)
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def cells(r: dict) -> list[str]:
    return [cell(r[k], spec) for k, _, spec in COLUMNS]


def format_table(rows: list[dict]) -> str:
    """Plain-text table: text columns left-aligned, numbers right-aligned."""
    body = [cells(r) for r in rows]
    heads = [h for _, h, _ in COLUMNS]
    widths = [max(len(s) for s in col) for col in zip(heads, *body)]
    def line(vals):
        return "  ".join(v.ljust(w) if spec is None else v.rjust(w)
                         for v, w, (_, _, spec) in zip(vals, widths, COLUMNS)).rstrip()
    return "\n".join([line(heads), *(line(b) for b in body)])


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg, returned as base64 PNG)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(text: str) -> str:
    """Plan text for matplotlib: '$' would start mathtext."""
    return str(text).replace("$", r"\$")


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def frontier_figure(group: list[Entry], frontiers: dict[str, pd.DataFrame], title: str) -> str:
    """Predicted loss vs latency and vs memory: plans (o), their bench (^), the --frontier curves."""
    from litevar.planner.frontier import pareto_mask
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    pts = pd.DataFrame([{"latency_ms": _num(e.plan.predicted.latency_ms),
                         "memory_gib": _num(e.plan.predicted.memory_mb) / 1024,
                         "loss": _num(e.plan.predicted.loss)} for e in group])
    frontiers = {n: df.assign(memory_gib=df["memory_mb"] / 1024) for n, df in frontiers.items()}
    colours = plt.get_cmap("tab10").colors
    for ax, x, meas_key, xlabel in ((axes[0], "latency_ms", "latency_ms", "latency (ms)"),
                                    (axes[1], "memory_gib", "peak_mb", "peak memory (GiB)")):
        for name, df in frontiers.items():
            ok = df[df["loss"].notna() & df[x].notna()].reset_index(drop=True)
            front = ok[pareto_mask(ok, x)].sort_values(x)
            ax.plot(front[x], front["loss"], "--", lw=1.2, alpha=0.8, label=f"frontier {_label(Path(name).name)}")
        xy = pts[[x, "loss"]].dropna()
        front = xy[pareto_mask(xy, x)].sort_values(x)
        if len(front) > 1:
            ax.plot(front[x], front["loss"], "-", color="0.6", lw=1, zorder=1, label="Pareto front of these plans")
        labels = {"o": "predicted", "^": "measured (--bench)"}
        for i, e in enumerate(group):
            c, px, py = colours[i % len(colours)], pts[x][i], pts["loss"][i]
            if math.isnan(px) or math.isnan(py):
                continue
            ax.plot(px, py, "o", color=c, ms=7, zorder=3, label=labels.pop("o", None))
            ax.annotate(_label(plan_name(e)), (px, py), xytext=(5, 5 + 9 * (i % 3)),
                        textcoords="offset points", fontsize=8, color=c)
            m = (e.bench or {}).get("measured", {})
            mx, my = _num(m.get(meas_key)) / (1024 if meas_key == "peak_mb" else 1), _num(m.get("loss"))
            my = py if math.isnan(my) else my
            if not math.isnan(mx):
                ax.plot([px, mx], [py, my], ":", color=c, lw=1)
                ax.plot(mx, my, "^", color=c, ms=8, mfc="none", mew=1.5, zorder=3, label=labels.pop("^", None))
        ax.set_xlabel(xlabel)
        _log_if_wide(ax)
        ax.set_ylabel("loss (nats)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(_label(title))
    fig.tight_layout()
    return _png(fig)


def _log_if_wide(ax) -> None:
    """Log loss axis when every loss drawn is positive and they span more than 20x."""
    y = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.lines] or [np.ones(1)])
    y = y[~np.isnan(y)]
    if len(y) and (y > 0).all() and y.max() > 20 * y.min():
        ax.set_yscale("log")


def _linear_order(entries: list[Entry]) -> dict[str, int]:
    """Layer name -> its position in its model (the family's order of its linears), over every plan."""
    order: dict[str, int] = {}
    for e in entries:
        arch = e.plan.typed_arch
        for i, name in enumerate(e.plan.family.linear_names(arch)):
            order.setdefault(name, i)
    return order


def format_figure(entries: list[Entry]) -> str:
    """Linear layers (rows, model order) x plans (columns), coloured by format."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from litevar.kernels.formats import FORMATS
    plt = _plt()
    order = _linear_order(entries)
    layers = sorted({f for e in entries for f in e.plan.formats}, key=lambda f: (order.get(f, len(order)), f))
    used = {e.plan.formats.get(f) for e in entries for f in layers} - {None}
    names = [n for n in FORMATS if n in used] + sorted(used - set(FORMATS))
    palette = iter(plt.get_cmap("tab10").colors)
    colours = ["white"] + ["0.82" if n == "fp" else next(palette) for n in names]  # 0: layer absent
    code = {n: i + 1 for i, n in enumerate(names)}
    grid = np.array([[code.get(e.plan.formats.get(f), 0) for e in entries] for f in layers])
    fig, ax = plt.subplots(figsize=(3 + 1.3 * len(entries), 1 + 0.24 * len(layers)))
    ax.imshow(grid, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1, aspect="auto",
              interpolation="nearest")
    for (i, j), v in np.ndenumerate(grid):
        if v:
            ax.text(j, i, names[v - 1], ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_xticks(range(len(entries)), [_label(plan_name(e)) for e in entries], rotation=30,
                  ha="left", fontsize=8)
    handles = [Patch(color=colours[code[n]], label=n + (" (full precision)" if n == "fp" else "")) for n in names]
    if (grid == 0).any():
        handles.append(Patch(facecolor="white", edgecolor="0.5", label="not in the plan"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title="format")
    fig.tight_layout()
    return _png(fig)


def head_kept(windows, depth: int, heads: int) -> np.ndarray:
    """float [S, depth, H]: share of each head's (query, key) pairs kept per scale (1: dense)."""
    from litevar.kernels.windows import kept_pairs
    layout, pns = windows.layout, windows.patch_nums
    out = np.ones((len(pns), depth, heads))
    for layer in windows.widths:
        for k, s in enumerate(pns):
            w_Hp = windows.scale_widths(layer, k)  # None: this call runs dense
            if w_Hp is not None:
                out[k, layer] = kept_pairs(layout, k, w_Hp, windows.family).numpy() / (s * s * layout.end[k])
    return out


def has_windows(plan) -> bool:
    return plan.windows is not None and bool(plan.windows.widths)


def window_figure(plan) -> str:
    """One layer x head panel per scale, coloured by the kept share of that head's attention."""
    plt = _plt()
    depth, heads = plan.arch["depth"], plan.arch["num_heads"]
    kept = head_kept(plan.windows, depth, heads)
    S, cols = len(kept), min(len(kept), 5)
    rows = -(-S // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 1, 0.4 + (0.3 * depth + 1.1) * rows), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= S:
            ax.axis("off")
            continue
        im = ax.imshow(kept[k], vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
        s = plan.windows.patch_nums[k]
        ax.set_title(f"scale {k} ({s}x{s})", fontsize=8)
        ax.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=6)
        ax.set_yticks(range(depth), [str(i) for i in range(depth)], fontsize=6)
        if depth * heads <= 64:
            for (i, h), v in np.ndenumerate(kept[k]):
                ax.text(h, i, f"{v:.0%}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
        if k % cols == 0:
            ax.set_ylabel("block", fontsize=7)
        if k // cols == rows - 1:
            ax.set_xlabel("head", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="kept share of attention pairs")
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px}
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even){background:#f7f7f7}
figure{margin:16px 0}img{max-width:100%;border:1px solid #ddd}
figcaption,p.cap{font-size:13px;color:#555;max-width:1100px}"""


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _figure(b64: str, alt: str, caption: str) -> str:
    return f"<figure>{_img(b64, alt)}<figcaption>{caption}</figcaption></figure>"


def html_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f'<td{"" if spec is None else " class=n"}>{html.escape(c)}</td>'
                                    for c, (_, _, spec) in zip(cells(r), COLUMNS)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def model_label(plan) -> str:
    return f"{plan.model.get('name') or 'model'} d{plan.arch['depth']}"


def groups(entries: list[Entry]) -> dict[tuple[str, str, int], list[Entry]]:
    """Plans that share a frontier panel: same device, model and resolution."""
    out: dict[tuple[str, str, int], list[Entry]] = {}
    for e in entries:
        out.setdefault((device_name(e.plan), model_label(e.plan), e.plan.resolution), []).append(e)
    return out


TABLE_CAPTION = (
    "One row per plan, sorted by device, resolution and predicted latency. pred: the planner's prediction "
    "(from the plan file); meas: <code>litevar bench</code> (matched by the plan file's sha256; - when not "
    "benched). tier: what priced the plan's figures (spec: the device catalogue, no measurement; calibrated: "
    "<code>litevar calibrate</code>; profiled: a profile's cost stage). ms: latency of one generation; GiB: peak "
    "memory (2<sup>30</sup> bytes, the allocator's peak); loss: nats (sum over "
    "scales of the mean KL of the CFG-guided next-token distribution); speedup: vs the dense full-precision "
    "model; formats: linear layers per format (fp: full precision); KV cache: blocks per KV-cache format and "
    "keep rule (sSrR: the first S and the R latest scales; -: every cache plain); QK8 / CFG-shared: blocks with the QK "
    "product in INT8 / attention shared across the CFG branches; attn kept: predicted share of attention "
    "pairs kept by the windows.")
FRONTIER_CAPTION = (
    ": predicted loss (nats; log scale when the losses span more than 20x) against predicted latency (ms, "
    "left) and peak memory (GiB, right). Circles: "
    "plans, labelled; open triangles joined by a dotted line: the same plan measured by <code>litevar "
    "bench</code> (its measured loss when the bench has one, else the predicted loss); grey line: Pareto "
    "front of these plans; dashed: <code>--frontier</code> curves (a CSV names no device or resolution, so "
    "each is drawn in every panel).")
FORMAT_CAPTION = (
    "Every quantizable linear layer (rows, in model order) in every plan (columns), coloured by its format "
    "(W<i>w</i>A<i>a</i>: <i>w</i>-bit weights, <i>a</i>-bit activations); grey: fp, full precision.")
WINDOW_CAPTION = (
    "Per plan, one panel per scale: blocks (rows) x heads (columns), coloured by the share of that head's "
    "(query, key) pairs the multi-diagonal window keeps at that scale (100%: dense).")


MEMORY_CAPTION = ("Predicted peak memory of each plan's transformer phase by part (GiB = 2**30 bytes): weights "
                  "of the linear layers in their formats; the KV cache; activations (the last scale's) with the "
                  "largest transient (a quantized linear's workspace or the keys a KV call gathers); other (the "
                  "remaining parameters, the VQVAE, the fitted constant). The black mark is the decode phase's "
                  "peak (weights, then the VQVAE decode); a plan's peak is the larger of the two. Plans without "
                  "a recorded breakdown and no --profile to compute it are left out.")


def memory_figure(entries: list[Entry]) -> str:
    """One stacked horizontal bar per plan: weights, KV cache, activations, other (GiB)."""
    plt = _plt()
    shown = [e for e in entries if e.memory]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(shown) + 1.4))
    left = np.zeros(len(shown))
    for part, colour in zip(MEMORY_PARTS, ("#4c72b0", "#dd8452", "#55a868", "#8c8c8c")):
        v = np.array([e.memory.get(part, 0.0) / 1024 for e in shown])
        ax.barh(range(len(shown)), v, left=left, color=colour, label=part.replace("_", " "))
        left += v
    dec = [e.memory.get("decode_phase", 0.0) / 1024 for e in shown]
    if any(dec):
        ax.plot(dec, range(len(shown)), "k|", ms=14, mew=2, label="decode phase peak")
    ax.set_yticks(range(len(shown)), [_label(plan_name(e)) for e in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("predicted peak memory (GiB)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def render_html(entries: list[Entry], rows: list[dict], frontiers: dict[str, pd.DataFrame],
                bench_paths: list[str]) -> str:
    esc = html.escape
    title = f"litevar compare: {len(entries)} plan{'s' * (len(entries) != 1)}"
    sources = (f"Plans: {', '.join(r['path'] for r in rows)}. Bench files: {', '.join(bench_paths) or 'none'}. "
               f"Frontier files: {', '.join(frontiers) or 'none'}.")
    parts = [f"<h1>{esc(title)}</h1>", f"<p class=cap>{esc(sources)}</p>", "<h2>Plans</h2>", html_table(rows),
             f"<p class=cap>{TABLE_CAPTION}</p>", "<h2>Loss against latency and memory</h2>"]
    for (dev, model, res), group in groups(entries).items():
        name = f"{dev}, {model}, {res} px"
        unplotted = [plan_name(e) for e in group if any(math.isnan(_num(getattr(e.plan.predicted, k)))
                                                          for k in ("latency_ms", "memory_mb", "loss"))]
        note = f" Not drawn (no predicted latency, memory or loss): {', '.join(unplotted)}." if unplotted else ""
        parts.append(_figure(frontier_figure(group, frontiers, name), f"frontier {name}",
                             esc(name) + FRONTIER_CAPTION + esc(note)))
    if any(e.memory for e in entries):
        parts += ["<h2>Peak memory by part</h2>", _figure(memory_figure(entries), "memory by part", MEMORY_CAPTION)]
    parts += ["<h2>Formats per layer</h2>",
              _figure(format_figure(entries), "formats per layer", FORMAT_CAPTION),
              "<h2>Attention windows</h2>", f"<p class=cap>{WINDOW_CAPTION}</p>"]
    for e, r in zip(entries, rows):
        parts.append(f"<h3>{esc(r['plan'])}</h3>")
        if not has_windows(e.plan):
            parts.append("<p>no windows (every block runs dense attention)</p>")
            continue
        w = e.plan.windows
        caption = (f"{r['plan']}: kept share per block, head and scale ({w.family.value} windows; blocks "
                   f"{', '.join(map(str, sorted(w.widths)))} windowed, the others dense).")
        parts.append(_figure(window_figure(e.plan), f"windows of {r['plan']}", esc(caption)))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------
# Command


def _check_out(flag: str, path: str | None) -> None:
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise UserError(f"--{flag} {path}: folder {folder} does not exist; create it first")
    if Path(path).is_dir():
        raise UserError(f"--{flag} {path} is a folder; give a file name, e.g. {Path(path) / ('report.' + flag)}")


def run(args) -> int:
    _check_out("html", args.html)
    _check_out("json", args.json)
    _check_out("png", args.png)
    entries = load_plans(args.plans)
    attach_bench(entries, args.bench)
    attach_memory(entries, args.profile)
    frontiers = {p: load_frontier(p) for p in args.frontier}
    entries = sort_entries(entries)
    rows = [row(e) for e in entries]
    print(format_table(rows))
    if args.json:
        write_json(args.json, {"format": "litevar-compare", "version": 1, "rows": rows})
        print(f"wrote {args.json}")
    if args.html:
        write_text(args.html, render_html(entries, rows, frontiers, args.bench))
        print(f"wrote {args.html}")
    if args.png:
        (dev, model, res), group = next(iter(groups(entries).items()))
        with atomic_path(args.png) as tmp:
            Path(tmp).write_bytes(base64.b64decode(frontier_figure(group, frontiers, f"{dev}, {model}, {res} px")))
        print(f"wrote {args.png}")
    return 0
