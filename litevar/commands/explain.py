"""`litevar explain PLAN [--profile P]`: why a plan chose what it chose: per decision, what it saves,
what it costs in predicted loss, and the alternative it beat (planner/explain.py)."""
from __future__ import annotations

import argparse

from litevar.commands.plan import pct
from litevar.models.core.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="plan file written by `litevar plan`")
    p.add_argument("--profile", help="the profile the plan was made from (needed for savings and losses)")
    p.add_argument("--losses-from", help="a cost-only profile's loss source, as `litevar plan --losses-from` "
                   "(default: the one the profile records)")
    p.add_argument("--device", help="the --device the plan was priced for (a catalogue GPU or a calibration file); "
                   "needed for a plan priced at the spec or calibrated tier")


def run(args) -> int:
    from litevar.planner.plan import Plan
    plan = Plan.load(args.plan)
    pr = plan.predicted
    print(f"plan {plan.name!r}: {plan.resolution} px, batch {plan.batch}, runtime dtype {plan.dtype or 'fp32'}, "
          f"device {plan.device.get('name')} ({pr.tier or 'profiled'} tier); "
          f"budgets {', '.join(f'{k} {v:g}' for k, v in plan.budgets.items() if v is not None) or 'none'}")
    if pr.latency_ms is not None:
        print(f"predicted: {pr.latency_ms:.1f} ms ({pr.speedup or 1:.2f}x), {(pr.memory_mb or 0) / 1024:.3g} GiB, "
              f"loss {pr.loss or 0:.4g}")
    guard = plan.solver.get("guard")
    if guard:
        print(f"solved with a guard of {pct(guard.get('latency'))} on latency and {pct(guard.get('memory'))} "
              f"on memory ({guard.get('source')})")
    if not args.profile:
        quantized = {f for f in plan.formats.values() if f != "fp"}
        n_q = sum(f != "fp" for f in plan.formats.values())
        print(f"{n_q} of {len(plan.formats)} linear layers quantized ({', '.join(sorted(quantized)) or 'none'}); "
              f"CFG-shared blocks {plan.cfg_shared}; QK8 blocks {plan.qk_int8}; windowed blocks "
              f"{sorted(plan.windows.widths) if plan.windows else []}; KV caches planned in blocks {sorted(plan.kv)}")
        print("pass --profile PROFILE for what each choice saves, costs and beat")
        return 0
    from litevar.planner.build import build_problem, profile_sha256, selection_of, text_encoder_problem
    from litevar.planner.explain import explain, format_table
    if plan.profile_sha256 and profile_sha256(args.profile) != plan.profile_sha256:
        print(f"note: {args.profile} is not the profile this plan was made from (sha256 differs); "
              "numbers below are from the given profile")
    from litevar.commands.plan import load_profile
    profile = priced_like(load_profile(argparse.Namespace(profile=args.profile, losses_from=args.losses_from)),
                          plan, args.device)
    family = plan.windows.family.value if plan.windows else None
    sel = selection_of(plan)
    uniform = set(sel.kv.values())  # a recipe's KV option, which the profile may not offer by itself
    problem = build_problem(profile, plan.resolution, plan.batch, None, family, coverage_targets=None,
                            kv_option=next(iter(uniform)) if len(uniform) == 1 else None, dtype=plan.dtype)
    if plan.text_encoder and "text_encoder" in problem.meta:
        problem = text_encoder_problem(problem, plan.text_encoder["mode"], plan.text_encoder["images_per_prompt"],
                                       profile.cost_model)
    bad = [k for k in sel.widths if k + (sel.widths[k],) not in problem.window_index]
    if bad:
        raise UserError(f"plan window {bad[0]} is not a width the profile measured; explain it with the "
                        "profile it was made from")
    print(format_table(explain(problem, sel)))
    print("saves_*: vs the uncompressed choice; alt_saves_ms / alt_loss: what the alternative would have "
          "saved in ms / added in loss relative to the choice (negative: it is slower / better)")
    return 0


def priced_like(profile, plan, device: str | None):
    """`profile` priced for the device the plan was priced for: --device at the plan's tier."""
    tier = plan.predicted.tier or "profiled"
    if device is None:
        if tier != "profiled":
            raise UserError(f"the plan was priced for {plan.device.get('name')} at the {tier} tier; add --device "
                            "with the catalogue name or calibration file it was planned with")
        return profile
    from litevar.profiler.devices import load_target, priced
    target = load_target(device)
    if target.tier != tier:
        raise UserError(f"--device {device} is at the {target.tier} tier, the plan at the {tier} tier; give the "
                        "device the plan was made with")
    return priced(profile, target)
