"""Pareto frontier of predicted loss against a latency or memory budget, as a CSV and a PNG.

The budgets run evenly from the smallest value this profile can reach to the dense model's;
every point is one solve (planner.solve) with the other budgets held.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from litevar.models.core.atomic import atomic_path
from litevar.models.core.errors import UserError
from litevar.planner.problem import Budgets, Problem
from litevar.planner.slots import slot_hulls
from litevar.planner.solve import NoPlan, SolverSettings, reachable_minima, solve

log = logging.getLogger(__name__)

KINDS = ("latency", "memory")
COLUMNS = ["budget", "latency_ms", "memory_mb", "speedup", "loss", "attn_kept", "attn_flops", "avg_bits",
           "cfg_shared", "status", "gap", "gap_full", "seconds", "pareto"]


def sweep(problem: Problem, kind: str, points: int = 8, settings: SolverSettings = SolverSettings(),
          budgets: Budgets = Budgets()) -> pd.DataFrame:
    """One least-loss solution per budget value of `kind` (latency ms or memory MB)."""
    if kind not in KINDS:
        raise UserError(f"--sweep {kind}: choose latency or memory")
    if points < 2:
        raise UserError(f"--points {points}: a frontier needs at least 2 points")
    hulls = slot_hulls(problem, settings.exact_cap)
    lat, mem = reachable_minima(problem, settings, hulls)
    lo, hi = (lat, problem.dense_latency_ms) if kind == "latency" else (mem, problem.dense_memory_mb)
    rows = []
    for b in np.linspace(lo * (1 + 1e-6), max(hi, lo * (1 + 1e-6)), points):
        field = {"latency": {"max_latency_ms": float(b)}, "memory": {"max_memory_gib": float(b) / 1024}}[kind]
        try:
            sol = solve(problem, dataclasses.replace(budgets, **field), settings, hulls=hulls)
        except NoPlan as e:  # a solver failure is not a frontier point: it ends the sweep
            log.info("budget %.4g: %s", b, e)
            rows.append([b] + [np.nan] * 8 + ["Infeasible", np.nan, np.nan, np.nan, False])
            continue
        m, s = sol.metrics, sol.solver
        rows.append([b, m.latency_ms, m.memory_mb, problem.dense_latency_ms / m.latency_ms, m.loss, m.attn_kept,
                     m.attn_flops, m.avg_bits, len(sol.selection.cfg_shared), s["status"], s["gap"], s["gap_full"],
                     s["seconds"], False])
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["pareto"] = pareto_mask(df, "latency_ms" if kind == "latency" else "memory_mb")
    return df


def pareto_mask(df: pd.DataFrame, x: str) -> np.ndarray:
    """True where no other solved point has <= x and <= loss, one of them strictly."""
    ok = df["loss"].notna().to_numpy()
    X, Y = df[x].to_numpy(float), df["loss"].to_numpy(float)
    out = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (X <= X[i]) & (Y <= Y[i]) & ((X < X[i]) | (Y < Y[i]))
        out[i] = not others.any()
    return out


def write(df: pd.DataFrame, out: str | os.PathLike, kind: str, title: str = "") -> tuple[Path, Path]:
    """The CSV at `out` and a PNG plot next to it (same name, .png); both written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(png) as tmp:
        _plot(df, kind, title, tmp)
    return out, png


def _plot(df: pd.DataFrame, kind: str, title: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = "latency_ms" if kind == "latency" else "memory_gib"
    df = df.assign(memory_gib=df["memory_mb"] / 1024)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ok = df[df["loss"].notna()]
    front = ok[ok["pareto"]].sort_values(x)
    ax.plot(front[x], front["loss"], "-o", label="Pareto frontier")
    ax.plot(ok[~ok["pareto"]][x], ok[~ok["pareto"]]["loss"], "x", color="grey", label="dominated")
    ax.set_xlabel("predicted latency (ms)" if kind == "latency" else "predicted peak memory (GiB)")
    ax.set_ylabel("predicted loss")
    ax.set_title(title or f"loss vs {kind} budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
