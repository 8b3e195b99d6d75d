"""The planner against the uniform recipes and the single global knobs, measured in one run.

For each recipe (default: BF16 on every linear, W8A8 everywhere, W8A8 + QK8, ASC everywhere, and
the paper's W4A8 + QK8 + fc2 full precision + MDWA 0.95 + ASC) it writes the recipe's plan and a
planner plan held to every budget the recipe keeps: its predicted latency and its predicted peak
memory at once (`--max-latency-ms` and `--max-memory-gib`), which the planner meets with its
guard (`litevar plan --guard auto`: the cost model's worst measured under-prediction), at any
runtime dtype the profile priced (`--dtype auto`); and the same with no guard (`--guard 0`), on the
recipe's own footing: a recipe's budgets are its bare predictions. Then one interleaved `litevar bench` run times
the dense model, the knobs a user tries first (the whole model in bf16 autocast, with and without
torch.compile: `--baseline`), every recipe and every plan, and measures each one's quality loss.

The result file (kind "planner-vs-recipes") holds the bench's data and, per recipe, its plan
pair; benchmarks/render.py renders the table. A recipe slower than dense on this device is said
so in words: a plan that matches it is not a win.

    python benchmarks/planner_vs_recipes.py --profile profiles/default-cpu.json --plans-dir plans \\
        --prefix default-cpu-256 --repeats 15 --quality 80 --json docs/results/planner-vs-recipes-cpu.json
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from litevar.commands.cli import main as litevar_main
from litevar.commands.results import provenance, read_result, write_result
from litevar.models.core.host_memory import retain_freed_memory

DEFAULT_RECIPES = ("bf16", "w8a8", "w8a8+qk8", "asc", "paper")
BASELINES = ("bf16", "bf16+compile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    p.add_argument("--baselines", default=",".join(BASELINES), help="litevar bench --baseline values")
    p.add_argument("--plans-dir", default="plans", help="where the recipe and planner plans are written")
    p.add_argument("--prefix", default="plan", help="plan file names: PREFIX-recipe-R.json, PREFIX-vs-R.json")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quality", type=int, default=80, help="calibration samples of the measured loss")
    p.add_argument("--guard", default="auto", help="the planner's guard (litevar plan --guard)")
    p.add_argument("--json", required=True, help="the result file")
    return p.parse_args(argv)


def slug(spec: str) -> str:
    return spec.replace("+", "-").replace(".", "")


def make_plans(args) -> list[dict]:
    """[{recipe, recipe_plan, plan, budgets}], the plans written with `litevar plan`."""
    from litevar.planner.plan import Plan
    out, rows = Path(args.plans_dir), []
    for spec in args.recipes.split(","):
        rec = out / f"{args.prefix}-recipe-{slug(spec)}.json"
        vs = out / f"{args.prefix}-vs-{slug(spec)}.json"
        common = ("--profile", args.profile, "--resolution", args.resolution, "--batch", args.batch)
        _cli("plan", *common, "--recipe", spec, "--out", rec)
        pred = Plan.load(rec).predicted
        budgets = {"max_latency_ms": ceil_to(pred.latency_ms, 4), "max_memory_gib": ceil_to(pred.memory_mb / 1024, 7)}
        held = ("--max-latency-ms", budgets["max_latency_ms"], "--max-memory-gib", budgets["max_memory_gib"])
        _cli("plan", *common, *held, "--guard", args.guard, "--out", vs)
        bare = out / f"{args.prefix}-vs-{slug(spec)}-noguard.json"  # on the recipe's footing: no guard either
        _cli("plan", *common, *held, "--guard", 0, "--out", bare)
        rows.append({"recipe": spec, "recipe_plan": str(rec), "plan": str(vs), "plan_noguard": str(bare),
                     "budgets": budgets})
    return rows + knob_pairs(args)


def knob_pairs(args) -> list[dict]:
    """The first knob a user tries, as a speedup budget: for each whole-model dtype among the
    baselines, the planner asked for that dtype's predicted speedup (`--min-speedup`), guarded and
    not. The bench then says whether the plan is as fast as the knob measured, at no more loss. A
    guarded budget no plan meets is kept as such (the guard asks for more than the knob itself)."""
    from litevar.planner.plan import Plan
    out, rows = Path(args.plans_dir), []
    common = ("--profile", args.profile, "--resolution", args.resolution, "--batch", args.batch)
    for dtype in dict.fromkeys(b.partition("+")[0] for b in args.baselines.split(",") if b):
        rec = out / f"{args.prefix}-knob-{dtype}.json"
        _cli("plan", *common, "--recipe", "fp", "--dtype", dtype, "--out", rec)
        speedup = floor_to(Plan.load(rec).predicted.speedup, 4)
        row = {"recipe": f"whole model in {dtype}", "kind": "knob", "recipe_plan": str(rec),
               "budgets": {"min_speedup": speedup}}
        for key, guard, name in (("plan", args.guard, "x-knob"), ("plan_noguard", 0, "x-knob-noguard")):
            path = out / f"{args.prefix}-{name}-{dtype}.json"
            rc = litevar_main([str(a) for a in ("plan", *common, "--min-speedup", speedup, "--guard", guard,
                                                "--out", path)])
            row[key] = str(path) if rc == 0 else None  # None: no plan meets the budget
        rows.append(row)
    return rows


def ceil_to(x: float, digits: int) -> float:
    """`x` rounded up at `digits` decimals: a recipe's own figures as a budget it meets (rounding to
    nearest could put the recipe a hair outside its own budget, and the planner would pay to leave it)."""
    return math.ceil(x * 10 ** digits) / 10 ** digits


def floor_to(x: float, digits: int) -> float:
    """`x` rounded down at `digits` decimals (a minimum the knob itself meets)."""
    return math.floor(x * 10 ** digits) / 10 ** digits


def _cli(*argv) -> None:
    rc = litevar_main([str(a) for a in argv])
    if rc:
        sys.exit(f"litevar {' '.join(map(str, argv))} failed with exit code {rc}")


def main(argv=None) -> int:
    args = parse_args(argv)
    retain_freed_memory()  # what its `litevar` calls set: the provenance records the policy the timings run under
    started = provenance("cpu", argv)
    rows = make_plans(args)
    plans = list(dict.fromkeys(p for r in rows for p in (r["recipe_plan"], r.get("plan"), r.get("plan_noguard"))
                               if p))
    with tempfile.TemporaryDirectory() as tmp:
        bench = Path(tmp) / "bench.json"
        _cli("bench", *(a for p in plans for a in ("--plan", p)),
             *(a for b in args.baselines.split(",") if b for a in ("--baseline", b)),
             "--repeats", args.repeats, "--quality", args.quality, "--json", bench)
        data = read_result(bench, "bench")["data"]
    write_result(args.json, "planner-vs-recipes", {"pairs": rows, "bench": data}, started=started)
    print(f"wrote {args.json}; render the tables with `python benchmarks/render.py`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
