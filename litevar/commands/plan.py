"""`litevar plan`: the least-loss plan within budgets (or a Pareto frontier with --sweep, or a
uniform recipe with --recipe), from a profile."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from litevar.commands.args import COUNT, GAP, POSITIVE, RESOLUTION, SHARE, Number, guard_value
from litevar.models.core.errors import UserError

log = logging.getLogger(__name__)




def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="profile file written by `litevar profile`")
    p.add_argument("--resolution", type=RESOLUTION, required=True, help="output resolution: 256, 512, 1024 or 2048")
    p.add_argument("--batch", type=COUNT, default=1, help="images per generation (default 1)")
    b = p.add_argument_group("budgets (any combination; at least one unless --sweep)")
    b.add_argument("--max-latency-ms", type=POSITIVE, help="predicted latency of one generation, ms")
    b.add_argument("--max-memory-gb", type=POSITIVE, help="predicted peak memory, GB")
    b.add_argument("--min-speedup", type=POSITIVE, help="vs the dense full-precision prediction, e.g. 1.5")
    b.add_argument("--max-attn-flops", type=SHARE, help="share of the dense attention FLOPs, in (0, 1]")
    b.add_argument("--max-avg-bits", type=POSITIVE, help="average weight bits over the linear layers, e.g. 8")
    b.add_argument("--guard", type=guard_value, default="auto",
                   help="safety margin on the latency and memory budgets: the plan is "
                   "solved for budget / (1 + guard). 'auto' (default): the profile's worst measured under-prediction "
                   "(latency relative to dense, peak memory; see `litevar profile`); a fraction such as 0.05 for "
                   "both; 0 to plan on the bare predictions (a --sweep is of the bare predictions)")
    p.add_argument("--losses-from", help="for a profile with no measured losses (a --random-init one, cost only): "
                   "the profile of a trained model whose per-layer losses are borrowed by layer role and relative "
                   "depth (planner/transfer.py), e.g. profiles/default-cpu.json")
    p.add_argument("--recipe", help="write the plan of a uniform recipe instead of solving, e.g. paper, "
                   "w8a8+qk8, w4a8+mp+mdwa0.9+asc (see planner/recipes.py)")
    p.add_argument("--formats", help="formats the planner may use, e.g. W8A8,W4A8,QK8 (default: every profiled one)")
    p.add_argument("--family", choices=("band", "spatial"), help="window family (default band)")
    p.add_argument("--time-limit", type=POSITIVE, default=10.0, help="CBC time limit per solve, s (default 10)")
    p.add_argument("--gap", type=GAP, default=0.005, help="relative optimality gap (default 0.005)")
    p.add_argument("--sweep", choices=("latency", "memory"), help="write the Pareto frontier of loss over this "
                   "budget (CSV at --out, PNG next to it) instead of one plan")
    p.add_argument("--points", type=Number(int, 2), default=8, help="budgets in the sweep (default 8)")
    p.add_argument("--name", help="plan name (default: the --out file name)")
    p.add_argument("--out", required=True, help="plan JSON (e.g. plans/NAME.json), or the CSV with --sweep")


def _budgets(args):
    from litevar.planner.problem import Budgets
    return Budgets(args.max_latency_ms, args.max_memory_gb, args.min_speedup, args.max_attn_flops,
                   args.max_avg_bits)


def _guard(text: str | float, profile) -> dict:
    """--guard: {'latency', 'memory', 'source'} (fractions)."""
    from litevar.planner.build import guard_band
    if text == "auto":
        validation = profile.meta.get("validation") or []
        if not validation:
            log.warning("the profile has no cost-model validation rows: no guard on the budgets")
        return guard_band(validation)
    return {"latency": text, "memory": text, "source": "--guard"}


def load_profile(args):
    """The --profile, with the losses of --losses-from when given; a profile with no losses and
    no --losses-from is refused with the fix."""
    from litevar.planner.transfer import transfer_losses
    from litevar.profiler.profile import Profile
    profile = Profile.load(args.profile)
    if args.losses_from:
        return transfer_losses(profile, Profile.load(args.losses_from), args.losses_from)
    if "sensitivity" not in profile.tables:
        raise UserError(f"{args.profile} has no measured losses (a --random-init profile measures cost only); "
                        "add --losses-from PROFILE of a trained model, e.g. profiles/default-cpu.json, to borrow "
                        "its per-layer losses")
    return profile


def _record_losses_from(solver: dict, profile) -> None:
    if "losses_from" in profile.meta:
        solver["losses_from"] = profile.meta["losses_from"]


def run(args) -> int:
    from litevar.planner import frontier
    from litevar.planner.build import build_problem, parse_formats, to_plan
    from litevar.planner.solve import SolverSettings, solve
    budgets, settings = _budgets(args), SolverSettings(args.time_limit, args.gap)
    if args.recipe:
        return run_recipe(args, budgets)
    if not budgets.any() and not args.sweep:
        raise UserError("give at least one budget (--max-latency-ms, --max-memory-gb, --min-speedup, "
                        "--max-attn-flops, --max-avg-bits) or --sweep latency|memory")
    profile = load_profile(args)
    formats = parse_formats(args.formats, set(profile.table("sensitivity")["format"]))
    problem = build_problem(profile, args.resolution, args.batch, formats, args.family)
    out = Path(args.out)
    if args.sweep:
        df = frontier.sweep(problem, args.sweep, args.points, settings, budgets)
        csv, png = frontier.write(df, out, args.sweep, f"{Path(args.profile).stem} at {args.resolution} px, "
                                                       f"batch {args.batch}")
        print(df.drop(columns=["budget"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"wrote {csv} and {png}")
        return 0
    guard = _guard(args.guard, profile)
    try:
        sol = solve(problem, budgets.guarded(guard["latency"], guard["memory"]), settings)
    except UserError as e:
        if not guard["latency"] and not guard["memory"]:
            raise
        raise UserError(f"{e} (the solver's budgets were tightened by the guard: {pct(guard['latency'])} latency, "
                        f"{pct(guard['memory'])} memory; --guard 0 plans on the bare predictions)") from None
    sol.solver["guard"] = guard
    _record_losses_from(sol.solver, profile)
    plan = to_plan(problem, sol, profile, args.profile, budgets, args.name or out.stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan.save(out)
    pr, s = plan.predicted, plan.solver
    print(f"wrote {out}: {pr.latency_ms:.1f} ms ({pr.speedup:.2f}x vs dense {pr.dense_latency_ms:.1f} ms), "
          f"{pr.memory_mb:.0f} MB (dense {pr.dense_memory_mb:.0f}), loss {pr.loss:.4g}, "
          f"attention kept {pr.attn_kept:.1%}, CFG-shared layers {len(plan.cfg_shared)}, QK8 layers "
          f"{len(plan.qk_int8)}")
    print(f"guard: budgets tightened by {pct(guard['latency'])} (latency) and {pct(guard['memory'])} (memory) "
          f"({guard['source']})")
    print(f"solver {s['name']}: {s['status']}, gap {pct(s['gap'])} (vs a bound on every window configuration: "
          f"{pct(s.get('gap_full'))}), CBC {s['seconds']:.2f} s, {s['variables']} variables, "
          f"{s['constraints']} constraints; windows: {s['windows']}")
    return 0


def run_recipe(args, budgets) -> int:
    """`litevar plan --recipe SPEC`: the recipe's plan, predicted on the profile's cost model."""
    from litevar.planner.recipes import parse_recipe, recipe_plan
    if args.sweep or budgets.any():
        raise UserError("--recipe writes a fixed recipe: drop the budgets and --sweep, or drop --recipe to plan")
    recipe = parse_recipe(args.recipe)
    out = Path(args.out)
    profile = load_profile(args)
    plan = recipe_plan(profile, args.profile, recipe, args.resolution, args.batch, args.name or out.stem, args.family)
    _record_losses_from(plan.solver, profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan.save(out)
    pr = plan.predicted
    print(f"wrote {out}: recipe {recipe.spec or 'dense'} ({recipe.describe()}): {pr.latency_ms:.1f} ms "
          f"({pr.speedup:.2f}x vs dense {pr.dense_latency_ms:.1f} ms), {pr.memory_mb:.0f} MB, "
          f"loss {pr.loss:.4g}, attention kept {pr.attn_kept:.1%}")
    if plan.solver.get("loss_leaves_out"):
        print(f"note: its loss leaves out {', '.join(plan.solver['loss_leaves_out'])}: the profile cannot price it")
    return 0


def pct(v) -> str:
    return "unknown" if v is None else f"{100 * v:.2f}%"
