"""`litevar plan`: the least-loss plan within budgets (or a Pareto frontier with --sweep, or a
uniform recipe with --recipe), from a profile."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from litevar.commands.args import COUNT, GAP, POSITIVE, RESOLUTION, SHARE, Number, guard_value
from litevar.models.core.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="profile file written by `litevar profile`")
    p.add_argument("--resolution", type=RESOLUTION, required=True, help="output resolution: 256, 512, 1024 or 2048")
    p.add_argument("--batch", type=COUNT, default=1, help="images per generation (default 1)")
    p.add_argument("--device", help="price the plan for this device: a catalogue GPU (`litevar devices`, the spec "
                   "tier) or a calibration file (`litevar calibrate`, the calibrated tier); default: the device "
                   "the profile was measured on")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="whole-model runtime dtype (autocast) under the per-layer formats. auto (default): plan at "
                   "every dtype the profile priced and measured a loss for, and keep the least-loss plan within the "
                   "budgets (the faster on a tie)")
    b = p.add_argument_group("budgets (any combination; at least one unless --sweep)")
    b.add_argument("--max-latency-ms", type=POSITIVE, help="predicted latency of one generation, ms")
    b.add_argument("--max-memory-gib", "--max-memory-gb", dest="max_memory_gib", type=POSITIVE,
                   help="predicted peak memory, GiB (2**30 bytes); what it covers: see the plan's memory_covers")
    b.add_argument("--min-speedup", type=POSITIVE, help="vs the dense full-precision prediction, e.g. 1.5")
    b.add_argument("--max-attn-flops", type=SHARE, help="share of the dense attention FLOPs, in (0, 1]")
    b.add_argument("--max-avg-bits", type=POSITIVE, help="average weight bits over the linear layers, e.g. 8")
    b.add_argument("--guard", type=guard_value, default="auto",
                   help="safety margin on the latency and memory budgets: the plan is "
                   "solved for budget / (1 + guard). 'auto' (default): the profile's worst measured under-prediction "
                   "(latency relative to dense, peak memory; see `litevar profile`); a fraction such as 0.05 for "
                   "both; 0 to plan on the bare predictions (a --sweep is of the bare predictions)")
    p.add_argument("--text-encoder", default="auto", choices=("auto", "resident", "freed"),
                   help="a family with a text encoder (Infinity's T5): keep it resident through the generation, or "
                   "free it after encoding and reload it for each new prompt. auto (default): plan both, keep the "
                   "least-loss plan within the budgets (resident on a tie)")
    p.add_argument("--images-per-prompt", type=Number(int, 1), default=1,
                   help="images made per prompt before it changes: a freed text encoder's reload is paid once per "
                   "prompt (default 1: every image a new prompt)")
    p.add_argument("--losses-from", help="for a profile with no measured losses (a --random-init one, cost only): "
                   "the profile of a trained model whose per-layer losses are borrowed by layer role and relative "
                   "depth (planner/transfer.py), e.g. profiles/default-cpu.json; overrides the source the profile "
                   "records (litevar profile --losses-from)")
    p.add_argument("--config", help="price another named configuration of the profile's model family from its "
                   "cost model, e.g. 8b from an Infinity-2B profile: shapes the profile never timed are "
                   "extrapolated (the plan records it); losses must then come from --losses-from")
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
    return Budgets(args.max_latency_ms, args.max_memory_gib, args.min_speedup, args.max_attn_flops,
                   args.max_avg_bits)


def _guard(text: str | float, profile, target=None) -> dict:
    """--guard: {'latency', 'memory', 'source'} (fractions)."""
    from litevar.planner.build import guard_band
    if text == "auto" and target is not None and target.tier != "profiled":
        return {**target.guard, "source": f"the {target.tier} tier's guard (profiler.devices: TIER_GUARD, or the "
                                          "calibration's held-out error)"}
    if text == "auto":
        validation = profile.meta.get("validation") or []
        if not validation:
            log.warning("the profile has no cost-model validation rows: no guard on the budgets")
        return guard_band(validation)
    return {"latency": text, "memory": text, "source": "--guard"}


def load_profile(args):
    """The --profile, with the losses of --losses-from when given; a profile with no losses and
    no --losses-from is refused with the fix."""
    from litevar.planner.transfer import recorded_source, transfer_losses
    from litevar.profiler.profile import Profile
    profile = Profile.load(args.profile)
    if getattr(args, "config", None):
        profile = with_config(profile, args.config, args.profile)
    if args.losses_from:
        return transfer_losses(profile, Profile.load(args.losses_from), args.losses_from)
    source = None if "sensitivity" in profile.tables else recorded_source(profile, args.profile)
    if source is not None:
        print(f"losses: borrowed from {os.path.relpath(source)} (the profile's recorded source; --losses-from "
              "overrides it)")
        return transfer_losses(profile, Profile.load(source), os.path.relpath(source))
    if "sensitivity" not in profile.tables:
        raise UserError(f"{args.profile} has no measured losses (a --random-init profile measures cost only); "
                        "add --losses-from PROFILE of a trained model, e.g. profiles/default-cpu.json, to borrow "
                        "its per-layer losses")
    return profile


def with_config(profile, name: str, path):
    """`profile` priced for the family's configuration `name`: its architecture replaced (the schedule and
    pixels per token kept), its own losses and weights' hash dropped (they are of another model)."""
    family = profile.family
    if name not in family.configs:
        raise UserError(f"--config {name!r}: the {family.name} family names {sorted(family.configs) or 'none'}")
    old = profile.meta["model"]
    arch = {**old["arch"], **family.configs[name], "family": family.name}
    family.arch_from_dict(arch)  # validated
    model = {"name": f"{family.name} {name}", "arch": arch, "weights_sha256": None,
             "priced_from": {"config": name, "profile": str(path), "model": old.get("name"),
                             "arch": old["arch"]}}
    log.warning("pricing %s %s from the cost model of %s (%s): shapes it never timed are extrapolated",
                family.name, name, path, old.get("name"))
    tables = {k: v for k, v in profile.tables.items() if k not in ("sensitivity", "cfg_share", "coverage")}
    return type(profile)(meta={**profile.meta, "model": model}, tables=tables)


def _record_losses_from(solver: dict, profile) -> None:
    if "losses_from" in profile.meta:
        solver["losses_from"] = profile.meta["losses_from"]
    if "priced_from" in profile.meta.get("model", {}):
        solver["priced_from"] = profile.meta["model"]["priced_from"]


def run(args) -> int:
    from litevar.planner import frontier
    from litevar.planner.build import build_problem, parse_formats, to_plan
    from litevar.planner.solve import SolverSettings
    budgets, settings = _budgets(args), SolverSettings(args.time_limit, args.gap)
    if args.recipe:
        return run_recipe(args, budgets)
    if not budgets.any() and not args.sweep:
        raise UserError("give at least one budget (--max-latency-ms, --max-memory-gib, --min-speedup, "
                        "--max-attn-flops, --max-avg-bits) or --sweep latency|memory")
    profile, target = target_profile(args)
    formats = parse_formats(args.formats, offered_formats(profile, target))
    out = Path(args.out)
    if args.sweep:
        dtype = None if args.dtype == "auto" else args.dtype
        problem = build_problem(profile, args.resolution, args.batch, formats, args.family, dtype=dtype)
        df = frontier.sweep(problem, args.sweep, args.points, settings, budgets)
        csv, png = frontier.write(df, out, args.sweep, f"{Path(args.profile).stem} at {args.resolution} px, "
                                                       f"batch {args.batch}")
        shown = df.assign(memory_gib=df["memory_mb"] / 1024).drop(columns=["budget", "memory_mb"])
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"wrote {csv} and {png}")
        return 0
    guard = _guard(args.guard, profile, target)
    solver_budgets = allocator_budgets(budgets, target).guarded(guard["latency"], guard["memory"])
    problem, sol = solve_dtypes(profile, args, formats, solver_budgets, settings, guard)
    sol.solver["guard"] = guard
    _record_losses_from(sol.solver, profile)
    plan = finish(to_plan(problem, sol, profile, args.profile, budgets, args.name or out.stem), profile, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan.save(out)
    pr, s = plan.predicted, plan.solver
    print(f"wrote {out}: {pr.latency_ms:.1f} ms ({pr.speedup:.2f}x vs dense {pr.dense_latency_ms:.1f} ms), "
          f"{gib(pr.memory_mb)} GiB (dense {gib(pr.dense_memory_mb)}), loss {pr.loss:.4g}, "
          f"attention kept {pr.attn_kept:.1%}, CFG-shared layers {len(plan.cfg_shared)}, QK8 layers "
          f"{len(plan.qk_int8)}; runtime dtype {plan.dtype}; priced for {plan.device.get('name')} ({pr.tier} tier)")
    if plan.text_encoder:
        b = pr.memory_breakdown_mb or {}
        print(f"text encoder: {plan.text_encoder['mode']} (encoding phase {gib(b.get('encode_phase'))} GiB; "
              + ("its bytes held through the generation)" if plan.text_encoder["mode"] == "resident" else
                 f"reloaded for each new prompt, every {plan.text_encoder['images_per_prompt']} image(s))"))
    print(f"memory: {pr.memory_covers}")
    if target is None and (other := _another_cpu(plan.device)):
        print(f"note: priced for the CPU the profile was measured on; this one differs ({other}). To plan for this "
              "one: `litevar calibrate --device cpu --profile PROFILE --out devices/here.json`, then --device "
              "devices/here.json")
    if target is not None and target.tier == "calibrated":
        im = profile.meta["target"]
        factors = ", ".join(f"{d} {f:.2f}" for d, f in im["in_model"].items())
        print(f"in-model factor: {factors or '1 (none)'}: {im['in_model_note']}")
    print(f"guard: budgets tightened by {pct(guard['latency'])} (latency) and {pct(guard['memory'])} (memory) "
          f"({guard['source']})")
    print(f"solver {s['name']}: {s['status']}, gap {pct(s['gap'])} (vs a bound on every window configuration: "
          f"{pct(s.get('gap_full'))}), CBC {s['seconds']:.2f} s, {s['variables']} variables, "
          f"{s['constraints']} constraints; windows: {s['windows']}")
    return 0


def _another_cpu(plan_device: dict) -> str | None:
    """How this machine's CPU differs from a CPU plan's (None: the same CPU, or not a CPU plan)."""
    from litevar.models.core.device import device_mismatch, fingerprint
    if plan_device.get("type") != "cpu":
        return None
    return device_mismatch(plan_device, fingerprint("cpu"))


def planned_dtypes(profile, choice: str) -> list[str]:
    """The runtime dtypes `--dtype` plans at: the one given, or (auto) every one the profile priced
    and measured a loss for."""
    if choice != "auto":
        return [choice]
    measured = {(profile.meta.get("cost_model") or {}).get("dtype", profile.cost_model.dtype),
                *(profile.meta.get("runtime_loss") or {})}
    return [d for d in profile.cost_model.dtypes() if d in measured]


def solve_dtypes(profile, args, formats, solver_budgets, settings, guard):
    """(problem, solution): the least-loss plan within the budgets over the runtime dtypes of
    --dtype (the faster on equal loss); the solver record says what each dtype gave."""
    from litevar.planner.solve import solve
    tried, best, errors = {}, None, []
    for dtype in planned_dtypes(profile, args.dtype):
        for what, problem in planned_problems(profile, args, formats, dtype):
            try:
                problem = problem()
                sol = solve(problem, solver_budgets, settings)
            except UserError as e:
                errors.append(f"at {what}: {e}")
                tried[what] = None
                continue
            m = sol.metrics
            tried[what] = {"loss": m.loss, "latency_ms": m.latency_ms, "memory_mb": m.memory_mb}
            if best is None or (m.loss, m.latency_ms) < (best[1].metrics.loss, best[1].metrics.latency_ms):
                best = (problem, sol)
    if best is None:
        hint = "" if not guard["latency"] and not guard["memory"] else (
            f" (the solver's budgets were tightened by the guard: {pct(guard['latency'])} latency, "
            f"{pct(guard['memory'])} memory; --guard 0 plans on the bare predictions)")
        raise UserError("; ".join(errors) + hint)
    best[1].solver["dtypes"] = tried
    return best


def planned_problems(profile, args, formats, dtype: str):
    """[(label, () -> problem)] at runtime dtype `dtype`: one, or for a family with a text encoder
    one per mode of --text-encoder (a mode the profile cannot price is refused when solved)."""
    from litevar.planner.build import build_problem, text_encoder_problem
    problem = build_problem(profile, args.resolution, args.batch, formats, args.family, dtype=dtype)
    modes = getattr(args, "text_encoder", "auto")
    if "text_encoder" not in problem.meta:
        if modes != "auto":
            raise UserError(f"--text-encoder {modes}: the {profile.family.name} family has no text encoder; drop it")
        return [(dtype, lambda: problem)]
    ipp = getattr(args, "images_per_prompt", 1)
    return [(f"{dtype}, text encoder {mode}",
             lambda mode=mode: text_encoder_problem(problem, mode, ipp, profile.cost_model))
            for mode in (("resident", "freed") if modes == "auto" else (modes,))]


def gib(mb) -> str:
    return "-" if mb is None else f"{mb / 1024:.3g}"


def target_profile(args):
    """(the profile, priced for --device when given; the Target or None)."""
    profile = load_profile(args)
    if not getattr(args, "device", None):
        return profile, None
    from litevar.profiler.devices import load_target, priced
    target = load_target(args.device)
    if target.memory_gib is not None and args.max_memory_gib is not None and args.max_memory_gib > target.memory_gib:
        raise UserError(f"--max-memory-gib {args.max_memory_gib:g} is more than {target.name} has "
                        f"({target.memory_gib:.2f} GiB); give a budget it can hold")
    return priced(profile, target), target


def offered_formats(profile, target) -> set[str]:
    """The formats the profile measured a loss for, less what the target cannot run: a format
    with no kernel there (its capability matrix), and on a described device one it did not price
    (emulated formats: no device runs them faster than fp)."""
    measured = set(profile.table("sensitivity")["format"])
    if target is None:
        return measured
    from litevar.kernels.kvquant import KV_FORMATS
    caps = target.capabilities
    priced = set().union(*(rt.gemm for rt in target.runtimes.values())) | set(KV_FORMATS) | {"QK8"}
    return {f for f in measured if f in priced and not (caps is not None and caps.formats.get(f))
            and not (f == "QK8" and caps is not None and caps.qk8)}


def allocator_budgets(budgets, target):
    """On a device with fixed costs (a GPU: the caching allocator's reserve, the CUDA context) the
    memory budget covers what the process holds; the solver's row is on the allocator's peak."""
    import dataclasses
    if target is None or budgets.max_memory_gib is None or not (target.context_mib or target.reserve_frac):
        return budgets
    alloc = (budgets.max_memory_gib * 1024 - target.context_mib) / (1 + target.reserve_frac) / 1024
    if alloc <= 0:
        raise UserError(f"--max-memory-gib {budgets.max_memory_gib:g}: the CUDA context alone takes "
                        f"{target.context_mib:.0f} MiB on {target.name}")
    return dataclasses.replace(budgets, max_memory_gib=alloc)


def memory_covers(profile, target) -> tuple[str, float | None]:
    """(what the plan's memory figure and budget cover, the process overhead in MB on top or None)."""
    if target is not None and (target.context_mib or target.reserve_frac):
        return (f"the process on {target.name}: the allocator's peak, its reserve (+{100 * target.reserve_frac:.0f}%) "
                f"and the CUDA context ({target.context_mib:.0f} MiB); memory_mb is the allocator's peak", None)
    overhead = profile.cost_model.memory.process_overhead_mb
    extra = (f"; the process's resident set adds up to {overhead:.0f} MiB measured (allocator overhead, libraries)"
             if overhead is not None else "; the profile did not measure the process's resident set")
    return ("tensors: the allocator's peak (parameters, buffers and every tensor a generation allocates), which "
            "the memory model counts exactly and the allocator's own overhead does not move" + extra, overhead)


def finish(plan, profile, target):
    """The plan with its device, tier and what its memory figures cover."""
    from litevar.profiler.devices import tier_of
    covers, overhead = memory_covers(profile, target)
    pr = plan.predicted
    pr.tier = tier_of(profile)
    pr.memory_covers = covers
    if target is not None and (target.context_mib or target.reserve_frac):
        pr.process_memory_mb = target.process_mib(pr.memory_mb)
    elif overhead is not None:
        pr.process_memory_mb = pr.memory_mb + overhead
    if target is not None:
        plan.device = target.plan_device()
        if target.tier == "calibrated":  # what the dense kernels' prices were scaled by (1 where absent)
            plan.device["in_model"] = dict(profile.meta["target"]["in_model"])
    return plan


def run_recipe(args, budgets) -> int:
    """`litevar plan --recipe SPEC`: the recipe's plan, predicted on the profile's cost model."""
    from litevar.planner.recipes import parse_recipe, recipe_plan
    if args.sweep or budgets.any():
        raise UserError("--recipe writes a fixed recipe: drop the budgets and --sweep, or drop --recipe to plan")
    recipe = parse_recipe(args.recipe)
    out = Path(args.out)
    profile = load_profile(args)
    plan = recipe_plan(profile, args.profile, recipe, args.resolution, args.batch, args.name or out.stem, args.family,
                       None if args.dtype == "auto" else args.dtype)
    _record_losses_from(plan.solver, profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan.save(out)
    pr = plan.predicted
    print(f"wrote {out}: recipe {recipe.spec or 'dense'} ({recipe.describe()}): {pr.latency_ms:.1f} ms "
          f"({pr.speedup:.2f}x vs dense {pr.dense_latency_ms:.1f} ms), {gib(pr.memory_mb)} GiB, "
          f"loss {pr.loss:.4g}, attention kept {pr.attn_kept:.1%}")
    if plan.solver.get("loss_leaves_out"):
        print(f"note: its loss leaves out {', '.join(plan.solver['loss_leaves_out'])}: the profile cannot price it")
    return 0


def pct(v) -> str:
    return "unknown" if v is None else f"{100 * v:.2f}%"
