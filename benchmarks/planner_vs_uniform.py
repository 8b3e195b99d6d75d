"""The planner against the uniform recipes, measured side by side in one run.

For each recipe (default: W8A8 everywhere, W8A8 + QK8, ASC everywhere, and the paper's W4A8 +
QK8 + fc2 full precision + MDWA 0.95 + ASC), write the recipe's plan and a planner plan whose
latency budget is the recipe's predicted latency, which the planner meets with its guard
(`litevar plan --guard`, default auto: the cost model's worst measured under-prediction
relative to dense, so that "no slower" is decided by the plan, not by the model's error or
noise); then time all of them and the dense model in
one interleaved `litevar bench` run with measured quality loss (`--quality N`), and print, per
budget, the recipe against the plan: measured latency, measured loss, and whether the plan is
at least as fast (both by the medians and by the paired ratio: the median over rounds of recipe
ms / plan ms of the same round, `litevar.commands.bench.paired_speedup`) and strictly better.

    python benchmarks/planner_vs_uniform.py --profile profiles/default-cpu.json \
        --plans-dir plans --prefix default-cpu-256 --json docs/bench/planner-vs-uniform-cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from litevar.commands.cli import main as litevar_main
from litevar.models.core.atomic import write_text

DEFAULT_RECIPES = ("bf16", "w8a8", "w8a8+qk8", "asc", "paper")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    p.add_argument("--plans-dir", default="plans", help="where the recipe and planner plans are written")
    p.add_argument("--prefix", default="plan", help="plan file names: PREFIX-recipe-R.json, PREFIX-vs-R.json")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quality", type=int, default=80, help="calibration samples of the measured loss")
    p.add_argument("--guard", default="auto", help="the planner's guard on the budget (litevar plan --guard): "
                   "'auto' (default) or a fraction such as 0.03")
    p.add_argument("--json", required=True, help="the bench JSON of the run")
    p.add_argument("--markdown", help="also write the comparison table here")
    return p.parse_args(argv)


def slug(spec: str) -> str:
    return spec.replace("+", "-").replace(".", "")


def make_plans(args) -> list[tuple[str, Path, Path]]:
    """[(recipe, recipe plan path, planner plan path)], written with `litevar plan`."""
    from litevar.planner.plan import Plan
    out, rows = Path(args.plans_dir), []
    for spec in args.recipes.split(","):
        rec = out / f"{args.prefix}-recipe-{slug(spec)}.json"
        vs = out / f"{args.prefix}-vs-{slug(spec)}.json"
        _cli("plan", "--profile", args.profile, "--resolution", args.resolution, "--recipe", spec, "--out", rec)
        budget = Plan.load(rec).predicted.latency_ms
        _cli("plan", "--profile", args.profile, "--resolution", args.resolution, "--max-latency-ms",
             f"{budget:.4f}", "--guard", args.guard, "--out", vs)
        rows.append((spec, rec, vs))
    return rows


def _cli(*argv) -> None:
    rc = litevar_main([str(a) for a in argv])
    if rc:
        sys.exit(f"litevar {' '.join(map(str, argv))} failed with exit code {rc}")


def table(rows, bench: dict) -> str:
    from litevar.commands.bench import paired_speedup
    from litevar.planner.plan import Plan
    by_path = {e["plan"]: e for e in bench["plans"]}
    d = bench["dense"]
    lines = [f"dense: {d['latency_ms']:.1f} ms measured; loss on {bench['quality']['n']} calibration samples "
             f"(nats, the planner's unit); device {bench['device']['name']}, median of {bench['repeats']} "
             "interleaved runs", "",
             "| recipe | recipe predicted ms | plan predicted ms (guard) | recipe ms | plan ms | recipe / plan, paired "
             "| recipe loss | plan loss | plan no slower | plan lower loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:-:|:-:|"]
    for spec, rec, vs in rows:
        r, p = by_path[str(rec)], by_path[str(vs)]
        rm, pm = r["measured"], p["measured"]
        guard = Plan.load(vs).solver.get("guard", {}).get("latency", 0.0)
        paired = paired_speedup(rm["latency_ms_runs"], pm["latency_ms_runs"])
        no_slower = pm["latency_ms"] <= rm["latency_ms"] and paired >= 1
        lines.append(f"| {spec} | {r['predicted']['latency_ms']:.1f} | {p['predicted']['latency_ms']:.1f} "
                     f"({guard:.1%}) "
                     f"| {rm['latency_ms']:.1f} | {pm['latency_ms']:.1f} | {paired:.3f} "
                     f"| {rm['loss']:.4f} | {pm['loss']:.4f} | {'yes' if no_slower else 'NO'} "
                     f"| {'yes' if pm['loss'] < rm['loss'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = make_plans(args)
    plans = [str(p) for _, rec, vs in rows for p in (rec, vs)]
    _cli("bench", *(a for p in plans for a in ("--plan", p)), "--repeats", args.repeats,
         "--quality", args.quality, "--json", args.json)
    text = table(rows, json.loads(Path(args.json).read_text()))
    print(text)
    if args.markdown:
        write_text(args.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
